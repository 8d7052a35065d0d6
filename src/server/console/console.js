// The wasmhooks operator console. It reads the same HTTP API as everyone
// else (every route it calls is in /v1/openapi.json), polls it every
// couple of seconds, and builds the page with textContent only: what hooks
// and receivers wrote is shown, never interpreted.
'use strict';

// How often to poll: `?poll_ms=N`, at least half a second.
const POLL_MS = Math.max(500, Number(new URLSearchParams(location.search).get('poll_ms')) || 2000);
const HOOKS_PER_PAGE = 100;
const DELIVERIES_PER_PAGE = 50;
const TOKEN_KEY = 'wasmhooks-token';

const $ = (selector, root = document) => root.querySelector(selector);

/** An element with attributes and children (strings become text). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (name.startsWith('data-')) node.setAttribute(name, value);
    else node[name] = value;
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const badge = (text, cls = text) => el('span', { class: `badge ${cls}` }, text);

function age(ms) {
  if (ms === null || ms === undefined) return '';
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d`;
}
const agoText = at => (at ? `${age(Date.now() - at)} ago` : '');
const untilText = at => (at ? (at <= Date.now() ? 'now' : `in ${age(at - Date.now())}`) : '');
// Times relative to now, kept current on every poll (see updateTimes).
const ago = at => el('span', { 'data-ago': at }, agoText(at));
const until = at => el('span', { 'data-until': at }, untilText(at));
function updateTimes() {
  for (const node of document.querySelectorAll('[data-ago]')) node.textContent = agoText(Number(node.dataset.ago));
  for (const node of document.querySelectorAll('[data-until]')) node.textContent = untilText(Number(node.dataset.until));
}

// ---- the API -------------------------------------------------------------

class Unauthorized extends Error {}

let token = sessionStorage.getItem(TOKEN_KEY) || '';

async function api(path, { method = 'GET', body } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
  if (response.status === 401) throw new Unauthorized();
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error((data && data.error) || `${method} ${path}: ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

// ---- state ----------------------------------------------------------------

const state = {
  hooks: [],
  hooksPage: 0,
  deliveries: { cursors: [null], rows: [], more: false },
  receivers: [],
  lastJson: {},
};

/** Whether `json` differs from what `key` last rendered (keeps a poll cheap). */
function changed(key, value) {
  const json = JSON.stringify(value);
  if (state.lastJson[key] === json) return false;
  state.lastJson[key] = json;
  return true;
}

// ---- hooks ----------------------------------------------------------------

function hookRows() {
  const search = $('#hook-search').value.trim().toLowerCase();
  const hooks = state.hooks
    .filter(h => !search || h.name.toLowerCase().includes(search))
    // Failed first: what needs a look.
    .sort((a, b) => (a.state === b.state ? a.name.localeCompare(b.name) : a.state === 'failed' ? -1 : 1));
  const pages = Math.max(1, Math.ceil(hooks.length / HOOKS_PER_PAGE));
  state.hooksPage = Math.min(state.hooksPage, pages - 1);
  $('#hooks-page').textContent = `${state.hooksPage + 1} / ${pages} (${hooks.length})`;
  $('#hooks-prev').disabled = state.hooksPage === 0;
  $('#hooks-next').disabled = state.hooksPage >= pages - 1;
  return hooks.slice(state.hooksPage * HOOKS_PER_PAGE, (state.hooksPage + 1) * HOOKS_PER_PAGE);
}

function renderHooks() {
  const body = $('#hooks tbody');
  const rows = hookRows().map(h => {
    const e = h.last_error;
    const why = e && el('div', { class: 'why error' },
      h.state === 'live' ? 'a new version failed; the last good one serves. ' : '',
      el('span', { class: 'mono', 'data-field': 'file' }, e.file), ': ',
      el('strong', { 'data-field': 'stage' }, e.stage), ' failed: ',
      el('span', { 'data-field': 'reason' }, e.reason));
    const sub = h.subscription
      ? `${h.subscription.methods.join(', ')} (${h.subscription.phases.join(', ')})`
      : '';
    return el('tr', { 'data-hook': h.name, 'data-state': h.state },
      el('td', {}, el('strong', {}, h.name), why),
      el('td', {}, badge(h.state), h.mode === 'monitor' ? [' ', badge('monitor', 'would-deny')] : null,
        h.wait ? [' ', badge('wait', 'pending')] : null),
      el('td', {}, h.abi || ''),
      el('td', {}, h.hash ? el('span', { class: 'mono', title: h.hash }, h.hash.slice(0, 12)) : '',
        h.loaded_at ? el('div', { class: 'muted' }, `loaded ${h.loaded_at}`) : null,
        h.signed_by ? el('div', { class: 'muted', 'data-field': 'signed-by' }, `signed by ${h.signed_by}`) : null),
      el('td', { class: 'mono' }, sub),
      el('td', { class: 'num' }, h.calls),
      el('td', { class: 'num' }, h.errors),
      el('td', { class: 'num' }, h.timeouts),
      el('td', { class: 'num' }, h.warm ?? ''));
  });
  body.replaceChildren(...rows);
  $('#hooks .empty').hidden = state.hooks.length > 0;
}

