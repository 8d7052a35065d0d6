// Events that XO does not wait for (post events, backup events, pre events
// of calls that are not guarded) go through a bounded queue, sent in the
// background and retried with back-off while wasmhooks cannot take them.

import { Unreachable } from './client.js'

/** Whether a failed send may succeed later (wasmhooks down, busy or misconfigured). */
function retryable(error) {
  return !(error instanceof Unreachable) || error.status === undefined || error.status >= 500 || [401, 403, 408, 429].includes(error.status)
}

/** wasmhooks refuses an event larger than this (413): not worth queuing. */
export const MAX_EVENT_BYTES = 1024 * 1024

export class Forwarder {
  /**
   * @param {object} opts
   * @param {import('./client.js').Client} opts.client
   * @param {object} opts.log an `@xen-orchestra/log` logger
   * @param {number} opts.maxQueued events kept at most; more are dropped (and counted)
   * @param {number} opts.maxQueuedBytes bytes of events kept at most, likewise
   * @param {number} opts.concurrency sends at once
   * @param {number} opts.timeoutMs per send
   * @param {[number, number]} opts.backoff first and longest pause after a failed send (ms)
   */
  constructor({
    client,
    log,
    maxQueued = 10000,
    maxQueuedBytes = 256 * 1024 * 1024,
    concurrency = 4,
    timeoutMs = 10000,
    backoff = [100, 30000],
  }) {
    this._maxQueuedBytes = maxQueuedBytes
    this._bytes = 0 // queued and in flight
    this._failing = false
    this._rejectedNow = 0
    Object.assign(this, { _client: client, _log: log, _maxQueued: maxQueued, _concurrency: concurrency })
    this._timeoutMs = timeoutMs
    this._backoff = backoff
    this._queue = []
    this._head = 0
    this._inFlight = 0
    this._pause = 0 // the current back-off, 0 when sends succeed
    this._timer = undefined
    this._stopped = false
    this._droppedNow = 0 // since the queue last had room
    this._idleWaiters = []
    this.stats = { forwarded: 0, retried: 0, dropped: 0, rejected: 0 }
  }

  /** Events waiting to be sent (not counting those in flight). */
  get queued() {
    return this._queue.length - this._head
  }

  /**
   * Queues one event (its JSON text) for sending, with its call's
   * `traceparent` (lib/trace.js), which goes with it on every attempt.
   */
  push(body, traceparent) {
    if (this._stopped) {
      return
    }
    if (body.length > MAX_EVENT_BYTES) {
      this.stats.dropped++
      this._log.warn(`an event of ${body.length} bytes is dropped: wasmhooks takes at most ${MAX_EVENT_BYTES}`)
      return
    }
    if (this.queued + this._inFlight >= this._maxQueued || this._bytes + body.length > this._maxQueuedBytes) {
      if (this._droppedNow++ === 0) {
        this._log.warn(
          `queue full (${this._maxQueued} events, maxQueued, or ${this._maxQueuedBytes} bytes): dropping events until wasmhooks takes them again`
        )
      }
      this.stats.dropped++
      return
    }
    this._bytes += body.length
    this._queue.push({ body, traceparent })
    this._pump()
  }

  /** A new bound, for a reconfigured plugin; what is queued stays. */
  resize(maxQueued) {
    this._maxQueued = maxQueued
  }

  /** Resolves once nothing is queued or in flight. */
  idle() {
    if (this.queued === 0 && this._inFlight === 0) {
      return Promise.resolve()
    }
    return new Promise(resolve => this._idleWaiters.push(resolve))
  }

  /** Stops sending; what is still queued is dropped, and logged. */
  stop() {
    this._stopped = true
    clearTimeout(this._timer)
    const left = this.queued + this._inFlight
    if (left !== 0) {
      this.stats.dropped += this.queued
      this._log.warn(
        `unloaded with ${left} events not yet forwarded: they are dropped (the ${this._inFlight} in flight may still arrive)`
      )
    }
    this._queue = []
    this._head = 0
    this._bytes = 0
    this._settle()
  }

  _pump() {
    while (!this._stopped && this._timer === undefined && this._inFlight < this._concurrency && this.queued !== 0) {
      const event = this._queue[this._head++]
      if (this._head > 1024 && this._head * 2 > this._queue.length) {
        this._queue = this._queue.slice(this._head)
        this._head = 0
      }
      this._inFlight++
      this._send(event)
    }
  }

  /** @param {{ body: string, traceparent?: string }} event as queued by `push` */
  async _send(event) {
    const { body, traceparent } = event
    let done = true
    try {
      await this._client.postEvent(body, this._timeoutMs, traceparent)
      this.stats.forwarded++
      // Only once no back-off is pending: a success among failures (a busy
      // engine answering some 503s) does not reset it.
      if (this._timer === undefined) {
        this._pause = 0
        if (this._failing) {
          this._failing = false
          this._log.info('forwarding events again')
        }
      }
      if (this._droppedNow !== 0 && this.queued < this._maxQueued) {
        this._log.warn(`dropped ${this._droppedNow} events while the queue was full (maxQueued ${this._maxQueued})`)
        this._droppedNow = 0
      }
    } catch (error) {
      if (this._stopped) {
        // dropped with the rest
      } else if (retryable(error)) {
        done = false
        this.stats.retried++
        this._queue.splice(this._head, 0, event)
        this._backOff(error)
      } else {
        this.stats.rejected++
        // One line per 100, so a wrong URL (404 each time) does not flood the log.
        if (this._rejectedNow++ % 100 === 0) {
          this._log.warn(`wasmhooks refused an event, which is dropped (${this.stats.rejected} so far): ${error.message}`)
        }
      }
    } finally {
      if (done) {
        this._bytes -= body.length
      }
      this._inFlight--
      this._pump()
      this._settle()
    }
  }

  _backOff(error) {
    if (this._timer !== undefined) {
      return
    }
    const [first, longest] = this._backoff
    this._pause = this._pause === 0 ? first : Math.min(this._pause * 2, longest)
    if (!this._failing) {
      this._failing = true
      this._log.warn(`cannot forward events, retrying with back-off: ${error.message}`)
    }
    this._timer = setTimeout(() => {
      this._timer = undefined
      this._pump()
    }, this._pause)
    this._timer.unref?.()
  }

  _settle() {
    if (this.queued === 0 && this._inFlight === 0) {
      for (const resolve of this._idleWaiters.splice(0)) {
        resolve()
      }
    }
  }
}
