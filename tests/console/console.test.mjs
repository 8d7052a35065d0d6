// The operator console, end to end: a real `wasmhooks serve` (this build)
// with real hooks and a real receiver, driven in headless Chromium (Debian's
// `chromium`, through playwright-core). Run by tests/all/console.rs, which
// passes WASMHOOKS_BIN (the binary), WASMHOOKS_GUESTS (the built example
// hooks) and SCREENSHOTS (where each test leaves its screenshot).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { createServer } from 'node:http'
import { once } from 'node:events'
import { execFileSync } from 'node:child_process'
import { copyFileSync, mkdtempSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium } from 'playwright-core'
import { serve } from './serve.mjs'

const required = name => {
  const value = process.env[name]
  if (!value) throw new Error(`${name} is not set: run these tests through \`cargo test console\``)
  return value
}
const BIN = required('WASMHOOKS_BIN')
const GUESTS = required('WASMHOOKS_GUESTS')
const SCREENSHOTS = required('SCREENSHOTS')
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'
// Long enough for a loaded CI machine; every wait ends as soon as it holds.
const WAIT = { timeout: 60_000 }
const TOKEN = 'console-test-token-0123456789'

/** An HTTP receiver on 127.0.0.1. `answer(path, body)` picks each status. */
async function startReceiver() {
  const received = []
  let waiters = []
  const receiver = {
    received,
    answer: () => 200,
    url: '',
    /** Resolves with the first request `match` accepts, past or future. */
    until(match) {
      const found = received.find(match)
      if (found) return Promise.resolve(found)
      return new Promise(resolve => waiters.push({ match, resolve }))
    },
  }
  const server = createServer(async (request, response) => {
    const chunks = []
    for await (const chunk of request) chunks.push(chunk)
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8'))
    const status = receiver.answer(request.url, body)
    const entry = { path: request.url, body, status, id: request.headers['webhook-id'] }
    received.push(entry)
    response.writeHead(status, { 'content-type': 'text/plain' }).end(`answered ${status}`)
    waiters = waiters.filter(w => !(w.match(entry) && (w.resolve(entry), true)))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  receiver.url = `http://127.0.0.1:${server.address().port}`
  receiver.close = () => server.close()
  return receiver
}

/** A hooks folder: `forward` hooks named for their receiver path, and more. */
function hooksFolder(receiverUrl) {
  const dir = mkdtempSync(join(tmpdir(), 'wasmhooks-console-'))
  const hooks = join(dir, 'hooks')
  mkdirSync(hooks)
  const forward = (name, methods) => {
    copyFileSync(join(GUESTS, 'forward.wasm'), join(hooks, `${name}.wasm`))
    writeFileSync(join(hooks, `${name}.toml`), [
      'allow_hosts = ["127.0.0.1"]',
      '[settings]',
      `url = "${receiverUrl}/${name}"`,
      `methods = ${JSON.stringify(methods)}`,
      'phases = ["post"]',
    ].join('\n'))
  }
  forward('notify', ['vm.start'])
  forward('archive', ['vm.delete'])
  copyFileSync(join(GUESTS, 'deny.wasm'), join(hooks, 'deny.wasm'))
  writeFileSync(join(hooks, 'deny.toml'), '[settings]\nprotected = ["0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d"]\n')
  return { dir, hooks }
}

/**
 * XO's event stream, as XO serves it (see tests/support/xo_events.rs for
 * the full stand-in): `init`, subscriptions, listings; while `refusing`, it
 * answers 401 as XO does to a token it does not know.
 */
async function startXo() {
  const xo = { refusing: true, url: '' }
  const server = createServer(async (request, response) => {
    for await (const _ of request);
    if (xo.refusing || !(request.headers.cookie ?? '').includes('authenticationToken=console-xo-token')) {
      response.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'invalid credentials' }))
    } else if (request.url === '/rest/v0/events') {
      response.writeHead(200, { 'content-type': 'text/event-stream' })
      response.write(`event: init\ndata: ${JSON.stringify({ id: 'console-connection' })}\n\n`)
    } else if (request.url.startsWith('/rest/v0/events/')) {
      response.writeHead(201, { 'content-type': 'application/json' }).end('{"id":"VM"}')
    } else {
      response.writeHead(200, { 'content-type': 'application/json' }).end('[]')
    }
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  xo.url = `http://127.0.0.1:${server.address().port}`
  xo.close = () => { server.closeAllConnections(); server.close() }
  return xo
}

/** `wasmhooks serve` on a free port, watching `hooks`; stopped with `stop()`. */
async function startEngine({ dir, hooks }, args = []) {
  const state = join(dir, `state-${Math.random().toString(36).slice(2)}`)
  // Retries every second, and a breaker that stays closed, so a failing
  // delivery goes out soon after its receiver is fixed.
  const config = join(dir, 'engine.toml')
  writeFileSync(config, `[archive]
days = 1

[delivery]
retry_schedule_ms = [${Array(60).fill(1000).join(', ')}]
breaker_failures = 1000

[sources.xo]
url = "${xo.url}"
token = "console-xo-token"
reconnect_max_ms = 500
[sources.xo.collections]
VM = ["power_state"]
`)
  return serve(BIN, ['--hooks', hooks, '--state', state, '--cache', join(dir, 'cache'), '--config', config, ...args])
}

async function post(engine, event, token) {
  const headers = { 'content-type': 'application/json' }
  if (token) headers.authorization = `Bearer ${token}`
  const response = await fetch(`${engine.url}/v1/events`, { method: 'POST', headers, body: JSON.stringify(event) })
  const text = await response.text()
  assert.ok(response.ok, `${event.method} ${event.type}: ${response.status} ${text}`)
  return JSON.parse(text)
}

const postEvent = (method, callId, params = {}) => ({
  callId, method, type: 'post', timestamp: Date.now(), userName: 'alice@example.org',
  params, duration: 1200, result: true,
})

let browser
let receiver
let folder
let engine
let xo

before(async () => {
  mkdirSync(SCREENSHOTS, { recursive: true })
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    // As root, Chromium's sandbox cannot start; the machine has no network
    // but loopback, so nothing in the background may try to reach one.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  })
  receiver = await startReceiver()
  xo = await startXo()
  folder = hooksFolder(receiver.url)
  writeFileSync(join(folder.hooks, 'broken.wasm'), 'this is not WebAssembly')
  engine = await startEngine(folder)
})

after(async () => {
  await engine?.stop()
  await browser?.close()
  receiver?.close()
  xo?.close()
  if (folder) rmSync(folder.dir, { recursive: true, force: true })
})

/**
 * A fresh page on `url`, with every request it makes recorded (to check
 * them against the OpenAPI document), and its screenshot saved as `name`
 * when `body` ends, passed or failed.
 */
async function withPage(name, url, body) {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } })
  const requests = []
  page.on('request', request => requests.push({ method: request.method(), url: request.url() }))
  const errors = []
  page.on('pageerror', error => errors.push(error))
  try {
    const response = await page.goto(url)
    await body(page, requests, response)
    assert.deepEqual(errors, [], 'no script error on the page')
  } finally {
    await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true })
    await page.close()
  }
}

