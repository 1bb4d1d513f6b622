"""Preference-tuning losses: DPO, IPO, SimPO, ORPO on answer log-probabilities, and a reward model's pair loss.

Every objective compares a chosen and a rejected answer to the same prompt. The policy's evidence is
log π(y|x), the SUMMED log-probability of the answer tokens (answer_logps); |y| is their count.
beta sets how sharply the loss reacts to a log-probability gap (for DPO and IPO it is also how far the
policy may drift from the reference: small beta, weak tie). Δ below is always chosen minus rejected.

- dpo (Rafailov et al. 2023), cDPO label smoothing ε:
    h = (log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l));
    loss = -(1-ε) log σ(β h) - ε log σ(-β h).
  The reference keeps the policy near where it started; ε is the assumed chance a pair is mislabelled.
- ipo (Azar et al. 2023), beta is the paper's τ:
    h = (log π(y_w) - log π_ref(y_w)) / |y_w| - (log π(y_l) - log π_ref(y_l)) / |y_l|;  loss = (h - 1/(2β))².
  A squared loss towards a finite margin, so it does not push h to infinity on deterministic pairs as
  DPO can. The log-ratios are averaged per token, as TRL does (confirmed with the IPO authors), so
  beta means the same thing whatever the answers' lengths.
- simpo (Meng et al. 2024), γ = gamma_beta_ratio · β:
    loss = -log σ(β (log π(y_w)/|y_w| - log π(y_l)/|y_l|) - γ).
  The reward is the length-normalised log-probability the model generates with, so no reference
  model is needed; γ is a target margin.
- orpo (Hong et al. 2024): with p = exp(log π(y)/|y|), the per-token-average probability,
    odds(y) = p / (1 - p);  loss = chosen_nll - β · log σ(log odds(y_w) - log odds(y_l)).
  The SFT term (chosen_nll) already anchors the model to the chosen answers, which is what a
  reference does in DPO; the odds-ratio term only adds a penalty on the rejected ones.
- bradley_terry_loss (a reward model): loss = -log σ(r(y_w) - r(y_l)).

Rewards follow TRL 1.16 (what its trainers log as rewards/chosen and rewards/rejected): dpo and ipo
β (log π(y) - log π_ref(y)) on the summed log-probabilities; simpo and orpo β log π(y)/|y|; the reward
model its scores. Sources: trl/trainer/dpo_trainer.py DPOTrainer._compute_loss (sigmoid, ipo),
trl/experimental/cpo/cpo_trainer.py CPOTrainer.cpo_loss (simpo), trl/experimental/orpo/orpo_trainer.py
ORPOTrainer.odds_ratio_loss and concatenated_forward (orpo), trl/trainer/reward_trainer.py
RewardTrainer.compute_loss. ft_assets_tests/test_preference_loss.py checks them against TRL.
"""

from __future__ import annotations

from dataclasses import dataclass

from ft_assets.lib.training.causal_data import IGNORE

OBJECTIVES = ("dpo", "ipo", "simpo", "orpo")
_NEEDS_REFERENCE = {"dpo", "ipo"}
_REQUIRED_ARGS = {"dpo": ("beta", "label_smoothing"), "ipo": ("beta",), "simpo": ("beta", "gamma_beta_ratio"),
                  "orpo": ("beta",)}

# Labelled positions whose logsumexp is taken at once: bounds the float32 temporary to
# _POSITIONS_PER_CHUNK x vocab (128 MiB at a 32k vocabulary) in a no-grad reference pass. With gradients,
# autograd keeps every chunk for the backward: labelled tokens x vocab x 4 bytes, prompts and padding excluded.
_POSITIONS_PER_CHUNK = 1024


