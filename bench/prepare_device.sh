#!/usr/bin/env bash
# Run here, before a GPU session's device call: puts what the device image lacks into git-ignored
# folders that the call carries. The image has Python 3.12 with torch, peft and an older
# transformers; ft_assets.lib.train also needs pydantic, duckdb and datasets. The benchmark reads
# tiny_shakespeare and dolly_open_qa, and ../shared does not travel. Then, on the device:
#   run(command="bash bench/device_run.sh", carry=[".whl", "bench/.data"], timeout_s=560)
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl bench/.data
mkdir -p .whl bench/.data
# The versions this project is tested with on CPU (pip freeze of .venv), so both sides run the same code.
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  duckdb==2.0.1 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 transformers==5.24.0 peft==0.21.2
cp -r ../shared/data/tiny_shakespeare ../shared/data/dolly_open_qa bench/.data/
du -sh .whl bench/.data
