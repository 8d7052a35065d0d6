// XO's REST API (/rest/v0) for the stand-in, served by a real express 4 on
// 127.0.0.1 as xo-server serves @xen-orchestra/rest-api. Written for these
// tests from XO's source at 9ef53890; what matters to the plugin is kept:
//
// - xo-mixins/rest-api.mjs mounts a legacy router at /rest/v0 first, then
//   `setupRestApi`: `setupApiContext` (a token cookie or basic auth,
//   `xo.authenticateUser`, then `xo.runWithApiContext(user, next)`), the
//   routes as tsoa generates them (`app.verb(path, authenticate,
//   ...middlewares, async function Controller_method(req, res, next))`, each
//   mutating route with its `json()` and `acl()` middlewares), a router for
//   routes that plugins mount later (`xo.registerRestRoutes`), and the error
//   handlers (an XO error's code gives the status: 403 for
//   `forbiddenOperation`, 404 `noSuchObject`, 422 `invalidParameters`, …);
// - `createAction` (abstract-classes/base-controller.mts) runs the operation
//   in an `xo.tasks` task of type `xo:rest-api:action` named `REST API: …`,
//   answers 202 with the task id, or waits for it with `?sync=true`;
// - controllers call XAPI directly (the fake XAPI records each call in
//   `xo.ran`), some through `createAction`, some inline (`DELETE /vms/{id}`
//   is `VM_destroy` at once).

import cookieParser from 'cookie-parser'
import express, { Router, json } from 'express'
import apiErrors from 'xo-common/api-errors.js'
import { once } from 'node:events'
import { createServer } from 'node:http'

const BASE_URL = '/rest/v0'
const ACL_MIDDLEWARE_NAME = '_aclMiddleware'

/** @xen-orchestra/rest-api's error with an HTTP status. */
class ApiError extends Error {
  constructor(message, status, { data } = {}) {
    super(message)
    this.status = status
    this.data = data
  }
}

/**
 * The fake XAPI: objects by id, and the calls made, in `xo.ran`. `gate`, if
 * set, is awaited by every call (to hold an operation in flight).
 */
export class FakeXapi {
  constructor(xo) {
    this.xo = xo
    this.objects = new Map()
    this.gate = undefined
  }

  add(object) {
    this.objects.set(object.id, object)
  }

  getObject(id, type) {
    const object = this.objects.get(id)
    if (object === undefined || (type !== undefined && object.type !== type)) {
      apiErrors.noSuchObject(id, type)
    }
    return object
  }

  async call(method, id) {
    this.entered?.()
    await this.gate
    this.xo.ran.push([method, id])
  }

  /**
   * Holds the next calls in flight: resolves `entered` when one arrives,
   * and lets them through on `release()`.
   */
  hold() {
    let release
    this.gate = new Promise(resolve => (release = resolve))
    const entered = new Promise(resolve => (this.entered = resolve))
    return {
      entered,
      release: () => {
        this.gate = undefined
        this.entered = undefined
        release()
      },
    }
  }
}

