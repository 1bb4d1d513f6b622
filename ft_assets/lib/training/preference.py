"""The preference task: pairs of a prompt, a preferred and a non-preferred answer (chosen, rejected).

A causal LM learns from them with dpo, ipo, simpo or orpo (lib/training/preference_loss.py): the loss
is on the answer tokens only, chosen and rejected go through the model in one forward pass (one batch of
2B rows: the B chosen, then the B rejected), and dropout is off, so that the policy's log-probabilities
and the reference's differ only by what training changed.

The reference model of dpo and ipo, by what the recipe starts from:
  frozen_copy       a full or freeze recipe: a second, frozen copy of the base (its weights at step 0);
  adapter_disabled  an adapter recipe on a plain base (a full or merged checkpoint, a pretrained model):
                    the same model with its adapter switched off, which is the base;
  sft_adapter       an adapter recipe on a checkpoint:<recipe> that left an adapter (SFT with LoRA, then
                    DPO): the policy continues that adapter, and the reference is the SFT model (the base
                    with the SFT adapter merged), never the bare base it was trained from.
With `precompute_reference` the reference scores every pair once before the first step (cached by the
pairs, the tokenizer and the reference weights' sha256) and is not kept in memory while training.

An encoder (objective reward) becomes a reward model: one scalar score per (prompt, answer), trained
with the Bradley-Terry loss on the pair.
"""

from __future__ import annotations

import json
from pathlib import Path

from ft_assets.lib.config import REFERENCE_OBJECTIVES, RecipeConfig
from ft_assets.lib.training.base_models import load_causal_lm, load_classifier, model_sha256, resolve_base_model
from ft_assets.lib.training.methods import PEFT_METHODS, apply_method, head_modules
from ft_assets.lib.training.preference_loss import PreferenceLoss, answer_logps, bradley_terry_loss, preference_loss
from ft_assets.lib.training.task import TrainingData, batch_sampler

# A reward model's one output.
REWARD_LABELS = ["reward"]


def read_pair(text: str) -> tuple[list[dict], str, str]:
    """(prompt messages, chosen answer, rejected answer) of a clean preference row's canonical JSON."""
    pair = json.loads(text)
    return pair["prompt"], pair["chosen"], pair["rejected"]


def setup(recipe: RecipeConfig, train_rows, validation_rows, base_model_path, device, world, *,
          reference_cache: str | None = None) -> TrainingData:
    """A causal LM and its reference (or an encoder with a scalar head for objective reward), the tokenized
    pairs in length-grouped batches, the objective's loss and the validation preference figures."""
    objective, args = recipe.objective_for("preference")
    if objective == "reward":
        return _reward_model_setup(recipe, train_rows, validation_rows, base_model_path, device, world)
    cfg = recipe.training
    base_path = base_model_path or resolve_base_model(recipe.base_model)
    model, tokenizer, reference, info = policy_and_reference(recipe, objective, base_path)
    disable_dropout(model)
    train_set, counts = tokenize_pairs(tokenizer, train_rows["text"], cfg.max_length)
    if not train_set:
        raise ValueError(f"recipe {recipe.name!r}: no training pair keeps an answer token of both answers within "
                         f"max_length {cfg.max_length}; raise training.max_length")
    validation_set = (tokenize_pairs(tokenizer, validation_rows["text"], cfg.max_length)[0]
                      if validation_rows and validation_rows["text"] else [])
    uses_reference = objective in REFERENCE_OBJECTIVES
    if reference is not None:
        reference.to(device)
    score_reference = None
    if uses_reference:
        score_reference = reference_scorer(model if reference is None else reference,
                                           adapter_disabled=reference is None)
        if args["precompute_reference"]:
            _attach_reference_logps(train_set + validation_set, score_reference, reference_cache,
                                    _reference_cache_key(info["reference"], tokenizer, cfg.max_length,
                                                         train_set + validation_set),
                                    pad_token_id=tokenizer.pad_token_id, batch_size=cfg.batch_size, device=device)
            reference, score_reference = None, None  # scored once: not kept for the steps
    info = {**info, "objective": objective, "objective_args": args, **counts}

    def collate(rows):
        return collate_pairs(rows, tokenizer.pad_token_id)

    def loss(train_model, batch):
        return pair_loss(train_model, batch, objective, args, score_reference).loss

    validate = None
    if validation_set:
        def validate(policy):
            return _validation_figures(policy, validation_set, tokenizer.pad_token_id, objective, args,
                                       score_reference, cfg.batch_size, device)

    return TrainingData(model=model, tokenizer=tokenizer, train_set=train_set, collate=collate, loss=loss,
                        validate=validate, heads=set(), base_model_path=info.pop("base_model_path"), info=info,
                        batches=batch_sampler(cfg, [max(len(r["chosen_input_ids"]), len(r["rejected_input_ids"]))
                                                    for r in train_set], world,
                                              group_by_length=cfg.group_by_length))


