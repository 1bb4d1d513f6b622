"""The training loop on a tiny real BERT: learning, reloading, atomic checkpoints, manifests."""

import json

import pytest

from ft_assets.lib.config import RecipeConfig
from ft_assets.lib.evaluate import predict_logits
from ft_assets.lib.models import load_checkpoint, weights_sha256
from ft_assets.lib.train import fit, save_checkpoint
from ft_assets_tests.conftest import LABELS, ticket_rows


def rows(n_per_label, seed=0):
    pairs = ticket_rows(n_per_label, seed)
    return {"text": [t for _, t in pairs], "label": [label for label, _ in pairs]}


def recipe(model_dir, method, **training):
    lr = {"full": 1e-3, "lora": 5e-3, "head_only": 5e-3}[method]
    return RecipeConfig(name=f"t_{method}", dataset="d", base_model=str(model_dir), method=method,
                        method_args={"r": 4, "alpha": 8} if method == "lora" else {},
                        training={"epochs": 4, "batch_size": 16, "max_length": 16, "learning_rate": lr,
                                  "log_every_steps": 1, **training})


@pytest.mark.parametrize("method", ["full", "lora", "head_only"])
def test_loss_goes_down_and_the_checkpoint_reloads_to_the_same_predictions(tiny_model_dir, tmp_path, method):
    train = rows(20)
    result = fit(recipe(tiny_model_dir, method), LABELS, train, rows(5, seed=1), device="cpu")
    losses = [r["train_loss"] for r in result.logger.records if "train_loss" in r]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    info = result.train_info
    assert 0 < info["trainable_params"] <= info["total_params"]
    if method != "full":
        assert info["trainable_params"] < info["total_params"] / 2
    assert info["steps"] == 4 * 4 and info["examples_per_sec"] > 0 and info["peak_mem_bytes"] > 0

    out = tmp_path / "ckpt"
    save_checkpoint(result, recipe(tiny_model_dir, method), LABELS, out, {"dataset": {"name": "d"}})
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    assert (out / weights).exists() and (out / "tokenizer.json").exists()
    model, tokenizer, labels = load_checkpoint(out)
    assert labels == LABELS
    texts = train["text"][:12]
    before = predict_logits(result.model, result.tokenizer, texts, max_length=16, batch_size=4, device="cpu")
    after = predict_logits(model, tokenizer, texts, max_length=16, batch_size=4, device="cpu")
    assert abs(before - after).max() < 1e-5


def test_a_seed_makes_training_repeatable(tiny_model_dir):
    a = fit(recipe(tiny_model_dir, "full", epochs=1), LABELS, rows(8), None, device="cpu")
    b = fit(recipe(tiny_model_dir, "full", epochs=1), LABELS, rows(8), None, device="cpu")
    assert [r["train_loss"] for r in a.logger.records] == [r["train_loss"] for r in b.logger.records]


def test_manifest_records_recipe_base_weights_and_lineage(tiny_model_dir, tmp_path):
    r = recipe(tiny_model_dir, "head_only", epochs=1)
    result = fit(r, LABELS, rows(4), None, device="cpu")
    manifest = save_checkpoint(result, r, LABELS, tmp_path / "ckpt", {"dataset": {"version": "abc"}})
    on_disk = json.loads((tmp_path / "ckpt" / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["recipe_hash"] == r.recipe_hash()
    assert manifest["base_model"]["weights_sha256"] == weights_sha256(str(tiny_model_dir))
    assert manifest["dataset"] == {"version": "abc"}
    assert {"torch", "transformers", "peft", "ft_assets"} <= set(manifest["libraries"])


def test_a_failed_save_leaves_no_checkpoint_behind(tiny_model_dir, tmp_path):
    r = recipe(tiny_model_dir, "head_only", epochs=1)
    result = fit(r, LABELS, rows(4), None, device="cpu")
    result.tokenizer = None  # saving the tokenizer will now fail halfway through the directory
    with pytest.raises(AttributeError):
        save_checkpoint(result, r, LABELS, tmp_path / "ckpt", {})
    assert list(tmp_path.iterdir()) == []


def test_setup_errors_say_what_to_fix(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="outside the label set"):
        fit(recipe(tiny_model_dir, "full"), ["billing"], rows(2), None, device="cpu")
    with pytest.raises(ValueError, match="training split is empty"):
        fit(recipe(tiny_model_dir, "full"), LABELS, {"text": [], "label": []}, None, device="cpu")
    with pytest.raises(ValueError, match="cannot load base model"):
        fit(recipe(tmp_path / "no_model_here", "full"), LABELS, rows(2), None, device="cpu")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        fit(recipe(tiny_model_dir, "full"), LABELS, rows(2), None, device="cpu", precision="bf16")
