#!/bin/sh
# Builds the Zig `filter` hook: build.sh [OUT.wasm] (default filter.wasm here).
# A plain wasm32-wasi (preview1) command; the engine wraps it as a component.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/filter.wasm}
cd "$here"
zig build-exe filter.zig -target wasm32-wasi -O ReleaseSmall -femit-bin="$out"
