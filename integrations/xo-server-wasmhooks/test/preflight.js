// `npm test` runs this first: the tests need a wasmhooks binary and the
// example hooks built, which `cargo test` provides. Without them, say so at
// once instead of failing (or waiting) test by test.

import { existsSync } from 'node:fs'
import { join } from 'node:path'

const missing = []
const bin = process.env.WASMHOOKS_BIN
const guests = process.env.WASMHOOKS_GUESTS
if (!bin || !existsSync(bin)) {
  missing.push(`WASMHOOKS_BIN (the wasmhooks binary) is ${bin ? `${bin}, which does not exist` : 'not set'}`)
}
if (!guests || !existsSync(join(guests, 'deny.wasm')) || !existsSync(join(guests, 'forward.wasm'))) {
  missing.push(
    `WASMHOOKS_GUESTS (the folder of the built example hooks, with deny.wasm and forward.wasm) is ${guests ? `${guests}, which lacks them` : 'not set'}`
  )
}
if (!existsSync(new URL('../node_modules/express/package.json', import.meta.url))) {
  missing.push('the npm packages are not installed: run `npm ci` here')
}
if (missing.length !== 0) {
  console.error(`These tests run against a real wasmhooks and real hooks, and cannot start:
  - ${missing.join('\n  - ')}

Run them with the Rust tests, which build both and set the variables, from the
repository's root:
  cargo test --test all xo_plugin
or build both and point at them, from the repository's root:
  cargo build && (cd guest-examples/rust && cargo build --release --target wasm32-wasip2 --target-dir ../../target/wasm)
  WASMHOOKS_BIN=$PWD/target/debug/wasmhooks WASMHOOKS_GUESTS=$PWD/target/wasm/wasm32-wasip2/release \\
    npm --prefix integrations/xo-server-wasmhooks test`)
  process.exit(2)
}
