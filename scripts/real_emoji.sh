#!/usr/bin/env bash
# A real labelled image set for `host-trainer study --objects DIR`: the emoji artwork of four
# vendors from npm, one class per Unicode emoji subcategory, in mini-ImageNet's csv format.
#
#   bash scripts/real_emoji.sh [DIR] [CACHE]
#     DIR   output (default out/emoji): DIR/images/*.png, DIR/{train,val,test}.csv, DIR/summary.json
#     CACHE npm tarballs (default out/emoji-cache); tarballs already there are reused
#   Defaults are relative to the repository root, given paths to the current directory.
#   Idempotent: does nothing when DIR/summary.json exists (written last).
#
# Source (downloaded with `npm pack` only): emoji-datasource@16.0.0 (emoji.json: category,
# subcategory, image, has_img_<vendor>) and emoji-datasource-{apple,google,twitter,facebook}@16.0.0
# (64-px RGBA PNGs under package/img/<vendor>/64/<image>).
#
# Dataset definition (fixed before any training run; not to be tuned), implemented by
# scripts/emoji_dataset.py:
# - one class per `subcategory`; instances: every (emoji, vendor) pair with has_img_<vendor> true,
#   base emoji only (skin-tone variations, kept under the base entry's `skin_variations`, unused);
# - excluded: every subcategory of category "Flags", and "keycap", "alphanum" (text, not objects);
# - classes with >= 40 instances kept, each capped at 120 instances drawn with random.Random(0);
# - classes sorted by name, shuffled with random.Random(0), split into disjoint
#   train / val / test = 64 % / 16 % / 20 % of the classes (test = max(5, round(0.2 n)),
#   val = round(0.16 n), train = rest), i.e. mini-ImageNet's base / val / novel classes;
# - each image composited over mid-grey (128,128,128), saved as 64x64 RGB PNG
#   DIR/images/<class>_<unified>_<vendor>.png (names reduced to [A-Za-z0-9_-]);
# - csv rows `filename,label` (filename inside DIR/images, label = subcategory name);
# - one-line JSON summary (classes / images per split, min / max per class) printed and written to
#   DIR/summary.json.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -ge 1 ]; then DIR=$(realpath -m -- "$1"); else DIR=$ROOT/out/emoji; fi
if [ $# -ge 2 ]; then CACHE=$(realpath -m -- "$2"); else CACHE=$ROOT/out/emoji-cache; fi
VERSION=16.0.0

if [ -f "$DIR/summary.json" ]; then
  echo "$DIR/summary.json exists; nothing to do" >&2
  cat "$DIR/summary.json"
  exit 0
fi

mkdir -p "$CACHE"
for pkg in emoji-datasource emoji-datasource-{apple,google,twitter,facebook}; do
  tgz=$CACHE/$pkg-$VERSION.tgz
  [ -s "$tgz" ] && continue
  echo "npm pack $pkg@$VERSION" >&2
  tmp=$(mktemp -d "$CACHE/.pack.XXXXXX")
  (cd "$tmp" && npm pack --silent "$pkg@$VERSION" > /dev/null)
  mv "$tmp/$pkg-$VERSION.tgz" "$tgz"   # complete tarballs only, so a rerun can trust the cache
  rmdir "$tmp"
done

python3 -c 'import PIL' 2> /dev/null || python3 -m pip install --quiet pillow
mkdir -p "$DIR"
python3 "$ROOT/scripts/emoji_dataset.py" "$CACHE" "$DIR"
