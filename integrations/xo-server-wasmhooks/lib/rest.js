// The REST entry point, /rest/v0 (XO 6's web UI, REST scripts, and XO's
// MCP server, which drives XO through it). Its requests never pass through
// `apiMethods` or `xo:preCall`: the controllers call XAPI directly.
//
// Where it hooks in, read from XO's source (xo-server's index.mjs and
// xo-mixins/rest-api.mjs, @xen-orchestra/rest-api at 9ef53890):
//
// - Every route is an express route: tsoa's generated `app.post(path,
//   authenticate, ...middlewares, handler)`, the legacy router of
//   `registerRestApi` (mounted before XO's authentication; each handler
//   authenticates, then runs inside `xo.runWithApiContext`), and the router
//   of `registerRestRoutes` (after it). The plugin wraps, for each verb of
//   each mutating route, the route's last layer: its handler.
// - xo-server does not hand the express app to plugins. Node's
//   `http.server.request.start` diagnostics channel shows each request
//   before express does; express gives the request its prototype (and so
//   `req.app`) and then sets `res.locals`, before any middleware runs. The
//   plugin catches that assignment, and there, synchronously, wraps every
//   route not wrapped yet: the request's own route included, and routes a
//   plugin added since the last request.
// - When the verdict is asked:
//   - a route XO runs as a task (`createAction`; routes.js lists them) is
//     gated inside its task: the plugin wraps `xo.tasks.create`, and the
//     task's `run` asks first. An asynchronous call is not held back (202
//     and a task id), and a veto ends XO's own task failed with the reason,
//     where XO 6 shows any failed task; a `?sync=true` call gets the error;
//   - a legacy route (`autoRegisteredHandler`) is gated once XO has
//     authenticated its user: the plugin wraps `xo.runWithApiContext`,
//     which that handler calls next;
//   - any other route is gated before its handler, after XO's
//     authentication and `acl()` middleware (a plugin's route checks its
//     own authorization in its handler, after the verdict).
//   A veto answers XO's `forbiddenOperation` error (HTTP 403).

import { AsyncLocalStorage } from 'node:async_hooks'
import diagnostics from 'node:diagnostics_channel'
import { ENTRY, callId, errorOf, forbidden, mask } from './events.js'
import { onExpressRequest, routeLayers } from './express.js'
import { BASE, MUTATING, isPlumbing, methodOf, runsAsTask } from './routes.js'

const REQUEST_START = 'http.server.request.start'
const TASK_TYPE = 'xo:rest-api:action'
// xo-mixins/rest-api.mjs: the handler of a `registerRestApi` route.
const LEGACY_HANDLER = 'autoRegisteredHandler'

/** Results larger than this (as JSON) are left out of post events. */
const MAX_RESULT_BYTES = 64 * 1024

/** How a route's call is gated (see the top of this file). */
const GATED = Object.freeze({ inTask: 'task', inContext: 'context', before: 'before' })

export class RestGuard {
  /**
   * @param {object} opts
   * @param {object} opts.xo the xo-server app
   * @param {import('./gate.js').Gate} opts.gate
   * @param {(method: string) => boolean} opts.isGuarded
   * @param {() => void} opts.onChange called when routes are found or added
   * @param {object} opts.log an `@xen-orchestra/log` logger
   */
  constructor({ xo, gate, isGuarded, onChange, log }) {
    Object.assign(this, { _xo: xo, _gate: gate, _isGuarded: isGuarded, _onChange: onChange, _log: log })
    this._calls = new AsyncLocalStorage()
    this._onRequest = this._onRequest.bind(this)
    this._reset()
  }

  _reset() {
    this._started = false
    // Wrapped handlers, by layer: { layer, original, wrapper, route }.
    this._wrapped = new Map()
    this._app = undefined
    this._problem = undefined
    // Routers under /rest/v0 whose mount path could not be read.
    this._unreadable = new Set()
    // What `xo.tasks.create` and `xo.runWithApiContext` were, to put back.
    this._restore = []
  }