async function loadHooks() {
  // On a hooks bucket, the set serving; a folder engine answers 404.
  const [hooks, set] = await Promise.all([
    api('/v1/hooks'),
    api('/v1/hooks/set').catch(error => { if (error.status === 404) return null; throw error }),
  ]);
  if (!changed('hooks', { hooks, set })) return;
  state.hooks = hooks;
  renderSet(set);
  renderHooks();
  renderGates();
  fillSelect($('#delivery-hook'), hooks.map(h => h.name), 'every hook');
  fillSelect($('#simulate-as'), hooks.filter(h => h.state === 'live').map(h => h.name), 'a live hook…');
}

function renderSet(set) {
  const line = $('#hook-set');
  line.hidden = !set;
  if (!set) return;
  const serving = set.version
    ? ['set ', el('strong', { 'data-field': 'set-version' }, String(set.version)), ' of the hooks bucket']
    : [el('span', { class: 'error' }, 'no set of the hooks bucket yet: events pass ungated')];
  const refused = set.refused
    ? [el('div', { class: 'why error', 'data-field': 'set-refused' },
      `set ${set.refused.version} refused here: ${set.refused.reasons.join('; ')}`)]
    : [];
  line.replaceChildren(...serving, ...refused);
}

// ---- sources ---------------------------------------------------------------

async function loadSources() {
  const sources = await api('/v1/sources');
  if (!changed('sources', sources.map(s => ({ ...s, last_heard_ms: null })))) {
    for (const s of sources) {
      const cell = $(`#sources tr[data-source="${CSS.escape(s.name)}"] .heard`);
      if (cell) cell.replaceChildren(s.last_heard_ms ? ago(s.last_heard_ms) : '');
    }
    return;
  }
  const stateClass = { live: 'live', connecting: 'pending', syncing: 'pending', retrying: 'retrying', refused: 'failed' };
  const rows = sources.map(s => el('tr', { 'data-source': s.name, 'data-state': s.state },
    el('td', {}, el('strong', {}, s.name), el('div', { class: 'mono muted' }, s.url),
      el('div', { class: 'muted' }, s.collections.join(', '))),
    el('td', {}, badge(s.state, stateClass[s.state] ?? 'skipped'), ' ', el('span', { class: 'muted' }, 'since ', ago(s.since_ms)),
      s.last_error ? el('div', { class: 'why error', 'data-field': 'error' }, s.last_error) : null),
    el('td', { class: 'heard' }, s.last_heard_ms ? ago(s.last_heard_ms) : ''),
    el('td', { class: 'num' }, s.events),
    el('td', { class: 'num' }, s.resyncs),
    el('td', { class: 'num' }, s.dropped),
    el('td', { class: 'num' }, `${s.objects} / ${s.max_objects}`),
    el('td', { class: 'num' }, s.connections)));
  $('#sources tbody').replaceChildren(...rows);
  $('#sources .empty').hidden = sources.length > 0;
}

// ---- gates -----------------------------------------------------------------

// What each entry point is, for people.
const ENTRIES = {
  jsonrpc: 'JSON-RPC (XO 5 web UI, xo-cli)',
  rest: 'REST (XO 6 web UI, scripts, MCP)',
  job: "XO's job executor",
  xapi: 'around XO (xe, XAPI clients, HA)',
};
const entryText = e => `${ENTRIES[e.entry] ?? e.entry}: ${e.route ?? e.method}`;

function renderGates() {
  const gates = state.hooks.filter(h => h.coverage);
  const rows = gates.map(h => {
    const c = h.coverage;
    const covered = c.guarded_total > 0 && c.unguarded_total === 0 && c.warnings.length === 0;
    return el('tr', { 'data-gate': h.name },
      el('td', {}, el('strong', {}, h.name), ' ', h.mode === 'monitor' ? badge('monitor', 'would-deny') : null),
      el('td', {},
        el('div', { 'data-field': 'summary', class: covered ? '' : 'error' }, c.summary),
        el('ul', { class: 'decisions' }, c.warnings.map(w => el('li', { class: 'why error', 'data-field': 'warning' }, w))),
        c.guarded_total
          ? el('details', {}, el('summary', { class: 'muted' }, `${c.guarded_total} guarded`),
              el('ul', { class: 'decisions' }, c.guarded.map(g => el('li', { class: 'mono', 'data-guarded': entryText(g) }, entryText(g))),
                c.guarded_total > c.guarded.length ? el('li', { class: 'muted' }, `and ${c.guarded_total - c.guarded.length} more`) : null))
          : null),
      el('td', {}, el('ul', { class: 'decisions' },
        c.unguarded.map(u => el('li', { 'data-unguarded': entryText(u) },
          badge('not guarded', 'failed'), ' ', el('span', { class: 'mono' }, entryText(u)),
          u.note ? el('div', { class: 'why muted' }, u.note) : null)),
        c.unguarded_total > c.unguarded.length ? el('li', { class: 'muted' }, `and ${c.unguarded_total - c.unguarded.length} more`) : null)));
  });
  $('#gates tbody').replaceChildren(...rows);
  $('#gates .empty').hidden = gates.length > 0;
}

