'use strict'
// Status: pid, CPU and memory of 10 running backends, and the process holding each of 10 busy ports.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { ProcessManager, listRecords, findPortHolders } = require('..')
const { time, summary, freeRun } = require('./lib')

const FIXTURE = path.join(__dirname, '..', '__test__', 'fixtures', 'backend.js')
const COUNT = 10

module.exports = async function status({ runs }) {
  const pidusage = require('pidusage')
  const findProcess = require('find-process').default ?? require('find-process')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-bench-'))
  const managers = []
  try {
    const base = await freeRun(COUNT * 2, 45000)
    for (let i = 0; i < COUNT; i++) {
      const pm = new ProcessManager({ name: `bench-status-${i}`, command: process.execPath, args: [FIXTURE], port: base + i * 2, portRange: 1, stateDir: dir, logger: false })
      await pm.startBackend(dir)
      managers.push(pm)
    }
    const pids = managers.map((m) => m.backend.pid)
    const ports = managers.map((m) => m.backend.port)
    const check = (cond, what) => {
      if (!cond) throw new Error(`status benchmark: ${what}`)
    }
    const contenders = {
      'backend-process-manager listRecords': async () => {
        const records = await listRecords(dir)
        check(records.length === COUNT && records.every((r) => r.memoryBytes > 0 && r.listenerPid === r.pid), 'incomplete records')
      },
      'pidusage': async () => {
        const stats = await pidusage(pids)
        check(Object.keys(stats).length === COUNT, 'pidusage incomplete')
      },
      'backend-process-manager findPortHolders': async () => {
        const holders = await findPortHolders(ports)
        check(holders.length === COUNT && holders.every((h, i) => h.pid === pids[i]), 'wrong holders')
      },
      'find-process (by port, ×10)': async () => {
        const found = await Promise.all(ports.map((p) => findProcess('port', p)))
        check(found.every((list, i) => list.some((p) => p.pid === pids[i])), 'find-process missed a holder')
      },
    }
    const rows = []
    for (const [name, fn] of Object.entries(contenders)) {
      const n = name.startsWith('find-process') ? Math.max(5, Math.floor(runs / 4)) : runs
      const group = /listRecords|pidusage/.test(name) ? 'usage' : 'holders'
      rows.push({ name, group, ...summary(await time(fn, n, 2)), correct: true })
    }
    return { title: `Status: ${COUNT} running backends (pid, CPU, memory; ours also identity and listener) and the holders of ${COUNT} busy ports`, unit: 'ms', rows }
  } finally {
    for (const pm of managers) await pm.stopBackend()
    fs.rmSync(dir, { recursive: true, force: true })
  }
}
