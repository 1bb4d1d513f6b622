"""Preference recipes in the project YAML: the objective's defaults, and every combination that cannot run
failing at load with the recipe and the field named."""

from __future__ import annotations

import pytest

from ft_assets.lib.config import ConfigError, load_config
from ft_assets_tests.helpers import write_config

PREFERENCE = {
    "corpora": [{"name": "lines", "path": "raw/lines/", "format": "txt"},
                {"name": "qa", "path": "raw/qa/", "format": "jsonl", "record": "instruction"},
                {"name": "pairs", "path": "raw/pairs/", "format": "jsonl", "record": "preference"},
                {"name": "tickets", "path": "raw/t/", "format": "csv", "label_field": "label"}],
    "datasets": [{"name": "lm", "corpus": "lines", "task": "language_modeling"},
                 {"name": "sft", "corpus": "qa", "task": "instruction"},
                 {"name": "prefs", "corpus": "pairs", "task": "preference"},
                 {"name": "cls", "corpus": "tickets"}],
    "recipes": [
        {"name": "pre", "dataset": "lm", "base_model": "scratch", "scratch": {"vocab_size": 512}, "method": "full"},
        {"name": "sft_full", "dataset": "sft", "base_model": "checkpoint:pre", "method": "full"},
        {"name": "sft_lora", "dataset": "sft", "base_model": "checkpoint:pre", "method": "lora"},
        {"name": "dpo", "dataset": "prefs", "base_model": "checkpoint:sft_full", "method": "lora"},
        {"name": "dpo_on_adapter", "dataset": "prefs", "base_model": "checkpoint:sft_lora", "method": "lora",
         "objective": "ipo", "objective_args": {"beta": 0.5, "precompute_reference": True}},
        {"name": "reward", "dataset": "prefs", "method": "lora"},
    ],
}


def test_a_pretrain_sft_dpo_chain_and_a_reward_model_validate_with_their_objectives_defaults(tmp_path):
    config = load_config(write_config(tmp_path, PREFERENCE))
    recipes = {r.name: r for r in config.recipes}
    assert recipes["dpo"].objective is None
    assert recipes["dpo"].objective_for("preference") == (
        "dpo", {"beta": 0.1, "label_smoothing": 0.0, "precompute_reference": False})
    assert recipes["dpo_on_adapter"].objective_args == {"beta": 0.5, "precompute_reference": True}
    assert recipes["reward"].objective_for("preference") == ("reward", {})  # the packaged encoder: a reward model
    assert recipes["sft_full"].objective_for("instruction") == ("sft", {})
    changed = {**PREFERENCE, "recipes": PREFERENCE["recipes"][:3] + [
        {**PREFERENCE["recipes"][3], "objective_args": {"beta": 0.2}, "objective": "dpo"}]}
    assert (load_config(write_config(tmp_path, changed)).recipes[3].recipe_hash()
            != recipes["dpo"].recipe_hash())


def _with_recipe(recipe: dict) -> dict:
    return {**PREFERENCE, "recipes": PREFERENCE["recipes"][:3] + [recipe]}


@pytest.mark.parametrize("recipe,field,expected", [
    ({"name": "x", "dataset": "cls", "method": "lora", "objective": "dpo"}, "objective",
     "dpo is not for a classification dataset"),
    ({"name": "x", "dataset": "sft", "base_model": "/m", "method": "lora", "objective": "simpo"}, "objective",
     "simpo learns from preference pairs"),
    ({"name": "x", "dataset": "prefs", "base_model": "/m", "method": "lora", "objective": "sft"}, "objective",
     "sft learns one answer per prompt"),
    ({"name": "x", "dataset": "prefs", "base_model": "/m", "method": "lora", "objective": "orpo",
      "objective_args": {"precompute_reference": True}}, "(entry)",
     "objective_args.precompute_reference: orpo is reference-free"),
    ({"name": "x", "dataset": "prefs", "base_model": "/m", "method": "lora", "objective": "simpo",
      "objective_args": {"precompute_reference": False}}, "(entry)", "simpo is reference-free"),
    ({"name": "x", "dataset": "prefs", "base_model": "/m", "method": "lora", "objective_args": {"beta": 0.2}},
     "(entry)", "objective_args needs an objective"),
    ({"name": "x", "dataset": "prefs", "base_model": "/m", "method": "lora", "objective": "dpo",
      "objective_args": {"bta": 0.2}}, "(entry)", "objective_args.bta: Extra inputs are not permitted (dpo takes: beta, label_smoothing"),
    ({"name": "x", "dataset": "prefs", "method": "lora", "objective": "dpo"}, "base_model",
     "objective dpo needs a causal LM"),
    ({"name": "x", "dataset": "prefs", "base_model": "scratch", "scratch": {}, "method": "full"}, "base_model",
     "preference tuning starts from a model that can already answer"),
    ({"name": "x", "dataset": "prefs", "base_model": "checkpoint:sft_lora", "method": "dora"}, "base_model",
     "leaves a lora adapter, which this recipe continues"),
    ({"name": "x", "dataset": "prefs", "base_model": "/m", "method": "head_only"}, "method", "a causal LM has none"),
    ({"name": "x", "dataset": "prefs", "method": "prefix_tuning", "objective": "reward"}, "method",
     "a reward model is"),
])
def test_preference_recipes_that_cannot_run_fail_at_load_naming_the_recipe_and_field(tmp_path, recipe, field,
                                                                                     expected):
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, _with_recipe(recipe)))
    message = str(error.value)
    assert expected in message and "recipes[3] (x)" in message and f"field {field}" in message, message


