"""Preference losses (lib/training/preference_loss.py): our own properties, then parity with TRL 1.16's trainers.

The parity tests run TRL's own code path (its collator, forward and loss) on the same token ids and the
same tiny Llama as ours, so a change of convention in either (a shift, a length normalisation, a
reward's definition) shows up as a difference above 1e-5.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from ft_assets.lib.training.causal_data import IGNORE, causal_loss
from ft_assets.lib.training.preference_loss import (
    answer_logps,
    bradley_terry_loss,
    preference_loss,
)

TOLERANCE = 1e-5
# The recipe defaults (the shared contract's objective_args).
ARGS = {"dpo": {"beta": 0.1, "label_smoothing": 0.0}, "ipo": {"beta": 0.1},
        "simpo": {"beta": 2.0, "gamma_beta_ratio": 0.5}, "orpo": {"beta": 0.1}}


def _pair_inputs(policy_chosen, policy_rejected, *, reference=(-12.0, -11.0), tokens=(4, 3), chosen_nll=2.5):
    """preference_loss keyword arguments for one pair, from plain numbers."""
    return {"policy_chosen": torch.tensor([policy_chosen]), "policy_rejected": torch.tensor([policy_rejected]),
            "chosen_tokens": torch.tensor([tokens[0]]), "rejected_tokens": torch.tensor([tokens[1]]),
            "reference_chosen": torch.tensor([reference[0]]), "reference_rejected": torch.tensor([reference[1]]),
            "chosen_nll": torch.tensor(chosen_nll)}


# --- our own properties ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("objective", ["dpo", "ipo", "simpo", "orpo"])
def test_loss_falls_as_the_chosen_answer_grows_likelier(objective):
    losses = [preference_loss(objective, ARGS[objective], **_pair_inputs(chosen, -11.5)).loss.item()
              for chosen in (-12.0, -11.0, -10.0)]
    assert losses[0] > losses[1] > losses[2], losses


@pytest.mark.parametrize("objective", ["dpo", "ipo", "simpo", "orpo"])
def test_loss_rises_as_the_rejected_answer_grows_likelier(objective):
    losses = [preference_loss(objective, ARGS[objective], **_pair_inputs(-11.0, rejected)).loss.item()
              for rejected in (-12.0, -11.0, -10.0)]
    assert losses[0] < losses[1] < losses[2], losses


def test_dpo_rewards_are_beta_times_the_log_ratio_to_the_reference():
    result = preference_loss("dpo", {"beta": 0.25, "label_smoothing": 0.0},
                             **_pair_inputs(-10.0, -14.0, reference=(-12.0, -13.0)))
    assert result.chosen_rewards.tolist() == pytest.approx([0.25 * 2.0])
    assert result.rejected_rewards.tolist() == pytest.approx([0.25 * -1.0])
    # -log σ(β h), h = 2 - (-1) = 3
    assert result.loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.25 * 3.0))), abs=1e-6)
    assert not result.chosen_rewards.requires_grad


def test_label_smoothing_mixes_in_the_flipped_pair():
    inputs = _pair_inputs(-10.0, -14.0, reference=(-12.0, -13.0))
    plain, flipped, smoothed = (preference_loss("dpo", {"beta": 0.1, "label_smoothing": s}, **inputs).loss.item()
                                for s in (0.0, 1.0, 0.2))
    assert smoothed == pytest.approx(0.8 * plain + 0.2 * flipped, abs=1e-6)


def test_simpo_and_orpo_rewards_are_beta_times_the_average_log_prob():
    for objective in ("simpo", "orpo"):
        result = preference_loss(objective, ARGS[objective], **_pair_inputs(-8.0, -9.0, tokens=(4, 3)))
        beta = ARGS[objective]["beta"]
        assert result.chosen_rewards.tolist() == pytest.approx([beta * -2.0])
        assert result.rejected_rewards.tolist() == pytest.approx([beta * -3.0])


@pytest.mark.parametrize("objective", ["dpo", "ipo", "simpo", "orpo"])
def test_the_policys_own_preference_is_scored_as_evaluation_scores_the_untuned_start(objective):
    # The report compares the tuned model's own ranking (training's scores) with the untuned start's
    # (evaluation's _likelihood_rewards): both must be beta * summed (dpo, ipo) or mean (simpo, orpo) log-probs.
    from ft_assets.lib.evaluation.preference import _likelihood_rewards

    beta = ARGS[objective]["beta"]
    result = preference_loss(objective, ARGS[objective], **_pair_inputs(-8.0, -9.0, tokens=(4, 3)))
    own = ((result.chosen_rewards, result.rejected_rewards) if result.chosen_likelihood is None
           else (result.chosen_likelihood, result.rejected_likelihood))
    expected = (beta * -8.0, beta * -9.0) if objective in ("dpo", "ipo") else (beta * -2.0, beta * -3.0)
    assert [own[0].item(), own[1].item()] == pytest.approx(expected)
    start = _likelihood_rewards([(torch.tensor([-8.0, -9.0]), torch.tensor([4, 3]))], objective, beta)
    assert [start.chosen_rewards.item(), start.rejected_rewards.item()] == pytest.approx(expected)


@pytest.mark.parametrize("objective", ["dpo", "ipo"])
def test_a_missing_reference_raises_naming_the_objective(objective):
    inputs = _pair_inputs(-10.0, -11.0)
    del inputs["reference_rejected"]
    with pytest.raises(ValueError, match=f"'{objective}' needs the reference"):
        preference_loss(objective, ARGS[objective], **inputs)


def test_missing_inputs_and_arguments_are_named():
    inputs = _pair_inputs(-10.0, -11.0)
    with pytest.raises(ValueError, match="'orpo' needs chosen_nll"):
        preference_loss("orpo", ARGS["orpo"], **{**inputs, "chosen_nll": None})
    with pytest.raises(ValueError, match="'simpo' needs objective_args gamma_beta_ratio"):
        preference_loss("simpo", {"beta": 2.0}, **inputs)
    with pytest.raises(ValueError, match="'kto' is not one of dpo, ipo, simpo, orpo"):
        preference_loss("kto", {"beta": 0.1}, **inputs)
    # simpo and orpo need no reference
    preference_loss("simpo", ARGS["simpo"], **{**inputs, "reference_chosen": None, "reference_rejected": None})


def test_bradley_terry_loss():
    result = bradley_terry_loss(torch.tensor([1.0, -0.5]), torch.tensor([0.0, 0.5]))
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 2
    assert result.loss.item() == pytest.approx(expected, abs=1e-6)
    assert result.chosen_rewards.tolist() == [1.0, -0.5]
    with pytest.raises(ValueError, match="one score per pair"):
        bradley_terry_loss(torch.zeros(2, 1), torch.zeros(2))


def _reference_logps(logits, labels):
    """The naive per-row loop: log_softmax of the position before each labelled token."""
    sums, counts = [], []
    for row_logits, row_labels in zip(logits.double(), labels):
        logps = row_logits.log_softmax(-1)
        picked = [logps[t - 1, row_labels[t]] for t in range(1, len(row_labels)) if row_labels[t] != IGNORE]
        sums.append(sum(picked) if picked else torch.tensor(0.0, dtype=torch.float64))
        counts.append(len(picked))
    return torch.stack(sums), torch.tensor(counts)


def test_answer_logps_scores_labelled_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11) * 3
    labels = torch.tensor([[IGNORE, IGNORE, 4, 5, 6, IGNORE],
                           [IGNORE, 1, 2, 3, 4, 5],
                           [IGNORE] * 6])  # a row with no answer left (e.g. truncated away)
    sums, counts = answer_logps(logits, labels)
    expected_sums, expected_counts = _reference_logps(logits, labels)
    assert sums.dtype == torch.float32 and counts.tolist() == expected_counts.tolist() == [3, 5, 0]
    assert torch.allclose(sums.double(), expected_sums, atol=1e-5)

    # the logits at the last labelled position and after predict nothing that is labelled
    changed = logits.clone()
    changed[0, 4:] += torch.randn(2, 11) * 5
    changed[2] = torch.randn(6, 11)
    assert torch.equal(answer_logps(changed, labels)[0], sums)

    # prompt tuning's virtual tokens in front are cut off
    front_padded = torch.cat([torch.randn(3, 4, 11) * 10, logits], dim=1)
    assert torch.equal(answer_logps(front_padded, labels)[0], sums)


def test_answer_logps_computes_bfloat16_logits_in_float32_and_passes_gradients():
    torch.manual_seed(1)
    logits = (torch.randn(2, 5, 17) * 4).bfloat16().requires_grad_()
    labels = torch.tensor([[IGNORE, 3, 4, IGNORE, IGNORE], [IGNORE, IGNORE, 7, 8, 9]])
    sums, _ = answer_logps(logits, labels)
    assert sums.dtype == torch.float32
    assert torch.allclose(sums.double(), _reference_logps(logits.detach().float(), labels)[0], atol=1e-5)
    sums.sum().backward()
    touched = logits.grad.abs().sum(-1) > 0  # (B, T): only positions that predict a labelled token
    assert touched.tolist() == [[True, True, False, False, False], [False, True, True, True, False]]


# --- parity with TRL ------------------------------------------------------------------------------------------

def _tiny_llama(config, seed: int, classifier: bool = False):
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config) if classifier else LlamaForCausalLM(config)
    return model.eval()


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    """The tiny Llama's config (weights 10x the default spread, so the log-probs differ by more than rounding),
    its tokenizer, and three pairs of random token ids with prompts and answers of different lengths."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_llama_dir)
    config.initializer_range = 0.2
    config.num_labels = 1
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    rng = random.Random(0)
    special = set(tokenizer.all_special_ids)
    words = [i for i in range(config.vocab_size) if i not in special]
    lengths = [(3, 4, 2), (5, 2, 6), (2, 5, 5)]  # (prompt, chosen, rejected)
    pairs = [tuple(rng.choices(words, k=n) for n in row) for row in lengths]
    return config, tokenizer, pairs


