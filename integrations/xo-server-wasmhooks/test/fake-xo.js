// A stand-in for xo-server, written for these tests and faithful to its
// API call path (packages/xo-server/src/xo-mixins/api.mjs):
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

import emitAsync from '@xen-orchestra/emit-async'
import apiErrors from 'xo-common/api-errors.js'
import { AsyncLocalStorage } from 'node:async_hooks'
import { EventEmitter } from 'node:events'

const PERMISSIONS = { none: 0, read: 1, write: 2, admin: 3 }

export class FakeXo extends EventEmitter {
  #methods = { __proto__: null }
  #context = new AsyncLocalStorage()
  #users = new Map()

  constructor() {
    super()
    this.listenerFailures = []
    // What the methods did, in order: [name, params].
    this.ran = []
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
    const context = { __proto__: null, user, permission: user?.permission ?? 'none', connection }
    return this.#context.run(context, async () => {
      const data = {
        callId: Math.random().toString(36).slice(2),
        userId: user?.id,
        userName: user?.email ?? '(unknown user)',
        userIp: connection.get('user_ip', undefined),
        method: name,
        // xo-server masks secrets in the event, not in what the method gets.
        params: Object.fromEntries(
          Object.entries(params).map(([key, value]) => [key, key === 'password' ? '* obfuscated *' : value])
        ),
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