/** Serves the REST API of `xo` on 127.0.0.1, port 0. */
export async function serveRest(xo) {
  const xapi = (xo.xapi ??= new FakeXapi(xo))
  const app = express()
  app.use(cookieParser())

  // xo-mixins/rest-api.mjs: the legacy router (`registerRestApi`) comes first.
  const legacy = Router({ strict: false })
  app.use(BASE_URL, legacy)
  xo.registerRestApi = (spec, base = '/') => registerRestApi(xo, legacy, spec, base)
  app.use(BASE_URL, setupApiContext(xo))

  const route = (verb, path, ...handlers) => app[verb](BASE_URL + path, authenticate(xo), ...handlers)
  const objectAcl = (resource, action, getObject) => acl(xo, { resource, action, objectId: 'params.id', getObject })

  // VmController
  route('get', '/vms', function VmController_getVms(req, res) {
    res.json([...xapi.objects.values()].filter(o => o.type === 'VM').map(o => `${BASE_URL}/vms/${o.id}`))
  })
  route(
    'post',
    '/vms/:id/actions/start',
    json(),
    acl(xo, [
      { resource: 'vm', action: 'start', objectId: 'params.id' },
      { resource: 'host', action: 'allow-vm', objectId: 'body.hostId' },
    ]),
    tsoa(xo, async (req, controller) => {
      const vmId = req.params.id
      return controller.createAction(() => xapi.call('VM.start', vmId), {
        sync: req.query.sync === 'true',
        statusCode: 204,
        taskProperties: { args: req.body, name: 'start VM', objectId: vmId },
      })
    }, 'VmController_startVm')
  )
  route(
    'post',
    '/vms/:id/actions/clean_shutdown',
    objectAcl('vm', 'shutdown:clean'),
    tsoa(xo, async (req, controller) =>
      controller.createAction(() => xapi.call('VM.clean_shutdown', req.params.id), {
        sync: req.query.sync === 'true',
        statusCode: 204,
        taskProperties: { name: 'clean shutdown VM', objectId: req.params.id },
      }), 'VmController_cleanShutdownVm')
  )
  route(
    'delete',
    '/vms/:id',
    objectAcl('vm', 'delete'),
    tsoa(xo, async req => {
      xapi.getObject(req.params.id, 'VM')
      await xapi.call('VM.destroy', req.params.id)
    }, 'VmController_deleteVm')
  )

  // GroupController and UserController: no pool needed.
  route(
    'post',
    '/groups',
    json(),
    acl(xo, { resource: 'group', action: 'create', object: ({ req }) => req.body }),
    tsoa(xo, async (req, controller) => {
      if (typeof req.body?.name !== 'string') {
        throw new ApiError('invalid parameters', 422, { data: { name: 'is required' } })
      }
      const id = `group-${xo.ran.length}`
      xo.ran.push(['group.create', req.body.name])
      controller.setStatus(201)
      return { id }
    }, 'GroupController_createGroup')
  )
  route(
    'delete',
    '/users/:id',
    objectAcl('user', 'delete', () => id => xo.getUser(id)),
    tsoa(xo, async req => {
      xo.deleteUser(req.params.id)
      xo.ran.push(['user.delete', req.params.id])
    }, 'UserController_deleteUser')
  )

  // TaskController
  route('get', '/tasks/:id', tsoa(xo, req => xo.tasks.get(req.params.id), 'TaskController_getTask'))

  // Routes that plugins mount later (router/external-router.mts).
  const externalRouter = Router()
  app.use(BASE_URL, externalRouter)
  xo.registerRestRoutes = routes => {
    const removes = routes.map(route => mountExternalRoute(xo, externalRouter, route))
    return () => removes.forEach(remove => remove())
  }

  app.use(BASE_URL, tsoaToXoErrorHandler)
  app.use(BASE_URL, genericErrorHandler)

  const server = createServer(app)
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address()
  return {
    url: `http://127.0.0.1:${port}`,
    close: () => {
      server.closeAllConnections()
      return new Promise(resolve => server.close(resolve))
    },
  }
}

/**
 * xo-mixins/rest-api.mjs's deprecated `registerRestApi`: `_verb` keys are
 * routes of the legacy router, each `json()` then `autoRegisteredHandler`,
 * which authenticates the user (a token cookie; administrators only) and
 * runs the handler in `xo.runWithApiContext`. Returns the unregister
 * function, which finds each route back by its handler's name, as XO does.
 */
function registerRestApi(xo, router, spec, base) {
  for (const path of Object.keys(spec)) {
    if (path[0] === '_') {
      const handler = spec[path]
      router[path.slice(1)](base, json(), async function autoRegisteredHandler(req, res, next) {
        try {
          const token = req.cookies.authenticationToken ?? req.cookies.token
          if (!token) {
            apiErrors.invalidCredentials()
          }
          const { user } = await xo.authenticateUser({ token }, { ip: req.ip })
          if (user.permission !== 'admin') {
            apiErrors.unauthorized()
          }
          const result = await xo.runWithApiContext(user, () => handler(req, res, next))
          if (result !== undefined) {
            res.json(result)
          }
        } catch (error) {
          next(error)
        }
      })
    } else {
      registerRestApi(xo, router, spec[path], `${base === '/' ? '' : base}/${path}`)
    }
  }
  return () => unregisterRestApi(router, spec, base)
}

