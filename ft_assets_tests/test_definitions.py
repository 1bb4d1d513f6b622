"""The shipped Definitions: they load, every asset is described, and the graph matches its snapshot."""

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg

from ft_assets.definitions import defs

SNAPSHOT = Path(__file__).parent / "snapshots" / "default_defs.json"


def asset_specs() -> list[dict]:
    graph = defs.resolve_asset_graph()
    rows = []
    for spec in defs.resolve_all_asset_specs():
        node = graph.get(spec.key)
        rows.append({
            "key": spec.key.to_user_string(),
            "group": spec.group_name,
            "deps": sorted(d.asset_key.to_user_string() for d in spec.deps),
            "kinds": sorted(spec.kinds),
            "pools": sorted(node.pools or []),
            "checks": sorted(k.name for k in node.check_keys),
            "automation_condition": condition_text(spec.automation_condition),
            # Follows the source each asset runs: a change's snapshot diff names the assets it makes stale.
            "code_version": spec.code_version,
        })
    return sorted(rows, key=lambda r: r["key"])


def condition_text(condition: dg.AutomationCondition | None) -> str | None:
    """An automation condition as one line: our labelled parts with what they are made of, Dagster's
    named ones (labels without spaces, such as any_deps_missing) by name."""
    if condition is None:
        return None
    label = condition.get_label()
    if label and " " not in label:
        return label
    inner = condition.name + (f"({', '.join(condition_text(c) for c in condition.children)})"
                              if condition.children else "")
    return f"{label}: {inner}" if label else inner


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)


def test_groups_and_descriptions():
    specs = list(defs.resolve_all_asset_specs())
    assert {s.group_name for s in specs} == {"raw", "datasets", "training", "evaluation", "models"}
    for spec in specs:
        assert spec.description and len(spec.description) > 40, spec.key


def test_only_training_assets_need_the_gpu_and_they_queue_on_its_pool():
    graph = defs.resolve_asset_graph()
    for assets_def in defs.assets:
        for key in assets_def.keys:
            # What trains: checkpoints, learning-curve points, learning-rate candidates.
            training = key.path[0] in ("checkpoints", "learning_curve", "learning_rate_search")
            assert ("gpu" in assets_def.required_resource_keys) == training, key
            if training:
                assert graph.get(key).pools == {"gpu"}


def test_loading_the_code_location_imports_no_torch_nor_what_only_some_steps_need():
    # Every materialization loads the code location twice (the run's process and the step's): s3fs and
    # the Kubernetes client cost about 2 s of each load, and load where a step uses them.
    heavy = ["torch", "transformers", "s3fs", "dagster_k8s", "kubernetes"]
    code = f"import sys, ft_assets.definitions; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_asset_graph_matches_the_snapshot(request):
    current = asset_specs()
    # Without one, editing the code behind an asset would never mark it stale (leaderboards had none).
    assert [r["key"] for r in current if not r["code_version"]] == []
    if request.config.getoption("--snapshot-update"):
        SNAPSHOT.write_text(json.dumps(current, indent=2) + "\n")
    assert current == json.loads(SNAPSHOT.read_text()), "run `make update-snapshot` if the change is intended"


def test_code_versions_are_the_same_in_every_process():
    code = ("from ft_assets.definitions import defs; "
            "print(sorted((s.key.to_user_string(), s.code_version) for s in defs.resolve_all_asset_specs()))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0] == str(sorted((s.key.to_user_string(), s.code_version) for s in defs.resolve_all_asset_specs())) + "\n"


def test_sensors_run_from_the_start_and_every_asset_but_raw_has_an_automation_condition():
    statuses = {s.name: s.default_status for s in defs.sensors}
    corpora = {k.path[1] for k in defs.resolve_asset_graph().get_all_asset_keys() if k.path[0] == "raw"}
    assert statuses == {**{f"landing_{c}": dg.DefaultSensorStatus.RUNNING for c in corpora},
                        "ft_assets_automation": dg.DefaultSensorStatus.RUNNING}
    for spec in defs.resolve_all_asset_specs():
        # Learning-curve points train when asked for, unless the curve says `retrain:` (a study, not a model).
        assert (spec.automation_condition is None) == (spec.key.path[0] in ("raw", "learning_curve")), spec.key
