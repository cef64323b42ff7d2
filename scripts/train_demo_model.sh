#!/usr/bin/env bash
# Retrain the bundled demo model the way it was made (its model.json keeps both commands under
# "training" and "training.started_from"): stage 1 trains SAM2 + fuser from random weights
# (4000 steps), stage 2 continues from stage 1 at a lower learning rate (2500 steps). About
# 75 minutes on 2 quiet CPU cores; never run two trainings at once on such a machine.
# Usage: bash scripts/train_demo_model.sh [OUT]   (default runs/demo_model; bundle: OUT/bundle)
# AURALSAM2_STAGE1_STEPS / AURALSAM2_STAGE2_STEPS shorten the stages (the tests run 2 + 1).
# To ship the result: copy OUT/bundle/* into auralsam2_core/data/demo_model/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/demo_model}
A=.venv/bin/auralsam2
$A train --synthetic --unfreeze-sam2 --steps "${AURALSAM2_STAGE1_STEPS:-4000}" \
  --batch-size 6 --seed 0 --eval-every 500 --quiet --out "$OUT/stage1" \
  --bundle "$OUT/stage1/bundle"
$A train --synthetic --unfreeze-sam2 --sam2-checkpoint "$OUT/stage1/bundle/sam2.safetensors" \
  --fuser-checkpoint "$OUT/stage1/bundle/fuser.safetensors" \
  --steps "${AURALSAM2_STAGE2_STEPS:-2500}" --batch-size 6 --lr 3e-4 --warmup-steps 100 \
  --seed 1 --eval-every 500 --quiet --out "$OUT/stage2" --bundle "$OUT/bundle"