async function loadCoverage() {
  const reporters = await api('/v1/coverage');
  if (!changed('coverage', reporters.map(r => ({ ...r, age_ms: null })))) return;
  $('#reporters').replaceChildren(...(reporters.length
    ? reporters.map(r => el('span', { 'data-reporter': r.reporter, class: r.fresh && r.loaded ? '' : 'error' },
        `${r.reporter}: ${r.plugin}${r.orchestrator ? ` on ${r.orchestrator}` : ''}, `,
        r.loaded ? `${r.guarded} of ${r.entries} entry points guarded` : 'unloaded',
        r.fail_closed ? ', fails closed' : ', fails open',
        r.fresh ? '' : ' (stale)', '. '))
    : ['No orchestrator plugin has reported what it guards.']));
}

/** Keeps `select`'s options in line with `values`, and its choice; left
 * alone (so an open list stays open) while they are the same. */
function fillSelect(select, values, all) {
  const chosen = select.value;
  const options = [...new Set(values)].sort();
  if (chosen && !options.includes(chosen)) options.push(chosen);
  const now = JSON.stringify(options);
  if (select.dataset.options === now) return;
  select.dataset.options = now;
  select.replaceChildren(el('option', { value: '' }, all), ...options.map(v => el('option', { value: v }, v)));
  select.value = chosen;
}

// ---- deliveries -------------------------------------------------------------

function deliveryQuery() {
  const params = new URLSearchParams({ state: $('#delivery-state').value, limit: DELIVERIES_PER_PAGE });
  const hook = $('#delivery-hook').value;
  const receiver = $('#delivery-receiver').value;
  if (hook) params.set('hook', hook);
  if (receiver) params.set('receiver', receiver);
  const since = Number($('#delivery-since').value);
  if (since) params.set('from_ms', Date.now() - since);
  const cursor = state.deliveries.cursors.at(-1);
  if (cursor) params.set('after', `${cursor.created_ms}:${cursor.id}`);
  return `/v1/deliveries?${params}`;
}

async function loadDeliveries() {
  const rows = await api(deliveryQuery());
  if (!changed('deliveries', rows)) return;
  state.deliveries.rows = rows;
  renderDeliveries();
}

/** What the filters above the table select, as a replay's filter. */
function replayFilter() {
  const filter = { state: $('#delivery-state').value };
  if (filter.state === 'pending') filter.state = 'failed';
  const hook = $('#delivery-hook').value;
  const receiver = $('#delivery-receiver').value;
  const since = Number($('#delivery-since').value);
  if (hook) filter.hook = hook;
  if (receiver) filter.receiver = receiver;
  const now = Date.now();
  if (since) filter.from_ms = now - since;
  // What is queued after the count is not part of what was confirmed.
  filter.to_ms = now + 1;
  return filter;
}

function describe(filter) {
  const parts = [filter.state === 'failed' ? 'failing' : filter.state];
  if (filter.hook) parts.push(`of ${filter.hook}`);
  if (filter.receiver) parts.push(`to ${filter.receiver}`);
  if (filter.from_ms) parts.push(`queued since ${new Date(filter.from_ms).toLocaleTimeString()}`);
  parts.push(`until ${new Date(filter.to_ms).toLocaleTimeString()}`);
  return parts.join(' ');
}

/** Counts what a replay would take, and asks before doing it. */
async function askReplay() {
  const filter = replayFilter();
  const message = $('#deliveries-message');
  let requeued;
  try {
    ({ requeued } = await api('/v1/deliveries/retry', { method: 'POST', body: { ...filter, dry_run: true } }));
  } catch (e) {
    if (e instanceof Unauthorized) return askForToken();
    message.textContent = `Cannot count them: ${e.message}`;
    return;
  }
  const box = $('#replay-confirm');
  box.dataset.count = requeued;
  state.replay = filter;
  const plural = requeued === 1 ? 'delivery' : 'deliveries';
  $('.what', box).textContent = requeued
    ? `Send ${requeued} ${plural} again (${describe(filter)}), each under its own id?`
    : `Nothing to send again (${describe(filter)}).`;
  $('#replay-yes').textContent = `Replay ${requeued}`;
  $('#replay-yes').hidden = requeued === 0;
  box.hidden = false;
}

/** A count asked for other filters than those now chosen is dropped. */
function hideReplay() {
  $('#replay-confirm').hidden = true;
  state.replay = null;
}

