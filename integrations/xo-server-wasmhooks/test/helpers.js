// Real servers for the tests: a `wasmhooks serve` child with real hooks, and
// an HTTP receiver on 127.0.0.1, port 0.
//
// The wasmhooks binary and the built example hooks come from the Rust test
// that runs these (tests/all/xo_plugin.rs): WASMHOOKS_BIN, WASMHOOKS_GUESTS.

import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export const PROTECTED_VM = '0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d'

function required(name) {
  const value = process.env[name]
  if (!value) {
    throw new Error(
      `${name} is not set: these tests are run by \`cargo test\` (tests/all/xo_plugin.rs), which builds wasmhooks and the example hooks`
    )
  }
  return value
}

/** A temp folder, removed by `remove()`. */
export function tempDir(prefix) {
  const path = mkdtempSync(join(tmpdir(), prefix))
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) }
}

/**
 * A hooks folder with example hooks: `hooks` maps a name to
 * `{ guest, toml }` (the built example to copy, and its NAME.toml).
 */
export function hooksFolder(hooks) {
  const dir = tempDir('wasmhooks-hooks-')
  const guests = required('WASMHOOKS_GUESTS')
  for (const [name, { guest, toml }] of Object.entries(hooks)) {
    copyFileSync(join(guests, `${guest}.wasm`), join(dir.path, `${name}.wasm`))
    writeFileSync(join(dir.path, `${name}.toml`), toml)
  }
  return dir
}

/**
 * A running `wasmhooks serve` on the hooks folder `hooks`, its queue in
 * `state`. `port` 0 picks a free one; `restart()` brings it back on the same.
 */
export async function startWasmhooks({ hooks, state, port = 0, token }) {
  const bin = required('WASMHOOKS_BIN')
  const args = ['serve', '--hooks', hooks, '--state', state, '--cache', join(state, 'cache'), '--listen', `127.0.0.1:${port}`]
  const env = { ...process.env, WASMHOOKS_LOG: 'info', NO_COLOR: '1' }
  if (token !== undefined) {
    env.WASMHOOKS_TOKEN = token
  }
  const child = spawn(bin, args, { env, stdio: ['ignore', 'ignore', 'pipe'] })
  let log = ''
  const listening = new Promise((resolve, reject) => {
    child.stderr.setEncoding('utf8')
    child.stderr.on('data', chunk => {
      log += chunk
      const found = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(log)
      if (found) {
        resolve(found[1])
      }
    })
    child.on('exit', code => reject(new Error(`wasmhooks exited (${code}) before listening:\n${log}`)))
    child.on('error', error => reject(new Error(`cannot run ${bin}: ${error.message}`)))
  })
  const url = await listening
  return {
    url,
    child,
    log: () => log,
    /** Stops it (SIGTERM: it finishes what is in flight) and waits. */
    async stop() {
      if (child.exitCode === null) {
        const exited = once(child, 'exit')
        child.kill('SIGTERM')
        await exited
      }
    },
  }
}

/** An HTTP receiver on 127.0.0.1: records each POST's path and JSON body. */
export async function startReceiver() {
  const received = []
  const waiters = []
  const server = createServer(async (request, response) => {
    const chunks = []
    for await (const chunk of request) {
      chunks.push(chunk)
    }
    let body
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'))
    } catch {
      body = Buffer.concat(chunks).toString('utf8')
    }
    received.push({ path: request.url, body })
    response.end('ok')
    for (const waiter of waiters.splice(0)) {
      waiter()
    }
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address()
  return {
    url: path => `http://127.0.0.1:${port}${path}`,
    received,
    /** Resolves once `ready(received)` holds (checked on every request). */
    async until(ready) {
      while (!ready(received)) {
        await new Promise(resolve => waiters.push(resolve))
      }
      return received
    },
    close: () => new Promise(resolve => server.close(resolve)),
  }
}

/** Pending deliveries of a wasmhooks, from its API. */
export async function pendingDeliveries(url) {
  const response = await fetch(`${url}/v1/deliveries?state=pending`)
  return response.json()
}

/**
 * Resolves once a wasmhooks has no delivery pending (a delivery the
 * receiver just got is recorded a moment later): checked every 20 ms,
 * within the test's timeout.
 */
export async function allDelivered(url) {
  while ((await pendingDeliveries(url)).length !== 0) {
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

/** Log lines of `@xen-orchestra/log`, captured: configure it with `transport`. */
export function captureLogs() {
  const lines = []
  return { lines, transport: log => lines.push(log), messages: () => lines.map(l => l.message) }
}
