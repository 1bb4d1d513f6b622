"""Every classification method on Banking77 (train -> official test) with the packaged MiniLM.

    python bench/classification_methods.py                      # every method that runs on this device
    python bench/classification_methods.py --methods full,lora  # a subset
    python bench/classification_methods.py --smoke              # 300 train rows, 1 epoch: checks the script
    python bench/classification_methods.py --methods lora --search  # learning_rate: {search: auto}, on validation
    python bench/classification_methods.py --combine bench/work_a bench/work_b   # one table from earlier runs
    python bench/classification_methods.py --combine-curves bench/results/a-curve.json bench/results/b-curve.json \
        --name banking77-cpu-curve-combined                                      # one curve from earlier runs
    python bench/classification_methods.py --methods full,lora --rates full=5e-5,1e-4,2e-4 \
        --method-args 'lora={"r": 16, "alpha": 32, "target_modules": ["query", "key", "value", "dense"]}'
    python bench/classification_methods.py --methods full,lora,head_only --curve 0.01,0.03,0.1,0.3
    python bench/classification_methods.py --methods full --rates full=1e-4 --epochs 10   # a fixed rate, longer

It builds a project YAML over ../shared/data/banking77, materializes the real asset graph
(raw -> dataset -> checkpoints -> reports -> leaderboard) in a fresh Dagster instance under
bench/work/, and copies the leaderboard (markdown, JSON, PNG) to bench/results/ with the device,
library versions and settings written at the top. The test split is only scored, never tuned on:
learning rates are each method's documented default, checked on the validation split only, or with
--search each method's `search: auto` grid, the rate chosen on the validation split by checkpoints/<recipe>.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BANKING77 = (REPO / ".." / "shared" / "data" / "banking77").resolve()
# Banking77 texts are short (median ~11 words); 64 tokens truncate almost none of them.
TRAINING = {"epochs": 5, "batch_size": 32, "max_length": 64, "seed": 0}
METHOD_ARGS = {"freeze": {"layers": 2}, "lora": {"r": 8, "alpha": 16}, "rslora": {"r": 8, "alpha": 16},
               "dora": {"r": 8, "alpha": 16}, "qlora": {"r": 8, "alpha": 16}, "prompt_tuning": {"num_virtual_tokens": 20}}
METHODS = ("full", "freeze", "lora", "rslora", "dora", "ia3", "prompt_tuning", "head_only", "qlora")


def usable_methods(requested: list[str]) -> list[str]:
    import importlib.util

    import torch

    cuda = torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None
    return [m for m in requested if m != "qlora" or cuda]


def write_project(work: Path, methods: list[str], smoke: bool, training: dict, search: bool = False,
                  rates: dict[str, list[float]] | None = None, method_args: dict[str, dict] | None = None,
                  curve: list[float] | None = None) -> Path:
    train_path = BANKING77 / "train.csv"
    if smoke:
        # The first 300 rows cover only a few intents; good enough to check the plumbing.
        lines = (BANKING77 / "train.csv").read_text().splitlines()[:301]
        train_path = work / "smoke_train" / "train.csv"
        train_path.parent.mkdir(parents=True, exist_ok=True)
        train_path.write_text("\n".join(lines) + "\n")
    rates = rates or {}

    def recipe_training(method: str) -> dict:
        if method in rates:  # one rate is a fixed rate, not a search
            rate = rates[method][0] if len(rates[method]) == 1 else {"search": rates[method]}
            return {**training, "learning_rate": rate}
        return {**training, "learning_rate": {"search": "auto"}} if search else training
    config = {
        "storage": {"root": "data"},
        "corpora": [
            {"name": "banking77_train", "path": str(train_path), "format": "csv", "label_field": "category"},
            {"name": "banking77_test", "path": str(BANKING77 / "test.csv"), "format": "csv", "label_field": "category"},
        ],
        "datasets": [{"name": "banking77", "corpus": "banking77_train", "test_corpus": "banking77_test",
                      "labels": json.loads((BANKING77 / "categories.json").read_text()),
                      "validation_fraction": 0.1,
                      **({"learning_curve": {"fractions": [*curve, 1.0], "recipes": [f"b77_{m}" for m in methods]}}
                         if curve else {})}],
        "recipes": [{"name": f"b77_{m}", "dataset": "banking77", "base_model": "default", "method": m,
                     "method_args": {**METHOD_ARGS.get(m, {}), **(method_args or {}).get(m, {})},
                     "training": recipe_training(m)} for m in methods],
    }
    path = work / "banking77.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--smoke", action="store_true", help="300 train rows, 1 epoch: checks the script only")
    parser.add_argument("--search", action="store_true",
                        help="each method's learning_rate: {search: auto}, chosen on the validation split")
    parser.add_argument("--rates", action="append", default=[], metavar="METHOD=R1,R2,...",
                        help="search these learning rates for METHOD on the validation split (one: that rate)")
    parser.add_argument("--method-args", action="append", default=[], metavar="METHOD=JSON",
                        help="method_args for METHOD over the defaults above")
    parser.add_argument("--epochs", type=int, default=TRAINING["epochs"],
                        help="epochs of every recipe (the published checkpoint is still the best on validation)")
    parser.add_argument("--curve", help="learning-curve fractions below 1 (comma-separated), every method's recipe")
    parser.add_argument("--name", help="results file name (default banking77-<device>[-search][-methods])")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "work")
    parser.add_argument("--rescore", action="store_true",
                        help="keep the checkpoints in --work and only re-run the reports and the leaderboard")
    parser.add_argument("--combine", nargs="+", type=Path, metavar="WORK",
                        help="write one leaderboard from the reports of earlier runs' --work folders")
    parser.add_argument("--combine-curves", nargs="+", type=Path, metavar="CURVE_JSON",
                        help="write one learning curve (--name) from earlier runs' bench/results/*-curve.json")
    args = parser.parse_args()
    if args.combine:
        return combine(args.combine)
    if args.combine_curves:
        return combine_curves(args.combine_curves, args.name or "banking77-cpu-curve-combined")

    import dagster as dg

    from ft_assets.defs import build_definitions
    from ft_assets.lib.config import load_config

    methods = usable_methods(args.methods.split(","))
    if args.rescore:
        config = load_config(args.work / "banking77.yaml")
        methods = [r.method for r in config.recipes]
        training = {**TRAINING, "epochs": config.recipes[0].training.epochs}
    else:
        shutil.rmtree(args.work, ignore_errors=True)
        (args.work / "dagster").mkdir(parents=True)
        rates = {m: [float(r) for r in rs.split(",")] for m, rs in (a.split("=", 1) for a in args.rates)}
        method_args = {m: json.loads(js) for m, js in (a.split("=", 1) for a in args.method_args)}
        curve = [float(f) for f in args.curve.split(",")] if args.curve else None
        training = {**TRAINING, "epochs": 1 if args.smoke else args.epochs}
        config = load_config(write_project(args.work, methods, args.smoke, training, args.search, rates, method_args,
                                           curve))
    defs = build_definitions(config)
    started = datetime.now(timezone.utc)
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    candidates = [a for a in assets if a.partitions_def is not None]
    with dg.DagsterInstance.local_temp(str(args.work / "dagster")) as instance:
        if candidates and not args.rescore:  # a run takes one partition: the data, each rate, then the rest
            dg.materialize(assets, resources=defs.resources, instance=instance,
                           selection=dg.AssetSelection.groups("raw", "datasets"))
            for asset in candidates:
                for rate in asset.partitions_def.get_partition_keys():
                    dg.materialize([asset], resources=defs.resources, instance=instance, partition_key=rate,
                                   raise_on_error=False)
        rest = dg.AssetSelection.all() - dg.AssetSelection.assets(*candidates)
        result = dg.materialize(assets, resources=defs.resources, instance=instance, raise_on_error=False,
                                selection="key:reports/*" if args.rescore else
                                rest - dg.AssetSelection.groups("raw", "datasets") if candidates else None)
    board = config.root / "reports" / "leaderboard" / "banking77"
    if not (board / "leaderboard.json").exists():
        print("no leaderboard was written; see the run log above", file=sys.stderr)
        return 1

    import peft
    import torch
    import transformers

    from ft_assets.lib.training.device import describe_device, resolve_device

    device = describe_device(resolve_device("auto"))
    slug = ("smoke" if args.smoke else ("cuda" if torch.cuda.is_available() else "cpu")) + ("-search" if args.search else "")
    stamp = started.strftime("%Y-%m-%d")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    header = (
        f"Banking77, train ({'first 300 rows, smoke run' if args.smoke else '10,003 rows, 10% held out for validation'})"
        f" -> official test (3,080 rows). Base: all-MiniLM-L6-v2 (packaged). Training: {json.dumps(training)}"
        + ("; learning rate: each method's `search: auto` grid, chosen on the validation split" if args.search else "")
        + ".\n\nRecipes: " + "; ".join(
            f"{r.name} ({r.method}, method_args {json.dumps({k: v for k, v in r.method_args.items() if v is not None})}, "
            f"learning rate {r.training.learning_rate if r.training.learning_rate is not None else 'default'})"
            for r in config.recipes) + ".\n\n"
        f"Measured {stamp} on {device}; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"peft {peft.__version__}. Run {'succeeded' if result.success else 'had failures (see the table)'}; "
        + ("reports re-scored from the run's checkpoints (--rescore); " if args.rescore else "")
        + f"wall time {(datetime.now(timezone.utc) - started).total_seconds() / 60:.1f} min.\n\n"
    )
    name = args.name or f"banking77-{slug}" + (
        "" if set(methods) == set(usable_methods(list(METHODS))) else "-" + "-".join(methods))
    from ft_assets.lib.evaluation.rendering import learning_rate_search_markdown

    searches = {}
    for recipe in config.recipes:
        eval_path = config.root / "reports" / recipe.name / "eval.json"
        if eval_path.exists() and (search := json.loads(eval_path.read_text()).get("learning_rate_search")):
            searches[recipe.name] = search
    search_text = "".join(f"\n## {name}: learning rate chosen on the validation split\n\n"
                          f"{learning_rate_search_markdown(search)}\n" for name, search in searches.items())
    (out / f"{name}.md").write_text(header + (board / "leaderboard.md").read_text().replace(
        "](leaderboard.png)", f"]({name}.png)") + search_text)
    (out / f"{name}.json").write_text(json.dumps({
        "device": device, "date": stamp, "training": training, "smoke": args.smoke,
        **json.loads((board / "leaderboard.json").read_text()),
        **({"learning_rate_search": searches} if searches else {})}, indent=2) + "\n")
    shutil.copy(board / "leaderboard.png", out / f"{name}.png")
    curve_dir = config.root / "reports" / "learning_curve" / "banking77"
    if (curve_dir / "learning_curve.json").exists():
        (out / f"{name}-curve.md").write_text(header + (curve_dir / "learning_curve.md").read_text().replace(
            "](learning_curve.png)", f"]({name}-curve.png)"))
        shutil.copy(curve_dir / "learning_curve.json", out / f"{name}-curve.json")
        shutil.copy(curve_dir / "learning_curve.png", out / f"{name}-curve.png")
        print((out / f"{name}-curve.md").read_text())
    print((out / f"{name}.md").read_text())
    return 0 if result.success else 1


def combine(works: list[Path]) -> int:
    """banking77-<device>-combined.*: every recipe's report from several runs, one schema, one chart.

    Runs of one method at a time fit a machine's working day; the settings must match, which
    the recipe hashes in the table's source reports let anyone check.
    """
    from ft_assets.lib.evaluation.leaderboard import write_leaderboard

    reports = {}
    for work in works:
        for path in sorted((work / "data" / "reports").glob("b77_*/eval.json")):
            report = json.loads(path.read_text())
            reports[report["recipe"]] = report  # a later folder wins for a recipe run twice
    if not reports:
        print(f"no b77_* reports under {[str(w) for w in works]}", file=sys.stderr)
        return 1
    device = next(iter(reports.values()))["cost"]["device_name"]
    slug = "cuda" if next(iter(reports.values()))["cost"]["device"] == "cuda" else "cpu"
    out = REPO / "bench" / "results"
    name = f"banking77-{slug}-combined"
    board = out / f".{name}"
    rows, _ = write_leaderboard(list(reports.values()), "banking77", board, missing=[])
    header = (
        f"Banking77, train (10,003 rows, 10% held out for validation) -> official test (3,080 rows). Base: "
        f"all-MiniLM-L6-v2 (packaged). Training: {json.dumps(TRAINING)}; each method's default learning rates.\n\n"
        f"Combined from {len(works)} runs on {device} ({', '.join(w.name for w in works)}); each row is "
        "one recipe's eval.json as its run wrote it.\n\n"
    )
    (out / f"{name}.md").write_text(header + (board / "leaderboard.md").read_text().replace(
        "](leaderboard.png)", f"]({name}.png)"))
    (out / f"{name}.json").write_text(json.dumps({"device": device, "training": TRAINING, "runs": [str(w) for w in works],
                                                  **json.loads((board / "leaderboard.json").read_text())}, indent=2) + "\n")
    shutil.move(board / "leaderboard.png", out / f"{name}.png")
    shutil.rmtree(board)
    print((out / f"{name}.md").read_text())
    return 0


def combine_curves(files: list[Path], name: str) -> int:
    """<name>.{md,json,png}: the learning curves of several runs in one table and one chart.

    The runs must share the dataset, the metric and the subset seed (so their shares are the same rows);
    the baselines are the first run's (the untuned base + head is trained on the same data in each run).
    """
    from ft_assets.lib.evaluation.learning_curve import curve_chart, render_markdown

    curves = [json.loads(path.read_text()) for path in files]
    if len({(c["dataset"], c["metric"], c["seed"]) for c in curves}) != 1:
        print("the curves differ in dataset, metric or seed: " + ", ".join(
            f"{path} ({c['dataset']}, {c['metric']}, seed {c['seed']})" for path, c in zip(files, curves)),
            file=sys.stderr)
        return 1
    source = {recipe: curve for curve in curves for recipe in curve["recipes"]}  # a later file wins for a recipe
    points = [p for recipe, curve in source.items() for p in curve["points"] if p["recipe"] == recipe]
    recipes = {recipe: source[recipe]["recipes"][recipe] for recipe in sorted(source)}
    merged = {**curves[0], "points": sorted(points, key=lambda p: (p["recipe"], p["fraction"])), "recipes": recipes,
              "missing_full_data": sorted({r for c in curves for r in c["missing_full_data"]} & set(recipes))}
    out = REPO / "bench" / "results"
    header = "Combined from " + ", ".join(f"`{path.name}`" for path in files) + " (each point as its run wrote it).\n\n"
    (out / f"{name}.json").write_text(json.dumps({"sources": [path.name for path in files], **merged}, indent=2) + "\n")
    (out / f"{name}.png").write_bytes(curve_chart(merged))
    (out / f"{name}.md").write_text(header + render_markdown(merged, f"{name}.png"))
    print((out / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
