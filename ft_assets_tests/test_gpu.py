"""Every CUDA path on a real GPU: `pytest -m gpu` (bench/device_run.sh runs it on a GPU machine).

Where torch sees no CUDA GPU these are skipped, saying why (conftest.py), so CI never counts them as
passed. Training runs under the defaults a GPU user gets: device and precision auto (bf16 autocast),
compile auto (every block compiled), fused AdamW. MiniLM is the packaged all-MiniLM-L6-v2 where it is
installed; on the device machine, whose calls carry 64 MiB, its architecture with random weights.
"""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ft_assets.lib.config import RecipeConfig
from ft_assets.lib.training.classification import predict_logits
from ft_assets.lib.training.checkpoint import load_checkpoint
from ft_assets.lib.training.causal import causal_examples, mean_causal_loss
from ft_assets.lib.training.checkpoint import save_checkpoint
from ft_assets.lib.training.loop import FitResult, fit
from ft_assets_tests.conftest import LABELS, minilm_or_its_architecture, qa_conversations
from ft_assets_tests.helpers import causal_rows, classification_rows, materialize_with_gpu_settings, step_failure

pytestmark = pytest.mark.gpu

MODELS = ("tiny_llama", "minilm")
METHODS = ("full", "lora", "qlora")
# Larger steps than the defaults: a few dozen steps on small data. The head (pooler, classifier) learns
# at the method's head rate.
LEARNING_RATE = {("minilm", "full"): 3e-4, ("minilm", "lora"): 3e-3, ("minilm", "qlora"): 3e-3,
                 ("tiny_llama", "full"): 3e-3, ("tiny_llama", "lora"): 3e-2, ("tiny_llama", "qlora"): 3e-2}
CONVERSATIONS = qa_conversations(48)


@dataclass
class Trained:
    recipe: RecipeConfig
    result: FitResult
    checkpoint: Path
    train: dict  # the rows it trained on, {"text": [...], "label": [...]}


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory) -> Path:
    path, description = minilm_or_its_architecture(tmp_path_factory.mktemp("minilm"))
    print(f"MiniLM here: {description}")
    return path


@pytest.fixture(scope="module")
def trained(request, tmp_path_factory):
    """(model, method) -> Trained: each pair trains once on the GPU and saves; the tests below share them."""
    done = {}

    def get(model: str, method: str) -> Trained:
        if (model, method) not in done:
            torch._dynamo.reset()  # each pair compiles its own blocks, within dynamo's cache limit
            model_dir = request.getfixturevalue("tiny_llama_dir" if model == "tiny_llama" else "minilm_dir")
            recipe = RecipeConfig(
                name=f"gpu_{model}_{method}", dataset="d", base_model=str(model_dir), method=method,
                method_args={} if method == "full" else {"r": 8, "alpha": 16, "dropout": 0.0},
                training={"epochs": 10, "learning_rate": LEARNING_RATE[(model, method)], "log_every_steps": 1,
                          **({"batch_size": 4, "max_length": 96, "packing": True} if model == "tiny_llama"
                             else {"batch_size": 16, "max_length": 32})})
            # Validation on the training rows: a deterministic measure of what the steps learned.
            if model == "tiny_llama":
                train = causal_rows(CONVERSATIONS)
                result = fit(recipe, [], train, train, task="instruction")
            else:
                train = classification_rows(16)
                result = fit(recipe, LABELS, train, train)
            checkpoint = tmp_path_factory.mktemp("checkpoints") / recipe.name
            save_checkpoint(result, recipe, [] if model == "tiny_llama" else LABELS, checkpoint, {})
            done[(model, method)] = Trained(recipe, result, checkpoint, train)
        return done[(model, method)]

    return get


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model", MODELS)
def test_gpu_defaults_train_and_the_loss_goes_down(trained, model, method):
    run = trained(model, method)
    info = run.result.train_info
    assert (info["device"], info["precision"], info["compiled"], info["fused_optimizer"]) == ("cuda", "bf16", True, True)
    assert info["attention"] == "sdpa" and info["peak_mem_kind"] == "cuda_allocated" and info["peak_mem_bytes"] > 0
    # bf16 autocast: the trained weights stay fp32 (qlora's frozen base is 4-bit).
    assert all(p.dtype == torch.float32 for p in run.result.model.parameters() if p.requires_grad)
    eval_losses = [r["eval_loss"] for r in run.result.logger.records if "eval_loss" in r]
    assert len(eval_losses) == 10 and eval_losses[-1] < 0.98 * eval_losses[0], eval_losses


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model", MODELS)
def test_the_checkpoint_reloads_to_the_same_predictions(trained, model, method):
    run = trained(model, method)
    reloaded, tokenizer, _ = load_checkpoint(run.checkpoint)
    if method == "qlora":  # the adapter over a freshly quantized base
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in reloaded.modules())
    else:
        reloaded.to("cuda")
    # Eval mode without autocast on both sides: fp32, or bf16 matmuls over dequantized 4-bit weights.
    tolerance = 3e-2 if method == "qlora" else 1e-3
    if model == "minilm":
        texts = classification_rows(6, seed=7)["text"]
        tuned, again = (predict_logits(m, tokenizer, texts, max_length=32, batch_size=8, device="cuda")
                        for m in (run.result.model, reloaded))
        assert (tuned.argmax(-1) == again.argmax(-1)).all()
        assert abs(tuned - again).max() < tolerance
    else:
        held_out, _ = causal_examples(tokenizer, "instruction", qa_conversations(16, seed=7), 96, packing=False)
        tuned, again = (mean_causal_loss(m, held_out, tokenizer.pad_token_id, 8, "cuda")
                        for m in (run.result.model, reloaded))
        assert again == pytest.approx(tuned, abs=tolerance)