async function confirmReplay() {
  $('#replay-confirm').hidden = true;
  const filter = state.replay;
  state.replay = null;
  if (filter) await retry(filter);
}

function renderDeliveries() {
  const { rows, cursors } = state.deliveries;
  const tr = d => {
    const retrying = d.state === 'pending' && d.attempts > 0;
    const shown = retrying ? 'retrying' : d.state;
    return el('tr', { 'data-id': d.id, 'data-state': d.state },
      el('td', { class: 'mono' }, el('button', { type: 'button', class: 'link open', title: 'its attempts', onclick: () => openDelivery(d.id) }, d.id)),
      el('td', {}, d.hook),
      el('td', { class: 'mono', title: d.url }, d.receiver),
      el('td', {}, badge(shown)),
      el('td', { class: 'num' }, d.attempts),
      el('td', { class: 'why' }, d.last_error || ''),
      el('td', {}, ago(d.created_ms)),
      el('td', {}, d.state === 'pending' ? until(d.next_ms) : ''),
      el('td', {}, d.state === 'dead'
        ? el('button', { type: 'button', class: 'retry', onclick: () => retry({ id: d.id }) }, 'Retry')
        : null));
  };
  $('#deliveries tbody').replaceChildren(...rows.map(tr));
  $('#deliveries .empty').hidden = rows.length > 0;
  $('#deliveries-next').disabled = rows.length < DELIVERIES_PER_PAGE;
  $('#deliveries-first').disabled = cursors.length === 1;
}

async function retry(which) {
  const message = $('#deliveries-message');
  try {
    const { requeued } = await api('/v1/deliveries/retry', { method: 'POST', body: which });
    const what = which.state ? (requeued === 1 ? 'delivery' : 'deliveries') : (requeued === 1 ? 'dead letter' : 'dead letters');
    message.textContent = `${requeued} ${what} queued again`;
  } catch (e) {
    if (e instanceof Unauthorized) return askForToken();
    message.textContent = `Retry failed: ${e.message}`;
  }
  await refresh();
}

/** One delivery and its attempts, in the dialog. */
async function openDelivery(id) {
  const dialog = $('#delivery-detail');
  const problem = $('p.error', dialog);
  let d;
  try {
    d = await api(`/v1/deliveries/${encodeURIComponent(id)}`);
    problem.textContent = '';
  } catch (e) {
    if (e instanceof Unauthorized) return askForToken();
    // Nothing of another delivery stays under the error.
    for (const part of dialog.querySelectorAll('.summary, tbody')) part.replaceChildren();
    $('.empty', dialog).hidden = true;
    dialog.dataset.id = id;
    problem.textContent = `Cannot show ${id}: ${e.message}`;
    if (!dialog.open) dialog.showModal();
    return;
  }
  const info = d.delivery;
  dialog.dataset.id = info.id;
  $('#detail-title').textContent = `Delivery ${info.id}`;
  $('.summary', dialog).replaceChildren(
    badge(info.state), ' ', el('strong', {}, info.hook), ' → ', el('span', { class: 'mono' }, info.url),
    ` · ${info.body_bytes} bytes · ${info.attempts} attempt${info.attempts === 1 ? '' : 's'} · queued `, ago(info.created_ms),
    ...(info.delivered_ms ? [' · delivered ', ago(info.delivered_ms)] : []));
  $('table.headers tbody', dialog).replaceChildren(...d.headers.map(([name, value]) =>
    el('tr', {}, el('td', { class: 'mono' }, name), el('td', { class: 'mono why' }, value))));
  const answer = a => [
    a.error ? el('div', { class: 'why error' }, a.error) : null,
    a.headers?.length ? el('div', { class: 'mono muted' }, a.headers.map(([n, v]) => `${n}: ${v}`).join('\n')) : null,
    a.body !== undefined && a.body !== null
      ? el('pre', { class: 'body' }, a.body === '' ? '(empty body)' : a.body, a.body_truncated ? ' …(truncated)' : '')
      : null,
  ];
  $('table.attempts tbody', dialog).replaceChildren(...d.history.map((a, n) =>
    el('tr', { 'data-attempt': n + 1, 'data-outcome': a.outcome, 'data-status': a.status ?? '' },
      el('td', {}, new Date(a.at_ms).toLocaleString()),
      el('td', {}, badge(a.outcome === 'retry' ? 'retrying' : a.outcome, a.outcome === 'retry' ? 'retrying' : a.outcome)),
      el('td', { class: 'num' }, a.status ?? '—'),
      el('td', { class: 'num' }, `${a.duration_ms} ms`),
      el('td', {}, answer(a)),
      el('td', { class: 'mono muted' }, a.engine))));
  $('.empty', dialog).hidden = d.history.length > 0;
  if (!dialog.open) dialog.showModal();
}

function resetDeliveries() {
  state.deliveries.cursors = [null];
  delete state.lastJson.deliveries;
  refresh();
}

// ---- receivers -----------------------------------------------------------------