test('the hooks table lists every hook, shows why one fails, and turns it live without a reload', async () => {
  await withPage('hooks', engine.url, async (page, requests, response) => {
    // Only its own script and style run (what hooks wrote is text).
    const csp = response.headers()['content-security-policy']
    assert.match(csp, /script-src 'sha256-[^']+'; style-src 'sha256-[^']+'/)
    assert.doesNotMatch(csp, /unsafe/)
    for (const name of ['notify', 'archive', 'deny']) {
      await page.locator(`#hooks tr[data-hook="${name}"][data-state="live"]`).waitFor(WAIT)
    }
    const broken = page.locator('#hooks tr[data-hook="broken"][data-state="failed"]')
    await broken.waitFor(WAIT)
    assert.match(await broken.locator('[data-field="file"]').innerText(), /broken\.wasm$/)
    assert.equal(await broken.locator('[data-field="stage"]').innerText(), 'compile')
    assert.match(await broken.locator('[data-field="reason"]').innerText(), /\S/)

    // Mark this document: a reload would lose the mark.
    await page.evaluate(() => { window.sameDocument = true })
    copyFileSync(join(GUESTS, 'forward.wasm'), join(folder.hooks, '.broken.tmp'))
    writeFileSync(join(folder.hooks, 'broken.toml'), [
      'allow_hosts = ["127.0.0.1"]', '[settings]', `url = "${receiver.url}/fixed"`,
      'methods = ["host.*"]', 'phases = ["post"]',
    ].join('\n'))
    renameSync(join(folder.hooks, '.broken.tmp'), join(folder.hooks, 'broken.wasm'))
    await page.locator('#hooks tr[data-hook="broken"][data-state="live"]').waitFor(WAIT)
    assert.equal(await page.locator('#hooks tr[data-hook="broken"] .why').count(), 0, 'no error shown once live')
    assert.equal(await page.evaluate(() => window.sameDocument), true, 'the page was not reloaded')
  })
})

