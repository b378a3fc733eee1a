'use strict'
// Ours in the log throughput bench (bench/logs.js), in a process of its own so that its CPU time is the
// manager's alone: on `run` it starts bench/log-writer.py with the given `logs` option, waits for its last
// line ("done") in the log and for its exit, and answers with the CPU this process spent meanwhile.
const fs = require('node:fs')
const path = require('node:path')
const { ProcessManager } = require('..')
const { now, sleep } = require('./lib')

const WRITER = path.join(__dirname, 'log-writer.py')

/** Whether the last bytes of `file` hold the writer's "done" line (framed or not). */
function endsDone(file) {
  let fd
  try {
    fd = fs.openSync(file, 'r')
    const size = fs.fstatSync(fd).size
    const buf = Buffer.alloc(Math.min(size, 4096))
    fs.readSync(fd, buf, 0, buf.length, size - buf.length)
    return /(^|[ \n])done\n/.test(buf.toString('latin1'))
  } catch {
    return false
  } finally {
    if (fd !== undefined) fs.closeSync(fd)
  }
}

async function run({ cmd, dir, bytes, logs, result, name }) {
  if (cmd !== 'run') return
  const warnings = []
  const cpu0 = process.cpuUsage()
  let pm
  try {
    pm = new ProcessManager({
      name, command: 'python3', args: [WRITER], port: 47600, portRange: 50, stateDir: dir, logger: false, ready: { stdout: '^start$' },
      env: { LOG_BYTES: String(bytes), RESULT_FILE: result }, ...(logs === undefined ? {} : { logs }),
    })
    pm.on('warning', (w) => warnings.push(w.message ?? String(w)))
    const exited = new Promise((resolve) => pm.once('exit', resolve))
    await pm.startBackend(dir)
    const file = path.join(dir, 'logs', `${name}.log`)
    let loggedAt = NaN
    if (logs !== false) {
      // From the backend's end (it writes `result` after its last line), not from its `exit` event, which
      // comes later: as pm2's log is watched by bench/logs.js, every millisecond.
      const limit = now() + 120000
      while (!(fs.existsSync(result) && endsDone(file)) && now() < limit) await sleep(1)
      loggedAt = endsDone(file) ? now() : NaN
    }
    await exited
    const cpu = process.cpuUsage(cpu0)
    process.send({ ok: true, loggedAt, cpuMs: (cpu.user + cpu.system) / 1000, warnings })
  } catch (err) {
    await pm?.stopBackend().catch(() => {})
    process.send({ ok: false, error: err.message, warnings })
  }
}

if (require.main === module) {
  process.on('message', run)
  process.send({ ready: true })
}
module.exports = { endsDone }
