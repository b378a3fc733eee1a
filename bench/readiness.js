'use strict'
// Readiness: a backend that starts listening after a delay and records that moment; every contender runs
// in a process of its own (bench/waiter.js) and we measure how long after the listen it reports ready. Each
// round is one contender alone with the backend: ours `startBackend` starts it itself; for every other
// contender this process starts it (a plain spawn). Alone, so that no contender's polling takes the 2 cores
// from another's (wait-on at interval 2 spends ~half a core) and no other waiter's probe is queued at the
// single-threaded backend before its own. Lag runs use a random 100–2000 ms listen delay; CPU runs a fixed
// 2000 ms one, and report the CPU time (user + system) each contender's process spent from the start of its
// wait to "ready" (the backend's own CPU is in the backend's process, not counted).
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { fork, spawn, spawnSync } = require('node:child_process')
const { once } = require('node:events')
const { summary, freeRun, isOurs } = require('./lib')

const WAITER = path.join(__dirname, 'waiter.js')
const BACKEND = path.join(__dirname, 'fast-backend.py')
const STARTER = 'ours-start'
// Row name → waiter kind. The reference row (same work as the peers: only waiting) comes first.
const CONTENDERS = {
  'backend-process-manager waitForBackendReady': 'ours-wait',
  'backend-process-manager startBackend (spawns it too)': STARTER,
  'wait-on (defaults: interval 250)': 'wait-on-defaults',
  'wait-on (interval 10, delay 0, httpTimeout 1000, proxy off)': 'wait-on-10',
  'wait-on (interval 2, delay 0, httpTimeout 1000, proxy off)': 'wait-on-2',
  'original manager (1000 ms retries)': 'original',
}
const CPU_DELAY_MS = 2000
const REPLY_LIMIT_MS = 40000
// The machine's floor for any waiter that looks this often: a process that does nothing but sleep this long
// at a time, for as long as a CPU run waits (ours looks at the port every 1 ms).
const FLOOR_SLEEP_MS = 1
const FLOOR = `import time
start = time.monotonic(); cpu = time.process_time()
while time.monotonic() - start < ${CPU_DELAY_MS / 1000}:
    time.sleep(${FLOOR_SLEEP_MS / 1000})
print((time.process_time() - cpu) * 1000)`

/** CPU ms that a python3 process spends sleeping FLOOR_SLEEP_MS at a time for CPU_DELAY_MS; NaN without python3. */
function floorCpuMs() {
  const run = spawnSync('python3', ['-c', FLOOR], { encoding: 'utf8' })
  return run.status === 0 ? Number(run.stdout.trim()) : NaN
}
/** A forked waiter with a request/answer helper; resolves once it has loaded its library. */
function startWaiter(kind) {
  const child = fork(WAITER, [kind], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const pending = new Map()
  let nextId = 0
  child.on('message', (msg) => {
    const p = pending.get(msg.id)
    if (p) {
      pending.delete(msg.id)
      clearTimeout(p.timer)
      p.resolve(msg)
    }
  })
  child.on('exit', (code, signal) => {
    for (const p of pending.values()) p.reject(new Error(`waiter ${kind} exited (${code ?? signal})`))
    pending.clear()
  })
  const request = (msg) => new Promise((resolve, reject) => {
    const id = nextId++
    const timer = setTimeout(() => {
      pending.delete(id)
      reject(new Error(`waiter ${kind} did not answer ${msg.cmd} within ${REPLY_LIMIT_MS} ms`))
    }, REPLY_LIMIT_MS)
    pending.set(id, { resolve, reject, timer })
    child.send({ ...msg, id })
  })
  const ready = new Promise((resolve, reject) => {
    child.once('message', (msg) => (msg.ready ? resolve() : reject(new Error(`waiter ${kind}: unexpected ${JSON.stringify(msg)}`))))
    child.once('error', reject)
    child.once('exit', (code) => reject(new Error(`waiter ${kind} exited at start (${code})`)))
  })
  const close = () => new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve()
    child.once('exit', resolve)
    child.disconnect()
  })
  return { kind, child, request, ready, close }
}

/** The backend of a round with a contender that only waits: listens on `port` after `delay` ms. */
function spawnBackend(port, delay, mark) {
  const child = spawn('python3', [BACKEND], {
    stdio: 'ignore',
    env: { ...process.env, HOST: '127.0.0.1', PORT: String(port), LISTEN_DELAY_MS: String(delay), LISTEN_MARK_FILE: mark },
  })
  const exited = once(child, 'exit')
  return async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    await exited
  }
}

/**
 * One backend and one contender waiting for it: the contender's lag and CPU. Ours `startBackend` starts the
 * backend itself, on a port reserved for its manager beforehand (other processes of this user may hold
 * reservations too); for the others this process spawns it.
 */
