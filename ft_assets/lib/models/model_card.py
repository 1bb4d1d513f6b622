"""The model card (README.md) every checkpoint directory carries, in Hugging Face's conventions.

The YAML front matter is what the Hub reads (base_model, library_name, pipeline_tag, datasets,
model-index with the test metrics); the body says what a person needs before using the model:
what it learned from (files and their sha256), how (method, hyperparameters), how well (test
metrics against the baselines), what produced it (code, run) and what it is not for.
The card is written with the checkpoint and rewritten with the metrics when its report is built.
"""

from __future__ import annotations

import json

import yaml

from ft_assets.lib.evaluation.forgetting import forgetting_source

CARD_FILE = "README.md"
PIPELINE_TAGS = {"classification": "text-classification", "instruction": "text-generation",
                 "language_modeling": "text-generation", "preference": "text-generation"}
# The report's metrics per task, as (eval.json key, model-index metric type).
CARD_METRICS = {
    "classification": (("accuracy", "accuracy"), ("macro_f1", "f1")),
    "instruction": (("rouge_l", "rougeL"), ("exact_match", "exact_match"), ("perplexity", "perplexity")),
    "language_modeling": (("perplexity", "perplexity"),),
    "preference": (("preference_accuracy", "accuracy"), ("reward_margin", "reward_margin")),
}


def render_model_card(manifest: dict, report: dict | None = None) -> str:
    """The card of the checkpoint described by `manifest`; `report` (its eval.json) adds the results."""
    task = manifest.get("task", "classification")
    recipe = manifest["recipe"]
    objective = manifest.get("train_info", {}).get("objective")
    base = manifest["base_model"]
    dataset = manifest.get("dataset", {})
    adapter = recipe["method"] not in ("full", "freeze", "head_only")
    front = {
        "library_name": "peft" if adapter else "transformers",
        # A reward model scores a text: a one-output classifier.
        "pipeline_tag": "text-classification" if objective == "reward" else PIPELINE_TAGS[task],
        "tags": ["ft_assets", recipe["method"], task] + ([objective] if objective else []),
        **({"base_model": base["id"]} if base["id"] != "scratch" else {}),
        **({"datasets": [dataset["name"]]} if dataset.get("name") else {}),
    }
    if report is not None:
        front["model-index"] = [{"name": recipe["name"], "results": [{
            "task": {"type": front["pipeline_tag"]},
            "dataset": {"name": report["dataset"], "type": report["dataset"], "split": "test"},
            "metrics": [{"type": kind, "value": round(float(report[key]), 6)} for key, kind in CARD_METRICS[task]],
        }]}]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# {recipe['name']}", "",
             f"`{recipe['method']}` {'training' if base['id'] == 'scratch' else 'fine-tuning'} of "
             f"{_base_text(base)} for {task.replace('_', ' ')} on the dataset `{dataset.get('name', recipe['dataset'])}`, "
             f"made by ft_assets on {manifest['created_at']}.", ""]
    lines += _data_section(dataset, manifest)
    trained_by = (f" and objective `{objective}` with `objective_args` "
                  f"`{json.dumps(manifest['train_info'].get('objective_args', {}))}`" if objective else "")
    lines += ["## Training", "", f"Method `{recipe['method']}` with `method_args` "
              f"`{json.dumps(recipe['method_args'])}`{trained_by}; training settings:", "", "```json",
              json.dumps(recipe["training"], indent=2), "```", "",
              f"Recipe hash `{manifest['recipe_hash']}`; {manifest['train_info']['steps']} steps in "
              f"{manifest['train_info']['train_seconds']:.0f} s on {manifest['train_info']['device_name']} "
              f"({manifest['train_info']['precision']}); {manifest['train_info']['trainable_params']:,} of "
              f"{manifest['train_info']['total_params']:,} parameters trained.", ""]
    lines += _published_step(manifest["train_info"])
    lines += _learning_rate_search(manifest.get("learning_rate_search"))
    lines += _results_section(task, report)
    lines += _provenance_section(manifest)
    lines += ["## Intended use and limitations", "",
              f"Made for {task.replace('_', ' ')} on data like `{dataset.get('name', recipe['dataset'])}`, and measured "
              "only on that dataset's test split: expect it to do worse on text unlike its training data, and "
              "check it on your own data before relying on it. It inherits what its base model learned, "
              "including its biases. "
              + ("How much of what the base knew it kept is under Results."
                 if report and report.get("forgetting") else
                 "How much of what the base knew it kept was not measured (no `forgetting:` block)."), ""]
    return "\n".join(lines)


