"""What the UI marks stale, through Dagster's own resolver: raw file, code and recipe edits, and nothing else.

Dagster 1.13 marks an asset STALE when its code_version differs from the one its latest materialization
recorded (CODE), or when an upstream asset's data version differs from the one that materialization
read (DATA). Staleness does not pass through an asset that has not been re-materialized: a cleaning
change marks the dataset stale, and the checkpoints only once the re-cleaned data differs.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleCauseCategory, StaleStatus
from dagster._core.loader import LoadingContextForTest

from ft_assets.defs import build_definitions
from ft_assets.defs.datasets.assets import CLEANING_CODE
from ft_assets.lib import lineage
from ft_assets.lib.config import load_config
from ft_assets.lib.storage import sha256_file
from ft_assets_tests.conftest import REPO, write_project
from ft_assets_tests.helpers import materialize_all, write_spec

FRESH, STALE, MISSING = StaleStatus.FRESH, StaleStatus.STALE, StaleStatus.MISSING
TRAINING = {"epochs": 1, "batch_size": 16, "max_length": 16}


def statuses(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, StaleStatus]:
    """Every asset's status as the UI's stale badge shows it for these definitions."""
    resolver = stale_resolver(defs, instance)
    return {key.to_user_string(): resolver.get_status(key) for key in defs.resolve_asset_graph().get_all_asset_keys()}


def stale_resolver(defs: dg.Definitions, instance: dg.DagsterInstance) -> CachingStaleStatusResolver:
    # The resolver caches per call, as the webserver makes one per request: build a new one per question.
    return CachingStaleStatusResolver(instance, defs.resolve_asset_graph(), LoadingContextForTest(instance))


def causes(defs: dg.Definitions, instance: dg.DagsterInstance, key: str) -> set[tuple[StaleCauseCategory, str]]:
    """(category, upstream asset or "") of each reason the asset is stale."""
    return {(c.category, c.dependency.asset_key.to_user_string() if c.dependency else "")
            for c in stale_resolver(defs, instance).get_stale_causes(dg.AssetKey.from_user_string(key))}


def package_copy(tmp_path, monkeypatch, name: str) -> Path:
    """Points code_version at a copy of the ft_assets package (in tmp_path/name/) and returns the copy."""
    copy = tmp_path / name / "ft_assets"
    shutil.copytree(lineage.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(lineage, "PACKAGE_DIR", copy)
    return copy


def edited_package(tmp_path, monkeypatch, module: str) -> None:
    """Points code_version at a copy of the package in which `module` (dotted) has one more line, as a
    commit would.

    code_version hashes source bytes under lineage.PACKAGE_DIR, so definitions built after this are the
    ones a code-location reload would build after that edit; the running code is unchanged, like a
    comment-only edit, which is the case where the re-made data must come out the same.
    """
    package_copy(tmp_path, monkeypatch, f"with_{module}_edited")
    with open(lineage._module_path(module), "a") as f:
        f.write("# an edit\n")


def with_recipe_change(config_path, recipe: str, **training) -> dg.Definitions:
    """Definitions from a copy of the project YAML (same folder, so same storage) with one recipe changed."""
    raw = yaml.safe_load(config_path.read_text())
    next(r for r in raw["recipes"] if r["name"] == recipe)["training"].update(training)
    changed = config_path.with_name("project_changed.yaml")
    changed.write_text(yaml.safe_dump(raw, sort_keys=False))
    return build_definitions(load_config(changed))


@pytest.fixture
def project(tmp_path, tiny_model_dir):
    recipes = [{"name": name, "dataset": "tickets", "base_model": str(tiny_model_dir), "method": "head_only",
                # A dict each: a shared one would be dumped as a YAML alias, and a change to one recipe
                # would change both.
                "training": dict(TRAINING)} for name in ("head_a", "head_b")]
    config_path = write_project(tmp_path, tiny_model_dir, recipes=recipes, n_per_label=20)
    return config_path, build_definitions(load_config(config_path)), dg.DagsterInstance.ephemeral()


def test_raw_files_and_cleaning_code_decide_whether_the_dataset_is_stale(project, tmp_path, monkeypatch):
    config_path, defs, instance = project
    assert materialize_all(defs, instance, selection="*datasets/tickets").success
    status = statuses(defs, instance)
    assert status["raw/tickets"] == status["datasets/tickets"] == FRESH
    assert status["checkpoints/head_a"] == MISSING
    # What an auditor reads back from the event log: the raw files by content, and the cleaning code.
    metadata = instance.get_latest_materialization_event(
        dg.AssetKey(["datasets", "tickets"])).asset_materialization.metadata
    landing = tmp_path / "data" / "raw" / "tickets"
    assert {f["uri"]: f["sha256"] for f in metadata["raw_files"].value} == {
        p.resolve().as_uri(): sha256_file(p) for p in landing.iterdir()}
    assert metadata["cleaning_code_version"].value == lineage.source_hash(*CLEANING_CODE)

    # The same files read again: the same data version, so nothing downstream needs rebuilding.
    assert materialize_all(defs, instance, selection="raw/tickets").success
    assert statuses(defs, instance)["datasets/tickets"] == FRESH

    (landing / "part1.csv").write_text((landing / "part1.csv").read_text() + "billing,refund of a late invoice\n")
    assert materialize_all(defs, instance, selection="raw/tickets").success
    assert statuses(defs, instance)["datasets/tickets"] == STALE
    assert causes(defs, instance, "datasets/tickets") == {(StaleCauseCategory.DATA, "raw/tickets")}
    assert materialize_all(defs, instance, selection="datasets/tickets").success
    assert statuses(defs, instance)["datasets/tickets"] == FRESH

    edited_package(tmp_path, monkeypatch, "ft_assets.lib.datasets.cleaning")
    after_edit = build_definitions(load_config(config_path))
    status = statuses(after_edit, instance)
    assert status["datasets/tickets"] == STALE and status["raw/tickets"] == FRESH
    assert causes(after_edit, instance, "datasets/tickets") == {(StaleCauseCategory.CODE, "")}


@pytest.mark.parametrize("module", ["ft_assets.lib.ingest.readers", "ft_assets.lib.schemas"])
def test_parsing_code_marks_the_raw_corpus_stale(project, tmp_path, monkeypatch, module):
    config_path, defs, instance = project
    assert materialize_all(defs, instance, selection="raw/tickets").success
    edited_package(tmp_path, monkeypatch, module)
    assert statuses(build_definitions(load_config(config_path)), instance)["raw/tickets"] == STALE


def test_recipes_training_code_and_data_decide_whether_a_checkpoint_is_stale(project, tmp_path, monkeypatch):
    config_path, defs, instance = project
    selection = ["raw/tickets", "datasets/tickets", "checkpoints/head_a", "checkpoints/head_b",
                 "reports/head_a", "reports/head_b"]
    assert materialize_all(defs, instance, selection=selection).success
    assert {k: statuses(defs, instance)[k] for k in selection} == dict.fromkeys(selection, FRESH)

    # One recipe's settings: its checkpoint and report, not the other recipe's, not the data.
    changed = statuses(with_recipe_change(config_path, "head_b", learning_rate=1e-3), instance)
    assert {k: changed[k] for k in selection} == {
        **dict.fromkeys(selection, FRESH), "checkpoints/head_b": STALE, "reports/head_b": STALE}

    # The training code: every checkpoint, nothing upstream of them.
    with monkeypatch.context() as patch:
        edited_package(tmp_path, patch, "ft_assets.lib.training.loop")
        after_edit = statuses(build_definitions(load_config(config_path)), instance)
    assert {k: after_edit[k] for k in selection[:4]} == {
        "raw/tickets": FRESH, "datasets/tickets": FRESH, "checkpoints/head_a": STALE, "checkpoints/head_b": STALE}

    # A cleaning edit that leaves the rows as they were: the dataset is re-made, the checkpoints need not be.
    with monkeypatch.context() as patch:
        edited_package(tmp_path, patch, "ft_assets.lib.datasets.cleaning")
        after_edit_defs = build_definitions(load_config(config_path))
        assert statuses(after_edit_defs, instance)["datasets/tickets"] == STALE
        assert materialize_all(after_edit_defs, instance, selection="datasets/tickets").success
        status = statuses(after_edit_defs, instance)
    assert {k: status[k] for k in selection} == dict.fromkeys(selection, FRESH)

    # New rows in a raw file: once raw and the dataset are re-made, every checkpoint is stale; the
    # reports follow only when their checkpoints are re-made (Dagster does not pass staleness on).
    landing = tmp_path / "data" / "raw" / "tickets"
    (landing / "part2.csv").write_text((landing / "part2.csv").read_text() + "access,locked out after a reset\n")
    assert materialize_all(defs, instance, selection=["raw/tickets", "datasets/tickets"]).success
    status = statuses(defs, instance)
    assert {k: status[k] for k in selection} == {
        **dict.fromkeys(selection, FRESH), "checkpoints/head_a": STALE, "checkpoints/head_b": STALE}
    assert causes(defs, instance, "checkpoints/head_a") == {(StaleCauseCategory.DATA, "datasets/tickets")}


def modules_a_training_run_imports(tmp_path, model_dir) -> list[str]:
    """The project modules loaded by the end of a real (one-epoch) run of the training entry point, in a
    fresh process: found by running it, independently of how code_version finds them."""
    spec = write_spec(tmp_path, "run", model_dir, epochs=1)
    probe = ("import atexit, json, runpy, sys\n"
             "atexit.register(lambda: print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == "
             "'ft_assets'))))\n"
             f"sys.argv = ['train', {str(spec)!r}]\n"
             "runpy.run_module('ft_assets.lib.training', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_module_a_training_run_imports_marks_checkpoints_stale_and_train_marks_reports(
        project, tmp_path, monkeypatch, tiny_model_dir):
    config_path, defs, _ = project

    def versions(definitions) -> dict[str, str]:
        graph = definitions.resolve_asset_graph()
        return {key.to_user_string(): graph.get(key).code_version for key in graph.get_all_asset_keys()
                if key.path[0] in ("checkpoints", "reports")}

    before = versions(defs)
    imported = modules_a_training_run_imports(tmp_path, tiny_model_dir)
    # Modules a hand-kept list once left out: the batch order and resume (and then evaluate.py, whose
    # validation and device helpers now live in training/).
    assert {"ft_assets.lib.training.distributed", "ft_assets.lib.training.resume",
            "ft_assets.lib.training.device"} <= set(imported)
    for module in imported:
        with monkeypatch.context() as patch:
            edited_package(tmp_path, patch, module)
            after = versions(build_definitions(load_config(config_path)))
        assert after["checkpoints/head_a"] != before["checkpoints/head_a"], module
        assert after["checkpoints/head_b"] != before["checkpoints/head_b"], module
        if module == "ft_assets.lib.training.loop":  # the report trains its head_only baseline with fit()
            assert after["reports/head_a"] != before["reports/head_a"]

    # Text that no stage runs, a README beside the package, changes no code version.
    copy = package_copy(tmp_path, monkeypatch, "with_readme_edited")
    shutil.copy(REPO / "README.md", copy.parent / "README.md")
    with open(copy.parent / "README.md", "a") as f:
        f.write("A new line of documentation.\n")
    assert versions(build_definitions(load_config(config_path))) == before

    # Nor does the Dagster wiring: ft_assets/__init__ imports the component (and with it defs/) only when a
    # defs.yaml asks for it, so editing defs/ marks no checkpoint stale (every one was, before).
    with monkeypatch.context() as patch:
        edited_package(tmp_path, patch, "ft_assets.defs.training.assets")
        assert versions(build_definitions(load_config(config_path))) == before
    assert not [m for m in lineage.project_modules("ft_assets.lib.training.__main__") if m.startswith("ft_assets.defs")]
