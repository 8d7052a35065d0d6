// The plugin's REST path, in the stand-in xo-server's REST API (xo/rest.js:
// express, XO's authentication, `acl()`, controllers over a fake XAPI,
// `createAction` over `xo.tasks`), against a real `wasmhooks serve` with the
// Rust `deny` and `forward` examples and a real receiver.

import { configure } from '@xen-orchestra/log/configure'
import assert from 'node:assert/strict'
import { createServer } from 'node:net'
import { before, describe, test } from 'node:test'
import { connection } from './xo/app.js'
import { serveRest } from './xo/rest.js'
import {
  OTHER_VM,
  PLUGIN,
  PROTECTED_VM,
  allDelivered,
  callsComplete,
  captureLogs,
  loadPlugin,
  oneTrace,
  rest,
  servedHooks,
  standIn,
  startReceiver,
  startWasmhooks,
  taskEnded,
  tempDir,
  tracesByCall,
} from './helpers.js'

const T = { timeout: 90_000 }
const logs = captureLogs()
configure(logs.transport)
const alice = connection({ userId: 'u-alice', ip: '::ffff:192.0.2.44' })

// deny guards vm.delete and vm.stop on the protected VM; deny-users guards
// user.delete of bob and every group.create; forward sends every event on.
const hooks = receiver => ({
  deny: { guest: 'deny', toml: `[settings]\nprotected = ["${PROTECTED_VM}"]\n` },
  'deny-users': {
    guest: 'deny',
    toml: '[settings]\nprotected = ["u-bob"]\nmethods = ["user.delete"]\n',
  },
  'deny-groups': { guest: 'deny', toml: '[settings]\nprotected = ["*"]\nmethods = ["group.create"]\n' },
  'deny-rules': { guest: 'deny', toml: '[settings]\nprotected = ["rule-1"]\nmethods = ["sdnRule.delete", "vm.wipe"]\n' },
  forward: { guest: 'forward', toml: `allow_hosts = ["127.0.0.1"]\n[settings]\nurl = "${receiver.url('/forward')}"\n` },
})

/** The stand-in, its REST API served, the plugin loaded, and alice's token. */
async function xoWithRest(t, configuration) {
  const xo = standIn()
  const api = await serveRest(xo)
  t.after(() => api.close())
  const plugin = await loadPlugin(t, xo, configuration)
  return { xo, api, plugin, token: xo.createToken('u-alice') }
}

function events(receiver, method) {
  return receiver.received.map(r => r.body).filter(e => e.method === method)
}