def policy_and_reference(recipe: RecipeConfig, objective: str, base_path: str):
    """(policy to train, tokenizer, a separate frozen reference model or None, info) for the three reference
    cases of the module docstring (reference-free objectives load no reference)."""
    quantized = recipe.method == "qlora"
    uses_reference = objective in REFERENCE_OBJECTIVES
    sft_adapter = Path(base_path, "adapter_config.json").is_file()
    if sft_adapter:
        from peft import PeftModel

        bare_base = json.loads(Path(base_path, "manifest.json").read_text())["base_model"]["path"]
        model, tokenizer = load_causal_lm(bare_base, quantize_4bit=quantized, **recipe.loading)
        if quantized:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = PeftModel.from_pretrained(model, base_path, is_trainable=True)
        reference = None
        if uses_reference:
            reference = PeftModel.from_pretrained(load_causal_lm(bare_base, **recipe.loading)[0], base_path)
            reference = frozen(reference.merge_and_unload())
        kind, path = "sft_adapter", base_path
        base_for_checkpoint = bare_base  # the policy is an adapter over the bare base, like the SFT one
    else:
        model, tokenizer = load_causal_lm(base_path, quantize_4bit=quantized, **recipe.loading)
        adapter = recipe.method in PEFT_METHODS
        reference = frozen(load_causal_lm(base_path, **recipe.loading)[0]) if uses_reference and not adapter else None
        model = apply_method(model, recipe.method, recipe.method_args, causal=True, base_model_path=base_path)
        kind = "adapter_disabled" if adapter else "frozen_copy"
        path = base_for_checkpoint = base_path
    # Recorded for a reference-free objective too: it is the untuned start the report compares with.
    described = {"kind": kind, "path": path, "sha256": model_sha256(path), "scored": uses_reference}
    return model, tokenizer, reference, {"reference": described, "base_model_path": base_for_checkpoint}


def frozen(model):
    """The model in eval mode with no parameter that takes a gradient."""
    model.eval()
    for p in model.parameters():
        p.requires_grad = False
    return model


