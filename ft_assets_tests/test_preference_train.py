"""Preference training on tiny real models: every objective learns and reloads, the reference model is the
right one in each of its three cases, precomputed reference log-probs, and reward models on an encoder."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from ft_assets.lib.config import RecipeConfig
from ft_assets.lib.training.base_models import load_causal_lm
from ft_assets.lib.training.checkpoint import load_checkpoint, save_checkpoint
from ft_assets.lib.training.loop import fit
from ft_assets.lib.training.preference import (
    collate_pairs, policy_and_reference, reference_scorer, sequence_logps, tokenize_pairs,
)
from ft_assets_tests.helpers import causal_recipe, causal_rows

THINGS = ["door", "roof", "boat", "flag", "bell", "cart", "gate", "kite"]
NAMES = ["Avel", "Brisk", "Corra", "Dunmer", "Elsby", "Fenwick", "Garth", "Holm", "Iver", "Jessa", "Kell", "Lomond"]


def preference_texts(n: int, seed: int = 0) -> list[str]:
    """Pairs whose preferred answer always says blue and the other red: a preference a tiny model can learn."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        thing, name = rng.choice(THINGS), rng.choice(NAMES)
        texts.append(json.dumps({"prompt": [{"role": "user", "content": f"What colour is the {thing} of {name}?"}],
                                 "chosen": f"The {thing} of {name} is blue.",
                                 "rejected": f"The {thing} of {name} is red."}))
    return texts


def qa_texts(n: int, seed: int = 0) -> list[str]:
    """Conversations in the same words, for an SFT stage before DPO."""
    rng = random.Random(seed)
    return [json.dumps([{"role": "user", "content": f"What is the {t} of {nm} like?"},
                        {"role": "assistant", "content": f"The {t} of {nm} is old."}])
            for t, nm in ((rng.choice(THINGS), rng.choice(NAMES)) for _ in range(n))]


def preference_recipe(model_dir, method, objective, **training):
    base = causal_recipe(model_dir, method, **{"epochs": 3, **training})
    return base.model_copy(update={"name": f"p_{method}_{objective}", "objective": objective,
                                   "objective_args": RecipeConfig.model_validate(
                                       {**base.model_dump(), "objective": objective}).objective_args})


def _logps(model, tokenizer, texts) -> torch.Tensor:
    examples, _ = tokenize_pairs(tokenizer, texts, 96)
    model.eval()
    with torch.no_grad():
        return sequence_logps(model, collate_pairs(examples, tokenizer.pad_token_id))[0]


# ORPO's SFT term must first teach the random tiny model the answers' words, which a rank-4 LoRA does too
# slowly for a test: it trains in full.
@pytest.mark.parametrize("objective,method", [("dpo", "lora"), ("ipo", "lora"), ("simpo", "lora"), ("orpo", "full")])
def test_each_objective_learns_the_preference_and_the_checkpoint_reloads(objective, method, tiny_llama_dir, tmp_path):
    recipe = preference_recipe(tiny_llama_dir, method, objective)
    texts = preference_texts(64)
    result = fit(recipe, [], causal_rows(texts), causal_rows(preference_texts(16, seed=1)), task="preference",
                 device="cpu")
    losses = [r["train_loss"] for r in result.logger.records if "train_loss" in r]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert result.logger.records[-1]["eval_preference_accuracy"] > 0.5
    info = result.train_info
    assert info["objective"] == objective and info["pairs"] == 64
    assert info["reference"]["kind"] == ("adapter_disabled" if method == "lora" else "frozen_copy")
    assert info["reference"]["scored"] == (objective in ("dpo", "ipo"))

    out = tmp_path / "ckpt"
    save_checkpoint(result, recipe, [], out, {})
    model, tokenizer, labels = load_checkpoint(out)
    assert labels == []
    held_out = preference_texts(4, seed=9)
    assert torch.allclose(_logps(result.model, tokenizer, held_out), _logps(model, tokenizer, held_out), atol=1e-4)


def test_dpo_starts_at_log_2_since_the_policy_is_its_reference(tiny_llama_dir):
    # Dropout is off, so at step 0 the policy's log-probs equal the reference's and every pair's loss is log 2.
    recipe = preference_recipe(tiny_llama_dir, "full", "dpo", learning_rate=1e-12, epochs=1)
    result = fit(recipe, [], causal_rows(preference_texts(16)), None, task="preference", device="cpu")
    first = next(r["train_loss"] for r in result.logger.records if "train_loss" in r)
    assert first == pytest.approx(math.log(2), abs=1e-4)


