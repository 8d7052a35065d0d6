// The plugin is loaded as xo-server loads it (xo/plugins.js follows
// `registerPlugin` and XO's plugins mixin): the settings form is found,
// configuring and loading work from XO's Settings → Plugins calls, and a
// plugin that is not configured, or configured with nothing, says what to
// set instead of failing with a TypeError.

import { configure } from '@xen-orchestra/log/configure'
import assert from 'node:assert/strict'
import { before, describe, test } from 'node:test'
import { configurationSchema } from '../lib/schema.js'
import { connection } from './xo/app.js'
import { PLUGIN, PLUGIN_DIR, PROTECTED_VM, captureLogs, servedHooks, standIn } from './helpers.js'

const T = { timeout: 90_000 }
const logs = captureLogs()
configure(logs.transport)
const alice = connection({ userId: 'u-alice' })

describe('loaded as xo-server loads it', () => {
  const served = servedHooks(() => ({ deny: { guest: 'deny', toml: `[settings]\nprotected = ["${PROTECTED_VM}"]\n` } }))
  let wasmhooks
  before(() => ({ wasmhooks } = served))

  test('XO shows its settings form; configured from it and loaded, it vetoes a guarded call', T, async t => {
    const xo = standIn()
    await xo.plugins.register(PLUGIN_DIR, PLUGIN)
    t.after(() => xo.plugins.get(PLUGIN).loaded && xo.plugins.unload(PLUGIN))
    const registered = xo.plugins.get(PLUGIN)
    assert.deepEqual(registered.configurationSchema, configurationSchema, 'the form XO shows')
    assert.equal(registered.testable, true)
    assert.ok(registered.testSchema, "the Test button's form")
    assert.equal(registered.configured, false, 'the URL is required, so {} does not configure it')
    assert.ok(!registered.loaded)

    // What the form sends: only what the administrator filled in. XO fills
    // in the defaults (Ajv's useDefaults).
    await xo.plugins.configure(PLUGIN, { url: wasmhooks.url })
    await xo.plugins.load(PLUGIN)
    assert.deepEqual(xo.plugins.instance(PLUGIN).guarded, ['vm.delete'])
    await assert.rejects(xo.callApiMethod(alice, 'vm.delete', { id: PROTECTED_VM }), {
      code: 5,
      message: /^vm\.delete: refused by the wasmhooks hook deny: /,
    })
    assert.deepEqual(xo.ran, [])

    // At xo-server's next start, the saved configuration loads it at once.
    await xo.plugins.unload(PLUGIN)
    await xo.plugins.register(PLUGIN_DIR, PLUGIN)
    assert.equal(xo.plugins.get(PLUGIN).loaded, true)
    await assert.rejects(xo.callApiMethod(alice, 'vm.delete', { id: PROTECTED_VM }), { code: 5 })
  })
})

describe('not configured', () => {
  test('XO will not load it, and the plugin itself says what to set', T, async () => {
    const xo = standIn()
    await xo.plugins.register(PLUGIN_DIR, PLUGIN)
    await assert.rejects(xo.plugins.load(PLUGIN), { code: 10, message: 'plugin not configured' })
    await assert.rejects(xo.plugins.configure(PLUGIN, {}), { code: 10 })
    assert.ok(!xo.plugins.get(PLUGIN).loaded)

    // Called by something other than xo-server: never a TypeError.
    const plugin = xo.plugins.instance(PLUGIN)
    const said = /^xo-server-wasmhooks: not configured: give it the URL of wasmhooks in Settings → Plugins → wasmhooks$/
    await assert.rejects(async () => plugin.load(), { name: 'SettingsError', message: said })
    assert.throws(() => plugin.configure(), { name: 'SettingsError', message: said })
    assert.throws(() => plugin.configure({}), { name: 'SettingsError', message: said })
    assert.throws(() => plugin.configure({ url: 'not a url' }), {
      message: /url must be an http\(s\) URL such as http:\/\/127\.0\.0\.1:8080, got "not a url"/,
    })
    assert.throws(() => plugin.configure({ url: 'http://127.0.0.1:1', preTimeout: 'soon' }), {
      message: /preTimeout \(Verdict timeout \(ms\)\) must be an integer of at least 100, got "soon"/,
    })
    assert.throws(() => plugin.configure({ url: 'http://127.0.0.1:1', traceSampleRatio: 1.5 }), {
      message: /traceSampleRatio \(Trace sample ratio\) must be a number from 0 to 1, got 1\.5/,
    })
    await assert.rejects(xo.plugins.configure(PLUGIN, { url: 'http://127.0.0.1:1', traceSampleRatio: -1 }), { code: 10 })
    await assert.rejects(async () => plugin.test({}), { name: 'SettingsError' })
    assert.equal(xo.listenerCount('xo:preCall'), 0, 'nothing was hooked in')
  })

  test('a setting it does not know (saved by another version) is ignored, and said so', T, async t => {
    const xo = standIn()
    await xo.plugins.register(PLUGIN_DIR, PLUGIN)
    t.after(() => xo.plugins.get(PLUGIN).loaded && xo.plugins.unload(PLUGIN))
    await xo.plugins.configure(PLUGIN, { url: 'http://127.0.0.1:1', guard: ['none'], retired: true })
    await xo.plugins.load(PLUGIN)
    assert.ok(logs.messages().includes('ignoring settings this version does not know: retired'))
  })
})
