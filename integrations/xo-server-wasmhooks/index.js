// xo-server-wasmhooks: forwards Xen Orchestra's events to wasmhooks, and
// makes the calls that its gate hooks guard wait for their verdict.
//
// - Every `xo:preCall`, `xo:postCall`, `backup:preCall` and `backup:postCall`
//   event goes to wasmhooks' `POST /v1/events` in XO's own web-hooks format
//   (the event plus `type: "pre" | "post"`), through a bounded queue that is
//   retried with back-off: XO does not wait for these.
// - A guarded method's entry in `xo.apiMethods` is replaced by a wrapper that
//   keeps its metadata (permission, params, resolve, …), so XO still checks
//   permissions and parameters first. The wrapper sends the call's pre event
//   (XO's own, with its callId, user and IP) and waits for the verdict: a
//   veto throws XO's `forbiddenOperation` error with the hook's name and
//   reason, which the user sees and `xo:postCall` reports.
// - Scheduled backups run through XO's job executor, which a plugin cannot
//   wrap: their events are forwarded, and cannot be vetoed.

import { createLogger } from '@xen-orchestra/log'
import apiErrors from 'xo-common/api-errors.js'
import { Client } from './lib/client.js'
import { Forwarder } from './lib/forwarder.js'
import { globMatch } from './lib/glob.js'

const log = createLogger('xo:xo-server-wasmhooks')

export const configurationSchema = {
  type: 'object',
  properties: {
    url: {
      title: 'wasmhooks URL',
      description: 'Base URL of `wasmhooks serve`, for instance http://127.0.0.1:8080',
      type: 'string',
    },
    token: {
      title: 'API token',
      description: 'The token wasmhooks was started with (WASMHOOKS_TOKEN), if it has one',
      type: 'string',
    },
    preTimeout: {
      title: 'Verdict timeout (ms)',
      description: 'How long a guarded call waits for the verdict of the hooks',
      type: 'integer',
      minimum: 100,
      default: 5000,
    },
    failClosed: {
      title: 'Fail closed',
      description:
        'When wasmhooks cannot be reached, or does not answer in time: refuse guarded calls (on), or let them go ahead with a warning in the log (off)',
      type: 'boolean',
      default: false,
    },
    guard: {
      title: 'Guarded methods',
      description:
        'API methods (globs such as vm.*) whose calls wait for the verdict. Empty: every method that a loaded hook subscribes to for pre events, read from wasmhooks and refreshed',
      type: 'array',
      items: { type: 'string' },
      default: [],
    },
    refreshSeconds: {
      title: 'Refresh (s)',
      description: 'How often the guarded methods are read again from wasmhooks, when Guarded methods is empty',
      type: 'integer',
      minimum: 1,
      default: 10,
    },
    maxQueued: {
      title: 'Events kept for retry',
      description:
        'Events waiting to be forwarded while wasmhooks cannot take them; past this, new ones are dropped, and how many is logged',
      type: 'integer',
      minimum: 1,
      default: 10000,
    },
  },
  required: ['url'],
}

export const testSchema = {
  type: 'object',
  description: 'Sends a sample pre event to wasmhooks and logs the verdict',
  properties: {
    method: { title: 'Method', type: 'string', default: 'vm.start' },
    id: { title: 'Object id (params.id)', type: 'string' },
  },
}

const DEFAULTS = { preTimeout: 5000, failClosed: false, guard: [], refreshSeconds: 10, maxQueued: 10000 }

// Keys whose values XO masks in the params of its events.
const SECRET_KEY = /passw(or)?d|token|passphrase|encryptionkey|secret/i

class WasmhooksPlugin {
  constructor({ xo }) {
    this._xo = xo
    this._conf = undefined
    this._client = undefined
    this._forwarder = undefined
    this._loaded = false
    // Guarded method name → { original, wrapper }.
    this._guarded = new Map()
    // XO's own pre event of a guarded call, by the call's API context, for
    // the wrapper to send (once) after the permission check.
    this._pending = new WeakMap()
    this._refreshing = Promise.resolve()
    this._timer = undefined
    this._onPreCall = this._onPreCall.bind(this)
    this._onPostCall = this._onPostCall.bind(this)
    this._onBackupPreCall = data => this._forward(data, 'pre')
    this._onBackupPostCall = data => this._forward(data, 'post')
  }