test("each gate shows where the orchestrator waits for it, and where not, with why", async () => {
  await withPage('gates', engine.url, async page => {
    const deny = page.locator('#gates tr[data-gate="deny"]')
    await deny.waitFor(WAIT)
    // No plugin has reported: nothing is shown as guarded.
    assert.match(await deny.locator('[data-field="summary"]').innerText(), /^NOT guarded in the orchestrator/)
    assert.equal(await page.locator('#gates tr[data-gate="notify"]').count(), 0, 'a post-only hook is no gate')

    // What the XO plugin reports (PUT /v1/coverage/xo:HOST).
    const report = {
      plugin: 'xo-server-wasmhooks 0.1.0',
      orchestrator: 'xo-server 5.207.2',
      loaded: true,
      fail_closed: false,
      ttl_secs: 600,
      entries: [
        { entry: 'jsonrpc', method: 'vm.delete', guarded: true },
        { entry: 'rest', method: 'vm.delete', route: 'DELETE /rest/v0/vms/:id', guarded: true },
        { entry: 'rest', method: 'vm.stop', route: 'POST /rest/v0/vms/:id/actions/clean_shutdown', guarded: false },
        { entry: 'xapi', method: '*', guarded: false, note: 'changes made without XO' },
      ],
    }
    const put = await fetch(`${engine.url}/v1/coverage/xo:console-test`, {
      method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify(report),
    })
    assert.equal(put.status, 204, await put.text())
    await page.locator('#reporters [data-reporter="xo:console-test"]').waitFor(WAIT)
    await deny.locator('[data-guarded="REST (XO 6 web UI, scripts, MCP): DELETE /rest/v0/vms/:id"]').waitFor({ state: 'attached', ...WAIT })
    assert.equal(
      await deny.locator('[data-field="summary"]').innerText(),
      'guarded on 2 entry points (jsonrpc, rest); NOT on 2: rest vm.stop, xapi *'
    )
    const stop = deny.locator('[data-unguarded="REST (XO 6 web UI, scripts, MCP): POST /rest/v0/vms/:id/actions/clean_shutdown"]')
    assert.match(await stop.innerText(), /not guarded[\s\S]*guard setting leaves this method out/)
    assert.match(await deny.locator('[data-unguarded="around XO (xe, XAPI clients, HA): *"]').innerText(), /changes made without XO/)
    assert.match(await deny.locator('[data-field="warning"]').first().innerText(), /fails open/)
  })
})

test("the sources card shows XO's event stream refused with why, then live", async () => {
  await withPage('sources', engine.url, async page => {
    const row = page.locator('#sources tr[data-source="xo"]')
    await page.locator('#sources tr[data-source="xo"][data-state="refused"]').waitFor(WAIT)
    assert.match(await row.locator('[data-field="error"]').innerText(), /^XO refused the token \(401: invalid credentials\)/)
    assert.match(await row.innerText(), new RegExp(xo.url.replace(/[.]/g, '\\.')))
    xo.refusing = false
    await page.locator('#sources tr[data-source="xo"][data-state="live"]').waitFor(WAIT)
    assert.equal(await row.locator('[data-field="error"]').count(), 0, 'no error once live')
  })
})

