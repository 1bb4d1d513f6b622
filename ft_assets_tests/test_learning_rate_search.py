"""Choosing the learning rate on validation: `training.learning_rate: {search: [...] | auto}` trains one
partition of learning_rate_search/<recipe> per rate, for real on the tiny BERT, and checkpoints/<recipe>
publishes the run with the best validation figure. The test split plays no part: the step that chooses never
reads it (spied on), the training processes are not told where it is (their spec has no such field), and a
test split replaced by one the models get all wrong leaves every candidate's figures and the choice as they
were."""

import json
import math

import dagster as dg
import pytest
import yaml

from ft_assets.defs import build_definitions
from ft_assets.defs.resources import latest_partition_metadata
from ft_assets.lib.config import LEARNING_RATE_GRID, ConfigError, RecipeConfig, load_config
from ft_assets.lib.datasets.snapshot import Snapshot
from ft_assets.lib.training.selection import best_candidate
from ft_assets.lib.training.spec import TrainingSpec
from ft_assets_tests.conftest import LABELS, LEARNING_TRAINING, ticket_rows, write_csv, write_project
from ft_assets_tests.helpers import materialize_all

# 1e-7 leaves the encoder where it started (the head still learns at full's head rate, 1e-3); 3e-3 is what
# the tiny BERT needs to learn the tickets (LEARNING_TRAINING).
RATES = [1e-7, 3e-3]


def search_recipe(model_dir, search, method="full", **training) -> dict:
    return {"name": "tiny_search", "dataset": "tickets", "base_model": str(model_dir), "method": method,
            "training": {**LEARNING_TRAINING, "learning_rate": {"search": search}, **training}}


def test_auto_is_the_methods_documented_grid_and_each_candidate_is_the_recipe_at_one_rate():
    for method, grid in LEARNING_RATE_GRID.items():
        recipe = RecipeConfig.model_validate({"name": "r", "dataset": "d", "method": method,
                                              "training": {"learning_rate": {"search": "auto"}}})
        assert recipe.learning_rate_candidates == grid == sorted(grid)
    recipe = RecipeConfig.model_validate({"name": "r", "dataset": "d", "method": "full",
                                          "training": {"learning_rate": {"search": [1e-4, 1e-5]}, "epochs": 4}})
    assert recipe.learning_rate_candidates == [1e-5, 1e-4]
    candidate = recipe.with_learning_rate(1e-4)
    assert candidate.learning_rate == 1e-4 and candidate.training.epochs == 4
    assert candidate.training.head_learning_rate == 1e-3  # full's head default, as for a recipe with one rate
    lora = RecipeConfig.model_validate({"name": "r", "dataset": "d", "method": "lora",
                                        "training": {"learning_rate": {"search": [1e-4, 1e-3]}}})
    assert lora.with_learning_rate(1e-3).training.head_learning_rate == 1e-3  # the head follows the candidate
    with pytest.raises(ValueError, match="searches its learning rate"):
        recipe.learning_rate
    assert recipe.recipe_hash() != RecipeConfig.model_validate(
        {"name": "r", "dataset": "d", "method": "full",
         "training": {"learning_rate": {"search": [1e-4, 3e-5]}, "epochs": 4}}).recipe_hash()


@pytest.mark.parametrize("training, dataset, expected", [
    ({"learning_rate": {"search": [1e-3]}}, {}, "field training.learning_rate.search: Value error, a search needs "
                                                "at least two rates"),
    ({"learning_rate": {"search": [1e-3, 0.001]}}, {}, "search has duplicates"),
    ({"learning_rate": {"search": [1e-3, -1]}}, {}, "field training.learning_rate.search.1: Input should be "
                                                    "greater than 0 (got -1)"),
    ({"learning_rate": {"search": "grid"}}, {}, "field training.learning_rate.search: Input should be 'auto'"),
    ({"learning_rate": -1}, {}, "field training.learning_rate: Input should be greater than 0 (got -1)"),
    ({"learning_rate": {"search": "auto"}}, {"validation_fraction": 0.0},
     "field training.learning_rate.search: needs a validation split"),
    ({"learning_rate": {"search": "auto"}}, {"learning_curve": {"fractions": [0.5], "recipes": ["tiny_search"]}},
     "recipe 'tiny_search' searches its learning rate"),
])
def test_a_wrong_search_names_the_recipe_and_field(tmp_path, tiny_model_dir, training, dataset, expected):
    recipe = {"name": "tiny_search", "dataset": "tickets", "base_model": str(tiny_model_dir), "method": "lora",
              "training": training}
    path = write_project(tmp_path, tiny_model_dir, recipes=[recipe], dataset=dataset)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert expected in str(error.value)
    assert ("recipes[0] (tiny_search)" in str(error.value)) or ("datasets[0] (tickets)" in str(error.value))
    assert str(error.value).count("\n  - ") == 1  # one problem, one line: not one per shape the field may take


