#!/bin/sh
# Builds the C `forward` hook: build.sh [OUT.wasm] (default forward.wasm here).
#   1. wit-bindgen c: the world's bindings, into gen/
#   2. clang with wasi-libc: a wasm32-wasi (preview1) reactor core module
#   3. wasm-tools component new, with the WASI preview1 reactor adapter: a
#      component of the hook world
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/forward.wasm}
adapter=${WASI_ADAPTER:-$(dirname "$(command -v wit-bindgen)")/wasi_snapshot_preview1.reactor.wasm}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The WIT: in this folder (a `wasmhooks new` scaffold) or the repository's.
wit=$here/wit
[ -d "$wit" ] || wit=$here/../../wit
cd "$here"
wit-bindgen c "$wit" --world hook --out-dir gen >/dev/null 2>&1
clang --target=wasm32-wasi --sysroot=/usr -mexec-model=reactor -O2 -Wall -Werror \
  -o "$work/core.wasm" forward.c gen/hook.c gen/hook_component_type.o
wasm-tools component new "$work/core.wasm" --adapt "wasi_snapshot_preview1=$adapter" -o "$out"