def _right_padded(rows: list[list[int]], value: int, width: int) -> torch.Tensor:
    return torch.tensor([row + [value] * (width - len(row)) for row in rows])


def _our_batch(pairs, pad_token_id: int) -> dict:
    """[chosen rows; rejected rows], right-padded to one width: the concatenated forward's inputs."""
    sequences = [p + c for p, c, _ in pairs] + [p + r for p, _, r in pairs]
    labels = [[IGNORE] * len(p) + c for p, c, _ in pairs] + [[IGNORE] * len(p) + r for p, _, r in pairs]
    width = max(map(len, sequences))
    return {"input_ids": _right_padded(sequences, pad_token_id, width),
            "attention_mask": _right_padded([[1] * len(s) for s in sequences], 0, width),
            "labels": _right_padded(labels, IGNORE, width)}


def _our_logps(model, batch):
    """(chosen sums, rejected sums, chosen counts, rejected counts, logits) from one concatenated forward."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    sums, counts = answer_logps(logits, batch["labels"])
    return (*sums.chunk(2), *counts.chunk(2), logits)


def _trl_args(config_class, tmp_path, **kwargs):
    return config_class(output_dir=str(tmp_path), report_to="none", bf16=False, use_cpu=True, **kwargs)


def _text_pairs():
    """TRL trainers tokenize a training set when built; ours is never trained on, only needed to build them."""
    from datasets import Dataset

    return Dataset.from_dict({"prompt": ["once upon"], "chosen": [" a time"], "rejected": [" the end"]})


def _max_diff(ours, theirs) -> float:
    return (torch.as_tensor(ours).double() - torch.as_tensor(theirs).double()).abs().max().item()


@pytest.mark.parametrize("loss_type,objective", [("sigmoid", "dpo"), ("ipo", "ipo")])
def test_dpo_and_ipo_match_trl_dpo_trainer(tiny, tmp_path, loss_type, objective):
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    config, tokenizer, pairs = tiny
    policy, reference = _tiny_llama(config, 0), _tiny_llama(config, 1)
    trainer = DPOTrainer(policy, reference, args=_trl_args(DPOConfig, tmp_path, loss_type=loss_type, beta=0.1),
                         train_dataset=_text_pairs(), processing_class=tokenizer)
    collate = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)
    as_examples = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in pairs]

    with torch.no_grad():
        batch = _our_batch(pairs, tokenizer.pad_token_id)
        chosen, rejected, chosen_n, rejected_n, _ = _our_logps(trainer.model, batch)
        ref_chosen, ref_rejected, *_ = _our_logps(trainer.ref_model, batch)
        ours = preference_loss(objective, ARGS[objective], policy_chosen=chosen, policy_rejected=rejected,
                               chosen_tokens=chosen_n, rejected_tokens=rejected_n,
                               reference_chosen=ref_chosen, reference_rejected=ref_rejected)
        theirs = trainer._compute_loss(trainer.model, collate(as_examples), return_outputs=False)
        assert _max_diff(ours.loss, theirs) < TOLERANCE

        # TRL logs only batch means of the rewards: one pair at a time gives each row's
        metrics = trainer._metrics["train" if trainer.model.training else "eval"]
        for i, example in enumerate(as_examples):
            trainer._compute_loss(trainer.model, collate([example]), return_outputs=False)
            assert _max_diff(ours.chosen_rewards[i], metrics["rewards/chosen"][-1]) < TOLERANCE
            assert _max_diff(ours.rejected_rewards[i], metrics["rewards/rejected"][-1]) < TOLERANCE
            assert _max_diff(chosen[i], metrics["logps/chosen"][-1]) < TOLERANCE


def test_answer_logps_matches_trl_per_token_log_probs(tiny, tmp_path):
    """Against both of TRL's: the fused LM head DPOTrainer scores with, and selective_log_softmax on full logits."""
    from trl.trainer.utils import add_fused_lm_head, selective_log_softmax

    config, tokenizer, pairs = tiny
    model = _tiny_llama(config, 0)
    add_fused_lm_head(model)
    batch = _our_batch(pairs, tokenizer.pad_token_id)
    with torch.no_grad():
        chosen, rejected, chosen_n, rejected_n, logits = _our_logps(model, batch)
        ours = torch.cat([chosen, rejected])
        fused = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                      fused_lm_head=True)
        targets = batch["labels"][:, 1:]
        mask = targets != IGNORE
        selective = (selective_log_softmax(logits[:, :-1], targets.clamp(min=0)) * mask).sum(1)
    assert torch.cat([chosen_n, rejected_n]).tolist() == fused.label_mask.sum(1).tolist()
    assert _max_diff(ours, fused.log_probs.sum(1)) < TOLERANCE
    assert _max_diff(ours, selective) < TOLERANCE


