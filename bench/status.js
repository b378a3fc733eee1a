'use strict'
// Status: CPU and memory of running processes, and the process holding each of 10 busy ports. The same-work
// rows read CPU and memory of the same live pids: the 10 backends, and one backend's tree of 3 processes
// (itself and two grandchildren). listRecords does more (records, identity checks, listeners, whole trees)
// and is shown beside them for scale. Each answer is checked once against /proc, read independently.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const { ProcessManager, listRecords, findPortHolders, processUsage } = require('..')
const { summary, freeRun, sleep } = require('./lib')

const FIXTURE = path.join(__dirname, '..', '__test__', 'fixtures', 'backend.js')
const COUNT = 10

/** CPU time (ms) and resident memory (bytes) of `pid` from /proc, or null when it is gone. */
function procUsage(pid, tick, page) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    const rss = Number(fs.readFileSync(`/proc/${pid}/statm`, 'utf8').split(' ')[1])
    return { cpuTimeMs: ((Number(f[11]) + Number(f[12])) * 1000) / tick, memoryBytes: rss * page }
  } catch {
    return null
  }
}

/**
 * Compares one answer (pid → { cpuTimeMs, memoryBytes }) with /proc read right after it: every pid present,
 * CPU time within 50 ms, memory within 10 % (idle processes: both barely move between the two reads).
 */
function checkAgainstProc(answer, pids) {
  if (process.platform !== 'linux') return { correct: true, note: 'not checked against /proc (not Linux)' }
  const tick = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }))
  const page = Number(execFileSync('getconf', ['PAGESIZE'], { encoding: 'utf8' }))
  const wrong = []
  for (const pid of pids) {
    const got = answer.get(pid)
    const ref = procUsage(pid, tick, page)
    if (!got) wrong.push(`pid ${pid} missing`)
    else if (ref && Math.abs(got.cpuTimeMs - ref.cpuTimeMs) > 50) wrong.push(`pid ${pid} CPU ${got.cpuTimeMs.toFixed(0)} ms, /proc ${ref.cpuTimeMs.toFixed(0)} ms`)
    else if (ref && Math.abs(got.memoryBytes - ref.memoryBytes) > ref.memoryBytes * 0.1) wrong.push(`pid ${pid} memory ${got.memoryBytes}, /proc ${ref.memoryBytes}`)
  }
  return wrong.length ? { correct: false, note: wrong.join('; ') } : { correct: true }
}

/** Waits (at most 5 s) until `pids` have used no CPU for 100 ms: freshly started Node processes are done booting. */
async function quiet(pids) {
  if (process.platform !== 'linux') return
  const total = () => pids.reduce((sum, pid) => sum + (procUsage(pid, 1, 1)?.cpuTimeMs ?? 0), 0)
  const deadline = performance.now() + 5000
  let last = total()
  while (performance.now() < deadline) {
    await sleep(100)
    const next = total()
    if (next === last) return
    last = next
  }
}