describe('REST, with deny and forward', () => {
  const served = servedHooks(hooks)
  let receiver, wasmhooks
  before(() => ({ receiver, wasmhooks } = served))

  test('a protected VM is refused on every path: JSON-RPC, DELETE, an action sync and async', T, async t => {
    const { xo, api, token } = await xoWithRest(t, { url: wasmhooks.url })

    await assert.rejects(xo.callApiMethod(alice, 'vm.delete', { id: PROTECTED_VM }), { code: 5 })

    const deleted = await rest(api.url, 'DELETE', `/rest/v0/vms/${PROTECTED_VM}`, { token })
    assert.equal(deleted.status, 403, JSON.stringify(deleted.body))
    assert.match(deleted.body.error, /^vm\.delete: refused by the wasmhooks hook deny: VM 0a9b8c7d-\S+ is protected/)
    assert.equal(deleted.body.data.hook, 'deny')

    // XO 6 stops a VM with an asynchronous action: 202 and a task id at
    // once; the veto ends that task failed, with the reason.
    const stopped = await rest(api.url, 'POST', `/rest/v0/vms/${PROTECTED_VM}/actions/clean_shutdown`, { token })
    assert.equal(stopped.status, 202)
    assert.equal(stopped.headers.get('location'), `/rest/v0/tasks/${stopped.body.taskId}`)
    const task = await taskEnded(xo, stopped.body.taskId)
    assert.equal(task.status, 'failure')
    assert.equal(task.properties.name, 'REST API: clean shutdown VM')
    assert.match(task.result.message, /^vm\.stop: refused by the wasmhooks hook deny: VM 0a9b8c7d/)
    assert.equal(task.result.data.hook, 'deny')
    const shown = await rest(api.url, 'GET', `/rest/v0/tasks/${stopped.body.taskId}`, { token })
    assert.equal(shown.body.status, 'failure', 'where XO 6 reads it')

    const sync = await rest(api.url, 'POST', `/rest/v0/vms/${PROTECTED_VM}/actions/clean_shutdown?sync=true`, { token })
    assert.equal(sync.status, 403)
    assert.match(sync.body.error, /^vm\.stop: refused by the wasmhooks hook deny/)

    assert.deepEqual(xo.ran, [], 'no XAPI call ran')

    // The other VM goes ahead, on each path.
    assert.equal((await rest(api.url, 'DELETE', `/rest/v0/vms/${OTHER_VM}`, { token })).status, 204)
    assert.deepEqual(xo.ran, [['VM.destroy', OTHER_VM]])
  })

  test('routes that need no pool are gated too, and named as in JSON-RPC', T, async t => {
    const { xo, api, plugin, token } = await xoWithRest(t, { url: wasmhooks.url })
    const group = await rest(api.url, 'POST', '/rest/v0/groups', { token, body: { name: 'ops' } })
    assert.equal(group.status, 403)
    assert.match(group.body.error, /^group\.create: refused by the wasmhooks hook deny-groups: group\.create is refused/)
    await assert.rejects(xo.callApiMethod(alice, 'group.create', { name: 'ops' }), { code: 5 })

    const bob = await rest(api.url, 'DELETE', '/rest/v0/users/u-bob', { token })
    assert.equal(bob.status, 403)
    assert.match(bob.body.error, /^user\.delete: refused by the wasmhooks hook deny-users: u-bob is protected/)
    const carol = await rest(api.url, 'DELETE', '/rest/v0/users/u-carol', { token })
    assert.equal(carol.status, 204)
    assert.deepEqual(xo.ran, [['user.delete', 'u-carol']])

    await plugin.idle()
    await receiver.until(() => events(receiver, 'user.delete').length >= 4)
    await allDelivered(wasmhooks.url)
    const creates = events(receiver, 'group.create').filter(e => e.entry === 'rest')
    assert.deepEqual(creates.map(e => e.type).sort(), ['post', 'pre'])
    const pre = creates.find(e => e.type === 'pre')
    assert.equal(pre.userName, 'alice@example.org')
    assert.equal(pre.userIp, '127.0.0.1')
    assert.deepEqual(pre.params, { name: 'ops' })
    assert.deepEqual(pre.rest, { verb: 'POST', route: '/rest/v0/groups', path: '/rest/v0/groups', query: {} })
    assert.equal(creates.find(e => e.type === 'post').error.code, 5, 'the post event carries the veto')
    const carols = events(receiver, 'user.delete').filter(e => e.params.id === 'u-carol')
    assert.deepEqual(carols.map(e => e.type).sort(), ['post', 'pre'])
    assert.equal(carols.find(e => e.type === 'post').rest.status, 204)
  })

  test('vm.start through REST, sync and async: one pre and one post each, as JSON-RPC names it', T, async t => {
    const { xo, api, plugin, token } = await xoWithRest(t, { url: wasmhooks.url })
    await xo.callApiMethod(alice, 'vm.start', { id: OTHER_VM })
    const started = await rest(api.url, 'POST', `/rest/v0/vms/${OTHER_VM}/actions/start`, { token, body: {} })
    assert.equal(started.status, 202)
    assert.equal((await taskEnded(xo, started.body.taskId)).status, 'success')
    const sync = await rest(api.url, 'POST', `/rest/v0/vms/${OTHER_VM}/actions/start?sync=true`, {
      token,
      body: {},
      headers: { 'x-xo-client': 'mcp' },
    })
    assert.equal(sync.status, 204)
    assert.deepEqual(xo.ran, [
      ['VM.start', OTHER_VM],
      ['VM.start', OTHER_VM],
      ['VM.start', OTHER_VM],
    ])

    await plugin.idle()
    await receiver.until(() => events(receiver, 'vm.start').filter(e => e.entry === 'rest').length >= 4)
    await allDelivered(wasmhooks.url)
    const jsonrpc = events(receiver, 'vm.start').filter(e => e.entry === 'jsonrpc')
    assert.deepEqual(jsonrpc.map(e => e.type).sort(), ['post', 'pre'])
    const calls = new Map()
    for (const event of events(receiver, 'vm.start').filter(e => e.entry === 'rest')) {
      calls.set(event.callId, [...(calls.get(event.callId) ?? []), event])
    }
    assert.equal(calls.size, 2, 'two calls')
    for (const [, [first, second, ...more]] of calls) {
      assert.deepEqual(more, [])
      const pre = first.type === 'pre' ? first : second
      const post = first.type === 'pre' ? second : first
      assert.equal(pre.type, 'pre')
      assert.equal(post.type, 'post')
      assert.equal(pre.method, 'vm.start')
      assert.equal(pre.params.id, OTHER_VM)
      assert.match(pre.taskId, /^[0-9a-z]{9}-/, 'the task id')
      assert.equal(post.taskId, pre.taskId)
      assert.equal(post.result, true)
    }
    const viaMcp = [...calls.values()].flat().filter(e => e.rest.client === 'mcp')
    assert.equal(viaMcp.length, 2, "XO's MCP server is told apart by its header")
  })

  test("XO's authentication and ACL come first: what XO refuses sends no pre event", T, async t => {
    const { xo, api } = await xoWithRest(t, { url: wasmhooks.url })
    const unauthenticated = await rest(api.url, 'DELETE', `/rest/v0/vms/${PROTECTED_VM}`)
    assert.equal(unauthenticated.status, 401)
    const bob = await rest(api.url, 'DELETE', `/rest/v0/vms/${OTHER_VM}`, { token: xo.createToken('u-bob') })
    assert.equal(bob.status, 403)
    assert.equal(bob.body.error, 'not enough privileges')
    assert.deepEqual(xo.ran, [])
    // A call that does run, after them: everything sent before it has arrived.
    const token = xo.createToken('u-alice')
    await rest(api.url, 'POST', `/rest/v0/vms/${OTHER_VM}/actions/start?sync=true`, { token, body: {} })
    await xo.plugins.instance(PLUGIN).idle()
    await allDelivered(wasmhooks.url)
    const refused = receiver.received.filter(
      r => r.body.rest?.verb === 'DELETE' && ['bob@example.org', '(unknown user)'].includes(r.body.userName)
    )
    assert.deepEqual(refused, [], 'neither reached the gate')
  })

  test('unload puts every route and xo.tasks.create back; load guards them again', T, async t => {
    const { xo, api, plugin, token } = await xoWithRest(t, { url: wasmhooks.url })
    const create = xo.tasks.create
    // The routes are found at XO's first REST request.
    assert.equal(plugin.rest.state, 'waiting')
    await rest(api.url, 'GET', '/rest/v0/vms', { token })
    assert.equal(plugin.rest.state, 'wrapped')
    const routes = Object.fromEntries(plugin.rest.routes.map(r => [`${r.verb} ${r.path}`, r]))
    assert.equal(routes['DELETE /rest/v0/vms/:id'].method, 'vm.delete')
    assert.equal(routes['DELETE /rest/v0/vms/:id'].guarded, true)
    assert.equal(routes['POST /rest/v0/vms/:id/actions/start'].task, true)
    assert.equal(routes['POST /rest/v0/groups'].method, 'group.create')
    assert.equal(routes['GET /rest/v0/vms'], undefined, 'reads are not events')

    await xo.plugins.unload(PLUGIN)
    assert.equal(Object.hasOwn(xo.tasks, 'create'), false)
    assert.notEqual(xo.tasks.create, create)
    const stopped = await rest(api.url, 'POST', `/rest/v0/vms/${PROTECTED_VM}/actions/clean_shutdown?sync=true`, { token })
    assert.equal(stopped.status, 204, 'not guarded once unloaded')
    assert.deepEqual(xo.ran, [['VM.clean_shutdown', PROTECTED_VM]])

    await xo.plugins.load(PLUGIN)
    const again = await rest(api.url, 'DELETE', `/rest/v0/vms/${PROTECTED_VM}`, { token })
    assert.equal(again.status, 403, 'guarded from the first request after load')
    assert.equal(xo.ran.length, 1)
  })

  test("a plugin's route (registerRestRoutes) mounted or swapped later is gated, once, even with a task", T, async t => {
    const { xo, api, plugin, token } = await xoWithRest(t, { url: wasmhooks.url })
    // Another plugin mounts a route, and a request sees it; then it swaps
    // it for another, with no request in between: the table has as many
    // routes as before.
    const unmount = xo.registerRestRoutes([
      { method: 'delete', endpoint: '/vm-backups/{id}', callback: ({ req }) => void xo.ran.push(['vm-backup.delete', req.params.id]) },
    ])
    assert.equal((await rest(api.url, 'DELETE', '/rest/v0/vm-backups/b1', { token })).status, 204)
    unmount()
    xo.registerRestRoutes([
      {
        method: 'post',
        endpoint: '/vms/{id}/actions/wipe',
        callback: ({ req, createAction }) =>
          createAction(() => xo.ran.push(['wipe', req.params.id]), {
            sync: req.query.sync === 'true',
            taskProperties: { name: 'wipe VM', objectId: req.params.id },
          }),
      },
    ])
    const wiped = await rest(api.url, 'POST', `/rest/v0/vms/${OTHER_VM}/actions/wipe?sync=true`, { token, body: {} })
    assert.equal(wiped.status, 200, JSON.stringify(wiped.body))
    const refused = await rest(api.url, 'POST', `/rest/v0/vms/rule-1/actions/wipe`, { token, body: {} })
    assert.equal(refused.status, 403)
    assert.match(refused.body.error, /^vm\.wipe: refused by the wasmhooks hook deny-rules: VM rule-1 is protected/)
    assert.deepEqual(xo.ran, [
      ['vm-backup.delete', 'b1'],
      ['wipe', OTHER_VM],
    ])
    await plugin.idle()
    await receiver.until(() => events(receiver, 'vm.wipe').length >= 4)
    await allDelivered(wasmhooks.url)
    const wipes = events(receiver, 'vm.wipe')
    const allowed = wipes.filter(e => e.params.id === OTHER_VM)
    assert.deepEqual(allowed.map(e => e.type).sort(), ['post', 'pre'], 'asked once, before the handler; posted at the task end')
    assert.match(allowed.find(e => e.type === 'post').taskId, /^[0-9a-z]{9}-/)
  })

  test('a legacy route (registerRestApi) is gated once XO has authenticated, from the first request on', T, async t => {
    const xo = standIn()
    const api = await serveRest(xo)
    t.after(() => api.close())
    // As xo-server-sdn-controller registers its rules.
    const unregister = xo.registerRestApi({
      'sdn-rules': {
        ':id': {
          _delete: req => {
            xo.ran.push(['deleteRule', req.params.id])
            return { deleted: req.params.id }
          },
        },
      },
    })
    const plugin = await loadPlugin(t, xo, { url: wasmhooks.url })
    const token = xo.createToken('u-alice')
    // The very first request to XO, with no body: express reaches the
    // legacy handler without a pause, and it is gated all the same.
    const first = await rest(api.url, 'DELETE', '/rest/v0/sdn-rules/rule-1', { token })
    assert.equal(first.status, 403, JSON.stringify(first.body))
    assert.match(first.body.error, /^sdnRule\.delete: refused by the wasmhooks hook deny-rules: rule-1 is protected/)
    const unauthenticated = await rest(api.url, 'DELETE', '/rest/v0/sdn-rules/rule-1')
    assert.equal(unauthenticated.status, 401, 'XO authenticates first')
    const other = await rest(api.url, 'DELETE', '/rest/v0/sdn-rules/rule-2', { token })
    assert.equal(other.status, 200)
    assert.deepEqual(xo.ran, [['deleteRule', 'rule-2']])

    await plugin.idle()
    await receiver.until(() => events(receiver, 'sdnRule.delete').length >= 3)
    await allDelivered(wasmhooks.url)
    const rules = events(receiver, 'sdnRule.delete')
    const pres = rules.filter(e => e.type === 'pre')
    assert.deepEqual(pres.map(e => [e.params.id, e.userName]).sort(), [
      ['rule-1', 'alice@example.org'],
      ['rule-2', 'alice@example.org'],
    ], 'no pre event for the unauthenticated request')
    assert.deepEqual(rules.find(e => e.type === 'post' && e.params.id === 'rule-2').result, { deleted: 'rule-2' })

    // XO finds its legacy route back by its handler's name to remove it.
    unregister()
    assert.equal((await rest(api.url, 'DELETE', '/rest/v0/sdn-rules/rule-2', { token })).status, 404)
  })

  test('a client that goes away mid-call: the operation goes on, and its post event says how it ended', T, async t => {
    const { xo, api, plugin, token } = await xoWithRest(t, { url: wasmhooks.url })
    await plugin.idle()
    await allDelivered(wasmhooks.url)
    const earlier = receiver.received.length
    const mine = e => e.type === 'post' && e.entry === 'rest' && e.params.id === OTHER_VM && e.method === 'vm.delete'
    const held = xo.xapi.hold()
    const client = new AbortController()
    const gone = fetch(`${api.url}/rest/v0/vms/${OTHER_VM}`, {
      method: 'DELETE',
      headers: { cookie: `authenticationToken=${token}` },
      signal: client.signal,
    }).catch(error => error)
    await held.entered
    client.abort()
    assert.equal((await gone).name, 'AbortError')
    held.release()
    await receiver.until(got => got.slice(earlier).some(r => mine(r.body)))
    await plugin.idle()
    await allDelivered(wasmhooks.url)
    const post = receiver.received.slice(earlier).map(r => r.body).filter(mine)
    assert.equal(post.length, 1)
    assert.equal(post[0].error, undefined, JSON.stringify(post[0].error))
    assert.equal(post[0].result, true)
    assert.deepEqual(xo.ran, [['VM.destroy', OTHER_VM]])
  })

  test('a URL in other letter case is the same route, and gated', T, async t => {
    const { xo, api, token } = await xoWithRest(t, { url: wasmhooks.url })
    const deleted = await rest(api.url, 'DELETE', `/REST/V0/VMS/${PROTECTED_VM}`, { token })
    assert.equal(deleted.status, 403)
    assert.deepEqual(xo.ran, [])
  })
})

