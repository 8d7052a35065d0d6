// Real servers for the tests: a `wasmhooks serve` child with real hooks, and
// an HTTP receiver on 127.0.0.1, port 0.
//
// The wasmhooks binary and the built example hooks come from the Rust test
// that runs these (tests/all/xo_plugin.rs): WASMHOOKS_BIN, WASMHOOKS_GUESTS.
// Without them, preflight.js stops the run at once and says how to run it.

import './preflight.js'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { after, before } from 'node:test'
import { once } from 'node:events'
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { FakeXo } from './xo/app.js'
import { FakeXapi } from './xo/rest.js'

export const PROTECTED_VM = '0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d'

/** The plugin's folder: what xo-server finds in its plugin lookup paths. */
export const PLUGIN_DIR = join(dirname(fileURLToPath(import.meta.url)), '..')

/** The plugin's name in XO: its folder is `xo-server-NAME`. */
export const PLUGIN = 'wasmhooks'

/**
 * The plugin registered in the stand-in `xo` as xo-server registers it,
 * configured with `configuration` and loaded as XO's Settings → Plugins
 * does (`plugin.configure`, then `plugin.load`); unloaded when test `t`
 * ends, however it ends. Returns the plugin's instance.
 */
export async function loadPlugin(t, xo, configuration) {
  await xo.plugins.register(PLUGIN_DIR, PLUGIN)
  t.after(async () => {
    if (xo.plugins.get(PLUGIN).loaded) {
      await xo.plugins.unload(PLUGIN)
    }
  })
  await xo.plugins.configure(PLUGIN, configuration)
  await xo.plugins.load(PLUGIN)
  return xo.plugins.instance(PLUGIN)
}

function required(name) {
  return process.env[name]
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

/**
 * An HTTP receiver on 127.0.0.1: records each request's path, headers and
 * JSON body. It answers `ok`, or, given `answer`, `answer({ path, body })`
 * as JSON: standing in for wasmhooks itself, to see the requests the plugin
 * sends it.
 */
export async function startReceiver({ answer } = {}) {
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
    received.push({ path: request.url, headers: request.headers, body })
    if (answer === undefined) {
      response.end('ok')
    } else {
      response.setHeader('content-type', 'application/json')
      response.end(JSON.stringify(answer({ path: request.url, body })))
    }
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

/** A W3C `traceparent`: version 00, trace id, parent id, flags. */
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])$/

/**
 * The `traceparent` headers of the events a stand-in wasmhooks
 * (`startReceiver` with `answer`) was sent, by call, in the order the calls
 * were first seen: callId → { method, pre: [...], post: [...] }.
 */
export function tracesByCall(received) {
  const calls = new Map()
  for (const { path, headers, body } of received) {
    if (path === '/v1/events') {
      let call = calls.get(body.callId)
      if (call === undefined) {
        call = { method: body.method, pre: [], post: [] }
        calls.set(body.callId, call)
      }
      call[body.type].push(headers.traceparent)
    }
  }
  return calls
}

/** Whether every call in `tracesByCall(received)`, `count` of them, has its pre and post events. */
export function callsComplete(count) {
  return received => {
    const calls = [...tracesByCall(received).values()]
    return calls.length === count && calls.every(call => call.pre.length !== 0 && call.post.length !== 0)
  }
}

/**
 * Checks that a call (from `tracesByCall`) sent one pre and one post event
 * with the same well-formed trace context; returns its trace id and flags.
 */