@pytest.mark.parametrize("model", MODELS)
def test_a_checkpoint_trained_on_the_gpu_evaluates_on_the_cpu(trained, tmp_path, model):
    from ft_assets.lib.evaluation.report import evaluate_checkpoint

    run = trained(model, "lora")
    if model == "minilm":
        splits = {"train": run.train, "validation": classification_rows(2, seed=8),
                  "test": classification_rows(8, seed=9)}
        task = "classification"
    else:
        test = causal_rows(qa_conversations(12, seed=9))
        splits, task = {"train": run.train, "validation": test, "test": test}, "instruction"
    reports = {device: evaluate_checkpoint(run.recipe, run.checkpoint, splits, tmp_path / device, tmp_path / "cache",
                                           device=device, task=task).report
               for device in ("cpu", "cuda")}
    if task == "classification":
        assert reports["cpu"]["metrics"]["confusion_matrix"] == reports["cuda"]["metrics"]["confusion_matrix"]
    else:
        assert reports["cpu"]["eval_loss"] == pytest.approx(reports["cuda"]["eval_loss"], rel=1e-3)
        assert reports["cpu"]["metrics"]["n_generated"] == 12


def test_packed_rows_under_flex_attention_give_the_sdpa_loss_and_gradients(tiny_llama_dir):
    from ft_assets.lib.training.causal_data import causal_loss, collate_causal
    from ft_assets.lib.training.base_models import load_causal_lm

    model, tokenizer = load_causal_lm(str(tiny_llama_dir))
    model.to("cuda")
    packed, _ = causal_examples(tokenizer, "instruction", CONVERSATIONS, 96, packing=True)
    batch = {k: v.to("cuda") for k, v in collate_causal(packed[:4], tokenizer.pad_token_id, width=96).items()}
    labels = batch.pop("labels")
    assert "attention_mask" not in batch  # the conversations are kept apart by their position ids alone

    def loss_and_gradients(attention: str):
        model.set_attn_implementation(attention)
        model.zero_grad()
        loss = causal_loss(model(**batch, use_cache=False).logits, labels)
        loss.backward()
        return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}

    sdpa_loss, sdpa_gradients = loss_and_gradients("sdpa")
    flex_loss, flex_gradients = loss_and_gradients("flex_attention")
    assert model.config._attn_implementation == "flex_attention"
    assert flex_loss == pytest.approx(sdpa_loss, rel=1e-4)
    for name, gradient in sdpa_gradients.items():
        torch.testing.assert_close(flex_gradients[name], gradient, rtol=1e-3, atol=1e-5, msg=name)


def test_packed_training_under_flex_attention_compiles_and_learns(tiny_llama_dir):
    torch._dynamo.reset()
    recipe = RecipeConfig(name="gpu_flex", dataset="d", base_model=str(tiny_llama_dir), method="full",
                          training={"epochs": 6, "batch_size": 4, "max_length": 96, "packing": True,
                                    "attention": "flex_attention", "learning_rate": 3e-3, "log_every_steps": 1})
    result = fit(recipe, [], causal_rows(CONVERSATIONS), causal_rows(CONVERSATIONS), task="instruction")
    info = result.train_info
    assert (info["attention"], info["compiled"], info["precision"]) == ("flex_attention", True, "bf16")
    eval_losses = [r["eval_loss"] for r in result.logger.records if "eval_loss" in r]
    assert eval_losses[-1] < 0.95 * eval_losses[0], eval_losses


def test_more_training_processes_than_gpus_are_refused(tmp_path, tiny_model_dir):
    gpus = torch.cuda.device_count()
    result = materialize_with_gpu_settings(tmp_path, tiny_model_dir, {"device": "cuda", "processes": gpus + 1})
    assert not result.success
    assert (f"gpu.processes is {gpus + 1}, but this machine has {gpus} CUDA GPU(s) and each training process needs "
            f"its own: set gpu.processes to at most {gpus}" in step_failure(result))


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_dpo_on_cuda_starts_at_log_2_and_learns_with_bf16_and_compiled_blocks(method, tiny_llama_dir):
    """Preference tuning under the GPU defaults: the reference's forward pass (a frozen copy, or the adapter
    switched off over a 4-bit base for qlora) under autocast and compiled blocks."""
    from ft_assets_tests.test_preference_train import preference_recipe, preference_texts

    recipe = preference_recipe(tiny_llama_dir, "lora" if method == "qlora" else method, "dpo", epochs=3)
    recipe = recipe.model_copy(update={"method": method})  # qlora: LoRA's settings over a 4-bit base
    result = fit(recipe, [], causal_rows(preference_texts(64)), causal_rows(preference_texts(16, seed=1)),
                 task="preference")
    losses = [r["train_loss"] for r in result.logger.records if "train_loss" in r]
    assert result.train_info["device"] == "cuda" and result.train_info["precision"] == "bf16"
    assert losses[0] == pytest.approx(0.6931, abs=2e-2)  # bf16: log 2 within rounding
    assert sum(losses[-3:]) / 3 < losses[0]
    assert result.train_info["reference"]["kind"] == ("frozen_copy" if method == "full" else "adapter_disabled")
