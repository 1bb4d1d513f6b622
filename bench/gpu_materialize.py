"""A whole materialization on a GPU: the real Definitions through `dagster asset materialize`.

Two datasets, one project YAML with `gpu: {device: cuda}`, every asset of the graph: ingest, clean,
checkpoints (training in its own process through Dagster Pipes, in the `gpu` pool), reports (the
head baseline trains there too), leaderboards and champions. What pytest -m gpu checks one function
at a time, seen here through the orchestrator on CUDA.

    python bench/gpu_materialize.py --data bench/.data --out $OUT   # on the GPU machine (bench/device_run.sh)
    python bench/gpu_materialize.py --tiny                           # CPU, ~2 min: the same graph, small

  sms_lora   MiniLM + LoRA on the first rows of sms_spam/train.tsv (ham/spam). MiniLM is the packaged
             all-MiniLM-L6-v2 where installed; on the device machine its architecture with random
             weights (a device call carries 64 MiB), so its accuracy there says nothing.
  dolly_sft  a small Llama, from scratch, trained on the first dolly_open_qa/train.jsonl records as
             chat (packed rows, compiled), then answering held-out questions (ROUGE-L).
Only train files are read; the test splits are cut from them. The gates stay as users get them:
a recipe that fails one is never champion, so a champion may be missing, and that is reported.

It writes <out>/gpu_materialize.json (per asset: materialized or not; per checkpoint: device,
precision, compile, attention, throughput, peak memory; per report: headline metric and gates) and
exits 1 when an asset other than a champion did not materialize or a checkpoint trained elsewhere
than on the device asked for.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout, installed or not (the device machine has it on PYTHONPATH)

SIZES = {  # rows of each train file used, and the settings that scale with them
    False: {"sms_rows": 1500, "dolly_records": 600, "epochs": 2, "hidden": 256, "layers": 4, "max_length": 512,
            "generated": 32, "new_tokens": 48},
    True: {"sms_rows": 160, "dolly_records": 48, "epochs": 1, "hidden": 64, "layers": 2, "max_length": 256,
           "generated": 4, "new_tokens": 8},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a few rows and a smaller model, on the CPU")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="gpu.device (default: cuda; --tiny: cpu)")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                   help="the shared data folder (sms_spam/, dolly_open_qa/)")
    p.add_argument("--work", type=Path, default=REPO / "bench" / "work-gpu-materialize",
                   help="the project folder, made afresh (git-ignored under bench/work*)")
    p.add_argument("--out", type=Path, default=None, help="where gpu_materialize.json goes (default: --work)")
    p.add_argument("--timeout", type=float, default=None, help="seconds the materialization may take")
    return p.parse_args(argv)


def write_project(work: Path, data: Path, device: str, size: dict) -> Path:
    """Raw files, the MiniLM folder and project.yaml under `work`; returns the YAML's path."""
    from ft_assets_tests.conftest import minilm_or_its_architecture

    raw = work / "data" / "raw"
    (raw / "sms").mkdir(parents=True)
    (raw / "dolly").mkdir(parents=True)
    with open(data / "sms_spam" / "train.tsv", encoding="utf-8") as f:
        (raw / "sms" / "sms_train_head.tsv").write_text("".join(line for _, line in zip(range(size["sms_rows"]), f)))
    with open(data / "dolly_open_qa" / "train.jsonl", encoding="utf-8") as f:
        (raw / "dolly" / "dolly_train_head.jsonl").write_text(
            "".join(line for _, line in zip(range(size["dolly_records"]), f)))
    minilm, minilm_description = minilm_or_its_architecture(work / "minilm")
    print(f"MiniLM: {minilm_description}", flush=True)
    training = {"epochs": size["epochs"], "seed": 0}
    config = {
        "storage": {"root": "data"},
        "gpu": {"device": device},
        "corpora": [
            {"name": "sms", "path": "raw/sms/", "format": "tsv", "columns": ["label", "text"], "label_field": "label"},
            # Dolly calls the optional input "context".
            {"name": "dolly", "path": "raw/dolly/", "format": "jsonl", "record": "instruction",
             "instruction_fields": {"input": "context"}},
        ],
        "datasets": [
            {"name": "sms_spam", "corpus": "sms", "task": "classification", "labels": ["ham", "spam"],
             "validation_fraction": 0.1, "test_fraction": 0.2, "max_chars": 1000},
            {"name": "dolly_qa", "corpus": "dolly", "task": "instruction", "validation_fraction": 0.1,
             "test_fraction": 0.1},
        ],
        "recipes": [
            {"name": "sms_lora", "dataset": "sms_spam", "base_model": str(minilm), "method": "lora",
             "method_args": {"r": 8, "alpha": 16, "target_modules": ["query", "value"]},
             "training": {**training, "learning_rate": 1e-3, "batch_size": 32, "max_length": 64}},
            {"name": "dolly_sft", "dataset": "dolly_qa", "base_model": "scratch", "method": "full",
             "scratch": {"architecture": "llama", "vocab_size": 2048, "hidden_size": size["hidden"],
                         "layers": size["layers"], "heads": 4, "context": size["max_length"]},
             "training": {**training, "learning_rate": 1e-3, "batch_size": 8, "max_length": size["max_length"],
                          "packing": True},
             "generation": {"max_examples": size["generated"], "max_new_tokens": size["new_tokens"]}},
        ],
    }
    path = work / "project.yaml"
    path.write_text(f"# Written by bench/gpu_materialize.py ({minilm_description}).\n"
                    + yaml.safe_dump(config, sort_keys=False))
    return path


