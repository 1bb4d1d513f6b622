import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ft_assets.lib import config as schema
from ft_assets.lib.config import DEFAULT_LEARNING_RATE, ConfigError, load_config
from ft_assets_tests.conftest import readme_block
from ft_assets_tests.helpers import MINIMAL_CONFIG, write_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted(REPO.glob("ft_assets/configs/*.yaml")), ids=lambda p: p.name)
def test_every_shipped_project_yaml_validates(path):
    config = load_config(path)
    for corpus in config.corpora:
        assert Path(config.corpus_location(corpus)).exists(), f"{path.name}: corpus {corpus.name} points at nothing"


def test_the_readme_reference_block_validates_and_shows_every_setting(tmp_path):
    text = readme_block("# project.yaml: every setting", raw=True)
    config = load_config(write_text(tmp_path, text))
    assert [r.name for r in config.recipes] == ["tickets_lora", "questions_scratch", "pairs_dpo"]
    raw = yaml.safe_load(text)

    def shown(entries: list[dict], model) -> None:
        keys = set().union(*entries)
        missing = {name for name, field in model.model_fields.items() if (field.alias or name) not in keys}
        assert not missing, f"docs/configuration.md's reference block leaves out {model.__name__} fields {sorted(missing)}"

    recipes, datasets, corpora = raw["recipes"], raw["datasets"], raw["corpora"]
    shown([raw], schema.ProjectConfig)
    shown([raw["storage"]], schema.StorageConfig)
    shown([raw["automation"]], schema.AutomationConfig)
    shown([raw["gpu"]], schema.GpuConfig)
    shown(corpora, schema.CorpusConfig)
    shown([c["instruction_fields"] for c in corpora if "instruction_fields" in c], schema.InstructionFields)
    shown(datasets, schema.DatasetConfig)
    shown([d["champion"] for d in datasets if "champion" in d], schema.ChampionConfig)
    shown(recipes, schema.RecipeConfig)
    for section, model in [("training", schema.TrainingConfig), ("generation", schema.GenerationConfig),
                           ("forgetting", schema.ForgettingConfig), ("gates", schema.GatesConfig),
                           ("scratch", schema.ScratchModelConfig)]:
        shown([r[section] for r in recipes if section in r], model)


def write_text(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "project.yaml"
    path.write_text(text)
    return path


def test_default_config_resolves_to_the_repo_data_folder(monkeypatch):
    monkeypatch.delenv("FT_ASSETS_CONFIG", raising=False)
    monkeypatch.delenv("FT_ASSETS_ROOT", raising=False)
    config = load_config()
    assert config.root == REPO / "data"
    assert config.corpus_location(config.corpora[0]) == str(REPO / "data" / "raw" / "tickets")
    assert {r.method for r in config.recipes} == {"full", "lora", "head_only"}


def test_env_vars_pick_the_file_and_override_the_root(tmp_path, monkeypatch):
    path = write_config(tmp_path, MINIMAL_CONFIG)
    monkeypatch.setenv("FT_ASSETS_CONFIG", str(path))
    assert load_config().root == tmp_path / "data"
    monkeypatch.setenv("FT_ASSETS_ROOT", str(tmp_path / "elsewhere"))
    assert load_config().root == tmp_path / "elsewhere"


def test_defaults_are_resolved_into_the_recipe_and_its_hash(tmp_path):
    recipe = load_config(write_config(tmp_path, MINIMAL_CONFIG)).recipes[0]
    assert recipe.method_args == {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": None}
    assert recipe.learning_rate == DEFAULT_LEARNING_RATE["lora"]
    explicit = {**MINIMAL_CONFIG, "recipes": [{**MINIMAL_CONFIG["recipes"][0], "method_args": {"r": 8},
                                               "training": {"learning_rate": DEFAULT_LEARNING_RATE["lora"]}}]}
    assert load_config(write_config(tmp_path, explicit)).recipes[0].recipe_hash() == recipe.recipe_hash()
    changed = {**MINIMAL_CONFIG, "recipes": [{**MINIMAL_CONFIG["recipes"][0], "method_args": {"r": 16}}]}
    assert load_config(write_config(tmp_path, changed)).recipes[0].recipe_hash() != recipe.recipe_hash()


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["recipes"][0].update(lerning_rate=1), "recipes[0] (r): field lerning_rate: Extra inputs are not permitted"),
    (lambda c: c["recipes"][0].update(training={"learning_rate": -1}), "recipes[0] (r): field training.learning_rate"),
    (lambda c: c["recipes"][0].update(method="adapterz"), "recipes[0] (r): field method"),
    (lambda c: c["recipes"][0].update(method_args={"rank": 4}), "method_args.rank: Extra inputs are not permitted (lora takes: r, alpha"),
    (lambda c: c["corpora"][0].update(format="xlsx"), "corpora[0] (c): field format"),
    (lambda c: c["corpora"][0].update(columns=["a", "b"]), "lack the field(s) ['text', 'label']"),
    (lambda c: c["datasets"][0].update(test_fraction=0.0), "a dataset needs a test split"),
    (lambda c: c["datasets"][0].update(corpus="nope"), "datasets[0] (d): field corpus: no corpus named 'nope'"),
    (lambda c: c["recipes"][0].update(dataset="nope"), "recipes[0] (r): field dataset: no dataset named 'nope'"),
    (lambda c: c["corpora"][0].pop("label_field"), "has no label_field"),
    (lambda c: c.update(extra_section=1), "extra_section: Extra inputs are not permitted"),
])
def test_bad_values_name_the_file_the_entry_and_the_field(tmp_path, mutate, expected):
    payload = yaml.safe_load(yaml.safe_dump(MINIMAL_CONFIG))
    mutate(payload)
    path = write_config(tmp_path, payload)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_all_problems_are_reported_at_once(tmp_path):
    payload = yaml.safe_load(yaml.safe_dump(MINIMAL_CONFIG))
    payload["recipes"][0]["training"] = {"epochs": 0, "batch_size": -1}
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, payload))
    assert "2 problem(s)" in str(error.value)
    assert "training.epochs" in str(error.value) and "training.batch_size" in str(error.value)


