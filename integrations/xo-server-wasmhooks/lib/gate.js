// Asking wasmhooks whether a guarded call may go ahead: one place for both
// entry points (JSON-RPC and REST), so a veto, a monitor-mode hook and a
// missing verdict are handled the same way whichever way the call came in.
// Each call's events carry the trace context the call started with
// (`startTrace`), so that its pre and post events land in one trace.

import { forbidden } from './events.js'
import { traceparent } from './trace.js'

export class Gate {
  /**
   * @param {object} opts
   * @param {() => object} opts.settings the plugin's current settings
   * @param {() => import('./client.js').Client} opts.client
   * @param {import('./forwarder.js').Forwarder} opts.forwarder
   * @param {object} opts.log an `@xen-orchestra/log` logger
   */
  constructor({ settings, client, forwarder, log }) {
    Object.assign(this, { _settings: settings, _client: client, _forwarder: forwarder, _log: log })
  }

  /**
   * A new call's trace context (a `traceparent`), sampled as configured
   * (`traceSampleRatio`): the entry points take one when a call starts and
   * send it with each of its events.
   */
  startTrace() {
    return traceparent(this._settings().traceSampleRatio)
  }

  /**
   * Sends a guarded call's pre event (with `type: 'pre'`) and waits for the
   * verdict. Resolves if the call may go ahead; throws XO's
   * `forbiddenOperation` error, with the hook's name and reason, if not.
   * @param {object} event
   * @param {string} trace the call's `traceparent` (`startTrace`)
   */
  async check(event, trace) {
    const { method } = event
    const conf = this._settings()
    let verdict
    let body
    try {
      body = JSON.stringify(event)
      verdict = await this._client().postEvent(body, conf.preTimeout, trace)
      if (typeof verdict?.allowed !== 'boolean') {
        throw new Error(`not a verdict: ${JSON.stringify(verdict)?.slice(0, 200)}`)
      }
    } catch (error) {
      // Unreachable, timed out, refused, not a verdict, or params that are
      // not JSON. The hooks still get the event, later (a copy that did
      // arrive is recognised by its callId).
      if (body !== undefined) {
        this._forwarder.push(body, trace)
      }
      if (conf.failClosed) {
        this._log.warn(`refusing ${method}: no verdict (${error.message}), and the plugin fails closed`)
        throw forbidden(
          method,
          `wasmhooks gave no verdict (${error.message}), and xo-server-wasmhooks is set to fail closed: try again once wasmhooks is back`
        )
      }
      this._log.warn(`${method} goes ahead without a verdict: ${error.message} (the plugin fails open)`)
      return
    }
    for (const { hook, reason } of verdict.would_deny ?? []) {
      this._log.info(`monitor mode: the hook ${hook} would refuse ${method}: ${reason}`, { callId: event.callId })
    }
    for (const { hook, kind, message } of verdict.failures ?? []) {
      this._log.warn(`the hook ${hook} failed on ${method} (${kind}): ${message}`, { callId: event.callId })
    }
    if (!verdict.allowed) {
      throw forbidden(method, `refused by the wasmhooks hook ${verdict.denied_by}: ${verdict.reason}`, verdict.denied_by)
    }
  }

  /**
   * Queues an event XO does not wait for; never throws.
   * @param {object} data
   * @param {'pre' | 'post'} type
   * @param {string} trace the call's `traceparent` (`startTrace`)
   */
  forward(data, type, trace) {
    try {
      this._forwarder.push(JSON.stringify({ ...data, type }), trace)
    } catch (error) {
      this._log.warn(`cannot forward the ${type} event of ${data?.method}: ${error.message}`)
    }
  }
}
