// The REST entry point, /rest/v0 (XO 6's web UI, REST scripts, and XO's
// MCP server, which drives XO through it). Its requests never pass through
// `apiMethods` or `xo:preCall`: the controllers call XAPI directly.
//
// Where it hooks in, read from XO's source (xo-server's index.mjs and
// xo-mixins/rest-api.mjs, @xen-orchestra/rest-api at 9ef53890):
//
// - Every route is an express route (tsoa's generated `app.post(path,
//   authenticate, ...middlewares, handler)`, and the routers that plugins
//   and older code mount under /rest/v0). The plugin wraps each mutating
//   route's last layer, its handler: XO's authentication, body parser and
//   `acl()` middleware have run by then, and the operation has not.
// - xo-server does not hand the express app to plugins. Node's
//   `http.server.request.start` diagnostics channel shows each request
//   before express sees it; once express has set `req.app` (synchronously,
//   in its first middleware), the plugin wraps the app's routes, before the
//   request reaches one (they all await authentication first). Routes
//   added later (another plugin's) are wrapped at the next request that
//   finds the route table changed.
// - A route whose operation XO runs as a task (`createAction`: every
//   `…/actions/…` route) is gated inside that task: the plugin wraps
//   `xo.tasks.create` and runs the verdict first in the task's `run`. An
//   asynchronous call (202 and a task id) is not held back, and a veto
//   ends XO's own task failed with the reason, where XO 6 shows any failed
//   task; a `?sync=true` call gets the error. Any other route is gated
//   before its handler: a veto answers XO's `forbiddenOperation` error (403).

import { AsyncLocalStorage } from 'node:async_hooks'
import diagnostics from 'node:diagnostics_channel'
import { ENTRY, callId, errorOf, mask } from './events.js'
import { BASE, MUTATING, isPlumbing, methodOf, runsAsTask } from './routes.js'

const REQUEST_START = 'http.server.request.start'
const TASK_TYPE = 'xo:rest-api:action'

/** Results larger than this (as JSON) are left out of post events. */
const MAX_RESULT_BYTES = 64 * 1024

export class RestGuard {
  /**
   * @param {object} opts
   * @param {object} opts.xo the xo-server app
   * @param {import('./gate.js').Gate} opts.gate
   * @param {(method: string) => boolean} opts.isGuarded
   * @param {object} opts.log an `@xen-orchestra/log` logger
   */
  constructor({ xo, gate, isGuarded, log }) {
    Object.assign(this, { _xo: xo, _gate: gate, _isGuarded: isGuarded, _log: log })
    this._calls = new AsyncLocalStorage()
    // Wrapped route layers: { layer, original, route }.
    this._wrapped = []
    this._app = undefined
    this._stamp = undefined
    this._problem = undefined
    this._onRequest = this._onRequest.bind(this)
    this._tasksCreate = undefined
  }

  start() {
    diagnostics.subscribe(REQUEST_START, this._onRequest)
    this._wrapTasks()
  }

  /** Puts every route handler and `xo.tasks.create` back as they were. */
  stop() {
    diagnostics.unsubscribe(REQUEST_START, this._onRequest)
    for (const { layer, original, wrapper } of this._wrapped) {
      if (layer.handle === wrapper) {
        layer.handle = original
      }
    }
    this._wrapped = []
    this._app = undefined
    this._stamp = undefined
    const tasks = this._xo.tasks
    if (this._tasksCreate !== undefined && tasks !== undefined) {
      if (Object.hasOwn(tasks, 'create') && tasks.create === this._tasksWrapper) {
        delete tasks.create
      }
      this._tasksCreate = undefined
    }
  }

  /**
   * What the plugin knows of XO's REST API: whether it found the routes
   * (`state`: `waiting` until XO's first HTTP request, `wrapped`, or
   * `failed` with `problem`), and each mutating route with its method name
   * and whether a call to it waits for the verdict.
   */
  routes() {
    const state = this._problem !== undefined ? 'failed' : this._app === undefined ? 'waiting' : 'wrapped'
    return {
      state,
      problem: this._problem,
      routes: this._wrapped.map(({ route }) => ({
        verb: route.verb,
        path: route.path,
        method: route.method,
        task: route.task,
        guarded: this._isGuarded(route.method),
      })),
    }
  }

  // ---------------------------------------------------------------------
  // Finding the routes.

  _onRequest({ request }) {
    const url = request.url ?? ''
    if (!url.startsWith(BASE)) {
      return
    }
    // express sets `req.app` in its first middleware, synchronously after
    // this channel: look once the current tick's work is done, which is
    // before any /rest/v0 route runs (each awaits authentication first).
    queueMicrotask(() => {
      try {
        this._adopt(request.app)
      } catch (error) {
        this._fail(`cannot wrap XO's REST routes: ${error.message}`)
      }
    })
  }

