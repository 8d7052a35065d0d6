// XO's tasks, for the stand-in: a task as `@vates/task` makes one (its id
// format, `run`, its status going from pending to success or failure, a
// failure's error serialized into its result), kept and announced as
// `@xen-orchestra/mixins/Tasks.mjs` does (`xo.tasks`: an EventEmitter that
// emits `update` with the task's log, and `create` tags a task with the
// caller's user). Written for these tests from XO's source at 9ef53890;
// @vates/task is not in the npm registry.

import { EventEmitter } from 'node:events'

function serializeError(error) {
  return error instanceof Error
    ? { ...error, code: error.code, message: error.message, name: error.name, stack: error.stack }
    : error
}

export class Task {
  #status = 'pending'
  #onProgress
  #properties

  constructor({ properties, onProgress }) {
    this.id = Date.now().toString(36).padStart(9, '0') + '-' + Math.random().toString(36).slice(2)
    this.#properties = properties
    this.#onProgress = onProgress
  }

  get status() {
    return this.#status
  }

  async run(fn) {
    this.#onProgress({ type: 'start', id: this.id, timestamp: Date.now(), properties: this.#properties })
    try {
      // @vates/task runs `fn` with the task as its argument.
      const result = await fn(this)
      this.#end('success', result)
      return result
    } catch (error) {
      this.#end('failure', serializeError(error))
      throw error
    }
  }

  #end(status, result) {
    this.#status = status
    this.#onProgress({ type: 'end', id: this.id, timestamp: Date.now(), status, result })
  }
}

export class Tasks extends EventEmitter {
  #app
  #logs = new Map()

  constructor(app) {
    super()
    this.#app = app
  }

  create({ name, objectId, userId = this.#app.apiContext?.user?.id, type, ...props }) {
    return new Task({
      properties: { ...props, name, objectId, userId, type },
      onProgress: event => this.#onProgress(event),
    })
  }

  async get(id) {
    const log = this.#logs.get(id)
    if (log === undefined) {
      const error = new Error('no such task ' + id)
      error.code = 1
      throw error
    }
    return log
  }

  #onProgress({ type, id, timestamp, properties, status, result }) {
    let log = this.#logs.get(id)
    if (type === 'start') {
      log = { id, properties, start: timestamp, status: 'pending' }
      this.#logs.set(id, log)
    } else {
      Object.assign(log, { end: timestamp, status, result })
    }
    log.updatedAt = Date.now()
    // XO buffers and emits on the next tick.
    process.nextTick(() => this.emit('update', { ...log }))
  }
}
