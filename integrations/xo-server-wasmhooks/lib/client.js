// The few calls the plugin makes to wasmhooks' HTTP API, over one pool of
// kept-alive connections: a guarded call waits for this round trip, so it
// neither opens a connection nor goes through `fetch`'s streams.

import http from 'node:http'
import https from 'node:https'

/** How long an idle connection stays open for the next call. */
const IDLE_MS = 5000

/** Why wasmhooks could not answer: unreachable, timed out, or an error status. */
export class Unreachable extends Error {
  constructor(message, { status, cause } = {}) {
    super(message, { cause })
    this.name = 'Unreachable'
    this.status = status
  }
}

export class Client {
  /**
   * @param {object} conf
   * @param {string} conf.url wasmhooks' base URL, e.g. http://127.0.0.1:8080
   * @param {string} [conf.token] its API token (`WASMHOOKS_TOKEN`)
   */
  constructor({ url, token }) {
    this._base = url.replace(/\/+$/, '')
    this._headers = { 'content-type': 'application/json' }
    if (token) {
      this._headers.authorization = `Bearer ${token}`
    }
    this._transport = new URL(this._base).protocol === 'https:' ? https : http
    this._agent = this._pool()
  }

  _pool() {
    return new this._transport.Agent({ keepAlive: true, timeout: IDLE_MS })
  }

  /** Closes its connections (calls in flight fail); a later call opens new ones. */
  close() {
    this._agent.destroy()
    this._agent = this._pool()
  }

  /**
   * POSTs one event (a JSON string in XO's web-hooks format). Resolves to
   * the answer (a pre event's verdict, or `{accepted: true}`).
   * @param {string} body
   * @param {number} timeoutMs
   * @param {string} [traceparent] the W3C trace context of the event's call
   *   (lib/trace.js), which wasmhooks continues when its tracing is on
   */
  async postEvent(body, timeoutMs, traceparent) {
    return this._request('/v1/events', { method: 'POST', body, traceparent }, timeoutMs)
  }

  /**
   * Tells wasmhooks what the plugin guards (`PUT /v1/coverage/{reporter}`).
   * @param {string} reporter
   * @param {string} body the report, as JSON
   * @param {number} timeoutMs
   */
  async putCoverage(reporter, body, timeoutMs) {
    return this._request(`/v1/coverage/${encodeURIComponent(reporter)}`, { method: 'PUT', body }, timeoutMs)
  }

  /** `GET /healthz`: whether wasmhooks answers (the bench's floor). */
  async health(timeoutMs) {
    return this._request('/healthz', { method: 'GET' }, timeoutMs)
  }

  /** Every hook's status, as `GET /v1/hooks` gives it. */
  async hooks(timeoutMs) {
    return this._request('/v1/hooks', { method: 'GET' }, timeoutMs)
  }

  async _request(path, { method, body, traceparent }, timeoutMs) {
    const url = this._base + path
    let response
    try {
      response = await this._send(url, method, body, traceparent, timeoutMs)
    } catch (error) {
      const why = error.name === 'TimeoutError' ? `no answer within ${timeoutMs} ms` : (error.code ?? error.message)
      throw new Unreachable(`wasmhooks at ${this._base} cannot be reached (${why})`, { cause: error })
    }
    const { status, text } = response
    if (status < 200 || status > 299) {
      let message = text
      try {
        message = JSON.parse(text).error ?? text
      } catch {}
      throw new Unreachable(`wasmhooks at ${this._base} answered ${status} to ${method} ${path}: ${message}`, {
        status,
      })
    }
    try {
      return JSON.parse(text)
    } catch {
      // Taken (2xx) but not JSON: not worth sending again; callers that
      // need an answer check its shape.
      return undefined
    }
  }

  /** One request: its status and body, whole, within `timeoutMs`. */
  _send(url, method, body, traceparent, timeoutMs) {
    const headers = { ...this._headers }
    if (body !== undefined) {
      headers['content-length'] = Buffer.byteLength(body)
    }
    if (traceparent !== undefined) {
      headers.traceparent = traceparent
    }
    return new Promise((resolve, reject) => {
      const request = this._transport.request(
        url,
        { method, headers, agent: this._agent, signal: AbortSignal.timeout(timeoutMs) },
        response => {
          const chunks = []
          response.on('data', chunk => chunks.push(chunk))
          response.on('end', () => resolve({ status: response.statusCode, text: Buffer.concat(chunks).toString('utf8') }))
          response.on('error', reject)
        }
      )
      // An abort (the timeout) rejects with the signal's reason, a
      // `TimeoutError`.
      request.on('error', error => reject(error.name === 'AbortError' && error.cause !== undefined ? error.cause : error))
      request.end(body)
    })
  }
}