def test_the_best_candidate_is_chosen_as_the_best_step_is():
    evaluations = [{"eval_accuracy": 0.8, "eval_loss": 0.5}, {"eval_accuracy": float("nan"), "eval_loss": 0.1},
                   {"eval_accuracy": 0.8, "eval_loss": 0.4}, None, {"eval_accuracy": 0.7, "eval_loss": 0.2}]
    assert best_candidate("classification", evaluations) == 2  # the tie goes to the lower loss; NaN never wins
    assert best_candidate("instruction", [{"eval_loss": 2.0}, {"eval_loss": 1.5}, {"eval_loss": math.inf}]) == 1
    assert best_candidate("classification", [None, {"eval_accuracy": math.nan, "eval_loss": 1.0}]) is None


def test_a_training_spec_names_no_test_split():
    # What a training process reads is what its spec names: the train and validation splits only.
    assert not [field for field in TrainingSpec.model_fields if "test" in field]


def write_test_corpus(folder, labels_shift: int = 0):
    """The test split's own corpus (datasets.test_corpus): texts found nowhere else, so that rewriting it leaves
    the train and validation splits as they are; `labels_shift` rotates every label (a test split the models
    get wrong)."""
    rows = ticket_rows(10, seed=5)
    shifted = [(LABELS[(LABELS.index(label) + labels_shift) % len(LABELS)], f"{text} (case {i})")
               for i, (label, text) in enumerate(rows)]
    write_csv(folder / "data" / "raw" / "tickets_test" / "test.csv", shifted)