test('an event shows in recent activity, and its delivery while it is retried', async () => {
  // Deliveries to /notify fail (and are retried every second) until the
  // page has shown one as failing; then they go through.
  let shown = false
  receiver.answer = path => (path === '/notify' && !shown ? 503 : 200)
  await withPage('activity', engine.url, async (page, requests) => {
    await page.locator('#app').waitFor({ state: 'visible', ...WAIT })
    await post(engine, postEvent('vm.start', 'call-activity', { id: 'vm-1' }))
    await post(engine, { callId: 'call-veto', method: 'vm.delete', type: 'pre', timestamp: Date.now(),
      params: { id: '0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d' } })

    const activity = page.locator('#activity tr[data-call-id="call-activity"]')
    await activity.waitFor(WAIT)
    await activity.locator('li[data-hook="notify"][data-decision="queued"]').waitFor(WAIT)
    const veto = page.locator('#activity tr[data-call-id="call-veto"] li[data-hook="deny"][data-decision="vetoed"]')
    await veto.waitFor(WAIT)
    assert.match(await veto.innerText(), /protected/)

    // Its delivery, failed once and waiting for its retry.
    const first = await receiver.until(r => r.path === '/notify' && r.body.callId === 'call-activity')
    const row = page.locator(`#deliveries tr[data-id="${first.id}"]`)
    await row.waitFor(WAIT)
    assert.match(await row.innerText(), /503/)
    await page.locator('#receivers tr[data-receiver] li', { hasText: '503' }).first().waitFor(WAIT)
    shown = true
    // Delivered on a retry: it leaves the table.
    await receiver.until(r => r.id === first.id && r.status === 200)
    await row.waitFor({ state: 'detached', ...WAIT })

    // Every call the page made is a route of the API's own document.
    const doc = await (await fetch(`${engine.url}/v1/openapi.json`)).json()
    const api = requests.map(r => new URL(r.url)).filter(u => u.origin === engine.url)
    assert.ok(api.length > 4, 'the page called the API')
    for (const u of api) {
      assert.ok(doc.paths[u.pathname], `${u.pathname} is in /v1/openapi.json`)
    }
  })
})

test('a new version uploaded is simulated over the archive; one that does not load says why', async () => {
  await withPage('simulate', engine.url, async page => {
    await page.locator('#app').waitFor({ state: 'visible', ...WAIT })
    await post(engine, { callId: 'call-simulated', method: 'vm.delete', type: 'pre', timestamp: Date.now(),
      userName: 'carol@example.org', params: { id: '0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d' } })
    await page.locator('#simulate-as option[value="deny"]').waitFor({ state: 'attached', ...WAIT })
    await page.selectOption('#simulate-as', 'deny')

    // The live version itself: the same version, nothing changes.
    await page.setInputFiles('#simulate-file', join(GUESTS, 'deny.wasm'))
    await page.click('#simulate-run')
    const report = page.locator('#simulate-report')
    await report.waitFor({ state: 'visible', ...WAIT })
    assert.match(await report.locator('.summary').innerText(), /deny .* against the live deny \(the same version\)/)
    assert.equal(await report.locator('tr[data-count="newly_denied"] td.num').innerText(), '0')
    assert.equal(await report.locator('tr[data-count="newly_allowed"] td.num').innerText(), '0')

    // A hook that cannot take the live hook's settings: why, and no report.
    await page.setInputFiles('#simulate-file', join(GUESTS, 'forward.wasm'))
    await page.click('#simulate-run')
    const message = page.locator('#simulate-message.error')
    await message.waitFor(WAIT)
    assert.match(await message.innerText(), /setup/)
    assert.equal(await report.isVisible(), false)
  })
})

