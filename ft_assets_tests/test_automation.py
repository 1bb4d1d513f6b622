"""Declarative automation over the real Definitions: what new raw content starts, and what it must not."""

from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from ft_assets.defs import build_definitions
from ft_assets.lib.config import load_config
from ft_assets_tests.conftest import ticket_rows, write_csv, write_project
from ft_assets_tests.helpers import materialize_all

RAW, DATASET = dg.AssetKey(["raw", "tickets"]), dg.AssetKey(["datasets", "tickets"])
AUTO, MANUAL = dg.AssetKey(["checkpoints", "auto"]), dg.AssetKey(["checkpoints", "manual"])
TRAINING = {"epochs": 1, "batch_size": 16, "max_length": 16}


@pytest.fixture
def project(tmp_path, tiny_model_dir):
    recipes = [{"name": name, "dataset": "tickets", "base_model": str(tiny_model_dir), "method": "head_only",
                "training": dict(TRAINING), "retrain": retrain}
               for name, retrain in (("auto", {"min_interval": "1h"}), ("manual", "manual"))]
    config_path = write_project(tmp_path, tiny_model_dir, recipes=recipes)
    defs = build_definitions(load_config(config_path))
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_all(defs, instance, selection=[RAW, DATASET]).success
    return defs, instance, tmp_path / "data" / "raw" / "tickets"


class Clock:
    """Evaluation times from the top of the next hour, so the tests know when `0 * * * *` ticks."""

    def __init__(self):
        self.hour = (datetime.now(timezone.utc) + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)

    def at(self, minutes: float) -> datetime:
        return self.hour + timedelta(minutes=minutes)


def evaluate(defs, instance, when: datetime, cursor=None):
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=when, cursor=cursor)
    return result, result.cursor


def requested(result) -> set[str]:
    return {k.to_user_string() for k in (RAW, DATASET, AUTO, MANUAL) if result.get_num_requested(k)}


def add_file(defs, instance, landing, name: str, seed: int, *, rebuild_dataset: bool = True) -> None:
    """A new landing file and what follows it: the sensor's raw run, then (automation's part) the dataset."""
    write_csv(landing / name, ticket_rows(10, seed=seed))
    assert materialize_all(defs, instance, selection=[RAW, DATASET] if rebuild_dataset else [RAW]).success


def test_new_raw_content_requests_the_dataset(project):
    defs, instance, landing = project
    clock = Clock()
    _, cursor = evaluate(defs, instance, clock.at(-50))
    add_file(defs, instance, landing, "new.csv", seed=5, rebuild_dataset=False)
    result, _ = evaluate(defs, instance, clock.at(-40), cursor)
    assert requested(result) == {"datasets/tickets"}


def test_an_unchanged_dataset_requests_no_training(project):
    defs, instance, _ = project
    clock = Clock()
    _, cursor = evaluate(defs, instance, clock.at(-50))
    # Rebuilt from the same files: same rows, same data version.
    assert materialize_all(defs, instance, selection=[RAW, DATASET]).success
    result, _ = evaluate(defs, instance, clock.at(5), cursor)
    assert AUTO.to_user_string() not in requested(result)


def test_a_changed_dataset_retrains_once_per_interval_and_never_a_manual_recipe(project):
    defs, instance, landing = project
    clock = Clock()
    _, cursor = evaluate(defs, instance, clock.at(-50))
    add_file(defs, instance, landing, "first.csv", seed=5)
    add_file(defs, instance, landing, "second.csv", seed=6)
    result, cursor = evaluate(defs, instance, clock.at(-30), cursor)
    assert AUTO.to_user_string() not in requested(result)  # no tick of `0 * * * *` yet
    result, cursor = evaluate(defs, instance, clock.at(1), cursor)
    assert result.get_num_requested(AUTO) == 1 and not result.get_num_requested(MANUAL)  # two files, one run
    # The daemon's next tick. Needed only because this clock runs an hour ahead of the events: Dagster
    # orders a data change against the last request by their timestamps, and the materializations
    # below carry the real time, which is earlier than this simulated request.
    result, cursor = evaluate(defs, instance, clock.at(2), cursor)
    assert not result.get_num_requested(AUTO)

    add_file(defs, instance, landing, "third.csv", seed=7)
    result, cursor = evaluate(defs, instance, clock.at(20), cursor)
    assert not result.get_num_requested(AUTO)  # within the hour of the last request
    result, cursor = evaluate(defs, instance, clock.at(61), cursor)
    assert result.get_num_requested(AUTO) == 1 and not result.get_num_requested(MANUAL)
    result, _ = evaluate(defs, instance, clock.at(125), cursor)
    assert not result.get_num_requested(AUTO)  # nothing changed since, however many ticks passed


def test_a_failed_dataset_check_blocks_training(project):
    defs, instance, landing = project
    clock = Clock()
    _, cursor = evaluate(defs, instance, clock.at(-50))
    add_file(defs, instance, landing, "first.csv", seed=5)
    # The contract cannot fail on data our cleaning wrote (it quarantines what would break it), so the
    # failure is recorded as a broken cleaning step would record it: an ERROR evaluation of the check.
    instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=DATASET, check_name="contract", passed=False, severity=dg.AssetCheckSeverity.ERROR))
    result, _ = evaluate(defs, instance, clock.at(1), cursor)
    assert not result.get_num_requested(AUTO)
