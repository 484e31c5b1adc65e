#!/usr/bin/env bash
# The main job on the embedded default, end to end:
#   synth (objects + faces) → pretrain (supervised, MoCo-v2, Exemplar-v2) → host evaluation
#   (few-shot on novel objects, landmarks on MAFL faces) → int8 + f32 export → runtime evaluation
#   (runtime-cli, the same episodes) → a side-by-side table (host-trainer report).
#
# The defaults fit about 15 minutes on 2 CPU cores, which buys only a few epochs of a tiny
# ResNet-18: enough to exercise every stage, not to separate the methods (that is the study's job).
# Everything lands in $OUT (default out/main). Re-running resumes: finished steps are skipped,
# an interrupted pretraining continues from its last epoch. Sizes are set for a 2-core CPU;
# override with the variables below (e.g. EPOCHS=50 WIDTH=0.5 bash scripts/main.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-out/main}
WIDTH=${WIDTH:-0.125}         # ResNet-18 width multiplier (0.125 → 8/16/32/64 channels)
SIZE=${SIZE:-32}              # training / evaluation image side
EPOCHS=${EPOCHS:-3}           # pretraining epochs (objects and faces)
LM_EPOCHS=${LM_EPOCHS:-20}    # landmark fine-tuning epochs
BATCH=${BATCH:-64}
QUEUE=${QUEUE:-1024}
PER_CLASS=${PER_CLASS:-30}    # synthetic objects per class (100 classes)
IDENTITIES=${IDENTITIES:-100} # synthetic face identities (16 images each)
EPISODES=${EPISODES:-600}
SEED=${SEED:-0}
METHODS=${METHODS:-"supervised moco-v2 exemplar-v2"}

echo "== building (release) =="
cargo build --release --locked -p host-trainer -p runtime-cli
HT=target/release/host-trainer
RC=target/release/runtime-cli
mkdir -p "$OUT"

step() { echo; echo "== $* =="; }

if [ ! -f "$OUT/data/objects/test.csv" ]; then
  step "synth objects (mini-ImageNet format)"
  $HT synth objects --out "$OUT/data/objects" --per-class "$PER_CLASS" --seed "$SEED" --preview "$OUT/objects_preview.png"
fi
if [ ! -f "$OUT/data/faces/MAFL/testing.txt" ]; then
  step "synth faces (CelebA + MAFL format)"
  $HT synth faces --out "$OUT/data/faces" --identities "$IDENTITIES" --per-identity 16 --seed "$SEED" --preview "$OUT/faces_preview.png"
fi

pretrain() { # data-name method
  local data=$1 m=$2 dir="$OUT/$1/$2"
  local method=${m%-*} version=()
  [ "$method" != "$m" ] && version=(--version "${m##*-}")
  if [ -f "$dir/backbone.safetensors" ]; then return; fi
  if [ -f "$dir/last.safetensors" ]; then
    $HT pretrain --resume "$dir"
  else
    $HT pretrain --method "$method" "${version[@]}" --data "$OUT/data/$data" \
      --arch resnet18 --width "$WIDTH" --image-size "$SIZE" --epochs "$EPOCHS" \
      --batch-size "$BATCH" --queue "$QUEUE" --knn-images 300 --seed "$SEED" --out "$dir" --plot
  fi
}

for m in $METHODS; do
  d="$OUT/objects/$m"
  step "objects / $m: pretrain"
  pretrain objects "$m"
  step "objects / $m: host few-shot, export, runtime few-shot"
  [ -f "$d/fewshot.json" ] || $HT eval fewshot --backbone "$d/backbone.safetensors" --data "$OUT/data/objects" \
      --image-size "$SIZE" --episodes "$EPISODES" --seed "$SEED" --out "$d"
  for dt in int8 f32; do
    flag=""; [ "$dt" = f32 ] && flag="--f32"
    [ -f "$d/model.$dt.safetensors" ] || $HT export --model "$d/backbone.safetensors" --calib-data "$OUT/data/objects" \
        --calib-images 200 --image-size "$SIZE" --out "$d/model.$dt.safetensors" $flag
    [ -f "$d/runtime_fewshot_$dt.json" ] || $RC eval fewshot --model "$d/model.$dt.safetensors" --data "$OUT/data/objects" \
        --episodes "$EPISODES" --seed "$SEED" --json > "$d/runtime_fewshot_$dt.json"
  done

  d="$OUT/faces/$m"
  step "faces / $m: pretrain"
  pretrain faces "$m"
  step "faces / $m: host landmarks, export, runtime landmarks"
  [ -f "$d/landmarks/landmarks.json" ] || $HT eval landmarks --backbone "$d/backbone.safetensors" \
      --data "$OUT/data/faces" --image-size "$SIZE" --epochs "$LM_EPOCHS" --seed "$SEED" --out "$d/landmarks"
  for dt in int8 f32; do
    flag=""; [ "$dt" = f32 ] && flag="--f32"
    [ -f "$d/landmarks.$dt.safetensors" ] || $HT export --model "$d/landmarks/landmarks.safetensors" \
        --calib-data "$OUT/data/faces" --calib-images 200 --out "$d/landmarks.$dt.safetensors" $flag
    [ -f "$d/runtime_mafl_$dt.json" ] || $RC eval mafl --model "$d/landmarks.$dt.safetensors" \
        --data "$OUT/data/faces" --json > "$d/runtime_mafl_$dt.json"
  done
done

d="$OUT/faces/scratch"
step "faces / scratch: landmarks from a random-init backbone (the paper's baseline)"
[ -f "$d/landmarks/landmarks.json" ] || $HT eval landmarks --backbone scratch --width "$WIDTH" \
    --data "$OUT/data/faces" --image-size "$SIZE" --epochs "$LM_EPOCHS" --seed "$SEED" --out "$d/landmarks"

step "results"
$HT report "$OUT" | tee "$OUT/results.md"
