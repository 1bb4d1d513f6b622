"""Which weights a run publishes: the best validation evaluation (training.keep), early stopping, a diverged
run refused, and the best-so-far surviving a crash and resume. On the tiny real BERT, in the loop itself."""

import math

import pytest
import torch

from ft_assets.lib.config import EarlyStoppingConfig
from ft_assets.lib.training.checkpoint import LAST_DIR, load_checkpoint, save_checkpoint
from ft_assets.lib.training.classification import predict_logits
from ft_assets.lib.training.loop import MetricLogger, fit
from ft_assets.lib.training.selection import BestTracker
from ft_assets_tests.conftest import LABELS
from ft_assets_tests.helpers import classification_recipe, classification_rows


def misleading_validation(n_per_label: int = 4) -> dict:
    """Held-out tickets labelled with the next label: the better the model learns the task, the worse it
    scores here, so the validation metric peaks early and falls while the train loss keeps falling."""
    rows = classification_rows(n_per_label, seed=1)
    return {"text": rows["text"], "label": [LABELS[(LABELS.index(x) + 1) % len(LABELS)] for x in rows["label"]]}


def evaluations(result) -> list[dict]:
    return [r for r in result.logger.records if "eval_loss" in r]


def revalidate(model, tokenizer, rows) -> tuple[float, float]:
    """(eval_loss, eval_accuracy) of `model` on `rows`, as the loop's validation computes them."""
    logits = torch.from_numpy(predict_logits(model, tokenizer, rows["text"], max_length=16, batch_size=32,
                                             device="cpu"))
    target = torch.tensor([LABELS.index(x) for x in rows["label"]])
    loss = torch.nn.functional.cross_entropy(logits, target).item()
    return loss, (logits.argmax(-1) == target).sum().item() / len(target)


def test_the_checkpoint_holds_the_best_evaluation_not_the_last_step(tiny_model_dir, tmp_path):
    validation = misleading_validation()
    recipe = classification_recipe(tiny_model_dir, "full", epochs=6, learning_rate=3e-3, eval_every_steps=2,
                                   keep_last=True)
    result = fit(recipe, LABELS, classification_rows(20), validation, device="cpu")
    info = result.train_info
    evals = evaluations(result)
    assert [e["step"] for e in evals] == list(range(2, info["steps_run"] + 1, 2))  # every 2 steps and the last
    best = max(evals, key=lambda e: (e["eval_accuracy"], -e["eval_loss"]))
    assert info["keep"] == "best" and info["best_step"] == best["step"] == info["published_step"]
    assert info["best_step"] < info["steps_run"] and info["best_metric"] == best["eval_accuracy"]
    assert info["selection_metric"] == "eval_accuracy" and not info["stopped_early"]
    assert info["last_saved"]

    out = tmp_path / "ckpt"
    save_checkpoint(result, recipe, LABELS, out, {"dataset": {"name": "d"}})
    # Reloaded from disk, the published weights score what the best evaluation logged; last/ scores the last.
    model, tokenizer, _ = load_checkpoint(out)
    loss, accuracy = revalidate(model, tokenizer, validation)
    assert accuracy == best["eval_accuracy"] and math.isclose(loss, best["eval_loss"], rel_tol=1e-5)
    last = type(model).from_pretrained(out / LAST_DIR)
    last_loss, _ = revalidate(last, tokenizer, validation)
    assert math.isclose(last_loss, evals[-1]["eval_loss"], rel_tol=1e-5) and last_loss > loss
    assert "the weights of step" in (out / "README.md").read_text()


def test_keep_last_publishes_the_last_step(tiny_model_dir):
    recipe = classification_recipe(tiny_model_dir, "full", epochs=3, learning_rate=3e-3, keep="last")
    result = fit(recipe, LABELS, classification_rows(20), misleading_validation(), device="cpu")
    info = result.train_info
    assert info["published_step"] == info["steps_run"] == info["steps_planned"] and info["best_step"] is not None
    loss, _ = revalidate(result.model, result.tokenizer, misleading_validation())
    assert math.isclose(loss, evaluations(result)[-1]["eval_loss"], rel_tol=1e-5)


