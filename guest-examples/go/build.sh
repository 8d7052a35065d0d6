#!/bin/sh
# Builds the Go `slack` hook: build.sh [OUT.wasm] (default slack.wasm here).
#   1. wit-bindgen go: the world's bindings (a Go module `wit_component`),
#      into a scratch folder next to a copy of export_wit_world/
#   2. go build for wasip1 as a c-shared (reactor) core module; the bindings'
#      runtime package go.bytecodealliance.org/pkg comes from the copy that
#      scripts/install-guest-toolchains.sh put in .toolchains/go-pkg (the Go
#      module proxy is not needed)
#   3. wasm-tools component embed + new, with the WASI preview1 reactor
#      adapter: a component of the hook world
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/slack.wasm}
tools=$(dirname "$(command -v wit-bindgen)")
adapter=${WASI_ADAPTER:-$tools/wasi_snapshot_preview1.reactor.wasm}
go_pkg=${WASMHOOKS_GO_PKG:-$tools/go-pkg}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The WIT: in this folder (a `wasmhooks new` scaffold) or the repository's.
wit=$here/wit
[ -d "$wit" ] || wit=$here/../../wit
cp -R "$here/export_wit_world" "$work/"
cd "$work"
wit-bindgen go "$wit" --world hook >bindgen.log 2>&1 || { cat bindgen.log >&2; exit 1; }
go mod edit -replace "go.bytecodealliance.org/pkg=$go_pkg"
# -checklinkname=0: the runtime package links to runtime.sbrk, for
# allocations made before Go's runtime has started.
GOOS=wasip1 GOARCH=wasm GOTOOLCHAIN=local GOPROXY=off GOFLAGS=-mod=mod \
  go build -buildmode=c-shared -ldflags=-checklinkname=0 -o core.wasm .
wasm-tools component embed "$wit" --world hook core.wasm -o embedded.wasm
wasm-tools component new embedded.wasm --realloc-via-memory-grow \
  --adapt "wasi_snapshot_preview1=$adapter" -o "$out"
