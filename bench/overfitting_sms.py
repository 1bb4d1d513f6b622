"""Where full fine-tuning starts to overfit, which weights we publish, and what early stopping saves: SMS Spam.

    python bench/overfitting_sms.py            # 1,200 train rows, 10 epochs, two recipes (about 15 min on 2 cores)
    python bench/overfitting_sms.py --smoke    # 200 rows, 3 epochs: checks the script
    python bench/overfitting_sms.py --rows 600 --epochs 15 --learning-rate 1e-4   # other settings

A project YAML over a seeded sample of ../shared/data/sms_spam/train.tsv (the fixed test.tsv as the test
split), materialized whole in a fresh Dagster instance under bench/work_overfitting/: `sms_full_long`
trains MiniLM in full for every epoch and keeps the last step's weights beside the published best ones
(`keep_last`); `sms_full_early` is the same recipe with `early_stopping: {patience: 2}`. The script then
scores the last step's weights on the test split too, so the table shows what publishing the best
validation evaluation bought, and writes bench/results/overfitting-sms-<device>-<date>.json. The test
split picks nothing: the published step is chosen on validation, the test figures are only reported.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from datetime import datetime, timezone
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SMS = (REPO / ".." / "shared" / "data" / "sms_spam").resolve()
ROWS = 1200
TRAINING = {"epochs": 10, "learning_rate": 5.0e-5, "batch_size": 32, "max_length": 64, "seed": 0}


def write_project(work: Path, rows: int, epochs: int, learning_rate: float) -> Path:
    lines = (SMS / "train.tsv").read_text().splitlines()
    sample = random.Random(0).sample(lines, rows)
    train = work / "raw" / "train.tsv"
    train.parent.mkdir(parents=True, exist_ok=True)
    train.write_text("\n".join(sample) + "\n")
    training = {**TRAINING, "epochs": epochs, "learning_rate": learning_rate}
    config = {
        "storage": {"root": "data"},
        "corpora": [
            {"name": "sms_train", "path": str(train), "format": "tsv", "columns": ["label", "text"], "label_field": "label"},
            {"name": "sms_test", "path": str(SMS / "test.tsv"), "format": "tsv", "columns": ["label", "text"],
             "label_field": "label"},
        ],
        "datasets": [{"name": "sms_spam", "corpus": "sms_train", "test_corpus": "sms_test", "labels": ["ham", "spam"],
                      "validation_fraction": 0.1, "max_chars": 1000}],
        "recipes": [
            {"name": "sms_full_long", "dataset": "sms_spam", "base_model": "default", "method": "full",
             "training": {**training, "keep_last": True}},
            {"name": "sms_full_early", "dataset": "sms_spam", "base_model": "default", "method": "full",
             "training": {**training, "early_stopping": {"patience": 2}}},
        ],
    }
    path = work / "sms_overfitting.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def last_step_test_accuracy(checkpoint: Path, test: dict, labels: list[str]) -> float:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ft_assets.lib.training.checkpoint import LAST_DIR
    from ft_assets.lib.training.classification import predict_logits

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint / LAST_DIR)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint / LAST_DIR)
    logits = predict_logits(model, tokenizer, test["text"], max_length=TRAINING["max_length"], batch_size=64,
                            device="cpu")
    return sum(labels[i] == y for i, y in zip(logits.argmax(-1), test["label"])) / len(test["label"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rows", type=int, default=ROWS, help="train rows sampled (seeded) from train.tsv")
    parser.add_argument("--epochs", type=int, default=TRAINING["epochs"])
    parser.add_argument("--learning-rate", type=float, default=TRAINING["learning_rate"])
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "work_overfitting")
    args = parser.parse_args()
    args.work = args.work.resolve()  # the project YAML names its files from here; a relative path would nest them
    import dagster as dg

    from ft_assets.defs import build_definitions
    from ft_assets.lib.config import load_config
    from ft_assets.lib.datasets.snapshot import open_snapshot
    from ft_assets.lib.training.device import describe_device

    rows, epochs, rate = (200, 3, TRAINING["learning_rate"]) if args.smoke else (args.rows, args.epochs,
                                                                                 args.learning_rate)
    args.work.mkdir(parents=True, exist_ok=True)
    config = load_config(write_project(args.work, rows, epochs, rate))
    defs = build_definitions(config)
    (args.work / "dagster_home").mkdir(exist_ok=True)
    instance = dg.DagsterInstance.local_temp(str(args.work / "dagster_home"))
    started = datetime.now(timezone.utc)
    result = dg.materialize([a for a in defs.assets if isinstance(a, dg.AssetsDefinition)],
                            resources=defs.resources, instance=instance, raise_on_error=False)
    if not result.success:
        print("the materialization failed; see the run log above", file=sys.stderr)
        return 1
    out = {"script": "bench/overfitting_sms.py", "date": started.date().isoformat(), "device": describe_device("cpu"),
           "train_rows_sampled": rows, "training": {**TRAINING, "epochs": epochs, "learning_rate": rate},
           "recipes": {}}
    for recipe in ("sms_full_long", "sms_full_early"):
        report = json.loads((config.root / "reports" / recipe / "eval.json").read_text())
        checkpoint = Path(report["checkpoint"])
        info = json.loads((checkpoint / "train_info.json").read_text())
        evals = [json.loads(line) for line in (checkpoint / "metrics.jsonl").read_text().splitlines()]
        entry = {
            "test_accuracy_published": report["accuracy"], "test_macro_f1_published": report["macro_f1"],
            "published_step": info["published_step"], "steps_run": info["steps_run"],
            "steps_planned": info["steps_planned"], "stopped_early": info["stopped_early"],
            "train_seconds": info["train_seconds"], "training_block": report["training"],
            "validation": [{k: e[k] for k in ("step", "epoch", "eval_loss", "eval_accuracy")}
                           for e in evals if "eval_loss" in e],
        }
        if info["last_saved"]:
            trained_on = json.loads((checkpoint / "manifest.json").read_text())["dataset"]
            snapshot = open_snapshot(Path(trained_on["snapshot"]["path"]), trained_on["snapshot"]["uri"],
                                     version=trained_on["version"])
            entry["test_accuracy_last_step"] = last_step_test_accuracy(
                checkpoint, snapshot.read_split("test").to_pydict(), report["labels"])
        out["recipes"][recipe] = entry
    settings = "" if (rows, epochs, rate) == (ROWS, TRAINING["epochs"], TRAINING["learning_rate"]) else \
        f"-{rows}rows-{epochs}ep-{rate:g}"
    name = f"overfitting-sms-{'smoke-' if args.smoke else ''}cpu-{out['date']}{settings}.json"
    (REPO / "bench" / "results" / name).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({r: {k: v for k, v in e.items() if k not in ("validation", "training_block")}
                      for r, e in out["recipes"].items()}, indent=2))
    for e in out["recipes"]["sms_full_long"]["validation"]:
        print(f"epoch {e['epoch']:>2}  step {e['step']:>4}  validation loss {e['eval_loss']:.4f}  "
              f"accuracy {e['eval_accuracy']:.4f}")
    print(f"wrote bench/results/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