def _trl_legacy_batch(pairs, pad_token_id: int) -> dict:
    """CPOTrainer/ORPOTrainer's batch layout: chosen_* and rejected_* tensors, labels -100 on the prompt."""
    batch = {}
    for side, answer in (("chosen", 1), ("rejected", 2)):
        sequences = [pair[0] + pair[answer] for pair in pairs]
        labels = [[IGNORE] * len(pair[0]) + pair[answer] for pair in pairs]
        width = max(map(len, sequences))
        batch[f"{side}_input_ids"] = _right_padded(sequences, pad_token_id, width)
        batch[f"{side}_attention_mask"] = _right_padded([[1] * len(s) for s in sequences], 0, width)
        batch[f"{side}_labels"] = _right_padded(labels, IGNORE, width)
    return batch


def test_simpo_matches_trl_cpo_trainer(tiny, tmp_path):
    """TRL's SimPO is CPOTrainer(loss_type="simpo") with its SFT term off (cpo_alpha=0), simpo_gamma = γ."""
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    config, tokenizer, pairs = tiny
    beta, ratio = ARGS["simpo"]["beta"], ARGS["simpo"]["gamma_beta_ratio"]
    trainer = CPOTrainer(_tiny_llama(config, 0), args=_trl_args(CPOConfig, tmp_path, loss_type="simpo", beta=beta,
                                                                simpo_gamma=ratio * beta, cpo_alpha=0.0),
                         train_dataset=_text_pairs(), processing_class=tokenizer)
    with torch.no_grad():
        chosen, rejected, chosen_n, rejected_n, _ = _our_logps(trainer.model, _our_batch(pairs, tokenizer.pad_token_id))
        ours = preference_loss("simpo", ARGS["simpo"], policy_chosen=chosen, policy_rejected=rejected,
                               chosen_tokens=chosen_n, rejected_tokens=rejected_n)
        batch = _trl_legacy_batch(pairs, tokenizer.pad_token_id)
        theirs, _ = trainer.get_batch_loss_metrics(trainer.model, batch)
        trl_chosen, trl_rejected = trainer.concatenated_forward(trainer.model, batch)[:2]
        _, trl_chosen_rewards, trl_rejected_rewards = trainer.cpo_loss(trl_chosen, trl_rejected)
    assert _max_diff(ours.loss, theirs) < TOLERANCE
    assert _max_diff(ours.chosen_rewards, trl_chosen_rewards) < TOLERANCE
    assert _max_diff(ours.rejected_rewards, trl_rejected_rewards) < TOLERANCE