def test_early_stopping_stops_after_patience_evaluations_without_improvement(tiny_model_dir):
    recipe = classification_recipe(tiny_model_dir, "full", epochs=20, learning_rate=3e-3, eval_every_steps=1,
                                   early_stopping={"patience": 3})
    result = fit(recipe, LABELS, classification_rows(20), misleading_validation(), device="cpu")
    info = result.train_info
    assert info["stopped_early"] and info["steps_run"] < info["steps_planned"]
    evals = evaluations(result)
    # With min_delta 0 the reference is the best: three evaluations after it, none better, then the stop.
    assert info["steps_run"] == info["best_step"] + 3 == evals[-1]["step"]
    assert all((e["eval_accuracy"], -e["eval_loss"]) < (info["best_metric"], -info["best_eval"]["eval_loss"])
               for e in evals if e["step"] > info["best_step"])


def test_early_stopping_on_the_loss_stops_patience_evaluations_after_the_lowest_validation_loss(tiny_model_dir,
                                                                                                 tmp_path):
    recipe = classification_recipe(tiny_model_dir, "full", epochs=20, learning_rate=3e-3, eval_every_steps=1,
                                   early_stopping={"patience": 3, "monitor": "loss"})
    result = fit(recipe, LABELS, classification_rows(20), misleading_validation(), device="cpu")
    info = result.train_info
    assert info["stopped_early"] and info["early_stopping_monitor"] == "loss"
    evals = evaluations(result)
    lowest = min(evals, key=lambda e: e["eval_loss"])
    assert info["steps_run"] == lowest["step"] + 3 == evals[-1]["step"]
    save_checkpoint(result, recipe, LABELS, tmp_path / "ckpt", {"dataset": {"name": "d"}})
    assert "the validation loss had stopped improving" in (tmp_path / "ckpt" / "README.md").read_text()


def test_watching_the_loss_outlasts_a_saturated_accuracy_and_leaves_the_best_step_to_the_metric():
    # A small validation split: accuracy saturates at the second evaluation while the loss falls until the fifth.
    history = [(0.9, 0.40), (1.0, 0.20), (1.0, 0.10), (1.0, 0.05), (1.0, 0.03), (1.0, 0.04), (1.0, 0.06)]
    stops = {}
    for monitor in ("metric", "loss"):
        tracker = BestTracker.for_task("classification", EarlyStoppingConfig(patience=2, monitor=monitor))
        for step, (accuracy, loss) in enumerate(history, start=1):
            tracker.update({"eval_accuracy": accuracy, "eval_loss": loss}, step)
            if tracker.stopped_early:
                break
        stops[monitor] = (step, tracker.best_step)
        assert BestTracker.from_state(tracker.state()) == tracker
    assert stops["metric"] == (4, 4)  # two evaluations without an accuracy gain after the second
    assert stops["loss"] == (7, 5)  # two evaluations above the lowest loss; the best is still the metric's rule


