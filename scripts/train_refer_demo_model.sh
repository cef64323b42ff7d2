#!/usr/bin/env bash
# Retrain the bundled Ref-AVS demo model (auralsam2_core/data/refer_demo_model) the way it was
# made, in two stages, with the tiny word-level text encoder ("demo-words") and T = 10 frames
# per clip with the middle conditioning frame, as the authors:
#   1. SAM2 and the shared fuser weights start from the bundled AVS demo model, SAM2 frozen
#      (as published), the fuser (with a fresh text_proj) learns to read the expressions:
#      a 3000-step schedule stopped after step 1700 (held-out J referred 0.68 at step 1500 and
#      still rising slowly: frozen, the tiny SAM2 follows the prompts too loosely);
#   2. SAM2 unfrozen, from the AVS demo SAM2 and stage 1's fuser, 2000 steps.
# About 2 hours on 2 quiet CPU cores; never run two trainings at once on such a machine. One
# torch thread: on 2 shared cores two threads wait on each other whenever another process runs
# (measured 13.7 s vs 1.1 s a step).
# Usage: bash scripts/train_refer_demo_model.sh [OUT]   (default runs/refer_demo_model;
# bundle: OUT/bundle). AURALSAM2_REFER_STEPS / AURALSAM2_REFER_STOP / AURALSAM2_REFER_STEPS2
# shorten the run (the tests run a few steps); AURALSAM2_RESUME=1 continues an interrupted
# stage from its checkpoints.
# To ship the result: copy OUT/bundle/* into auralsam2_core/data/refer_demo_model/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/refer_demo_model}
AVS=auralsam2_core/data/demo_model
RESUME=()
if [ "${AURALSAM2_RESUME:-0}" = 1 ]; then RESUME=(--resume); fi
COMMON=(--synthetic --variant refavs --text-encoder demo-words --batch-size 6
        --warmup-steps 50 --threads 1 --eval-every "${AURALSAM2_REFER_EVAL_EVERY:-500}" --quiet)
if [ ! -f "$OUT/stage1/fuser.pth" ]; then
  .venv/bin/auralsam2 train "${COMMON[@]}" --sam2-checkpoint "$AVS/sam2.safetensors" \
    --fuser-init "$AVS/fuser.safetensors" --steps "${AURALSAM2_REFER_STEPS:-3000}" \
    --stop-after "${AURALSAM2_REFER_STOP:-1700}" --lr 5e-4 --seed 2 --out "$OUT/stage1" \
    "${RESUME[@]}"
fi
.venv/bin/auralsam2 train "${COMMON[@]}" --unfreeze-sam2 --sam2-checkpoint "$AVS/sam2.safetensors" \
  --fuser-checkpoint "$OUT/stage1/fuser.pth" --steps "${AURALSAM2_REFER_STEPS2:-2000}" \
  --lr 3e-4 --seed 3 --out "$OUT/stage2" --bundle "$OUT/bundle" "${RESUME[@]}"