def answer_logps(logits, labels):
    """Per row, the summed log-probability of the labelled tokens, and how many there are.

    Token t is predicted from the logits at position t - 1, as in causal_loss; the first token has
    nothing before it and is never counted. Only the labelled positions are scored, in float32, as
    their label's logit minus the logsumexp over the vocabulary: no (B, T, vocab) log_softmax is built.

    Args:
        logits: (B, T', vocab), T' >= T. PEFT prompt tuning puts its virtual tokens' logits in front;
            the last T positions are the real tokens'.
        labels: (B, T) input ids, IGNORE (-100) on prompt and padding tokens.

    Returns:
        (logps, counts): float32 (B,) sums, differentiable with respect to the logits, and int64 (B,)
        numbers of labelled tokens.
    """
    import torch

    logits = logits[:, -labels.shape[1]:]
    targets = labels[:, 1:]  # (B, T-1): the token each position t-1 predicts
    mask = targets != IGNORE
    rows, positions = mask.nonzero(as_tuple=True)  # (N,) each: only the labelled positions are scored
    picked = logits[rows, positions]  # (N, vocab) in the logits' dtype; logits[:, :-1] is never copied whole
    tokens = targets[rows, positions]
    token_logps = [torch.zeros(0, dtype=torch.float32, device=logits.device)]
    for chunk, ids in zip(picked.split(_POSITIONS_PER_CHUNK), tokens.split(_POSITIONS_PER_CHUNK)):
        chunk = chunk.float()
        token_logps.append(chunk.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(chunk, dim=-1))
    token_logps = torch.cat(token_logps)
    sums = torch.zeros(labels.shape[0], dtype=torch.float32, device=logits.device).index_add(0, rows, token_logps)
    return sums, mask.sum(dim=1)


@dataclass
class PreferenceLoss:
    loss: object  # scalar tensor, mean over pairs (ORPO: plus its SFT term)
    chosen_rewards: object  # (B,), detached
    rejected_rewards: object  # (B,), detached
    # dpo and ipo only: the policy's own preference, beta * its summed answer log-probability, (B,) each, detached.
    # Their rewards say how far training moved each answer from the reference, not which answer the policy
    # itself ranks first; simpo's, orpo's and a reward model's rewards are already the model's own.
    chosen_likelihood: object = None
    rejected_likelihood: object = None