async function loadReceivers() {
  const receivers = await api('/v1/receivers');
  state.receivers = receivers;
  fillSelect($('#delivery-receiver'), receivers.map(r => r.receiver), 'every receiver');
  renderSummary();
  if (!changed('receivers', receivers.map(r => ({ ...r, oldest_pending_age_ms: null })))) {
    // Only the ages moved: update them in place.
    for (const r of receivers) {
      const cell = $(`#receivers tr[data-receiver="${CSS.escape(r.receiver)}"] .oldest`);
      if (cell) cell.textContent = age(r.oldest_pending_age_ms);
    }
    return;
  }
  const rows = receivers.map(r => el('tr', { 'data-receiver': r.receiver, 'data-circuit': r.circuit },
    el('td', { class: 'mono' }, r.receiver),
    el('td', {}, badge(r.circuit), r.open_until_ms ? el('div', { class: 'muted' }, 'probe ', until(r.open_until_ms)) : null,
      r.failures_in_a_row ? el('div', { class: 'muted' }, `${r.failures_in_a_row} failures in a row`) : null),
    el('td', { class: 'num' }, r.in_flight),
    el('td', { class: 'num' }, r.pending),
    el('td', { class: 'num' }, r.dead),
    el('td', { class: 'oldest' }, age(r.oldest_pending_age_ms)),
    el('td', {}, el('ul', { class: 'decisions' }, r.recent_failures.map(f =>
      el('li', { class: 'why' }, el('span', { class: 'muted' }, ago(f.at_ms)), ' ',
        f.dead ? badge('dead') : badge('retrying'), ' ', f.hook, ': ', f.error))))));
  $('#receivers tbody').replaceChildren(...rows);
  $('#receivers .empty').hidden = receivers.length > 0;
}

// ---- simulate --------------------------------------------------------------------

/** Sends the chosen `.wasm` to POST /v1/simulate and shows the report. */
async function simulate(event) {
  event.preventDefault();
  const file = $('#simulate-file').files[0];
  const live = $('#simulate-as').value;
  if (!file || !live) return;
  const message = $('#simulate-message');
  message.textContent = `replaying the archive through ${file.name}…`;
  message.classList.remove('error');
  $('#simulate-run').disabled = true;
  $('#simulate-report').hidden = true;
  try {
    const headers = { 'Content-Type': 'application/octet-stream' };
    if (token) headers.Authorization = `Bearer ${token}`;
    const query = new URLSearchParams({ as: live, hours: $('#simulate-hours').value });
    const response = await fetch(`/v1/simulate?${query}`, { method: 'POST', headers, body: file, cache: 'no-store' });
    if (response.status === 401) throw new Unauthorized();
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new Error((data && data.error) || `POST /v1/simulate: ${response.status}`);
    message.textContent = '';
    renderSimulation(data);
  } catch (e) {
    if (e instanceof Unauthorized) return askForToken();
    message.textContent = e.message;
    message.classList.add('error');
  } finally {
    $('#simulate-run').disabled = false;
  }
}

function renderSimulation(r) {
  const report = $('#simulate-report');
  const same = r.live_versions.length === 1 && r.live_versions[0] === r.version;
  $('.summary', report).textContent = `${r.hook} (version ${r.version.slice(0, 12)}) against the live ${r.live}`
    + (same ? ' (the same version)' : r.live_versions.length ? ` (version ${r.live_versions.map(v => v.slice(0, 12)).join(', ')})` : ' (no decision of it archived)')
    + `, over ${r.events} archived events.`;
  const count = (label, value, live, field) => el('tr', { 'data-count': field },
    el('th', {}, label), el('td', { class: 'num' }, value), el('td', { class: 'muted' }, live));
  $('.counts tbody', report).replaceChildren(
    count('handed the events', r.called, `live: ${r.live_called}`, 'called'),
    count('denies', r.denied, `live: ${r.live_denied}`, 'denied'),
    count('newly denied', r.newly_denied.count, '', 'newly_denied'),
    count('newly allowed', r.newly_allowed.count, '', 'newly_allowed'),
    count('failed', r.failures.reduce((n, f) => n + f.count, 0), `live: ${r.live_failures}`, 'failed'),
    count('time per event', `p50 ${r.time.p50_ms.toFixed(2)} ms · p99 ${r.time.p99_ms.toFixed(2)} ms`, `max ${r.time.max_ms.toFixed(2)} ms`, 'time'));
  const example = x => el('tr', {},
    el('td', {}, x.method), el('td', { class: 'mono' }, x.call_id), el('td', { class: 'mono' }, x.object || ''),
    el('td', {}, x.user || ''), el('td', { class: 'why' }, x.reason || ''));
  $('.newly-denied tbody', report).replaceChildren(...r.newly_denied.examples.map(example));
  $('.newly-allowed tbody', report).replaceChildren(...r.newly_allowed.examples.map(example));
  $('.failures tbody', report).replaceChildren(...r.failures.map(f => el('tr', {},
    el('td', {}, badge(f.kind, 'failed')), el('td', {}, f.method), el('td', { class: 'num' }, f.count), el('td', { class: 'why' }, f.message))));
  $('.receivers tbody', report).replaceChildren(...r.receivers.map(c => el('tr', { 'data-receiver': c.receiver },
    el('td', { class: 'mono' }, c.receiver), el('td', { class: 'num' }, c.live), el('td', { class: 'num' }, c.new),
    el('td', { class: 'num' }, c.new === c.live ? '' : `${c.new > c.live ? '+' : ''}${c.new - c.live}`))));
  report.hidden = false;
}