test('a delivery that gets 410 is dead; retrying it once the receiver is fixed delivers it', async () => {
  let fixed = false
  receiver.answer = path => (path === '/archive' && !fixed ? 410 : 200)
  await withPage('dead-letter', engine.url, async page => {
    await page.locator('#app').waitFor({ state: 'visible', ...WAIT })
    await post(engine, postEvent('vm.delete', 'call-gone', { id: 'vm-2' }))
    const gone = await receiver.until(r => r.path === '/archive' && r.body.callId === 'call-gone')
    assert.equal(gone.status, 410)

    await page.selectOption('#delivery-state', 'dead')
    const row = page.locator(`#deliveries tr[data-id="${gone.id}"][data-state="dead"]`)
    await row.waitFor(WAIT)
    assert.match(await row.innerText(), /410/)
    await page.locator('#summary [data-count="dead"]', { hasText: /^[1-9]\d* dead$/ }).waitFor(WAIT)

    fixed = true
    await row.locator('button.retry').click()
    const delivered = await receiver.until(r => r.id === gone.id && r.status === 200)
    assert.equal(delivered.body.callId, 'call-gone')
    await row.waitFor({ state: 'detached', ...WAIT })
    await page.locator('#deliveries-message', { hasText: '1 dead letter queued again' }).waitFor(WAIT)

    // Kept as delivered: opened, it shows both attempts, with what the
    // receiver answered each time.
    await page.selectOption('#delivery-state', 'delivered')
    const kept = page.locator(`#deliveries tr[data-id="${gone.id}"][data-state="delivered"]`)
    await kept.waitFor(WAIT)
    await kept.locator('button.open').click()
    const dialog = page.locator(`#delivery-detail[open][data-id="${gone.id}"]`)
    await dialog.waitFor(WAIT)
    const summary = await dialog.locator('.summary').innerText()
    assert.match(summary, /delivered .* ago/)
    assert.doesNotMatch(summary, /object/)
    const attempts = dialog.locator('table.attempts tbody tr')
    assert.equal(await attempts.count(), 2)
    const first = attempts.nth(0)
    assert.equal(await first.getAttribute('data-outcome'), 'dead')
    assert.equal(await first.getAttribute('data-status'), '410')
    assert.match(await first.innerText(), /answered 410/)
    assert.match(await first.innerText(), /410 Gone/)
    const second = attempts.nth(1)
    assert.equal(await second.getAttribute('data-outcome'), 'delivered')
    assert.match(await second.innerText(), /answered 200/)
    assert.match(await dialog.locator('table.headers').innerText(), /content-type\s+application\/json/)
    await page.click('#detail-close')
    await dialog.waitFor({ state: 'detached', ...WAIT })
    await page.selectOption('#delivery-state', 'pending')
  })
})

test('dead letters are filtered by hook and receiver, and paged', async () => {
  receiver.answer = path => (path === '/archive' ? 410 : 200)
  const N = 55
  for (let i = 0; i < N; i++) {
    await post(engine, postEvent('vm.delete', `call-page-${i}`, { id: `vm-page-${i}` }))
  }
  await Promise.all(Array.from({ length: N }, (_, i) =>
    receiver.until(r => r.path === '/archive' && r.body.callId === `call-page-${i}`)))
  // What the API lists, in its order: the page must show the same, 50 at a time.
  const query = `${engine.url}/v1/deliveries?state=dead&hook=archive&limit=1000`
  let expected = []
  while (expected.length < N) {
    expected = (await (await fetch(query)).json()).map(d => d.id)
  }
  const receiverName = new URL(receiver.url).host
  await withPage('paging', engine.url, async page => {
    await page.locator('#app').waitFor({ state: 'visible', ...WAIT })
    await page.selectOption('#delivery-state', 'dead')
    await page.selectOption('#delivery-hook', 'archive')
    await page.selectOption('#delivery-receiver', receiverName)
    const rows = page.locator('#deliveries tbody tr')
    const ids = () => rows.evaluateAll(trs => trs.map(tr => tr.dataset.id))
    await page.locator(`#deliveries tbody tr[data-id="${expected[49]}"]`).waitFor(WAIT)
    assert.deepEqual(await ids(), expected.slice(0, 50))

    await page.click('#deliveries-next')
    await page.locator(`#deliveries tbody tr[data-id="${expected[50]}"]`).waitFor(WAIT)
    assert.deepEqual(await ids(), expected.slice(50))
    assert.equal(await page.locator('#deliveries-next').isDisabled(), true, 'the last page')

    await page.click('#deliveries-first')
    await page.locator(`#deliveries tbody tr[data-id="${expected[0]}"]`).waitFor(WAIT)
    // Another hook's dead letters: none.
    await page.selectOption('#delivery-hook', 'notify')
    await page.locator('#deliveries .empty').waitFor({ state: 'visible', ...WAIT })
    assert.equal(await rows.count(), 0)

    // Replayed, after a confirmation that gives the count first: each is
    // sent again under its own id.
    await page.selectOption('#delivery-hook', 'archive')
    await page.selectOption('#delivery-since', '3600000')
    await page.locator(`#deliveries tbody tr[data-id="${expected[0]}"]`).waitFor(WAIT)
    await page.click('#replay')
    const confirm = page.locator(`#replay-confirm[data-count="${N}"]`)
    await confirm.waitFor({ state: 'visible', ...WAIT })
    assert.match(await confirm.innerText(), new RegExp(`Send ${N} deliveries again \\(dead of archive to ${receiverName.replace(/[.]/g, '\\.')} queued since`))
    // Another filter chosen: the count no longer stands.
    await page.selectOption('#delivery-hook', 'notify')
    await page.locator('#replay-confirm').waitFor({ state: 'hidden', ...WAIT })
    await page.selectOption('#delivery-hook', 'archive')
    await page.click('#replay')
    await confirm.waitFor({ state: 'visible', ...WAIT })
    assert.equal(await page.locator('#replay-yes').innerText(), `Replay ${N}`)
    receiver.answer = () => 200
    await page.click('#replay-yes')
    await page.locator('#deliveries-message', { hasText: `${N} deliveries queued again` }).waitFor(WAIT)
    await Promise.all(expected.map(id => receiver.until(r => r.id === id && r.status === 200)))
    await page.locator('#deliveries .empty').waitFor({ state: 'visible', ...WAIT })
  })
})

