"""The causal-LM tasks (instruction, language_modeling): examples, batches, loss and validation, and the
loss over a split that the report uses too."""

from __future__ import annotations

import json

from ft_assets.lib.config import SCRATCH
from ft_assets.lib.training.base_models import build_scratch_model, load_causal_lm, resolve_base_model
from ft_assets.lib.training.device import compiles
from ft_assets.lib.training.methods import apply_method
from ft_assets.lib.training.task import TrainingData, batch_sampler


def setup(recipe, task, train_rows, validation_rows, base_model_path, device, world) -> TrainingData:
    """A causal LM (from scratch, or loaded with the recipe's method applied), its examples (blocks of text, or
    conversations with only the answers labelled, packed when the recipe says so), the next-token loss and
    the validation loss and perplexity."""
    import torch

    from ft_assets.lib.training.causal_data import causal_loss, collate_causal, perplexity

    cfg = recipe.training
    if recipe.base_model == SCRATCH:
        model, tokenizer = build_scratch_model(recipe.scratch, _tokenizer_corpus(task, train_rows["text"]))
        base_path = None
    else:
        base_path = base_model_path or resolve_base_model(recipe.base_model)
        model, tokenizer = load_causal_lm(base_path, quantize_4bit=recipe.method == "qlora", **recipe.loading)
    model = apply_method(model, recipe.method, recipe.method_args, causal=True, base_model_path=base_path)
    train_set, info = causal_examples(tokenizer, task, train_rows["text"], cfg.max_length, packing=cfg.packing)
    if not train_set:
        raise ValueError(f"recipe {recipe.name!r}: no training example keeps a response token within "
                         f"max_length {cfg.max_length}; raise training.max_length")

    # Packed rows are nearly full: for a compiled model they are padded to max_length, which costs a few
    # pad tokens and gives every batch one shape (no dynamic shapes to compile for).
    width = cfg.max_length if cfg.packing and compiles(cfg, device) else None

    def collate(rows):
        batch = collate_causal(rows, tokenizer.pad_token_id, width=width)
        batch["n_tokens"] = torch.tensor([len(row["input_ids"]) for row in rows])  # padding excluded
        return batch

    def loss(model, batch):
        labels = batch.pop("labels")
        # No cache: with one, transformers skips the packed-sequence masking that position_ids ask for.
        return causal_loss(model(**batch, use_cache=False).logits, labels)

    validate = None
    if validation_rows and validation_rows["text"]:
        validation_set, _ = causal_examples(tokenizer, task, validation_rows["text"], cfg.max_length, packing=False)

        def validate(model):
            loss = mean_causal_loss(model, validation_set, tokenizer.pad_token_id, cfg.batch_size, device)
            return {"eval_loss": loss, "eval_perplexity": perplexity(loss)}

    return TrainingData(model=model, tokenizer=tokenizer, train_set=train_set, collate=collate, loss=loss,
                        validate=validate, heads=set(), base_model_path=base_path, info=info,
                        batches=batch_sampler(cfg, [len(row["input_ids"]) for row in train_set], world,
                                              group_by_length=cfg.group_by_length and not cfg.packing))


def causal_examples(tokenizer, task: str, texts: list[str], max_length: int, *, packing: bool) -> tuple[list[dict], dict]:
    """Training examples of a causal-LM split and figures about them (truncation, packing)."""
    from ft_assets.lib.training.causal_data import pack_examples, text_blocks, tokenize_conversations

    if task == "language_modeling":
        blocks = text_blocks(tokenizer, texts, max_length)
        return blocks, {"blocks": len(blocks), "block_tokens": max_length}
    examples, counts = tokenize_conversations(tokenizer, texts, max_length)
    if packing:
        packed = pack_examples(examples, max_length)
        counts["packed_sequences"] = len(packed)
        return packed, counts
    return examples, counts


def mean_causal_loss(model, examples: list[dict], pad_token_id: int, batch_size: int, device: str) -> float:
    """Mean next-token loss per labelled token over `examples` (eval mode, no gradient)."""
    import torch

    from ft_assets.lib.training.causal_data import causal_loss, collate_causal

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate_causal(examples[start:start + batch_size], pad_token_id).items()}
            labels = batch.pop("labels")
            total += causal_loss(model(**batch, use_cache=False).logits, labels, reduction="sum").item()
            count += int((labels[:, 1:] != -100).sum())
    return total / max(count, 1)


def _tokenizer_corpus(task: str, texts: list[str]) -> list[str]:
    """The text a scratch tokenizer learns from: message contents for conversations, else the rows."""
    if task != "instruction":
        return texts
    return [m["content"] for conversation in texts for m in json.loads(conversation)]
