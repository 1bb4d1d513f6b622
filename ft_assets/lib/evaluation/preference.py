"""A preference recipe's report: how often the tuned model ranks the preferred answer of a test pair first.

preference_accuracy is the share of test pairs whose chosen answer the tuned model itself ranks first (a
tie counts half); reward_margin the mean of score(chosen) - score(rejected). The score is the model's own:
  reward model         its score of (prompt, answer);
  dpo, ipo             beta * the summed log-probability of the answer's tokens under the tuned model;
  simpo, orpo          beta * the mean log-probability per answer token (their reward, they have no reference).
dpo and ipo also report their implicit reward, beta * (log p_tuned(answer) - log p_reference(answer)) summed
over the answer's tokens, as implicit_reward_accuracy and implicit_reward_margin: on how many pairs training
moved the odds towards the chosen answer (TRL's rewards/accuracies). It is not the headline, because it says
nothing of the pairs the reference already ranked right: a policy still equal to its reference scores 0.5
there whatever the reference prefers, and the gate compares the headline with the reference's ranking.
Beside them, the same keys for
  baselines.reference  the model training started from (the reference of dpo and ipo; the untuned base,
                       or the SFT model for a recipe that continued an SFT adapter; for a reward model the
                       base with its freshly initialised head), scored the same way: its preference before
                       tuning;
  baselines.length     the longer answer wins, or the shorter, whichever the train split favours: length
                       alone often predicts preference, so a model must beat it to have learned more.
Causal models also answer the first test prompts (greedy) beside the reference, scored against the
preferred answers with exact match and ROUGE-L, and report forgetting as the other causal tasks do.
"""

from __future__ import annotations

import contextlib

from ft_assets.lib.training.base_models import load_causal_lm, load_classifier
from ft_assets.lib.training.preference import (
    REWARD_LABELS, collate_pairs, frozen, pair_figures, read_pair, reward_examples, reward_scores, score_pairs,
    sequence_logps, tokenize_pairs,
)
from ft_assets.lib.training.preference_loss import PreferenceLoss, bradley_terry_loss, own_preference


def length_baseline(train_texts: list[str], test_texts: list[str]) -> dict:
    """The longer (or shorter) answer wins, whichever direction the train pairs favour; lengths in characters.

    reward_margin is the mean length difference in that direction, in characters.
    """
    def differences(texts):
        return [len(c) - len(r) for _, c, r in map(read_pair, texts)]

    train = [d for d in differences(train_texts) if d != 0]
    longer_share = sum(d > 0 for d in train) / len(train) if train else 0.5
    sign = 1 if longer_share >= 0.5 else -1
    test = [sign * d for d in differences(test_texts)]
    wins = sum(1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in test)
    return {"preference_accuracy": wins / len(test) if test else 0.0,
            "reward_margin": sum(test) / len(test) if test else 0.0, "n": len(test),
            "direction": "longer" if sign > 0 else "shorter", "train_share_longer_preferred": longer_share}


def reward_model_figures(model, tokenizer, test_texts: list[str], *, max_length: int, batch_size: int,
                         device: str) -> dict:
    """preference_accuracy and reward_margin of a reward model's scores on the test pairs."""
    examples = reward_examples(tokenizer, test_texts, max_length)
    chosen, rejected = reward_scores(model, tokenizer, examples, batch_size, device)
    scored = bradley_terry_loss(chosen, rejected)
    return {**pair_figures(scored), "eval_loss": float(scored.loss)}


def untuned_reward_model(base_path: str, seed: int, loading: dict):
    """The base with the head a reward model starts from: the same seed as fit() gives the same head."""
    import torch

    torch.manual_seed(seed)
    return load_classifier(base_path, REWARD_LABELS, **loading)[0]


@contextlib.contextmanager
def starting_model(model, manifest: dict):
    """The model a causal preference recipe started from, as its train_info recorded (lib/training/preference.py):
    the tuned model with its adapter off, or the frozen base or SFT model loaded again."""
    reference = manifest["train_info"]["reference"]
    loading = manifest["base_model"].get("loading", {})
    if reference["kind"] == "adapter_disabled":
        with model.disable_adapter():
            yield model
        return
    if reference["kind"] == "sft_adapter":
        from peft import PeftModel

        bare = load_causal_lm(manifest["base_model"]["path"], **loading)[0]
        yield frozen(PeftModel.from_pretrained(bare, reference["path"]).merge_and_unload().to(model.device))
        return
    yield frozen(load_causal_lm(reference["path"], **loading)[0].to(model.device))


