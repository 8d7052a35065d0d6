// What the plugin sends: XO's web-hooks payload (the data of `xo:preCall`
// and `xo:postCall`, plus `type`), with where the call came in (`entry`).

import Obfuscate from '@vates/obfuscate'
import apiErrors from 'xo-common/api-errors.js'

/** The entry points into XO, as events and coverage reports name them. */
export const ENTRY = Object.freeze({
  jsonrpc: 'jsonrpc', // xo-server's JSON-RPC API: XO 5's web UI, xo-cli, scripts
  rest: 'rest', // /rest/v0: XO 6's web UI, REST scripts, XO's MCP server
  job: 'job', // XO's job executor: backup runs, scheduled or not
})

/** Values XO hides in its events' params, as XO hides them (`@vates/obfuscate`). */
export function mask(value) {
  return Obfuscate.replace(value, '* obfuscated *')
}

/** A fresh call id, in XO's own format. */
export function callId() {
  return Math.random().toString(36).slice(2)
}

/** An error as XO puts it in a post event. */
export function errorOf(error) {
  if (error === null || typeof error !== 'object') {
    return { message: String(error) }
  }
  const { code, data, message, name } = error
  return { code, data, message: message ?? String(error), name }
}

/**
 * XO's error for a refused operation, with a message the user can act on;
 * `data.hook` names the hook that refused it.
 */
export function forbidden(method, reason, hook) {
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
