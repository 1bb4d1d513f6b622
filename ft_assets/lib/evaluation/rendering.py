"""A report as files: eval.json, report.md and its figures.

The report has one schema for every method (as in PEFT's method comparison):
  run_info   recipe, its hash, task, base model, checkpoint path
  metrics    classification: accuracy, macro_f1, per-class table, confusion matrix;
             instruction: eval loss and perplexity of the answers, exact match and ROUGE-L of
             greedy generations, sample generations; language_modeling: eval loss, perplexity
  baselines  the same metrics for the untuned base (and the majority class for classification)
  cost       trainable/total parameters, train wall time, examples/s, tokens/s, peak memory,
             checkpoint size
eval.json keeps the headline numbers at the top level so tools can read them without nesting.
"""

from __future__ import annotations

import json
from pathlib import Path

from ft_assets.lib.cost import TrainingCost
from ft_assets.lib.evaluation.forgetting import forgetting_source

# Figure file names, in the order the report shows them, with their headings.
FIGURES = {"loss_curves": "Training curves", "confusion_matrix": "Confusion matrix"}


def write_report(report: dict, out_dir: Path, figures: dict[str, bytes] | None = None) -> tuple[Path, str]:
    """Writes eval.json, report.md and each figure as <name>.png into `out_dir`.

    Returns:
        The json path and the markdown for the Dagster UI, which carries the figures as data: URIs
        (report.md refers to the PNG files beside it).
    """
    from ft_assets.lib.evaluation.plots import data_uri

    figures = figures or {}
    out_dir.mkdir(parents=True, exist_ok=True)
    eval_path = out_dir / "eval.json"
    eval_path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    for name, png in figures.items():
        (out_dir / f"{name}.png").write_bytes(png)
    (out_dir / "report.md").write_text(render_markdown(report, {n: f"{n}.png" for n in figures}))
    return eval_path, render_markdown(report, {n: data_uri(png) for n, png in figures.items()})


def _cost_lines(cost_fields: dict) -> list[str]:
    cost = TrainingCost.model_validate(cost_fields)
    return [
        "## Cost",
        "",
        "| trainable params | total params | share | train seconds | examples/s | tokens/s | peak memory | checkpoint size |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {cost.trainable_params:,} | {cost.total_params:,} | {cost.trainable_share:.2%} | "
        f"{cost.train_seconds:.1f} | {cost.examples_per_sec:.1f} | {cost.tokens_per_sec:,.0f} | "
        f"{cost.peak_mem_bytes / 2**20:,.0f} MiB ({cost.peak_mem_kind}) | {cost.checkpoint_bytes / 2**20:,.1f} MiB |",
        "",
    ]


def render_markdown(report: dict, images: dict[str, str] | None = None) -> str:
    """The report as markdown; `images` maps FIGURES names to an image reference (file or data: URI)."""
    render = {"classification": _render_classification, "preference": _render_preference}.get(
        report["task"], _render_causal_markdown)
    body = render(report)
    if report.get("forgetting"):
        body += _forgetting_markdown(report["forgetting"])
    if report.get("training"):
        body += _training_markdown(report["training"])
    if report.get("learning_rate_search"):
        search = report["learning_rate_search"]
        body += (f"\n## Learning rate: chosen on the validation split\n\n{learning_rate_search_markdown(search)}\n\n"
                 f"All candidates together trained for {search['train_seconds_all_candidates']:.1f} s; "
                 "the cost above is the chosen run's alone.\n")
    if report.get("gates"):
        body += _gates_markdown(report["gates"])
    for name, heading in FIGURES.items():
        if name in (images or {}):
            body += f"\n## {heading}\n\n![{name}]({images[name]})\n"
    return body


def _gates_markdown(gates: list[dict]) -> str:
    lines = ["", "## Gates", "", "| gate | result | blocking | why |", "| --- | --- | --- | --- |"]
    lines += [f"| {g['name']} | {'pass' if g['passed'] else '**FAIL**'} | {'yes' if g['blocking'] else 'no'} | "
              f"{g['summary']} |" for g in gates]
    return "\n".join(lines) + "\n"


