// What the plugin guards reaches wasmhooks, and each gate shows it: the
// entry points whose calls wait for its verdict, and the ones that do not,
// with why (GET /v1/hooks, `coverage`). A gate must never look stronger
// than it is.

import { configure } from '@xen-orchestra/log/configure'
import assert from 'node:assert/strict'
import { before, describe, test } from 'node:test'
import { serveRest } from './xo/rest.js'
import { PLUGIN, PROTECTED_VM, captureLogs, loadPlugin, rest, servedHooks, standIn } from './helpers.js'

const T = { timeout: 90_000 }
configure(captureLogs().transport)

async function gate(url, name) {
  const hooks = await (await fetch(`${url}/v1/hooks`)).json()
  return hooks.find(h => h.name === name).coverage
}

const at = list => list.map(g => `${g.entry} ${g.route ?? g.method}`).sort()

describe('coverage', () => {
  const served = servedHooks(() => ({
    deny: { guest: 'deny', toml: `on_error = "deny"\n[settings]\nprotected = ["${PROTECTED_VM}"]\n` },
    'no-backups': { guest: 'deny', toml: 'mode = "monitor"\n[settings]\nprotected = ["*"]\nmethods = ["backupNg.runJob"]\n' },
  }))
  let wasmhooks
  before(() => ({ wasmhooks } = served))

  test('before any report, nothing in XO is shown as guarded', T, async () => {
    const coverage = await gate(wasmhooks.url, 'deny')
    assert.equal(coverage.guarded_total, 0)
    assert.match(coverage.summary, /^NOT guarded in the orchestrator/)
  })

  test('each gate shows where XO waits for it, and where not, with why', T, async t => {
    const xo = standIn()
    const api = await serveRest(xo)
    t.after(() => api.close())
    const plugin = await loadPlugin(t, xo, { url: wasmhooks.url, failClosed: true })

    // No REST request yet: the routes are not listed, and REST is not
    // shown as guarded.
    let deny = await gate(wasmhooks.url, 'deny')
    assert.deepEqual(at(deny.guarded), ['jsonrpc vm.delete'])
    assert.ok(deny.unguarded.some(u => u.entry === 'rest' && u.method === '*' && /no REST request/.test(u.note)))

    await rest(api.url, 'GET', '/rest/v0/vms', { token: xo.createToken('u-alice') })
    await plugin.refresh()
    deny = await gate(wasmhooks.url, 'deny')
    assert.deepEqual(at(deny.guarded), [
      'jsonrpc vm.delete',
      'rest DELETE /rest/v0/vms/:id',
      'rest POST /rest/v0/vms/:id/actions/clean_shutdown',
    ])
    assert.deepEqual(at(deny.unguarded), ['xapi *'])
    assert.match(deny.unguarded[0].note, /xe and other XAPI clients/)
    assert.equal(deny.summary, 'guarded on 3 entry points (jsonrpc, rest); NOT on 1: xapi *')
    assert.deepEqual(deny.warnings, [], 'fails closed, enforced, refuses when it fails')

    // Scheduled backups: seen, never stoppable; and the gate is in monitor mode.
    const backups = await gate(wasmhooks.url, 'no-backups')
    assert.equal(backups.guarded_total, 0)
    const job = backups.unguarded.find(u => u.entry === 'job' && u.method === 'backupNg.runJob')
    assert.match(job.note, /cannot stop them/)
    assert.ok(backups.warnings.some(w => w.startsWith('monitor mode')))

    const [reporter] = await (await fetch(`${wasmhooks.url}/v1/coverage`)).json()
    assert.match(reporter.reporter, /^xo:/)
    assert.match(reporter.plugin, /^xo-server-wasmhooks \d/)
    assert.equal(reporter.fresh, true)
    assert.ok(reporter.guarded >= 3)
  })

  test('what the guard setting leaves out, fail-open, and an unload are shown', T, async t => {
    const xo = standIn()
    const api = await serveRest(xo)
    t.after(() => api.close())
    const plugin = await loadPlugin(t, xo, { url: wasmhooks.url, guard: ['vm.delete'] })
    await rest(api.url, 'GET', '/rest/v0/vms', { token: xo.createToken('u-alice') })
    await plugin.refresh()
    let deny = await gate(wasmhooks.url, 'deny')
    const stop = deny.unguarded.find(u => u.route === 'POST /rest/v0/vms/:id/actions/clean_shutdown')
    assert.equal(stop.method, 'vm.stop')
    assert.match(stop.note, /guard setting leaves this method out/)
    assert.ok(deny.warnings.some(w => /fails open/.test(w)))

    await xo.plugins.unload(PLUGIN)
    deny = await gate(wasmhooks.url, 'deny')
    assert.equal(deny.guarded_total, 0)
    assert.ok(deny.warnings.some(w => /is unloaded: nothing there waits for this gate/.test(w)))
  })
})