def disable_dropout(model) -> None:
    """Every dropout of the model at p=0 (PEFT's adapter dropout too): with dropout on, the policy's
    log-probabilities would differ from the reference's by noise, not by what training changed."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    for name in ("attention_dropout", "attn_pdrop", "hidden_dropout", "resid_pdrop", "embd_pdrop"):
        if config is not None and isinstance(getattr(config, name, None), float):
            setattr(config, name, 0.0)


def tokenize_pairs(tokenizer, texts: list[str], max_length: int) -> tuple[list[dict], dict]:
    """Token ids and answer-only labels of each pair's chosen and rejected conversation.

    Each side is the prompt and its answer as one conversation, rendered with the chat template and
    labelled on the answer's tokens (causal_data.tokenize_conversation); a pair whose chosen or rejected
    answer has no token left within max_length is dropped.

    Returns:
        (examples, counts): examples {"chosen_input_ids", "chosen_labels", "rejected_input_ids",
        "rejected_labels"}; counts {"pairs", "truncated_pairs", "dropped_no_answer_tokens"}.
    """
    from ft_assets.lib.training.causal_data import IGNORE, tokenize_conversation

    examples, truncated, dropped = [], 0, 0
    for text in texts:
        prompt, chosen, rejected = read_pair(text)
        sides = {name: tokenize_conversation(tokenizer, prompt + [{"role": "assistant", "content": answer}], max_length)
                 for name, answer in (("chosen", chosen), ("rejected", rejected))}
        truncated += any(s.truncated for s in sides.values())
        if any(all(label == IGNORE for label in s.labels) for s in sides.values()):
            dropped += 1
            continue
        examples.append({f"{name}_{part}": getattr(s, part) for name, s in sides.items()
                         for part in ("input_ids", "labels")})
    return examples, {"pairs": len(texts), "truncated_pairs": truncated, "dropped_no_answer_tokens": dropped}


def collate_pairs(rows: list[dict], pad_token_id: int) -> dict:
    """One batch of 2B rows: the B chosen conversations, then the B rejected, right-padded together (one
    forward pass scores both sides); precomputed reference log-probs, when the rows carry them, in the same
    order."""
    import torch

    from ft_assets.lib.training.causal_data import collate_causal

    sides = [{"input_ids": r[f"{side}_input_ids"], "labels": r[f"{side}_labels"]}
             for side in ("chosen", "rejected") for r in rows]
    batch = collate_causal(sides, pad_token_id)
    if "reference_chosen" in rows[0]:
        batch["reference_logps"] = torch.tensor([r[f"reference_{side}"] for side in ("chosen", "rejected")
                                                 for r in rows], dtype=torch.float32)
    batch["n_tokens"] = torch.tensor([len(s["input_ids"]) for s in sides])
    batch["n_examples"] = torch.tensor(len(rows))  # pairs, not rows of the batch
    return batch


def sequence_logps(model, batch: dict):
    """(summed answer log-probs, answer token counts) of each row of a collate_pairs batch: shape (2B,)."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    # No cache: a training forward pass, and transformers' cache would change nothing but memory.
    return answer_logps(model(**inputs, use_cache=False).logits, batch["labels"])


def reference_scorer(model, *, adapter_disabled: bool):
    """A function (batch) -> the reference's summed answer log-probs (2B,), without gradient: `model` is the
    frozen reference, or (adapter_disabled) the policy, scored with its adapter switched off."""
    import contextlib

    import torch

    def score(batch):
        switched_off = model.disable_adapter() if adapter_disabled else contextlib.nullcontext()
        with torch.no_grad(), switched_off:
            return sequence_logps(model, batch)[0].detach()

    return score


