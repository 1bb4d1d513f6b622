"""Landing sensors: a folder (and an S3 prefix on a local endpoint) watched by content, tick by tick."""

import os

import dagster as dg
import duckdb
import pytest
import yaml

from ft_assets.defs import build_definitions
from ft_assets.defs.ingest.sensors import TRIGGER_TAG
from ft_assets.lib.config import load_config
from ft_assets.lib.ingest.landing import landing_changes, list_landing
from ft_assets_tests.conftest import ticket_rows, write_csv, write_project
from ft_assets_tests.helpers import materialize_all


RAW_AND_DATASET = [dg.AssetKey(["raw", "tickets"]), dg.AssetKey(["datasets", "tickets"])]


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None, corpus: str = "tickets"):
    """One evaluation of the corpus' landing sensor: (run requests, the new cursor, the skip reason)."""
    sensor = defs.resolve_sensor_def(f"landing_{corpus}")
    result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs))
    return result.run_requests or [], result.cursor, result.skip_message


def test_listing_by_content_names_arrivals_changes_moves_and_withdrawals(tmp_path):
    landing = tmp_path / "landing"
    a = write_csv(landing / "a.csv", ticket_rows(2))
    b = write_csv(landing / "b.csv", ticket_rows(2, seed=1))
    (landing / ".hidden").write_text("editor swap file")
    first = list_landing(str(landing))
    assert list(first) == [a.as_uri(), b.as_uri()]
    assert landing_changes({}, first)["arrived"] == [{"uri": u, "sha256": first[u]["sha256"]} for u in first]

    b.rename(landing / "b_renamed.csv")
    write_csv(a, ticket_rows(3))
    second = list_landing(str(landing), first)
    changes = landing_changes(first, second)
    assert [c["uri"] for c in changes["moved"]] == [(landing / "b_renamed.csv").as_uri()]
    assert changes["changed"] == [{"uri": a.as_uri(), "sha256": second[a.as_uri()]["sha256"],
                                   "previous_sha256": first[a.as_uri()]["sha256"]}]
    assert changes["arrived"] == [] and changes["withdrawn"] == [
        {"uri": a.as_uri(), "sha256": first[a.as_uri()]["sha256"]}]  # the old version of a.csv


def test_an_unchanged_file_is_not_read_again(tmp_path):
    landing = tmp_path / "landing"
    a = write_csv(landing / "a.csv", ticket_rows(2))
    first = list_landing(str(landing))
    stat = a.stat()
    # Same size and mtime, other bytes: the listing trusts the stamp and keeps the recorded hash.
    a.write_bytes(a.read_bytes().replace(b"billing", b"billinG"))
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert list_landing(str(landing), first) == first
    assert list_landing(str(landing)) != first  # without the previous listing it is hashed afresh


@pytest.fixture
def watched(tmp_path, tiny_model_dir):
    config_path = write_project(tmp_path, tiny_model_dir, recipes=[])
    landing = tmp_path / "data" / "raw" / "tickets"
    for old in landing.iterdir():
        old.unlink()
    config = load_config(config_path)
    return config, build_definitions(config), dg.DagsterInstance.ephemeral(), landing


def test_the_sensor_requests_one_ingest_per_change_of_content(watched):
    config, defs, instance, landing = watched
    _, cursor, skip = tick(defs, instance, None)
    assert skip.startswith("no new or withdrawn content")

    write_csv(landing / "a.csv", ticket_rows(5))
    write_csv(landing / "b.csv", ticket_rows(5, seed=1))
    requests, cursor, _ = tick(defs, instance, cursor)
    assert len(requests) == 1 and requests[0].asset_selection == [dg.AssetKey(["raw", "tickets"])]
    assert requests[0].tags[TRIGGER_TAG].startswith("arrived: a.csv (") and ", b.csv (" in requests[0].tags[TRIGGER_TAG]

    requests, cursor, skip = tick(defs, instance, cursor)
    assert requests == [] and "2 file(s)" in skip

    (landing / "b.csv").rename(landing / "b_2026.csv")
    requests, cursor, skip = tick(defs, instance, cursor)
    assert requests == [] and "1 file(s) renamed or copied, same content" in skip

    write_csv(landing / "a.csv", ticket_rows(6))
    requests, cursor, _ = tick(defs, instance, cursor)
    assert len(requests) == 1 and requests[0].tags[TRIGGER_TAG].startswith("changed: a.csv (")

    b_sha = list_landing(str(landing))[(landing / "b_2026.csv").as_uri()]["sha256"]
    (landing / "b_2026.csv").unlink()
    requests, cursor, _ = tick(defs, instance, cursor)
    assert len(requests) == 1 and requests[0].tags[TRIGGER_TAG] == f"withdrawn: b_2026.csv ({b_sha[:12]})"


def test_a_new_sensor_does_not_ingest_what_was_already_ingested(watched):
    config, defs, instance, landing = watched
    write_csv(landing / "a.csv", ticket_rows(5))
    assert materialize_all(defs, instance, selection="raw/tickets").success
    requests, _, skip = tick(defs, instance, None)
    assert requests == [] and skip.startswith("no new or withdrawn content")