describe('REST, the trace context of each call', () => {
  test("a call's pre and post events carry the same traceparent, gated before its handler or in its task", T, async t => {
    // A stand-in wasmhooks that allows every call and records the requests
    // the plugin sends it, headers included.
    const engine = await startReceiver({ answer: () => ({ allowed: true }) })
    t.after(engine.close)
    const { xo, api, token } = await xoWithRest(t, { url: engine.url(''), guard: ['vm.*'] })

    // Gated in its task (answered 202 at once), before its handler, and
    // not guarded (its pre event forwarded).
    const started = await rest(api.url, 'POST', `/rest/v0/vms/${OTHER_VM}/actions/start`, { token, body: {} })
    assert.equal(started.status, 202)
    assert.equal((await taskEnded(xo, started.body.taskId)).status, 'success')
    assert.equal((await rest(api.url, 'DELETE', `/rest/v0/vms/${OTHER_VM}`, { token })).status, 204)
    const group = await rest(api.url, 'POST', '/rest/v0/groups', { token, body: { name: 'ops' } })
    assert.ok(group.status < 300, JSON.stringify(group.body))
    await engine.until(callsComplete(3))

    const calls = [...tracesByCall(engine.received).values()]
    assert.deepEqual(calls.map(call => call.method), ['vm.start', 'vm.delete', 'group.create'])
    const traces = calls.map(oneTrace)
    assert.equal(new Set(traces.map(trace => trace.traceId)).size, 3, 'one trace per call')
    assert.deepEqual(traces.map(trace => trace.flags), ['01', '01', '01'])
  })
})

