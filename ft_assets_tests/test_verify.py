"""`ft-assets verify`: a materialized checkpoint against its manifest, before and after tampering."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from ft_assets.cli import main
from ft_assets.lib.lineage import verify_checkpoint

ADAPTER = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def project(ticket_project):
    """The shared ticket project's LoRA checkpoint (conftest.ticket_project): (its directory, the ticket corpus'
    landing folder)."""
    event = ticket_project.instance.get_latest_materialization_event(dg.AssetKey(["checkpoints", "tiny_lora"]))
    return (Path(event.asset_materialization.metadata["checkpoint_path"].value),
            ticket_project.folder / "data" / "raw" / "tickets")


@pytest.fixture
def checkpoint_copy(project, tmp_path) -> Path:
    """A copy to tamper with; the raw files it names are still the project's own."""
    return Path(shutil.copytree(project[0], tmp_path / "checkpoint"))


@pytest.fixture
def raw_dir(project):
    """The project's landing folder, restored byte for byte after the test changes it."""
    folder = project[1]
    saved = {p: p.read_bytes() for p in folder.iterdir()}
    yield folder
    for path, data in saved.items():
        path.write_bytes(data)


def verify_json(checkpoint: Path, capsys) -> tuple[int, dict]:
    code = main(["verify", str(checkpoint), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_the_manifest_hashes_every_file_but_itself_and_the_model_card(project):
    checkpoint, _ = project
    recorded = json.loads((checkpoint / "manifest.json").read_text())["files"]
    on_disk = {p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()}
    assert set(recorded) == on_disk - {"manifest.json", "README.md"}
    assert {ADAPTER, "adapter_config.json", "labels.json", "metrics.jsonl"} <= set(recorded)


def test_an_untouched_checkpoint_verifies(project, capsys):
    checkpoint, raw = project
    assert main(["verify", str(checkpoint)]) == 0
    table = capsys.readouterr().out
    assert "verified" in table and ADAPTER in table
    code, result = verify_json(checkpoint, capsys)
    assert code == 0 and result["ok"] and result["problems"] == []
    assert {f["status"] for f in result["files"]} == {"ok"}
    assert {f["uri"]: f["status"] for f in result["raw_files"]} == {p.resolve().as_uri(): "ok" for p in raw.iterdir()}


def test_a_rewritten_model_card_is_not_a_change(checkpoint_copy, capsys):
    # The report step rewrites README.md with the test metrics; that must not fail verification.
    (checkpoint_copy / "README.md").write_text("# rewritten with the metrics\n")
    assert main(["verify", str(checkpoint_copy)]) == 0


def test_the_console_script_verifies_without_importing_torch(project):
    checkpoint, _ = project
    bin_dir = Path(sys.executable).parent
    run = subprocess.run([str(bin_dir / "ft-assets"), "verify", str(checkpoint)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "verified" in run.stdout and ADAPTER in run.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from ft_assets.cli import main; code = main(['verify', sys.argv[1]]); "
                               "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(code)",
         str(checkpoint)], capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().endswith("no torch")


def test_a_flipped_byte_in_the_adapter_fails_naming_the_file(checkpoint_copy, capsys):
    weights = checkpoint_copy / ADAPTER
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    assert main(["verify", str(checkpoint_copy)]) == 1
    assert f"{ADAPTER}: mismatch" in capsys.readouterr().err
    code, result = verify_json(checkpoint_copy, capsys)
    assert code == 1 and not result["ok"]
    bad = [f for f in result["files"] if f["status"] != "ok"]
    assert [(f["path"], f["status"]) for f in bad] == [(ADAPTER, "mismatch")]
    assert bad[0]["actual"] != bad[0]["expected"]


def test_a_deleted_weight_file_is_missing_and_an_added_one_unrecorded(checkpoint_copy, capsys):
    (checkpoint_copy / ADAPTER).unlink()
    (checkpoint_copy / "pytorch_model.bin").write_bytes(b"not the trained weights")
    code, result = verify_json(checkpoint_copy, capsys)
    assert code == 1
    statuses = {f["path"]: f["status"] for f in result["files"] if f["status"] != "ok"}
    assert statuses == {ADAPTER: "missing", "pytorch_model.bin": "unrecorded"}


def test_a_changed_raw_file_is_drift(project, raw_dir, capsys):
    checkpoint, _ = project
    changed = raw_dir / "part1.csv"
    changed.write_text(changed.read_text() + "billing,a row added after training\n")
    assert main(["verify", str(checkpoint)]) == 1
    assert f"{changed.resolve().as_uri()}: changed since training" in capsys.readouterr().err
    code, result = verify_json(checkpoint, capsys)
    assert code == 1
    assert {f["uri"]: f["status"] for f in result["raw_files"]} == {
        p.resolve().as_uri(): "drift" if p == changed else "ok" for p in raw_dir.iterdir()}
    assert {f["status"] for f in result["files"]} == {"ok"}


def test_a_deleted_raw_file_is_listed_missing_and_the_weights_still_verify(project, raw_dir, capsys):
    checkpoint, _ = project
    (raw_dir / "part2.csv").unlink()
    assert main(["verify", str(checkpoint)]) == 0
    table = capsys.readouterr().out
    assert any(line.startswith("missing") and line.endswith("part2.csv") for line in table.splitlines()), table
    result = verify_checkpoint(checkpoint)
    assert {f["uri"].rsplit("/", 1)[1]: f["status"] for f in result["raw_files"]} == {
        "part1.csv": "ok", "part2.csv": "missing", "part3.csv": "ok"}


def test_a_remote_raw_file_is_listed_as_not_checked(checkpoint_copy):
    manifest_path = checkpoint_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["dataset"]["raw_files"].append({"uri": "s3://landing/tickets/part9.csv", "sha256": "0" * 64})
    manifest_path.write_text(json.dumps(manifest))
    result = verify_checkpoint(checkpoint_copy)
    assert result["ok"]
    assert result["raw_files"][-1]["status"] == "not checked (remote)"


def test_a_checkpoint_from_before_file_hashes_says_so(checkpoint_copy, capsys):
    manifest_path = checkpoint_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["files"]
    manifest_path.write_text(json.dumps(manifest))
    assert main(["verify", str(checkpoint_copy)]) == 1
    assert "predates" in capsys.readouterr().err


def test_a_directory_without_a_manifest_is_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / ADAPTER).write_bytes(b"weights without a manifest")
    assert main(["verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "not a checkpoint" in err
