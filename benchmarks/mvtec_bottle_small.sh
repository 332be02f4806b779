#!/usr/bin/env bash
# Reproduce benchmarks/results/mvtec_bottle_small_2026-11-29.md on a 2-core CPU, from the repository root.
# ROOT is the MVTec AD folder. TEACHER_DATA=bottle (default) distils the PDN-S teacher from EfficientNet-Lite0
# on the category's own training images (the validation hold-out excluded); TEACHER_DATA=natural uses the 20
# photographs shipped with scikit-image/scikit-learn instead (the first, weaker run).
set -euo pipefail
ROOT=${ROOT:-../shared/data/mvtec_ad}
WORK=${WORK:-runs/bottle_small}
TEACHER_DATA=${TEACHER_DATA:-bottle}
TEACHER=$WORK/teacher_small_lite0_$TEACHER_DATA.safetensors
mkdir -p "$WORK"
if [ ! -f "$TEACHER" ]; then
  if [ "$TEACHER_DATA" = bottle ]; then
    python -m dhkd.data.export_split mvtec_ad "$ROOT" bottle train "$WORK/bottle_train"
    dhkd distill-teacher "$WORK/bottle_train" -o "$TEACHER" --size small --backbone efficientnet-lite0 \
      --image-size 128 --batch-size 8 --lr 1e-3 --crop-scale 0.2 0.5 --hflip --stat-images 64 --seed 0 \
      --steps 300 --checkpoint-every 50 --device cpu
    STEPS=2500; DECAY=2000; LIMIT=27
  else  # benchmarks/results/teacher_distill_2026-11-29.md
    python -m dhkd.teacher.sample_images "$WORK/natural"
    dhkd distill-teacher "$WORK/natural" -o "$TEACHER" --size small --backbone efficientnet-lite0 \
      --image-size 128 --batch-size 8 --lr 1e-3 --crop-scale 0.05 1 --hflip --stat-images 128 --seed 0 \
      --steps 370 --checkpoint-every 10 --device cpu
    STEPS=3000; DECAY=2400; LIMIT=55
  fi
fi
dhkd train --dataset mvtec_ad --root "$ROOT" --category bottle --preset small --teacher "$TEACHER" \
  --steps "$STEPS" --device cpu --output "$WORK/runs" \
  --set lr=5e-4 --set lr_decay_step="$DECAY" --set checkpoint_every=250 --set time_limit_minutes="$LIMIT" \
  --set overlays=true
