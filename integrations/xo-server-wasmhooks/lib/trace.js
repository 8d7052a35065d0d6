// The W3C trace context an XO call starts. wasmhooks continues a
// `traceparent` header on POST /v1/events, so the plugin sends the same one
// with a call's pre and post events: both land in one trace, which begins
// at XO's call rather than at the engine.

import { randomBytes } from 'node:crypto'

/**
 * A fresh `traceparent` (`00-TRACEID-SPANID-FLAGS`, version 00) for one
 * call, sampled (flags 01) with probability `sampleRatio`. The engine's
 * sampler follows its parent, so these flags decide whether it records the
 * call's trace.
 * @param {number} sampleRatio from 0 (never) to 1 (always)
 */
export function traceparent(sampleRatio) {
  // One draw for both ids: a guarded call waits for this. An id of all
  // zeros is invalid (W3C), and the engine would drop the context: unlikely
  // (2^-64 for the span id), but then draw again.
  let bytes
  do {
    bytes = randomBytes(24)
  } while (allZeros(bytes, 0, 16) || allZeros(bytes, 16, 24))
  const hex = bytes.toString('hex')
  // Math.random() is in [0, 1): a ratio of 1 always samples, 0 never does.
  const flags = Math.random() < sampleRatio ? '01' : '00'
  return `00-${hex.slice(0, 32)}-${hex.slice(32)}-${flags}`
}

function allZeros(bytes, start, end) {
  for (let i = start; i < end; i++) {
    if (bytes[i] !== 0) {
      return false
    }
  }
  return true
}