module.exports = async function status({ runs }) {
  const pidusage = require('pidusage')
  const findProcess = require('find-process').default ?? require('find-process')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-bench-'))
  const treeDir = fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-bench-'))
  const managers = []
  try {
    const base = await freeRun(COUNT * 2 + 2, 45000)
    for (let i = 0; i < COUNT; i++) {
      const pm = new ProcessManager({ name: `bench-status-${i}`, command: process.execPath, args: [FIXTURE], port: base + i * 2, portRange: 1, stateDir: dir, logger: false })
      await pm.startBackend(dir)
      managers.push(pm)
    }
    const tree = new ProcessManager({ name: 'bench-status-tree', command: process.execPath, args: [FIXTURE], port: base + COUNT * 2, portRange: 1, stateDir: treeDir, logger: false, env: { GRANDCHILDREN: '2' } })
    const grandchildren = []
    tree.on('stdout', (l) => /^GRANDCHILD (\d+)/.test(l) && grandchildren.push(Number(l.split(' ')[1])))
    await tree.startBackend(treeDir)
    managers.push(tree)
    while (grandchildren.length < 2) await sleep(5)

    const pids = managers.slice(0, COUNT).map((m) => m.backend.pid)
    const treePids = [tree.backend.pid, ...grandchildren]
    const ports = managers.slice(0, COUNT).map((m) => m.backend.port)
    const ours = async (list) => new Map((await processUsage(list)).map((u) => [u.pid, u]))
    const theirs = async (list) => new Map(Object.values(await pidusage(list)).map((u) => [u.pid, { cpuTimeMs: u.ctime, memoryBytes: u.memory }]))
    // Each contender: the timed call, and whether its answer is complete (checked at every run).
    const contenders = [
      { name: `backend-process-manager processUsage (${COUNT} pids)`, group: 'usage-10', run: () => ours(pids), pids },
      { name: `pidusage (${COUNT} pids)`, group: 'usage-10', run: () => theirs(pids), pids },
      {
        name: `backend-process-manager listRecords (${COUNT} records: identity, listener, tree usage; more work)`,
        group: 'usage-10',
        run: async () => new Map((await listRecords(dir)).filter((r) => r.listenerPid === r.pid && r.memoryBytes > 0).map((r) => [r.pid, r])),
        pids,
        tree: true, // its CPU and memory cover the whole tree (here the backend alone), not checked per pid
      },
      { name: 'backend-process-manager processUsage (3-process tree)', group: 'usage-3', run: () => ours(treePids), pids: treePids },
      { name: 'pidusage (3-process tree)', group: 'usage-3', run: () => theirs(treePids), pids: treePids },
      {
        name: 'backend-process-manager findPortHolders',
        group: 'holders',
        run: async () => new Map((await findPortHolders(ports)).map((h, i) => [h.pid, h.pid === pids[i] ? h : null])),
        pids,
        holders: true,
      },
      {
        name: `find-process (by port, ×${COUNT})`,
        group: 'holders',
        run: async () => new Map((await Promise.all(ports.map((p) => findProcess('port', p)))).map((list, i) => [pids[i], list.some((p) => p.pid === pids[i]) ? {} : null])),
        pids,
        holders: true,
        runs: Math.max(5, Math.floor(runs / 4)),
      },
    ]
    await quiet([...pids, ...treePids])
    // Rounds: each contender once per round, in turn, so that a noisy moment hits all of them alike.
    const durations = contenders.map(() => [])
    const incomplete = contenders.map(() => 0)
    const WARMUP = 2
    for (let round = 0; round < WARMUP + runs; round++) {
      for (const [i, c] of contenders.entries()) {
        if (round >= WARMUP + (c.runs ?? runs)) continue
        const t = performance.now()
        const answer = await c.run()
        const ms = performance.now() - t
        if (!c.pids.every((p) => answer.get(p))) incomplete[i]++
        if (round >= WARMUP) durations[i].push(ms)
      }
    }
    const rows = []
    for (const [i, c] of contenders.entries()) {
      const verdict = c.tree || c.holders ? { correct: true } : checkAgainstProc(await c.run(), c.pids)
      const notes = [incomplete[i] ? `${incomplete[i]} incomplete answer(s)` : null, verdict.note ?? null].filter(Boolean)
      rows.push({ name: c.name, group: c.group, ...summary(durations[i]), correct: incomplete[i] === 0 && verdict.correct, note: notes.join('; ') || undefined })
    }
    pidusage.clear()
    return { title: `Status: CPU and memory of ${COUNT} running backends and of a 3-process tree; the holders of ${COUNT} busy ports`, unit: 'ms', rows }
  } finally {
    for (const pm of managers) await pm.stopBackend()
    fs.rmSync(dir, { recursive: true, force: true })
    fs.rmSync(treeDir, { recursive: true, force: true })
  }
}
