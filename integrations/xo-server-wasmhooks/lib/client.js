// The few calls the plugin makes to wasmhooks' HTTP API.

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
  }

  /**
   * POSTs one event (a JSON string in XO's web-hooks format). Resolves to
   * the answer (a pre event's verdict, or `{accepted: true}`).
   * @param {string} body
   * @param {number} timeoutMs
   */
  async postEvent(body, timeoutMs) {
    return this._request('/v1/events', { method: 'POST', body }, timeoutMs)
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

  /** Every hook's status, as `GET /v1/hooks` gives it. */
  async hooks(timeoutMs) {
    return this._request('/v1/hooks', { method: 'GET' }, timeoutMs)
  }

  async _request(path, init, timeoutMs) {
    const url = this._base + path
    let response
    try {
      response = await fetch(url, { ...init, headers: this._headers, signal: AbortSignal.timeout(timeoutMs) })
    } catch (error) {
      const why = error.name === 'TimeoutError' ? `no answer within ${timeoutMs} ms` : (error.cause?.code ?? error.message)
      throw new Unreachable(`wasmhooks at ${this._base} cannot be reached (${why})`, { cause: error })
    }
    const text = await response.text()
    if (!response.ok) {
      let message = text
      try {
        message = JSON.parse(text).error ?? text
      } catch {}
      throw new Unreachable(`wasmhooks at ${this._base} answered ${response.status} to ${init.method} ${path}: ${message}`, {
        status: response.status,
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
}
