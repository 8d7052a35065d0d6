// Reading an express app from outside it: when a request reaches express,
// and which handler serves each route. express 4 and 5 differ in both; what
// is read here follows their source (express 4's `lib/router`, and the
// `router` package express 5 uses).

import { BASE, MUTATING } from './routes.js'

/**
 * Calls `ready` once express has taken `response` in hand: express 4
 * (`expressInit`) and 5 (`app.handle`) set `res.locals` right after giving
 * the request its prototype (and so `req.app`), before any middleware runs.
 * `ready` runs there, synchronously, so it sees the route table before the
 * request is routed.
 */
export function onExpressRequest(response, ready) {
  let locals
  Object.defineProperty(response, 'locals', {
    configurable: true,
    enumerable: true,
    get: () => locals,
    set: value => {
      Object.defineProperty(response, 'locals', { configurable: true, enumerable: true, writable: true, value })
      ready()
    },
  })
}

/**
 * Each verb's handler layer of the mutating routes in `stack` and the
 * routers mounted in it, with full paths; a router whose mount path cannot
 * be read goes into `unreadable`.
 */
export function* routeLayers(stack, base, unreadable) {
  for (const layer of stack) {
    const route = layer.route
    if (route !== undefined) {
      const path = base + route.path
      if (typeof route.path !== 'string' || !Array.isArray(route.stack)) {
        continue
      }
      // The last layer of each verb is its handler (`route.post(a, b)`
      // stacks a and b; `app.all` is one layer for every verb).
      const last = new Map()
      for (const l of route.stack) {
        if (typeof l.handle === 'function') {
          last.set(l.method === undefined ? '*' : l.method.toUpperCase(), l)
        }
      }
      for (const [verb, l] of last) {
        if (verb === '*' || verb === '_ALL' || MUTATING.has(verb)) {
          yield { layer: l, verb: verb === '_ALL' ? '*' : verb, path }
        }
      }
    } else if (Array.isArray(layer.handle?.stack)) {
      const mount = mountPath(layer)
      if (mount === undefined) {
        const where = layer.regexp?.source ?? '(unknown)'
        if (base.toLowerCase().startsWith(BASE) || /rest/i.test(where)) {
          unreadable.add(`${base} ${where}`.trim())
        }
        continue
      }
      yield* routeLayers(layer.handle.stack, base + mount, unreadable)
    }
  }
}

/** Where a router is mounted: express 4 keeps only its regexp. */
function mountPath(layer) {
  if (typeof layer.path === 'string') {
    return layer.path === '/' ? '' : layer.path
  }
  const source = layer.regexp?.source
  if (source === undefined) {
    return undefined
  }
  if (layer.regexp.fast_slash || source === '^\\/?(?=\\/|$)') {
    return ''
  }
  // express 4: /^\/rest\/v0\/?(?=\/|$)/i
  const found = /^\^((?:\\\/(?:[\w-]|\\\.)+)+)\\\/\?\(\?=\\\/\|\$\)$/.exec(source)
  return found === null ? undefined : found[1].replace(/\\(.)/g, '$1')
}
