"""Learning curves: nested, stratified shares of the train split; one Dagster partition per recipe × fraction,
each trained and scored for real on the tiny BERT; the curve gathered from them and the recipes' own reports."""

import json
import math
from collections import Counter

import dagster as dg
import pytest

from ft_assets.defs import build_definitions
from ft_assets.lib.config import ConfigError, load_config
from ft_assets.lib.datasets.subsets import nested_subset
from ft_assets.lib.evaluation.learning_curve import learning_curve, render_markdown
from ft_assets_tests.conftest import LABELS, LEARNING_TRAINING, write_project
from ft_assets_tests.helpers import classification_rows, materialize_all

FRACTIONS = [0.01, 0.03, 0.1, 0.3, 0.5, 1.0]


def test_shares_are_nested_stratified_and_independent_of_row_order():
    rows = classification_rows(100)  # 100 rows of each label
    rows["label"][:40] = [LABELS[0]] * 40  # and one label more common than the others
    shares = [nested_subset(rows, f, seed=7, stratify=True) for f in FRACTIONS]
    sets = [set(zip(s["text"], s["label"])) for s in shares]
    assert all(small < large for small, large in zip(sets, sets[1:]))  # each inside the next, strictly
    total = Counter(rows["label"])
    for fraction, share in zip(FRACTIONS, shares):
        counts = Counter(share["label"])
        assert set(counts) == set(total)  # every label, even at 1%
        for label, n in total.items():
            assert counts[label] == max(1, math.ceil(round(fraction * n, 9))), (fraction, label)
    assert shares[-1] == rows
    shuffled = {k: list(reversed(v)) for k, v in rows.items()}
    again = nested_subset(shuffled, 0.1, seed=7, stratify=True)
    assert set(zip(again["text"], again["label"])) == sets[2]
    other_seed = nested_subset(rows, 0.1, seed=8, stratify=True)
    assert set(zip(other_seed["text"], other_seed["label"])) != sets[2]
    with pytest.raises(ValueError, match=r"must be in \(0, 1\], got 0"):
        nested_subset(rows, 0.0, seed=7, stratify=True)


def test_unstratified_shares_are_nested_and_sized():
    rows = {"text": [f"line {i}" for i in range(200)], "label": [None] * 200}
    small, large = (nested_subset(rows, f, seed=0, stratify=False) for f in (0.05, 0.2))
    assert len(small["text"]) == 10 and len(large["text"]) == 40 and set(small["text"]) < set(large["text"])


def fake_report(method: str, accuracy: float, seconds: float) -> dict:
    return {"task": "classification", "method": method, "accuracy": accuracy, "macro_f1": accuracy, "n_test": 50,
            "cost": {"trainable_params": 10, "total_params": 100, "train_seconds": seconds, "examples_per_sec": 1.0,
                     "tokens_per_sec": 1.0, "peak_mem_bytes": 1, "peak_mem_kind": "process_rss", "device": "cpu",
                     "device_name": "cpu"},
            "baselines": {"majority": {"accuracy": 0.25, "macro_f1": 0.1},
                          "base_head_only": {"accuracy": 0.6, "macro_f1": 0.5}}}


def test_the_curve_names_the_smallest_fraction_within_one_point_of_full_data():
    from ft_assets.lib.evaluation.learning_curve import curve_point

    points = [curve_point(fake_report("lora", a, 1.0), "r_lora", f, n, 0)
              for f, n, a in ((0.1, 10, 0.70), (0.3, 30, 0.905), (0.5, 50, 0.92))]
    curve = learning_curve("d", points, {"r_lora": (fake_report("lora", 0.91, 5.0), 100)}, seed=0)
    assert curve["recipes"]["r_lora"] == {"method": "lora", "full_data": 0.91, "smallest_fraction_within_1_point": 0.3,
                                          "n_train_within_1_point": 30}
    assert curve["baselines"] == {"untuned": 0.6, "majority class": 0.25}
    # A classifier's untuned line had a head trained on all the data: the text says so, not "untuned" alone.
    assert "Baselines: untuned base + head trained on all the data 0.6000, majority class 0.2500." in \
        render_markdown(curve, "c.png")
    assert [p["fraction"] for p in curve["points"]] == [0.1, 0.3, 0.5, 1.0]
    assert curve["points"][-1]["n_train"] == 100 and curve["points"][-1]["train_seconds"] == 5.0