def test_a_preference_dataset_needs_a_preference_corpus(tmp_path):
    payload = {**PREFERENCE, "datasets": PREFERENCE["datasets"][:2] + [
        {"name": "prefs", "corpus": "qa", "task": "preference"}], "recipes": []}
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, payload))
    assert "datasets[2] (prefs): field corpus" in str(error.value)


def test_forgetting_on_a_preference_base_needs_a_corpus(tmp_path):
    """A base tuned on pairs has no held-out text of its own to measure forgetting on: the pairs' test split
    holds pairs, which neither a causal LM's loss nor an encoder's embeddings read (it failed at the report)."""
    recipe = {"name": "x", "dataset": "prefs", "base_model": "checkpoint:dpo", "method": "lora", "forgetting": {}}
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, {**PREFERENCE, "recipes": PREFERENCE["recipes"] + [recipe]}))
    message = str(error.value)
    assert "recipes[6] (x): field forgetting.corpus" in message and "a preference dataset: pairs" in message, message


def test_a_preference_recipe_on_an_encoder_checkpoint_trains_a_reward_model(tmp_path):
    """The default objective follows the chain: a checkpoint of a reward model or a classifier is an encoder."""
    recipes = [r for r in PREFERENCE["recipes"] if r["name"] != "reward"] + [
        {"name": "reward", "dataset": "prefs", "method": "full"},
        {"name": "cls_full", "dataset": "cls", "method": "full"},
        {"name": "more_reward", "dataset": "prefs", "base_model": "checkpoint:reward", "method": "full"},
        {"name": "reward_from_cls", "dataset": "prefs", "base_model": "checkpoint:cls_full", "method": "lora"}]
    config = load_config(write_config(tmp_path, {**PREFERENCE, "recipes": recipes}))
    by_name = {r.name: r for r in config.recipes}
    assert by_name["more_reward"].objective_for("preference") == ("reward", {})
    assert by_name["reward_from_cls"].objective_for("preference") == ("reward", {})
    assert by_name["dpo"].objective_for("preference")[0] == "dpo"  # a causal chain keeps DPO


@pytest.mark.parametrize("base,dataset,extra,expected", [
    ("cls_full", "sft", {}, "recipe 'cls_full' trains an encoder (a classifier) on datasets/cls, and this "
                            "instruction recipe trains a causal LM"),
    ("sft_full", "cls", {}, "recipe 'sft_full' trains a causal LM on datasets/sft, and this classification "
                            "recipe trains an encoder (a classifier)"),
    ("cls_full", "prefs", {"objective": "dpo"}, "this preference recipe trains a causal LM"),
    ("sft_full", "prefs", {"objective": "reward"}, "this preference recipe trains an encoder (a reward model)"),
])
def test_a_checkpoint_base_of_the_other_kind_of_model_is_a_config_error(tmp_path, base, dataset, extra, expected):
    """It loaded, and failed minutes later when the training loaded an encoder as a causal LM (or back)."""
    recipes = PREFERENCE["recipes"] + [{"name": "cls_full", "dataset": "cls", "method": "full"},
                                       {"name": "x", "dataset": dataset, "base_model": f"checkpoint:{base}",
                                        "method": "full", **extra}]
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, {**PREFERENCE, "recipes": recipes}))
    message = str(error.value)
    assert "recipes[7] (x): field base_model: recipe" in message and expected in message, message
