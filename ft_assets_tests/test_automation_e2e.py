"""The promise of automation, end to end: `dagster dev` running, a file dropped into the landing folder, and
the dataset, checkpoint and report built by the sensors and automation conditions alone."""

import json
import shutil

import yaml

from ft_assets.cli import main
from ft_assets.lib.storage import sha256_file
from ft_assets_tests.conftest import write_project
from ft_assets_tests.helpers import dagster_dev, wait_for, wait_for_run

# Sensor intervals of 5 s and the default retrain interval (1h since the last request: a recipe never
# trained trains at once): the whole chain fits well inside the bound.
BOUND_S = 300
LATEST = "query($keys: [AssetKeyInput!]) { assetNodes(assetKeys: $keys) { assetKey { path } " \
         "assetMaterializations(limit: 1) { runId } } }"
BUILT = [["datasets", "tickets"], ["checkpoints", "auto"], ["reports", "auto"]]


def built_by_automation(server) -> bool:
    nodes = server.graphql(LATEST, {"keys": [{"path": p} for p in BUILT]})["assetNodes"]
    return len(nodes) == len(BUILT) and all(n["assetMaterializations"] for n in nodes)


def test_a_dropped_file_is_ingested_trained_and_reported_by_automation_alone(tmp_path, tiny_model_dir, capsys):
    recipe = {"name": "auto", "dataset": "tickets", "base_model": str(tiny_model_dir), "method": "head_only",
              "training": {"epochs": 1, "batch_size": 16, "max_length": 16}}
    config_path = write_project(tmp_path, tiny_model_dir, recipes=[recipe])
    raw = yaml.safe_load(config_path.read_text())
    raw["automation"] = {"landing_interval_seconds": 5, "evaluation_interval_seconds": 5}
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    landing = tmp_path / "data" / "raw" / "tickets"
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for f in landing.iterdir():  # the landing folder starts empty
        f.rename(incoming / f.name)

    with dagster_dev(tmp_path, config_path) as server:
        shutil.copy(incoming / "part1.csv", landing / "tickets_2026_11.csv")
        wait_for(lambda: built_by_automation(server), BOUND_S,
                 "the dataset, checkpoint and report of the dropped file, by automation alone", server)
        # The report's checks are recorded after its materialization, in the same step: let its run end
        # before dagster dev stops, or the audit below can find the materialization without its gates. (The
        # run may fail: a one-epoch head on the random encoder passes no gate, so its champion step fails.)
        nodes = server.graphql(LATEST, {"keys": [{"path": ["reports", "auto"]}]})["assetNodes"]
        wait_for_run(server, nodes[0]["assetMaterializations"][0]["runId"])

    code = main(["--config", str(config_path), "audit", "auto", "--json",
                 "--dagster-home", str(tmp_path / "dagster_home")])
    assert code == 0
    chain = json.loads(capsys.readouterr().out)
    assert [f["sha256"] for f in chain["raw_files"]] == [sha256_file(landing / "tickets_2026_11.csv")]
    assert chain["raw_files"][0]["uri"].endswith("tickets_2026_11.csv")
    assert chain["evaluation"] is not None and [g["name"] for g in chain["evaluation"]["gates"]] == ["beats_baselines"]
