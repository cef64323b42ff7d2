#!/usr/bin/env bash
# Retrain the bundled Ref-AVS demo model (auralsam2_core/data/refer_demo_model) the way it was
# made: SAM2 and the shared fuser weights start from the bundled AVS demo model, SAM2 stays
# frozen (as published), the fuser (with a fresh text_proj) trains on synthetic clips with
# expressions naming a shape, read by the tiny word-level text encoder ("demo-words"). T = 10
# frames per clip, middle conditioning frame, as the authors. About an hour on 2 quiet CPU
# cores; never run two trainings at once on such a machine. One torch thread: on 2 shared cores
# two threads wait on each other whenever another process runs (measured 13.7 s vs 1.1 s a step).
# Usage: bash scripts/train_refer_demo_model.sh [OUT]   (default runs/refer_demo_model;
# bundle: OUT/bundle). AURALSAM2_REFER_STEPS shortens the run (the tests run 2 steps);
# AURALSAM2_RESUME=1 continues an interrupted run from OUT/checkpoints.
# To ship the result: copy OUT/bundle/* into auralsam2_core/data/refer_demo_model/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/refer_demo_model}
AVS=auralsam2_core/data/demo_model
RESUME=()
if [ "${AURALSAM2_RESUME:-0}" = 1 ]; then RESUME=(--resume); fi
.venv/bin/auralsam2 train --synthetic --variant refavs --text-encoder demo-words \
  --sam2-checkpoint "$AVS/sam2.safetensors" --fuser-init "$AVS/fuser.safetensors" \
  --steps "${AURALSAM2_REFER_STEPS:-3000}" --batch-size 6 --lr 5e-4 --warmup-steps 50 \
  --seed 2 --threads 1 --eval-every "${AURALSAM2_REFER_EVAL_EVERY:-500}" --quiet --out "$OUT" \
  --bundle "$OUT/bundle" "${RESUME[@]}"
