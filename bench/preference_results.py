"""The preference reports of a materialized project as one JSON line per recipe, and a Markdown table.

    FT_ASSETS_CONFIG=ft_assets/configs/orca_preferences.yaml dagster asset materialize --select '*' -m ft_assets.definitions
    python bench/preference_results.py --config ft_assets/configs/orca_preferences.yaml \
        --out bench/results/preference-orca-cpu-2026-12-02.jsonl

Each line: recipe, method, objective, preference_accuracy, reward_margin, the reference and length
baselines' accuracy (and margin), n_test, train_seconds, trainable_params and the machine, read from
reports/<recipe>/eval.json of every recipe on a preference dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def result_line(report: dict, machine: str) -> dict:
    """One recipe's figures, flat, from its eval.json."""
    reference, length = report["baselines"]["reference"], report["baselines"]["length"]
    return {"recipe": report["recipe"], "method": report["method"],
            "objective": report["metrics"].get("objective", "reward"),
            "preference_accuracy": report["preference_accuracy"], "reward_margin": report["reward_margin"],
            "baselines": {"reference": {"preference_accuracy": reference["preference_accuracy"],
                                        "reward_margin": reference["reward_margin"]},
                          "length": {"preference_accuracy": length["preference_accuracy"],
                                     "reward_margin": length["reward_margin"], "direction": length["direction"]}},
            "n_test": report["n_test"], "dropped_test_pairs": report["metrics"].get("dropped_no_answer_tokens", 0),
            "train_seconds": round(report["cost"]["train_seconds"], 1),
            "trainable_params": report["cost"]["trainable_params"], "total_params": report["cost"]["total_params"],
            "machine": machine}


def main(argv=None) -> None:
    from ft_assets.lib.config import load_config

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the project YAML that was materialized")
    p.add_argument("--machine", default="2-core AMD EPYC VM (AVX-512 incl. BF16, no AMX), no GPU, torch 2.13.0+cpu")
    p.add_argument("--out", type=Path, default=None, help="JSONL to write")
    args = p.parse_args(argv)
    config = load_config(args.config)
    preference = {d.name for d in config.datasets if d.task == "preference"}
    lines = [result_line(json.loads((config.root / "reports" / r.name / "eval.json").read_text()), args.machine)
             for r in config.recipes if r.dataset in preference]
    if args.out:
        args.out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    print("| recipe | objective | preference accuracy | reward margin | reference | length baseline | n_test | train s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for x in lines:
        b = x["baselines"]
        print(f"| {x['recipe']} | {x['objective']} ({x['method']}) | {x['preference_accuracy']:.4f} | "
              f"{x['reward_margin']:.3f} | {b['reference']['preference_accuracy']:.4f} | "
              f"{b['length']['preference_accuracy']:.4f} | {x['n_test']} | {x['train_seconds']:.0f} |")


if __name__ == "__main__":
    main()
