"""`ft-assets`: read what the asset graph produced, without starting Dagster."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ft_assets.lib.config import ConfigError, load_config
from ft_assets.lib.lineage import AuditError


def summary(args: argparse.Namespace) -> int:
    """One line per recipe: its task metric against the untuned base, trainable parameters, wall time and
    gates; then each dataset's champion."""
    from ft_assets.lib.models.champion import current_champion
    from ft_assets.lib.config import TASK_METRICS
    from ft_assets.lib.evaluation.leaderboard import model_free_baseline, untuned_base

    config = load_config(args.config)
    missing = []
    # `simple`: the baseline that needs no model (the majority class; the length-only ranking of preference pairs).
    print(f"{'recipe':<24} {'method':<10} {'task':<18} {'metric':<19} {'tuned':>9} {'base':>9} {'simple':>8} "
          f"{'trainable':>12} {'train s':>8}  gates")
    for recipe in config.recipes:
        path = config.root / "reports" / recipe.name / "eval.json"
        if not path.exists():
            missing.append(recipe.name)
            continue
        r = json.loads(path.read_text())
        task = r.get("task", "classification")
        metric = TASK_METRICS[task][0]
        base = untuned_base(r)
        simple = model_free_baseline(r)
        print(f"{recipe.name:<24} {recipe.method:<10} {task:<18} {metric:<19} {r[metric]:>9.4f} "
              f"{'-' if base is None else format(base[metric], '.4f'):>9} "
              f"{'-' if simple is None else format(simple[1], '.4f'):>8} "
              f"{r['cost']['trainable_params']:>12,} {r['cost']['train_seconds']:>8.1f}  {_gates_word(r.get('gates'))}")
    champions = [(d.name, current_champion(config.root / "models" / d.name / "champion")) for d in config.datasets]
    for dataset, champion in champions:
        if champion is not None:
            print(f"\nchampion of {dataset}: {champion['recipe']}: {champion['why']}", end="")
    print(f"\nreports: {config.root / 'reports'}/<recipe>/report.md (and eval.json)")
    print(f"champions: {config.root / 'models'}/<dataset>/champion/")
    for dataset in config.datasets:
        if dataset.learning_curve is not None:
            print(f"learning curve of {dataset.name}: "
                  f"{config.root / 'reports' / 'learning_curve' / dataset.name / 'learning_curve.md'}")
    if missing:
        print(f"no report yet for: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def curve_points(args: argparse.Namespace) -> int:
    """Every learning-curve point of the project, a line each: the asset key and the partition key, as
    `dagster asset materialize --select 'key:"<asset>"' --partition '<partition>'` takes them (one at a time)."""
    config = load_config(args.config)
    for dataset in config.datasets:
        curve = dataset.learning_curve
        for recipe in curve.recipes if curve is not None else ():
            for fraction in curve.partial_fractions:
                # A multi-partition key joins its dimensions' keys in the order of their names: fraction, recipe.
                print(f"{'/'.join(config.key_path('learning_curve', dataset.name))} {fraction:g}|{recipe}")
    return 0


def _gates_word(gates: list[dict] | None) -> str:
    if gates is None:  # a report from before gates existed
        return "-"
    failed = [g["name"] for g in gates if not g["passed"]]
    return "FAIL " + ", ".join(failed) if failed else "pass"


def verify(args: argparse.Namespace) -> int:
    """Re-hash a checkpoint's files and the raw files it learned from against its manifest.json.

    Exit 0 when everything recorded matches, 1 on a changed, missing or unrecorded weight file or a raw file
    changed since training, 2 for a directory that is not a checkpoint.
    """
    from ft_assets.lib.lineage import verify_checkpoint

    try:
        result = verify_checkpoint(args.checkpoint)
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
        return 0 if result["ok"] else 1

    def short(sha: str | None) -> str:
        return "-" if sha is None else sha[:12]

    print(f"checkpoint {result['checkpoint']}")
    print(f"{'status':<22} {'expected':<12} {'actual':<12} file")
    for f in result["files"]:
        print(f"{f['status']:<22} {short(f['expected']):<12} {short(f['actual']):<12} {f['path']}")
    print(f"\n{'status':<22} {'expected':<12} {'actual':<12} raw file")
    for f in result["raw_files"]:
        print(f"{f['status']:<22} {short(f['expected']):<12} {short(f['actual']):<12} {f['uri']}")
    unchecked = [f for f in result["raw_files"] if f["status"] != "ok"]
    if result["ok"]:
        print("\nverified: every checkpoint file matches its recorded sha256 and no raw file changed"
              + (f"; {len(unchecked)} raw file(s) could not be checked (listed above)" if unchecked else ""))
        return 0
    print("\nNOT verified:\n" + "\n".join(f"  {p}" for p in result["problems"]), file=sys.stderr)
    return 1


def quarantine(args: argparse.Namespace) -> int:
    """The rows a dataset's last build quarantined: counts by reason, then each row with its file,
    row or line, reason and detail."""
    import duckdb

    from ft_assets.lib.datasets.cleaning import quarantined

    config = load_config(args.config)
    if args.dataset not in {d.name for d in config.datasets}:
        print(f"ft-assets quarantine: no dataset named {args.dataset!r} in {config.source}", file=sys.stderr)
        return 2
    if not config.warehouse_path.exists():
        print(f"ft-assets quarantine: no warehouse at {config.warehouse_path}; materialize datasets/{args.dataset} "
              "first", file=sys.stderr)
        return 2
    with duckdb.connect(str(config.warehouse_path), read_only=True) as conn:
        try:
            rows = quarantined(conn, args.dataset, reason=args.reason)
        except duckdb.CatalogException:
            print(f"ft-assets quarantine: datasets/{args.dataset} was never built", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    counts = {}
    for row in rows:
        counts[row["reason"]] = counts.get(row["reason"], 0) + 1
    print(f"{len(rows)} quarantined row(s) in datasets/{args.dataset}: "
          + (", ".join(f"{r} {n}" for r, n in counts.items()) or "none"))
    for row in rows[: args.limit]:
        text = (row["text"] or "").replace("\n", " ")
        text = text if text.strip() else repr(text)  # an empty or blank text, visibly
        print(f"{row['reason']:<18} {row['source_uri']}:{row['position'] or '-'}  {row['detail'] or ''}\n"
              f"{'':<18} {text[:120]}")
    if len(rows) > args.limit:
        print(f"... {len(rows) - args.limit} more (--limit, --reason, or --json for all)")
    return 0


def audit(args: argparse.Namespace) -> int:
    """Lineage from the Dagster event log: a recipe's or champion's chain back to the raw files, or
    (--raw-file) everything that consumed one raw file."""
    from ft_assets.audit import (
        audit_champion, audit_checkpoint, audit_raw_file, format_chain, format_raw_file, open_instance,
        resolve_raw_file,
    )

    if (args.target is None) == (args.raw_file is None):
        print("ft-assets audit: give a recipe, champion:<dataset>, or --raw-file (one of them)", file=sys.stderr)
        return 2
    config = load_config(args.config)
    instance = open_instance(config, args.dagster_home)
    if args.raw_file is not None:
        sha256, uri = resolve_raw_file(args.raw_file)
        found = audit_raw_file(instance, sha256, uri, args.project)
        if not args.stale:
            found.pop("stale")
        print(json.dumps(found, indent=2) if args.json else format_raw_file(found, args.stale))
        return 0
    if args.target.startswith("champion:"):
        if args.run_id:
            print("ft-assets audit: --run selects a checkpoint run; a champion is audited as it stands",
                  file=sys.stderr)
            return 2
        chain = audit_champion(instance, args.target.removeprefix("champion:"), args.project)
    else:
        chain = audit_checkpoint(instance, args.target, args.run_id, args.project)
    print(json.dumps(chain, indent=2) if args.json else format_chain(chain))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ft-assets", description=__doc__)
    parser.add_argument("--config", help="project YAML, or a FineTuningProject's defs.yaml (default: FT_ASSETS_CONFIG, "
                                         "else the packaged default)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("summary", help=summary.__doc__).set_defaults(run=summary)
    commands.add_parser("curve-points", help=curve_points.__doc__.splitlines()[0],
                        description=curve_points.__doc__).set_defaults(run=curve_points)
    verifier = commands.add_parser("verify", help=verify.__doc__.splitlines()[0])
    verifier.add_argument("checkpoint", type=Path, help="a checkpoint directory, the one holding manifest.json")
    verifier.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    verifier.set_defaults(run=verify)
    quarantiner = commands.add_parser("quarantine", help=quarantine.__doc__.splitlines()[0],
                                      description=quarantine.__doc__)
    quarantiner.add_argument("dataset", help="a dataset name")
    quarantiner.add_argument("--reason", help="only this reason (e.g. unknown_label)")
    quarantiner.add_argument("--limit", type=int, default=50, help="rows to print (default 50)")
    quarantiner.add_argument("--json", action="store_true", help="every row as JSON")
    quarantiner.set_defaults(run=quarantine)
    auditor = commands.add_parser("audit", help=audit.__doc__.splitlines()[0], description=audit.__doc__)
    auditor.add_argument("target", nargs="?", help="a recipe name, or champion:<dataset>")
    auditor.add_argument("--run", dest="run_id", help="audit the checkpoint materialized in this run instead of the latest")
    auditor.add_argument("--raw-file", help="a raw file's path or sha256: every asset that consumed it")
    auditor.add_argument("--stale", action="store_true",
                         help="with --raw-file: the current assets to rebuild without the file")
    auditor.add_argument("--json", action="store_true", help="print the result as JSON")
    auditor.add_argument("--project", help="the project's folder name, when several FineTuningProject components "
                                           "share the code location (its asset keys start with it)")
    auditor.add_argument("--dagster-home", help="the Dagster instance folder (default: DAGSTER_HOME, else "
                                                "<storage root>/dagster)")
    auditor.set_defaults(run=audit)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, AuditError) as e:
        print(e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
