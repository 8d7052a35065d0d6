// How the console copes at scale: 1,000 hooks and 10,000 dead letters.
// A measurement, not a test (figures in BENCHMARKS.md); run by hand:
//
//   cargo build --release && cargo build --release --target wasm32-wasip2 \
//     --target-dir target/wasm --manifest-path guest-examples/rust/Cargo.toml
//   WASMHOOKS_BIN=target/release/wasmhooks \
//     WASMHOOKS_GUESTS=target/wasm/wasm32-wasip2/release node tests/console/scale.mjs
//
// It serves 1,000 copies of the `forward` hook, each subscribed to
// `vm.start` and sending to a receiver that answers 410, so 10 events make
// 10,000 dead letters; then it opens the console in headless Chromium and
// times what an operator waits for: the first full render, a poll round,
// the next page of dead letters, and the API calls behind them.
import { createServer } from 'node:http'
import { once } from 'node:events'
import { copyFileSync, mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium } from 'playwright-core'
import { serve } from './serve.mjs'

const HOOKS = Number(process.env.HOOKS || 1000)
const EVENTS = Number(process.env.EVENTS || 10)
const LAST = `hook${String(HOOKS - 1).padStart(4, '0')}`
const BIN = process.env.WASMHOOKS_BIN
const GUESTS = process.env.WASMHOOKS_GUESTS
if (!BIN || !GUESTS) throw new Error('set WASMHOOKS_BIN and WASMHOOKS_GUESTS (see the top of this file)')

const receiver = createServer((request, response) => { request.resume(); request.on('end', () => response.writeHead(410).end()) })
receiver.listen(0, '127.0.0.1')
await once(receiver, 'listening')
const receiverUrl = `http://127.0.0.1:${receiver.address().port}`

const dir = mkdtempSync(join(tmpdir(), 'wasmhooks-scale-'))
const hooks = join(dir, 'hooks')
mkdirSync(hooks)
for (let i = 0; i < HOOKS; i++) {
  const name = `hook${String(i).padStart(4, '0')}`
  copyFileSync(join(GUESTS, 'forward.wasm'), join(hooks, `${name}.wasm`))
  writeFileSync(join(hooks, `${name}.toml`),
    `allow_hosts = ["127.0.0.1"]\n[settings]\nurl = "${receiverUrl}/${name}"\nmethods = ["vm.start"]\nphases = ["post"]\n`)
}
const config = join(dir, 'engine.toml')
writeFileSync(config, 'post_inline_ms = 10000\n')
const engine = await serve(BIN, ['--hooks', hooks, '--state', join(dir, 'state'), '--cache', join(dir, 'cache'),
  '--config', config], { WASMHOOKS_LOG: 'warn,wasmhooks=info' })
const url = engine.url

const timed = async (what, f) => {
  const start = performance.now()
  const result = await f()
  return { what, ms: performance.now() - start, result }
}
const rows = []
const note = (what, ms, extra = '') => rows.push(`${what.padEnd(56)} ${ms.toFixed(1).padStart(8)} ms ${extra}`)

try {
  for (let i = 0; i < EVENTS; i++) {
    const response = await fetch(`${url}/v1/events`, {
      method: 'POST',
      body: JSON.stringify({ callId: `scale-${i}`, method: 'vm.start', type: 'post', timestamp: Date.now(), duration: 1, result: true }),
    })
    if (response.status !== 202) throw new Error(`event ${i}: ${response.status} ${await response.text()}`)
  }
  const want = HOOKS * EVENTS
  for (;;) {
    const receivers = await (await fetch(`${url}/v1/receivers`)).json()
    const dead = receivers.reduce((n, r) => n + r.dead, 0)
    if (dead >= want) break
    await new Promise(resolve => setTimeout(resolve, 500)) // polling an outside process
  }

  for (const path of ['/v1/hooks', '/v1/receivers', '/v1/activity?limit=50', '/v1/deliveries?state=dead&limit=50',
    `/v1/deliveries?state=dead&limit=50&hook=${LAST}`, '/v1/deliveries?state=dead&limit=50&after=9999999999999:msg_']) {
    const samples = []
    let bytes = 0
    for (let i = 0; i < 20; i++) {
      const t = await timed(path, async () => (await fetch(url + path)).text())
      samples.push(t.ms)
      bytes = t.result.length
    }
    samples.sort((a, b) => a - b)
    note(`GET ${path} (median of 20)`, samples[10], `${(bytes / 1024).toFixed(0)} KiB`)
  }

  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  })
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } })
  const first = await timed('first render', async () => {
    await page.goto(url)
    await page.locator('#hooks tbody tr').first().waitFor({ timeout: 60_000 })
    await page.locator('#activity tbody tr').first().waitFor({ timeout: 60_000 })
  })
  note(`page load to hooks and activity shown (${HOOKS} hooks)`, first.ms)
  await page.selectOption('#delivery-state', 'dead')
  const dead = await timed('dead letters', () => page.locator('#deliveries tbody tr[data-state="dead"]').first().waitFor({ timeout: 60_000 }))
  note('switch to dead letters, first page shown (50 rows)', dead.ms)
  const firstId = await page.locator('#deliveries tbody tr').first().getAttribute('data-id')
  const next = await timed('next page', async () => {
    await page.click('#deliveries-next')
    await page.waitForFunction(id => document.querySelector('#deliveries tbody tr')?.dataset.id !== id, firstId, { timeout: 60_000 })
  })
  note('next page of dead letters shown', next.ms)
  // One poll round, as the page does it every 2 s, with the long tasks it causes.
  const poll = await page.evaluate(async () => {
    const longest = []
    const observer = new PerformanceObserver(list => longest.push(...list.getEntries().map(e => e.duration)))
    try { observer.observe({ type: 'longtask', buffered: false }) } catch {}
    const start = performance.now()
    await Promise.all(['/v1/hooks', '/v1/receivers', '/v1/activity?limit=50', '/v1/deliveries?state=dead&limit=50']
      .map(p => fetch(p).then(r => r.json())))
    const fetched = performance.now() - start
    observer.disconnect()
    return { fetched, longest: Math.max(0, ...longest) }
  })
  note('a poll round: the four API calls, from the page', poll.fetched)
  const filter = await timed('filter', async () => {
    await page.fill('#hook-search', LAST)
    await page.locator(`#hooks tbody tr[data-hook="${LAST}"]`).waitFor({ timeout: 60_000 })
  })
  note('type a hook filter, table shows the match', filter.ms)
  const heap = await page.evaluate(() => performance.memory?.usedJSHeapSize ?? 0)
  note('page JS heap after all of the above', 0, `${(heap / 1048576).toFixed(1)} MiB`)
  await browser.close()
  console.log(`console at scale: ${HOOKS} hooks, ${HOOKS * EVENTS} dead letters (${BIN})`)
  for (const row of rows) console.log(row)
} finally {
  await engine.stop()
  receiver.close()
  rmSync(dir, { recursive: true, force: true })
}