def test_dpo_label_smoothing_matches_trl_cdpo_form(tiny, tmp_path):
    """TRL 1.16's DPOTrainer "sigmoid" no longer smooths (its label_smoothing serves "robust" and "exo_pair");
    the conservative-DPO form lives on in CPOTrainer's "sigmoid", which on log-ratios is exactly cDPO."""
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    config, tokenizer, pairs = tiny
    trainer = CPOTrainer(_tiny_llama(config, 0), args=_trl_args(CPOConfig, tmp_path, loss_type="sigmoid", beta=0.1,
                                                                label_smoothing=0.2, cpo_alpha=0.0),
                         train_dataset=_text_pairs(), processing_class=tokenizer)
    reference = _tiny_llama(config, 1)
    with torch.no_grad():
        batch = _our_batch(pairs, tokenizer.pad_token_id)
        chosen, rejected, chosen_n, rejected_n, _ = _our_logps(trainer.model, batch)
        ref_chosen, ref_rejected, *_ = _our_logps(reference, batch)
        ours = preference_loss("dpo", {"beta": 0.1, "label_smoothing": 0.2}, policy_chosen=chosen,
                               policy_rejected=rejected, chosen_tokens=chosen_n, rejected_tokens=rejected_n,
                               reference_chosen=ref_chosen, reference_rejected=ref_rejected)
        theirs, *_ = trainer.cpo_loss(chosen - ref_chosen, rejected - ref_rejected)
    assert _max_diff(ours.loss, theirs.mean()) < TOLERANCE


