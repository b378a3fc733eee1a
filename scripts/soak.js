'use strict'
// Soak: many start/stop cycles of a real backend in one process, mixed with outside crashes (SIGKILL),
// stops during start, and parallel managers. At the end nothing may be left: no process, no record, no
// leaked file descriptor (±2), and growth of anonymous memory (RssAnon: heaps, allocator arenas, stacks — where a
// leak lands) under 3 MiB. Total RSS is reported beside it but not limited: it also counts pages of mapped code
// (the node binary's, the addon's) that the process touches for the first time, which traced runs show as a
// one-time step of ~4.5 MiB of the node binary once V8's optimizing compiler starts, ~150 cycles in.
// Then `--from-exit` cycles (200 by default): the backend is SIGKILLed from outside and started again from the
// `exit` handler (restart off), which must give a new backend every time.
// Usage: node --expose-gc scripts/soak.js [--cycles N] [--warmup N] [--from-exit N] [--json]   (SOAK_TRACE=1: RSS and fds every 50 cycles)
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { parseArgs } = require('node:util')
const { once } = require('node:events')
const { ProcessManager } = require('..')

const { values } = parseArgs({ options: { cycles: { type: 'string', default: '500' }, warmup: { type: 'string', default: '100' }, json: { type: 'boolean' }, restarts: { type: 'boolean' }, 'from-exit': { type: 'string', default: '200' } } })
const CYCLES = Number(values.cycles)
const FIXTURE = path.join(__dirname, '..', '__test__', 'fixtures', 'backend.js')
const LIMITS = { fdDelta: 2, anonGrowthMiB: 3 }
const WARMUP = Number(values.warmup)
const FROM_EXIT = Number(values['from-exit'])

const openFds = () => fs.readdirSync('/proc/self/fd').length
const rssMiB = () => {
  global.gc?.()
  return process.memoryUsage().rss / 2 ** 20
}
/** One field of /proc/self/status in MiB (RssAnon, RssFile, …). */
const statusMiB = (key) => Number(fs.readFileSync('/proc/self/status', 'utf8').match(new RegExp(`${key}:\\s+(\\d+)`))[1]) / 1024
/** RSS by kind: anonymous memory, mapped files (code of node and the addon), shared memory. */
const rssParts = () => ['RssAnon', 'RssFile', 'RssShmem'].map((k) => `${k} ${statusMiB(k).toFixed(1)}`).join(', ')
const { isAlive } = require('../__test__/procs.js')
/** Deliberate jitter, so stops land in different phases of a start. */
const jitter = (maxMs) => new Promise((r) => setTimeout(r, Math.floor(Math.random() * maxMs)))

