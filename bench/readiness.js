'use strict'
// Readiness: a backend that starts listening after a delay and records that moment; every contender runs
// in a process of its own (bench/waiter.js) and we measure how long after the listen it reports ready. Each
// round, ours `startBackend` starts the backend and one other contender waits for it alongside (in turn),
// so no contender's polling takes the CPU from another's (wait-on at interval 2 spends ~half a core). Lag runs use a random 100–2000
// ms listen delay; CPU runs a fixed 2000 ms one, and report the CPU time (user + system) each contender's
// process spent from the start of its wait to "ready". Ours `startBackend` starts the backend itself (the
// backend's own CPU is in the backend's process, not counted); every other contender only waits for it.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { fork } = require('node:child_process')
const { summary, freeRun } = require('./lib')

const WAITER = path.join(__dirname, 'waiter.js')
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

/**
 * One backend, every contender waiting for it at once; the lag and CPU of each, by kind. The port is free and
 * reserved for the starter's manager beforehand (other processes of this user may hold reservations too).
 */
async function oneRun(waiters, dir, from, delay, tag) {
  // `waiters`: the starter and the contenders of this round.
  const starter = waiters.find((w) => w.kind === STARTER)
  const mark = path.join(dir, `listen-${tag}`)
  let port = from
  for (;;) {
    port = await freeRun(1, port)
    if ((await starter.request({ cmd: 'prepare', port, dir, delay, mark })).ok) break
    port++
  }
  const msg = { cmd: 'wait', port, dir, delay, mark }
  // The starter first (it spawns the backend), then the others, all before the backend can listen.
  const ordered = [starter, ...waiters.filter((w) => w !== starter)]
  const answers = await Promise.all(ordered.map((w) => w.request(msg)))
  await starter.request({ cmd: 'stop' })
  // No mark: the backend never listened, and every contender has reported its failure.
  const listenedAt = fs.existsSync(mark) ? Number(fs.readFileSync(mark, 'utf8').trim()) : NaN
  const out = {}
  ordered.forEach((w, i) => (out[w.kind] = { ...answers[i], lag: answers[i].at - listenedAt }))
  return out
}

/** `only`: row names to run (the starter always runs, it starts the backend); all by default. */
module.exports = async function readiness({ runs, only }) {
  const contenders = Object.fromEntries(Object.entries(CONTENDERS).filter(([name, kind]) => !only || kind === STARTER || only.includes(name)))
  const kinds = Object.values(contenders)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-bench-'))
  const waiters = kinds.map(startWaiter)
  const lags = Object.fromEntries(kinds.map((k) => [k, []]))
  const cpus = Object.fromEntries(kinds.map((k) => [k, []]))
  const failures = Object.fromEntries(kinds.map((k) => [k, []]))
  const cpuRuns = Math.max(3, Math.round(runs / 3))
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
    // Warm-up: every process loads its code paths once before anything counts.
    await oneRun(waiters, dir, nextPort(0), 100, 'warmup')
    const starter = waiters.find((w) => w.kind === STARTER)
    const others = waiters.filter((w) => w !== starter)
    // One round per contender beside the starter (the starter alone when it is the only one).
    const rounds = others.length ? others.map((w) => [starter, w]) : [[starter]]
    let round = 0
    for (let run = 0; run < runs; run++) {
      const delay = 100 + Math.floor(Math.random() * 1900)
      for (const pair of rounds) record(await oneRun(pair, dir, nextPort(++round), delay, `lag-${round}`), lags)
    }
    for (let run = 0; run < cpuRuns; run++) {
      for (const pair of rounds) record(await oneRun(pair, dir, nextPort(++round), CPU_DELAY_MS, `cpu-${round}`), cpus)
    }
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
  return {
    title: `Readiness: lag from the backend's listen to "ready" (${runs} runs each, listen after 100–2000 ms) and CPU per wait (listen after ${CPU_DELAY_MS} ms, median of ${cpuRuns}); each contender in its own process, waiting beside ours startBackend (which starts the backend)`,
    unit: 'ms',
    columns: [{ key: 'cpuMs', label: 'cpu ms', ratio: true }],
    rows,
  }
}
