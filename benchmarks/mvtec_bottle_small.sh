#!/usr/bin/env bash
# Reproduce benchmarks/results/mvtec_bottle_small_2026-11-29.md: an offline teacher, then the `small` preset
# on MVTec AD bottle, all on a 2-core CPU. Run from the repository root; ROOT is the MVTec AD folder.
set -euo pipefail
ROOT=${ROOT:-../shared/data/mvtec_ad}
WORK=${WORK:-runs/bottle_small}
TEACHER=$WORK/teacher_small_lite0.safetensors
mkdir -p "$WORK"
if [ ! -f "$TEACHER" ]; then  # benchmarks/results/teacher_distill_2026-11-29.md
  python -m dhkd.teacher.sample_images "$WORK/natural"
  dhkd distill-teacher "$WORK/natural" -o "$TEACHER" --size small --backbone efficientnet-lite0 \
    --image-size 128 --batch-size 8 --lr 1e-3 --crop-scale 0.05 1 --hflip --stat-images 128 --seed 0 \
    --steps 370 --checkpoint-every 10 --device cpu
fi
dhkd train --dataset mvtec_ad --root "$ROOT" --category bottle --preset small --teacher "$TEACHER" \
  --steps 3000 --device cpu --output "$WORK/runs" \
  --set lr=5e-4 --set lr_decay_step=2400 --set checkpoint_every=250 --set time_limit_minutes=55 \
  --set overlays=true
