'use strict'
// Stopping: a backend with two grandchildren that exits 50 ms after SIGTERM. Time from the stop request
// until every process of the tree is gone and the call has resolved; and how many grandchildren survived.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { ProcessManager } = require('..')
const { now, sleep, summary, isAlive, freeRun } = require('./lib')

const FIXTURE = path.join(__dirname, '..', '__test__', 'fixtures', 'backend.js')
const ENV = { GRANDCHILDREN: '2', TERM_DELAY_MS: '50' }
/** How long a survivor is waited for before it counts as left alive. */
const SURVIVOR_WAIT = 1000
const GROUP_KILL = 'spawn detached + process.kill(-pid, SIGTERM) + exit event'

/** Polls (every ms) until the pids are gone or `limit` ms pass; returns the moment they were all gone, or null. */
async function goneAt(pids, limit) {
  const deadline = now() + limit
  while (now() < deadline) {
    if (pids.every((p) => !isAlive(p))) return now()
    await sleep(1)
  }
  return null
}

/** Starts the fixture with Node's child_process (as the peers expect) and waits until it listens. */
function startPlain(port, spawnFn = spawn, extraEnv = {}) {
  const child = spawnFn(process.execPath, [FIXTURE], { env: { ...process.env, ...ENV, ...extraEnv, PORT: String(port), HOST: '127.0.0.1' }, stdio: ['ignore', 'pipe', 'ignore'] })
  const grandchildren = []
  return new Promise((resolve, reject) => {
    let buf = ''
    child.stdout.on('data', (d) => {
      buf += d
      for (const m of buf.matchAll(/GRANDCHILD (\d+)/g)) if (!grandchildren.includes(Number(m[1]))) grandchildren.push(Number(m[1]))
      if (buf.includes('listening on')) resolve({ child, pid: child.pid, grandchildren })
    })
    child.once?.('error', reject)
  })
}

module.exports = async function stopping({ runs }) {
  const treeKill = require('tree-kill')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-bench-'))
  const results = { 'backend-process-manager': [], 'tree-kill + polling': [], [GROUP_KILL]: [] }
  const survivors = Object.fromEntries(Object.keys(results).map((k) => [k, 0]))
  // From the backend's own exit handler (its last moment, written by the fixture) to the resolution: ours, and
  // the plain group kill's exit event (the least any stop can take after the backend's exit).
  const afterExit = []
  const groupAfterExit = []
  const cleanup = []
  try {
    for (let run = 0; run < runs; run++) {
      const port = await freeRun(3, 40000 + (run % 20) * 97)
      // Ours.
      {
        const mark = path.join(dir, `exit-${run}`)
        const pm = new ProcessManager({ name: 'bench-stop', command: process.execPath, args: [FIXTURE], port, stateDir: dir, logger: false, env: { ...ENV, EXIT_MARK_FILE: mark } })
        const grandchildren = []
        pm.on('stdout', (l) => /^GRANDCHILD (\d+)/.test(l) && grandchildren.push(Number(l.split(' ')[1])))
        const b = await pm.startBackend(dir)
        while (grandchildren.length < 2) await sleep(5)
        const t0 = now()
        await pm.stopBackend()
        const resolved = now()
        const pids = [b.pid, ...grandchildren]
        const gone = await goneAt(pids, SURVIVOR_WAIT)
        if (gone === null) survivors['backend-process-manager'] += pids.filter(isAlive).length
        cleanup.push(...pids)
        results['backend-process-manager'].push(Math.max(resolved, gone ?? resolved) - t0)
        afterExit.push(resolved - Number(fs.readFileSync(mark, 'utf8').trim()))
      }
      // tree-kill, then polling until the tree is gone (tree-kill itself does not wait).
      {
        const { pid, grandchildren } = await startPlain(port)
        while (grandchildren.length < 2) await sleep(5)
        cleanup.push(pid, ...grandchildren)
        const t0 = now()
        await new Promise((resolve) => treeKill(pid, 'SIGTERM', resolve))
        const resolved = now()
        const pids = [pid, ...grandchildren]
        const gone = await goneAt(pids, SURVIVOR_WAIT)
        if (gone === null) survivors['tree-kill + polling'] += pids.filter(isAlive).length
        results['tree-kill + polling'].push(Math.max(resolved, gone ?? resolved) - t0)
      }
      // Node alone: the backend leads a process group of its own (detached), SIGTERM goes to the whole group,
      // and the call is done at the backend's exit event; the grandchildren are checked as for the others.
      {
        const mark = path.join(dir, `group-exit-${run}`)
        const { child, pid, grandchildren } = await startPlain(port, (cmd, args, opts) => spawn(cmd, args, { ...opts, detached: true }), { EXIT_MARK_FILE: mark })
        while (grandchildren.length < 2) await sleep(5)
        cleanup.push(pid, ...grandchildren)
        const exited = new Promise((resolve) => child.once('exit', resolve))
        const t0 = now()
        process.kill(-pid, 'SIGTERM')
        await exited
        const resolved = now()
        const pids = [pid, ...grandchildren]
        const gone = await goneAt(pids, SURVIVOR_WAIT)
        if (gone === null) survivors[GROUP_KILL] += pids.filter(isAlive).length
        results[GROUP_KILL].push(Math.max(resolved, gone ?? resolved) - t0)
        groupAfterExit.push(resolved - Number(fs.readFileSync(mark, 'utf8').trim()))
      }
      for (const pid of cleanup.splice(0)) if (isAlive(pid)) process.kill(pid, 'SIGKILL')
    }
  } finally {
    for (const pid of cleanup) if (isAlive(pid)) process.kill(pid, 'SIGKILL')
    fs.rmSync(dir, { recursive: true, force: true })
  }
  const exitLag = summary(afterExit)
  const lagText = (lag) => `; resolved ${lag.median.toFixed(1)} ms (p95 ${lag.p95.toFixed(1)}) after the backend's exit handler ran`
  const rows = Object.entries(results).map(([name, values]) => ({
    name, ...summary(values), correct: survivors[name] === 0,
    note: `${survivors[name]} process(es) left alive in ${runs} runs` +
      (name === 'backend-process-manager' ? lagText(exitLag) : name === GROUP_KILL ? lagText(summary(groupAfterExit)) : ''),
  }))
  return { resolvedAfterExit: exitLag, title: `Stopping a backend with 2 grandchildren that exits 50 ms after SIGTERM (${runs} runs)`, unit: 'ms', rows }
}
