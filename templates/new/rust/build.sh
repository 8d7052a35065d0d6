#!/bin/sh
# Builds this Rust hook: build.sh [OUT.wasm] (default NAME.wasm here).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/NAME.wasm}
cd "$here"
cargo build --quiet --release --target wasm32-wasip2
cp target/wasm32-wasip2/release/CRATE.wasm "$out"
