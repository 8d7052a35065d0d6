// The JSON-RPC entry point (XO 5's web UI, xo-cli, scripts): xo-server's
// `apiMethods` table, and its `xo:preCall`/`xo:postCall` events.
//
// XO emits `xo:preCall` without acting on what a listener answers (an
// error is only logged), so a guarded method's entry in `xo.apiMethods` is
// replaced by a wrapper instead. The wrapper keeps the method's metadata
// (permission, params, resolve, …), so XO still checks permissions and
// parameters first; then it sends the call's pre event (XO's own, with its
// callId, user and IP) and waits for the verdict.

import { ENTRY, callId, mask } from './events.js'
import { globMatch } from './glob.js'

/** Properties of a function that are its own, not XO's metadata. */
const OWN = ['length', 'name', 'prototype', 'arguments', 'caller']

export class JsonRpcGuard {
  /**
   * @param {object} opts
   * @param {object} opts.xo the xo-server app
   * @param {import('./gate.js').Gate} opts.gate
   * @param {object} opts.log an `@xen-orchestra/log` logger
   */
  constructor({ xo, gate, log }) {
    Object.assign(this, { _xo: xo, _gate: gate, _log: log })
    // Guarded method name → { original, wrapper }.
    this._guarded = new Map()
    // XO's own pre event of a guarded call, by the call's API context, for
    // the wrapper to send (once) after the permission check.
    this._pending = new WeakMap()
    this._onPreCall = this._onPreCall.bind(this)
    this._onPostCall = this._onPostCall.bind(this)
    this._onBackupPreCall = data => this._gate.forward({ ...data, entry: ENTRY.job }, 'pre')
    this._onBackupPostCall = data => this._gate.forward({ ...data, entry: ENTRY.job }, 'post')
  }

  start() {
    const xo = this._xo
    xo.on('xo:preCall', this._onPreCall)
    xo.on('xo:postCall', this._onPostCall)
    xo.on('backup:preCall', this._onBackupPreCall)
    xo.on('backup:postCall', this._onBackupPostCall)
  }

  /** Stops listening and puts every original method back. */
  stop() {
    const xo = this._xo
    xo.removeListener('xo:preCall', this._onPreCall)
    xo.removeListener('xo:postCall', this._onPostCall)
    xo.removeListener('backup:preCall', this._onBackupPreCall)
    xo.removeListener('backup:postCall', this._onBackupPostCall)
    for (const name of [...this._guarded.keys()]) {
      this._unguard(name)
    }
  }

  /** The guarded methods, sorted. */
  get guarded() {
    return [...this._guarded.keys()].sort()
  }

  /**
   * Every method of the API, with whether a call to it waits for the
   * verdict. An alias (an accessor) is reported under its own name, guarded
   * as its target is.
   */
  methods() {
    const methods = this._xo.apiMethods
    return Object.keys(methods)
      .sort()
      .map(name => {
        const target = methods[name]
        const guarded = [...this._guarded.values()].some(({ wrapper }) => wrapper === target)
        return { name, guarded }
      })
  }

  /** Guards exactly the methods that match `patterns` (globs). */
  reconcile(patterns) {
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
    const guard = this
    // xo-server calls a method with the app as `this`.
    const wrapper = async function wasmhooksGuard(params) {
      await guard._check(name, params, this)
      return original.apply(this, arguments)
    }
    // XO's permission check, validation and resolution read these.
    for (const key of Reflect.ownKeys(original)) {
      if (!OWN.includes(key)) {
        Object.defineProperty(wrapper, key, Object.getOwnPropertyDescriptor(original, key))
      }
    }
    methods[name] = wrapper
    this._guarded.set(name, { original, wrapper })
    this._log.debug(`guarding ${name}`)
  }

  _unguard(name) {
    const { original, wrapper } = this._guarded.get(name)
    this._guarded.delete(name)
    const methods = this._xo.apiMethods
    if (methods[name] === wrapper) {
      methods[name] = original
    } else {
      this._log.warn(`${name} was replaced by someone else since it was guarded; leaving it as it is`)
    }
  }

  /** Asks wasmhooks about a guarded call; throws if it may not go ahead. */
  async _check(name, params, app) {
    const context = app?.apiContext
    const pending = context === undefined ? undefined : this._pending.get(context)
    let event
    if (pending !== undefined && pending.data.method === name) {
      // XO's own pre event. If it was forwarded already (the method was
      // guarded meanwhile), wasmhooks recognises the callId and answers
      // with the first verdict, sending nothing twice.
      this._pending.delete(context)
      event = { ...pending.data, entry: ENTRY.jsonrpc, type: 'pre' }
    } else {
      // Called without XO's pre event (another caller than the API).
      event = {
        callId: callId(),
        userId: context?.user?.id,
        userName: context?.user?.email ?? '(unknown user)',
        userIp: context?.connection?.get?.('user_ip', undefined),
        method: name,
        params: mask(params),
        timestamp: Date.now(),
        entry: ENTRY.jsonrpc,
        type: 'pre',
      }
    }
    await this._gate.check(event)
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
      this._gate.forward({ ...data, entry: ENTRY.jsonrpc }, 'pre')
    }
  }

  // Never throws: `xo:postCall` is emitted synchronously, and a throwing
  // listener would turn a successful call into a failed one.
  _onPostCall(data) {
    const context = this._xo.apiContext
    const pending = context === undefined ? undefined : this._pending.get(context)
    if (pending !== undefined && pending.data.callId === data.callId) {
      this._pending.delete(context)
      // Withheld, and no wrapper sent it: the method was unguarded in
      // between. Unless XO refused the call itself (permission: 2,
      // parameters: 10), the hooks get it now.
      if (pending.withheld && ![2, 10].includes(data.error?.code)) {
        this._gate.forward({ ...pending.data, entry: ENTRY.jsonrpc }, 'pre')
      }
    }
    this._gate.forward({ ...data, entry: ENTRY.jsonrpc }, 'post')
  }
}