def test_orpo_matches_trl_orpo_trainer(tiny, tmp_path):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    config, tokenizer, pairs = tiny
    trainer = ORPOTrainer(_tiny_llama(config, 0), args=_trl_args(ORPOConfig, tmp_path, beta=ARGS["orpo"]["beta"]),
                          train_dataset=_text_pairs(), processing_class=tokenizer)
    with torch.no_grad():
        ours_batch = _our_batch(pairs, tokenizer.pad_token_id)
        chosen, rejected, chosen_n, rejected_n, logits = _our_logps(trainer.model, ours_batch)
        # the SFT term as the docstring defines it: every non-padding token of the chosen sequences
        n = len(pairs)
        chosen_nll = causal_loss(logits[:n], ours_batch["input_ids"][:n].masked_fill(
            ours_batch["attention_mask"][:n] == 0, IGNORE))
        ours = preference_loss("orpo", ARGS["orpo"], policy_chosen=chosen, policy_rejected=rejected,
                               chosen_tokens=chosen_n, rejected_tokens=rejected_n, chosen_nll=chosen_nll)
        batch = _trl_legacy_batch(pairs, tokenizer.pad_token_id)
        theirs, _ = trainer.get_batch_loss_metrics(trainer.model, batch)
        trl_chosen, trl_rejected, _, _, trl_nll = trainer.concatenated_forward(trainer.model, batch)
        _, trl_chosen_rewards, trl_rejected_rewards, *_ = trainer.odds_ratio_loss(trl_chosen, trl_rejected)
    assert _max_diff(chosen_nll, trl_nll) < TOLERANCE
    assert _max_diff(ours.loss, theirs) < TOLERANCE
    assert _max_diff(ours.chosen_rewards, trl_chosen_rewards) < TOLERANCE
    assert _max_diff(ours.rejected_rewards, trl_rejected_rewards) < TOLERANCE


def test_bradley_terry_matches_trl_reward_trainer(tiny, tmp_path):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    config, tokenizer, pairs = tiny
    trainer = RewardTrainer(_tiny_llama(config, 0, classifier=True), args=_trl_args(RewardConfig, tmp_path),
                            train_dataset=Dataset.from_dict({"chosen": ["once upon a time"], "rejected": ["the end"]}),
                            processing_class=tokenizer)
    batch = _our_batch(pairs, tokenizer.pad_token_id)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        scores = trainer.model(**inputs).logits.squeeze(-1)
        ours = bradley_terry_loss(*scores.chunk(2))
        theirs = trainer.compute_loss(trainer.model, dict(inputs))
    metrics = trainer._metrics["train" if trainer.model.training else "eval"]
    assert _max_diff(ours.loss, theirs) < TOLERANCE
    assert _max_diff((ours.chosen_rewards - ours.rejected_rewards).mean(), metrics["margin"][-1]) < TOLERANCE
    all_rewards = torch.cat([ours.chosen_rewards, ours.rejected_rewards])
    assert _max_diff(all_rewards.mean(), metrics["mean_reward"][-1]) < TOLERANCE