  start() {
    this._started = true
    diagnostics.subscribe(REQUEST_START, this._onRequest)
    const guard = this
    this._replace(this._xo.tasks, 'create', original =>
      function create(properties) {
        const task = original.apply(this, arguments)
        const call = guard._calls.getStore()
        if (call !== undefined && call.task === undefined && properties?.type === TASK_TYPE) {
          guard._inTask(call, task)
        }
        return task
      }
    )
    this._replace(this._xo, 'runWithApiContext', original =>
      function runWithApiContext(user, fn) {
        const call = guard._calls.getStore()
        if (call === undefined || call.route.gated !== GATED.inContext || call.checked !== undefined) {
          return original.apply(this, arguments)
        }
        guard._setUser(call, user)
        return original.call(this, user, async (...args) => {
          await guard._check(call)
          return fn(...args)
        })
      }
    )
  }

  /** Puts every route handler, `xo.tasks.create` and `xo.runWithApiContext` back. */
  stop() {
    diagnostics.unsubscribe(REQUEST_START, this._onRequest)
    for (const { layer, original, wrapper } of this._wrapped.values()) {
      if (layer.handle === wrapper) {
        layer.handle = original
      }
    }
    for (const restore of this._restore.reverse()) {
      restore()
    }
    this._reset()
  }

  /**
   * What the plugin knows of XO's REST API: whether it found the routes
   * (`state`: `waiting` until XO's first HTTP request, `wrapped`, or
   * `failed` with `problem`), each mutating route with its method name and
   * whether a call to it waits for the verdict, and the routers it could
   * not read.
   */
  routes() {
    const state = this._problem !== undefined ? 'failed' : this._app === undefined ? 'waiting' : 'wrapped'
    return {
      state,
      problem: this._problem,
      unreadable: [...this._unreadable],
      // A route for every verb (`app.all`) is one entry per mutating verb:
      // each has its own method name, guarded or not.
      routes: [...this._wrapped.values()].flatMap(({ route }) =>
        (route.verb === '*' ? [...MUTATING] : [route.verb]).map(verb => {
          const method = route.verb === '*' ? methodOf(verb, route.path) : route.method
          return {
            verb,
            path: route.path,
            method,
            task: route.gated === GATED.inTask,
            guarded: this._isGuarded(method),
          }
        })
      ),
    }
  }

  /** Replaces `object[key]` by `make(original)`, and keeps how to put it back. */
  _replace(object, key, make) {
    if (typeof object?.[key] !== 'function') {
      return
    }
    const own = Object.getOwnPropertyDescriptor(object, key)
    const wrapper = make(object[key])
    object[key] = wrapper
    this._restore.push(() => {
      if (object[key] !== wrapper) {
        this._log.warn(`${key} was replaced by someone else since the plugin wrapped it; leaving it as it is`)
      } else if (own === undefined) {
        delete object[key]
      } else {
        Object.defineProperty(object, key, own)
      }
    })
  }

  // ---------------------------------------------------------------------
  // Finding the routes.

  _onRequest({ request, response }) {
    if (!this._started || (this._app !== undefined && !MUTATING.has(request.method))) {
      return
    }
    onExpressRequest(response, () => {
      try {
        this._adopt(request.app)
      } catch (error) {
        this._fail(`cannot wrap XO's REST routes: ${error.message}`)
      }
    })
  }

