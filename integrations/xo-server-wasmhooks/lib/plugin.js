// The plugin instance xo-server drives: configure, load, unload, test.

import { createLogger } from '@xen-orchestra/log'
import { readFileSync } from 'node:fs'
import { Client } from './client.js'
import { CoverageReporter } from './coverage.js'
import { ENTRY, callId } from './events.js'
import { Forwarder } from './forwarder.js'
import { Gate } from './gate.js'
import { globMatch } from './glob.js'
import { JsonRpcGuard } from './jsonrpc.js'
import { RestGuard } from './rest.js'
import { settings, unknownSettings } from './schema.js'

const log = createLogger('xo:xo-server-wasmhooks')
const { version } = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'))

export class WasmhooksPlugin {
  /** @param {{ xo: object }} opts what xo-server gives a plugin's factory */
  constructor({ xo }) {
    this._xo = xo
    this._conf = undefined
    this._client = undefined
    this._forwarder = undefined
    this._loaded = false
    // The globs of the guarded methods, once known.
    this._patterns = []
    this._refreshing = Promise.resolve()
    this._busy = false
    this._timer = undefined
    this._gate = new Gate({
      settings: () => this._conf,
      client: () => this._client,
      forwarder: { push: (body, trace) => this._forwarder.push(body, trace) },
      log,
    })
    this._jsonrpc = new JsonRpcGuard({ xo, gate: this._gate, log })
    this._rest = new RestGuard({
      xo,
      gate: this._gate,
      isGuarded: method => this._isGuarded(method),
      // Routes found or added: wasmhooks hears of them now, not at the next refresh.
      onChange: () => this._refresh(),
      log,
    })
    this._coverage = new CoverageReporter({
      client: () => this._client,
      settings: () => this._conf,
      xo,
      jsonrpc: this._jsonrpc,
      rest: this._rest,
      version,
      log,
    })
  }

  /**
   * Takes a configuration (xo-server has validated it against the schema
   * and filled in its defaults); checks it again, so that nothing, or a
   * wrong one, is refused with a message saying what to fix.
   */
  configure(configuration) {
    const conf = settings(configuration)
    const unknown = unknownSettings(configuration)
    if (unknown.length !== 0) {
      log.warn(`ignoring settings this version does not know: ${unknown.join(', ')}`)
    }
    this._conf = conf
    // The previous client's idle connections close by themselves (an idle
    // connection is not kept open by its pool for long, nor keeps Node up).
    this._client = new Client(conf)
    if (this._loaded) {
      this._forwarder.resize(conf.maxQueued)
      this._schedule()
      return this._refresh()
    }
  }

  async load() {
    const conf = this._conf
    if (conf === undefined) {
      // xo-server loads a plugin only once configured; another caller may not.
      settings(undefined)
    }
    if (this._loaded) {
      return
    }
    const client = {
      postEvent: (body, timeoutMs, trace) => this._client.postEvent(body, timeoutMs, trace),
    }
    this._forwarder = new Forwarder({ client, log, maxQueued: conf.maxQueued, timeoutMs: Math.max(conf.preTimeout, 15000) })
    this._jsonrpc.start()
    this._rest.start()
    this._loaded = true
    this._schedule()
    await this._refresh()
  }

  async unload() {
    if (!this._loaded) {
      return
    }
    this._loaded = false
    clearInterval(this._timer)
    this._timer = undefined
    await this._refreshing
    this._jsonrpc.stop()
    this._rest.stop()
    this._forwarder.stop()
    // Nothing is guarded any more: wasmhooks says so at once.
    await this._coverage.send(false)
    this._client.close()
  }

  /** Sends a sample pre event and returns (and logs) the verdict. */
  async test({ method = 'vm.start', id } = {}) {
    if (this._conf === undefined) {
      settings(undefined)
    }
    const event = {
      callId: `wasmhooks-test-${callId()}`,
      userName: 'xo-server-wasmhooks test',
      method,
      params: id === undefined ? {} : { id },
      timestamp: Date.now(),
      entry: ENTRY.jsonrpc,
      type: 'pre',
    }
    // Traced as a call is, so that a sampled test shows in the engine's traces.
    const verdict = await this._client.postEvent(JSON.stringify(event), this._conf.preTimeout, this._gate.startTrace())
    if (typeof verdict?.allowed !== 'boolean') {
      throw new Error(`wasmhooks at ${this._conf.url} did not answer with a verdict: ${JSON.stringify(verdict)}`)
    }
    const said = verdict.allowed
      ? `${method} would go ahead`
      : `${method} would be refused by the hook ${verdict.denied_by}: ${verdict.reason}`
    log.info(`test: ${said}`, { verdict })
    return verdict
  }

  /**
   * Guards now what the configuration or the hooks ask for, as the
   * periodic refresh does; resolves when done (a failure is logged).
   */
  refresh() {
    return this._refresh()
  }

  /** The guarded JSON-RPC methods, for tests and the curious. */
  get guarded() {
    return this._jsonrpc.guarded
  }

  /** The coverage report the plugin sends wasmhooks (see lib/coverage.js). */
  get coverage() {
    return this._coverage.build(this._loaded)
  }

  /** What the plugin found of XO's REST API, and what it guards there. */
  get rest() {
    return this._rest.routes()
  }

  /** Resolves once every event so far has been forwarded (or dropped). */
  idle() {
    return this._forwarder.idle()
  }

  /** Counts of the forwarding queue: forwarded, retried, dropped, rejected. */
  get stats() {
    return { ...this._forwarder.stats, queued: this._forwarder.queued }
  }

  _isGuarded(method) {
    return this._loaded && this._patterns.some(pattern => globMatch(pattern, method))
  }

  // Also with an explicit `guard`: methods added (or re-added by another
  // plugin) after load are guarded at the next refresh.
  _schedule() {
    clearInterval(this._timer)
    this._timer = setInterval(() => {
      if (!this._busy) {
        this._refresh()
      }
    }, this._conf.refreshSeconds * 1000)
    this._timer.unref?.()
  }

  /** Guards the methods the configuration or the hooks ask for; one at a time. */
  _refresh() {
    this._busy = true
    this._refreshing = this._refreshing
      .then(() => this._loaded && this._reconcile())
      .catch(error => log.warn(`cannot update the guarded methods: ${error.message}`))
      .then(() => this._loaded && this._coverage.send(true))
      .finally(() => {
        this._busy = false
      })
    return this._refreshing
  }

  async _reconcile() {
    let patterns = this._conf.guard
    if (patterns.length === 0) {
      try {
        const hooks = await this._client.hooks(this._conf.preTimeout)
        patterns = hooks
          .filter(hook => hook.state === 'live' && hook.subscription?.phases.includes('pre'))
          .flatMap(hook => hook.subscription.methods)
      } catch (error) {
        log.warn(`cannot read which methods the hooks guard; the guarded methods stay as they are: ${error.message}`)
        return
      }
    }
    if (!this._loaded) {
      return
    }
    this._patterns = patterns
    this._jsonrpc.reconcile(patterns)
  }
}
