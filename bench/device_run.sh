#!/usr/bin/env bash
# The GPU proof in one device call, prepared by bench/prepare_device.sh:
#   run(command="bash bench/device_run.sh", carry=[".whl", "bench/.data"], timeout_s=600)
# Stages, each in its own time box (the plan is printed first; what a box cuts is said at the end):
#   tests        pytest -m gpu: every CUDA path, one function at a time (ft_assets_tests/test_gpu.py)
#   materialize  bench/gpu_materialize.py: the whole graph through `dagster asset materialize` on CUDA
#   throughput   bench/train_throughput.py: ours against Trainer, fixed 2,048-token blocks (full, LoRA),
#                then packed Dolly (LoRA; ours with SDPA and with flex_attention)
# Everything that comes back is under $OUT: device_run.log (all output), gpu_tests.xml,
# gpu_materialize.json, materialize.log, train_throughput-gpu.jsonl.
#   STAGES=throughput THROUGHPUT_S=540 bash bench/device_run.sh   some stages, in longer boxes (finishing a cut run)
#   bash bench/device_run.sh --tiny                   the same stages on this CPU, small (PYTHON: .venv's)
#   bash bench/device_run.sh --plan                   print the plan and stop
set -uo pipefail
cd "$(dirname "$0")/.."
tiny=false plan_only=false
for arg in "$@"; do
  case $arg in
    --tiny) tiny=true ;;
    --plan) plan_only=true ;;
    *) echo "usage: bash bench/device_run.sh [--tiny] [--plan]" >&2; exit 2 ;;
  esac
done
stages="${STAGES:-tests materialize throughput}"
out="${OUT:-bench/work-device}"
if $tiny; then
  python="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
  data=../shared/data
  declare -A box=([setup]=60 [tests]=300 [materialize]=600 [throughput]=600)
else
  python="${PYTHON:-python3}"
  data=bench/.data
  # Seconds; 560 in all, inside the 600 s of one device command.
  declare -A box=([setup]=30 [tests]=180 [materialize]=150 [throughput]=200)
fi
for stage in $stages; do
  case $stage in tests|materialize|throughput) ;; *) echo "STAGES takes tests, materialize, throughput" >&2; exit 2 ;; esac
done
total=0
for stage in setup $stages; do
  override="${stage^^}_S"  # e.g. THROUGHPUT_S=500 STAGES=throughput: a longer box for a run of fewer stages
  [ -n "${!override:-}" ] && box[$stage]=${!override}
  total=$((total + box[$stage]))
done
plan="plan: $(for stage in setup $stages; do printf '%s <= %s s, ' "$stage" "${box[$stage]}"; done)total <= $total s \
($((total / 60)) min $((total % 60)) s)$($tiny && echo ', --tiny on the CPU')"
if $plan_only; then echo "$plan"; exit 0; fi
mkdir -p "$out"
exec > >(tee -a "$out/device_run.log") 2>&1
echo "$plan"
started=$SECONDS
# A stage's box, or what is left of the whole plan when that is less.
budget() { local left=$((total - (SECONDS - started))); echo $((left < box[$1] ? left : box[$1])); }

# --- setup: the carried packages in front of the image's (bench/prepare_device.sh) --------------------------
archive=".whl/site-py$($python -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")').tar.xz"
if [ -f "$archive" ]; then
  site=/tmp/ft_assets_site
  rm -rf "$site" && mkdir -p "$site"
  timeout "$(budget setup)" "$python" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
    "$archive" "$site" || { echo "could not unpack $archive"; exit 1; }
  export PYTHONPATH="$site:$PWD"
  echo "unpacked $archive ($(wc -l < .whl/wheels.txt) wheels) in $((SECONDS - started)) s"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$python" - <<'PY'
import importlib.metadata as m, sys, torch
names = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "pyarrow", "dagster", "duckdb", "triton")
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "-"
print("python", sys.version.split()[0], *(f"{n} {version(n)}" for n in names), "cuda", torch.version.cuda,
      "gpus", torch.cuda.device_count())
PY
failed=()
run_stage() {  # name, then the command; a stage that fails or overruns its box does not stop the next
  local name=$1 seconds
  shift
  seconds=$(budget "$name")
  echo; echo "=== $name (box ${seconds} s, at $((SECONDS - started)) s) ==="
  if [ "$seconds" -le 10 ]; then echo "no time left for $name"; failed+=("$name (no time left)"); return; fi
  timeout --kill-after=10 "$seconds" "$@"
  local code=$?
  [ "$code" -eq 124 ] || [ "$code" -eq 137 ] && failed+=("$name (stopped at its ${seconds} s box)")
  [ "$code" -ne 0 ] && [ "$code" -ne 124 ] && [ "$code" -ne 137 ] && failed+=("$name (exit $code)")
  echo "=== $name: exit $code after $((SECONDS - started)) s ==="
}

for stage in $stages; do
  case $stage in
    tests)
      # The files with gpu tests, by name: collecting every test module would import what only CI installs.
      # -v names each test as it ends, so a run stopped at its box still says which passed; the durations
      # size the boxes of the next run.
      mapfile -t files < <(grep -l "pytest.mark.gpu" ft_assets_tests/test_*.py)
      run_stage tests "$python" -m pytest -m gpu -p no:cacheprovider -v -rfEs --durations=0 \
        --junitxml="$out/gpu_tests.xml" "${files[@]}" ;;
    materialize)
      if $tiny; then size=(--tiny); else size=(--device cuda); fi
      run_stage materialize "$python" bench/gpu_materialize.py "${size[@]}" --data "$data" --out "$out" \
        --work /tmp/ft_assets_gpu_materialize --timeout "$(($(budget materialize) - 20))"
      cp /tmp/ft_assets_gpu_materialize/materialize.log "$out/" 2>/dev/null ;;
    throughput)
      if $tiny; then
        run_stage throughput "$python" bench/train_throughput.py --tiny --out "$out/train_throughput-cpu-tiny.jsonl"
      else
        run_stage throughput bash -c "'$python' bench/train_throughput.py --cases fixed --data '$data' \
          --out '$out/train_throughput-gpu.jsonl' && '$python' bench/train_throughput.py --cases instruction \
          --methods lora --examples 800 --data '$data' --out '$out/train_throughput-gpu.jsonl'"
      fi ;;
  esac
done
echo
echo "done in $((SECONDS - started)) s of the planned $total s; $([ ${#failed[@]} -eq 0 ] && echo 'every stage ended well' \
  || printf 'not ended well: %s; ' "${failed[@]}")"
ls -l "$out"