def preference_loss(objective: str, args: dict, *, policy_chosen, policy_rejected, chosen_tokens, rejected_tokens,
                    reference_chosen=None, reference_rejected=None, chosen_nll=None) -> PreferenceLoss:
    """The loss of one batch of pairs under `objective`, and each answer's implicit reward (see the module doc).

    Args:
        objective: "dpo", "ipo", "simpo" or "orpo".
        args: the objective's arguments: dpo {beta, label_smoothing}, ipo {beta}, simpo {beta,
            gamma_beta_ratio}, orpo {beta}; other keys (precompute_reference) are ignored.
        policy_chosen, policy_rejected: (B,) summed answer log-probabilities under the policy (answer_logps).
        chosen_tokens, rejected_tokens: (B,) answer token counts (answer_logps); a row with none counts as 1.
            TRL counts completion tokens: the same, unless an answer starts at position 0 (never scored).
        reference_chosen, reference_rejected: (B,) the same under the reference model; dpo and ipo only.
        chosen_nll: orpo only, a scalar: the SFT term, a mean next-token NLL over the chosen sequences.
            The training loop passes it over the answer tokens only (lib/training/preference.py), as every
            other loss here is; TRL's ORPOTrainer (and the ORPO authors' code) take every non-padding token,
            prompt included: causal_loss(chosen_logits, chosen_input_ids with IGNORE on padding), which is
            what the parity test gives both.

    Raises:
        ValueError: an unknown objective, a missing argument, or a missing reference / chosen_nll.
    """
    import torch.nn.functional as F

    if objective not in OBJECTIVES:
        raise ValueError(f"preference objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    missing = [name for name in _REQUIRED_ARGS[objective] if name not in args]
    if missing:
        raise ValueError(f"preference objective {objective!r} needs objective_args {', '.join(missing)}")
    if objective in _NEEDS_REFERENCE and (reference_chosen is None or reference_rejected is None):
        raise ValueError(f"preference objective {objective!r} needs the reference model's log-probabilities "
                         "(reference_chosen and reference_rejected); simpo and orpo need none")
    if objective == "orpo" and chosen_nll is None:
        raise ValueError("preference objective 'orpo' needs chosen_nll, the SFT term on the chosen sequences")
    beta = float(args["beta"])
    policy_chosen, policy_rejected = policy_chosen.float(), policy_rejected.float()
    chosen_tokens, rejected_tokens = chosen_tokens.clamp(min=1), rejected_tokens.clamp(min=1)

    if objective in _NEEDS_REFERENCE:
        chosen_logratios = policy_chosen - reference_chosen.float()
        rejected_logratios = policy_rejected - reference_rejected.float()
        if objective == "dpo":
            smoothing = float(args["label_smoothing"])
            h = beta * (chosen_logratios - rejected_logratios)
            losses = -(1 - smoothing) * F.logsigmoid(h) - smoothing * F.logsigmoid(-h)
        else:
            h = chosen_logratios / chosen_tokens - rejected_logratios / rejected_tokens
            losses = (h - 1 / (2 * beta)) ** 2
        return PreferenceLoss(losses.mean(), beta * chosen_logratios.detach(), beta * rejected_logratios.detach(),
                              chosen_likelihood=own_preference(objective, beta, policy_chosen, chosen_tokens).detach(),
                              rejected_likelihood=own_preference(objective, beta, policy_rejected,
                                                                 rejected_tokens).detach())

    chosen_average, rejected_average = policy_chosen / chosen_tokens, policy_rejected / rejected_tokens
    if objective == "simpo":
        gamma = float(args["gamma_beta_ratio"]) * beta
        loss = -F.logsigmoid(beta * (chosen_average - rejected_average) - gamma).mean()
    else:
        log_odds = (chosen_average - rejected_average) - (_log1mexp(chosen_average) - _log1mexp(rejected_average))
        loss = chosen_nll.float() - beta * F.logsigmoid(log_odds).mean()
    return PreferenceLoss(loss, own_preference(objective, beta, policy_chosen, chosen_tokens).detach(),
                          own_preference(objective, beta, policy_rejected, rejected_tokens).detach())


def own_preference(objective: str, beta: float, logps, tokens):
    """A model's own score of its answers in `objective`'s units, (B,): beta * the summed answer log-probability
    for dpo and ipo, beta * its per-token mean for simpo and orpo (a row with no answer tokens counts one).

    It is the reward simpo and orpo train on, and for dpo and ipo the preference of the policy itself rather than
    its move from the reference; evaluation scores the untuned start with it, so both sides share one rule."""
    if objective in _NEEDS_REFERENCE:
        return beta * logps.float()
    return beta * logps.float() / tokens.clamp(min=1)


def _log1mexp(x):
    """log(1 - exp(x)) for x < 0 without cancellation (Mächler 2012: the branch at -log 2)."""
    import torch

    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def bradley_terry_loss(chosen_scores, rejected_scores) -> PreferenceLoss:
    """A reward model's pair loss, -log σ(r_chosen - r_rejected) averaged over pairs (TRL RewardTrainer's,
    without its optional centering term); the rewards are the (B,) scores themselves.

    Raises:
        ValueError: the two score tensors differ in shape.
    """
    import torch.nn.functional as F

    if chosen_scores.shape != rejected_scores.shape:
        raise ValueError(f"chosen scores {tuple(chosen_scores.shape)} and rejected scores "
                         f"{tuple(rejected_scores.shape)} must have one score per pair each")
    chosen_scores, rejected_scores = chosen_scores.float(), rejected_scores.float()
    loss = -F.logsigmoid(chosen_scores - rejected_scores).mean()
    return PreferenceLoss(loss, chosen_scores.detach(), rejected_scores.detach())
