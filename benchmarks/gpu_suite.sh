#!/usr/bin/env bash
# The prepared GPU check (issue 16): environment header, install from the project's own files,
# then every step of benchmarks/gpu_suite.py (JSON + Markdown into --out).
#
#   bash benchmarks/gpu_suite.sh --out DIR             # on a GPU machine, < 9 minutes
#   bash benchmarks/gpu_suite.sh --dry-run --out DIR   # toy sizes on the CPU (CI runs this)
#
# Python: $PYTHON, else .venv/bin/python when it exists, else python3. Offline machines: the
# source tree is put on PYTHONPATH and installed without dependencies; wheels of packages that
# machine lacks are installed from .whl/ when that folder exists (benchmarks/gpu_wheels.sh
# downloads them; see docs/gpu-suite.md). Not carried: pycocoevalcap (104 MB, scoring only).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT=""
DRY=0
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; ARGS+=("$1" "$2"); shift 2 ;;
    --dry-run) DRY=1; ARGS+=("$1"); shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if [ -z "$OUT" ]; then echo "usage: $0 [--dry-run] --out DIR [--steps a,b]" >&2; exit 2; fi
mkdir -p "$OUT"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi

{
  echo "== cxrfuse GPU suite $(date -u '+%Y-%m-%d %H:%M:%S UTC'), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "== host: $(uname -srm), $(nproc) cores, $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB"}')"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv || true
    nvidia-smi || true
  else
    echo "nvidia-smi: not available (no NVIDIA GPU here)"
  fi
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda, "| GPU visible:", torch.cuda.is_available())'
} 2>&1 | tee "$OUT/header.txt"

export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
if [ "$DRY" = 0 ]; then
  if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    echo "== installing the carried wheels in .whl/"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/cxrfuse-site .whl/*.whl \
      && export PYTHONPATH="$PYTHONPATH:/tmp/cxrfuse-site"
  fi
  # the project itself, without touching the machine's torch (its pins need a registry)
  "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 \
    || echo "note: pip install -e . failed; using PYTHONPATH=$ROOT/src"
  "$PY" - <<'EOF' 2>&1 | tee -a "$OUT/header.txt"
import importlib.util
needed = ["pydantic", "torchxrayvision", "transformers", "lightning", "peft", "timm", "tokenizers",
          "safetensors", "sklearn", "pandas", "pyarrow", "typer", "rich", "iterstrat", "matplotlib", "tqdm"]
missing = [m for m in needed if importlib.util.find_spec(m) is None]
print("missing Python modules:", ", ".join(missing) if missing else "none")
EOF
fi
export PYTHONUNBUFFERED=1
"$PY" benchmarks/gpu_suite.py "${ARGS[@]}" 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
