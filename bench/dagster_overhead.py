"""Dagster's own cost: one recipe trained through `dagster asset materialize` and by the training entry
point alone, on the same spec, alternating, in one run.

    python bench/dagster_overhead.py                          # tickets_lora of the packaged default, 3 pairs
    python bench/dagster_overhead.py --recipe tickets_full --pairs 2

Both sides train the same recipe on the same rows in a fresh process: the asset writes SPEC.json and
runs `python -m ft_assets.lib.training SPEC.json` through Dagster Pipes; the direct side runs that
command on a spec built here the same way. The overhead is the extra wall time of the whole
materialization (run start, the step's process, reading the warehouse, Pipes, the materialization
event) as a share of the direct run's wall time. Each side's train_seconds (the steps alone, from
train_info.json) shows how much of a difference is the machine rather than Dagster.

The project is the packaged default on a copy of data/raw/ in a temporary folder (FT_ASSETS_ROOT,
DAGSTER_HOME); its dataset is materialized once before the pairs. Results: one JSON line per run in
bench/results/dagster_overhead-<machine>-<date>.jsonl, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="tickets_lora", help="a recipe of the packaged default project")
    p.add_argument("--pairs", type=int, default=3, help="(dagster, direct) pairs, alternating")
    p.add_argument("--out", type=Path, default=None, help="JSONL to append to")
    return p.parse_args(argv)


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def direct_spec(config, recipe, work: Path, run: int):
    """The spec the checkpoint asset would write, from the same warehouse rows, for a folder of its own."""
    import duckdb
    import pyarrow.parquet as pq

    from ft_assets.lib.datasets.cleaning import dataset_labels, read_split
    from ft_assets.lib.training.spec import TrainingSpec

    dataset = config.dataset(recipe.dataset)
    folder = work / f"direct-{run}"
    folder.mkdir()
    with duckdb.connect(str(config.warehouse_path), read_only=True) as conn:
        paths = {}
        for split in ("train", "validation"):
            paths[split] = str(folder / f"{split}.parquet")
            pq.write_table(read_split(conn, dataset.name, split, in_file_order=dataset.task == "language_modeling"),
                           paths[split])
        labels = dataset_labels(conn, dataset)
    spec = TrainingSpec(recipe=recipe, task=dataset.task, labels=labels, train_path=paths["train"],
                        validation_path=paths["validation"], output_dir=str(folder / "checkpoint"),
                        resume_dir=str(folder / ".resume"))
    spec.write(str(folder / "spec.json"))
    return folder


def latest_train_info(folder: Path) -> dict:
    return json.loads((folder / "train_info.json").read_text())


def main(argv=None) -> None:
    args = parse_args(argv)
    from ft_assets.lib.config import load_config
    from ft_assets.lib.training.device import describe_device

    work = Path(tempfile.mkdtemp(prefix="ft_assets_overhead_"))
    shutil.copytree(REPO / "data" / "raw", work / "raw")
    (work / "dagster").mkdir()
    shutil.copy(REPO / "data" / "dagster" / "dagster.yaml", work / "dagster" / "dagster.yaml")
    env = {**os.environ, "FT_ASSETS_ROOT": str(work), "DAGSTER_HOME": str(work / "dagster"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    os.environ.update({k: env[k] for k in ("FT_ASSETS_ROOT",)})
    config = load_config()
    recipe = next(r for r in config.recipes if r.name == args.recipe)
    dagster = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "ft_assets.definitions", "--select"]
    print(f"work folder {work}; materializing datasets/{recipe.dataset} once", flush=True)
    timed(dagster + [f"*datasets/{recipe.dataset}"], env)

    machine = describe_device("cpu")
    out = args.out or REPO / "bench" / "results" / f"dagster_overhead-cpu-{datetime.now().date().isoformat()}.jsonl"
    rows = []
    for pair in range(args.pairs):
        # Either side first, in turn: whichever runs first on this VM tends to train a few seconds slower.
        for side in ("dagster", "direct") if pair % 2 == 0 else ("direct", "dagster"):
            if side == "dagster":
                seconds = timed(dagster + [f"checkpoints/{recipe.name}"], env)
                checkpoint = max(p for p in (config.root / "checkpoints" / recipe.name).glob("2*") if p.is_dir())
            else:
                folder = direct_spec(config, recipe, work, pair)
                seconds = timed([sys.executable, "-m", "ft_assets.lib.training", str(folder / "spec.json")], env)
                checkpoint = folder / "checkpoint"
            info = latest_train_info(checkpoint)
            row = {"recipe": recipe.name, "pair": pair, "side": side, "wall_s": round(seconds, 2),
                   "train_seconds": round(info["train_seconds"], 2), "machine": machine,
                   "load_1m": round(os.getloadavg()[0], 2),
                   "run": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            rows.append(row)
            print(json.dumps(row), flush=True)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    sides = {side: sorted((r for r in rows if r["side"] == side), key=lambda r: r["pair"])
             for side in ("dagster", "direct")}
    walls = {side: [r["wall_s"] for r in runs] for side, runs in sides.items()}
    overheads = [(d - s) / s for d, s in zip(walls["dagster"], walls["direct"])]
    # The same steps on the same rows: what Dagster adds around the training loop, without the loop's
    # own run-to-run spread (the steps' seconds differ by up to 10% between identical runs here).
    outside = [((d["wall_s"] - d["train_seconds"]) - (s["wall_s"] - s["train_seconds"])) / s["wall_s"]
               for d, s in zip(sides["dagster"], sides["direct"])]
    print(f"\n{recipe.name} on {machine}: dagster {statistics.median(walls['dagster']):.1f} s, direct "
          f"{statistics.median(walls['direct']):.1f} s (medians of {args.pairs}); overhead per pair "
          + ", ".join(f"{o:+.1%}" for o in overheads)
          + f", median {statistics.median(overheads):+.1%} (target <= 10%); "
          "outside the training steps " + ", ".join(f"{o:+.1%}" for o in outside)
          + f", median {statistics.median(outside):+.1%}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