def test_withdrawn_files_are_logged_and_their_rows_leave_the_dataset(watched):
    config, defs, instance, landing = watched
    write_csv(landing / "a.csv", ticket_rows(10))
    write_csv(landing / "b.csv", ticket_rows(10, seed=1))
    assert materialize_all(defs, instance, selection=RAW_AND_DATASET).success
    (landing / "b.csv").unlink()
    result = materialize_all(defs, instance, selection=RAW_AND_DATASET)
    meta = result.asset_materializations_for_node("raw__tickets")[0].metadata
    assert meta["files_withdrawn"].value == 1 and meta["files_arrived"].value == 0
    changes = result.asset_materializations_for_node("datasets__tickets")[0].metadata["raw_file_changes"].value
    assert changes.startswith(f"- dropped {(landing / 'b.csv').as_uri()} (`") and "added" not in changes
    conn = duckdb.connect(str(config.warehouse_path), read_only=True)
    log = conn.sql('SELECT source_uri, event FROM raw."tickets__file_log" ORDER BY logged_at, event').fetchall()
    b = (landing / "b.csv").as_uri()
    assert (b, "arrived") in log and log[-1] == (b, "withdrawn")
    assert conn.sql('SELECT count(*) FROM datasets."tickets" WHERE source_uri = ?', params=[b]).fetchall() == [(0,)]


def test_the_same_over_an_s3_landing_prefix(tmp_path, tiny_model_dir, s3_endpoint):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("landing-bucket")
    config_path = write_project(tmp_path, tiny_model_dir, recipes=[])
    raw = yaml.safe_load(config_path.read_text())
    raw["corpora"][0]["path"] = "s3://landing-bucket/tickets/"
    config_path.write_text(yaml.safe_dump(raw))
    config = load_config(config_path)
    defs, instance = build_definitions(config), dg.DagsterInstance.ephemeral()
    local = write_csv(tmp_path / "upload" / "a.csv", ticket_rows(10))
    fs.put_file(str(local), "landing-bucket/tickets/a.csv")
    fs.put_file(str(write_csv(tmp_path / "upload" / "b.csv", ticket_rows(10, seed=1))), "landing-bucket/tickets/b.csv")

    requests, cursor, _ = tick(defs, instance, None)
    assert len(requests) == 1 and "a.csv" in requests[0].tags[TRIGGER_TAG] and "b.csv" in requests[0].tags[TRIGGER_TAG]
    assert tick(defs, instance, cursor)[0] == []
    fs.copy("landing-bucket/tickets/b.csv", "landing-bucket/tickets/b_copy.csv")
    fs.rm("landing-bucket/tickets/b.csv")
    requests, cursor, skip = tick(defs, instance, cursor)
    assert requests == [] and "renamed or copied" in skip
    fs.put_file(str(write_csv(local, ticket_rows(11))), "landing-bucket/tickets/a.csv")
    requests, cursor, _ = tick(defs, instance, cursor)
    assert len(requests) == 1 and requests[0].tags[TRIGGER_TAG].startswith("changed: a.csv")

    assert materialize_all(defs, instance, selection="raw/tickets").success
    conn = duckdb.connect(str(config.warehouse_path), read_only=True)
    uris = [r[0] for r in conn.sql('SELECT DISTINCT source_uri FROM raw."tickets" ORDER BY 1').fetchall()]
    assert uris == ["s3://landing-bucket/tickets/a.csv", "s3://landing-bucket/tickets/b_copy.csv"]
    fs.rm("landing-bucket/tickets/b_copy.csv")
    requests, _, _ = tick(defs, instance, cursor)
    assert len(requests) == 1 and requests[0].tags[TRIGGER_TAG].startswith("withdrawn: b_copy.csv")


def test_an_s3_key_with_dot_dot_segments_is_refused_and_recorded(tmp_path, tiny_model_dir, s3_endpoint):
    import boto3

    from ft_assets.lib.ingest.readers import read_corpus

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="dotdot")
    body = write_csv(tmp_path / "a.csv", ticket_rows(3)).read_bytes()
    s3.put_object(Bucket="dotdot", Key="tickets/a.csv", Body=body)
    s3.put_object(Bucket="dotdot", Key="tickets/sub/../../escape.csv", Body=body)  # a literal key, as S3 allows
    corpus = load_config(write_project(tmp_path, tiny_model_dir, recipes=[])).corpora[0]
    raw = read_corpus(corpus, "s3://dotdot/tickets/")
    assert set(raw.rows.to_table().column("source_uri").to_pylist()) == {"s3://dotdot/tickets/a.csv"}
    (reject,) = raw.rejects.to_table().to_pylist()
    assert reject["source_uri"] == "s3://dotdot/tickets/sub/../../escape.csv"
    assert reject["error"] == "file rejected: key with '..' or empty path segments"


def test_a_symlink_out_of_the_landing_folder_is_refused_and_recorded(watched, tmp_path):
    config, defs, instance, landing = watched
    write_csv(landing / "a.csv", ticket_rows(10))
    outside = write_csv(tmp_path / "someone_elses" / "secret.csv", ticket_rows(10, seed=9))
    (landing / "innocent.csv").symlink_to(outside)
    requests, _, _ = tick(defs, instance, None)
    assert "innocent" not in requests[0].tags[TRIGGER_TAG]
    result = materialize_all(defs, instance, selection=RAW_AND_DATASET)
    assert result.success
    conn = duckdb.connect(str(config.warehouse_path), read_only=True)
    link = (landing / "innocent.csv").as_uri()
    assert conn.sql('SELECT count(*) FROM raw."tickets" WHERE source_uri = ?', params=[link]).fetchall() == [(0,)]
    reason, detail = conn.sql('SELECT reason, detail FROM datasets."tickets__quarantine" WHERE source_uri = ?',
                              params=[link]).fetchall()[0]
    assert reason == "rejected_file" and f"symlink to {outside}, outside the landing folder" in detail
    accounting = next(e for e in result.get_asset_check_evaluations() if e.check_name == "row_accounting")
    assert accounting.passed
