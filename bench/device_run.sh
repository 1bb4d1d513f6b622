#!/usr/bin/env bash
# Runs on the GPU machine (see bench/prepare_device.sh): the throughput benchmark's GPU cases, one
# after the other, inside one device call. CASES picks them (default: fixed, then instruction LoRA,
# the order bench/RESULTS.md plans for a 15-minute device budget); results go to $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH="/tmp/site:$PWD" || exit 1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
out="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
# What the carried wheels run beside (datasets 5.2 asks for pyarrow >= 24; the image's is not listed).
python3 -c "import torch, pyarrow, fsspec, transformers, datasets; print('torch', torch.__version__, 'pyarrow', \
  pyarrow.__version__, 'fsspec', fsspec.__version__, 'transformers', transformers.__version__, 'datasets', \
  datasets.__version__)"
if [ -n "${CASES:-}" ]; then runs=("$CASES"); else runs=("--cases fixed" "--cases instruction --methods lora"); fi
for args in "${runs[@]}"; do
  # shellcheck disable=SC2086  # $args holds several options
  python3 bench/train_throughput.py $args --data bench/.data --out "$out/train_throughput-gpu.jsonl" \
    2>&1 | tee -a "$out/train_throughput-gpu.log"
done