  _adopt(app) {
    const router = app?._router ?? app?.router
    if (!Array.isArray(router?.stack)) {
      // Another server in the process, once XO's routes are wrapped.
      if (this._app === undefined) {
        this._fail('the request has no express app with a route table (`req.app._router.stack`): this XO version is not supported')
      }
      return
    }
    if (this._app === app && this._stamp === stamp(router)) {
      return
    }
    const seen = new Set(this._wrapped.map(({ layer }) => layer))
    let added = 0
    for (const { layer, verb, path } of routeLayers(router.stack, '')) {
      if (seen.has(layer) || !path.startsWith(BASE) || isPlumbing(path)) {
        continue
      }
      const route = { verb, path, method: methodOf(verb, path), task: runsAsTask(verb, path) }
      const original = layer.handle
      const guard = this
      const wrapper = function wasmhooksRestGuard(req, res, next) {
        return guard._handle(route, original, this, req, res, next)
      }
      layer.handle = wrapper
      this._wrapped.push({ layer, original, wrapper, route })
      added++
    }
    if (this._app === undefined) {
      this._log.info(`guarding XO's REST API: ${this._wrapped.length} mutating routes found`)
    } else if (added !== 0) {
      this._log.info(`guarding ${added} more REST routes (${this._wrapped.length} in all)`)
    }
    this._app = app
    this._stamp = stamp(router)
    this._problem = undefined
  }

  _fail(problem) {
    if (this._problem !== problem) {
      this._log.error(`${problem}; calls through the REST API (XO 6, MCP) are NOT guarded`)
    }
    this._problem = problem
  }

  // ---------------------------------------------------------------------
  // One request.

  async _handle(route, original, thisArg, req, res, next) {
    const call = this._call(route, req)
    this._watch(call, res)
    const run = () => {
      call.handled = Promise.resolve(original.call(thisArg, req, res, this._observeErrors(call, next))).catch(() => {})
      return call.handled
    }
    if (route.task) {
      // Gated inside the task the handler creates (see `_wrapTasks`).
      return this._calls.run(call, run)
    }
    if (call.guarded) {
      try {
        await this._gate.check({ ...call.event, type: 'pre' })
      } catch (error) {
        call.error = error
        return next(error)
      }
    } else {
      this._gate.forward(call.event, 'pre')
    }
    call.started = true
    return this._calls.run(call, run)
  }

  /** The call's pre event (without `type`), and what is known of it. */
  _call(route, req) {
    const user = this._xo.apiContext?.user
    const body = req.body !== null && typeof req.body === 'object' && !Buffer.isBuffer(req.body) ? req.body : {}
    const client = req.get?.('x-xo-client') ?? req.headers?.['x-xo-client']
    const event = {
      callId: callId(),
      userId: user?.id,
      userName: user?.email ?? user?.name ?? '(unknown user)',
      userIp: req.ip,
      method: route.method,
      // Path parameters win over a body field of the same name: they are
      // what the operation acts on.
      params: mask({ ...body, ...req.params }),
      timestamp: Date.now(),
      entry: ENTRY.rest,
      rest: {
        verb: route.verb,
        route: route.path,
        path: req.path === undefined ? req.url : req.baseUrl + req.path,
        query: mask({ ...req.query }),
        ...(typeof client === 'string' && client !== '' ? { client: client.toLowerCase() } : {}),
      },
    }
    return {
      route,
      event,
      guarded: this._isGuarded(route.method),
      // Set once the operation may run: gated (or not guarded).
      started: false,
      // Whether the handler created its task (a task route).
      task: undefined,
      // The handler's promise, once it runs.
      handled: undefined,
      error: undefined,
      result: undefined,
      posted: false,
    }
  }

  /** Errors the handler passes on to XO's error handlers, for the post event. */
  _observeErrors(call, next) {
    return function (error) {
      if (error !== undefined && error !== 'route' && error !== 'router') {
        call.error ??= error
      }
      return next.apply(this, arguments)
    }
  }