def causal_figures(model, tokenizer, manifest: dict, test_texts: list[str], generation, *, max_length: int,
                   batch_size: int, device: str, general_blocks: list[dict] | None = None) -> dict:
    """The tuned model's and its starting model's figures on the test pairs (see the module docstring).

    A test pair whose prompt alone fills max_length keeps no answer token and cannot be scored; it is left
    out of every figure here, and `scored_texts` names the pairs that were scored, so that the report's
    n_test and length baseline count the same pairs.

    Returns:
        {"metrics": ..., "reference": ..., "samples": [...], "forgetting_losses": (start, tuned) or None,
         "scored_texts": [the test texts scored, in order]}
    """
    from ft_assets.lib.evaluation.metrics import generate_answers, generation_metrics
    from ft_assets.lib.training.causal import mean_causal_loss

    info = manifest["train_info"]
    objective, args = info["objective"], info["objective_args"]
    per_text = [tokenize_pairs(tokenizer, [text], max_length)[0] for text in test_texts]
    examples = [example for kept in per_text for example in kept]
    scored_texts = [text for text, kept in zip(test_texts, per_text) if kept]
    if not scored_texts:
        raise ValueError(f"none of the {len(test_texts)} test pairs keeps an answer token within max_length "
                         f"{max_length} (each prompt fills it): nothing to score; raise training.max_length")
    pad = tokenizer.pad_token_id
    pairs = [read_pair(t) for t in test_texts[: generation.max_examples]]
    prompts, preferred = [p for p, _, _ in pairs], [c for _, c, _ in pairs]

    def measured(m):
        """(answers to the prompts, general-text loss) of m."""
        answers = generate_answers(m, tokenizer, prompts, max_new_tokens=generation.max_new_tokens,
                                   batch_size=batch_size, device=device)
        return answers, mean_causal_loss(m, general_blocks, pad, batch_size, device) if general_blocks else None

    tuned_answers, tuned_general = measured(model)
    # With the adapter off, `start` is `model` itself: it is measured inside the block only.
    with starting_model(model, manifest) as start:
        start_answers, start_general = measured(start)
        start_logps = _batch_logps(start, examples, pad, batch_size, device)
    reference_batches = iter([logps for logps, _ in start_logps])
    scored = score_pairs(model, examples, pad, objective, args, lambda batch: next(reference_batches).to(device),
                         batch_size, device)
    figures = pair_figures(scored)  # the tuned model's own ranking, in the units start_own is measured in
    start_own = pair_figures(_likelihood_rewards(start_logps, objective, args["beta"]))
    metrics = {**figures, "dropped_no_answer_tokens": len(test_texts) - len(scored_texts),
               "eval_loss": float(scored.loss), "objective": objective, **args,
               **generation_metrics(tuned_answers, preferred)}
    reference = {"preference_accuracy": start_own["preference_accuracy"], "reward_margin": start_own["reward_margin"],
                 "n": start_own["n"], "kind": info["reference"]["kind"],
                 **generation_metrics(start_answers, preferred)}
    samples = [{"prompt": p[-1]["content"], "reference": c, "generated": a, "base_generated": b}
               for p, c, a, b in zip(prompts, preferred, tuned_answers, start_answers)]
    return {"metrics": metrics, "reference": reference, "samples": samples,
            "forgetting_losses": (start_general, tuned_general) if general_blocks else None,
            "scored_texts": scored_texts}


def _batch_logps(model, examples: list[dict], pad_token_id: int, batch_size: int, device: str) -> list:
    """[(summed answer log-probs (2b,), answer token counts (2b,))] per batch of `examples`, in score_pairs'
    batching, on the CPU."""
    import torch

    out = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate_pairs(examples[start:start + batch_size], pad_token_id).items()}
            logps, tokens = sequence_logps(model, batch)
            out.append((logps.detach().float().cpu(), tokens.cpu()))
    return out


def _likelihood_rewards(batch_logps: list, objective: str, beta: float):
    """A model's own preference in the objective's units (own_preference), as a PreferenceLoss's rewards."""
    import torch

    chosen, rejected = [], []
    for logps, tokens in batch_logps:
        scores = own_preference(objective, float(beta), logps, tokens)
        n = scores.shape[0] // 2
        chosen.append(scores[:n])
        rejected.append(scores[n:])
    return PreferenceLoss(loss=torch.tensor(float("nan")), chosen_rewards=torch.cat(chosen),
                          rejected_rewards=torch.cat(rejected))