async function oneRun(waiter, dir, from, delay, tag) {
  const mark = path.join(dir, `listen-${tag}`)
  let port = from
  let stop
  if (waiter.kind === STARTER) {
    for (;;) {
      port = await freeRun(1, port)
      if ((await waiter.request({ cmd: 'prepare', port, dir, delay, mark })).ok) break
      port++
    }
    stop = () => waiter.request({ cmd: 'stop' })
  } else {
    port = await freeRun(1, port)
    stop = spawnBackend(port, delay, mark)
  }
  let answer
  try {
    answer = await waiter.request({ cmd: 'wait', port, dir, delay, mark })
  } finally {
    await stop()
  }
  // No mark: the backend never listened, and the contender has reported its failure.
  const listenedAt = fs.existsSync(mark) ? Number(fs.readFileSync(mark, 'utf8').trim()) : NaN
  return { [waiter.kind]: { ...answer, lag: answer.at - listenedAt } }
}

/** `only`: row names to run; all by default. */
module.exports = async function readiness({ runs, only }) {
  const contenders = Object.fromEntries(Object.entries(CONTENDERS).filter(([name]) => !only || only.includes(name)))
  const kinds = Object.values(contenders)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-bench-'))
  const waiters = kinds.map(startWaiter)
  const lags = Object.fromEntries(kinds.map((k) => [k, []]))
  const cpus = Object.fromEntries(kinds.map((k) => [k, []]))
  const failures = Object.fromEntries(kinds.map((k) => [k, []]))
  const cpuRuns = Math.max(3, Math.round(runs / 3))
  const floors = []
  const record = (result, into) => {
    for (const [kind, a] of Object.entries(result)) {
      if (!a.ok) failures[kind].push(a.error ?? 'not ready')
      else into[kind].push(a)
    }
  }
  try {
    await Promise.all(waiters.map((w) => w.ready))
    // Below Linux's ephemeral range (32768+): at interval 2 wait-on opens hundreds of client sockets a
    // second, and one of them bound to the chosen port made that round's start fail (port in use).
    const nextPort = (run) => 20000 + (run % 100) * 97
    let round = 0
    // Warm-up: every process loads its code paths once before anything counts.
    for (const w of waiters) await oneRun(w, dir, nextPort(++round), 100, `warmup-${round}`)
    for (let run = 0; run < runs; run++) {
      const delay = 100 + Math.floor(Math.random() * 1900)
      for (const w of waiters) record(await oneRun(w, dir, nextPort(++round), delay, `lag-${round}`), lags)
    }
    for (let run = 0; run < cpuRuns; run++) {
      for (const w of waiters) record(await oneRun(w, dir, nextPort(++round), CPU_DELAY_MS, `cpu-${round}`), cpus)
    }
    floors.push(...Array.from({ length: 3 }, floorCpuMs))
  } finally {
    await Promise.all(waiters.map((w) => w.close()))
    fs.rmSync(dir, { recursive: true, force: true })
  }
  const rows = Object.entries(contenders).map(([name, kind]) => {
    const lag = summary(lags[kind].map((a) => a.lag))
    const cpu = summary(cpus[kind].map((a) => a.cpuMs))
    const early = lags[kind].filter((a) => a.lag < 0).length
    const notes = []
    if (failures[kind].length) notes.push(`${failures[kind].length} wait(s) failed: ${[...new Set(failures[kind])].join('; ')}`)
    if (early) notes.push(`${early} "ready" before the listen (clock skew between processes?)`)
    return { name, ...lag, cpuMs: cpu.median, cpuP95Ms: cpu.p95, correct: failures[kind].length === 0, note: notes.join('; ') || undefined }
  })
  const pct = (ms) => `${((ms / CPU_DELAY_MS) * 100).toFixed(1)} % of one core`
  const figures = {}
  for (const row of rows) if (isOurs(row.name)) figures[`${row.name}: CPU per ${CPU_DELAY_MS} ms wait`] = pct(row.cpuMs)
  const floor = summary(floors).median
  figures[`floor here: a python3 process that only sleeps ${FLOOR_SLEEP_MS} ms at a time for ${CPU_DELAY_MS} ms (median of 3)`] = `${floor.toFixed(1)} CPU ms, ${pct(floor)}`
  return {
    figures,
    title: `Readiness: lag from the backend's listen to "ready" (${runs} runs each, listen after 100–2000 ms) and CPU per wait (listen after ${CPU_DELAY_MS} ms, median of ${cpuRuns}); each contender in its own process, alone with the backend`,
    unit: 'ms',
    columns: [{ key: 'cpuMs', label: 'cpu ms', ratio: true }],
    rows,
  }
}

module.exports.startWaiter = startWaiter
module.exports.oneRun = oneRun
