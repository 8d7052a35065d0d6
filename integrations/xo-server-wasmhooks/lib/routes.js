// The method name of a REST route: the JSON-RPC name of the same operation
// where there is one, so that one hook subscription (`vm.delete`) matches
// the operation whichever way it comes in. Read from XO's REST controllers
// (@xen-orchestra/rest-api, `src/*/*.controller.mts`) and JSON-RPC methods
// (packages/xo-server/src/api/) at XO commit 9ef53890 (xo-server 5.207.2).
// A route missing from the table gets a name derived from its path (see
// `methodOf`), so a route added by a later XO is still an event, and still
// guarded by a glob that matches it (`vm.*`).

/** `VERB /rest/v0/…` (express's path syntax) → method name. */
const NAMES = {
  // VMs, and the VM-like objects XO's JSON-RPC API handles as VMs.
  'POST /vms/:id/actions/start': 'vm.start',
  'POST /vms/:id/actions/clean_shutdown': 'vm.stop',
  'POST /vms/:id/actions/hard_shutdown': 'vm.stop',
  'POST /vms/:id/actions/clean_reboot': 'vm.restart',
  'POST /vms/:id/actions/hard_reboot': 'vm.restart',
  'POST /vms/:id/actions/pause': 'vm.pause',
  'POST /vms/:id/actions/suspend': 'vm.suspend',
  'POST /vms/:id/actions/resume': 'vm.resume',
  'POST /vms/:id/actions/unpause': 'vm.unpause',
  'POST /vms/:id/actions/snapshot': 'vm.snapshot',
  'POST /vms/:id/actions/clone': 'vm.clone',
  'POST /vms/:id/actions/migrate': 'vm.migrate',
  'POST /vms/:id/actions/revert_snapshot': 'vm.revert',
  'DELETE /vms/:id': 'vm.delete',
  'PATCH /vms/:id': 'vm.set',
  'PUT /vms/:id/stats/data_source/:data_source': 'vm.addDataSource',
  'DELETE /vms/:id/stats/data_source/:data_source': 'vm.removeDataSource',
  'DELETE /vm-snapshots/:id': 'vm.delete',
  'DELETE /vm-templates/:id': 'vm.delete',
  'POST /pools/:id/actions/create_vm': 'vm.create',
  'POST /pools/:id/vms': 'vm.import',
  // Hosts and pools.
  'POST /hosts/:id/actions/start': 'host.start',
  'POST /hosts/:id/actions/clean_shutdown': 'host.stop',
  'POST /hosts/:id/actions/clean_reboot': 'host.restart',
  'POST /hosts/:id/actions/smart_reboot': 'host.restart',
  'POST /hosts/:id/actions/restart_toolstack': 'host.restartAgent',
  'POST /hosts/:id/actions/emergency_shutdown': 'host.emergencyShutdownHost',
  'POST /hosts/:id/actions/management_reconfigure': 'host.managementReconfigure',
  'POST /hosts/:id/actions/scan_pifs': 'host.scanPifs',
  'POST /pools/:id/actions/create_network': 'network.create',
  'POST /pools/:id/actions/create_internal_network': 'network.create',
  'POST /pools/:id/actions/create_bonded_network': 'network.createBonded',
  'POST /pools/:id/actions/management_reconfigure': 'pool.managementReconfigure',
  // Storage.
  'POST /srs': 'sr.create',
  'DELETE /srs/:id': 'sr.destroy',
  'POST /srs/:id/vdis': 'vdi.import',
  'POST /srs/:id/actions/reclaim_space': 'sr.reclaimSpace',
  'POST /vdis': 'vdi.create',
  'PUT /vdis/:id.:format': 'vdi.importContent',
  'DELETE /vdi-snapshots/:id': 'vdi.delete',
  'POST /pbds/:id/actions/plug': 'pbd.connect',
  'POST /pbds/:id/actions/unplug': 'pbd.disconnect',
  // Network.
  'POST /vifs': 'vm.createInterface',
  // Users and groups.
  'PUT /groups/:id/users/:userId': 'group.addUser',
  'DELETE /groups/:id/users/:userId': 'group.removeUser',
  'POST /users/authentication_tokens': 'token.create',
  'POST /users/:id/authentication_tokens': 'token.create',
  // XCP-ng servers (pools XO connects to).
  'POST /servers': 'server.add',
  'DELETE /servers/:id': 'server.remove',
  'POST /servers/:id/actions/connect': 'server.enable',
  'POST /servers/:id/actions/disconnect': 'server.disable',
  // Backups and jobs. A schedule's run is what XO 5 starts with backupNg.runJob.
  'POST /schedules/:id/actions/run': 'backupNg.runJob',
  'POST /backup-repositories': 'remote.create',
  'PATCH /backup-repositories/:id': 'remote.set',
  'POST /backup-repositories/:id/actions/forget': 'remote.delete',
  'POST /backup-repositories/:id/actions/benchmark': 'remote.test',
  // Tasks.
  'POST /tasks/:id/actions/abort': 'task.cancel',
  'DELETE /tasks/:id': 'task.destroy',
  'DELETE /tasks': 'task.destroy',
}

/** Collections whose JSON-RPC namespace is not their singular. */
const NAMESPACES = {
  'backup-repositories': 'remote',
  'vm-snapshots': 'vm',
  'vm-templates': 'vm',
  'vm-controllers': 'vm',
  'vdi-snapshots': 'vdi',
}