  _adopt(app) {
    if (!this._started) {
      return
    }
    const router = app?._router ?? app?.router
    if (!Array.isArray(router?.stack)) {
      // Another server in the process, once XO's routes are wrapped.
      if (this._app === undefined) {
        this._fail('the request has no express app with a route table (`req.app._router.stack`): this XO version is not supported')
      }
      return
    }
    const present = new Set()
    const unreadable = new Set()
    let added = 0
    for (const found of routeLayers(router.stack, '', unreadable)) {
      const { layer, verb, path } = found
      present.add(layer)
      if (this._wrapped.has(layer) || !path.toLowerCase().startsWith(BASE) || isPlumbing(path)) {
        continue
      }
      const original = layer.handle
      const route = {
        verb,
        path,
        method: methodOf(verb === '*' ? 'POST' : verb, path),
        gated:
          verb !== '*' && runsAsTask(verb, path)
            ? GATED.inTask
            : original.name === LEGACY_HANDLER
              ? GATED.inContext
              : GATED.before,
      }
      const guard = this
      const wrapper = function (req, res, next) {
        return guard._handle(route, original, this, req, res, next)
      }
      // Same name: XO finds a legacy route to remove by its handler's name.
      Object.defineProperty(wrapper, 'name', { value: original.name })
      layer.handle = wrapper
      this._wrapped.set(layer, { layer, original, wrapper, route })
      added++
    }
    // Routes removed from the table (a plugin unloaded) are forgotten.
    let removed = 0
    for (const layer of this._wrapped.keys()) {
      if (!present.has(layer)) {
        this._wrapped.delete(layer)
        removed++
      }
    }
    for (const mount of unreadable) {
      if (!this._unreadable.has(mount)) {
        this._log.error(`a router mounted at ${mount} could not be read: its routes are NOT guarded`)
      }
    }
    const first = this._app === undefined
    const changed = first || added !== 0 || removed !== 0 || this._problem !== undefined || unreadable.size !== this._unreadable.size
    this._app = app
    this._problem = undefined
    this._unreadable = unreadable
    if (first) {
      this._log.info(`guarding XO's REST API: ${this._wrapped.size} mutating routes found`)
    } else if (added !== 0) {
      this._log.info(`guarding ${added} more REST routes (${this._wrapped.size} in all)`)
    }
    if (changed) {
      this._onChange()
    }
  }

  _fail(problem) {
    if (this._problem !== problem) {
      this._log.error(`${problem}; calls through the REST API (XO 6, MCP) are NOT guarded`)
      this._problem = problem
      this._onChange()
    }
  }

  // ---------------------------------------------------------------------
  // One request.

  async _handle(route, original, thisArg, req, res, next) {
    const verb = route.verb === '*' ? req.method : route.verb
    if (!MUTATING.has(verb)) {
      return original.call(thisArg, req, res, next)
    }
    const call = this._call(route, verb, req)
    this._watch(call, res)
    const run = () => {
      let result
      try {
        result = original.call(thisArg, req, res, this._observeErrors(call, next))
      } catch (error) {
        call.error ??= error
        next(error)
      }
      // The client may be gone: the post event then comes once the handler is done.
      call.handled = Promise.resolve(result)
        .catch(() => {})
        .then(() => call.gone && this._finish(call, res))
      return result
    }
    if (route.gated === GATED.before) {
      try {
        await this._check(call)
      } catch (error) {
        return next(error)
      }
    }
    return this._calls.run(call, run)
  }

  /** The call's pre event (without `type`), and what is known of it. */
  _call(route, verb, req) {
    const body = req.body !== null && typeof req.body === 'object' && !Buffer.isBuffer(req.body) ? req.body : {}
    const client = req.get?.('x-xo-client') ?? req.headers?.['x-xo-client']
    const method = route.verb === '*' ? methodOf(verb, route.path) : route.method
    const event = {
      callId: callId(),
      method,
      // Path parameters win over a body field of the same name: they are
      // what the operation acts on.
      params: mask({ ...body, ...req.params }),
      timestamp: Date.now(),
      entry: ENTRY.rest,
      rest: {
        verb,
        route: route.path,
        path: req.path === undefined ? req.url : req.baseUrl + req.path,
        query: mask({ ...req.query }),
        ...(typeof client === 'string' && client !== '' ? { client: client.toLowerCase() } : {}),
      },
    }
    const call = {
      route,
      event,
      // The trace context its pre and post events carry.
      trace: this._gate.startTrace(),
      guarded: this._isGuarded(method),
      // The verdict's promise, once asked (or forwarded, if not guarded).
      checked: undefined,
      // Whether the operation may run: gated, or not guarded.
      started: false,
      // The task the handler created, if any: the post event comes at its end.
      task: undefined,
      // The handler's promise, once it runs.
      handled: undefined,
      // The client closed the connection before the answer.
      gone: false,
      error: undefined,
      result: undefined,
      posted: false,
    }
    this._setUser(call, this._xo.apiContext?.user)
    call.event.userIp = req.ip
    return call
  }