@pytest.mark.parametrize("curve, expected", [
    ({"fractions": [0.1, 1.5], "recipes": ["tiny_head"]}, "learning_curve.fractions: Value error, each fraction"),
    ({"fractions": [0.1, 0.1], "recipes": ["tiny_head"]}, "fractions has duplicates"),
    ({"fractions": [0.1], "recipes": ["nope"]}, "field learning_curve.recipes: no recipe named 'nope'"),
    ({"fractions": [0.1], "recipes": []}, "learning_curve.recipes: List should have at least 1 item"),
])
def test_a_wrong_learning_curve_names_the_dataset_and_field(tmp_path, tiny_model_dir, curve, expected):
    path = write_project(tmp_path, tiny_model_dir, dataset={"learning_curve": curve})
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "datasets[0] (tickets)" in str(error.value) and expected in str(error.value)


@pytest.fixture(scope="module")
def curve_project(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("curve_project")
    path = write_project(folder, tiny_model_dir, n_per_label=60, recipes=[
        {"name": "tiny_head", "dataset": "tickets", "base_model": str(tiny_model_dir), "method": "head_only",
         "training": LEARNING_TRAINING},
        {"name": "tiny_full", "dataset": "tickets", "base_model": str(tiny_model_dir), "method": "full",
         "training": {**LEARNING_TRAINING, "learning_rate": 3e-3, "head_learning_rate": 3e-3}},
    ], dataset={"learning_curve": {"fractions": [0.25, 0.5, 1.0], "recipes": ["tiny_head", "tiny_full"],
                                   "seed": 3}})
    config = load_config(path)
    defs = build_definitions(config)
    (folder / "dagster_home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(folder / "dagster_home"))
    # What the curve reads (the champion, whose gates these two-epoch recipes fail, is not): the points are
    # partitioned, a run materializes one partition at a time.
    unpartitioned = ["raw/tickets", "datasets/tickets"] + [f"{k}/{r}" for k in ("checkpoints", "reports")
                                                            for r in ("tiny_head", "tiny_full")]
    assert materialize_all(defs, instance, selection=unpartitioned).success
    points = next(a for a in defs.assets if isinstance(a, dg.AssetsDefinition)
                  and a.key.to_user_string() == "learning_curve/tickets")
    for key in points.partitions_def.get_partition_keys():
        result = dg.materialize([points], resources=defs.resources, instance=instance, partition_key=key)
        assert result.success, key
    assert materialize_all(defs, instance, selection=["reports/learning_curve/tickets"]).success
    return config, defs, instance, points


def test_each_point_trains_on_its_share_and_the_curve_gathers_them(curve_project):
    config, _, instance, points = curve_project
    assert sorted(points.partitions_def.get_partition_keys()) == sorted(
        f"{f}|{r}" for f in ("0.25", "0.5") for r in ("tiny_head", "tiny_full"))
    out = config.root / "reports" / "learning_curve" / "tickets"
    curve = json.loads((out / "learning_curve.json").read_text())
    assert [(p["recipe"], p["fraction"]) for p in curve["points"]] == [
        (r, f) for r in ("tiny_full", "tiny_head") for f in (0.25, 0.5, 1.0)]
    rows = json.loads((config.root / "reports" / "tiny_head" / "eval.json").read_text())
    for p in curve["points"]:
        assert p["method"] == {"tiny_head": "head_only", "tiny_full": "full"}[p["recipe"]]
        assert p["n_test"] == rows["n_test"] and 0.0 <= p["metrics"]["accuracy"] <= 1.0
        assert p["train_seconds"] > 0 and p["trainable_params"] > 0
    by = {(p["recipe"], p["fraction"]): p for p in curve["points"]}
    full = by[("tiny_head", 1.0)]["n_train"]
    assert by[("tiny_head", 0.25)]["n_train"] < by[("tiny_head", 0.5)]["n_train"] < full
    # Each point's checkpoint trained on exactly its share: its train_info counts the examples.
    for (recipe, fraction), p in by.items():
        if fraction < 1.0:
            info = json.loads((config.root / "learning_curve" / "tickets" / recipe / f"{fraction:g}" / "checkpoints"
                               / p["checkpoint_path"].rsplit("/", 1)[-1] / "train_info.json").read_text())
            assert info["train_examples"] == p["n_train"]
    # Full fine-tuning of the tiny BERT needs all the data here; a head on its random features learns nothing.
    full_fine_tuning = [by[("tiny_full", f)]["metrics"]["accuracy"] for f in (0.25, 0.5, 1.0)]
    assert full_fine_tuning == sorted(full_fine_tuning) and full_fine_tuning[0] < full_fine_tuning[-1]
    assert curve["recipes"]["tiny_full"]["smallest_fraction_within_1_point"] == 1.0
    assert curve["recipes"]["tiny_full"]["full_data"] == json.loads(
        (config.root / "reports" / "tiny_full" / "eval.json").read_text())["accuracy"]
    assert set(curve["baselines"]) == {"untuned", "majority class"}
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "learning_curve.md").read_text()
    assert "| tiny_full | full | 0.25 |" in markdown and "within 1 point from" in markdown
    record = instance.get_latest_materialization_event(dg.AssetKey(["reports", "learning_curve", "tickets"]))
    assert record.asset_materialization.metadata["points"].value == 6


def test_a_point_rematerialized_alone_leaves_the_others_untouched(curve_project):
    config, defs, instance, points = curve_project
    key = dg.AssetKey(["learning_curve", "tickets"])

    def state() -> dict:
        return {p: p.read_text() for p in (config.root / "learning_curve" / "tickets").glob("*/*/point.json")}

    before = state()
    storage_ids = {k: r.storage_id for k, r in _latest_by_partition(instance, key).items()}
    again = dg.materialize([points], resources=defs.resources, instance=instance, partition_key="0.5|tiny_full")
    assert again.success
    after = state()
    changed = {p for p in before if before[p] != after[p]}
    assert {p.parent.parent.name + "/" + p.parent.name for p in changed} <= {"tiny_full/0.5"}
    latest = _latest_by_partition(instance, key)
    assert {k for k in latest if latest[k].storage_id != storage_ids[k]} == {"0.5|tiny_full"}
    # Same share, same seed, same settings: the same figures (the tiny runs are deterministic on the CPU).
    point = next(p for p in after if p.parent.name == "0.5" and p.parent.parent.name == "tiny_full")
    assert json.loads(after[point])["metrics"] == json.loads(before[point])["metrics"]
    assert json.loads(after[point])["checkpoint_path"] != json.loads(before[point])["checkpoint_path"]
    assert len(list((point.parent / "checkpoints").iterdir())) == 1  # the older checkpoint was removed


def _latest_by_partition(instance, key) -> dict:
    records = instance.fetch_materializations(key, limit=100).records
    latest = {}
    for record in sorted(records, key=lambda r: r.storage_id):
        latest[record.partition_key] = record
    return latest


def test_fractions_are_sorted_and_fraction_1_trains_no_point_of_its_own(tmp_path, tiny_model_dir):
    path = write_project(tmp_path, tiny_model_dir, dataset={"learning_curve": {"fractions": [1.0, 0.1, 0.3],
                                                                               "recipes": ["tiny_head"]}})
    curve = load_config(path).datasets[0].learning_curve
    assert curve.fractions == [0.1, 0.3, 1.0] and curve.partial_fractions == [0.1, 0.3]


def test_points_train_when_asked_unless_the_curve_retrains(tmp_path, tiny_model_dir):
    for retrain, conditioned in ((None, False), ({"min_interval": "1d"}, True)):
        curve = {"fractions": [0.5, 1.0], "recipes": ["tiny_head"], **({"retrain": retrain} if retrain else {})}
        defs = build_definitions(load_config(write_project(tmp_path, tiny_model_dir, dataset={"learning_curve": curve})))
        specs = {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}
        assert (specs["learning_curve/tickets"].automation_condition is not None) == conditioned
        assert specs["reports/learning_curve/tickets"].automation_condition is not None


# Last in this file: it gives the shared project a new dataset version.
def test_points_of_an_older_dataset_version_are_left_out_and_named(curve_project):
    config, defs, instance, _ = curve_project
    extra = config.root / "raw" / "tickets" / "part3.csv"
    extra.write_text("label,text\nbilling,my invoice shows a charge twice this month\n")
    assert materialize_all(defs, instance, selection=["raw/tickets", "datasets/tickets"]).success
    result = materialize_all(defs, instance, selection=["reports/learning_curve/tickets"], raise_on_error=False)
    assert not result.success
    failure = str(next(e for e in result.all_events if e.is_step_failure).event_specific_data.error)
    assert "no point on the latest version of datasets/tickets yet" in failure
    assert "tiny_full × 0.5 (trained on datasets/tickets version" in failure
    assert "tiny_head × 1 (reports/tiny_head, trained on datasets/tickets version" in failure
    # The recipe retrained on the new version: its full-data point is back, the older shares are still named.
    assert materialize_all(defs, instance, selection=["checkpoints/tiny_head", "reports/tiny_head"]).success
    assert materialize_all(defs, instance, selection=["reports/learning_curve/tickets"]).success
    record = instance.get_latest_materialization_event(dg.AssetKey(["reports", "learning_curve", "tickets"]))
    assert record.asset_materialization.metadata["points"].value == 1
    missing = record.asset_materialization.metadata["missing"].value
    assert len(missing) == 5 and all("not the latest" in m for m in missing)
