"""`ft-assets`: read what the asset graph produced, without starting Dagster."""

from __future__ import annotations

import argparse
import json
import sys

from ft_assets.lib.config import ConfigError, load_config


def summary(args: argparse.Namespace) -> int:
    """One line per recipe: its task metric against the untuned base, trainable parameters, wall time."""
    from ft_assets.lib.leaderboard import TASK_METRICS, untuned_base

    config = load_config(args.config)
    missing = []
    print(f"{'recipe':<24} {'method':<10} {'task':<18} {'metric':<10} {'tuned':>9} {'base':>9} {'majority':>8} "
          f"{'trainable':>12} {'train s':>8}")
    for recipe in config.recipes:
        path = config.root / "reports" / recipe.name / "eval.json"
        if not path.exists():
            missing.append(recipe.name)
            continue
        r = json.loads(path.read_text())
        task = r.get("task", "classification")
        metric = TASK_METRICS[task][0]
        base = untuned_base(r)
        majority = r["baselines"].get("majority")
        print(f"{recipe.name:<24} {recipe.method:<10} {task:<18} {metric:<10} {r[metric]:>9.4f} "
              f"{'-' if base is None else format(base[metric], '.4f'):>9} "
              f"{'-' if majority is None else format(majority['accuracy'], '.4f'):>8} "
              f"{r['trainable_params']:>12,} {r['train_seconds']:>8.1f}")
    print(f"\nreports: {config.root / 'reports'}/<recipe>/report.md (and eval.json)")
    if missing:
        print(f"no report yet for: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ft-assets", description=__doc__)
    parser.add_argument("--config", help="project YAML (default: FT_ASSETS_CONFIG, else the packaged default)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("summary", help=summary.__doc__).set_defaults(run=summary)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