def _render_classification(report: dict) -> str:
    m, cost, labels = report["metrics"], report["cost"], report["labels"]
    lines = [
        f"# {report['recipe']} — {report['method']} on {report['dataset']}",
        "",
        f"Base model `{report['base_model']}`, test split of {report['n_test']} rows.",
        "",
        "| model | accuracy | macro-F1 |",
        "| --- | ---: | ---: |",
        f"| **{report['recipe']}** (tuned) | {m['accuracy']:.4f} | {m['macro_f1']:.4f} |",
    ]
    for name, b in report["baselines"].items():
        lines.append(f"| baseline: {name} | {b['accuracy']:.4f} | {b['macro_f1']:.4f} |")
    lines += [
        "",
        *_cost_lines(cost),
        "## Per class",
        "",
        "| label | precision | recall | F1 | support |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {c['label']} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |"
        for c in m["per_class"]
    ]
    lines += ["", "## Confusion matrix (rows: true, columns: predicted)", "",
              "| | " + " | ".join(labels) + " |", "| --- |" + " ---: |" * len(labels)]
    lines += [f"| {label} | " + " | ".join(str(v) for v in row) + " |" for label, row in zip(labels, m["confusion_matrix"])]
    return "\n".join(lines) + "\n"


def _render_causal_markdown(report: dict) -> str:
    instruction = report["task"] == "instruction"
    what = "answers" if instruction else "blocks"
    lines = [
        f"# {report['recipe']} — {report['method']} on {report['dataset']} ({report['task']})",
        "",
        f"Base model `{report['base_model']}`, test split of {report['n_test']} {'conversations' if instruction else 'rows'}; "
        f"loss and perplexity are per token of the test {what}"
        + (", exact match and ROUGE-L of greedy generations against the reference answers." if instruction else "."),
        "",
        "| model | eval loss | perplexity |" + (" exact match | ROUGE-L |" if instruction else ""),
        "| --- | ---: | ---: |" + (" ---: | ---: |" if instruction else ""),
    ]
    for name, m in [(f"**{report['recipe']}** (tuned)", report["metrics"])] + [
            (f"baseline: {n}", b) for n, b in report["baselines"].items()]:
        lines.append(f"| {name} | {m['eval_loss']:.4f} | {m['perplexity']:,.2f} |"
                     + (f" {m['exact_match']:.4f} | {m['rouge_l']:.4f} |" if instruction else ""))
    lines += ["", *_cost_lines(report["cost"])]
    if report.get("samples"):
        lines += ["## Sample generations", "", "| prompt | reference | tuned | untuned base |", "| --- | --- | --- | --- |"]
        lines += [f"| {_cell(s['prompt'])} | {_cell(s['reference'])} | {_cell(s['generated'])} | {_cell(s['base_generated'])} |"
                  for s in report["samples"]]
    return "\n".join(lines) + "\n"