def pair_loss(model, batch: dict, objective: str, args: dict, score_reference) -> PreferenceLoss:
    """The objective's PreferenceLoss for one collate_pairs batch; `score_reference` gives the reference's
    summed answer log-probs (2B,) of a batch that carries no precomputed ones (dpo and ipo)."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    logits = model(**inputs, use_cache=False).logits
    logps, tokens = answer_logps(logits, labels)
    n = logps.shape[0] // 2
    reference = {}
    if objective in REFERENCE_OBJECTIVES:
        ref = batch["reference_logps"] if "reference_logps" in batch else score_reference(batch)
        reference = {"reference_chosen": ref[:n], "reference_rejected": ref[n:]}
    chosen_nll = None
    if objective == "orpo":
        from ft_assets.lib.training.causal_data import causal_loss

        chosen_nll = causal_loss(logits[:n], labels[:n])
    return preference_loss(objective, args, policy_chosen=logps[:n], policy_rejected=logps[n:],
                           chosen_tokens=tokens[:n], rejected_tokens=tokens[n:], chosen_nll=chosen_nll, **reference)


def pair_figures(losses) -> dict:
    """Preference accuracy (a tie counts half) and mean margin of the model's own ranking of each pair, the
    measure its starting model is scored by; for dpo and ipo also their implicit reward's, as
    implicit_reward_accuracy and implicit_reward_margin (how often training moved the odds towards the
    preferred answer: 0.5 for a policy still equal to its reference, whatever that reference ranks first)."""
    own = (losses.chosen_rewards, losses.rejected_rewards) if losses.chosen_likelihood is None else (
        losses.chosen_likelihood, losses.rejected_likelihood)
    accuracy, margin = _ranking(*own)
    figures = {"preference_accuracy": accuracy, "reward_margin": margin, "n": int(own[0].numel())}
    if losses.chosen_likelihood is not None:
        accuracy, margin = _ranking(losses.chosen_rewards, losses.rejected_rewards)
        figures |= {"implicit_reward_accuracy": accuracy, "implicit_reward_margin": margin}
    return figures


def _ranking(chosen, rejected) -> tuple[float, float]:
    margin = (chosen - rejected).float()
    wins = (margin > 0).float() + 0.5 * (margin == 0).float()
    return float(wins.mean()), float(margin.mean())


_SCORES = ("chosen_rewards", "rejected_rewards", "chosen_likelihood", "rejected_likelihood")


def score_pairs(policy, examples: list[dict], pad_token_id: int, objective: str, args: dict, score_reference,
                batch_size: int, device: str):
    """The objective's loss and the scores of every pair, in eval mode.

    Returns:
        a PreferenceLoss: the mean loss over pairs, every pair's rewards and (dpo, ipo) likelihoods, as CPU tensors.
    """
    import torch

    policy.eval()
    total, scores = 0.0, {name: [] for name in _SCORES}
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            rows = examples[start:start + batch_size]
            batch = {k: v.to(device) for k, v in collate_pairs(rows, pad_token_id).items()}
            scored = pair_loss(policy, batch, objective, args, score_reference)
            total += float(scored.loss) * len(rows)
            for name in _SCORES:
                if (value := getattr(scored, name)) is not None:
                    scores[name].append(value.float().cpu())
    merged = {name: torch.cat(parts) for name, parts in scores.items() if parts}
    empty = torch.zeros(0)
    return PreferenceLoss(loss=torch.tensor(total / max(len(examples), 1)),
                          chosen_rewards=merged.pop("chosen_rewards", empty),
                          rejected_rewards=merged.pop("rejected_rewards", empty), **merged)


def _validation_figures(policy, examples, pad_token_id, objective, args, score_reference, batch_size, device) -> dict:
    return _eval_figures(score_pairs(policy, examples, pad_token_id, objective, args, score_reference, batch_size,
                                     device))


def _eval_figures(scored) -> dict:
    """A validation pass's loss and pair_figures, as the run log's eval_ keys."""
    figures = pair_figures(scored)
    figures.pop("n")
    return {"eval_loss": float(scored.loss), **{f"eval_{name}": value for name, value in figures.items()}}


def _reference_cache_key(reference: dict, tokenizer, max_length: int, examples: list[dict]) -> str:
    from ft_assets.lib.config import stable_hash

    return stable_hash({"reference": reference, "max_length": max_length, "vocab": len(tokenizer),
                        "pairs": [[r["chosen_input_ids"], r["rejected_input_ids"]] for r in examples]})


def _attach_reference_logps(examples: list[dict], score_reference, cache_dir: str | None, key: str, *,
                            pad_token_id: int, batch_size: int, device: str) -> None:
    """Gives every example its reference log-probs (reference_chosen, reference_rejected): read from
    <cache_dir>/<key>.json when an earlier run scored the same pairs with the same reference, else scored
    now, a batch at a time, and written there."""
    cached = Path(cache_dir) / f"{key}.json" if cache_dir else None
    if cached is not None and cached.is_file():
        scores = json.loads(cached.read_text())
    else:
        scores = []
        for start in range(0, len(examples), batch_size):
            rows = examples[start:start + batch_size]
            batch = {k: v.to(device) for k, v in collate_pairs(rows, pad_token_id).items()}
            logps = score_reference(batch).float().cpu().tolist()
            scores += [[c, r] for c, r in zip(logps[:len(rows)], logps[len(rows):])]
        if cached is not None:
            # Renamed into place: a run killed while writing leaves no half file for the next to trust.
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(".partial")
            partial.write_text(json.dumps(scores))
            partial.replace(cached)
    for example, (chosen, rejected) in zip(examples, scores):
        example["reference_chosen"], example["reference_rejected"] = chosen, rejected


# --- reward models ---

def reward_text(prompt: list[dict]) -> str:
    """A prompt as the encoder reads it: each message's content on its own line, in order."""
    return "\n".join(m["content"] for m in prompt)