  _setUser(call, user) {
    Object.assign(call.event, { userId: user?.id, userName: user?.email ?? '(unknown user)' })
  }

  /**
   * Asks for the verdict (or forwards the pre event, if the method is not
   * guarded), once per call. Throws XO's error if the call may not go
   * ahead, and sends its post event then.
   */
  _check(call) {
    call.checked ??= (async () => {
      if (call.guarded) {
        try {
          await this._gate.check({ ...call.event, type: 'pre' }, call.trace)
        } catch (error) {
          call.error = error
          this._post(call, error)
          // Without a user (a request XO has not authenticated, and will
          // likely refuse), a veto does not say which hook, or why.
          if (call.event.userId === undefined && error.data?.hook !== undefined) {
            throw forbidden(call.event.method, 'refused by a wasmhooks gate')
          }
          throw error
        }
      } else {
        this._gate.forward(call.event, 'pre', call.trace)
      }
      call.started = true
    })()
    return call.checked
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

  _watch(call, res) {
    const json = res.json
    if (typeof json === 'function') {
      res.json = function (body) {
        call.result = body
        return json.apply(this, arguments)
      }
    }
    res.once('finish', () => this._finish(call, res))
    res.once('close', () => {
      if (!res.writableFinished) {
        // XO carries on with the operation (if it runs at all): its post
        // event comes once the handler is done, or the task ends.
        call.gone = true
        call.handled?.then(() => this._finish(call, res))
      }
    })
  }

  /** The post event of a call answered without a task (or whose task never came). */
  _finish(call, res) {
    if (call.task !== undefined || call.posted) {
      return
    }
    const { route } = call
    if (route.gated !== GATED.before && !call.started && call.error === undefined && res.statusCode < 400) {
      // It answered without asking for the verdict where it was expected
      // to: gate this route before its handler from now on.
      const where = route.gated === GATED.inTask ? 'creating its task' : 'running in an API context'
      route.gated = GATED.before
      this._log.error(
        `${route.verb} ${route.path} answered without ${where}: it was not gated this time, and is gated before its handler from now on`
      )
    }
    const failed = call.error !== undefined || res.statusCode >= 400
    const error = call.error ?? { message: call.result?.error ?? `HTTP ${res.statusCode}`, data: call.result?.data }
    this._post(call, failed ? error : undefined, { status: res.statusCode, result: call.result })
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
      post.error = errorOf(error)
    } else if (result === undefined) {
      // As XO does for a JSON-RPC call that returns nothing.
      post.result = true
    } else if (fits(result)) {
      post.result = result
    } else {
      post.resultOmitted = `larger than ${MAX_RESULT_BYTES} bytes as JSON`
    }
    this._gate.forward(post, 'post', call.trace)
  }

  // ---------------------------------------------------------------------
  // Tasks.

  /** Asks for the verdict first in `task` (if not asked yet), and posts at its end. */
  _inTask(call, task) {
    call.task = task
    call.event.taskId = task.id
    const run = task.run
    const guard = this
    task.run = function (fn) {
      return run.call(this, async (...args) => {
        // Asked already if the route was gated before its handler; a veto
        // ends the task failed (and sends the post event).
        await guard._check(call)
        try {
          const result = await fn(...args)
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

function fits(value) {
  try {
    const json = JSON.stringify(value)
    return json === undefined || json.length <= MAX_RESULT_BYTES
  } catch {
    return false
  }
}
