// `wasmhooks serve` as a child process, for the console's tests and its
// scale measurement: resolves once it says where it listens.
import { spawn } from 'node:child_process'
import { once } from 'node:events'

/** Runs `bin serve ...args`; returns its URL, its log so far, and `stop()`. */
export async function serve(bin, args, env = {}) {
  const child = spawn(bin, ['serve', '--listen', '127.0.0.1:0', ...args], {
    env: { ...process.env, WASMHOOKS_LOG: 'info', NO_COLOR: '1', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let log = ''
  const url = await new Promise((resolve, reject) => {
    child.stderr.setEncoding('utf8')
    child.stderr.on('data', chunk => {
      log += chunk
      const found = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(log)
      if (found) resolve(found[1])
    })
    child.on('exit', code => reject(new Error(`wasmhooks exited (${code}) before listening:\n${log}`)))
  })
  let stopping = false
  child.on('exit', (code, signal) => {
    // An engine that dies under a test: say how, with its log.
    if (!stopping) console.error(`wasmhooks exited unexpectedly (${code ?? signal}); its log:\n${log}`)
  })
  return {
    url,
    log: () => log,
    /** SIGTERM (it finishes what is in flight), and waits for the exit. */
    async stop() {
      stopping = true
      if (child.exitCode === null && child.signalCode === null) {
        const exited = once(child, 'exit')
        child.kill('SIGTERM')
        await exited
      }
    },
  }
}