def materialize(work: Path, env: dict, timeout: float | None) -> tuple[int, float]:
    """`dagster asset materialize --select '*'` with its output in work/materialize.log; (exit code, seconds)."""
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "--select", "*", "-m", "ft_assets.definitions"]
    started = time.perf_counter()
    with open(work / "materialize.log", "w") as log:
        # Its own process group: on a timeout the step processes and their training go with it.
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = -9
            log.write(f"\nstopped after the --timeout of {timeout} s\n")
    return code, time.perf_counter() - started


def outcome(config_path: Path, device: str) -> dict:
    """What the instance and the files say about every asset of the graph."""
    import dagster as dg

    from ft_assets.defs import build_definitions
    from ft_assets.lib.config import load_config

    config = load_config(config_path)
    defs = build_definitions(config)
    instance = dg.DagsterInstance.get()
    assets = {}
    for spec in defs.resolve_all_asset_specs():
        event = instance.get_latest_materialization_event(spec.key)
        assets[spec.key.to_user_string()] = event is not None
    checkpoints, reports = {}, {}
    for recipe in config.recipes:
        folders = sorted(p for p in (config.root / "checkpoints" / recipe.name).glob("2*") if p.is_dir())
        if folders:
            info = json.loads((folders[-1] / "train_info.json").read_text())
            checkpoints[recipe.name] = {k: info.get(k) for k in (
                "device", "device_name", "precision", "compiled", "attention", "fused_optimizer", "steps",
                "train_seconds", "examples_per_sec", "tokens_per_sec", "peak_mem_bytes", "final_train_loss")}
        report_path = config.root / "reports" / recipe.name / "eval.json"
        if report_path.exists():
            report = json.loads(report_path.read_text())
            metric = "accuracy" if report["task"] == "classification" else "rouge_l"
            reports[recipe.name] = {metric: report[metric], "eval_loss": report.get("eval_loss"),
                                    "gates": {g["name"]: g["passed"] for g in report.get("gates", [])}}
    failures = {}  # step -> the first lines of its error (a champion with no recipe through its gates, say)
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
            error = entry.dagster_event.event_specific_data.error
            failures[entry.step_key] = (error.message if error else "").strip()[:600]
    missing = [key for key, done in assets.items() if not done and not key.endswith("/champion")]
    elsewhere = [name for name, info in checkpoints.items() if info["device"] != device]
    return {"assets": assets, "checkpoints": checkpoints, "reports": reports, "step_failures": failures,
            "not_materialized": missing, "trained_elsewhere": elsewhere,
            "ok": not missing and not elsewhere and len(checkpoints) == len(config.recipes)}


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device or ("cpu" if args.tiny else "cuda")
    work, out = args.work.resolve(), (args.out or args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    config_path = write_project(work, args.data.resolve(), device, SIZES[args.tiny])
    (work / "dagster").mkdir()
    shutil.copy(REPO / "data" / "dagster" / "dagster.yaml", work / "dagster" / "dagster.yaml")  # the pools
    env = {**os.environ, "FT_ASSETS_CONFIG": str(config_path), "DAGSTER_HOME": str(work / "dagster"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    code, seconds = materialize(work, env, args.timeout)
    os.environ.update({k: env[k] for k in ("FT_ASSETS_CONFIG", "DAGSTER_HOME")})
    summary = subprocess.run([sys.executable, "-m", "ft_assets.cli", "summary"], cwd=REPO, env=env,
                             capture_output=True, text=True)
    result = {"device": device, "tiny": args.tiny, "materialize_exit_code": code,
              "materialize_seconds": round(seconds, 1), **outcome(config_path, device),
              "summary": summary.stdout + summary.stderr}
    (out / "gpu_materialize.json").write_text(json.dumps(result, indent=2) + "\n")
    print(result["summary"])
    print(json.dumps({k: v for k, v in result.items() if k != "summary"}, indent=2))
    print(f"log: {work / 'materialize.log'}; result: {out / 'gpu_materialize.json'}", flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
