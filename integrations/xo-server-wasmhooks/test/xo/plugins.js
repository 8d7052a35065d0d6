// Plugins, loaded as xo-server loads them. Written for these tests from
// XO's source at 9ef53890:
//
// - `register(path, name)` is `registerPlugin` of packages/xo-server/src/
//   index.mjs: import the module, take its default export, read `default`
//   (the factory), `configurationSchema`, `configurationPresets` and
//   `testSchema` from it, and call each that is a function with
//   `{ staticConfig, xo, getDataDir }`;
// - the rest is xo-mixins/plugins.mjs: a plugin with no schema counts as
//   configured; one with a schema is configured at registration with its
//   saved configuration, or tried with `{}` (a failure is ignored), then
//   loaded if autoload is on; `configure` validates against the schema with
//   Ajv (`useDefaults`, as XO sets it) before calling the instance's
//   `configure(configuration, { loaded })`; `load` refuses a plugin that is
//   not configured; `test` validates against `testSchema`.
//
// XO keeps each plugin's metadata in Redis; the stand-in keeps it in memory.

import Ajv from 'ajv'
import apiErrors from 'xo-common/api-errors.js'
import { pathToFileURL } from 'node:url'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'

export class Plugins {
  #xo
  #plugins = { __proto__: null }
  #metadata = new Map()
  #ajv = new Ajv({ strict: 'log', strictRequired: false, useDefaults: true }).addVocabulary([
    '$multiline',
    '$type',
    'enumNames',
  ])

  constructor(xo) {
    this.#xo = xo
  }

  /** Registers the plugin in the folder `path`, as xo-server does at start. */
  async register(path, name, { staticConfig = {} } = {}) {
    // xo-server: `(await import(requireResolve(pluginPath))).default`
    const manifest = JSON.parse(await readFile(join(path, 'package.json'), 'utf8'))
    const module = (await import(pathToFileURL(join(path, manifest.main ?? 'index.js')).href)).default
    // "Supports both “normal” CommonJS and Babel's ES2015 modules."
    let { default: factory = module, configurationSchema, configurationPresets, testSchema } = module
    const handleFactory = factory =>
      typeof factory === 'function'
        ? factory({ staticConfig, xo: this.#xo, getDataDir: async () => `/nonexistent/${name}` })
        : factory
    let instance
    ;[instance, configurationSchema, configurationPresets, testSchema] = await Promise.all([
      handleFactory(factory),
      handleFactory(configurationSchema),
      handleFactory(configurationPresets),
      handleFactory(testSchema),
    ])
    const plugin = (this.#plugins[name] = {
      configurationPresets,
      configurationSchema,
      configured: configurationSchema === undefined,
      description: manifest.description,
      id: name,
      instance,
      name,
      testable: typeof instance.test === 'function',
      testSchema,
      unloadable: typeof instance.unload === 'function',
      version: manifest.version,
    })
    let metadata = this.#metadata.get(name)
    if (metadata === undefined) {
      metadata = { autoload: true }
      this.#metadata.set(name, metadata)
    }
    if (!plugin.configured) {
      const tryEmptyConfig = metadata.configuration === undefined
      try {
        await this.#configure(plugin, tryEmptyConfig ? {} : metadata.configuration)
      } catch (error) {
        if (tryEmptyConfig) {
          return
        }
        throw error
      }
    }
    if (metadata.autoload) {
      await this.load(name)
    }
  }

  /** What `plugin.get` answers for one plugin. */
  get(id) {
    const { configurationSchema, configured, loaded, testSchema, testable, unloadable } = this.#get(id)
    const { autoload, configuration } = this.#metadata.get(id)
    return { id, autoload, configuration, configurationSchema, configured, loaded, testSchema, testable, unloadable }
  }

  /** `plugin.configure`: validated, applied, then saved. */
  async configure(id, configuration) {
    const plugin = this.#get(id)
    await this.#configure(plugin, configuration)
    this.#metadata.get(id).configuration = configuration
  }

  async load(id) {
    const plugin = this.#get(id)
    if (plugin.loaded) {
      apiErrors.invalidParameters('plugin already loaded')
    }
    if (!plugin.configured) {
      apiErrors.invalidParameters('plugin not configured')
    }
    if (plugin.loading) {
      apiErrors.invalidParameters('plugin is loading')
    }
    plugin.loading = true
    try {
      await plugin.instance.load()
      plugin.loaded = true
    } finally {
      plugin.loading = false
    }
  }

  async unload(id) {
    const plugin = this.#get(id)
    if (!plugin.loaded) {
      apiErrors.invalidParameters('plugin already unloaded')
    }
    if (plugin.unloadable === false) {
      apiErrors.invalidParameters('plugin cannot be unloaded')
    }
    await plugin.instance.unload()
    plugin.loaded = false
  }

  async test(id, data) {
    const plugin = this.#get(id)
    if (!plugin.testable) {
      apiErrors.invalidParameters('plugin not testable')
    }
    if (!plugin.loaded) {
      apiErrors.invalidParameters('plugin not loaded')
    }
    if (plugin.testSchema) {
      if (data == null) {
        apiErrors.invalidParameters([{ field: 'data', message: 'is the wrong type' }])
      }
      const validate = this.#ajv.compile(plugin.testSchema)
      if (!validate(data)) {
        apiErrors.invalidParameters(validate.errors)
      }
    }
    await plugin.instance.test(data)
  }

  /** The instance, for tests that look inside. */
  instance(id) {
    return this.#get(id).instance
  }

  #get(id) {
    const plugin = this.#plugins[id]
    if (plugin === undefined) {
      apiErrors.noSuchObject(id, 'plugin')
    }
    return plugin
  }

  async #configure(plugin, configuration) {
    const { configurationSchema } = plugin
    if (!configurationSchema) {
      apiErrors.invalidParameters('plugin not configurable')
    }
    const validate = this.#ajv.compile(configurationSchema)
    configuration = structuredClone(configuration)
    if (!validate(configuration)) {
      apiErrors.invalidParameters(validate.errors)
    }
    await plugin.instance.configure(configuration, { loaded: plugin.loaded })
    plugin.configured = true
  }
}
