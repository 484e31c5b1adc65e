#!/usr/bin/env bash
# Fails when the checked-in header, runtime-ffi/include/runtime_ffi.h, differs from what cbindgen
# generates from the sources now (an API change without `cbindgen ... --output` after it).
# Needs cbindgen; without it the check is skipped with a note (scripts/test.sh installs it, at the
# version below: another version may lay the header out differently).
set -euo pipefail
cd "$(dirname "$0")/.."

want_version=0.29.4
regen="cbindgen --config runtime-ffi/cbindgen.toml --crate runtime-ffi --output runtime-ffi/include/runtime_ffi.h"

if ! command -v cbindgen >/dev/null 2>&1; then
  echo "runtime-ffi/check.sh: cbindgen not installed, header check skipped" \
    "(cargo install cbindgen --version $want_version --locked)"
  exit 0
fi
have_version=$(cbindgen --version | awk '{print $2}')

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
cbindgen --quiet --config runtime-ffi/cbindgen.toml --crate runtime-ffi --output "$tmp"
if ! diff -u runtime-ffi/include/runtime_ffi.h "$tmp"; then
  echo "error: runtime-ffi/include/runtime_ffi.h is stale (diff above: - checked in, + generated)." >&2
  echo "Regenerate it from the workspace root with: $regen" >&2
  if [ "$have_version" != "$want_version" ]; then
    echo "(cbindgen here is $have_version, the header was made with $want_version: install that" \
      "version if the diff is layout only)" >&2
  fi
  exit 1
fi
echo "runtime-ffi/include/runtime_ffi.h matches cbindgen $have_version"
