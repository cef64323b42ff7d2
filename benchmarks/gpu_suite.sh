#!/usr/bin/env bash
# The GPU suite in one go, unattended, in under 8 minutes on one H100/H200-class GPU:
#   1. what the machine has (GPU, driver, torch build) - stops here, saying what is missing,
#      when torch sees no CUDA GPU;
#   2. the CUDA tests (pytest -m cuda);
#   3. the published configuration (Hiera-L, 1024 px, bf16) eager, with a per-stage time split;
#   4. the same with torch.compile (image encoder + fuser), then one pass under torch.profiler:
#      device time per engine stage and the 25 ops that take the most (what to attack next);
#   5. a summary: frames/s, overhead over plain SAM2, FLOP share, peak GPU memory, written to
#      $OUT_DIR/gpu_results.json for `benchmarks/report.py --gpu-results` (README table).
# Every stage runs under its own time budget, cut to what is left of the total; each prints its
# results as they come, so a stage that runs out of time still leaves its partial figures.
# Weights are random (no downloads): speed does not depend on them.
#
#   bash benchmarks/gpu_suite.sh            # on the GPU machine
#   bash benchmarks/gpu_suite.sh --dry-run  # CPU, tiny sizes: checks the suite itself runs
#
# Environment: PYTHON (default .venv/bin/python, else python3), GPU_SUITE_OUT (default $OUT
# when set, else out/gpu-suite), GPU_SUITE_SECONDS (video length, default 6),
# GPU_SUITE_BUDGET (total seconds, default 450).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
PY=${PYTHON:-.venv/bin/python}
[[ -x "$PY" ]] || PY=$(command -v python3)
OUT_DIR=${GPU_SUITE_OUT:-${OUT:-out/gpu-suite}}
SECONDS_OF_VIDEO=${GPU_SUITE_SECONDS:-6}
BUDGET=${GPU_SUITE_BUDGET:-450}
mkdir -p "$OUT_DIR"
export TMPDIR=${TMPDIR:-/tmp} PYTHONUNBUFFERED=1
START=$SECONDS
FAILED=()

log() { printf '\n=== [%3ds] %s\n' "$((SECONDS - START))" "$*"; }

# run_stage NAME BUDGET CMD...: the command under min(BUDGET, what is left - 15 s).
run_stage() {
  local name=$1 budget=$2; shift 2
  local left=$((BUDGET - (SECONDS - START) - 15))
  ((budget > left)) && budget=$left
  if ((budget < 20)); then
    log "$name: SKIPPED (only ${left}s of the ${BUDGET}s budget left)"
    FAILED+=("$name (no time left)")
    return
  fi
  log "$name (budget ${budget}s): $*"
  timeout -k 10 "$budget" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
  local rc=${PIPESTATUS[0]}
  if ((rc == 124 || rc == 137)); then
    log "$name: TIMED OUT after ${budget}s (partial results above and in $OUT_DIR/$name.log)"
    FAILED+=("$name (timed out)")
  elif ((rc != 0)); then
    log "$name: FAILED (exit $rc)"
    FAILED+=("$name (exit $rc)")
  else
    log "$name: done"
  fi
}

log "machine"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
else
  echo "nvidia-smi: not found (no NVIDIA driver on this machine?)"
fi
"$PY" - "$DRY" <<'EOF'
import sys
try:
    import torch
except ImportError as e:
    sys.exit(f"gpu_suite: {sys.executable} cannot import torch ({e}); set PYTHON to an "
             "interpreter with this project installed (scripts/setup.sh) and a CUDA torch")
dry = sys.argv[1] == "1"
print(f"python {sys.version.split()[0]} at {sys.executable}; torch {torch.__version__}, "
      f"CUDA build: {torch.version.cuda or 'none'}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU 0: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability "
          f"{p.major}.{p.minor}; bf16: {torch.cuda.is_bf16_supported()}")
elif not dry:
    if torch.version.cuda is None:
        why = (f"this torch ({torch.__version__}) is a CPU-only build. Point PYTHON at an "
               "interpreter whose torch is a CUDA build (e.g. a venv with `pip install "
               "torch==2.9.1 torchvision==0.24.1`, the default PyPI wheels) and rerun")
    else:
        why = (f"torch is built for CUDA {torch.version.cuda} but sees no GPU: check "
               "nvidia-smi, the driver version and CUDA_VISIBLE_DEVICES")
    sys.exit(f"gpu_suite: no usable CUDA GPU: {why}.")
else:
    print("dry run: no GPU needed")
EOF
rc=$?
if ((rc != 0)); then
  log "stopped: nothing on this machine can run the GPU stages (see above)"
  exit 2
fi

# Only the modules that hold CUDA tests: the others need the platforms (Label Studio, FiftyOne,
# uvicorn) that a bare GPU machine does not have, and none of their tests needs a GPU.
mapfile -t CUDA_MODULES < <(grep -l "pytest.mark.cuda" tests/test_*.py)
if ((DRY)); then
  run_stage cuda_tests 60 "$PY" -m pytest -q -p no:cacheprovider -m cuda --collect-only \
    "${CUDA_MODULES[@]}"
  GPU_ARGS=(--quick)
else
  run_stage cuda_tests 100 "$PY" -m pytest -q -rs -p no:cacheprovider -m cuda \
    "${CUDA_MODULES[@]}"
  GPU_ARGS=(--seconds "$SECONDS_OF_VIDEO")
fi
run_stage eager 130 "$PY" benchmarks/gpu_prelabel.py "${GPU_ARGS[@]}" --breakdown \
  --json "$OUT_DIR/eager.json"
run_stage compile 300 "$PY" benchmarks/gpu_prelabel.py "${GPU_ARGS[@]}" --compile \
  --profile-ops 25 --json "$OUT_DIR/compile.json"

log "summary"
"$PY" benchmarks/report.py --gpu-summary "$OUT_DIR" || FAILED+=("summary")
log "suite finished in $((SECONDS - START))s"
if ((${#FAILED[@]})); then
  echo "not complete: ${FAILED[*]}"
  exit 1
fi
echo "all stages passed"
