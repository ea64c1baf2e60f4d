#!/usr/bin/env bash
# Download, into .whl/ (git-ignored), the wheels of the Python packages cxrfuse needs that the
# lent GPU machine's image lacks (it has torch, transformers, lightning, peft, timm, pandas...,
# and no network): CPython 3.12, manylinux x86-64, the versions of this checkout's venv.
# benchmarks/gpu_suite.sh installs them when .whl/ exists; carry ".whl" with the device call.
#
#   bash benchmarks/gpu_wheels.sh            # here, where PyPI is reachable (about 31 MB, torchxrayvision most of it)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
PACKAGES=(pydantic pydantic_core annotated-types typing-inspection torchxrayvision
          iterative-stratification)
PINS=()
for pkg in "${PACKAGES[@]}"; do
  version="$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$pkg")"
  PINS+=("$pkg==$version")
done
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .whl "${PINS[@]}"
du -sh .whl && ls .whl
