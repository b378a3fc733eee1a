'use strict'
// One readiness contender in a process of its own (forked by readiness.js), so that its CPU time covers its
// own waiting only — for ours that includes the addon's native threads. On each `wait` message it waits for
// the port, then answers with the moment it saw the backend ready and the CPU it spent meanwhile.
// Usage: fork('bench/waiter.js', [kind]) with kind one of KINDS.
const http = require('node:http')
const path = require('node:path')
const { ProcessManager } = require('..')
const { now, sleep } = require('./lib')

const BACKEND = path.join(__dirname, 'fast-backend.py')
const SIGNAL_BACKEND = path.join(__dirname, 'signal-backend.py')
const WAIT_LIMIT_MS = 30000

/** The original hand-written manager: one GET, then a fixed 1000 ms between retries. */
async function originalWait(port, maxRetries = 30) {
  const ok = () => new Promise((resolve) => {
    http.get({ host: '127.0.0.1', port, path: '/health', agent: false, timeout: 1000 }, (res) => {
      res.resume()
      resolve(res.statusCode === 200)
    }).on('error', () => resolve(false))
  })
  for (let i = 0; i < maxRetries; i++) {
    if (await ok()) return true
    await sleep(1000)
  }
  return false
}

/** wait-on's fastest sane settings besides the interval: no initial delay, a bounded probe, no proxy lookup. */
const waitOnFast = (interval) => ({ interval, delay: 0, httpTimeout: 1000, proxy: false })

// The manager of the `ours-start` kind: made and given its port by `prepare`, running its backend between
// `wait` and `stop`.
let started = null

// The starters of bench/signals.js: the backend's signal and the `ready` (and `listen`) that waits for it.
const SIGNALS = {
  notify: { ready: 'notify' },
  stdout: { ready: { stdout: '^ready now$' } },
  fd: { ready: 'http', listen: 'fd' },
}

/**
 * Makes the manager and reserves `port` for it (for it alone): false when another process holds it. With
 * `signal` (bench/signals.js) its backend is bench/signal-backend.py, else bench/fast-backend.py.
 */
async function prepare({ port, dir, delay, mark, signal }) {
  started = new ProcessManager(signal ? {
    name: `bench-${signal}`, command: 'python3', args: [SIGNAL_BACKEND], port, portRange: 0, stateDir: dir, logger: false, healthPath: '/',
    env: { SIGNAL: signal, DELAY_MS: String(delay), MARK_FILE: mark }, ...SIGNALS[signal],
  } : {
    name: 'bench-ready', command: 'python3', args: [BACKEND], port, portRange: 0, stateDir: dir, logger: false, healthPath: '/',
    env: { LISTEN_DELAY_MS: String(delay), LISTEN_MARK_FILE: mark },
  })
  try {
    return (await started.findAvailablePort(port)) === port
  } catch {
    started = null
    return false
  }
}

const KINDS = {
  'ours-start': async ({ dir }) => {
    await started.startBackend(dir)
    return true
  },
  'ours-wait': ({ port, dir }) => new ProcessManager({ name: 'bench-observer', port, stateDir: dir, logger: false }).waitForBackendReady(port, WAIT_LIMIT_MS / 1000, 1000),
  'wait-on-defaults': ({ port }) => waitOn({ resources: [`http-get://127.0.0.1:${port}/health`], timeout: WAIT_LIMIT_MS }).then(() => true),
  'wait-on-10': ({ port }) => waitOn({ resources: [`http-get://127.0.0.1:${port}/health`], timeout: WAIT_LIMIT_MS, ...waitOnFast(10) }).then(() => true),
  'wait-on-2': ({ port }) => waitOn({ resources: [`http-get://127.0.0.1:${port}/health`], timeout: WAIT_LIMIT_MS, ...waitOnFast(2) }).then(() => true),
  original: ({ port }) => originalWait(port),
}

const kind = process.argv[2]
if (!KINDS[kind]) throw new Error(`unknown waiter kind ${kind}; kinds: ${Object.keys(KINDS).join(', ')}`)
const waitOn = kind.startsWith('wait-on') ? require('wait-on') : null

async function stop() {
  const pm = started
  started = null
  if (pm) await pm.stopBackend()
}

process.on('message', async (msg) => {
  if (msg.cmd === 'wait') {
    const cpu0 = process.cpuUsage()
    let ok = false
    let error = null
    try {
      ok = await KINDS[kind](msg)
    } catch (err) {
      error = err.message
    }
    const at = now()
    const cpu = process.cpuUsage(cpu0)
    process.send({ id: msg.id, ok, at, cpuMs: (cpu.user + cpu.system) / 1000, error })
  } else if (msg.cmd === 'prepare') {
    process.send({ id: msg.id, ok: await prepare(msg) })
  } else if (msg.cmd === 'stop') {
    await stop()
    process.send({ id: msg.id, stopped: true })
  }
})
// The parent going away (or closing the channel) ends this process, after stopping a backend it started.
process.on('disconnect', () => stop().finally(() => process.exit(0)))
process.send({ ready: true })