describe('REST, wasmhooks down', () => {
  test('a guarded REST call fails closed, or goes ahead, as configured', T, async t => {
    const server = createServer().listen(0, '127.0.0.1')
    await new Promise(resolve => server.once('listening', resolve))
    const url = `http://127.0.0.1:${server.address().port}`
    await new Promise(resolve => server.close(resolve))

    const { xo, api, token } = await xoWithRest(t, { url, guard: ['vm.*'], failClosed: true, preTimeout: 500 })
    const deleted = await rest(api.url, 'DELETE', `/rest/v0/vms/${OTHER_VM}`, { token })
    assert.equal(deleted.status, 403)
    assert.match(deleted.body.error, /wasmhooks gave no verdict .* set to fail closed/)
    const started = await rest(api.url, 'POST', `/rest/v0/vms/${OTHER_VM}/actions/start`, { token, body: {} })
    assert.equal(started.status, 202)
    const task = await taskEnded(xo, started.body.taskId)
    assert.equal(task.status, 'failure')
    assert.match(task.result.message, /fail closed/)
    assert.deepEqual(xo.ran, [])

    await xo.plugins.unload(PLUGIN)
    await xo.plugins.configure(PLUGIN, { url, guard: ['vm.*'], failClosed: false, preTimeout: 500 })
    await xo.plugins.load(PLUGIN)
    assert.equal((await rest(api.url, 'DELETE', `/rest/v0/vms/${OTHER_VM}`, { token })).status, 204)
    const open = await rest(api.url, 'POST', `/rest/v0/vms/${OTHER_VM}/actions/start`, { token, body: {} })
    assert.equal((await taskEnded(xo, open.body.taskId)).status, 'success')
    assert.deepEqual(xo.ran, [
      ['VM.destroy', OTHER_VM],
      ['VM.start', OTHER_VM],
    ])
    assert.ok(logs.messages().some(m => m.startsWith('vm.delete goes ahead without a verdict')))
  })
})
