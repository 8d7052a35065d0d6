// The plugin's JSON-RPC path in the stand-in xo-server (xo/), against a real
// `wasmhooks serve` with the Rust `deny` and `forward` examples and a real
// receiver.

import { configure } from '@xen-orchestra/log/configure'
import assert from 'node:assert/strict'
import { createServer as createHttpServer } from 'node:http'
import { createServer } from 'node:net'
import { before, describe, test } from 'node:test'
import { connection } from './xo/app.js'
import {
  OTHER_VM,
  PLUGIN,
  PROTECTED_VM,
  allDelivered,
  callsComplete,
  captureLogs,
  hooksFolder,
  loadPlugin,
  oneTrace,
  servedHooks,
  standIn,
  startReceiver,
  startWasmhooks,
  tempDir,
  tracesByCall,
} from './helpers.js'

// Each test's bound: far past what it takes, so a hang fails it.
const T = { timeout: 90_000 }
const logs = captureLogs()
configure(logs.transport)

const DENY = `[settings]\nprotected = ["${PROTECTED_VM}"]\n`
const forward = url => `allow_hosts = ["127.0.0.1"]\n[settings]\nurl = "${url}"\n`
const fakeXo = standIn
const loaded = loadPlugin

const alice = connection({ userId: 'u-alice', ip: '::ffff:192.0.2.44' })

/** A loopback URL nothing listens on. */
async function nobodyThere() {
  const server = createServer().listen(0, '127.0.0.1')
  await new Promise(resolve => server.once('listening', resolve))
  const { port } = server.address()
  await new Promise(resolve => server.close(resolve))
  return `http://127.0.0.1:${port}`
}

/**
 * An HTTP server on loopback that answers each request with `answer(req)`
 * (a JSON value), or never if `answer` returns undefined; counts the
 * connections it accepts.
 */
async function stub(answer) {
  const server = createHttpServer((req, res) => {
    req.resume()
    req.on('end', () => {
      const body = answer(req)
      if (body !== undefined) {
        res.setHeader('content-type', 'application/json')
        res.end(JSON.stringify(body))
      }
    })
  })
  let connections = 0
  server.on('connection', () => connections++)
  await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    connections: () => connections,
    close: () => {
      server.closeAllConnections()
      return new Promise(resolve => server.close(resolve))
    },
  }
}

function received(receiver, method) {
  return receiver.received.filter(r => r.body.method === method)
}