async function main() {
  // SOAK_STATE_DIR: a folder the caller removes, even when it has to kill the soak (the test does).
  const stateDir = process.env.SOAK_STATE_DIR ?? fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-soak-'))
  const pids = new Set()
  const counts = { cycles: 0, starts: 0, stops: 0, crashes: 0, stopsDuringStart: 0, parallel: 0, restarts: 0, startsFromExit: 0, startsFromExitFailed: 0 }
  const manager = (name, env = {}, options = {}) => {
    const pm = new ProcessManager({ name, command: process.execPath, args: [FIXTURE], port: 35000, portRange: 200, stateDir, logger: false, stopTimeoutMs: 2000, env, ...options })
    pm.on('ready', (b) => pids.add(b.pid))
    pm.on('exit', (e) => pids.add(e.pid))
    return pm
  }
  const main = manager('soak')
  const slow = manager('soak-slow', { LISTEN_DELAY_MS: '100' })
  const parallel = [0, 1, 2].map((i) => manager(`soak-parallel-${i}`))
  const supervised = manager('soak-supervised', {}, { restart: { initialDelayMs: 0, maxRestarts: 1000 } })
  const revived = manager('soak-from-exit')

  /** Killed from outside, restarted by the restart policy, then stopped. */
  const history = []
  for (const kind of ['ready', 'exit', 'restart', 'failed']) supervised.on(kind, (e) => history.push(`${kind} ${e.pid ?? e.error}`))
  async function restartCycle() {
    history.length = 0
    const b = await supervised.startBackend(stateDir)
    history.push(`started ${b.pid}`)
    const back = once(supervised, 'ready')
    process.kill(b.pid, 'SIGKILL')
    const [again] = await back
    if (again.pid === b.pid || again.port !== b.port) throw new Error(`not restarted on its port: ${b.pid}:${b.port} -> ${again.pid}:${again.port}; ${history.join(' | ')}`)
    await supervised.stopBackend()
    counts.restarts++
  }

  /** Killed from outside and started again by the app from its `exit` handler (restart off). */
  let lastFromExitError = null
  async function startFromExit(b) {
    const again = new Promise((resolve) => {
      revived.once('exit', () => revived.startBackend(stateDir).then(resolve, (err) => resolve(err)))
    })
    process.kill(b.pid, 'SIGKILL')
    const next = await again
    if (next instanceof Error || next.pid === b.pid) {
      counts.startsFromExitFailed++
      lastFromExitError = next instanceof Error ? `${next.code}: ${next.message}` : `the killed backend ${b.pid} was returned`
      return revived.startBackend(stateDir)
    }
    counts.startsFromExit++
    return next
  }

  async function cycle(i) {
    if (values.restarts) {
      await restartCycle()
      counts.starts++
      counts.cycles++
      return
    }
    switch (i % 10) {
      case 4:
        await restartCycle()
        break
      case 3: { // the backend is killed from outside
        const b = await main.startBackend(stateDir)
        const exited = once(main, 'exit')
        process.kill(b.pid, 'SIGKILL')
        const [event] = await exited
        if (event.expected) throw new Error('a crash was reported as expected')
        counts.crashes++
        break
      }
      case 6: { // stop while starting
        const starting = slow.startBackend(stateDir).catch((e) => e)
        await jitter(120)
        await slow.stopBackend()
        const result = await starting
        if (result instanceof Error && result.code !== 'ERR_BACKEND_EXITED') throw result
        if (!(result instanceof Error)) await slow.stopBackend() // it became ready first
        counts.stopsDuringStart++
        break
      }
      case 9: { // several managers at once
        await Promise.all(parallel.map((pm) => pm.startBackend(stateDir)))
        await Promise.all(parallel.map((pm) => pm.stopBackend()))
        counts.parallel++
        break
      }
      default:
        await main.startBackend(stateDir)
        await main.stopBackend()
        counts.stops++
    }
    counts.starts++
    counts.cycles++
  }

  // Warm up first. Over its first ~60 spawns a process's memory grows once and then stays flat (the
  // allocator's and runtime's pools; Node's own child_process shows +4 MiB over 150 spawns too), and one
  // descriptor is opened for good: the baseline is taken after that, so the figures show real leaks only.
  for (let i = 0; i < WARMUP; i++) await cycle(i)
  // The exit-handler path warms up too (its manager's first allocations are not a leak).
  if (FROM_EXIT > 0) {
    let warm = await revived.startBackend(stateDir)
    for (let i = 0; i < Math.min(20, FROM_EXIT); i++) warm = await startFromExit(warm)
    await revived.stopBackend()
    counts.startsFromExit = 0
  }
  const fdsBefore = openFds()
  const rssBefore = rssMiB()
  const anonBefore = statusMiB('RssAnon')
  const started = Date.now()
  for (let i = 0; i < CYCLES; i++) {
    await cycle(i)
    if (process.env.SOAK_TRACE && i % 50 === 49) console.error(`after ${i + 1} cycles: rss ${rssMiB().toFixed(1)} MiB (${rssParts()}), heapTotal ${(process.memoryUsage().heapTotal / 2 ** 20).toFixed(1)}, heapUsed ${(process.memoryUsage().heapUsed / 2 ** 20).toFixed(1)}, fds ${openFds()}, threads ${fs.readdirSync('/proc/self/task').length}`)
  }
  let fromExit = FROM_EXIT > 0 ? await revived.startBackend(stateDir) : null
  for (let i = 0; i < FROM_EXIT; i++) fromExit = await startFromExit(fromExit)
  if (fromExit) await revived.stopBackend()
  const seconds = (Date.now() - started) / 1000
  const fdsAfter = openFds()
  const rssAfter = rssMiB()
  const anonAfter = statusMiB('RssAnon')
  const leftProcesses = [...pids].filter(isAlive)
  const leftRecords = fs.readdirSync(stateDir).filter((f) => f.endsWith('.json'))
  fs.rmSync(stateDir, { recursive: true, force: true })

  const figures = {
    ...counts,
    warmupCycles: WARMUP,
    seconds: Number(seconds.toFixed(1)),
    processesStarted: pids.size,
    processesLeft: leftProcesses.length,
    recordsLeft: leftRecords.length,
    fdsBefore,
    fdsAfter,
    rssBeforeMiB: Number(rssBefore.toFixed(1)),
    rssAfterMiB: Number(rssAfter.toFixed(1)),
    rssGrowthMiB: Number((rssAfter - rssBefore).toFixed(2)),
    anonBeforeMiB: Number(anonBefore.toFixed(1)),
    anonAfterMiB: Number(anonAfter.toFixed(1)),
    anonGrowthMiB: Number((anonAfter - anonBefore).toFixed(2)),
    ...(lastFromExitError ? { lastFromExitError } : {}),
  }
  const ok = counts.startsFromExitFailed === 0 && counts.startsFromExit === FROM_EXIT && leftProcesses.length === 0 && leftRecords.length === 0 && Math.abs(fdsAfter - fdsBefore) <= LIMITS.fdDelta && anonAfter - anonBefore < LIMITS.anonGrowthMiB
  for (const pid of leftProcesses) process.kill(pid, 'SIGKILL')
  if (values.json) console.log(JSON.stringify({ ok, figures, limits: LIMITS }))
  else {
    for (const [k, v] of Object.entries(figures)) console.log(`${k.padEnd(18)} ${v}`)
    console.log(ok ? 'soak passed' : 'soak FAILED')
  }
  process.exitCode = ok ? 0 : 1
}

main().catch((err) => {
  console.error(err)
  process.exitCode = 1
})
