"""Causal LMs on tiny real Llama and GPT-2 models: prompt masking, packing, every method, reloading."""

import json
import math

import pytest
import torch

from ft_assets.lib.training.causal_data import (
    IGNORE, causal_loss, collate_causal, pack_examples, text_blocks, tokenize_conversation, tokenize_conversations,
)
from ft_assets.lib.config import RecipeConfig
from ft_assets.lib.training.base_models import load_causal_lm
from ft_assets.lib.training.checkpoint import load_checkpoint
from ft_assets.lib.training.checkpoint import save_checkpoint
from ft_assets.lib.training.loop import fit
from ft_assets_tests.conftest import qa_conversations, story_lines
from ft_assets_tests.helpers import CAUSAL_LEARNING_RATE, causal_recipe, causal_rows

METHODS = sorted(CAUSAL_LEARNING_RATE)


@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_only_assistant_tokens_carry_a_loss(model_fixture, request):
    # tiny_llama has no chat template (the default one is used); tiny_gpt2 has a ChatML template.
    _, tokenizer = load_causal_lm(str(request.getfixturevalue(model_fixture)))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What colour is the lamp?"},
                {"role": "assistant", "content": "The lamp is red."}, {"role": "user", "content": "And the boat?"},
                {"role": "assistant", "content": "The boat is blue."}]
    tokenized = tokenize_conversation(tokenizer, messages, max_length=512)
    assert len(tokenized.input_ids) == len(tokenized.labels) and not tokenized.truncated
    learned = tokenizer.decode([t for t, label in zip(tokenized.input_ids, tokenized.labels) if label != IGNORE])
    # Both answers (with their end-of-turn marker) and nothing of the questions or the system prompt.
    assert learned.startswith("The lamp is red.") and "The boat is blue." in learned
    assert "colour" not in learned and "brief" not in learned and "And the boat" not in learned
    labelled = [label for label in tokenized.labels if label != IGNORE]
    assert labelled == [t for t, label in zip(tokenized.input_ids, tokenized.labels) if label != IGNORE]


def test_a_template_that_renders_prompts_differently_is_refused(tiny_llama_dir):
    _, tokenizer = load_causal_lm(str(tiny_llama_dir))
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}Answer now:{% endif %}")
    messages = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    with pytest.raises(ValueError, match="prefix of the conversation"):
        tokenize_conversation(tokenizer, messages, max_length=64)


def test_a_conversation_whose_prompt_fills_max_length_is_dropped_and_counted(tiny_llama_dir):
    _, tokenizer = load_causal_lm(str(tiny_llama_dir))
    long_prompt = json.dumps([{"role": "user", "content": "the lamp " * 60}, {"role": "assistant", "content": "Yes."}])
    examples, counts = tokenize_conversations(tokenizer, [long_prompt] + qa_conversations(4)[1:], max_length=48)
    assert len(examples) == 3
    assert counts == {"conversations": 4, "truncated": 1, "dropped_no_response_tokens": 1}


# flex_attention (training.attention) runs forward only here: torch has no CPU backward for it. What is
# checked is the mask transformers builds from packed position ids, so flex runs eagerly (torch's reference
# code) rather than compiled as transformers runs it: torch 2.13's compiled CPU kernel returns NaN rows for
# some inputs on AVX2-only CPUs (an AMD EPYC here), and training runs flex on CUDA only, where test_gpu.py
# checks the compiled kernel.
@pytest.mark.parametrize("model_fixture,attention", [("tiny_llama_dir", "sdpa"), ("tiny_gpt2_dir", "sdpa"),
                                                     ("tiny_llama_dir", "flex_attention")])
def test_packed_and_unpacked_losses_agree(model_fixture, attention, request, monkeypatch):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    from transformers import masking_utils
    from transformers.integrations import flex_attention as hf_flex

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention",
                        lambda query, key, value, training=False, **kwargs: flex_attention(query, key, value, **kwargs))
    # The same block mask from the same mask function, built eagerly: compiling its builder took two minutes
    # of this test on the CPU.
    monkeypatch.setattr(masking_utils, "create_block_mask",
                        lambda *args, _compile=False, **kwargs: create_block_mask(*args, _compile=False, **kwargs))
    model, tokenizer = load_causal_lm(str(request.getfixturevalue(model_fixture)))
    model.set_attn_implementation(attention)
    assert model.config._attn_implementation == attention
    torch.manual_seed(1)
    with torch.no_grad():  # large random weights, so every token's output depends on its context
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.eval()
    examples, _ = tokenize_conversations(tokenizer, qa_conversations(6), max_length=256)
    packed = pack_examples(examples, max_length=256)
    assert len(packed) < len(examples)  # several conversations really share a sequence

    def summed_loss(batch):
        labels = batch.pop("labels")
        with torch.no_grad():
            return causal_loss(model(**batch, use_cache=False).logits, labels, reduction="sum").item()

    alone = sum(summed_loss(collate_causal([e], tokenizer.pad_token_id)) for e in examples)
    together = summed_loss(collate_causal(packed, tokenizer.pad_token_id))
    assert together == pytest.approx(alone, rel=1e-5)
    # Padded to max_length, as training pads packed rows: the padding is a sequence of its own, with no loss.
    full_width = collate_causal(packed, tokenizer.pad_token_id, width=256)
    assert full_width["input_ids"].shape[1] == 256
    assert summed_loss(full_width) == pytest.approx(alone, rel=1e-5)
    # The control: the same packed rows with one running position and plain causal attention leak.
    leaky = collate_causal(packed, tokenizer.pad_token_id)
    del leaky["position_ids"]
    assert abs(summed_loss(leaky) - alone) > 1e-4 * alone  # ten times the tolerance above


