// What the plugin guards, reported to wasmhooks (`PUT /v1/coverage/{reporter}`)
// so that, for each gate hook, wasmhooks shows the entry points into XO that
// wait for its verdict and those that do not. An administrator must never
// believe something is guarded when it is not: the report lists what the
// plugin cannot stop too, and expires unless sent again.

import { hostname } from 'node:os'
import { ENTRY } from './events.js'

/** Entry points no plugin can gate, whatever it guards. */
const BEYOND = [
  {
    entry: ENTRY.job,
    method: 'backupNg.runJob',
    guarded: false,
    note: "backup runs, scheduled or not: XO's job executor emits backup:preCall without acting on what a listener answers. The plugin forwards their events; it cannot stop them",
  },
  ...['metadataBackup.runJob', 'mirrorBackup.runJob'].map(method => ({
    entry: ENTRY.job,
    method,
    guarded: false,
    note: "scheduled runs of this job: XO's job executor emits no event for them (vatesfr/xen-orchestra#8505). Only XO's event stream shows their tasks ([sources.xo] in wasmhooks)",
  })),
  {
    entry: 'xapi',
    method: '*',
    guarded: false,
    note: "changes made without XO's APIs: xe and other XAPI clients talking to the pools, and XO's own automation (HA, load balancing). No plugin sees them; XO's event stream shows their effects ([sources.xo] in wasmhooks)",
  },
]

export class CoverageReporter {
  /**
   * @param {object} opts
   * @param {() => import('./client.js').Client} opts.client
   * @param {() => object} opts.settings
   * @param {object} opts.xo the xo-server app (its `version`)
   * @param {import('./jsonrpc.js').JsonRpcGuard} opts.jsonrpc
   * @param {import('./rest.js').RestGuard} opts.rest
   * @param {string} opts.version the plugin's version
   * @param {object} opts.log
   */
  constructor({ client, settings, xo, jsonrpc, rest, version, log }) {
    Object.assign(this, { _client: client, _settings: settings, _xo: xo, _jsonrpc: jsonrpc, _rest: rest, _log: log })
    this.reporter = `xo:${hostname()}`.slice(0, 64)
    this._plugin = `xo-server-wasmhooks ${version}`
    this._failing = false
  }

  /** The report: every entry point the plugin knows, guarded or not. */
  build(loaded) {
    const conf = this._settings()
    const report = {
      plugin: this._plugin,
      orchestrator: this._xo.version === undefined ? undefined : `xo-server ${this._xo.version}`,
      loaded,
      fail_closed: conf.failClosed,
      // Past this, wasmhooks takes the report for stale: a few refreshes missed.
      ttl_secs: Math.min(3600, Math.max(30, 3 * conf.refreshSeconds)),
      entries: [],
    }
    if (!loaded) {
      return report
    }
    for (const { name, guarded } of this._jsonrpc.methods()) {
      report.entries.push({ entry: ENTRY.jsonrpc, method: name, guarded })
    }
    const rest = this._rest.routes()
    if (rest.state === 'wrapped') {
      for (const route of rest.routes) {
        report.entries.push({
          entry: ENTRY.rest,
          method: route.method,
          route: `${route.verb} ${route.path}`,
          guarded: route.guarded,
        })
      }
    } else {
      report.entries.push({
        entry: ENTRY.rest,
        method: '*',
        guarded: false,
        note:
          rest.state === 'failed'
            ? `the plugin could not wrap XO's REST routes: ${rest.problem}`
            : "XO has had no REST request since the plugin loaded: its routes are wrapped at the first one, before it reaches its route, and listed then",
      })
    }
    report.entries.push(...BEYOND)
    return report
  }

  /** Sends the report; a failure is logged once until one succeeds. */
  async send(loaded) {
    const conf = this._settings()
    try {
      await this._client().putCoverage(this.reporter, JSON.stringify(this.build(loaded)), conf.preTimeout)
      if (this._failing) {
        this._failing = false
        this._log.info('reporting what the plugin guards to wasmhooks again')
      }
    } catch (error) {
      if (!this._failing) {
        this._failing = true
        this._log.warn(`cannot report what the plugin guards to wasmhooks, which shows the gates as unguarded meanwhile: ${error.message}`)
      }
    }
  }
}