export function oneTrace(call) {
  assert.equal(call.pre.length, 1, `${call.method}: one pre event`)
  assert.equal(call.post.length, 1, `${call.method}: one post event`)
  const [pre, post] = [call.pre[0], call.post[0]]
  const parsed = TRACEPARENT.exec(pre)
  assert.ok(parsed !== null, `${call.method}: a W3C traceparent, not ${pre}`)
  const [, traceId, parentId, flags] = parsed
  assert.notEqual(traceId, '0'.repeat(32), 'a valid trace id')
  assert.notEqual(parentId, '0'.repeat(16), 'a valid parent id')
  assert.equal(post, pre, `${call.method}: the post event continues the pre event's trace`)
  return { traceId, flags }
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

export const OTHER_VM = '1e1f1c5a-6b3d-4c2e-9a8f-7d6c5b4a3e21'

/**
 * A stand-in XO with users (alice, an admin; bob, read-only), two VMs, and
 * the JSON-RPC methods the tests call, each running the fake XAPI's
 * operation as the REST controllers do, so both entry points record the
 * same thing in `xo.ran`.
 */
export function standIn() {
  const xo = new FakeXo()
  xo.xapi = new FakeXapi(xo)
  xo.addUser({ id: 'u-alice', email: 'alice@example.org', permission: 'admin' })
  xo.addUser({ id: 'u-bob', email: 'bob@example.org', permission: 'read' })
  xo.addUser({ id: 'u-carol', email: 'carol@example.org', permission: 'none' })
  for (const id of [PROTECTED_VM, OTHER_VM]) {
    xo.xapi.add({ id, type: 'VM' })
  }
  const vm = { id: { type: 'string' } }
  xo.addApiMethod(
    'vm.delete',
    async function ({ id }) {
      if (this !== xo) {
        throw new Error('xo-server calls a method with the app as this')
      }
      await xo.xapi.call('VM.destroy', id)
    },
    { permission: 'admin', params: vm, description: 'delete a VM' }
  )
  xo.addApiMethod('vm.start', ({ id }) => xo.xapi.call('VM.start', id), {
    permission: 'write',
    params: vm,
    description: 'start a VM',
  })
  xo.addApiMethod(
    'group.create',
    async ({ name }) => {
      xo.ran.push(['group.create', name])
      return `group-${xo.ran.length}`
    },
    { permission: 'admin', params: { name: { type: 'string' } } }
  )
  return xo
}

/**
 * A REST request to the stand-in: `token` as XO's `authenticationToken`
 * cookie, `body` as JSON. Resolves to `{ status, headers, body }`.
 */
export async function rest(base, verb, path, { token, body, headers = {} } = {}) {
  const init = { method: verb, headers: { ...headers } }
  if (token !== undefined) {
    init.headers.cookie = `authenticationToken=${token}`
  }
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json'
    init.body = JSON.stringify(body)
  }
  const response = await fetch(base + path, init)
  const text = await response.text()
  let parsed
  try {
    parsed = text === '' ? undefined : JSON.parse(text)
  } catch {
    parsed = text
  }
  return { status: response.status, headers: response.headers, body: parsed }
}

/** Resolves to the log of XO task `id` once it has ended (from `xo.tasks` updates). */
export function taskEnded(xo, id) {
  const ended = log => log !== undefined && log.status !== 'pending'
  return new Promise(resolve => {
    const onUpdate = log => {
      if (log.id === id && ended(log)) {
        xo.tasks.off('update', onUpdate)
        resolve(log)
      }
    }
    // Listening first: an update between the two is not missed.
    xo.tasks.on('update', onUpdate)
    xo.tasks.get(id).then(log => ended(log) && onUpdate(log), () => {})
  })
}

/**
 * For a `describe` block: a receiver, a hooks folder (`hooksOf(receiver)`,
 * as `hooksFolder` takes them) and a `wasmhooks serve` on it, started
 * before its tests and stopped and removed after them. The returned object
 * holds `receiver` and `wasmhooks` once started.
 */
export function servedHooks(hooksOf) {
  const served = {}
  let folder, state
  before(async () => {
    served.receiver = await startReceiver()
    folder = hooksFolder(hooksOf(served.receiver))
    state = tempDir('wasmhooks-state-')
    served.wasmhooks = await startWasmhooks({ hooks: folder.path, state: state.path })
  }, { timeout: 90_000 })
  after(async () => {
    await served.wasmhooks?.stop()
    await served.receiver?.close()
    folder?.remove()
    state?.remove()
  })
  return served
}