def _render_preference(report: dict) -> str:
    m, length = report["metrics"], report["baselines"]["length"]
    generated = "rouge_l" in m
    lines = [
        f"# {report['recipe']} — {report['method']} on {report['dataset']} (preference, objective "
        f"{m.get('objective', 'reward')})",
        "",
        f"Base model `{report['base_model']}`, test split of {report['n_test']} pairs"
        + (f" ({m['dropped_no_answer_tokens']} more left out: their prompt fills max_length)"
           if m.get("dropped_no_answer_tokens") else "")
        + ". Preference accuracy: the "
        "share of pairs whose preferred answer the model itself ranks first (ties count half: a reward model by "
        "its score, a causal LM by its likelihood of the answer); reward margin: the mean score difference, "
        "preferred minus other, in the objective's units (characters for the length "
        f"baseline, which prefers the {length['direction']} answer as the train split does: "
        f"{length['train_share_longer_preferred']:.0%} of its pairs prefer the longer)."
        + (f" Implicit reward (beta * log-probability ratio to the reference, as in TRL): "
           f"{m['implicit_reward_accuracy']:.4f} of pairs moved towards the preferred answer, mean margin "
           f"{m['implicit_reward_margin']:.4f}." if "implicit_reward_accuracy" in m else "")
        + (" Exact match and ROUGE-L: greedy answers to the test prompts against the preferred answers."
           if generated else ""),
        "",
        "| model | preference accuracy | reward margin |" + (" exact match | ROUGE-L |" if generated else ""),
        "| --- | ---: | ---: |" + (" ---: | ---: |" if generated else ""),
    ]
    rows = [(f"**{report['recipe']}** (tuned)", m)] + [(f"baseline: {n}", b) for n, b in report["baselines"].items()]
    for name, figures in rows:
        lines.append(f"| {name} | {figures['preference_accuracy']:.4f} | {figures['reward_margin']:.4f} |"
                     + (f" {_figure(figures, 'exact_match')} | {_figure(figures, 'rouge_l')} |" if generated else ""))
    lines += ["", *_cost_lines(report["cost"])]
    if report.get("samples"):
        lines += ["## Sample generations", "", "| prompt | preferred answer | tuned | before tuning |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {_cell(s['prompt'])} | {_cell(s['reference'])} | {_cell(s['generated'])} | {_cell(s['base_generated'])} |"
                  for s in report["samples"]]
    return "\n".join(lines) + "\n"


def _figure(figures: dict, key: str) -> str:
    return f"{figures[key]:.4f}" if key in figures else "—"


def _cell(text: str, limit: int = 160) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _training_markdown(t: dict) -> str:
    from ft_assets.lib.evaluation.overfitting import overfitting_summary

    kept = (f"the best validation evaluation (`{t['selection_metric']}` {t['best_metric']:.4f})" if t["keep"] == "best"
            else "the last step (training.keep last)")
    stopped = f", stopped early (of {t['steps_planned']} planned)" if t["stopped_early"] else ""
    lines = ["", "## Training: which weights, and overfitting", "",
             f"- published: step {t['published_step']} of {t['steps_run']}{stopped}, {kept}"]
    if t["gap"] is not None:
        lines.append(f"- at that step: train loss {t['train_loss']:.4f}, validation loss {t['validation_loss']:.4f}, "
                     f"gap **{t['gap']:+.4f}**")
    if t["max_validation_rise"] is not None:
        lines.append(f"- {overfitting_summary(t)}")
    return "\n".join(lines) + "\n"


def learning_rate_search_markdown(search: dict) -> str:
    """Every candidate of a learning-rate search with its validation figures, the chosen one marked."""
    metric = search["selection_metric"]
    lines = [f"| learning rate | validation {metric} | validation loss | published step | train s | |",
             "|---|---|---|---|---|---|"]
    for c in search["candidates"]:
        v = c["validation"] or {}
        lines.append(f"| {c['learning_rate']:g} | {_figure_or_dash(v.get(metric))} | "
                     f"{_figure_or_dash(v.get('eval_loss'))} | {c['published_step']} of {c['steps_run']} | "
                     f"{c['train_seconds']:.1f} | {'**chosen**' if c['chosen'] else ''} |")
    return "\n".join(lines)


def _figure_or_dash(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def _forgetting_markdown(f: dict) -> str:
    lines = ["", f"## Forgetting: on {forgetting_source(f)}, {f['n_texts']} texts", ""]
    if f["kind"] == "encoder":
        lines += [f"- representation drift: **{f['representation_drift']:.4f}** (1 − mean cosine of each sentence's "
                  "mean-pooled embedding before and after tuning; 0 = unchanged)",
                  f"- {f['knn_k']}-nearest-neighbour overlap: **{f['knn_overlap']:.4f}** (share of each sentence's "
                  "neighbours kept; 1 = the embedding space kept its structure)"]
    else:
        lines += [f"- per-token loss on these texts: base {f['base_loss']:.4f}, tuned {f['tuned_loss']:.4f}, "
                  f"increase **{f['loss_increase']:+.4f}** (0 = nothing forgotten)"]
    return "\n".join(lines) + "\n"
