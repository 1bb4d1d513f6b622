"""Evaluates one tuned checkpoint against its baselines and writes eval.json and report.md."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ft_assets.lib.config import CAUSAL_TASKS, RecipeConfig, stable_hash
from ft_assets.lib.cost import TrainingCost
from ft_assets.lib.evaluation.forgetting import ForgettingTexts
from ft_assets.lib.evaluation.metrics import ClassificationMetrics, classification_metrics, majority_baseline
from ft_assets.lib.evaluation.rendering import write_report
from ft_assets.lib.training.classification import predict_logits
from ft_assets.lib.training.device import resolve_device
from ft_assets.lib.evaluation.gates import evaluate_gates
from ft_assets.lib.models.model_card import render_model_card
from ft_assets.lib.training.base_models import loading_policy, model_sha256, resolve_base_model
from ft_assets.lib.training.checkpoint import MANIFEST_FILE, METRICS_FILE, TRAIN_INFO_FILE, load_checkpoint
from ft_assets.lib.storage import directory_bytes, sha256_file


@dataclass(frozen=True)
class EvaluationResult:
    report: dict
    eval_path: Path
    markdown: str
    card: str  # the checkpoint's model card with these results, for the caller to put beside it


def evaluate_checkpoint(recipe: RecipeConfig, checkpoint_dir: Path, splits: dict[str, dict[str, list]],
                        out_dir: Path, baseline_cache: Path, device: str = "auto",
                        task: str = "classification",
                        forgetting_texts: ForgettingTexts | None = None) -> EvaluationResult:
    """Scores the checkpoint on splits["test"] and compares it with the baselines.

    Args:
        splits: "test", and for classification "train" (its baselines learn from it) ->
            {"text": [...], "label": [...]} (for language_modeling, rows in file order).
        baseline_cache: a folder of baseline results keyed by everything they depend on, so
            recipes that share a dataset, base model and settings compute them once.

    Classification: the head_only baseline is the untuned base with a head trained the recipe's
    way (same data, epochs, batch size and seed), so the only difference to the recipe is the
    method. Causal LMs: the baseline is the untuned base itself, scored the same way.
    With `forgetting_texts` (the recipe's forgetting corpus, or its base's held-out split) the report
    gets a `forgetting` block that names where it was measured: see lib/evaluation/forgetting.py for
    what each figure means. Nothing in `checkpoint_dir` is written (it may be a cached copy): the
    model card with the results comes back as `card`.

    Raises:
        ValueError: a causal LM's forgetting texts are classification rows, which it cannot be scored on.
    """
    device = resolve_device(device)
    manifest = json.loads((checkpoint_dir / MANIFEST_FILE).read_text())
    if task == "preference":
        report, generations = _preference_report(recipe, checkpoint_dir, manifest, splits, device, forgetting_texts)
        eval_path, markdown = write_report(report, out_dir, _figures(recipe, checkpoint_dir, report))
        if generations:
            (out_dir / "generations.jsonl").write_text("".join(json.dumps(g) + "\n" for g in generations))
        return EvaluationResult(report=report, eval_path=eval_path, markdown=markdown,
                                card=render_model_card(manifest, report))
    if task != "classification":
        report, generations = _causal_report(recipe, task, checkpoint_dir, manifest, splits["test"]["text"],
                                             baseline_cache, device, forgetting_texts)
        eval_path, markdown = write_report(report, out_dir, _figures(recipe, checkpoint_dir, report))
        if generations:
            (out_dir / "generations.jsonl").write_text("".join(json.dumps(g) + "\n" for g in generations))
        return EvaluationResult(report=report, eval_path=eval_path, markdown=markdown,
                                card=render_model_card(manifest, report))
    model, tokenizer, labels = load_checkpoint(checkpoint_dir)
    model.to(device)
    test = splits["test"]
    cfg = recipe.training
    predicted = _predict_labels(model, tokenizer, test["text"], labels, cfg.max_length, cfg.batch_size, device)
    metrics = classification_metrics(test["label"], predicted, labels)

    baselines = {"majority": majority_baseline(splits["train"]["label"], test["label"], labels)}
    if recipe.method != "head_only":
        baselines["base_head_only"] = _base_head_baseline(recipe, labels, splits, baseline_cache, device)

    forgetting = {}
    if forgetting_texts and forgetting_texts.texts:
        forgetting = {"forgetting": _encoder_forgetting(model, tokenizer, manifest, recipe, forgetting_texts, device)}
    report = _report("classification", {"accuracy": metrics.accuracy, "macro_f1": metrics.macro_f1}, metrics.n,
                     recipe, checkpoint_dir, labels, metrics=metrics.as_dict(),
                     baselines={name: b.as_dict() for name, b in baselines.items()}, **forgetting)
    eval_path, markdown = write_report(report, out_dir, _figures(recipe, checkpoint_dir, report))
    return EvaluationResult(report=report, eval_path=eval_path, markdown=markdown,
                            card=render_model_card(manifest, report))


def _figures(recipe: RecipeConfig, checkpoint_dir: Path, report: dict) -> dict[str, bytes]:
    from ft_assets.lib.evaluation import plots

    records = [json.loads(line) for line in (checkpoint_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
    figures = {}
    curves = plots.loss_curves(records, f"{recipe.name}: loss", (report.get("training") or {}).get("published_step"))
    if curves is not None:
        figures["loss_curves"] = curves
    if report["task"] == "classification":
        figures["confusion_matrix"] = plots.confusion_matrix(report["labels"], report["metrics"]["confusion_matrix"],
                                                             f"{recipe.name}: test confusion matrix")
    return figures


def _training(checkpoint_dir: Path, recipe: RecipeConfig) -> dict | None:
    from ft_assets.lib.evaluation.overfitting import training_block

    info = json.loads((checkpoint_dir / TRAIN_INFO_FILE).read_text())
    metrics = checkpoint_dir / METRICS_FILE
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    return training_block(info, records, recipe.gates.max_validation_rise)


def _learning_rate_search(checkpoint_dir: Path) -> dict:
    """Which learning rate, and how each candidate did on validation (defs/training/lr_search.py); nothing for
    a recipe with one rate."""
    search = json.loads((checkpoint_dir / MANIFEST_FILE).read_text()).get("learning_rate_search")
    return {"learning_rate_search": search} if search else {}


def _cost(checkpoint_dir: Path) -> TrainingCost:
    info = json.loads((checkpoint_dir / TRAIN_INFO_FILE).read_text())
    return TrainingCost.from_train_info(info).model_copy(update={"checkpoint_bytes": directory_bytes(checkpoint_dir)})


def _encoder_forgetting(model, tokenizer, manifest: dict, recipe: RecipeConfig, texts: ForgettingTexts,
                        device: str) -> dict:
    from transformers import AutoModel

    from ft_assets.lib.evaluation.forgetting import encoder_forgetting

    path = manifest["base_model"]["path"]
    base = AutoModel.from_pretrained(path, **loading_policy(path, **recipe.loading)).to(device)
    cfg = recipe.training
    return {**texts.source(), **encoder_forgetting(
        base, model, tokenizer, texts.texts, max_length=cfg.max_length, batch_size=cfg.batch_size * 2,
        device=device)}


def _causal_report(recipe: RecipeConfig, task: str, checkpoint_dir: Path, manifest: dict, test_texts: list[str],
                   cache: Path, device: str, forgetting_texts: ForgettingTexts | None) -> tuple[dict, list[dict]]:
    from ft_assets.lib.training.causal_data import prompt_and_reference
    from ft_assets.lib.training.causal import causal_examples, mean_causal_loss

    if forgetting_texts and forgetting_texts.task not in CAUSAL_TASKS:
        source = ", ".join(f"{k} {v}" for k, v in forgetting_texts.source().items() if v is not None)
        raise ValueError(f"recipe {recipe.name!r}: its forgetting texts ({source}) are {forgetting_texts.task} rows, "
                         f"which a {task} model is not scored on; set forgetting.corpus to a general text corpus")

    model, tokenizer, _ = load_checkpoint(checkpoint_dir)
    model.to(device)
    cfg = recipe.training
    # Tokenized once: the tuned model and its base share the checkpoint's tokenizer.
    test_set, _ = causal_examples(tokenizer, task, test_texts, cfg.max_length, packing=False)
    conversations = ([prompt_and_reference(t) for t in test_texts[: recipe.generation.max_examples]]
                     if task == "instruction" else [])
    scored = _score_causal(model, tokenizer, recipe, test_set, conversations, device)
    # The forgetting texts scored as their own task's test split is: an LM stream in blocks, or
    # conversations with the loss on the answers.
    known = (causal_examples(tokenizer, forgetting_texts.task, forgetting_texts.texts, cfg.max_length, packing=False)[0]
             if forgetting_texts and forgetting_texts.texts else None)
    # The base's loss on them depends on the texts and how they are read, not on what they are called.
    key = stable_hash({"task": task, "base": manifest["base_model"], "seed": recipe.training.seed,
                       "max_length": recipe.training.max_length, "generation": recipe.generation.model_dump(),
                       "test": test_texts, "tokenizer": _tokenizer_fingerprint(checkpoint_dir),
                       "forgetting": ({"texts": forgetting_texts.texts, "task": forgetting_texts.task}
                                      if known else None)})
    cached = cache / f"{key}.json"
    if cached.exists():
        base = json.loads(cached.read_text())
    else:
        base_model = _untuned_base(manifest, checkpoint_dir, recipe.training.seed, recipe.loading).to(device)
        base = _score_causal(base_model, tokenizer, recipe, test_set, conversations, device)
        if known:
            base["forgetting_loss"] = mean_causal_loss(base_model, known, tokenizer.pad_token_id, cfg.batch_size,
                                                       device)
        cache.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(base))
    forgetting = None
    if known:
        tuned_loss = mean_causal_loss(model, known, tokenizer.pad_token_id, cfg.batch_size, device)
        forgetting = {**forgetting_texts.source(), "kind": "causal_lm", "n_texts": len(forgetting_texts.texts),
                      "base_loss": base.pop("forgetting_loss"), "tuned_loss": tuned_loss}
        forgetting["loss_increase"] = tuned_loss - forgetting["base_loss"]
    # Every test answer beside the base's; the report shows the first few.
    generations = [{**s, "base_generated": b["generated"]} for s, b in zip(scored.pop("samples"), base.pop("samples"))]
    headline = {"eval_loss": scored["eval_loss"], "perplexity": scored["perplexity"]}
    if task == "instruction":
        headline = {"rouge_l": scored["rouge_l"], "exact_match": scored["exact_match"], **headline}
    report = _report(task, headline, len(test_texts), recipe, checkpoint_dir, [], metrics=scored,
                     baselines={"base": base}, samples=generations[: recipe.generation.samples],
                     **({"forgetting": forgetting} if forgetting is not None else {}))
    return report, generations


def _preference_report(recipe: RecipeConfig, checkpoint_dir: Path, manifest: dict, splits: dict, device: str,
                       forgetting_texts: ForgettingTexts | None) -> tuple[dict, list[dict]]:
    """Preference accuracy and reward margin of the tuned model's own ranking (a reward model's score, a causal
    LM's likelihood) against its starting model's and the length-only baseline; see lib/evaluation/preference.py."""
    from ft_assets.lib.evaluation import preference

    cfg = recipe.training
    test = splits["test"]["text"]
    model, tokenizer, _ = load_checkpoint(checkpoint_dir)
    model.to(device)
    sizes = {"max_length": cfg.max_length, "batch_size": cfg.batch_size, "device": device}
    forgetting, generations = None, []
    measured = forgetting_texts is not None and bool(forgetting_texts.texts)
    if manifest["train_info"]["objective"] == "reward":
        metrics = preference.reward_model_figures(model, tokenizer, test, **sizes)
        start = preference.untuned_reward_model(manifest["base_model"]["path"], cfg.seed, recipe.loading).to(device)
        reference = {**preference.reward_model_figures(start, tokenizer, test, **sizes), "kind": "untuned_head"}
        if measured:
            forgetting = _encoder_forgetting(model, tokenizer, manifest, recipe, forgetting_texts, device)
    else:
        from ft_assets.lib.training.causal import causal_examples

        known = (causal_examples(tokenizer, forgetting_texts.task, forgetting_texts.texts, cfg.max_length,
                                 packing=False)[0] if measured else None)
        scored = preference.causal_figures(model, tokenizer, manifest, test, recipe.generation, general_blocks=known,
                                           **sizes)
        metrics, reference, generations = scored["metrics"], scored["reference"], scored["samples"]
        test = scored["scored_texts"]  # the length baseline and n_test count the pairs the model was scored on
        if measured:
            start_loss, tuned_loss = scored["forgetting_losses"]
            forgetting = {**forgetting_texts.source(), "kind": "causal_lm", "n_texts": len(forgetting_texts.texts),
                          "base_loss": start_loss, "tuned_loss": tuned_loss, "loss_increase": tuned_loss - start_loss}
    headline = {"preference_accuracy": metrics["preference_accuracy"], "reward_margin": metrics["reward_margin"]}
    baselines = {"reference": reference, "length": preference.length_baseline(splits["train"]["text"], test)}
    report = _report("preference", headline, len(test), recipe, checkpoint_dir, [], metrics=metrics,
                     baselines=baselines, samples=generations[: recipe.generation.samples],
                     **({"forgetting": forgetting} if forgetting is not None else {}))
    return report, generations


def _report(task: str, headline: dict, n_test: int, recipe: RecipeConfig, checkpoint_dir: Path,
            labels: list[str], **blocks) -> dict:
    """The fields every report shares, the task's `blocks` (metrics, baselines, ...) and the cost last
    (lib/cost.py); headline metrics first, flat, for tools and the Dagster UI's plots."""
    report = {
        "task": task,
        **headline,
        "n_test": n_test,
        "recipe": recipe.name,
        "recipe_hash": recipe.recipe_hash(),
        "method": recipe.method,
        "dataset": recipe.dataset,
        "base_model": recipe.base_model,
        "checkpoint": str(checkpoint_dir),
        "labels": labels,
        **blocks,
        "training": _training(checkpoint_dir, recipe),
        **_learning_rate_search(checkpoint_dir),
        "cost": _cost(checkpoint_dir).model_dump(),
    }
    return {**report, "gates": evaluate_gates(report, recipe.gates)}


