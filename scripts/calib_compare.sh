#!/usr/bin/env bash
# int8 calibration against the f32 export on a finished study's models (README "int8 calibration").
#   cargo build --release -p host-trainer -p runtime-cli
#   bash scripts/calib_compare.sh STUDY_DIR [OUT=STUDY_DIR/calib]
# For every objects backbone and landmark model of the study: export f32, int8 percentile 99.9 and
# int8 MSE, then evaluate each file with runtime-cli on the study's episodes (test split, 5-way,
# 1/5-shot, 600 episodes, 15 queries, linear head, seed 0) or MAFL test faces. Prints one line per
# file: model, export, accuracies (1-shot 5-shot) or IOD error %.
set -euo pipefail
cd "$(dirname "$0")/.."
S=$(realpath "$1"); O=${2:-$S/calib}; mkdir -p "$O"
H=target/release/host-trainer; R=target/release/runtime-cli
for m in supervised moco-v2 exemplar-v2 scratch; do
  for kind in objects faces; do
    if [ $kind = objects ]; then b=$S/objects/$m/backbone.safetensors; else b=$S/faces/$m/landmarks/landmarks.safetensors; fi
    D=$S/data/$kind
    $H export --model "$b" --f32 --out "$O/$kind-$m.f32.safetensors" > /dev/null
    for c in percentile mse; do
      $H export --model "$b" --calib-data "$D" --calib-images 200 --calib $c --out "$O/$kind-$m.$c.safetensors" > /dev/null
    done
    for k in f32 percentile mse; do
      f=$O/$kind-$m.$k.safetensors
      if [ $kind = objects ]; then
        r=$($R eval fewshot --model "$f" --data "$D" --split test --way 5 --shot 1,5 --episodes 600 --query 15 --classifier linear --seed 0 --json |
          python3 -c 'import sys,json; print(" ".join("%.2f" % r["accuracy"] for r in json.load(sys.stdin)["results"]))')
      else
        r=$($R eval mafl --model "$f" --data "$D" --json | python3 -c 'import sys,json; print("%.2f" % json.load(sys.stdin)["iod_error"])')
      fi
      echo "$kind $m $k $r"
    done
  done
done