// ---- activity ------------------------------------------------------------------

async function loadActivity() {
  const events = await api('/v1/activity?limit=50');
  if (!changed('activity', events)) return;
  const verdict = e => {
    if (e.phase !== 'pre') return '';
    return e.allowed ? badge('allowed') : [badge('denied'), ` by ${e.denied_by}`];
  };
  const decision = h => el('li', { 'data-hook': h.hook, 'data-decision': h.decision },
    el('strong', {}, h.hook), ' ',
    badge(h.decision === 'queued' ? `${h.deliveries} ${h.deliveries === 1 ? 'delivery' : 'deliveries'}` : h.decision, h.decision),
    h.decision !== 'queued' && h.deliveries ? ` + ${h.deliveries} deliveries` : '',
    h.reason ? el('span', { class: 'why' }, ` ${h.reason}`) : '');
  const rows = events.map(e => el('tr', { 'data-call-id': e.call_id, 'data-phase': e.phase },
    el('td', {}, ago(e.at_ms)),
    el('td', {}, el('strong', {}, e.method), ' ', badge(e.phase, 'skipped')),
    el('td', { class: 'mono' }, e.call_id),
    el('td', {}, verdict(e)),
    el('td', {}, e.hooks.length
      ? el('ul', { class: 'decisions' }, e.hooks.map(decision), e.more_hooks ? el('li', { class: 'muted' }, `and ${e.more_hooks} more`) : null)
      : el('span', { class: 'muted' }, 'no hook subscribed'))));
  $('#activity tbody').replaceChildren(...rows);
  $('#activity .empty').hidden = events.length > 0;
}

// ---- plots: the last hour, per minute ----------------------------------------

const SVG_NS = 'http://www.w3.org/2000/svg';
const COLORS = ['#1f5fbf', '#17803d', '#b42318', '#9a6700', '#6941c6', '#0e7490', '#c11574', '#4b5563'];
/** Lines drawn per plot; the busiest first. */
const MAX_LINES = 8;

/** An SVG element with attributes and children (strings become text). */
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const hhmm = ms => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
/** A number for an axis or a tooltip: about three significant digits. */
function num(v) {
  if (v === null || v === undefined) return '–';
  if (v === 0) return '0';
  if (Math.abs(v) >= 100) return String(Math.round(v));
  if (Math.abs(v) >= 10) return v.toFixed(1);
  return v.toPrecision(2);
}

/**
 * A line plot over `minutes`: `lines` are `{ name, color, dashed, values }`
 * (one value or null per minute). Each minute is a column whose tooltip
 * is `tip(i)`, and whose `data` attributes are `data(i)`, so values are
 * readable on hover.
 */
