"""The training loop on a tiny real BERT: learning, reloading, atomic checkpoints, manifests."""

import json
import math
import re
import subprocess
import sys

import pytest
import torch

from ft_assets.lib.config import RecipeConfig
from ft_assets.lib.training.classification import predict_logits
from ft_assets.lib.models.model_card import CARD_FILE
from ft_assets.lib.storage import DESCRIPTIVE_FILES, file_sha256s, folder_sha256
from ft_assets.lib.training.checkpoint import MANIFEST_FILE, load_checkpoint, save_checkpoint
from ft_assets.lib.training.loop import fit
from ft_assets_tests.conftest import LABELS, ticket_rows
from ft_assets_tests.helpers import (
    CLASSIFICATION_LEARNING_RATE, classification_recipe, classification_rows, write_spec,
)

METHODS = sorted(CLASSIFICATION_LEARNING_RATE)


def initial_model(r, train):
    """The model fit() starts from: it seeds torch, then builds the model, as here."""
    import torch

    from ft_assets.lib.training.distributed import World
    from ft_assets.lib.training import classification

    torch.manual_seed(r.training.seed)
    return classification.setup(r, LABELS, train, None, None, "cpu", World()).model


def test_full_fine_tuning_learns_the_task(tiny_model_dir):
    # The tiny random BERT learns the keyword task with these settings (and not with much less).
    r = classification_recipe(tiny_model_dir, "full", epochs=6, learning_rate=3e-3)
    result = fit(r, LABELS, classification_rows(60), classification_rows(10, seed=1), device="cpu")
    losses = [x["train_loss"] for x in result.logger.records if "train_loss" in x]
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5
    assert result.train_info["final_eval"]["eval_accuracy"] > 0.6


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_its_parameters_only_and_the_checkpoint_reloads(tiny_model_dir, tmp_path, method):
    train = classification_rows(20)
    result = fit(classification_recipe(tiny_model_dir, method), LABELS, train, classification_rows(5, seed=1),
                 device="cpu")
    before = dict(initial_model(classification_recipe(tiny_model_dir, method), train).named_parameters())
    for name, p in result.model.named_parameters():
        moved = not torch.equal(p.detach(), before[name].detach())
        assert moved == p.requires_grad, f"{name}: requires_grad {p.requires_grad} but moved {moved}"
    info = result.train_info
    assert 0 < info["trainable_params"] <= info["total_params"]
    if method != "full":
        assert info["trainable_params"] < info["total_params"] / 2
    assert info["steps"] == 4 * 4 and info["examples_per_sec"] > 0 and info["peak_mem_bytes"] > 0

    out = tmp_path / "ckpt"
    save_checkpoint(result, classification_recipe(tiny_model_dir, method), LABELS, out, {"dataset": {"name": "d"}})
    peft = method not in ("full", "head_only", "freeze")
    weights = "adapter_model.safetensors" if peft else "model.safetensors"
    assert (out / weights).exists() and (out / "tokenizer.json").exists()
    model, tokenizer, labels = load_checkpoint(out)
    assert labels == LABELS
    texts = train["text"][:12]
    before = predict_logits(result.model, result.tokenizer, texts, max_length=16, batch_size=4, device="cpu")
    after = predict_logits(model, tokenizer, texts, max_length=16, batch_size=4, device="cpu")
    assert abs(before - after).max() < 1e-5


def test_a_seed_makes_training_repeatable(tiny_model_dir):
    a = fit(classification_recipe(tiny_model_dir, "full", epochs=1), LABELS, classification_rows(8), None, device="cpu")
    b = fit(classification_recipe(tiny_model_dir, "full", epochs=1), LABELS, classification_rows(8), None, device="cpu")
    assert [r["train_loss"] for r in a.logger.records] == [r["train_loss"] for r in b.logger.records]