describe('with deny and forward', () => {
  const served = servedHooks(receiver => ({
    deny: { guest: 'deny', toml: DENY },
    forward: { guest: 'forward', toml: forward(receiver.url('/forward')) },
  }))
  let receiver, wasmhooks
  before(() => ({ receiver, wasmhooks } = served))

  test('a veto stops the call with the reason; an allowed call runs; each event is sent once', T, async t => {
    const xo = fakeXo()
    const plugin = await loaded(t, xo, { url: wasmhooks.url })
    // forward subscribes to every method's pre event: all are guarded.
    assert.deepEqual(plugin.guarded, ['group.create', 'vm.delete', 'vm.start'])

    await assert.rejects(xo.callApiMethod(alice, 'vm.delete', { id: PROTECTED_VM }), error => {
      assert.equal(error.code, 5, 'forbiddenOperation')
      assert.equal(error.data.hook, 'deny')
      assert.match(error.message, /^vm\.delete: refused by the wasmhooks hook deny: .*0a9b8c7d/)
      assert.equal(typeof error.toJsonRpcError, 'function', 'XO sends it to the client as is')
      return true
    })
    assert.deepEqual(xo.ran, [], 'the vetoed method never ran')

    assert.equal(await xo.callApiMethod(alice, 'vm.start', { id: OTHER_VM }), true)
    assert.deepEqual(xo.ran, [['VM.start', OTHER_VM]])

    // Both calls' pre and post events reach the receiver through forward.
    await receiver.until(() => received(receiver, 'vm.start').length >= 2 && received(receiver, 'vm.delete').length >= 2)
    await plugin.idle()
    await allDelivered(wasmhooks.url)
    const starts = received(receiver, 'vm.start').map(r => r.body)
    assert.deepEqual(starts.map(e => e.type).sort(), ['post', 'pre'], 'once each')
    const [pre, post] = [starts.find(e => e.type === 'pre'), starts.find(e => e.type === 'post')]
    assert.equal(pre.callId, post.callId, "the pre event is XO's own, with its callId")
    assert.equal(pre.userName, 'alice@example.org')
    assert.equal(pre.userIp, '::ffff:192.0.2.44')
    assert.equal(post.result, true)
    const deletes = received(receiver, 'vm.delete').map(r => r.body)
    assert.deepEqual(deletes.map(e => e.type).sort(), ['post', 'pre'])
    assert.equal(deletes.find(e => e.type === 'post').error.code, 5, 'the post event carries the veto')
    assert.deepEqual(xo.listenerFailures, [])
    await xo.plugins.unload(PLUGIN)
  })

  test('unload() puts the original methods back, and a second load() guards again', T, async t => {
    const xo = fakeXo()
    const originals = { ...xo.apiMethods }
    const plugin = await loaded(t, xo, { url: wasmhooks.url })
    assert.notEqual(xo.apiMethods['vm.delete'], originals['vm.delete'])
    const wrapper = xo.apiMethods['vm.delete']
    assert.equal(wrapper.permission, 'admin', 'the metadata is kept')
    assert.deepEqual(wrapper.params, originals['vm.delete'].params)
    assert.equal(wrapper.description, 'delete a VM')

    await xo.plugins.unload(PLUGIN)
    assert.equal(xo.apiMethods['vm.delete'], originals['vm.delete'])
    assert.equal(xo.apiMethods['vm.start'], originals['vm.start'])
    for (const event of ['xo:preCall', 'xo:postCall', 'backup:preCall', 'backup:postCall']) {
      assert.equal(xo.listenerCount(event), 0, event)
    }
    await xo.callApiMethod(alice, 'vm.delete', { id: PROTECTED_VM })
    assert.deepEqual(xo.ran, [['VM.destroy', PROTECTED_VM]], 'unguarded once unloaded')

    await xo.plugins.load(PLUGIN)
    await assert.rejects(xo.callApiMethod(alice, 'vm.delete', { id: PROTECTED_VM }), /refused by the wasmhooks hook deny/)
    assert.equal(xo.ran.length, 1)
    await xo.plugins.unload(PLUGIN)
  })

  test('a method re-registered by another plugin is guarded again at the next refresh', T, async t => {
    const xo = fakeXo()
    const plugin = await loaded(t, xo, { url: wasmhooks.url, guard: ['vm.delete'] })
    // Another plugin unloads and loads again: its method is a new entry.
    const replaced = xo.apiMethods['vm.delete']
    delete xo.apiMethods['vm.delete']
    xo.addApiMethod('vm.delete', async ({ id }) => xo.ran.push(['vm.delete (new)', id]), { permission: 'admin' })
    assert.notEqual(xo.apiMethods['vm.delete'], replaced)
    await plugin.refresh()
    await assert.rejects(xo.callApiMethod(alice, 'vm.delete', { id: PROTECTED_VM }), /refused by the wasmhooks hook deny/)
    assert.deepEqual(xo.ran, [])
  })

  test("XO's permission check still applies to a guarded method, before any pre event", T, async t => {
    const xo = fakeXo()
    const plugin = await loaded(t, xo, { url: wasmhooks.url })
    const bob = connection({ userId: 'u-bob' })
    await assert.rejects(xo.callApiMethod(bob, 'vm.start', { id: 'bob-vm' }), { code: 2, message: 'not enough permissions' })
    await assert.rejects(xo.callApiMethod(alice, 'vm.start', { name: 'no-id' }), { code: 10 })
    await receiver.until(
      () =>
        receiver.received.some(r => r.body.params?.id === 'bob-vm') &&
        receiver.received.some(r => r.body.params?.name === 'no-id')
    )
    // Everything sent has arrived: a stray pre event would be here too.
    await plugin.idle()
    await allDelivered(wasmhooks.url)
    const bobs = receiver.received.filter(r => r.body.params?.id === 'bob-vm').map(r => r.body.type)
    assert.deepEqual(bobs, ['post'], 'a refused call sends no pre event')
    const invalid = receiver.received.filter(r => r.body.params?.name === 'no-id').map(r => r.body.type)
    assert.deepEqual(invalid, ['post'])
    await xo.plugins.unload(PLUGIN)
  })

  test('backup events are forwarded', T, async t => {
    const xo = fakeXo()
    const plugin = await loaded(t, xo, { url: wasmhooks.url })
    let ran = false
    await xo.runBackupJob({ id: 'job-1', schedule: 'sched-1', vms: { id: OTHER_VM } }, async () => {
      ran = true
    })
    assert.ok(ran)
    await receiver.until(() => received(receiver, 'backupNg.runJob').length >= 2)
    const events = received(receiver, 'backupNg.runJob').map(r => r.body)
    assert.deepEqual(events.map(e => e.type).sort(), ['post', 'pre'])
    assert.equal(events[0].params.id, 'job-1')
    await xo.plugins.unload(PLUGIN)
  })

  test("XO's Test button sends a sample pre event and logs the verdict", T, async t => {
    const xo = fakeXo()
    await loaded(t, xo, { url: wasmhooks.url })
    await xo.plugins.test(PLUGIN, { method: 'vm.delete', id: PROTECTED_VM })
    assert.ok(logs.messages().some(m => m.startsWith('test: vm.delete would be refused by the hook deny')))
    await xo.plugins.unload(PLUGIN)
  })
})