function linePlot(figure, minutes, lines, tip, data = () => ({})) {
  const W = 640, H = 170, L = 46, R = 10, T = 8, B = 20;
  const n = minutes.length;
  if (n === 0) {
    $('.plot', figure).replaceChildren();
    return;
  }
  const values = lines.flatMap(l => l.values.filter(v => v !== null && v !== undefined));
  const top = Math.max(...values, 0) || 1;
  const step = n > 1 ? (W - L - R) / (n - 1) : 0;
  const x = i => (n > 1 ? L + i * step : (L + W - R) / 2);
  const y = v => T + (H - T - B) * (1 - v / top);
  const chart = svg('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': $('figcaption', figure).textContent });
  for (const v of [0, top / 2, top]) {
    chart.append(
      svg('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: '#e3e6ec' }),
      svg('text', { x: L - 5, y: y(v) + 3.5, 'text-anchor': 'end', 'font-size': 10, fill: '#687083' }, num(v)));
  }
  for (const i of new Set([0, Math.floor((n - 1) / 2), n - 1])) {
    const anchor = n === 1 || (i > 0 && i < n - 1) ? 'middle' : (i === 0 ? 'start' : 'end');
    chart.append(svg('text', { x: x(i), y: H - 5, 'text-anchor': anchor, 'font-size': 10, fill: '#687083' }, hhmm(minutes[i].start_ms)));
  }
  for (const line of lines) {
    let d = '';
    let pen = 'M';
    line.values.forEach((v, i) => {
      if (v === null || v === undefined) { pen = 'M'; return; }
      d += `${pen}${x(i).toFixed(1)} ${y(v).toFixed(1)} `;
      pen = 'L';
      // A point too, so that a lone minute shows.
      chart.append(svg('circle', { cx: x(i), cy: y(v), r: 1.8, fill: line.color }));
    });
    chart.append(svg('path', {
      d: d.trim() || null, fill: 'none', stroke: line.color, 'stroke-width': 1.6,
      'stroke-dasharray': line.dashed ? '5 3' : null, 'data-line': line.name,
    }));
  }
  // A column per minute: hovering one shows its values below the plot (a
  // readout that outlives the redraw of every poll) and in a tooltip.
  const width = n > 1 ? step : W - L - R;
  const readout = $('.readout', figure);
  const show = i => {
    figure.dataset.hover = minutes[i].start_ms;
    readout.textContent = tip(i);
  };
  minutes.forEach((m, i) => {
    chart.append(svg('rect', {
      x: x(i) - width / 2, y: T, width, height: H - T - B, fill: 'transparent',
      'data-minute': m.start_ms, ...data(i),
    }, svg('title', {}, tip(i))));
    chart.lastChild.addEventListener('pointerenter', () => show(i));
  });
  chart.addEventListener('pointerleave', () => {
    delete figure.dataset.hover;
    readout.textContent = '';
  });
  const hovered = minutes.findIndex(m => String(m.start_ms) === figure.dataset.hover);
  if (hovered >= 0) show(hovered);
  const legend = lines.filter(l => !l.dashed || !lines.some(o => o !== l && o.name === l.name && !o.dashed));
  $('.plot', figure).replaceChildren(chart);
  $('.legend', figure).replaceChildren(...legend.map(l => el('span', { 'data-name': l.name },
    svg('svg', { width: 14, height: 6 }, svg('rect', { width: 14, height: 3, y: 1.5, fill: l.color })), l.name)));
}

/** The names in `minutes[*][key]` (receivers or hooks), busiest first. */
function busiest(minutes, key, name, weight) {
  const total = new Map();
  for (const m of minutes) for (const p of m[key]) total.set(p[name], (total.get(p[name]) ?? 0) + weight(p));
  return [...total].filter(([, w]) => w > 0).sort((a, b) => b[1] - a[1]).slice(0, MAX_LINES).map(([n]) => n);
}

/** Each name's value per minute, null where it has none. */
const valuesOf = (minutes, key, name, field, value) =>
  minutes.map(m => { const p = m[key].find(q => q[field] === name); return p ? value(p) : null; });

async function loadSeries() {
  const series = await api('/v1/series');
  const minutes = series.minutes;
  const started = series.started_ms;
  $('#plots-note').textContent = minutes.length && minutes[0].start_ms <= started
    ? `per minute since the engine started at ${hhmm(started)} (kept in memory: a restart starts them empty)`
    : 'per minute, the last 60 minutes (kept in memory: a restart starts them empty)';
  const rate = (count, m) => count / m.seconds;

  linePlot($('#plot-traffic'), minutes, [
    { name: 'events', color: COLORS[0], values: minutes.map(m => rate(m.events, m)) },
    { name: 'deliveries', color: COLORS[1], values: minutes.map(m => rate(m.delivered, m)) },
  ], i => {
    const m = minutes[i];
    return `${hhmm(m.start_ms)}: ${num(rate(m.events, m))} events/s (${m.events}), ${num(rate(m.delivered, m))} deliveries/s (${m.delivered})`;
  }, i => ({ 'data-events': minutes[i].events, 'data-delivered': minutes[i].delivered }));

  const failing = busiest(minutes, 'receivers', 'receiver', p => p.failed);
  linePlot($('#plot-failures'), minutes, failing.flatMap((name, k) => [
    { name, color: COLORS[k % COLORS.length], values: valuesOf(minutes, 'receivers', name, 'receiver', p => p.failed).map(v => v ?? 0) },
    { name, color: COLORS[k % COLORS.length], dashed: true, values: valuesOf(minutes, 'receivers', name, 'receiver', p => p.dead).map(v => v ?? 0) },
  ]), i => {
    const m = minutes[i];
    const parts = m.receivers.filter(p => p.failed).map(p => `${p.receiver}: ${p.failed} failed, ${p.dead} dead`);
    return `${hhmm(m.start_ms)}: ${parts.length ? parts.join('; ') : 'no failure'}`;
  }, i => ({ 'data-failed': minutes[i].failed, 'data-dead': minutes[i].dead }));

  const percentiles = (key, field, names) => names.flatMap((name, k) => [
    { name, color: COLORS[k % COLORS.length], values: valuesOf(minutes, key, name, field, p => p.p50_ms) },
    { name, color: COLORS[k % COLORS.length], dashed: true, values: valuesOf(minutes, key, name, field, p => p.p99_ms) },
  ]);
  const timesTip = (key, field, count) => i => {
    const m = minutes[i];
    const parts = m[key].map(p => `${p[field]}: p50 ${num(p.p50_ms)} ms, p99 ${num(p.p99_ms)} ms (${count(p)})`);
    return `${hhmm(m.start_ms)}: ${parts.length ? parts.join('; ') : 'none'}`;
  };
  const hooks = busiest(minutes, 'hooks', 'hook', p => p.calls);
  linePlot($('#plot-hooks'), minutes, percentiles('hooks', 'hook', hooks),
    timesTip('hooks', 'hook', p => `${p.calls} calls`));
  const receivers = busiest(minutes, 'receivers', 'receiver', p => p.delivered + p.failed);
  linePlot($('#plot-latency'), minutes, percentiles('receivers', 'receiver', receivers),
    timesTip('receivers', 'receiver', p => `${p.delivered + p.failed} attempts`));
}