def test_unreadable_files_get_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("corpora: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("update, expected", [
    ({"method": "prefix_tuning"}, "field method: prefix_tuning cannot tune a sequence classifier"),
    ({"method": "prompt_tuning", "export": "merged"}, "field export: merged folds adapter weights"),
])
def test_combinations_that_cannot_run_fail_at_load_naming_the_recipe(tmp_path, update, expected):
    payload = yaml.safe_load(yaml.safe_dump(MINIMAL_CONFIG))
    payload["recipes"][0].update(update)
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, payload))
    assert f"recipes[0] (r): {expected}" in str(error.value)


@pytest.mark.parametrize("training, validation_fraction, expected", [
    ({"keep": "best"}, 0.0, "field training.keep: needs a validation split, and datasets/d has validation_fraction 0"),
    ({"early_stopping": {"patience": 2}}, 0.0, "field training.early_stopping: needs a validation split"),
    ({"keep": "last", "keep_last": True}, None, "field training.keep_last: keeps the last weights beside the best"),
    ({"early_stopping": {"patience": 0}}, None, "field training.early_stopping.patience: Input should be greater than 0"),
    ({"eval_every_steps": 0}, None, "field training.eval_every_steps: Input should be greater than 0"),
    ({"keep": "first"}, None, "field training.keep: Input should be 'best' or 'last'"),
    ({"early_stopping": {"patience": 2, "monitor": "accuracy"}}, None,
     "field training.early_stopping.monitor: Input should be 'metric' or 'loss'"),
])
def test_best_checkpoint_settings_that_cannot_hold_fail_at_load(tmp_path, training, validation_fraction, expected):
    payload = yaml.safe_load(yaml.safe_dump(MINIMAL_CONFIG))
    payload["recipes"][0]["training"] = training
    if validation_fraction is not None:
        payload["datasets"][0]["validation_fraction"] = validation_fraction
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, payload))
    assert f"recipes[0] (r): {expected}" in str(error.value)


def test_keep_defaults_to_best_and_needs_no_validation_split_to_load(tmp_path):
    payload = yaml.safe_load(yaml.safe_dump(MINIMAL_CONFIG))
    payload["datasets"][0]["validation_fraction"] = 0.0
    training = load_config(write_config(tmp_path, payload)).recipes[0].training
    assert training.keep is None and training.early_stopping is None and training.eval_every_steps is None


@pytest.mark.parametrize("update", [{"method": "qlora"}, {"method": "freeze", "method_args": {"layers": 7}}])
def test_what_depends_on_the_machine_or_the_base_models_files_is_not_checked_at_load(tmp_path, update):
    """qlora on a machine without CUDA (this one, CI, a webserver beside GPU pods) and more frozen layers than
    the base has load; the training step refuses them (test_train.py) before it reads any data."""
    payload = yaml.safe_load(yaml.safe_dump(MINIMAL_CONFIG))
    payload["recipes"][0].update(update)
    assert load_config(write_config(tmp_path, payload)).recipes[0].method == update["method"]



def test_peft_still_cannot_prefix_tune_a_sequence_classifier():
    """The premise of the prefix_tuning rule above; when this fails, PEFT learned it: lift the rule."""
    from peft import PrefixTuningConfig, TaskType, get_peft_model
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32))
    peft_model = get_peft_model(model, PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=2))
    with pytest.raises(ValueError, match="past key values"):
        peft_model(input_ids=torch.ones(1, 4, dtype=torch.long))