  /** The post event of a call that did not run as a task, once answered. */
  _watch(call, res) {
    const json = res.json
    if (typeof json === 'function') {
      res.json = function (body) {
        call.result = body
        return json.apply(this, arguments)
      }
    }
    const finish = () => {
      if (call.task !== undefined || call.posted) {
        return
      }
      if (call.route.task && !call.started && call.error === undefined && res.statusCode < 400) {
        // A task route answered without creating its task, so the call
        // was never gated. Gate it before its handler from now on.
        call.route.task = false
        this._log.error(
          `${call.route.verb} ${call.route.path} answered without creating a task: it was not gated this time, and is gated before its handler from now on`
        )
      }
      if (!call.started && call.error === undefined) {
        // Refused by XO before the operation (validation, not found) or
        // never answered; as for JSON-RPC, only the post event is sent.
        call.error = res.statusCode >= 400 ? { message: call.result?.error ?? `HTTP ${res.statusCode}`, data: call.result?.data } : undefined
      }
      const failed = call.error !== undefined || res.statusCode >= 400
      this._post(call, failed ? errorOf(call.error ?? { message: call.result?.error ?? `HTTP ${res.statusCode}` }) : undefined, {
        status: res.statusCode,
        result: call.result,
      })
    }
    res.once('finish', finish)
    res.once('close', () => {
      if (res.writableFinished || call.task !== undefined || call.posted) {
        return
      }
      // The client went away. XO carries on with the operation: its post
      // event comes once the handler is done.
      if (call.handled === undefined) {
        call.error ??= new Error('the client closed the connection before the operation started')
        finish()
      } else {
        call.handled.then(finish)
      }
    })
  }

  _post(call, error, { status, result } = {}) {
    if (call.posted) {
      return
    }
    call.posted = true
    const now = Date.now()
    const post = { ...call.event, duration: now - call.event.timestamp, timestamp: now }
    if (status !== undefined) {
      post.rest = { ...post.rest, status }
    }
    if (error !== undefined) {
      post.error = error instanceof Error ? errorOf(error) : error
    } else {
      post.result = small(result) ?? true
    }
    this._gate.forward(post, 'post')
  }

  // ---------------------------------------------------------------------
  // Task routes.

  _wrapTasks() {
    const tasks = this._xo.tasks
    if (typeof tasks?.create !== 'function') {
      return
    }
    const original = tasks.create
    const guard = this
    this._tasksCreate = original
    this._tasksWrapper = function create(properties) {
      const task = original.apply(this, arguments)
      const call = guard._calls.getStore()
      if (call !== undefined && call.task === undefined && properties?.type === TASK_TYPE) {
        guard._gateTask(call, task)
      }
      return task
    }
    tasks.create = this._tasksWrapper
  }

  /** Runs the verdict first in `task`, and sends the post event at its end. */
  _gateTask(call, task) {
    call.task = task
    call.event.taskId = task.id
    const run = task.run
    const guard = this
    task.run = function (fn) {
      return run.call(this, async () => {
        if (call.guarded) {
          try {
            await guard._gate.check({ ...call.event, type: 'pre' })
          } catch (error) {
            guard._post(call, error)
            throw error
          }
        } else {
          guard._gate.forward(call.event, 'pre')
        }
        call.started = true
        try {
          const result = await fn.apply(this, arguments)
          guard._post(call, undefined, { result })
          return result
        } catch (error) {
          guard._post(call, error)
          throw error
        }
      })
    }
  }
}

/** Mutating routes in `stack` and the routers mounted in it, with full paths. */
function* routeLayers(stack, base) {
  for (const layer of stack) {
    const route = layer.route
    if (route !== undefined) {
      const path = base + route.path
      const last = route.stack?.at(-1)
      if (typeof path !== 'string' || last === undefined || typeof last.handle !== 'function') {
        continue
      }
      const verbs = Object.keys(route.methods ?? {})
        .filter(m => route.methods[m])
        .map(m => m.toUpperCase())
      const verb = verbs.find(v => MUTATING.has(v))
      if (verb !== undefined) {
        yield { layer: last, verb, path }
      }
    } else if (Array.isArray(layer.handle?.stack)) {
      const mount = mountPath(layer)
      if (mount !== undefined) {
        yield* routeLayers(layer.handle.stack, base + mount)
      }
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
  const found = /^\^((?:\\\/[\w.-]+)+)\\\/\?\(\?=\\\/\|\$\)$/.exec(source)
  return found === null ? undefined : found[1].replace(/\\\//g, '/')
}

/** Changes whenever a route is added to or removed from the table. */
function stamp(router) {
  let n = 0
  const count = stack => {
    for (const layer of stack) {
      n++
      if (Array.isArray(layer.handle?.stack)) {
        count(layer.handle.stack)
      }
    }
  }
  count(router.stack)
  return n
}

/** `value` if it is small enough to send in a post event. */
function small(value) {
  if (value === undefined) {
    return undefined
  }
  try {
    const json = JSON.stringify(value)
    return json !== undefined && json.length <= MAX_RESULT_BYTES ? value : undefined
  } catch {
    return undefined
  }
}