test("the last hour plots a burst of 500 events in its minute, and a failing receiver's failures", async () => {
  const receiverName = new URL(receiver.url).host
  const series = async () => (await (await fetch(`${engine.url}/v1/series`)).json()).minutes
  const sum = (minutes, field, since = 0) =>
    minutes.filter(m => m.start_ms >= since).reduce((n, m) => n + m[field], 0)
  try {
    await withPage('plots', engine.url, async page => {
      await page.locator('#plot-traffic rect[data-minute]').first().waitFor({ state: 'attached', ...WAIT })
      assert.match(await page.locator('#plots-note').innerText(), /since the engine started at .*a restart starts them empty/)

      // The burst, 50 at a time; `notify` forwards each to the receiver.
      const since = Date.now() - (Date.now() % 60_000)
      const before = await series()
      const N = 500
      for (let i = 0; i < N; i += 50) {
        await Promise.all(Array.from({ length: 50 }, (_, j) =>
          post(engine, postEvent('vm.start', `call-burst-${i + j}`, { id: `vm-burst-${i + j}` }))))
      }
      await Promise.all(Array.from({ length: N }, (_, i) =>
        receiver.until(r => r.path === '/notify' && r.body.callId === `call-burst-${i}` && r.status === 200)))
      // Counted once each, in the minute they happened (or the two, if the
      // burst straddled a minute's end).
      let after = await series()
      assert.equal(sum(after, 'events') - sum(before, 'events'), N, 'each event counted once')
      while (sum(after, 'delivered') - sum(before, 'delivered') < N) after = await series()
      // The page plots what the API says, minute by minute.
      await page.waitForFunction(since => [...document.querySelectorAll('#plot-traffic rect[data-minute]')]
        .filter(r => Number(r.dataset.minute) >= since)
        .reduce((n, r) => n + Number(r.dataset.delivered), 0) >= 500, since, WAIT)
      const shown = await page.evaluate(since => [...document.querySelectorAll('#plot-traffic rect[data-minute]')]
        .filter(r => Number(r.dataset.minute) >= since)
        .map(r => [Number(r.dataset.minute), Number(r.dataset.events)]), since)
      for (const [minute, events] of shown) {
        const m = (await series()).find(m => m.start_ms === minute)
        assert.ok(m && events <= m.events && events >= 0, `minute ${minute}: ${events} shown, ${m?.events} counted`)
      }
      assert.ok(shown.reduce((n, [, e]) => n + e, 0) >= N, 'the burst is plotted')

      // Its values are readable on hover, and stay while the page polls.
      const current = page.locator('#plot-traffic rect[data-minute]').last()
      const title = await current.locator('title').textContent()
      assert.match(title, /: \d[\d.]* events\/s \(\d+\), \d[\d.]* deliveries\/s \(\d+\)$/)
      assert.doesNotMatch(title, /NaN|Infinity/)
      await current.hover()
      const readout = page.locator('#plot-traffic .readout')
      await readout.filter({ hasText: /events\/s/ }).waitFor(WAIT)
      const status = await page.locator('#status').innerText()
      await page.waitForFunction(before => document.querySelector('#status').textContent !== before, status, WAIT)
      assert.match(await readout.innerText(), /events\/s \(\d+\)/, 'the readout outlives a redraw')
      await page.locator('#plot-hooks .legend [data-name="notify"]').waitFor(WAIT)
      await page.locator(`#plot-latency path[data-line="${receiverName}"]`).first().waitFor({ state: 'attached', ...WAIT })

      // A receiver failing for good: its failures and dead letters show in
      // its plot, by name.
      receiver.answer = path => (path === '/archive' ? 410 : 200)
      for (let i = 0; i < 3; i++) await post(engine, postEvent('vm.delete', `call-fail-${i}`, { id: `vm-fail-${i}` }))
      await page.locator(`#plot-failures path[data-line="${receiverName}"]`).first().waitFor({ state: 'attached', ...WAIT })
      await page.locator(`#plot-failures .legend [data-name="${receiverName}"]`).waitFor(WAIT)
      await page.waitForFunction(() => [...document.querySelectorAll('#plot-failures rect[data-minute]')]
        .reduce((n, r) => n + Number(r.dataset.dead), 0) >= 3, null, WAIT)
      const tips = await page.locator('#plot-failures rect[data-minute] title').allTextContents()
      const name = receiverName.replace(/[.]/g, '\\.')
      assert.ok(tips.some(t => new RegExp(`${name}: [1-9]\\d* failed, [1-9]\\d* dead`).test(t)), tips.join('\n'))
    })
  } finally {
    receiver.answer = () => 200
  }
})

