// The plugin's settings: the form xo-server shows in Settings → Plugins
// (a JSON schema it validates with Ajv, filling in defaults), and the one
// place they are checked again, for callers that configure the plugin
// without xo-server's validation, or not at all.

export const configurationSchema = {
  type: 'object',
  properties: {
    url: {
      title: 'wasmhooks URL',
      description: 'Base URL of `wasmhooks serve`, for instance http://127.0.0.1:8080',
      type: 'string',
    },
    token: {
      title: 'API token',
      description: 'The token wasmhooks was started with (WASMHOOKS_TOKEN), if it has one',
      type: 'string',
    },
    preTimeout: {
      title: 'Verdict timeout (ms)',
      description: 'How long a guarded call waits for the verdict of the hooks',
      type: 'integer',
      minimum: 100,
      default: 5000,
    },
    failClosed: {
      title: 'Fail closed',
      description:
        'When wasmhooks cannot be reached, or does not answer in time: refuse guarded calls (on), or let them go ahead with a warning in the log (off)',
      type: 'boolean',
      default: false,
    },
    guard: {
      title: 'Guarded methods',
      description:
        'API methods (globs such as vm.*) whose calls wait for the verdict, through JSON-RPC and the REST API alike. Empty: every method that a loaded hook subscribes to for pre events, read from wasmhooks and refreshed',
      type: 'array',
      items: { type: 'string' },
      default: [],
    },
    refreshSeconds: {
      title: 'Refresh (s)',
      description:
        'How often the guarded methods are read again from wasmhooks, and what the plugin guards is reported to it',
      type: 'integer',
      minimum: 1,
      default: 10,
    },
    maxQueued: {
      title: 'Events kept for retry',
      description:
        'Events waiting to be forwarded while wasmhooks cannot take them; past this, new ones are dropped, and how many is logged',
      type: 'integer',
      minimum: 1,
      default: 10000,
    },
    traceSampleRatio: {
      title: 'Trace sample ratio',
      description:
        "The share of XO calls whose trace wasmhooks records, from 0 to 1, when its tracing is on (wasmhooks serve --otlp-endpoint). Each call's events carry a W3C traceparent header, marked sampled with this probability; wasmhooks follows that mark",
      type: 'number',
      minimum: 0,
      maximum: 1,
      default: 1,
    },
  },
  required: ['url'],
}

export const testSchema = {
  type: 'object',
  description: 'Sends a sample pre event to wasmhooks and logs the verdict',
  properties: {
    method: { title: 'Method', type: 'string', default: 'vm.start' },
    id: { title: 'Object id (params.id)', type: 'string' },
  },
}

/** Why a configuration cannot be used; the message says what to change. */
export class SettingsError extends Error {
  constructor(message) {
    super(`xo-server-wasmhooks: ${message}`)
    this.name = 'SettingsError'
  }
}

const WHERE = 'in Settings → Plugins → wasmhooks'

/**
 * The settings of `configuration`, defaults filled in and each value
 * checked; throws a SettingsError saying which field is wrong. Keys it does
 * not know are left out (see `unknownSettings`): a configuration saved by
 * another version of the plugin still loads.
 */
export function settings(configuration) {
  if (configuration === undefined || configuration === null) {
    throw new SettingsError(`not configured: give it the URL of wasmhooks ${WHERE}`)
  }
  if (typeof configuration !== 'object' || Array.isArray(configuration)) {
    throw new SettingsError(`the configuration is not an object: ${JSON.stringify(configuration)?.slice(0, 100)}`)
  }
  const out = {}
  for (const [key, spec] of Object.entries(configurationSchema.properties)) {
    const value = configuration[key] ?? spec.default
    if (value === undefined) {
      continue
    }
    const numeric = spec.type === 'integer' || spec.type === 'number'
    const ok = numeric
      ? (spec.type === 'integer' ? Number.isInteger(value) : Number.isFinite(value)) &&
        value >= (spec.minimum ?? -Infinity) &&
        value <= (spec.maximum ?? Infinity)
      : spec.type === 'array'
        ? Array.isArray(value) && value.every(item => typeof item === 'string')
        : typeof value === spec.type
    if (!ok) {
      throw new SettingsError(`${key} (${spec.title}) must be ${wanted(spec)}, got ${JSON.stringify(value)}`)
    }
    out[key] = value
  }
  if (out.url === undefined || out.url === '') {
    throw new SettingsError(`not configured: give it the URL of wasmhooks ${WHERE}`)
  }
  let url
  try {
    url = new URL(out.url)
  } catch {
    throw new SettingsError(`url must be an http(s) URL such as http://127.0.0.1:8080, got ${JSON.stringify(out.url)}`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new SettingsError(`url must be an http(s) URL such as http://127.0.0.1:8080, got ${JSON.stringify(out.url)}`)
  }
  return out
}

/** What a setting's value must be, as its error message says it. */
function wanted({ type, minimum, maximum }) {
  if (type === 'array') {
    return 'a list of strings'
  }
  const a = type === 'integer' ? 'an integer' : `a ${type}`
  if (minimum !== undefined && maximum !== undefined) {
    return `${a} from ${minimum} to ${maximum}`
  }
  return minimum !== undefined ? `${a} of at least ${minimum}` : a
}

/** The keys of `configuration` that the plugin does not know. */
export function unknownSettings(configuration) {
  return Object.keys(configuration ?? {}).filter(key => !(key in configurationSchema.properties))
}