function unregisterRestApi(router, spec, base) {
  for (const path of Object.keys(spec)) {
    if (path[0] === '_') {
      const method = path.slice(1)
      let found = false
      for (let i = router.stack.length - 1; i >= 0; i--) {
        const route = router.stack[i].route
        if (route.path === base && route.stack[1]?.method === method && route.stack[1]?.handle?.name === 'autoRegisteredHandler') {
          router.stack.splice(i, 1)
          found = true
          break
        }
      }
      if (!found) {
        throw new Error(`Route to unregister not found: ${base}`)
      }
    } else {
      unregisterRestApi(router, spec[path], `${base === '/' ? '' : base}/${path}`)
    }
  }
}

/**
 * router/external-router.mts's `mountExternalRoute`: the route's handler
 * authenticates (`expressAuthentication`), then calls the route's callback
 * with a `createAction` of its own. Returns the unmount function.
 */
function mountExternalRoute(xo, router, { method, endpoint, callback }) {
  const path = endpoint.replace(/{(\w+)}/g, ':$1')
  router[method](path, json(), async (req, res, next) => {
    try {
      if (xo.apiContext?.user === undefined) {
        apiErrors.invalidCredentials()
      }
      const createAction = async (cb, { sync = false, statusCode = 200, taskProperties }) => {
        taskProperties.name = 'REST API: ' + taskProperties.name
        taskProperties.type = 'xo:rest-api:action'
        const task = xo.tasks.create(taskProperties)
        const pResult = task.run(() => cb(task))
        if (sync) {
          const result = await pResult
          res.status(statusCode)
          return result
        }
        pResult.catch(() => {})
        res.status(202).set('Location', `${BASE_URL}/tasks/${task.id}`).json({ taskId: task.id })
        return undefined
      }
      const result = await callback({ req, res, next, createAction })
      if (!res.headersSent) {
        if (result === undefined) {
          res.status(204).end()
        } else {
          res.json(result)
        }
      }
    } catch (error) {
      next(error)
    }
  })
  const layer = router.stack.at(-1)
  return () => {
    const i = router.stack.indexOf(layer)
    if (i !== -1) {
      router.stack.splice(i, 1)
    }
  }
}

/** middlewares/authentication.middleware.mts's `setupApiContext`. */
function setupApiContext(xo) {
  return async (req, res, next) => {
    const token = req.cookies.authenticationToken ?? req.cookies.token
    const { authorization } = req.headers
    if (token && authorization) {
      return next(new ApiError('Having multiple authentication methods is not supported, please choose one', 400))
    }
    if (!token && !authorization) {
      return xo.runWithApiContext(undefined, next)
    }
    const credentials = {}
    if (token) {
      credentials.token = token
      res.locals.authType = 'token'
    } else {
      const [, encoded] = authorization.split(' ')
      if (encoded === undefined) {
        return next(new ApiError('Malformed Authorization header', 400))
      }
      const [username, password] = Buffer.from(encoded, 'base64').toString().split(':')
      Object.assign(credentials, { username, password })
      res.locals.authType = 'basic'
    }
    try {
      const { user } = await xo.authenticateUser(credentials, { ip: req.ip })
      return xo.runWithApiContext(user, next)
    } catch (error) {
      return next(error)
    }
  }
}

/** tsoa's `authenticateMiddleware` with `expressAuthentication` for `@Security('*')`. */
function authenticate(xo) {
  return async function authenticateMiddleware(req, res, next) {
    try {
      const user = xo.apiContext?.user
      if (user === undefined) {
        apiErrors.invalidCredentials()
      }
      if (user.permission !== 'admin' && !req.route.stack.some(layer => layer.name === ACL_MIDDLEWARE_NAME)) {
        apiErrors.unauthorized()
      }
      req.user = user
      next()
    } catch (error) {
      next(error)
    }
  }
}