  configure(configuration) {
    this._conf = { ...DEFAULTS, ...configuration }
    this._client = new Client(this._conf)
    if (this._loaded) {
      this._forwarder.resize(this._conf.maxQueued)
      this._schedule()
      return this._refresh()
    }
  }

  async load() {
    const conf = this._conf
    const client = { postEvent: (body, timeoutMs) => this._client.postEvent(body, timeoutMs) }
    this._forwarder = new Forwarder({ client, log, maxQueued: conf.maxQueued, timeoutMs: Math.max(conf.preTimeout, 10000) })
    const xo = this._xo
    xo.on('xo:preCall', this._onPreCall)
    xo.on('xo:postCall', this._onPostCall)
    xo.on('backup:preCall', this._onBackupPreCall)
    xo.on('backup:postCall', this._onBackupPostCall)
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
    const xo = this._xo
    xo.removeListener('xo:preCall', this._onPreCall)
    xo.removeListener('xo:postCall', this._onPostCall)
    xo.removeListener('backup:preCall', this._onBackupPreCall)
    xo.removeListener('backup:postCall', this._onBackupPostCall)
    await this._refreshing
    for (const name of [...this._guarded.keys()]) {
      this._unguard(name)
    }
    this._forwarder.stop()
  }

  /** Sends a sample pre event and returns (and logs) the verdict. */
  async test({ method = 'vm.start', id } = {}) {
    const event = {
      callId: `wasmhooks-test-${Math.random().toString(36).slice(2)}`,
      userName: 'xo-server-wasmhooks test',
      method,
      params: id === undefined ? {} : { id },
      timestamp: Date.now(),
      type: 'pre',
    }
    const verdict = await this._client.postEvent(JSON.stringify(event), this._conf.preTimeout)
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

  /** The guarded methods, for tests and the curious. */
  get guarded() {
    return [...this._guarded.keys()].sort()
  }

  /** Resolves once every event so far has been forwarded (or dropped). */
  idle() {
    return this._forwarder.idle()
  }

  /** Counts of the forwarding queue: forwarded, retried, dropped, rejected. */
  get stats() {
    return { ...this._forwarder.stats, queued: this._forwarder.queued }
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
    const methods = this._xo.apiMethods
    const wanted = new Set(
      Object.keys(methods).filter(name => {
        // An alias (an accessor) resolves to its target, guarded by name.
        const own = Object.getOwnPropertyDescriptor(methods, name)
        return typeof own?.value === 'function' && patterns.some(pattern => globMatch(pattern, name))
      })
    )
    for (const [name, { wrapper }] of [...this._guarded]) {
      if (methods[name] !== wrapper) {
        // Removed, or replaced by another plugin: ours is gone.
        this._guarded.delete(name)
      } else if (!wanted.has(name)) {
        this._unguard(name)
      }
    }
    for (const name of wanted) {
      if (!this._guarded.has(name)) {
        this._guard(name)
      }
    }
  }

  _guard(name) {
    const methods = this._xo.apiMethods
    const original = methods[name]
    const plugin = this
    // xo-server calls a method with the app as `this`.
    const wrapper = async function wasmhooksGuard(params) {
      await plugin._gate(name, params, this)
      return original.apply(this, arguments)
    }
    // XO's permission check, validation and resolution read these.
    for (const key of Reflect.ownKeys(original)) {
      if (!['length', 'name', 'prototype', 'arguments', 'caller'].includes(key)) {
        Object.defineProperty(wrapper, key, Object.getOwnPropertyDescriptor(original, key))
      }
    }
    methods[name] = wrapper
    this._guarded.set(name, { original, wrapper })
    log.debug(`guarding ${name}`)
  }

  _unguard(name) {
    const { original, wrapper } = this._guarded.get(name)
    this._guarded.delete(name)
    const methods = this._xo.apiMethods
    if (methods[name] === wrapper) {
      methods[name] = original
    } else {
      log.warn(`${name} was replaced by someone else since it was guarded; leaving it as it is`)
    }
  }

  /** Asks wasmhooks about a guarded call; throws if it may not go ahead. */
  async _gate(name, params, app) {
    const context = app?.apiContext
    const pending = context === undefined ? undefined : this._pending.get(context)
    let event
    if (pending !== undefined && pending.data.method === name) {
      // XO's own pre event. If it was forwarded already (the method was
      // guarded meanwhile), wasmhooks recognises the callId and answers
      // with the first verdict, sending nothing twice.
      this._pending.delete(context)
      event = { ...pending.data, type: 'pre' }
    } else {
      // Called without XO's pre event (another caller than the API).
      event = {
        callId: Math.random().toString(36).slice(2),
        userId: context?.user?.id,
        userName: context?.user?.email ?? '(unknown user)',
        userIp: context?.connection?.get?.('user_ip', undefined),
        method: name,
        params: mask(params),
        timestamp: Date.now(),
        type: 'pre',
      }
    }
    let verdict
    let body
    try {
      body = JSON.stringify(event)
      verdict = await this._client.postEvent(body, this._conf.preTimeout)
      if (typeof verdict?.allowed !== 'boolean') {
        throw new Error(`not a verdict: ${JSON.stringify(verdict)?.slice(0, 200)}`)
      }
    } catch (error) {
      // Unreachable, timed out, refused, not a verdict, or params that are
      // not JSON. The hooks still get the event, later (a copy that did
      // arrive is recognised by its callId).
      if (body !== undefined) {
        this._forwarder.push(body)
      }
      if (this._conf.failClosed) {
        log.warn(`refusing ${name}: no verdict (${error.message}), and the plugin fails closed`)
        throw forbidden(
          name,
          `wasmhooks gave no verdict (${error.message}), and xo-server-wasmhooks is set to fail closed: try again once wasmhooks is back`
        )
      }
      log.warn(`${name} goes ahead without a verdict: ${error.message} (the plugin fails open)`)
      return
    }
    for (const { hook, reason } of verdict.would_deny ?? []) {
      log.info(`monitor mode: the hook ${hook} would refuse ${name}: ${reason}`, { callId: event.callId })
    }
    for (const { hook, kind, message } of verdict.failures ?? []) {
      log.warn(`the hook ${hook} failed on ${name} (${kind}): ${message}`, { callId: event.callId })
    }
    if (!verdict.allowed) {
      throw forbidden(name, `refused by the wasmhooks hook ${verdict.denied_by}: ${verdict.reason}`, verdict.denied_by)
    }
  }

  // XO looked the method up before this event: whether the wrapper runs
  // is decided already, and a refresh in between must not lose the pre
  // event or send it twice. So it is kept for the wrapper either way;
  // withheld if the method is guarded now (the wrapper sends it, after
  // XO's permission check), forwarded if not.
  _onPreCall(data) {
    const withheld = this._guarded.has(data.method)
    const context = this._xo.apiContext
    if (context !== undefined) {
      this._pending.set(context, { data, withheld })
    }
    if (!withheld) {
      this._forward(data, 'pre')
    }
  }

  _onPostCall(data) {
    const context = this._xo.apiContext
    const pending = context === undefined ? undefined : this._pending.get(context)
    if (pending !== undefined && pending.data.callId === data.callId) {
      this._pending.delete(context)
      // Withheld, and no wrapper sent it: the method was unguarded in
      // between. Unless XO refused the call itself (permission: 2,
      // parameters: 10), the hooks get it now.
      if (pending.withheld && ![2, 10].includes(data.error?.code)) {
        this._forward(pending.data, 'pre')
      }
    }
    this._forward(data, 'post')
  }

  // Never throws: `xo:postCall` is emitted synchronously, and a throwing
  // listener would turn a successful call into a failed one.
  _forward(data, type) {
    try {
      this._forwarder.push(JSON.stringify({ ...data, type }))
    } catch (error) {
      log.warn(`cannot forward the ${type} event of ${data?.method}: ${error.message}`)
    }
  }
}

/** XO's error for a refused operation, with a message the user can act on. */
function forbidden(method, reason, hook) {
  try {
    apiErrors.forbiddenOperation(method, reason)
  } catch (error) {
    error.message = `${method}: ${reason}`
    if (hook !== undefined) {
      error.data.hook = hook
    }
    return error
  }
  return new Error(`${method}: ${reason}`)
}

/** Params with secrets masked, as XO masks those of its own events. */
function mask(value) {
  if (Array.isArray(value)) {
    return value.map(mask)
  }
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(
      Object.entries(value).map(([key, v]) => [key, SECRET_KEY.test(key) ? '* obfuscated *' : mask(v)])
    )
  }
  return value
}

export default opts => new WasmhooksPlugin(opts)