def _base_text(base: dict) -> str:
    if base["id"] == "scratch":
        return f"a new model from scratch ({json.dumps(base.get('scratch', {}))})"
    sha = f", sha256 `{base['sha256']}`" if base.get("sha256") else ""
    return f"`{base['id']}`{sha}"


def _published_step(info: dict) -> list[str]:
    """Which step's weights these are, and why (training.keep, early stopping)."""
    if info.get("best_step") is None:
        return []
    watched = "loss" if info.get("early_stopping_monitor") == "loss" else "metric"
    stopped = (f" Training stopped early after {info['steps_run']} of {info['steps_planned']} planned steps: the "
               f"validation {watched} had stopped improving." if info.get("stopped_early") else "")
    if info.get("keep") == "best":
        kept = (f"These are the weights of step {info['best_step']} of {info['steps_run']}, the best validation "
                f"evaluation (`{info['selection_metric']}` {info['best_metric']:.4f})"
                + ("; the last step's weights are under `last/`." if info.get("last_saved") else "."))
    else:
        kept = (f"These are the weights of the last step ({info['steps_run']}); the best validation evaluation "
                f"(`{info['selection_metric']}` {info['best_metric']:.4f}) was at step {info['best_step']}.")
    return [kept + stopped, ""]


def _learning_rate_search(search: dict | None) -> list[str]:
    if not search:
        return []
    tried = ", ".join(f"{c['learning_rate']:g}" for c in search["candidates"])
    return [f"The learning rate {search['chosen_learning_rate']:g} was chosen from {tried}: its run had the best "
            f"`{search['selection_metric']}` on the validation split (the test split was not read to choose).", ""]


def _data_section(dataset: dict, manifest: dict) -> list[str]:
    files = dataset.get("raw_files", [])
    lines = ["## Training data", ""]
    if dataset.get("version"):
        lines += [f"Dataset version `{dataset['version']}` (a content hash of its rows).", ""]
    if not files:
        return lines + ["No raw-file lineage was recorded for this checkpoint.", ""]
    lines += ["| raw file | sha256 | records | train | validation | test |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {f['uri']} | `{f['sha256']}` | {f['records']} | {f['rows']['train']} | {f['rows']['validation']} | "
              f"{f['rows']['test']} |" for f in files]
    return lines + [""]


def _results_section(task: str, report: dict | None) -> list[str]:
    if report is None:
        return ["## Results", "", "Not evaluated yet: the `reports/` asset of this recipe writes them here.", ""]
    keys = [key for key, _ in CARD_METRICS[task]]
    lines = ["## Results", "", f"Test split, {report['n_test']} rows.", "",
             "| model | " + " | ".join(keys) + " |", "| --- |" + " ---: |" * len(keys),
             "| this model | " + " | ".join(f"{report[k]:.4f}" for k in keys) + " |"]
    for name, baseline in report["baselines"].items():
        lines.append(f"| baseline: {name} | " + " | ".join(
            f"{baseline[k]:.4f}" if k in baseline else "—" for k in keys) + " |")
    f = report.get("forgetting")
    if f and f["kind"] == "encoder":
        lines += ["", f"Forgetting, on {f['n_texts']} texts of {forgetting_source(f)}: representation "
                  f"drift {f['representation_drift']:.4f} (0 = embeddings unchanged), {f['knn_k']}-nearest-neighbour "
                  f"overlap {f['knn_overlap']:.4f} (1 = neighbourhoods kept)."]
    elif f:
        lines += ["", f"Forgetting, on {forgetting_source(f)}: per-token loss {f['base_loss']:.4f} "
                  f"before tuning, {f['tuned_loss']:.4f} after ({f['loss_increase']:+.4f})."]
    return lines + [""]


def _provenance_section(manifest: dict) -> list[str]:
    code = manifest.get("code", {})
    git = code.get("git", {})
    run = manifest.get("dagster", {})
    versions = ", ".join(f"{k} {v}" for k, v in manifest["libraries"].items())
    lines = ["## Provenance", ""]
    if git:
        lines.append(f"- code: git `{git.get('sha')}`" + (" (with uncommitted changes)" if git.get("dirty") else ""))
    if run:
        lines.append(f"- Dagster run `{run.get('run_id')}` ({run.get('asset_key')})")
    lines += [f"- libraries: {versions}", "- full record: `manifest.json` beside this card", ""]
    return lines