describe('wasmhooks down', () => {
  test('a guarded call fails closed, or goes ahead, as configured', T, async t => {
    const url = await nobodyThere()
    const xo = fakeXo()
    const plugin = await loaded(t, xo, { url, guard: ['vm.delete'], failClosed: true, preTimeout: 500 })
    assert.deepEqual(plugin.guarded, ['vm.delete'])
    await assert.rejects(xo.callApiMethod(alice, 'vm.delete', { id: OTHER_VM }), error => {
      assert.equal(error.code, 5)
      assert.match(error.message, /wasmhooks gave no verdict \(wasmhooks at http:\/\/127\.0\.0\.1:\d+ cannot be reached/)
      assert.match(error.message, /fail closed/)
      return true
    })
    assert.deepEqual(xo.ran, [])
    await xo.plugins.unload(PLUGIN)

    await xo.plugins.configure(PLUGIN, { url, guard: ['vm.delete'], failClosed: false, preTimeout: 500 })
    await xo.plugins.load(PLUGIN)
    await xo.callApiMethod(alice, 'vm.delete', { id: OTHER_VM })
    assert.deepEqual(xo.ran, [['VM.destroy', OTHER_VM]])
    assert.ok(logs.messages().some(m => m.startsWith('vm.delete goes ahead without a verdict')))
    await xo.plugins.unload(PLUGIN)

    await assert.rejects(plugin.test(), /cannot be reached/)
  })

  test('a wasmhooks that never answers: the guarded call fails closed at preTimeout, saying so', T, async t => {
    const silent = await stub(() => undefined)
    t.after(silent.close)
    const xo = fakeXo()
    await loaded(t, xo, { url: silent.url, guard: ['vm.delete'], failClosed: true, preTimeout: 300 })
    const started = Date.now()
    await assert.rejects(xo.callApiMethod(alice, 'vm.delete', { id: OTHER_VM }), error => {
      assert.equal(error.code, 5)
      assert.match(error.message, /cannot be reached \(no answer within 300 ms\)/)
      return true
    })
    assert.ok(Date.now() - started < 5000, 'not held past its timeout')
    assert.deepEqual(xo.ran, [])
    await xo.plugins.unload(PLUGIN)
  })

  test('past maxQueued, events are dropped and counted in the log', T, async t => {
    const xo = fakeXo()
    const plugin = await loaded(t, xo, { url: await nobodyThere(), guard: ['none'], maxQueued: 100 })
    for (let i = 0; i < 300; i++) {
      xo.emit('xo:postCall', { callId: `c${i}`, method: 'vm.start', params: {}, timestamp: Date.now(), duration: 1, result: true })
    }
    assert.equal(plugin.stats.dropped, 200)
    assert.ok(logs.messages().some(m => m.startsWith('queue full (100 events, maxQueued')))
    await xo.plugins.unload(PLUGIN)
    assert.ok(logs.messages().some(m => m.startsWith('unloaded with 100 events not yet forwarded')))
  })
})

describe('the connection to wasmhooks', () => {
  test('calls one after another share kept-alive connections', T, async t => {
    const verdicts = await stub(req => (req.url === '/v1/events' ? { allowed: true } : []))
    t.after(verdicts.close)
    const xo = fakeXo()
    await loaded(t, xo, { url: verdicts.url, guard: ['vm.delete'], failClosed: true })
    const before = verdicts.connections()
    for (let i = 0; i < 5; i++) {
      await xo.callApiMethod(alice, 'vm.delete', { id: OTHER_VM })
    }
    assert.equal(xo.ran.length, 5)
    // 5 pre events, 5 post events beside them, a coverage report: without
    // keep-alive, one connection each.
    const opened = verdicts.connections() - before
    assert.ok(opened < 5, `${opened} connections for 5 guarded calls`)
    await xo.plugins.unload(PLUGIN)
  })
})

describe('the trace context of each call', () => {
  /**
   * A stand-in wasmhooks that allows every call and records the requests
   * the plugin sends it, headers included (the real one does not show the
   * `traceparent` it was sent).
   */
  async function recordingEngine(t) {
    const engine = await startReceiver({ answer: () => ({ allowed: true }) })
    t.after(engine.close)
    return engine
  }

  test("a call's pre and post events carry the same traceparent; each call has its own trace", T, async t => {
    const engine = await recordingEngine(t)
    const xo = fakeXo()
    // vm.delete's pre event waits for the verdict (the method's wrapper);
    // vm.start's is forwarded from xo:preCall.
    await loaded(t, xo, { url: engine.url(''), guard: ['vm.delete'] })
    await xo.callApiMethod(alice, 'vm.delete', { id: OTHER_VM })
    await xo.callApiMethod(alice, 'vm.delete', { id: OTHER_VM })
    await xo.callApiMethod(alice, 'vm.start', { id: OTHER_VM })
    await xo.runBackupJob({ id: 'job-1', schedule: 'sched-1', vms: { id: OTHER_VM } }, async () => {})
    await engine.until(callsComplete(4))

    const calls = [...tracesByCall(engine.received).values()]
    assert.deepEqual(calls.map(call => call.method), ['vm.delete', 'vm.delete', 'vm.start', 'backupNg.runJob'])
    const traces = calls.map(oneTrace)
    assert.equal(new Set(traces.map(trace => trace.traceId)).size, 4, 'one trace per call')
    assert.deepEqual(traces.map(trace => trace.flags), ['01', '01', '01', '01'], 'traceSampleRatio is 1 by default')
    await xo.plugins.unload(PLUGIN)
  })

  test('traceSampleRatio 0 marks no call sampled, 1 every call', T, async t => {
    const engine = await recordingEngine(t)
    const xo = fakeXo()
    const conf = { url: engine.url(''), guard: ['vm.delete'] }
    await loaded(t, xo, { ...conf, traceSampleRatio: 0 })
    // Three calls whose pre event waits for the verdict, three whose pre event is forwarded.
    const sixCalls = async () => {
      for (let i = 0; i < 3; i++) {
        await xo.callApiMethod(alice, 'vm.delete', { id: OTHER_VM })
        await xo.callApiMethod(alice, 'vm.start', { id: OTHER_VM })
      }
    }
    await sixCalls()
    await engine.until(callsComplete(6))
    const unsampled = [...tracesByCall(engine.received).values()].map(oneTrace)
    assert.deepEqual(new Set(unsampled.map(trace => trace.flags)), new Set(['00']))

    const earlier = engine.received.length
    await xo.plugins.configure(PLUGIN, { ...conf, traceSampleRatio: 1 })
    await sixCalls()
    await engine.until(got => callsComplete(6)(got.slice(earlier)))
    const sampled = [...tracesByCall(engine.received.slice(earlier)).values()].map(oneTrace)
    assert.deepEqual(new Set(sampled.map(trace => trace.flags)), new Set(['01']))
    await xo.plugins.unload(PLUGIN)
  })
})

describe('a gate in monitor mode', () => {
  test('the call runs, and the would-be veto is logged and counted', T, async t => {
    const hooks = hooksFolder({ deny: { guest: 'deny', toml: `mode = "monitor"\n${DENY}` } })
    const state = tempDir('wasmhooks-state-')
    const wasmhooks = await startWasmhooks({ hooks: hooks.path, state: state.path })
    try {
      const xo = fakeXo()
      const plugin = await loaded(t, xo, { url: wasmhooks.url })
      // deny subscribes to vm.delete and vm.stop.
      assert.deepEqual(plugin.guarded, ['vm.delete'])
      await xo.callApiMethod(alice, 'vm.delete', { id: PROTECTED_VM })
      assert.deepEqual(xo.ran, [['VM.destroy', PROTECTED_VM]])
      assert.ok(logs.messages().some(m => /^monitor mode: the hook deny would refuse vm\.delete: .*0a9b8c7d/.test(m)))
      const metrics = await (await fetch(`${wasmhooks.url}/metrics`)).text()
      assert.match(metrics, /wasmhooks_hook_would_deny_total\{hook="deny"\} 1/)
      await xo.plugins.unload(PLUGIN)
    } finally {
      await wasmhooks.stop()
      hooks.remove()
      state.remove()
    }
  })
})

describe('a burst while wasmhooks restarts', () => {
  test('every post event arrives, retried', T, async t => {
    const receiver = await startReceiver()
    const hooks = hooksFolder({ forward: { guest: 'forward', toml: forward(receiver.url('/burst')) } })
    const state = tempDir('wasmhooks-state-')
    let wasmhooks = await startWasmhooks({ hooks: hooks.path, state: state.path })
    const port = new URL(wasmhooks.url).port
    const xo = fakeXo()
    const plugin = await loaded(t, xo, { url: wasmhooks.url, guard: ['none'] })
    const emit = i =>
      xo.emit('xo:postCall', {
        callId: `burst-${i}`,
        userName: 'alice@example.org',
        method: 'vm.start',
        params: { id: OTHER_VM },
        timestamp: Date.now(),
        duration: 3,
        result: true,
      })
    try {
      for (let i = 0; i < 500; i++) {
        emit(i)
      }
      await wasmhooks.stop()
      for (let i = 500; i < 1000; i++) {
        emit(i)
      }
      wasmhooks = await startWasmhooks({ hooks: hooks.path, state: state.path, port })
      await plugin.idle()
      await receiver.until(got => new Set(got.map(r => r.body.callId)).size === 1000)
      const { stats } = plugin
      const duplicates = receiver.received.length - 1000
      console.log(`burst of 1000 across a restart: ${stats.retried} sends retried, ${duplicates} duplicates at the receiver`)
      assert.equal(stats.dropped, 0)
      assert.ok(stats.retried > 0, 'the restart was noticed')
      await xo.plugins.unload(PLUGIN)
    } finally {
      await wasmhooks.stop()
      await receiver.close()
      hooks.remove()
      state.remove()
    }
  })
})