@pytest.fixture(scope="module")
def search_project(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("search_project")
    path = write_project(folder, tiny_model_dir, n_per_label=60, recipes=[search_recipe(tiny_model_dir, RATES)],
                         dataset={"test_corpus": "tickets_test"})
    project = yaml.safe_load(path.read_text())
    project["corpora"].append({"name": "tickets_test", "path": "raw/tickets_test/", "format": "csv",
                               "label_field": "label"})
    path.write_text(yaml.safe_dump(project, sort_keys=False))
    write_test_corpus(folder)
    config = load_config(path)
    defs = build_definitions(config)
    (folder / "dagster_home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(folder / "dagster_home"))
    assert materialize_all(defs, instance, selection=["raw/tickets", "raw/tickets_test", "datasets/tickets"]).success
    return folder, config, defs, instance


def _candidates(defs) -> dg.AssetsDefinition:
    return next(a for a in defs.assets if isinstance(a, dg.AssetsDefinition)
                and a.key.to_user_string() == "learning_rate_search/tiny_search")


def test_the_search_publishes_the_rate_best_on_validation_without_reading_the_test_split(search_project,
                                                                                          monkeypatch):
    _, config, defs, instance = search_project
    candidates = _candidates(defs)
    assert sorted(candidates.partitions_def.get_partition_keys()) == ["1e-7", "3e-3"]
    checkpoint_key = dg.AssetKey(["checkpoints", "tiny_search"])
    # Until every candidate has run, there is nothing to choose from, and the error says what to run.
    result = materialize_all(defs, instance, selection=["checkpoints/tiny_search"], raise_on_error=False)
    assert not result.success
    failure = str(next(e for e in result.all_events if e.is_step_failure).event_specific_data.error)
    assert "1e-7 has no run yet" in failure and "3e-3 has no run yet" in failure and "--partition <rate>" in failure

    splits_read = []
    read_split = Snapshot.read_split

    def spying_read_split(self, split):
        splits_read.append(split)
        assert split != "test", "the learning-rate search read the test split"
        return read_split(self, split)

    monkeypatch.setattr(Snapshot, "read_split", spying_read_split)
    for key in candidates.partitions_def.get_partition_keys():
        assert dg.materialize([candidates], resources=defs.resources, instance=instance, partition_key=key).success
    assert materialize_all(defs, instance, selection=["checkpoints/tiny_search"]).success
    assert "test" not in splits_read
    monkeypatch.undo()

    meta = instance.get_latest_materialization_event(checkpoint_key).asset_materialization.metadata
    manifest = meta["manifest"].value
    search = manifest["learning_rate_search"]
    by_rate = {c["learning_rate"]: c for c in search["candidates"]}
    assert sorted(by_rate) == RATES and search["selection_metric"] == "eval_accuracy" and search["split"] == "validation"
    assert by_rate[3e-3]["validation"]["eval_accuracy"] > by_rate[1e-7]["validation"]["eval_accuracy"]
    assert search["chosen_learning_rate"] == 3e-3 and by_rate[3e-3]["chosen"] and not by_rate[1e-7]["chosen"]
    assert meta["learning_rate"].value == 3e-3
    # The published checkpoint is the chosen run's weights, and says which settings trained them.
    published = config.root / "checkpoints" / "tiny_search" / meta["version"].value
    chosen_dir = by_rate[3e-3]["checkpoint_path"]
    assert str(published) == meta["checkpoint_path"].value and str(published) != chosen_dir
    for name in ("model.safetensors", "train_info.json", "metrics.jsonl"):
        assert (published / name).read_bytes() == (config.root / "learning_rate_search" / "tiny_search" / "3e-3"
                                                   / chosen_dir.rsplit("/", 1)[-1] / name).read_bytes()
    assert manifest["recipe"]["training"]["learning_rate"] == 3e-3
    assert json.loads((published / "manifest.json").read_text())["learning_rate_search"] == search
    assert "The learning rate 0.003 was chosen from 1e-07, 0.003" in (published / "README.md").read_text()
    assert search["train_seconds_all_candidates"] == pytest.approx(sum(c["train_seconds"] for c in by_rate.values()))

    # The audit names the candidate run the weights are, and what it won over.
    from ft_assets.audit import audit_checkpoint, format_chain

    chain = audit_checkpoint(instance, "tiny_search")
    assert chain["checkpoint"]["learning_rate_search"] == search
    assert chain["checkpoint"]["settings"]["training"]["learning_rate"] == 3e-3
    assert (f"learning rate 0.003 chosen on the validation split (eval_accuracy) from 1e-07, 0.003; the weights of "
            f"run {by_rate[3e-3]['run_id']}") in format_chain(chain)

    # The report scores the chosen weights on the test split and lists every candidate.
    assert materialize_all(defs, instance, selection=["reports/tiny_search"]).success
    report = json.loads((config.root / "reports" / "tiny_search" / "eval.json").read_text())
    assert report["learning_rate_search"] == search and report["checkpoint"] == str(published)
    markdown = (config.root / "reports" / "tiny_search" / "report.md").read_text()
    assert "## Learning rate: chosen on the validation split" in markdown and "| 0.003 |" in markdown
    assert "**chosen**" in markdown


def test_a_new_test_split_changes_neither_the_candidates_nor_the_choice(search_project):
    folder, config, defs, instance = search_project
    candidates = _candidates(defs)
    keys = candidates.partitions_def.get_partition_keys()
    for key in keys:
        if not latest_partition_metadata(instance, candidates.key, key):  # the test above ran them
            assert dg.materialize([candidates], resources=defs.resources, instance=instance, partition_key=key).success
    before = {key: latest_partition_metadata(instance, candidates.key, key)["candidate"] for key in keys}
    try:
        # The test split is replaced by one whose every label is wrong; train and validation stay as they were.
        write_test_corpus(folder, labels_shift=1)
        assert materialize_all(defs, instance, selection=["raw/tickets_test", "datasets/tickets"]).success
        # The candidates trained on the dataset's previous version are not compared with each other...
        result = materialize_all(defs, instance, selection=["checkpoints/tiny_search"], raise_on_error=False)
        assert not result.success
        failure = str(next(e for e in result.all_events if e.is_step_failure).event_specific_data.error)
        assert "1e-7 trained on datasets/tickets version" in failure and "3e-3 trained on datasets/tickets" in failure
        # ...and trained again, they score the same on validation and the same rate wins.
        for key in keys:
            assert dg.materialize([candidates], resources=defs.resources, instance=instance, partition_key=key).success
        after = {key: latest_partition_metadata(instance, candidates.key, key)["candidate"] for key in keys}
        assert {k: c["dataset_version"] for k, c in after.items()} != {k: c["dataset_version"] for k, c in before.items()}
        assert {k: c["validation"] for k, c in after.items()} == {k: c["validation"] for k, c in before.items()}
        assert materialize_all(defs, instance, selection=["checkpoints/tiny_search", "reports/tiny_search"]).success
        manifest = instance.get_latest_materialization_event(
            dg.AssetKey(["checkpoints", "tiny_search"])).asset_materialization.metadata["manifest"].value
        assert manifest["learning_rate_search"]["chosen_learning_rate"] == 3e-3
        # The test split did change: the chosen weights now get most of it wrong.
        report = json.loads((config.root / "reports" / "tiny_search" / "eval.json").read_text())
        assert report["accuracy"] < 0.5
    finally:
        write_test_corpus(folder)