/**
 * middlewares/acl.middleware.mts's `acl()`: the objects are resolved (an
 * unknown one is 404), an administrator goes on, anyone else needs a
 * privilege for each resource and action (`xo.privileges`: user id →
 * `resource:action` strings).
 */
function acl(xo, entries) {
  entries = Array.isArray(entries) ? entries : [entries]
  async function middleware(req, res, next) {
    const user = xo.apiContext?.user
    if (user === undefined) {
      return next(new Error('an unauthenticated user made its way to the acl middleware'))
    }
    const missing = []
    for (const { resource, action, objectId, object, getObject } of entries) {
      if (objectId !== undefined) {
        const id = objectId.split('.').reduce((o, part) => o?.[part], req)
        if (id === undefined) {
          continue
        }
        try {
          ;(getObject?.({})?.(id)) ?? xo.xapi.getObject(id)
        } catch (error) {
          return next(error)
        }
      } else if (typeof object === 'function') {
        await object({ req })
      }
      if (!(xo.privileges?.get(user.id) ?? []).includes(`${resource}:${action}`)) {
        missing.push({ resource, action })
      }
    }
    if (user.permission === 'admin' || missing.length === 0) {
      return next()
    }
    next(new ApiError('not enough privileges', 403, { data: { missingPrivileges: missing } }))
  }
  Object.defineProperty(middleware, 'name', { value: ACL_MIDDLEWARE_NAME })
  return middleware
}

/**
 * A tsoa route handler: the controller method, then tsoa's answer (the
 * status the controller set, 204 with no body, 200 with JSON).
 */
function tsoa(xo, method, name) {
  const handler = async function (req, res, next) {
    const controller = new Controller(xo)
    try {
      const data = await method(req, controller)
      for (const [header, value] of Object.entries(controller.headers)) {
        res.setHeader(header, value)
      }
      if (data === undefined || data === null) {
        res.status(controller.status ?? 204).end()
      } else {
        res.status(controller.status ?? 200).json(data)
      }
    } catch (error) {
      return next(error)
    }
  }
  Object.defineProperty(handler, 'name', { value: name })
  return handler
}

/** abstract-classes/base-controller.mts, what routes use of it. */
class Controller {
  constructor(xo) {
    this.xo = xo
    this.status = undefined
    this.headers = {}
  }

  setStatus(status) {
    this.status = status
  }

  setHeader(name, value) {
    this.headers[name] = value
  }

  async createAction(cb, { statusCode = 200, sync = false, taskProperties }) {
    taskProperties.name = 'REST API: ' + taskProperties.name
    taskProperties.type = 'xo:rest-api:action'
    taskProperties.objectType = 'VM'
    const task = this.xo.tasks.create(taskProperties)
    const pResult = task.run(() => cb(task))
    if (sync) {
      this.setStatus(statusCode)
      return pResult
    }
    pResult.catch(() => {})
    this.setStatus(202)
    this.setHeader('Location', `${BASE_URL}/tasks/${task.id}`)
    return { taskId: task.id }
  }
}

/** middlewares/tsoa-to-xo-error.middleware.mts, then generic-error-handler. */
function tsoaToXoErrorHandler(error, req, res, next) {
  next(error)
}

function genericErrorHandler(error, req, res, _next) {
  let status = 500
  if (error instanceof ApiError) {
    status = error.status
  } else if (apiErrors.noSuchObject.is(error)) {
    status = 404
  } else if (apiErrors.unauthorized.is(error) || apiErrors.forbiddenOperation.is(error)) {
    status = 403
  } else if (apiErrors.invalidCredentials.is(error)) {
    status = 401
  } else if (apiErrors.invalidParameters.is(error)) {
    status = 422
  }
  if (res.headersSent) {
    return
  }
  res.status(status).json({ error: error.message, data: error.data })
}
