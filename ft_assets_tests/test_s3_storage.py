"""`storage.root: s3://...` on a real local S3 endpoint: everything the graph publishes lands in the bucket,
and a machine without the local copies evaluates the checkpoint on the dataset snapshot it trained on from it."""

import json
import os
import shutil

import dagster as dg
import duckdb
import pytest
import yaml

from ft_assets.defs import build_definitions
from ft_assets.lib.config import load_config
from ft_assets_tests.conftest import write_project
from ft_assets_tests.helpers import learning_recipes, materialize_all


@pytest.fixture(scope="module")
def on_s3(tmp_path_factory, tiny_model_dir, s3_endpoint):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("artifacts")
    tmp = tmp_path_factory.mktemp("s3_root")
    config_path = write_project(tmp, tiny_model_dir, n_per_label=60,
                                recipes=learning_recipes(tiny_model_dir, full_gates={})[:1])
    raw = yaml.safe_load(config_path.read_text())
    raw["storage"] = {"root": "s3://artifacts/project", "local": "data"}
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    config = load_config(config_path)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_all(build_definitions(config), instance)
    assert result.success
    return config, instance, fs


def test_checkpoints_reports_champions_and_dataset_exports_are_published(on_s3):
    config, instance, fs = on_s3
    event = instance.get_latest_materialization_event(dg.AssetKey(["checkpoints", "tiny_full"]))
    version = event.asset_materialization.metadata["version"].value
    uri = event.asset_materialization.metadata["published_uri"].value
    assert uri == f"s3://artifacts/project/checkpoints/tiny_full/{version}"
    local = config.root / "checkpoints" / "tiny_full" / version
    published = {p.removeprefix(f"artifacts/project/checkpoints/tiny_full/{version}/") for p in fs.find(uri)}
    assert published == {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert fs.cat(f"{uri}/manifest.json") == (local / "manifest.json").read_bytes()
    # The model card, rewritten with the results by the report, is published again.
    assert fs.cat(f"{uri}/README.md") == (local / "README.md").read_bytes()
    assert "model-index" in (local / "README.md").read_text()

    report = json.loads(fs.cat("artifacts/project/reports/tiny_full/eval.json"))
    assert report["recipe"] == "tiny_full" and fs.exists("artifacts/project/reports/tiny_full/report.md")
    assert fs.exists("artifacts/project/reports/leaderboard/tickets/leaderboard.png")
    champion = json.loads(fs.cat("artifacts/project/models/tickets/champion/champion.json"))
    assert champion["recipe"] == "tiny_full" and fs.exists("artifacts/project/models/tickets/champion/model.safetensors")
    assert len(fs.cat("artifacts/project/models/tickets/history.jsonl").splitlines()) == 1

    dataset = instance.get_latest_materialization_event(dg.AssetKey(["datasets", "tickets"])).asset_materialization
    export = dataset.metadata["published_uri"].value
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.find(export)) == [
        "dataset.json", "test.parquet", "train.parquet", "validation.parquet"]
    rows = duckdb.sql(f"SELECT count(*) FROM read_parquet('{config.root}/datasets/tickets/*/*.parquet')").fetchall()
    assert rows == [(dataset.metadata["dagster/row_count"].value,)]
    # The warehouse is a local file: DuckDB takes one writer per file, which an object store cannot host.
    assert config.warehouse_path.is_file() and not fs.exists("artifacts/project/warehouse.duckdb")


def test_a_machine_without_the_local_checkpoint_and_dataset_evaluates_the_published_ones(on_s3, tmp_path, monkeypatch):
    config, instance, _ = on_s3
    monkeypatch.setenv("FT_ASSETS_MODEL_CACHE", str(tmp_path / "cache"))
    checkpoints, snapshots = config.root / "checkpoints", config.root / "datasets"
    # As on a machine that neither trained the checkpoint nor built the dataset.
    shutil.move(checkpoints, tmp_path / "checkpoints")
    shutil.move(snapshots, tmp_path / "datasets")
    try:
        result = materialize_all(build_definitions(config), instance, selection="reports/tiny_full")
        # The snapshot the checkpoint trained on, fetched whole from its published copy.
        fetched = {p.relative_to(snapshots): p.read_bytes() for p in snapshots.rglob("*") if p.is_file()}
    finally:
        shutil.move(tmp_path / "checkpoints", checkpoints)
        shutil.rmtree(snapshots, ignore_errors=True)
        shutil.move(tmp_path / "datasets", snapshots)
    assert result.success
    assert fetched == {p.relative_to(snapshots): p.read_bytes() for p in snapshots.rglob("*") if p.is_file()}
    meta = result.asset_materializations_for_node("reports__tiny_full")[0].metadata
    assert meta["checkpoint_path"].value.startswith(str(checkpoints))  # lineage names the real checkpoint
    assert meta["accuracy"].value > 0.5


def test_no_credential_reaches_the_event_log_metadata_manifests_or_reports(on_s3):
    config, instance, fs = on_s3
    secrets = [os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]]
    texts = [dg.serialize_value(event) for run in instance.get_runs() for event in instance.all_logs(run.run_id)]
    texts += [json.dumps(run.tags) for run in instance.get_runs()]
    texts += [p.read_text(errors="replace") for p in config.root.rglob("*")
              if p.is_file() and p.suffix in (".json", ".jsonl", ".md", ".yaml")]
    texts += [fs.cat(key).decode(errors="replace") for key in fs.find("artifacts/project")
              if key.endswith((".json", ".jsonl", ".md"))]
    # The scan reads what a leak would be in: the runs' events, manifests and reports, local and published.
    assert any("s3://artifacts/project/checkpoints/tiny_full/" in t for t in texts)
    assert any('"raw_files"' in t for t in texts) and len(texts) > 100
    leaks = [t[:200] for t in texts if any(secret in t for secret in secrets)]
    assert not leaks
