'use strict'
// Supervision: how long a restart takes beyond the backend's own start, what stats() costs against
// pidusage for the same processes, and what the watchdog costs the app while the backend runs.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { fork } = require('node:child_process')
const { once } = require('node:events')
const { ProcessManager } = require('..')
const { now, summary, freeRun, time } = require('./lib')

const FIXTURE = path.join(__dirname, '..', '__test__', 'fixtures', 'backend.js')
// Answers at once once it listens (Node's http needs 5-10 ms more for its first answer, which is the
// backend's time, not the manager's).
const FAST_BACKEND = path.join(__dirname, 'fast-backend.js')

const lastMark = (file) => Number(fs.readFileSync(file, 'utf8').trim().split('\n').at(-1))

/**
 * Restart overhead: from the SIGKILL to `ready` of the new process, minus that process's own time from its
 * start to its listen — what the manager adds (noticing the exit, ending the old one, spawning, probing). The
 * backend answers the moment it listens (bench/fast-backend.js).
 */
async function restartOverhead(dir, runs) {
  const startMark = path.join(dir, 'start')
  const listenMark = path.join(dir, 'listen')
  const pm = new ProcessManager({
    name: 'bench-restart', command: process.execPath, args: [FAST_BACKEND], port: await freeRun(1, 41000), portRange: 50, stateDir: dir, logger: false,
    restart: { initialDelayMs: 0, maxRestarts: runs + 10, windowMs: 3_600_000 },
    env: { START_MARK_FILE: startMark, LISTEN_MARK_FILE: listenMark },
  })
  const overheads = []
  try {
    let b = await pm.startBackend(dir)
    for (let i = 0; i < runs; i++) {
      const ready = once(pm, 'ready')
      const killedAt = now()
      process.kill(b.pid, 'SIGKILL')
      ;[b] = await ready
      const readyAt = now()
      const ownStart = lastMark(listenMark) - lastMark(startMark)
      overheads.push(readyAt - killedAt - ownStart)
    }
  } finally {
    await pm.stopBackend()
  }
  return overheads
}

/** A backend with two grandchildren: the 3-process tree whose stats are read. */
async function treeOfThree(dir) {
  const pm = new ProcessManager({ name: 'bench-stats', command: process.execPath, args: [FIXTURE], port: await freeRun(1, 42000), portRange: 50, stateDir: dir, logger: false, env: { GRANDCHILDREN: '2' } })
  const grandchildren = []
  const both = new Promise((resolve) => pm.on('stdout', (line) => {
    const m = /^GRANDCHILD (\d+)$/.exec(line)
    if (m && grandchildren.push(Number(m[1])) === 2) resolve()
  }))
  const b = await pm.startBackend(dir)
  await both
  return { pm, pids: [b.pid, ...grandchildren] }
}

/** CPU ms per second of a manager process whose backend runs for `seconds`, with or without a watchdog. */
function managerCpu(dir, seconds, healthIntervalMs) {
  const child = fork(path.join(__dirname, 'supervised.js'), [dir, String(seconds * 1000), String(healthIntervalMs)], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] })
  return once(child, 'message').then(([m]) => m.cpuMsPerSecond)
}

module.exports = async function supervision({ runs }) {
  const pidusage = require('pidusage')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-bench-'))
  const rows = []
  try {
    const restarts = await restartOverhead(dir, runs)
    rows.push({ group: 'restart', name: 'backend-process-manager restart: exit → ready, minus the backend\'s own start', ...summary(restarts), correct: true })

    const { pm, pids } = await treeOfThree(dir)
    try {
      let statsOk = true
      const ours = await time(async () => {
        const s = await pm.stats()
        statsOk &&= s.processCount === 3 && s.memoryBytes > 0
      }, runs * 10)
      rows.push({ group: 'stats', name: 'backend-process-manager stats() of a 3-process tree', ...summary(ours), correct: statsOk })
      const peer = await time(() => pidusage(pids), runs * 10)
      rows.push({ group: 'stats', name: 'pidusage(the same 3 pids)', ...summary(peer), correct: true })
    } finally {
      await pm.stopBackend()
      pidusage.clear()
    }

    const seconds = runs >= 20 ? 10 : 4
    const [idle, watched] = [await managerCpu(dir, seconds, 0), await managerCpu(dir, seconds, 1000)]
    // One figure each: the CPU a manager process spent per second while its backend ran.
    rows.push({ group: 'watchdog', name: 'backend-process-manager, watchdog every 1000 ms: app CPU ms per s', ...summary([watched]), correct: watched / 10 <= 1 })
    rows.push({ group: 'watchdog', name: 'backend-process-manager, no watchdog: app CPU ms per s', ...summary([idle]), correct: true })
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
  return { title: `Supervision (${runs} restarts; stats ${runs * 10}×; app CPU while a backend runs)`, unit: 'ms', rows }
}
