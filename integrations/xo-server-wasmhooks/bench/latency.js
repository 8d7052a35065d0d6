// The latency a guarded call adds (wrapper → wasmhooks → verdict), against
// the same call unguarded, in the stand-in xo-server: p50 and p99.
//
//   cargo build --release && (cd guest-examples/rust && cargo build --release --target wasm32-wasip2 --target-dir ../../target/wasm)
//   WASMHOOKS_BIN=target/release/wasmhooks WASMHOOKS_GUESTS=target/wasm/wasm32-wasip2/release \
//     node integrations/xo-server-wasmhooks/bench/latency.js [CALLS]

import { configure } from '@xen-orchestra/log/configure'
import { Client } from '../lib/client.js'
import { FakeXo, connection } from '../test/xo/app.js'
import { PLUGIN, PLUGIN_DIR, PROTECTED_VM, hooksFolder, startWasmhooks, tempDir } from '../test/helpers.js'

configure(() => {})
const calls = Number(process.argv[2] ?? 5000)
const warmup = Math.min(500, calls)

const xo = new FakeXo()
xo.addUser({ id: 'u', email: 'bench@example.org', permission: 'admin' })
xo.addApiMethod('vm.stop', async () => true, { permission: 'write', params: { id: { type: 'string' } } })
const session = connection({ userId: 'u' })

/** p50, p99 (µs) and Node's CPU per call (µs) of `calls` sequential `call()`s, after a warm-up. */
async function timed(label, call) {
  for (let i = 0; i < warmup; i++) {
    await call()
  }
  const took = new Float64Array(calls)
  const cpu = process.cpuUsage()
  for (let i = 0; i < calls; i++) {
    const started = process.hrtime.bigint()
    await call()
    took[i] = Number(process.hrtime.bigint() - started) / 1e3
  }
  const used = process.cpuUsage(cpu)
  took.sort()
  const at = q => took[Math.min(calls - 1, Math.floor(q * calls))]
  const row = { p50: at(0.5), p99: at(0.99), cpu: (used.user + used.system) / calls }
  console.log(
    `${label.padEnd(10)} p50 ${row.p50.toFixed(0).padStart(6)} µs   p99 ${row.p99.toFixed(0).padStart(6)} µs   node CPU ${row.cpu.toFixed(0).padStart(4)} µs/call`
  )
  return row
}

async function measure(label) {
  const params = { id: '1e1f1c5a-6b3d-4c2e-9a8f-7d6c5b4a3e21' }
  return timed(label, () => xo.callApiMethod(session, 'vm.stop', params))
}

const hooks = hooksFolder({ deny: { guest: 'deny', toml: `[settings]\nprotected = ["${PROTECTED_VM}"]\n` } })
const state = tempDir('wasmhooks-bench-')
const wasmhooks = await startWasmhooks({ hooks: hooks.path, state: state.path })
try {
  console.log(`${calls} sequential vm.stop calls (the deny hook runs on each, and allows it), after ${warmup} to warm up`)
  // The floor under the guard: one loopback round trip from Node to
  // wasmhooks through the plugin's own client, with no event.
  const client = new Client({ url: wasmhooks.url })
  const floor = await timed('round trip', () => client.health(5000))
  client.close()
  const unguarded = await measure('unguarded')
  await xo.plugins.register(PLUGIN_DIR, PLUGIN)
  await xo.plugins.configure(PLUGIN, { url: wasmhooks.url, guard: ['vm.stop'] })
  await xo.plugins.load(PLUGIN)
  const guarded = await measure('guarded')
  await xo.plugins.instance(PLUGIN).idle()
  await xo.plugins.unload(PLUGIN)
  console.log(
    `added by the guard: p50 +${(guarded.p50 - unguarded.p50).toFixed(0)} µs, p99 +${(guarded.p99 - unguarded.p99).toFixed(0)} µs` +
      ` (a bare round trip: p50 ${floor.p50.toFixed(0)} µs, p99 ${floor.p99.toFixed(0)} µs;` +
      ` the guard over it: p50 ${((guarded.p50 - unguarded.p50) / floor.p50).toFixed(2)}x, p99 ${((guarded.p99 - unguarded.p99) / floor.p99).toFixed(2)}x)`
  )
} finally {
  await wasmhooks.stop()
  hooks.remove()
  state.remove()
}