def test_a_full_recipe_scores_against_a_frozen_copy_of_its_base(tiny_llama_dir):
    recipe = preference_recipe(tiny_llama_dir, "full", "dpo")
    model, tokenizer, reference, info = policy_and_reference(recipe, "dpo", str(tiny_llama_dir))
    assert info["reference"]["kind"] == "frozen_copy" and reference is not model
    assert not any(p.requires_grad for p in reference.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # training moves the policy ...
    texts = preference_texts(4)
    base = load_causal_lm(str(tiny_llama_dir))[0]
    batch = collate_pairs(tokenize_pairs(tokenizer, texts, 96)[0], tokenizer.pad_token_id)
    scored = reference_scorer(reference, adapter_disabled=False)(batch)
    assert torch.allclose(scored, _logps(base, tokenizer, texts), atol=1e-5)  # ... never the reference
    assert not torch.allclose(_logps(model, tokenizer, texts), scored, atol=1e-3)


def test_a_lora_recipe_scores_against_its_model_with_the_adapter_off(tiny_llama_dir):
    recipe = preference_recipe(tiny_llama_dir, "lora", "dpo")
    result = fit(recipe, [], causal_rows(preference_texts(32)), None, task="preference", device="cpu")
    model, tokenizer = result.model, result.tokenizer
    texts = preference_texts(4, seed=3)
    batch = collate_pairs(tokenize_pairs(tokenizer, texts, 96)[0], tokenizer.pad_token_id)
    reference = reference_scorer(model, adapter_disabled=True)(batch)
    base = load_causal_lm(str(tiny_llama_dir))[0]
    assert torch.allclose(reference, _logps(base, tokenizer, texts), atol=1e-5)
    assert not torch.allclose(_logps(model, tokenizer, texts), reference, atol=1e-3)  # the adapter learned


def test_dpo_on_a_lora_sft_checkpoint_scores_against_the_sft_model_not_the_bare_base(tiny_llama_dir, tmp_path):
    sft_recipe = causal_recipe(tiny_llama_dir, "lora")
    sft = fit(sft_recipe, [], causal_rows(qa_texts(48)), None, task="instruction", device="cpu")
    sft_dir = tmp_path / "sft"
    save_checkpoint(sft, sft_recipe, [], sft_dir, {})
    sft_model, tokenizer, _ = load_checkpoint(sft_dir)

    recipe = preference_recipe(tiny_llama_dir, "lora", "dpo")
    model, _, reference, info = policy_and_reference(recipe, "dpo", str(sft_dir))
    assert info["reference"] == {**info["reference"], "kind": "sft_adapter", "path": str(sft_dir)}
    assert info["base_model_path"] == str(tiny_llama_dir)  # the policy is an adapter over the bare base
    texts = preference_texts(4)
    batch = collate_pairs(tokenize_pairs(tokenizer, texts, 96)[0], tokenizer.pad_token_id)
    scored = reference_scorer(reference, adapter_disabled=False)(batch)
    assert torch.allclose(scored, _logps(sft_model, tokenizer, texts), atol=1e-4)
    bare = load_causal_lm(str(tiny_llama_dir))[0]
    assert not torch.allclose(scored, _logps(bare, tokenizer, texts), atol=1e-3)
    # The policy continues the SFT adapter: before any step it is the SFT model.
    assert torch.allclose(_logps(model, tokenizer, texts), scored, atol=1e-4)

    result = fit(recipe, [], causal_rows(preference_texts(32)), None, task="preference", base_model_path=str(sft_dir),
                 device="cpu")
    out = tmp_path / "dpo"
    manifest = save_checkpoint(result, recipe, [], out, {})
    assert manifest["base_model"]["path"] == str(tiny_llama_dir)
    reloaded, _, _ = load_checkpoint(out)
    assert torch.allclose(_logps(reloaded, tokenizer, texts), _logps(result.model, tokenizer, texts), atol=1e-4)


def test_precomputed_reference_log_probs_train_as_the_live_reference_and_are_cached(tiny_llama_dir, tmp_path):
    rows = causal_rows(preference_texts(32))
    live = fit(preference_recipe(tiny_llama_dir, "full", "dpo"), [], rows, None, task="preference", device="cpu")
    recipe = preference_recipe(tiny_llama_dir, "full", "dpo")
    recipe = recipe.model_copy(update={"objective_args": {**recipe.objective_args, "precompute_reference": True}})
    cache = tmp_path / "reference"
    first = fit(recipe, [], rows, None, task="preference", device="cpu", reference_cache=str(cache))
    [cached] = cache.glob("*.json")
    again = fit(recipe, [], rows, None, task="preference", device="cpu", reference_cache=str(cache))
    assert list(cache.glob("*.json")) == [cached]

    def losses(result):
        return [r["train_loss"] for r in result.logger.records if "train_loss" in r]

    assert losses(first) == pytest.approx(losses(live), abs=1e-5)
    assert losses(again) == losses(first)


def test_a_reward_model_on_an_encoder_learns_to_score_the_preferred_answer_higher(tiny_model_dir, tmp_path):
    from ft_assets.lib.evaluation.preference import reward_model_figures

    recipe = RecipeConfig(name="rm", dataset="d", base_model=str(tiny_model_dir), method="full",
                          objective="reward", training={"epochs": 4, "batch_size": 8, "learning_rate": 1e-3,
                                                        "max_length": 32, "log_every_steps": 1})
    texts = [json.dumps({"prompt": [{"role": "user", "content": "billing"}], "chosen": f"refund {w}",
                         "rejected": f"invoice {w}"}) for w in ("account", "password", "login", "order") * 12]
    result = fit(recipe, [], causal_rows(texts), causal_rows(texts[:8]), task="preference", device="cpu")
    losses = [r["train_loss"] for r in result.logger.records if "train_loss" in r]
    assert losses[-1] < losses[0]
    out = tmp_path / "rm"
    save_checkpoint(result, recipe, [], out, {})
    model, tokenizer, labels = load_checkpoint(out)
    assert labels == ["reward"] and model.config.num_labels == 1
    figures = reward_model_figures(model, tokenizer, texts[:8], max_length=32, batch_size=8, device="cpu")
    assert figures["preference_accuracy"] == 1.0 and figures["reward_margin"] > 0


@pytest.mark.parametrize("method", ["freeze", "rslora", "dora", "ia3", "prompt_tuning"])
def test_dpo_trains_with_every_method_that_applies_against_the_reference_it_needs(method, tiny_llama_dir):
    recipe = preference_recipe(tiny_llama_dir, method, "dpo", epochs=1)
    result = fit(recipe, [], causal_rows(preference_texts(16)), causal_rows(preference_texts(8, seed=1)),
                 task="preference", device="cpu")
    losses = [r["train_loss"] for r in result.logger.records if "train_loss" in r]
    # The policy starts as its reference: every pair's first loss is log 2 (prompt tuning's random soft
    # prompt is not in the reference, the adapter-off model, so it starts elsewhere).
    if method != "prompt_tuning":
        assert losses[0] == pytest.approx(math.log(2), abs=1e-3)
    assert all(math.isfinite(x) for x in losses)
    kind = "frozen_copy" if method == "freeze" else "adapter_disabled"
    assert result.train_info["reference"]["kind"] == kind
    assert 0 < result.train_info["trainable_params"] < result.train_info["total_params"]


def test_the_report_counts_only_the_test_pairs_it_scored_and_judges_length_on_them(tiny_llama_dir, tmp_path):
    # A test pair whose prompt alone fills max_length keeps no answer token, so no model can score it: the
    # report must leave it out of n_test and of the length baseline too, or the baseline is on other pairs.
    from ft_assets.lib.evaluation.report import evaluate_checkpoint

    recipe = preference_recipe(tiny_llama_dir, "full", "dpo", epochs=1)
    result = fit(recipe, [], causal_rows(preference_texts(16)), None, task="preference", device="cpu")
    save_checkpoint(result, recipe, [], tmp_path / "ckpt", {})
    short = preference_texts(6, seed=3)
    long_pair = json.dumps({"prompt": [{"role": "user", "content": "Tell me everything. " * 60}],
                            "chosen": "A much longer and preferred answer.", "rejected": "Short."})
    texts = short[:3] + [long_pair] + short[3:]
    evaluated = evaluate_checkpoint(recipe, tmp_path / "ckpt", {"train": causal_rows(preference_texts(16)),
                                                                "test": causal_rows(texts)},
                                    tmp_path / "report", tmp_path / "cache", device="cpu", task="preference")
    report = evaluated.report
    assert report["n_test"] == 6 and report["metrics"]["n"] == 6
    assert report["metrics"]["dropped_no_answer_tokens"] == 1
    assert report["baselines"]["length"]["n"] == 6
    assert "1 more left out" in evaluated.markdown


def test_a_policy_training_did_not_move_ranks_the_pairs_as_its_reference_does(tiny_llama_dir, tmp_path):
    # The headline is the tuned model's own ranking, the measure its reference is scored by. DPO's implicit
    # reward (log-ratio to the reference) is 0 for an unmoved policy, so it scores 0.5 whatever the reference
    # prefers: as the headline it set a coin toss against the reference's own ranking, and the demo's gate
    # failed a DPO model that ranked better than its SFT reference.
    from ft_assets.lib.evaluation.report import evaluate_checkpoint

    # An update of 1e-12 is below float32's resolution at these weights: the saved model is its base.
    recipe = preference_recipe(tiny_llama_dir, "full", "dpo", learning_rate=1e-12, epochs=1)
    result = fit(recipe, [], causal_rows(preference_texts(16)), None, task="preference", device="cpu")
    save_checkpoint(result, recipe, [], tmp_path / "ckpt", {})
    evaluated = evaluate_checkpoint(recipe, tmp_path / "ckpt", {"train": causal_rows(preference_texts(16)),
                                                                "test": causal_rows(preference_texts(12, seed=4))},
                                    tmp_path / "report", tmp_path / "cache", device="cpu", task="preference")
    report, reference = evaluated.report, evaluated.report["baselines"]["reference"]
    assert reference["preference_accuracy"] != 0.5  # the random model leans one way: the test can tell
    assert report["preference_accuracy"] == pytest.approx(reference["preference_accuracy"])
    assert report["reward_margin"] == pytest.approx(reference["reward_margin"], abs=1e-5)
    assert report["metrics"]["implicit_reward_accuracy"] == 0.5
    assert report["metrics"]["implicit_reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert "Implicit reward" in evaluated.markdown