CAUSAL = {
    "corpora": [{"name": "lines", "path": "raw/lines/", "format": "txt"},
                {"name": "qa", "path": "raw/qa/", "format": "jsonl", "record": "instruction"},
                {"name": "tickets", "path": "raw/t/", "format": "csv", "label_field": "label"}],
    "datasets": [{"name": "lm", "corpus": "lines", "task": "language_modeling"},
                 {"name": "sft", "corpus": "qa", "task": "instruction"},
                 {"name": "cls", "corpus": "tickets"}],
    "recipes": [
        {"name": "pre", "dataset": "lm", "base_model": "scratch", "scratch": {"vocab_size": 512}, "method": "full"},
        {"name": "sft_lora", "dataset": "sft", "base_model": "checkpoint:pre", "method": "lora",
         "training": {"packing": True}},
    ],
}


def test_a_pretrain_then_instruction_tune_chain_validates(tmp_path):
    config = load_config(write_config(tmp_path, CAUSAL))
    sft = config.recipes[1]
    assert sft.base_recipe == "pre" and sft.training.packing and sft.generation.max_new_tokens == 64
    assert config.recipes[0].scratch.architecture == "llama"


def test_forgetting_without_a_corpus_is_the_checkpoint_bases_held_out_split(tmp_path):
    recipes = [{**CAUSAL["recipes"][1], "forgetting": {}, "gates": {"max_forgetting": 0.0}},
               {"name": "sft_general", "dataset": "sft", "base_model": "checkpoint:pre", "method": "lora",
                "forgetting": {"corpus": "lines"}}]
    config = load_config(write_config(tmp_path, {**CAUSAL, "recipes": [CAUSAL["recipes"][0], *recipes]}))
    assert config.recipes[1].forgetting.corpus is None and config.recipes[1].forgetting.max_texts == 500
    assert config.recipes[2].forgetting.corpus == "lines"


@pytest.mark.parametrize("change,expected", [
    ({"recipes": [{"name": "r", "dataset": "sft", "method": "lora"}]}, "the packaged default is an encoder"),
    ({"recipes": [{"name": "r", "dataset": "sft", "base_model": "/m", "method": "head_only"}]}, "a causal LM has none"),
    ({"recipes": [{"name": "r", "dataset": "sft", "base_model": "/m", "method": "prompt_tuning",
                   "training": {"packing": True}}]}, "PEFT then drops the position ids"),
    ({"recipes": [{"name": "r", "dataset": "lm", "base_model": "/m", "method": "lora", "training": {"packing": True}}]},
     "packing joins instruction conversations"),
    ({"recipes": [{"name": "r", "dataset": "sft", "base_model": "checkpoint:nope", "method": "lora"}]},
     "no recipe named 'nope'"),
    ({"recipes": [{"name": "a", "dataset": "lm", "base_model": "checkpoint:b", "method": "full"},
                  {"name": "b", "dataset": "lm", "base_model": "checkpoint:a", "method": "full"}]}, "is a cycle"),
    ({"recipes": [{"name": "a", "dataset": "lm", "base_model": "/m", "method": "lora"},
                  {"name": "b", "dataset": "sft", "base_model": "checkpoint:a", "method": "full"}]},
     "leaves an adapter, not a model to start from"),
    ({"recipes": [{"name": "r", "dataset": "cls", "base_model": "scratch", "scratch": {}, "method": "full"}]},
     "scratch builds a causal LM"),
    ({"recipes": [{"name": "r", "dataset": "lm", "base_model": "scratch", "scratch": {}, "method": "lora"}]},
     "use method full"),
    ({"recipes": [{"name": "r", "dataset": "lm", "base_model": "/m", "method": "lora",
                   "training": {"imbalance": "class_weights"}}]}, "it is for classification"),
    ({"datasets": [{"name": "lm", "corpus": "qa", "task": "language_modeling"}], "recipes": []},
     "a language_modeling dataset reads text records"),
    ({"datasets": [{"name": "sft", "corpus": "lines", "task": "instruction"}], "recipes": []},
     "an instruction dataset needs `record: instruction`"),
    ({"datasets": [{"name": "cls", "corpus": "qa"}], "recipes": []}, "has no label_field"),
    ({"recipes": [{"name": "r", "dataset": "lm", "base_model": "/m", "method": "lora",
                   "forgetting": {"corpus": "nope"}}]}, "field forgetting.corpus: no corpus named 'nope'"),
    ({"recipes": [{"name": "r", "dataset": "lm", "base_model": "/m", "method": "lora",
                   "forgetting": {"corpus": "qa"}}]}, "forgetting is measured on plain text"),
    # Without a corpus only a checkpoint:<recipe> base has held-out text of its own to measure on.
    ({"recipes": [{"name": "r", "dataset": "lm", "base_model": "/m", "method": "lora", "forgetting": {}}]},
     "recipes[0] (r): field forgetting.corpus: not set, and base_model '/m' is not a checkpoint:<recipe>"),
    ({"recipes": [{"name": "r", "dataset": "lm", "base_model": "scratch", "scratch": {}, "method": "full",
                   "forgetting": {}}]}, "name a general text corpus the base knows (`forgetting: {corpus: <name>}`)"),
    ({"recipes": [{"name": "cls_full", "dataset": "cls", "base_model": "/m", "method": "full"},
                  {"name": "r", "dataset": "sft", "base_model": "checkpoint:cls_full", "method": "full",
                   "forgetting": {}}]},
     "recipes[1] (r): field base_model: recipe 'cls_full' trains an encoder (a classifier) on datasets/cls, and "
     "this instruction recipe trains a causal LM"),
    ({"recipes": [{"name": "r", "dataset": "lm", "base_model": "/m", "method": "lora",
                   "gates": {"max_forgetting": 0.1}}]}, "add `forgetting: {}` (the base's held-out text"),
])
def test_causal_recipes_that_cannot_run_fail_at_load_naming_the_entry(tmp_path, change, expected):
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, {**CAUSAL, **change}))
    assert expected in str(error.value)
    assert "recipes[" in str(error.value) or "datasets[" in str(error.value)


