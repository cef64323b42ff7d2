#!/usr/bin/env bash
# The bundled Ref-AVS demo model's recipe: three stages from the bundled AVS demo model, T = 10
# frames per clip with the middle conditioning frame, as the authors; each stage starts from
# the previous one's weights. Every stage uses the demo word encoder with its context layer
# (demo-words), paired queries (--queries-per-clip: each clip named for each of its shapes in
# one batch, so only the text tells the samples apart; two shapes, mostly both sounding or one
# sounding) and the training-only sound-identity loss read from the fuser's decoder-facing
# audio rows (--sound-id-weight 5 --sound-id-rows prompts); README, "Ref-AVS demo model".
#   1. SAM2 frozen (the AVS demo's), the fuser (AVS demo weights + a fresh text_proj) learns to
#      read the expressions: a 3000-step schedule at lr 5e-4 stopped after step 1600;
#   2. SAM2 unfrozen: a 1500-step schedule at lr 3e-4 stopped after step 500;
#   3. a third query per clip names a shape the clip does not show (null expressions), 600
#      steps at lr 1e-4. This stage makes the bundle.
# About an hour on 2 quiet CPU cores (stage 1: 27 min, 2: 12 min, 3: 14 min); never run two
# trainings at once on such a machine. One torch thread: on 2 shared cores two threads wait on
# each other whenever another process runs (measured 13.7 s vs 1.1 s a step).
# Usage: bash scripts/train_refer_demo_model.sh [OUT]   (default runs/refer_demo_model;
# bundle: OUT/bundle). AURALSAM2_REFER_SHORT=1 runs every stage for 2 steps (stopped stages
# 1 of 3; the tests); AURALSAM2_RESUME=1 continues an interrupted stage from its checkpoints
# (finished stages are skipped). The bundled model: OUT/bundle/* copied into
# auralsam2_core/data/refer_demo_model/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/refer_demo_model}
AVS=auralsam2_core/data/demo_model
SHORT=${AURALSAM2_REFER_SHORT:-0}
RESUME=()
if [ "${AURALSAM2_RESUME:-0}" = 1 ]; then RESUME=(--resume); fi
COMMON=(--synthetic --variant refavs --batch-size 6 --warmup-steps 50 --threads 1
        --eval-every "${AURALSAM2_REFER_EVAL_EVERY:-500}" --quiet)
PAIRED=(--queries-per-clip 2 --num-objects 2 --schedule-weights all=0.45,one=0.45,mixed=0.1)

# stage NAME STEPS [STOP] -- ARGS...: one `auralsam2 train` run, skipped once it has finished.
stage() {
  local name=$1 steps=$2 stop=$3; shift 4
  if [ -f "$OUT/$name/train.json" ] || [ -f "$OUT/$name/stopped.json" ]; then return; fi
  if [ "$SHORT" = 1 ]; then
    if [ -n "$stop" ]; then steps=3 stop=1; else steps=2; fi
  fi
  .venv/bin/auralsam2 train "${COMMON[@]}" --steps "$steps" ${stop:+--stop-after "$stop"} \
    --out "$OUT/$name" "$@" "${RESUME[@]}"
}
prev() { echo --sam2-checkpoint "$OUT/$1/sam2.pt" --fuser-checkpoint "$OUT/$1/fuser.pth"; }

SOUND_ID=(--text-encoder demo-words --sound-id-weight 5 --sound-id-rows prompts)

stage stage1 3000 1600 -- "${SOUND_ID[@]}" "${PAIRED[@]}" \
  --sam2-checkpoint "$AVS/sam2.safetensors" --fuser-init "$AVS/fuser.safetensors" \
  --lr 5e-4 --seed 15
stage stage2 1500 500 -- "${SOUND_ID[@]}" --unfreeze-sam2 "${PAIRED[@]}" \
  --sam2-checkpoint "$AVS/sam2.safetensors" --fuser-checkpoint "$OUT/stage1/fuser.pth" \
  --lr 3e-4 --seed 16
# shellcheck disable=SC2046
stage stage3 600 "" -- "${SOUND_ID[@]}" --unfreeze-sam2 --queries-per-clip 3 --num-objects 2 \
  --schedule-weights all=0.45,one=0.45,mixed=0.1 $(prev stage2) --lr 1e-4 --seed 17 \
  --bundle "$OUT/bundle"