def test_a_crashed_run_resumes_with_its_best_so_far_and_publishes_what_an_uninterrupted_run_does(
        tiny_model_dir, tmp_path):
    recipe = classification_recipe(tiny_model_dir, "full", epochs=4, learning_rate=3e-3, eval_every_steps=1,
                                   save_every_steps=5)
    train, validation = classification_rows(20), misleading_validation()
    whole = fit(recipe, LABELS, train, validation, device="cpu")
    assert 1 <= whole.train_info["best_step"] < 10  # the best is in the part that the resumed run does not redo

    class Crash(Exception):
        pass

    def crash_at_step_12(record):
        if record["step"] == 12:
            raise Crash

    resume_dir = str(tmp_path / "resume")
    with pytest.raises(Crash):
        fit(recipe, LABELS, train, validation, device="cpu", resume_dir=resume_dir,
            logger=MetricLogger(sink=crash_at_step_12))
    resumed = fit(recipe, LABELS, train, validation, device="cpu", resume_dir=resume_dir)
    assert resumed.train_info["resumed_from_step"] == 10
    for key in ("best_step", "best_metric", "best_eval", "published_step", "steps_run"):
        assert resumed.train_info[key] == whole.train_info[key], key
    for (name, a), b in zip(whole.model.named_parameters(), resumed.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_a_diverged_run_stops_with_an_error_and_returns_no_model(tiny_model_dir):
    recipe = classification_recipe(tiny_model_dir, "full", epochs=2, learning_rate=1e30, max_grad_norm=1e30)
    with pytest.raises(ValueError, match=r"recipe 't_full': training diverged: the mean train loss up to step \d+ "
                                         r"\(epoch \d\) is nan, so nothing is saved. Lower training.learning_rate"):
        fit(recipe, LABELS, classification_rows(10), None, device="cpu")


def test_a_nan_or_infinite_evaluation_is_never_the_best():
    tracker = BestTracker.for_task("classification")
    assert tracker.update({"eval_accuracy": float("nan"), "eval_loss": 0.1}, 1) is False
    assert tracker.update({"eval_accuracy": 0.5, "eval_loss": 0.7}, 2) is True
    assert tracker.update({"eval_accuracy": 0.9, "eval_loss": float("inf")}, 3) is False
    assert tracker.update({"eval_accuracy": 0.5, "eval_loss": 0.6}, 4) is True  # same accuracy, lower loss
    assert tracker.update({"eval_accuracy": 0.5, "eval_loss": float("nan")}, 5) is False
    assert (tracker.best_step, tracker.best_value, tracker.best_loss) == (4, 0.5, 0.6)
    lm = BestTracker.for_task("language_modeling")
    assert lm.update({"eval_loss": float("nan")}, 1) is False and lm.best_step is None
    assert lm.update({"eval_loss": 3.0}, 2) and not lm.update({"eval_loss": 3.5}, 3) and lm.update({"eval_loss": 2.0}, 4)


def test_min_delta_counts_small_gains_as_no_improvement_but_still_keeps_the_best():
    tracker = BestTracker.for_task("classification", EarlyStoppingConfig(patience=2, min_delta=0.05))
    for step, accuracy in enumerate([0.50, 0.52, 0.54], start=1):
        tracker.update({"eval_accuracy": accuracy, "eval_loss": 1.0}, step)
    assert tracker.best_step == 3 and tracker.stopped_early  # +0.02 and +0.04 over 0.50: below min_delta
    assert BestTracker.from_state(tracker.state()) == tracker


def test_a_run_without_validation_examples_refuses_keep_best_and_early_stopping(tiny_model_dir):
    for settings, field in (({"keep": "best"}, "keep"), ({"early_stopping": {"patience": 2}}, "early_stopping")):
        recipe = classification_recipe(tiny_model_dir, "full", epochs=1, **settings)
        with pytest.raises(ValueError, match=f"recipe 't_full': field training.{field}: needs validation examples"):
            fit(recipe, LABELS, classification_rows(4), None, device="cpu")
    default = fit(classification_recipe(tiny_model_dir, "full", epochs=1), LABELS, classification_rows(4), None,
                  device="cpu")
    assert default.train_info["keep"] == "last" and default.train_info["best_step"] is None


def test_the_training_block_flags_a_validation_rise_while_the_train_loss_falls():
    from ft_assets.lib.evaluation.overfitting import overfitting_summary, training_block

    records = [{"step": s, "train_loss": t} for s, t in ((1, 1.0), (2, 0.8), (3, 0.5), (4, 0.3))]
    records += [{"step": s, "epoch": s, "eval_loss": v} for s, v in ((1, 0.9), (2, 0.7), (3, 0.75), (4, 0.85))]
    info = {"published_step": 2, "train_loss_at_published_step": 0.8, "keep": "best", "steps_run": 4,
            "steps_planned": 4, "stopped_early": False, "selection_metric": "eval_loss", "best_metric": 0.7}
    block = training_block(info, records, 0.1)
    assert block["validation_loss"] == 0.7 and math.isclose(block["gap"], -0.1)
    assert block["lowest_validation_loss_step"] == 2 and math.isclose(block["validation_loss_rise"], 0.15 / 0.7)
    assert block["overfitting"] and "the published weights are step 2's" in overfitting_summary(block)
    assert not training_block(info, records, 0.25)["overfitting"]  # a 21% rise is within 25%
    # The same rise with the train loss rising too is not overfitting (the run got worse everywhere).
    rising = [r if "eval_loss" in r else {**r, "train_loss": 2.0 - r["train_loss"]} for r in records]
    assert not training_block(info, rising, 0.1)["overfitting"]
    assert training_block(info, [r for r in records if "train_loss" in r], 0.1) is None  # no validation
