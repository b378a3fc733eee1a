'use strict'
// Readiness signals (docs/api.md, "Readiness signals"): the lag from the backend's own signal to the
// resolution of ours `startBackend` — `ready: 'notify'` (the moment before its READY=1 datagram),
// `ready: { stdout }` (before its line), `listen: 'fd'` + `'http'` (its first accept of the probe that
// waited in the held socket's backlog) — beside today's HTTP readiness (ours `'http'` and wait-on at its
// defaults and at its fastest setting; their signal is the backend's listen). Each contender runs in a
// process of its own (bench/waiter.js), alone with its backend, as in bench/readiness.js. Lag runs: the
// signal after a random 50–500 ms. CPU: the app process's CPU (user + system, every thread) for a start
// whose signal comes after 2000 ms, less that of the same start whose signal comes at once: what the
// 2 s of waiting cost. Beside it, an idle Node process's CPU over the same 2 s.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const { summary, quantile, freeRun, sleep } = require('./lib')
const { startWaiter, oneRun } = require('./readiness.js')

const CPU_DELAY_MS = 2000
// Row name → [waiter kind, signal of bench/signal-backend.py (none: bench/fast-backend.py's listen)].
const CONTENDERS = {
  "backend-process-manager ready: 'notify' (READY=1)": ['ours-start', 'notify'],
  'backend-process-manager ready: { stdout } (a line)': ['ours-start', 'stdout'],
  "backend-process-manager listen: 'fd' + ready: 'http' (first accept)": ['ours-start', 'fd'],
  "backend-process-manager ready: 'http' (today: looks for the listener, probes)": ['ours-start', null],
  'wait-on (defaults: interval 250)': ['wait-on-defaults', null],
  'wait-on (interval 2, delay 0, httpTimeout 1000, proxy off: its fastest)': ['wait-on-2', null],
}

/** One start of ours with `signal` after `delay` ms: its lag from the signal and its CPU. */
async function startRun(waiter, dir, from, delay, tag, signal) {
  const mark = path.join(dir, `mark-${tag}`)
  let port = from
  for (;;) {
    port = await freeRun(1, port)
    if ((await waiter.request({ cmd: 'prepare', port, dir, delay, mark, signal })).ok) break
    port++
  }
  let answer
  let markedAt = NaN
  try {
    answer = await waiter.request({ cmd: 'wait', port, dir, delay, mark })
    // The backend writes its mark after its signal: "ready" may come first.
    for (let i = 0; answer.ok && i < 500 && !Number.isFinite(markedAt); i++) {
      const text = fs.existsSync(mark) ? fs.readFileSync(mark, 'utf8') : ''
      if (text.endsWith('\n')) markedAt = Number(text.split('\n')[0])
      else await sleep(2)
    }
  } finally {
    await waiter.request({ cmd: 'stop' })
  }
  return { ...answer, lag: answer.at - markedAt }
}

/** CPU ms that a Node process that only waits on a 2 s timer spends over it. */
function idleNodeCpuMs() {
  const code = `const c = process.cpuUsage(); setTimeout(() => { const u = process.cpuUsage(c); console.log((u.user + u.system) / 1000) }, ${CPU_DELAY_MS})`
  return Number(execFileSync(process.execPath, ['-e', code], { encoding: 'utf8' }).trim())
}

module.exports = async function signals({ runs }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-bench-signals-'))
  const names = Object.keys(CONTENDERS)
  const waiters = names.map((n) => startWaiter(CONTENDERS[n][0]))
  const lags = names.map(() => [])
  const cpuAtOnce = names.map(() => [])
  const cpuWaiting = names.map(() => [])
  const failures = names.map(() => [])
  const idle = []
  const cpuRuns = Math.max(5, Math.round(runs / 10))
  const nextPort = (round) => 20000 + (round % 100) * 97
  let round = 0
  const one = async (i, delay, tag) => {
    const [kind, signal] = CONTENDERS[names[i]]
    const w = waiters[i]
    if (kind === 'ours-start') return startRun(w, dir, nextPort(++round), delay, `${tag}-${round}`, signal)
    const r = await oneRun(w, dir, nextPort(++round), delay, `${tag}-${round}`)
    return r[kind]
  }
  const record = (i, a, into) => (a.ok ? into[i].push(a) : failures[i].push(a.error ?? 'not ready'))
  try {
    await Promise.all(waiters.map((w) => w.ready))
    for (let i = 0; i < names.length; i++) await one(i, 50, 'warmup')
    for (let run = 0; run < runs; run++) {
      const delay = 50 + Math.floor(Math.random() * 450)
      for (let i = 0; i < names.length; i++) record(i, await one(i, delay, 'lag'), lags)
    }
    for (let run = 0; run < cpuRuns; run++) {
      for (let i = 0; i < names.length; i++) {
        record(i, await one(i, 0, 'now'), cpuAtOnce)
        record(i, await one(i, CPU_DELAY_MS, 'cpu'), cpuWaiting)
      }
      idle.push(idleNodeCpuMs())
    }
  } finally {
    await Promise.all(waiters.map((w) => w.close()))
    fs.rmSync(dir, { recursive: true, force: true })
  }
  const idleMs = quantile(idle, 0.5)
  const rows = names.map((name, i) => {
    const lag = summary(lags[i].map((a) => a.lag))
    const atOnce = quantile(cpuAtOnce[i].map((a) => a.cpuMs), 0.5)
    const waiting = quantile(cpuWaiting[i].map((a) => a.cpuMs), 0.5)
    const notes = []
    if (failures[i].length) notes.push(`${failures[i].length} start(s) or wait(s) failed: ${[...new Set(failures[i])].join('; ')}`)
    const early = lags[i].filter((a) => a.lag < 0).length
    if (early) notes.push(`${early} "ready" before the signal (clock skew between processes?)`)
    return { name, ...lag, cpuMs: waiting - atOnce, cpuTotalMs: waiting, correct: failures[i].length === 0, note: notes.join('; ') || undefined }
  })
  rows.push({ name: `an idle Node process over ${CPU_DELAY_MS} ms (a timer only)`, n: idle.length, median: NaN, p95: NaN, cpuMs: idleMs, cpuTotalMs: idleMs, correct: true })
  const figures = {}
  for (const row of rows.slice(0, 3)) {
    figures[`${row.name}: median lag ≤ 0.5 ms, p95 ≤ 2 ms`] = `${row.median.toFixed(3)} / ${row.p95.toFixed(3)} ms: ${row.median <= 0.5 && row.p95 <= 2 ? 'met' : 'missed'}`
    figures[`${row.name}: CPU of the 2 s wait ≤ idle Node's`] = `${row.cpuMs.toFixed(1)} ms vs ${idleMs.toFixed(1)} ms: ${row.cpuMs <= idleMs ? 'met' : 'missed'}`
  }
  return {
    figures,
    title: `Readiness signals: lag from the backend's own signal to "ready" (${runs} runs each, signal after 50–500 ms; wait-on and 'http': the signal is the listen) and the app's CPU for a ${CPU_DELAY_MS} ms wait (median of ${cpuRuns}, less a start whose signal comes at once)`,
    unit: 'ms',
    // The wait's CPU is ~0 for the signals (within the noise, either sign): a ratio to it means nothing.
    columns: [{ key: 'cpuMs', label: 'wait cpu ms' }, { key: 'cpuTotalMs', label: 'start cpu ms', ratio: true }],
    rows,
  }
}
