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


def ticket_project(tmp_path, tiny_model_dir, auto_retrain: dict | None, *, trained: bool = True):
    """`auto` retrains on `auto_retrain` (None: the default a new project gets), `manual` never does; the
    raw corpus and dataset are built, and with `trained` both checkpoints exist as if trained before."""
    recipes = [{"name": name, "dataset": "tickets", "base_model": str(tiny_model_dir), "method": "head_only",
                "training": dict(TRAINING), **({"retrain": retrain} if retrain is not None else {})}
               for name, retrain in (("auto", auto_retrain), ("manual", "manual"))]
    config_path = write_project(tmp_path, tiny_model_dir, recipes=recipes)
    defs = build_definitions(load_config(config_path))
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_all(defs, instance, selection=[RAW, DATASET]).success
    if trained:  # recorded, not trained: the conditions read the event log, not the weights
        for key in (AUTO, MANUAL):
            instance.report_runless_asset_event(dg.AssetMaterialization(key))
    return defs, instance, tmp_path / "data" / "raw" / "tickets"


@pytest.fixture
def project(tmp_path, tiny_model_dir):
    return ticket_project(tmp_path, tiny_model_dir, None)


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


def test_a_recipe_never_trained_trains_as_soon_as_its_data_is_ready(tmp_path, tiny_model_dir):
    defs, instance, _ = ticket_project(tmp_path, tiny_model_dir, None, trained=False)
    clock = Clock()
    result, cursor = evaluate(defs, instance, clock.at(-50))  # 10 past: no tick of any schedule needed
    assert requested(result) == {"checkpoints/auto"}
    result, _ = evaluate(defs, instance, clock.at(-49), cursor)
    assert not result.get_num_requested(AUTO)  # requested once, not on every tick until it has trained


def test_the_default_interval_trains_new_data_at_once_then_at_most_once_an_hour(project):
    """The default a new project gets, `min_interval: 1h`: counted from the last request, not the clock."""
    defs, instance, landing = project
    clock = Clock()
    _, cursor = evaluate(defs, instance, clock.at(-50))
    add_file(defs, instance, landing, "first.csv", seed=5)
    result, cursor = evaluate(defs, instance, clock.at(-49), cursor)
    assert requested(result) == {"checkpoints/auto"}  # at once: nothing was requested within the hour
    # The daemon's next tick. Needed only because this clock runs an hour ahead of the events: Dagster
    # orders a data change against the last request by their timestamps, and the materializations
    # below carry the real time, which is earlier than this simulated request.
    result, cursor = evaluate(defs, instance, clock.at(-48.5), cursor)
    assert not result.get_num_requested(AUTO)

    add_file(defs, instance, landing, "second.csv", seed=6)  # 10 minutes after the first
    for minutes in (-39, -10, 1, 10.5):  # the top of the hour is no tick here; 59.5 minutes is not an hour
        result, cursor = evaluate(defs, instance, clock.at(minutes), cursor)
        assert not result.get_num_requested(AUTO), f"requested {minutes + 49} minutes after the last request"
    result, cursor = evaluate(defs, instance, clock.at(12), cursor)  # 61 minutes after it
    assert requested(result) == {"checkpoints/auto"}  # one run for the second file, never for `manual`
    for minutes in (12.5, 80, 200):  # nothing changed since, however long the wait
        result, cursor = evaluate(defs, instance, clock.at(minutes), cursor)
        assert not result.get_num_requested(AUTO)


def test_a_cron_recipe_trains_only_at_its_ticks_once_for_many_files(tmp_path, tiny_model_dir):
    defs, instance, landing = ticket_project(tmp_path, tiny_model_dir, {"cron": "0 * * * *"})
    clock = Clock()
    _, cursor = evaluate(defs, instance, clock.at(-50))
    add_file(defs, instance, landing, "first.csv", seed=5)
    add_file(defs, instance, landing, "second.csv", seed=6)
    result, cursor = evaluate(defs, instance, clock.at(-30), cursor)
    assert AUTO.to_user_string() not in requested(result)  # no tick of `0 * * * *` yet
    result, cursor = evaluate(defs, instance, clock.at(1), cursor)
    assert result.get_num_requested(AUTO) == 1 and not result.get_num_requested(MANUAL)  # two files, one run
    result, cursor = evaluate(defs, instance, clock.at(2), cursor)  # the daemon's next tick (see above)
    assert not result.get_num_requested(AUTO)

    add_file(defs, instance, landing, "third.csv", seed=7)
    result, cursor = evaluate(defs, instance, clock.at(20), cursor)
    assert not result.get_num_requested(AUTO)  # no tick since the last request
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


def test_a_searched_learning_rate_trains_every_candidate_then_publishes_once_they_are_all_done(tmp_path,
                                                                                              tiny_model_dir):
    """The default retrain gate, on a recipe with `learning_rate: {search: ...}`: new data trains each candidate
    rate at once; the checkpoint that chooses among them waits for the last."""
    search = dg.AssetKey(["learning_rate_search", "searched"])
    chosen = dg.AssetKey(["checkpoints", "searched"])
    config_path = write_project(tmp_path, tiny_model_dir, recipes=[
        {"name": "searched", "dataset": "tickets", "base_model": str(tiny_model_dir), "method": "head_only",
         "training": {**TRAINING, "learning_rate": {"search": [1e-3, 3e-3]}}}])
    defs = build_definitions(load_config(config_path))
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_all(defs, instance, selection=[RAW, DATASET]).success
    clock = Clock()
    result, cursor = evaluate(defs, instance, clock.at(-50))
    assert result.get_num_requested(search) == 2 and not result.get_num_requested(chosen)
    # Recorded, not trained: the conditions read the event log, not the weights.
    instance.report_runless_asset_event(dg.AssetMaterialization(search, partition="1e-3"))
    result, cursor = evaluate(defs, instance, clock.at(-49), cursor)
    assert not result.get_num_requested(chosen) and not result.get_num_requested(search)
    instance.report_runless_asset_event(dg.AssetMaterialization(search, partition="3e-3"))
    result, cursor = evaluate(defs, instance, clock.at(-48), cursor)
    assert result.get_num_requested(chosen) == 1 and not result.get_num_requested(search)
    instance.report_runless_asset_event(dg.AssetMaterialization(chosen))
    result, _ = evaluate(defs, instance, clock.at(-47), cursor)
    assert not result.get_num_requested(chosen)
