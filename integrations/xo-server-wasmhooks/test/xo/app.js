// A stand-in for xo-server, written for these tests from XO's source
// (vatesfr/xen-orchestra at 9ef53890, xo-server 5.207.2), faithful to what
// the plugin touches. Its JSON-RPC call path follows
// packages/xo-server/src/xo-mixins/api.mjs:
//
// 1. the method is looked up in the live `apiMethods` table;
// 2. the user's API context is entered (AsyncLocalStorage: `xo.apiContext`);
// 3. `xo:preCall` is emitted with `emitAsync` and an `onError` that only
//    logs, so a listener can delay a call but never stop it;
// 4. the method's `permission` is checked, then its `params`;
// 5. the method is called with the app as `this`;
// 6. `xo:postCall` is emitted (not awaited) with the result or the error,
//    and the error is thrown to the caller.
//
// Backup jobs emit `backup:preCall` (awaited, errors only logged) and
// `backup:postCall` around the job, with no way for a listener to stop it.
// Plugins are loaded as xo-server loads them (plugins.js), and the REST API
// is served as @xen-orchestra/rest-api serves it (rest.js).

import Obfuscate from '@vates/obfuscate'
import emitAsync from '@xen-orchestra/emit-async'
import apiErrors from 'xo-common/api-errors.js'
import { AsyncLocalStorage } from 'node:async_hooks'
import { EventEmitter } from 'node:events'
import { Plugins } from './plugins.js'
import { Tasks } from './tasks.js'

const PERMISSIONS = { none: 0, read: 1, write: 2, admin: 3 }

export class FakeXo extends EventEmitter {
  #methods = { __proto__: null }
  #context = new AsyncLocalStorage()
  #users = new Map()
  #tokens = new Map()

  constructor() {
    super()
    this.listenerFailures = []
    // What the operations did, in order: [name, id].
    this.ran = []
    this.tasks = new Tasks(this)
    this.plugins = new Plugins(this)
  }

  get apiMethods() {
    return this.#methods
  }

  get apiContext() {
    return this.#context.getStore()
  }

  addUser(user) {
    this.#users.set(user.id, user)
  }

  getUser(id) {
    const user = this.#users.get(id)
    if (user === undefined) {
      apiErrors.noSuchObject(id, 'user')
    }
    return user
  }

  deleteUser(id) {
    this.getUser(id)
    this.#users.delete(id)
  }

  /** An authentication token for `userId`, as `token.create` makes. */
  createToken(userId) {
    const token = Math.random().toString(36).slice(2) + Math.random().toString(36).slice(2)
    this.#tokens.set(token, userId)
    return token
  }

  /**
   * As xo-mixins/authentication.mjs: a token, or an email and password
   * (the stand-in's users' password is their id); `invalidCredentials`
   * otherwise.
   */
  async authenticateUser(credentials, { ip } = {}) {
    let user
    if (credentials.token !== undefined) {
      const id = this.#tokens.get(credentials.token)
      user = id === undefined ? undefined : this.#users.get(id)
    } else {
      user = [...this.#users.values()].find(u => u.email === credentials.username && u.id === credentials.password)
    }
    if (user === undefined) {
      apiErrors.invalidCredentials()
    }
    return { user, ip }
  }

  /** As xo-mixins/api.mjs: a fresh context with the user and its permission. */
  async runWithApiContext(user, fn) {
    const context = { __proto__: null }
    if (user !== undefined) {
      context.user = user
      context.permission = user.permission
    } else {
      context.permission = 'none'
    }
    return this.#context.run(context, fn)
  }

  /** As xo-server's addApiMethod: the metadata lives on the function. */
  addApiMethod(name, method, { permission, params, description } = {}) {
    if (name in this.#methods) {
      throw new Error(`API method ${name} already exists`)
    }
    const entry = Object.assign(
      function apiWrapper() {
        return method.apply(this, arguments)
      },
      { description, params, permission }
    )
    this.#methods[name] = entry
  }

  /**
   * A connection is what xo-server keeps per client: `get('user_id')`,
   * `get('user_ip')`.
   */
  async callApiMethod(connection, name, params = {}) {
    const method = this.#methods[name]
    if (method === undefined) {
      throw new Error(`method not found: ${name}`)
    }
    const userId = connection.get('user_id', undefined)
    const user = userId === undefined ? undefined : this.#users.get(userId)
    return this.runWithApiContext(user, async () => {
      this.apiContext.connection = connection
      const data = {
        callId: Math.random().toString(36).slice(2),
        userId: user?.id,
        userName: user?.email ?? '(unknown user)',
        userIp: connection.get('user_ip', undefined),
        method: name,
        // xo-server masks secrets in the event, not in what the method gets.
        params: Obfuscate.replace(params, '* obfuscated *'),
        timestamp: Date.now(),
      }
      await emitAsync.call(
        this,
        {
          onError: error => {
            this.listenerFailures.push(error)
          },
        },
        'xo:preCall',
        data
      )
      try {
        this.#checkPermission(method)
        this.#checkParams(method, params)
        let result = await method.call(this, params)
        if (result === undefined) {
          result = true
        }
        const now = Date.now()
        this.emit('xo:postCall', { ...data, duration: now - data.timestamp, result, timestamp: now })
        return result
      } catch (error) {
        const now = Date.now()
        this.emit('xo:postCall', {
          ...data,
          duration: now - data.timestamp,
          error: { ...error, code: error.code, message: error.message, name: error.name, stack: error.stack },
          timestamp: now,
        })
        throw error
      }
    })
  }

  /** A scheduled backup job: announced and reported, never vetoable. */
  async runBackupJob(job, run) {
    const hookData = {
      callId: Math.random().toString(36).slice(2),
      method: 'backupNg.runJob',
      params: { id: job.id, schedule: job.schedule, settings: {}, vms: job.vms },
      timestamp: Date.now(),
      userId: job.userId,
      userName: '(unknown user)',
    }
    await emitAsync.call(this, { onError: error => this.listenerFailures.push(error) }, 'backup:preCall', hookData)
    try {
      await run()
      hookData.result = true
    } catch (error) {
      hookData.error = { code: error.code, message: error.message, name: error.name }
      throw error
    } finally {
      hookData.duration = Date.now() - hookData.timestamp
      hookData.timestamp = Date.now()
      this.emit('backup:postCall', hookData)
    }
  }

  #checkPermission(method) {
    const { permission } = method
    if (permission === null) {
      return
    }
    const context = this.apiContext
    if (context.user === undefined) {
      apiErrors.unauthorized(permission)
    }
    if (permission !== undefined && PERMISSIONS[context.permission] < PERMISSIONS[permission]) {
      apiErrors.unauthorized(permission)
    }
  }

  #checkParams(method, params) {
    for (const [key, spec] of Object.entries(method.params ?? {})) {
      if (!spec.optional && params[key] === undefined) {
        apiErrors.invalidParameters([{ field: key, message: 'is required' }])
      }
    }
  }
}

/** A connection of xo-server: a map of its session's values. */
export function connection({ userId, ip = '::ffff:192.0.2.10' } = {}) {
  const values = new Map([
    ['user_id', userId],
    ['user_ip', ip],
  ])
  return { get: (key, fallback) => values.get(key) ?? fallback }
}