test('with --token, the page shows nothing until the token is given', async () => {
  const guarded = await startEngine(folder, ['--token', TOKEN])
  try {
    await withPage('token', guarded.url, async (page, requests) => {
      await page.locator('#token-form').waitFor({ state: 'visible', ...WAIT })
      assert.equal(await page.locator('#app').isVisible(), false)
      assert.equal(await page.locator('#hooks tbody tr').count(), 0, 'no hook shown')

      await page.fill('#token-input', 'a-wrong-token-but-long-enough')
      await page.click('#token-form button[type="submit"]')
      await page.locator('#token-error', { hasText: 'refused' }).waitFor(WAIT)
      assert.equal(await page.locator('#hooks tbody tr').count(), 0, 'still no hook shown')

      await page.fill('#token-input', TOKEN)
      await page.click('#token-form button[type="submit"]')
      await page.locator('#hooks tr[data-hook="notify"]').waitFor(WAIT)
      assert.equal(await page.locator('#token-form').isVisible(), false)
      const sent = requests.filter(r => new URL(r.url).pathname === '/v1/hooks')
      assert.ok(sent.length >= 3, 'asked without, with the wrong and with the right token')
    })
  } finally {
    await guarded.stop()
  }
})

test('on a hooks bucket, the hooks card shows the set serving, its signer, and a set refused', async () => {
  const nats = required('NATS_URL')
  const dir = mkdtempSync(join(tmpdir(), 'wasmhooks-console-bucket-'))
  const run = (...args) => execFileSync(BIN, args, { cwd: dir, env: { PATH: process.env.PATH, HOME: dir }, encoding: 'utf8' })
  const set = name => {
    const hooks = join(dir, name)
    mkdirSync(hooks)
    copyFileSync(join(GUESTS, 'deny.wasm'), join(hooks, 'deny.wasm'))
    writeFileSync(join(hooks, 'deny.toml'), '[settings]\nprotected = []\n')
    return hooks
  }
  run('keygen', 'author')
  const good = set('good')
  run('sign', '--key', 'author.key', join(good, 'deny.wasm'))
  const config = join(dir, 'engine.toml')
  writeFileSync(config, `[trust]\nkeys = ["file:${join(dir, 'author.pub')}"]\n`)
  run('hooks', 'push', good, '--bucket', nats, '--config', config)
  const unsigned = set('unsigned')
  run('hooks', 'push', unsigned, '--bucket', nats, '--no-check')
  // The engine starts on set 2, unsigned: refused, no set serving yet.
  const engine = await serve(BIN, ['--hooks', nats, '--state', join(dir, 'state'), '--config', config])
  try {
    await withPage('bucket', engine.url, async page => {
      const line = page.locator('#hook-set')
      await line.locator('[data-field="set-refused"]', { hasText: 'set 2 refused here' }).waitFor(WAIT)
      assert.match(await line.innerText(), /no set of the hooks bucket yet/)
      run('hooks', 'push', good, '--bucket', nats, '--config', config)
      await line.locator('[data-field="set-version"]', { hasText: '3' }).waitFor(WAIT)
      const signed = page.locator('#hooks tr[data-hook="deny"] [data-field="signed-by"]')
      assert.match(await signed.innerText(), /^signed by [0-9a-f]{16}$/)
    })
  } finally {
    await engine.stop()
    rmSync(dir, { recursive: true, force: true })
  }
})
