// The JSON-RPC entry point (XO 5's web UI, xo-cli, scripts): xo-server's
// `apiMethods` table, and its `xo:preCall`/`xo:postCall` events.
//
// XO emits `xo:preCall` without acting on what a listener answers (an
// error is only logged), so a guarded method's entry in `xo.apiMethods` is
// replaced by a wrapper instead. The wrapper keeps the method's metadata
// (permission, params, resolve, …), so XO still checks permissions and
// parameters first; then it sends the call's pre event (XO's own, with its
// callId, user and IP) and waits for the verdict.
//
// A call's trace context (`traceparent`, lib/trace.js) is taken at its pre
// event and kept with what pairs it with its post event: the call's API
// context for JSON-RPC, and XO's own event object for a backup run, which
// XO emits again, completed, as the post event. Both are XO's per-call
// objects, so the plugin keeps nothing once a call is over.

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
    // XO's own pre event of each call, by the call's API context, until its
    // post event: { data, withheld, asked, trace }. The wrapper of a guarded
    // method sends it (once) after the permission check.
    this._pending = new WeakMap()
    // A backup run's trace context, by XO's event object (see above).
    this._backupTraces = new WeakMap()
    this._onPreCall = this._onPreCall.bind(this)
    this._onPostCall = this._onPostCall.bind(this)
    this._onBackupPreCall = this._onBackupPreCall.bind(this)
    this._onBackupPostCall = this._onBackupPostCall.bind(this)
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
    let trace
    if (pending !== undefined && !pending.asked && pending.data.method === name) {
      // XO's own pre event. If it was forwarded already (the method was
      // guarded meanwhile), wasmhooks recognises the callId and answers
      // with the first verdict, sending nothing twice. Kept for the post
      // event's trace context; no later call in this context takes it.
      pending.asked = true
      event = { ...pending.data, entry: ENTRY.jsonrpc, type: 'pre' }
      trace = pending.trace
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
      // No post event follows (XO emits none): a trace of its own.
      trace = this._gate.startTrace()
    }
    await this._gate.check(event, trace)
  }

  // XO looked the method up before this event: whether the wrapper runs
  // is decided already, and a refresh in between must not lose the pre
  // event or send it twice. So it is kept for the wrapper either way;
  // withheld if the method is guarded now (the wrapper sends it, after
  // XO's permission check), forwarded if not.
  _onPreCall(data) {
    const withheld = this._guarded.has(data.method)
    const trace = this._gate.startTrace()
    const context = this._xo.apiContext
    if (context !== undefined) {
      this._pending.set(context, { data, withheld, asked: false, trace })
    }
    if (!withheld) {
      this._gate.forward({ ...data, entry: ENTRY.jsonrpc }, 'pre', trace)
    }
  }

  // Never throws: `xo:postCall` is emitted synchronously, and a throwing
  // listener would turn a successful call into a failed one.
  _onPostCall(data) {
    const context = this._xo.apiContext
    const pending = context === undefined ? undefined : this._pending.get(context)
    let trace
    if (pending !== undefined && pending.data.callId === data.callId) {
      this._pending.delete(context)
      trace = pending.trace
      // Withheld, and no wrapper sent it: the method was unguarded in
      // between. Unless XO refused the call itself (permission: 2,
      // parameters: 10), the hooks get it now.
      if (pending.withheld && !pending.asked && ![2, 10].includes(data.error?.code)) {
        this._gate.forward({ ...pending.data, entry: ENTRY.jsonrpc }, 'pre', trace)
      }
    }
    // A post event whose pre event the plugin did not see (loaded during
    // the call, or an XO without API contexts) starts a trace of its own.
    this._gate.forward({ ...data, entry: ENTRY.jsonrpc }, 'post', trace ?? this._gate.startTrace())
  }

  _onBackupPreCall(data) {
    const trace = this._gate.startTrace()
    this._backupTraces.set(data, trace)
    this._gate.forward({ ...data, entry: ENTRY.job }, 'pre', trace)
  }

  // XO emits the pre event's object again, with the run's outcome: the same
  // key. A run that began before the plugin loaded starts its own trace.
  _onBackupPostCall(data) {
    const trace = this._backupTraces.get(data) ?? this._gate.startTrace()
    this._backupTraces.delete(data)
    this._gate.forward({ ...data, entry: ENTRY.job }, 'post', trace)
  }
}