def _score_causal(model, tokenizer, recipe: RecipeConfig, test_set: list[dict],
                  conversations: list[tuple[list[dict], str]], device: str) -> dict:
    """eval_loss / perplexity per labelled test token of `test_set`; with (prompt, reference)
    `conversations` (instruction) also generation metrics and samples."""
    from ft_assets.lib.training.causal_data import perplexity
    from ft_assets.lib.evaluation.metrics import generate_answers, generation_metrics
    from ft_assets.lib.training.causal import mean_causal_loss

    cfg, generation = recipe.training, recipe.generation
    loss = mean_causal_loss(model, test_set, tokenizer.pad_token_id, cfg.batch_size, device)
    scored = {"eval_loss": loss, "perplexity": perplexity(loss), "samples": []}
    if conversations:
        answers = generate_answers(model, tokenizer, [p for p, _ in conversations],
                                   max_new_tokens=generation.max_new_tokens, batch_size=cfg.batch_size, device=device)
        scored.update(generation_metrics(answers, [r for _, r in conversations]))
        scored["samples"] = [{"prompt": p[-1]["content"], "reference": r, "generated": a}
                             for (p, r), a in zip(conversations, answers)]
    return scored


def _untuned_base(manifest: dict, checkpoint_dir: Path, seed: int, loading: dict):
    """The model the recipe started from: the base weights, or for scratch the same random initialisation."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ft_assets.lib.training.base_models import load_causal_lm

    if manifest["base_model"]["path"] is None:  # scratch: same config, same seed as fit()
        config = AutoConfig.from_pretrained(checkpoint_dir)
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config).eval()
    return load_causal_lm(manifest["base_model"]["path"], **loading)[0].eval()


def _tokenizer_fingerprint(checkpoint_dir: Path) -> str | None:
    path = checkpoint_dir / "tokenizer.json"
    return sha256_file(path) if path.exists() else None


def _base_head_baseline(recipe: RecipeConfig, labels: list[str], splits: dict, cache: Path,
                        device: str) -> ClassificationMetrics:
    head_recipe = RecipeConfig.model_validate({
        **recipe.model_dump(mode="json"), "name": "base_head_only", "method": "head_only", "method_args": {},
        # The base's own defaults for head_only, not the recipe's rates (full trains its head at 1e-3).
        "training": {**recipe.training.model_dump(mode="json"), "learning_rate": None, "head_learning_rate": None},
    })
    # Trained as a head_only recipe would be, its weights picked on the same validation split (training.keep).
    validation = splits.get("validation") if (splits.get("validation") or {}).get("text") else None
    key = stable_hash({
        "recipe": head_recipe.recipe_hash(), "labels": labels, "train": splits["train"], "validation": validation,
        "test": splits["test"],
        "base_sha256": model_sha256(resolve_base_model(recipe.base_model)),
    })
    cached = cache / f"{key}.json"
    if cached.exists():
        return ClassificationMetrics(**json.loads(cached.read_text()))
    from ft_assets.lib.training.loop import fit

    fitted = fit(head_recipe, labels, splits["train"], validation, device=device)
    cfg = recipe.training
    predicted = _predict_labels(fitted.model, fitted.tokenizer, splits["test"]["text"], labels,
                                cfg.max_length, cfg.batch_size, device)
    metrics = classification_metrics(splits["test"]["label"], predicted, labels)
    cache.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(dataclasses.asdict(metrics)))
    return metrics


def _predict_labels(model, tokenizer, texts, labels, max_length, batch_size, device) -> list[str]:
    logits = predict_logits(model, tokenizer, texts, max_length=max_length, batch_size=batch_size * 2, device=device)
    return [labels[i] for i in logits.argmax(-1)]