// ---- the page --------------------------------------------------------------------

function renderSummary() {
  const live = state.hooks.filter(h => h.state === 'live').length;
  const failed = state.hooks.filter(h => h.state === 'failed' || h.last_error).length;
  const sum = key => state.receivers.reduce((n, r) => n + r[key], 0);
  const open = state.receivers.filter(r => r.circuit !== 'closed').length;
  $('#summary').replaceChildren(
    el('span', { 'data-count': 'live' }, `${live} live`),
    el('span', { 'data-count': 'failing-hooks' }, `${failed} failing to load`),
    el('span', { 'data-count': 'pending' }, `${sum('pending')} pending`),
    el('span', { 'data-count': 'dead' }, `${sum('dead')} dead`),
    el('span', { 'data-count': 'open' }, `${open} circuits not closed`));
}

let timer = null;
let running = null;
let again = false;

/**
 * One round of polling. A call while one runs (a filter changed, a page
 * turned) makes one more round after it, so what is shown is never older
 * than the last thing asked for.
 */
function refresh() {
  if (running) {
    again = true;
    return running;
  }
  running = (async () => {
    do {
      again = false;
      try {
        await Promise.all([loadHooks(), loadCoverage(), loadSources(), loadDeliveries(), loadReceivers(), loadActivity(), loadSeries()]);
        renderSummary();
        updateTimes();
        setStatus(`updated ${new Date().toLocaleTimeString()}`);
        showApp();
      } catch (e) {
        if (e instanceof Unauthorized) askForToken();
        else setStatus(`cannot reach the engine: ${e.message}`, true);
        again = false;
      }
    } while (again);
    running = null;
  })();
  return running;
}

function setStatus(text, error = false) {
  const status = $('#status');
  status.textContent = text;
  status.classList.toggle('error', error);
}

function showApp() {
  $('#login').hidden = true;
  $('#app').hidden = false;
  $('#forget-token').hidden = !token;
  if (!timer) timer = setInterval(refresh, POLL_MS);
}

function askForToken() {
  clearInterval(timer);
  timer = null;
  $('#app').hidden = true;
  // Nothing of the engine stays on the page without the token.
  for (const body of document.querySelectorAll('#app tbody, #plots .plot, #plots .legend, #plots .readout')) body.replaceChildren();
  $('#plots-note').textContent = '';
  $('#summary').replaceChildren();
  state.lastJson = {};
  $('#login').hidden = false;
  $('#token-error').textContent = token ? 'That token was refused.' : '';
  setStatus('a token is needed');
  $('#token-input').focus();
}

$('#token-form').addEventListener('submit', event => {
  event.preventDefault();
  token = $('#token-input').value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  $('#token-input').value = '';
  refresh();
});
$('#forget-token').addEventListener('click', () => {
  token = '';
  sessionStorage.removeItem(TOKEN_KEY);
  askForToken();
});
$('#hook-search').addEventListener('input', () => { state.hooksPage = 0; renderHooks(); });
$('#hooks-prev').addEventListener('click', () => { state.hooksPage--; renderHooks(); });
$('#hooks-next').addEventListener('click', () => { state.hooksPage++; renderHooks(); });
for (const id of ['#delivery-state', '#delivery-hook', '#delivery-receiver']) {
  $(id).addEventListener('change', () => { hideReplay(); resetDeliveries(); });
}
$('#deliveries-next').addEventListener('click', () => {
  const last = state.deliveries.rows.at(-1);
  if (!last) return;
  state.deliveries.cursors.push({ created_ms: last.created_ms, id: last.id });
  delete state.lastJson.deliveries;
  refresh();
});
$('#deliveries-first').addEventListener('click', resetDeliveries);
$('#retry-all').addEventListener('click', () => retry({ all_dead: true }));
$('#detail-close').addEventListener('click', () => $('#delivery-detail').close());
$('#replay').addEventListener('click', askReplay);
$('#simulate-form').addEventListener('submit', simulate);
$('#replay-yes').addEventListener('click', confirmReplay);
$('#replay-no').addEventListener('click', hideReplay);
$('#delivery-since').addEventListener('change', () => { hideReplay(); resetDeliveries(); });

refresh();
