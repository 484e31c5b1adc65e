#!/bin/bash
# The MoCo-v2 pretext screen of README "Did each pretraining learn?": ten-epoch MoCo-v2 runs on the
# `small` preset's objects (width 0.125, 32 px, batch 64, 8 BN groups, cosine lr), one setting
# changed per run. Judged on the pretext only (loss against chance, instance top-1, held-out base
# kNN), never on transfer. Two runs at a time, one thread each (about 8 min per pair on 2 cores).
#   OBJECTS=DIR (default out/study/data/objects, made by `host-trainer study --preset small`)
#   OUT=DIR (default out/moco-screen)
set -euo pipefail
cd "$(dirname "$0")/.."
B=${CARGO_TARGET_DIR:-target}/release/host-trainer
OBJECTS=${OBJECTS:-out/study/data/objects}
OUT=${OUT:-out/moco-screen}
mkdir -p "$OUT"
run() {
  local name=$1; shift
  RAYON_NUM_THREADS=1 "$B" pretrain --method moco --version v2 --data "$OBJECTS" --width 0.125 \
    --image-size 32 --epochs 10 --batch-size 64 --bn-groups 8 --knn-images 200 --quiet \
    --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
}
run base     --lr 0.03 --queue 1024 --momentum 0.99 & run tau01    --lr 0.03 --queue 1024 --momentum 0.99 --tau 0.1 & wait
run wd5e4    --lr 0.03 --queue 1024 --momentum 0.99 --weight-decay 5e-4 & run lr012 --lr 0.12 --queue 1024 --momentum 0.99 & wait
run noblur   --lr 0.03 --queue 1024 --momentum 0.99 --aug hflip,rrc,jitter,gray & run q256 --lr 0.03 --queue 256 --momentum 0.99 & wait
run m0996    --lr 0.03 --queue 1024 --momentum 0.996 & run m0999 --lr 0.03 --queue 1024 --momentum 0.999 & wait
run m0999lr1 --lr 0.0075 --queue 1024 --momentum 0.999 & wait
for d in "$OUT"/*/; do
  echo "$(basename "$d"): $(grep '"kind":"epoch"' "$d/metrics.jsonl" | tail -1)"
done
