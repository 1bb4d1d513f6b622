"""The project YAML as a Dagster component (FineTuningProject): projects declared in defs.yaml files, several in
one code location, loaded by Dagster's own defs-folder loader and checked by the `dg` CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ft_assets.audit import audit_checkpoint
from ft_assets.cli import main
from ft_assets.lib.config import ConfigError
from ft_assets_tests.conftest import readme_block, ticket_rows, write_csv, write_project
from ft_assets_tests.helpers import materialize_all

REPO = Path(__file__).resolve().parents[1]
DG = Path(sys.executable).parent / "dg"


def dg_project(root: Path, projects: dict[str, dict]) -> Path:
    """A dg project at `root` (package `fleet`) with one FineTuningProject defs.yaml per entry of
    `projects` ({folder name: attributes}); returns its root."""
    (root / "fleet" / "defs").mkdir(parents=True, exist_ok=True)
    (root / "fleet" / "__init__.py").write_text("")
    (root / "fleet" / "defs" / "__init__.py").write_text("")
    (root / "pyproject.toml").write_text(
        '[tool.dg]\ndirectory_type = "project"\n\n[tool.dg.project]\nroot_module = "fleet"\n'
        # An installed ft_assets registers FineTuningProject by its entry point; a checkout run with
        # PYTHONPATH has none, so the project names the module itself.
        'registry_modules = ["ft_assets"]\n')
    for name, attributes in projects.items():
        folder = root / "fleet" / "defs" / name
        folder.mkdir(exist_ok=True)
        (folder / "defs.yaml").write_text(yaml.safe_dump({"type": "ft_assets.FineTuningProject",
                                                          "attributes": attributes}, sort_keys=False))
    return root


def ticket_project(folder: Path, model_dir: Path, n_per_label: int, seed: int) -> dict:
    """The attributes of a ticket project whose corpus (raw/tickets/ under `folder`) is its own."""
    # A recipe that learns the tiny corpus, so its champion passes the gates.
    attributes = yaml.safe_load(write_project(folder, model_dir, n_per_label=n_per_label, recipes=[
        {"name": "tickets_tuned", "dataset": "tickets", "base_model": str(model_dir), "method": "full",
         "training": {"epochs": 6, "batch_size": 16, "max_length": 16, "learning_rate": 3e-3,
                      "head_learning_rate": 3e-3}}]).read_text())
    write_csv(folder / "data" / "raw" / "tickets" / "part2.csv", ticket_rows(n_per_label, seed=seed))
    (folder / "project.yaml").unlink()
    return attributes


def load(root: Path) -> dg.Definitions:
    sys.path.insert(0, str(root))
    try:
        return dg.load_from_defs_folder(path_within_project=root)
    finally:
        sys.path.remove(str(root))
        for module in [m for m in sys.modules if m == "fleet" or m.startswith("fleet.")]:
            del sys.modules[module]


def test_two_projects_with_the_same_names_materialize_side_by_side_and_are_audited_apart(tmp_path, tiny_model_dir,
                                                                                        capsys):
    root = tmp_path / "location"
    defs_dir = root / "fleet" / "defs"
    projects = {name: ticket_project(defs_dir / name, tiny_model_dir, n, seed)
                for name, n, seed in (("support", 40, 1), ("billing", 48, 2))}
    defs = load(dg_project(root, projects))

    keys = {k.to_user_string() for a in defs.assets for k in a.keys}
    for project in projects:
        assert {f"{project}/raw/tickets", f"{project}/datasets/tickets", f"{project}/checkpoints/tickets_tuned",
                f"{project}/reports/tickets_tuned", f"{project}/models/tickets/champion"} <= keys
    assert not any(k.startswith(("raw/", "checkpoints/")) for k in keys)
    assert {s.name for s in defs.sensors} == {f"{p}__{s}" for p in projects
                                              for s in ("landing_tickets", "ft_assets_automation")}
    assert set(defs.resources) == {f"{p}__{r}" for p in projects for r in ("warehouse", "gpu", "launcher")}

    home = tmp_path / "dagster_home"
    home.mkdir()
    instance = dg.DagsterInstance.local_temp(str(home))
    assert materialize_all(defs, instance).success
    for project in projects:
        # Each project keeps its own warehouse, folder and files: its checkpoint's lineage names only them.
        chain = audit_checkpoint(instance, "tickets_tuned", project=project)
        uris = [f["uri"] for f in chain["raw_files"]]
        assert len(uris) == 2 and all(f"/defs/{project}/data/raw/tickets/" in uri for uri in uris)
        assert chain["checkpoint"]["asset"] == f"{project}/checkpoints/tickets_tuned"
        assert (defs_dir / project / "data" / "warehouse.duckdb").is_file()

        assert main(["--config", str(defs_dir / project / "defs.yaml"), "audit", "tickets_tuned",
                     "--project", project, "--dagster-home", str(home), "--json"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["checkpoint"]["run_id"] == chain["checkpoint"]["run_id"]
        assert printed["dataset"]["rows"] == chain["dataset"]["rows"]
    # 80 and 96 rows per label: the two datasets are not one dataset seen twice.
    support, billing = (audit_checkpoint(instance, "tickets_tuned", project=p)["dataset"] for p in projects)
    assert support["version"] != billing["version"]
    # Without --project the unprefixed key is asked for, which neither project has.
    assert main(["--config", str(defs_dir / "support" / "defs.yaml"), "audit", "tickets_tuned",
                 "--dagster-home", str(home)]) == 2
    assert "checkpoints/tickets_tuned has no materialization" in capsys.readouterr().err


def test_a_project_alone_in_its_location_keeps_the_keys_of_a_project_yaml(tmp_path, tiny_model_dir):
    root = tmp_path / "location"
    project = ticket_project(root / "fleet" / "defs" / "only", tiny_model_dir, 10, 1)
    defs = load(dg_project(root, {"only": project}))
    assert {k.to_user_string() for a in defs.assets for k in a.keys} >= {"raw/tickets", "checkpoints/tickets_tuned"}
    assert set(defs.resources) == {"warehouse", "gpu", "launcher"}
    assert {s.name for s in defs.sensors} == {"landing_tickets", "ft_assets_automation"}


def test_the_readme_component_block_loads_as_a_project(tmp_path):
    block = readme_block("# <root_module>/defs/support/defs.yaml")
    assert block["type"] == "ft_assets.FineTuningProject"
    root = tmp_path / "location"
    dg_project(root, {"support": block["attributes"]})
    defs = load(root)
    assert {k.to_user_string() for a in defs.assets for k in a.keys} >= {"raw/tickets", "checkpoints/tickets_lora"}


@pytest.mark.parametrize("change, expected", [
    # Schema problems, found by Dagster's validation of the attributes: file, line and field.
    (lambda a: a["datasets"][0].update(test_fraction=2), "attributes.datasets.0.test_fraction"),
    (lambda a: a["recipes"][0].update(mehtod="lora"), "attributes.recipes.0.mehtod"),
    # Across entries, found by our checks: file, entry and field.
    (lambda a: a["datasets"][0].update(corpus="tickts"),
     "datasets[0] (tickets): field corpus: no corpus named 'tickts'"),
])
def test_a_bad_defs_yaml_is_refused_naming_the_file_and_the_field(tmp_path, tiny_model_dir, change, expected):
    root = tmp_path / "location"
    attributes = ticket_project(root / "fleet" / "defs" / "broken", tiny_model_dir, 10, 1)
    change(attributes)
    dg_project(root, {"broken": attributes})
    with pytest.raises(Exception) as raised:
        load(root)
    message = "".join(str(e) for e in _causes(raised.value))
    assert str(root / "fleet" / "defs" / "broken" / "defs.yaml") in message and expected in message


def _causes(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def test_a_project_folder_name_that_cannot_start_a_key_is_refused(tmp_path, tiny_model_dir):
    root = tmp_path / "location"
    projects = {name: ticket_project(root / "fleet" / "defs" / name, tiny_model_dir, 10, 1)
                for name in ("support", "Billing-EU")}
    dg_project(root, projects)
    with pytest.raises(Exception) as raised:
        load(root)
    assert any(isinstance(e, ConfigError) and "'Billing-EU' starts this project's asset keys" in str(e)
               for e in _causes(raised.value))


@pytest.mark.parametrize("shared_root", ["explicit", "FT_ASSETS_ROOT"])
def test_two_projects_cannot_share_a_storage_root(tmp_path, tiny_model_dir, monkeypatch, shared_root):
    root = tmp_path / "location"
    projects = {name: ticket_project(root / "fleet" / "defs" / name, tiny_model_dir, 10, 1)
                for name in ("support", "billing")}
    if shared_root == "explicit":
        for attributes in projects.values():
            attributes["storage"] = {"root": str(tmp_path / "one_root")}
    else:
        monkeypatch.setenv("FT_ASSETS_ROOT", str(tmp_path / "one_root"))
    dg_project(root, projects)
    with pytest.raises(Exception) as raised:
        load(root)
    [error] = [e for e in _causes(raised.value) if isinstance(e, ConfigError)]
    assert "storage roots of their own" in str(error) and str(tmp_path / "one_root") in str(error)
    assert all(str(root / "fleet" / "defs" / name / "defs.yaml") in str(error) for name in projects)


def test_dg_lists_and_checks_the_shipped_project_and_a_component_project(tmp_path, tiny_model_dir):
    env = {**{k: v for k, v in os.environ.items() if k != "FT_ASSETS_CONFIG"}, "PYTHONPATH": str(REPO)}
    listed = subprocess.run([str(DG), "list", "defs", "--json"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert listed.returncode == 0, listed.stderr[-3000:]
    keys = {a["asset_key"] for a in json.loads(listed.stdout)["assets"]}
    assert {"raw/tickets", "checkpoints/tickets_lora", "models/tickets/champion"} <= keys
    checked = subprocess.run([str(DG), "check", "defs"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]

    root = tmp_path / "location"
    attributes = ticket_project(root / "fleet" / "defs" / "support", tiny_model_dir, 10, 1)
    attributes["datasets"][0]["test_fraction"] = 2
    dg_project(root, {"support": attributes})
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{root}"
    yaml_check = subprocess.run([str(DG), "check", "yaml"], cwd=root, env=env, capture_output=True, text=True,
                                timeout=300)
    assert yaml_check.returncode != 0
    assert f"{root / 'fleet' / 'defs' / 'support' / 'defs.yaml'}:" in yaml_check.stdout
    assert "attributes.datasets.0.test_fraction" in yaml_check.stdout
