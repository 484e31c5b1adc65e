#!/usr/bin/env bash
# Builds the C example (examples/c/fewshot_landmarks.c) with the host C compiler against the
# host staticlib, runs it on the committed fixtures, and checks that its landmarks and features
# are the very floats `runtime-cli infer --json --exact-size` gives on the same pixels
# (runtime-ffi/fixtures/face.png is face.rgb as a PNG; objects/<name>.rgb are the PNGs of
# fixtures/tiny/objects/images). Honours CARGO_TARGET_DIR and CC; needs python3 for the
# comparison. RT_FFI_PROFILE=dev builds with the dev profile (what scripts/test.sh uses: its
# `cargo test` has already compiled everything for that profile); the default is release.
# RT_FFI_CARGO_ARGS replaces the package selection (default `-p runtime-ffi -p runtime-cli`):
# scripts/test.sh passes its own `--workspace --features ...`, so that feature unification, and
# hence every compiled crate, is the one its `cargo test` built and nothing is rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac
out=$target/runtime-ffi-c
mkdir -p "$out"

case ${RT_FFI_PROFILE:-release} in
  dev) profile_args=(); profile_dir=debug ;;
  release) profile_args=(--release); profile_dir=release ;;
  *) echo "RT_FFI_PROFILE must be dev or release" >&2; exit 2 ;;
esac
read -r -a select <<<"${RT_FFI_CARGO_ARGS:--p runtime-ffi -p runtime-cli}"
cargo build "${select[@]}" "${profile_args[@]}" --locked

# The whole build line of a C program using the API on a Linux host.
${CC:-cc} -std=c11 -O2 -Wall -Wextra -Werror -pedantic -I runtime-ffi/include \
  runtime-ffi/examples/c/fewshot_landmarks.c "$target/$profile_dir/libruntime_ffi.a" \
  -lpthread -ldl -lm -o "$out/fewshot_landmarks"

landmarks=fixtures/tiny/landmarks-int8.safetensors
backbone=fixtures/tiny/backbone-int8.safetensors
"$out/fewshot_landmarks" "$landmarks" "$backbone" runtime-ffi/fixtures | tee "$out/c-example.txt"

cli=$target/$profile_dir/runtime-cli
"$cli" infer --model "$landmarks" --exact-size --json runtime-ffi/fixtures/face.png \
  >"$out/cli-landmarks.json"
mapfile -t objects < <(awk '!/^#/ { print "fixtures/tiny/objects/images/" $3 ".png" }' \
  runtime-ffi/fixtures/episode.txt)
"$cli" infer --model "$backbone" --exact-size --json "${objects[@]}" >"$out/cli-features.json"

python3 - "$out/c-example.txt" "$out/cli-landmarks.json" "$out/cli-features.json" <<'PY'
"""Compares the C example's printed values with runtime-cli's JSON as f32 bit patterns: both
texts are exact decimal renderings of f32 values (9 significant digits in C, the shortest
round-trip form in JSON), so rounding each to the nearest f32 recovers the float."""
import json
import os
import struct
import sys

def bits(x):
    return struct.unpack("<I", struct.pack("<f", float(x)))[0]

c_text, lm_json, feat_json = sys.argv[1:]
c = {}
for line in open(c_text):
    t = line.split()
    if t and t[0] == "landmarks":
        vals = t[2:]
        c[("landmarks", "face")] = {vals[i]: vals[i + 1 : i + 3] for i in range(0, len(vals), 3)}
    elif t and t[0] == "features":
        c[("features", t[1])] = t[2:]

cli = {}
for r in json.load(open(lm_json))["results"]:
    cli[("landmarks", "face")] = r["landmarks"]
for r in json.load(open(feat_json))["results"]:
    cli[("features", os.path.splitext(os.path.basename(r["image"]))[0])] = r["features"]

bad, n = [], 0
if set(c) != set(cli):
    bad.append(f"different images: C {sorted(c)} vs runtime-cli {sorted(cli)}")
for key in sorted(set(c) & set(cli)):
    a, b = c[key], cli[key]
    if key[0] == "landmarks":
        if set(a) != set(b):
            bad.append(f"{key}: landmark names differ: {sorted(a)} vs {sorted(b)}")
            continue
        pairs = [(f"{name}.{xy}", a[name][i], b[name][i]) for name in a for i, xy in enumerate("xy")]
    else:
        if len(a) != len(b):
            bad.append(f"{key}: {len(a)} values vs {len(b)}")
            continue
        pairs = [(str(i), x, y) for i, (x, y) in enumerate(zip(a, b))]
    for what, x, y in pairs:
        n += 1
        if bits(x) != bits(y):
            bad.append(f"{key[0]} {key[1]}[{what}]: C {x} vs runtime-cli {y}")
if bad:
    print("C example != runtime-cli:\n  " + "\n  ".join(bad[:20]), file=sys.stderr)
    sys.exit(1)
print(f"C example == runtime-cli infer --exact-size: {n} values on {len(c)} images, bit for bit")
PY
