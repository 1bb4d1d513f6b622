"""The GPU proof kit (bench/prepare_device.sh, bench/device_run.sh) is ready to run the moment a GPU is.

What can be checked without one: the plan fits one device command, and the whole materialization it
runs on CUDA runs here on the CPU, small (--tiny), over the real Definitions and the shared data.
The gpu tests themselves are collected and skipped here (conftest.py).
"""

import json
import os
import re
import subprocess
import sys

from ft_assets_tests.conftest import REPO

DEVICE_COMMAND_SECONDS = 600  # the most one device command may run


def test_the_device_run_plans_its_stages_inside_one_device_command():
    plan = subprocess.run(["bash", "bench/device_run.sh", "--plan"], cwd=REPO, capture_output=True, text=True,
                          check=True, env={k: v for k, v in os.environ.items() if k != "STAGES"}).stdout
    assert plan.startswith("plan: setup <= ")
    assert all(f"{stage} <= " in plan for stage in ("tests", "materialize", "throughput"))
    total = int(re.search(r"total <= (\d+) s", plan).group(1))
    assert total <= DEVICE_COMMAND_SECONDS - 30  # room to stop, copy the results and return


def test_the_gpu_materialization_runs_the_whole_graph_on_the_cpu_with_tiny(tmp_path):
    done = subprocess.run([sys.executable, "bench/gpu_materialize.py", "--tiny", "--work", str(tmp_path / "work"),
                           "--data", str(REPO.parent / "shared" / "data"), "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_materialize.json").read_text())
    assert result["ok"] and result["device"] == "cpu"
    assets = result["assets"]
    assert {"raw/sms", "datasets/sms_spam", "checkpoints/sms_lora", "reports/sms_lora", "raw/dolly",
            "checkpoints/dolly_sft", "reports/dolly_sft", "reports/leaderboard/dolly_qa"} <= set(assets)
    assert all(done for key, done in assets.items() if not key.endswith("/champion"))
    assert {info["device"] for info in result["checkpoints"].values()} == {"cpu"}
    assert set(result["reports"]) == {"sms_lora", "dolly_sft"}
    # A champion is published or its failure says why (a few rows of data need not beat the baselines).
    for dataset in ("sms_spam", "dolly_qa"):
        key = f"models/{dataset}/champion"
        assert assets[key] or "no recipe passed its gates" in result["step_failures"][key.replace("/", "__")]
    assert "sms_lora" in result["summary"] and "champions:" in result["summary"]