@pytest.mark.parametrize("entry,expected", [
    ({"corpora": [{"name": "c", "path": "p", "format": "csv", "record": "instruction"}]}, "jsonl, json or parquet"),
    ({"datasets": [{"name": "d", "corpus": "c", "task": "instruction", "labels": ["a"]}]}, "labels are for classification"),
    ({"recipes": [{"name": "r", "dataset": "d", "base_model": "scratch", "method": "full"}]}, "go together"),
    ({"recipes": [{"name": "r", "dataset": "d", "base_model": "scratch", "method": "full",
                   "scratch": {"hidden_size": 100, "heads": 3}}]}, "not divisible by heads"),
])
def test_causal_fields_are_checked_where_they_are_written(tmp_path, entry, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(write_config(tmp_path, {**MINIMAL_CONFIG, **entry}))


def test_a_qlora_project_loads_without_a_gpu_and_its_training_step_says_what_it_needs(tmp_path, tiny_model_dir):
    """The normal Kubernetes set-up: the Dagster webserver has no GPU, the training pod has one."""
    import dagster as dg

    from ft_assets.defs import build_definitions
    from ft_assets_tests.conftest import write_project
    from ft_assets_tests.helpers import materialize_all, step_failure

    config_path = write_project(tmp_path, tiny_model_dir, recipes=[
        {"name": "q", "dataset": "tickets", "base_model": str(tiny_model_dir), "method": "qlora",
         "training": {"epochs": 1, "batch_size": 4, "max_length": 16}}])
    validated = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-m",
                                "ft_assets.definitions"], env={**os.environ, "FT_ASSETS_CONFIG": str(config_path)},
                               capture_output=True, text=True, timeout=300)
    assert validated.returncode == 0, validated.stdout[-2000:] + validated.stderr[-2000:]

    defs, instance = build_definitions(load_config(config_path)), dg.DagsterInstance.ephemeral()
    assert materialize_all(defs, instance, selection="*datasets/tickets").success
    started = time.monotonic()
    result = materialize_all(defs, instance, selection="checkpoints/q", raise_on_error=False)
    assert time.monotonic() - started < 30
    assert not result.success
    assert ("recipe 'q': field method: qlora needs a CUDA GPU and the bitsandbytes package" in step_failure(result)
            and "nothing was registered" in step_failure(result))


def test_a_yaml_alias_bomb_is_refused_saying_how_far_it_expands(tmp_path):
    """About 300 bytes of anchors within anchors stand for nearly a billion values: refused by counting the
    shared objects, before validation or an error message walks the expansion (which took 60 s and 4 GB)."""
    levels = "abcdefghi"
    lines = ["a: &a [x,x,x,x,x,x,x,x,x]"]
    lines += [f"{b}: &{b} [{','.join(['*' + a] * 9)}]" for a, b in zip(levels, levels[1:])]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines + ["corpora: *i"]) + "\n")
    assert len(path.read_bytes()) < 400
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == (f"{path}: the YAML expands to 926,177,105 values (its aliases repeat anchors within "
                            "anchors); a project has at most 100,000")


def test_an_error_quotes_at_most_200_characters_of_a_wrong_value(tmp_path):
    recipe = {**MINIMAL_CONFIG["recipes"][0], "method": "x" * 50_000}
    path = write_config(tmp_path, {**MINIMAL_CONFIG, "recipes": [recipe]})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert f"(got '{'x' * 199}... (50,002 chars))" in str(e.value) and len(str(e.value)) < 1_000