def test_manifest_records_recipe_base_weights_and_lineage(tiny_model_dir, tmp_path):
    r = classification_recipe(tiny_model_dir, "head_only", epochs=1)
    result = fit(r, LABELS, classification_rows(4), None, device="cpu")
    manifest = save_checkpoint(result, r, LABELS, tmp_path / "ckpt", {"dataset": {"version": "abc"}})
    on_disk = json.loads((tmp_path / "ckpt" / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["recipe_hash"] == r.recipe_hash()
    assert manifest["base_model"]["sha256"] == folder_sha256(tiny_model_dir)
    assert set(manifest["files"]) == set(file_sha256s(tmp_path / "ckpt"))
    assert {MANIFEST_FILE, CARD_FILE} == DESCRIPTIVE_FILES <= {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert manifest["dataset"] == {"version": "abc"}
    assert {"torch", "transformers", "peft", "ft_assets"} <= set(manifest["libraries"])


def test_a_failed_save_leaves_no_checkpoint_behind(tiny_model_dir, tmp_path):
    r = classification_recipe(tiny_model_dir, "head_only", epochs=1)
    result = fit(r, LABELS, classification_rows(4), None, device="cpu")
    result.tokenizer = None  # saving the tokenizer will now fail halfway through the directory
    with pytest.raises(AttributeError):
        save_checkpoint(result, r, LABELS, tmp_path / "ckpt", {})
    assert list(tmp_path.iterdir()) == []


def test_setup_errors_say_what_to_fix(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="outside the label set"):
        fit(classification_recipe(tiny_model_dir, "full"), ["billing"], classification_rows(2), None, device="cpu")
    with pytest.raises(ValueError, match="training split is empty"):
        fit(classification_recipe(tiny_model_dir, "full"), LABELS, {"text": [], "label": []}, None, device="cpu")
    with pytest.raises(ValueError, match="cannot load base model"):
        fit(classification_recipe(tmp_path / "no_model_here", "full"), LABELS, classification_rows(2), None,
            device="cpu")
    with pytest.raises(ValueError, match="precision 'fp16' needs a CUDA device; on cpu use 'bf16', 'fp32' or 'auto'"):
        fit(classification_recipe(tiny_model_dir, "full"), LABELS, classification_rows(2), None, device="cpu",
            precision="fp16")


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_a_merged_export_loads_without_peft_and_predicts_like_the_adapter(tiny_model_dir, tmp_path, method):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    r = classification_recipe(tiny_model_dir, method, epochs=2).model_copy(update={"export": "merged"})
    result = fit(r, LABELS, classification_rows(10), None, device="cpu")
    save_checkpoint(result, r, LABELS, tmp_path / "ckpt", {})
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ckpt" / "merged")
    assert not any("lora" in n or "ia3" in n for n, _ in merged.named_parameters())
    texts = classification_rows(3, seed=2)["text"]
    adapter_model, tokenizer, _ = load_checkpoint(tmp_path / "ckpt")
    expected = predict_logits(adapter_model, tokenizer, texts, max_length=16, batch_size=4, device="cpu")
    got = predict_logits(merged, AutoTokenizer.from_pretrained(tmp_path / "ckpt" / "merged"), texts,
                         max_length=16, batch_size=4, device="cpu")
    assert abs(expected - got).max() < 1e-4
    assert (expected.argmax(-1) == got.argmax(-1)).all()


def test_imbalance_settings_reweigh_the_loss_or_the_batches():
    from ft_assets.lib.config import TrainingConfig
    from ft_assets.lib.training.distributed import World
    from ft_assets.lib.training.classification import _imbalance_handling
    from ft_assets.lib.training.task import batch_sampler

    ids = [0] * 8 + [1] * 2  # 80% / 20%, and label 2 absent
    weights, per_example = _imbalance_handling("class_weights", ids, 3)
    assert per_example is None and weights.tolist() == pytest.approx([10 / 24, 10 / 6, 0.0])
    weights, per_example = _imbalance_handling("balanced_sampler", ids, 3)
    batches = batch_sampler(TrainingConfig(batch_size=5), [4] * len(ids), World(), group_by_length=False,
                       weights=per_example)
    drawn = []
    for epoch in range(1, 51):
        batches.set_epoch(epoch)
        drawn += [ids[i] for batch in batches for i in batch]
    assert weights is None and 0.4 < drawn.count(1) / len(drawn) < 0.6
    assert _imbalance_handling("none", ids, 3) == (None, None)


@pytest.mark.parametrize("imbalance", ["class_weights", "balanced_sampler"])
def test_each_imbalance_setting_changes_what_training_does(tiny_model_dir, imbalance):
    skewed = classification_rows(12)
    keep = [i for i, label in enumerate(skewed["label"]) if label != "access" or i % 6 == 0]
    skewed = {k: [v[i] for i in keep] for k, v in skewed.items()}

    def losses(setting: str) -> list[float]:
        r = classification_recipe(tiny_model_dir, "head_only", epochs=1, imbalance=setting, log_every_steps=1)
        return [record["train_loss"] for record in fit(r, LABELS, skewed, None, device="cpu").logger.records
                if "train_loss" in record]

    plain, balanced = losses("none"), losses(imbalance)
    # Same seed, same rows: only the weighted loss (class_weights) or the drawn batches (balanced_sampler)
    # can make the step losses differ; a setting that was read and ignored would repeat them.
    assert len(balanced) == len(plain) > 0 and all(math.isfinite(x) for x in balanced)
    assert balanced != plain


def test_the_tiny_tokenizer_reads_a_fixture_ticket_word_for_word(tiny_model_dir):
    from transformers import AutoModel, AutoTokenizer

    from ft_assets.lib.evaluation.forgetting import encoder_forgetting
    from ft_assets_tests.conftest import general_lines

    base = AutoModel.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = general_lines(30)
    same = encoder_forgetting(base, base, tokenizer, texts, max_length=16, batch_size=8, device="cpu")
    assert same["representation_drift"] == pytest.approx(0.0, abs=1e-6) and same["knn_overlap"] == 1.0
    tuned = fit(classification_recipe(tiny_model_dir, "full", epochs=2), LABELS, classification_rows(20), None,
                device="cpu").model
    moved = encoder_forgetting(base, tuned, tokenizer, texts, max_length=16, batch_size=8, device="cpu")
    assert moved["representation_drift"] > 1e-3 and 0.0 <= moved["knn_overlap"] <= 1.0 and moved["knn_k"] == 10


def test_knn_overlap_is_one_for_kept_neighbourhoods_and_near_chance_for_unrelated_spaces():
    import numpy as np

    from ft_assets.lib.evaluation.forgetting import knn_overlap

    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 16))
    assert knn_overlap(base, base * 3.0) == 1.0  # scaling keeps every cosine neighbourhood
    unrelated = knn_overlap(base, rng.normal(size=(200, 16)))
    assert unrelated < 0.15  # chance is k / (n - 1) = 10 / 199


def test_the_tiny_bert_tokenizer_knows_the_fixture_words(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    label, text = ticket_rows(1)[0]
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    assert tokens[1:-1] == text.split() and "[UNK]" not in tokens


def test_a_failed_training_leaves_its_reason_beside_its_spec(tmp_path, tiny_model_dir):
    from ft_assets.lib.training.spec import training_error_path

    spec = json.loads(write_spec(tmp_path, "broken", tiny_model_dir).read_text())
    spec["recipe"]["base_model"] = str(tmp_path / "no_such_model")
    (tmp_path / "broken.json").write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, "-m", "ft_assets.lib.training", str(tmp_path / "broken.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    reason = (tmp_path / "training_error.txt").read_text()
    assert str(tmp_path / "no_such_model") in reason
    assert not (tmp_path / "broken").exists()  # and no checkpoint
    # In a pod the spec is an s3:// URI: the reason goes beside it there (test_kubernetes reads it back).
    assert training_error_path("s3://bucket/runs/r1/tickets/spec.json") == "s3://bucket/runs/r1/tickets/training_error.txt"
    assert training_error_path("spec.json") == "./training_error.txt"  # a spec named from its own folder


@pytest.mark.parametrize("method, method_args, refusal", [
    ("freeze", {"layers": 7}, "field method_args.layers: 7 but the base model has only 2 transformer blocks"),
    # This machine has no CUDA GPU; bitsandbytes is installed, so only the GPU is named as lacking.
    ("qlora", {}, "field method: qlora needs a CUDA GPU and the bitsandbytes package (4-bit weights); this "
                  "training run lacks a CUDA GPU (device cpu). Use lora here, or train where both are"),
])
def test_the_training_step_refuses_what_the_machine_or_the_base_cannot_run_before_reading_data(
        tmp_path, tiny_model_dir, method, method_args, refusal):
    from ft_assets.lib.training.loop import MetricLogger
    from ft_assets.lib.training.run import run
    from ft_assets.lib.training.spec import TrainingSpec

    r = RecipeConfig(name=f"t_{method}", dataset="d", base_model=str(tiny_model_dir), method=method,
                     method_args=method_args)
    # No split file: the refusal comes before any data is read.
    spec = TrainingSpec(recipe=r, labels=LABELS, train_path=str(tmp_path / "missing.parquet"),
                        output_dir=str(tmp_path / "out"), device="cpu")
    with pytest.raises(ValueError, match=re.escape(f"recipe 't_{method}': {refusal}")):
        run(spec, MetricLogger())