/** Where XO's REST API lives. */
export const BASE = '/rest/v0'

/** HTTP methods that change something: each such request is an event. */
export const MUTATING = new Set(['POST', 'PUT', 'PATCH', 'DELETE'])

/**
 * Routes that are not operations on XO: the subscriptions of XO's own event
 * stream (`/events`, which wasmhooks itself uses) and the API's docs.
 */
export function isPlumbing(path) {
  return path.startsWith(`${BASE}/events`) || path.startsWith(`${BASE}/docs`)
}

/**
 * The method name of `verb` on `path` (a route path, `/rest/v0/…` with
 * express's `:param`s).
 */
export function methodOf(verb, path) {
  const rest = path.startsWith(BASE) ? path.slice(BASE.length) : path
  const known = NAMES[`${verb} ${rest}`]
  if (known !== undefined) {
    return known
  }
  const segments = rest.split('/').filter(Boolean)
  const [collection, id, sub, subId] = segments
  const namespace = NAMESPACES[collection] ?? singular(collection ?? 'rest')
  if (sub === 'tags' && subId !== undefined) {
    return verb === 'DELETE' ? 'tag.remove' : 'tag.add'
  }
  if (sub === 'actions' && subId !== undefined) {
    return `${namespace}.${camel(subId)}`
  }
  if (id === undefined) {
    return `${namespace}.${verb === 'DELETE' ? 'delete' : verb === 'POST' ? 'create' : 'set'}`
  }
  if (sub === undefined) {
    return `${namespace}.${verb === 'DELETE' ? 'delete' : verb === 'POST' ? 'create' : 'set'}`
  }
  // A sub-collection: /groups/:id/users/:userId → group.addUser, …
  const what = pascal(singular(sub))
  return `${namespace}.${verb === 'DELETE' ? 'remove' : verb === 'POST' && subId === undefined ? 'create' : 'add'}${what}`
}

/**
 * The routes whose operation XO runs as a task (`createAction`), with all of
 * its work inside the task: `POST` on these paths (read from the
 * controllers at 9ef53890; each is a `…/:id/actions/…` route).
 */
const TASK_ROUTES = new Set([
  '/acl-roles/:id/actions/copy',
  '/backup-repositories/:id/actions/benchmark',
  '/backup-repositories/:id/actions/forget',
  '/hosts/:id/actions/clean_reboot',
  '/hosts/:id/actions/clean_shutdown',
  '/hosts/:id/actions/detach',
  '/hosts/:id/actions/disable',
  '/hosts/:id/actions/emergency_shutdown',
  '/hosts/:id/actions/enable',
  '/hosts/:id/actions/forget',
  '/hosts/:id/actions/management_reconfigure',
  '/hosts/:id/actions/restart_toolstack',
  '/hosts/:id/actions/scan_pifs',
  '/hosts/:id/actions/smart_reboot',
  '/hosts/:id/actions/start',
  '/pbds/:id/actions/plug',
  '/pbds/:id/actions/unplug',
  '/pools/:id/actions/add_host',
  '/pools/:id/actions/create_bonded_network',
  '/pools/:id/actions/create_internal_network',
  '/pools/:id/actions/create_network',
  '/pools/:id/actions/create_vm',
  '/pools/:id/actions/emergency_shutdown',
  '/pools/:id/actions/management_reconfigure',
  '/pools/:id/actions/rolling_reboot',
  '/pools/:id/actions/rolling_update',
  '/schedules/:id/actions/run',
  '/servers/:id/actions/connect',
  '/servers/:id/actions/disconnect',
  '/srs/:id/actions/forget',
  '/srs/:id/actions/reclaim_space',
  '/srs/:id/actions/scan',
  '/tasks/:id/actions/abort',
  '/vbds/:id/actions/connect',
  '/vbds/:id/actions/disconnect',
  '/vdis/:id/actions/migrate',
  '/vifs/:id/actions/connect',
  '/vifs/:id/actions/disconnect',
  '/vms/:id/actions/clean_reboot',
  '/vms/:id/actions/clean_shutdown',
  '/vms/:id/actions/clone',
  '/vms/:id/actions/hard_reboot',
  '/vms/:id/actions/hard_shutdown',
  '/vms/:id/actions/migrate',
  '/vms/:id/actions/pause',
  '/vms/:id/actions/resume',
  '/vms/:id/actions/revert_snapshot',
  '/vms/:id/actions/snapshot',
  '/vms/:id/actions/start',
  '/vms/:id/actions/suspend',
  '/vms/:id/actions/unpause',
])

/**
 * Whether the verdict on `verb` `path` is awaited inside the route's task
 * (see rest.js). Only for the routes above, known to create their task
 * before doing anything: any other route, including one a plugin mounts or
 * a later XO adds, is gated before its handler. A listed route that
 * answers without creating its task is logged, and gated before its
 * handler from then on.
 */
export function runsAsTask(verb, path) {
  return verb === 'POST' && path.startsWith(BASE) && TASK_ROUTES.has(path.slice(BASE.length))
}

function singular(word) {
  const w = camel(word)
  if (w.endsWith('ies')) {
    return `${w.slice(0, -3)}y`
  }
  return w.endsWith('s') ? w.slice(0, -1) : w
}

function camel(word) {
  return word.replace(/[-_]+([a-z0-9])/g, (_, c) => c.toUpperCase())
}

function pascal(word) {
  return word.charAt(0).toUpperCase() + word.slice(1)
}
