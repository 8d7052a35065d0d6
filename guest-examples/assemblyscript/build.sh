#!/bin/sh
# Builds the AssemblyScript `deny` hook: build.sh [OUT.wasm] (default deny.wasm here).
# A wasm32 WASI (preview1) command through @assemblyscript/wasi-shim; the
# engine wraps it as a component. The npm packages come from the guest
# toolchains folder (scripts/install-guest-toolchains.sh).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/deny.wasm}
modules=${ASC_NODE_MODULES:-$(cd "$(dirname "$(command -v asc)")/../node/node_modules" && pwd)}
cd "$here"
# The shim's settings (its asconfig.json), spelled out: asc 0.28 resolves
# `--lib` only as a path relative to the working directory.
asc deny.ts -o "$out" --optimizeLevel 3 --shrinkLevel 1 --noAssert \
  --path "$(realpath --relative-to=. "$modules")" \
  --lib "$(realpath --relative-to=. "$modules/@assemblyscript/wasi-shim/assembly")" \
  --exportStart _start --use ASC_WASI=1 --use abort=wasi_abort --use trace=wasi_trace \
  --use seed=wasi_seed --use console=wasi_console --use crypto=wasi_crypto \
  --use performance=wasi_performance --use process=wasi_process --use Date=wasi_Date
