#!/bin/sh
# Builds the Python `slack` hook: build.sh [OUT.wasm] (default slack.wasm here).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/slack.wasm}
# The WIT: in this folder (a `wasmhooks new` scaffold) or the repository's.
wit=$here/wit
[ -d "$wit" ] || wit=$here/../../wit
cd "$here"
componentize-py -d "$wit" -w hook componentize app -o "$out"