def test_text_blocks_cut_one_stream_into_full_blocks(tiny_llama_dir):
    _, tokenizer = load_causal_lm(str(tiny_llama_dir))
    lines = story_lines(40)
    blocks = text_blocks(tokenizer, lines, block_size=32)
    stream = tokenizer("\n".join(lines), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert all(len(b["input_ids"]) == 32 for b in blocks)
    assert len(blocks) == len(stream) // 32
    assert sum((b["input_ids"] for b in blocks), []) == stream[: 32 * len(blocks)]


@pytest.mark.parametrize("task,model_fixture", [("instruction", "tiny_llama_dir"), ("instruction", "tiny_gpt2_dir"),
                                                ("language_modeling", "tiny_gpt2_dir"),
                                                ("language_modeling", "tiny_llama_dir")])
@pytest.mark.parametrize("method", METHODS)
def test_loss_goes_down_and_the_checkpoint_reloads_to_the_same_logits(task, model_fixture, method, request, tmp_path):
    model_dir = request.getfixturevalue(model_fixture)
    texts = qa_conversations(48) if task == "instruction" else story_lines(300)
    r = causal_recipe(model_dir, method)
    result = fit(r, [], causal_rows(texts), causal_rows(texts[:8]), task=task, device="cpu")
    losses = [rec["train_loss"] for rec in result.logger.records if "train_loss" in rec]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    info = result.train_info
    assert 0 < info["trainable_params"] <= info["total_params"] and info["tokens_per_sec"] > 0
    if method != "full":
        assert info["trainable_params"] < info["total_params"] / 2
    assert result.logger.records[-1]["eval_perplexity"] == pytest.approx(math.exp(result.logger.records[-1]["eval_loss"]))

    out = tmp_path / "ckpt"
    save_checkpoint(result, r, [], out, {})
    assert (out / ("model.safetensors" if method in ("full", "freeze") else "adapter_model.safetensors")).exists()
    model, tokenizer, labels = load_checkpoint(out)
    assert labels == [] and tokenizer.chat_template == result.tokenizer.chat_template
    batch = collate_causal(tokenize_conversations(tokenizer, qa_conversations(4, seed=9), 96)[0], tokenizer.pad_token_id)
    batch.pop("labels")
    result.model.eval()
    with torch.no_grad():
        before = result.model(**batch, use_cache=False).logits
        after = model(**batch, use_cache=False).logits
    assert (before - after).abs().max() < 1e-4


def test_packing_trains_the_same_conversations_in_fewer_steps(tiny_llama_dir):
    texts = qa_conversations(48)
    plain = fit(causal_recipe(tiny_llama_dir, "lora", epochs=1), [], causal_rows(texts), None, task="instruction",
                device="cpu")
    packed = fit(causal_recipe(tiny_llama_dir, "lora", epochs=1, packing=True, max_length=256), [], causal_rows(texts),
                 None, task="instruction", device="cpu")
    assert packed.train_info["packed_sequences"] < plain.train_info["conversations"] == 48
    assert packed.train_info["steps"] < plain.train_info["steps"]


def test_merged_export_of_a_causal_lora_gives_the_adapters_logits(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    r = causal_recipe(tiny_llama_dir, "lora", epochs=1).model_copy(update={"export": "merged"})
    result = fit(r, [], causal_rows(qa_conversations(16)), None, task="instruction", device="cpu")
    save_checkpoint(result, r, [], tmp_path / "ckpt", {})
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt" / "merged").eval()
    ids = torch.tensor([result.tokenizer("The lamp is red.")["input_ids"]])
    result.model.eval()
    with torch.no_grad():
        assert (merged(ids).logits - result.model(ids).logits).abs().max() < 1e-4


def test_a_scratch_model_learns_the_language_of_its_corpus(tmp_path):
    r = RecipeConfig(name="scratch", dataset="d", base_model="scratch", method="full",
                     scratch={"architecture": "llama", "vocab_size": 320, "hidden_size": 32, "layers": 2, "heads": 2,
                              "context": 64},
                     training={"epochs": 3, "batch_size": 8, "max_length": 32, "learning_rate": 3e-3})
    lines = story_lines(400)
    result = fit(r, [], causal_rows(lines), causal_rows(story_lines(40, seed=5)), task="language_modeling",
                 device="cpu")
    evals = [rec["eval_perplexity"] for rec in result.logger.records if "eval_perplexity" in rec]
    # A fresh model is near-uniform over its vocabulary; three epochs on a repetitive corpus are far better.
    assert evals[0] < 320 and evals[-1] < evals[0] and evals[-1] < 20
    manifest = save_checkpoint(result, r, [], tmp_path / "ckpt", {})
    assert manifest["base_model"]["id"] == "scratch" and manifest["base_model"]["scratch"]["vocab_size"] == 320
    assert (tmp_path / "ckpt" / "tokenizer.json").exists()