def _reward_model_setup(recipe, train_rows, validation_rows, base_model_path, device, world) -> TrainingData:
    """An encoder with a one-output head, its (prompt, answer) pairs and the Bradley-Terry loss."""
    cfg = recipe.training
    base_path = base_model_path or resolve_base_model(recipe.base_model)
    model, tokenizer = load_classifier(base_path, REWARD_LABELS, quantize_4bit=recipe.method == "qlora",
                                       **recipe.loading)
    model = apply_method(model, recipe.method, recipe.method_args, base_model_path=base_path)
    train_set = reward_examples(tokenizer, train_rows["text"], cfg.max_length)
    validation_set = (reward_examples(tokenizer, validation_rows["text"], cfg.max_length)
                      if validation_rows and validation_rows["text"] else [])

    def collate(rows):
        return collate_reward_pairs(rows, tokenizer, pad_to_multiple_of=8 if device == "cuda" else None)

    def loss(train_model, batch):
        scores = train_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             **({"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {})
                             ).logits.squeeze(-1).float()
        n = scores.shape[0] // 2
        return bradley_terry_loss(scores[:n], scores[n:]).loss

    validate = None
    if validation_set:
        def validate(trained):
            chosen, rejected = reward_scores(trained, tokenizer, validation_set, cfg.batch_size, device)
            return _eval_figures(bradley_terry_loss(chosen, rejected))

    return TrainingData(model=model, tokenizer=tokenizer, train_set=train_set, collate=collate, loss=loss,
                        validate=validate, heads=set(head_modules(model)), base_model_path=base_path,
                        info={"objective": "reward", "objective_args": {}, "pairs": len(train_rows["text"])},
                        batches=batch_sampler(cfg, [max(len(r["chosen"]["input_ids"]), len(r["rejected"]["input_ids"]))
                                                    for r in train_set], world, group_by_length=cfg.group_by_length))


def reward_examples(tokenizer, texts: list[str], max_length: int) -> list[dict]:
    """Each pair as two encodings of (prompt, answer), truncated to max_length (the longer part first)."""
    examples = []
    for text in texts:
        prompt, chosen, rejected = read_pair(text)
        question = reward_text(prompt)
        examples.append({side: dict(tokenizer(question, answer, truncation="longest_first", max_length=max_length))
                         for side, answer in (("chosen", chosen), ("rejected", rejected))})
    return examples


def collate_reward_pairs(rows: list[dict], tokenizer, pad_to_multiple_of: int | None = None) -> dict:
    """2B padded encodings: the chosen sides, then the rejected."""
    from transformers import DataCollatorWithPadding

    pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
    batch = pad([r[side] for side in ("chosen", "rejected") for r in rows])
    import torch

    batch["n_tokens"] = batch["attention_mask"].sum(dim=1)
    batch["n_examples"] = torch.tensor(len(rows))
    return dict(batch)


def reward_scores(model, tokenizer, examples: list[dict], batch_size: int, device: str):
    """(chosen scores (n,), rejected scores (n,)) of a reward model, in eval mode, as CPU tensors."""
    import torch

    model.eval()
    chosen, rejected = [], []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            rows = examples[start:start + batch_size]
            batch = {k: v.to(device) for k, v in collate_reward_pairs(rows, tokenizer).items()
                     if k not in ("n_tokens", "n_examples")}
            scores = model(**batch).logits.squeeze(-1).float().cpu()
            chosen.append(scores[:len(rows)])
            rejected.append(scores[len(rows):])
    return (torch.cat(chosen) if chosen else torch.zeros(0)), (torch.cat(rejected) if rejected else torch.zeros(0))
