'use strict'
// Monitoring: what `backend-pm dashboard` (with one page listening to its event stream) and `backend-pm
// monitor` (in a terminal) cost while they watch 10 backends at one sample a second — the CPU time of their
// process over the measured seconds (/proc/PID/stat utime + stime), as CPU ms per second and % of one core.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const http = require('node:http')
const { spawn } = require('node:child_process')
const { once } = require('node:events')
const { ProcessManager } = require('..')
const { now, sleep, summary, freeRun } = require('./lib')
const { processTree } = require('../__test__/procs.js')

const FIXTURE = path.join(__dirname, '..', '__test__', 'fixtures', 'backend.js')
const CLI = path.join(__dirname, '..', 'cli.js')
const BACKENDS = 10
/** /proc reports CPU time in clock ticks of USER_HZ, which is 100 on Linux. */
const TICK_MS = 10

function cpuMs(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) * TICK_MS
}

/** CPU ms per second of `pid` over `seconds`, and what `during` counted meanwhile. */
async function measure(pid, seconds) {
  const [c0, w0] = [cpuMs(pid), now()]
  await sleep(seconds * 1000)
  const [c1, w1] = [cpuMs(pid), now()]
  return ((c1 - c0) / (w1 - w0)) * 1000
}

async function startBackends(dir) {
  const first = await freeRun(BACKENDS * 3, 43000)
  const managers = Array.from({ length: BACKENDS }, (_, i) => new ProcessManager({
    name: `bench-${i}`, command: process.execPath, args: [FIXTURE], port: first + i * 3, portRange: 2, stateDir: dir, logger: false,
  }))
  await Promise.all(managers.map((pm) => pm.startBackend(dir)))
  return managers
}

/** The dashboard process with one event-stream client; resolves to its CPU ms per s and the samples received. */
async function dashboardCost(dir, seconds) {
  const child = spawn(process.execPath, [CLI, 'dashboard', '--state-dir', dir], { stdio: ['ignore', 'pipe', 'inherit'] })
  try {
    let out = ''
    const url = await new Promise((resolve, reject) => {
      child.stdout.on('data', (d) => {
        out += d
        const m = /http:\/\/127\.0\.0\.1:\d+\/\?token=[0-9a-f]+/.exec(out)
        if (m) resolve(m[0])
      })
      child.once('exit', () => reject(new Error(`the dashboard exited: ${out}`)))
    })
    const samples = []
    const events = new URL(url)
    events.pathname = '/events'
    const req = http.get(events, { agent: false }, (res) => {
      let buffer = ''
      res.setEncoding('utf8')
      res.on('data', (d) => {
        buffer += d
        let i
        while ((i = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, i)
          buffer = buffer.slice(i + 2)
          if (!/^event:/m.test(block) && block.startsWith('data: ')) samples.push({ at: now(), sample: JSON.parse(block.slice(6)) })
        }
      })
    })
    req.on('error', () => {})
    // Warm: the page is connected and sampling runs.
    while (samples.length < 2) await sleep(50)
    const from = samples.length
    const msPerS = await measure(child.pid, seconds)
    const got = samples.slice(from)
    req.destroy()
    const complete = got.every((s) => s.sample.backends.length === BACKENDS && s.sample.backends.every((b) => b.state === 'running' && b.healthStatus === 200))
    return { msPerS, samples: got.length, complete }
  } finally {
    child.kill('SIGTERM')
    if (child.exitCode === null) await once(child, 'exit')
  }
}

/** The live monitor in a pseudo-terminal (util-linux `script`); resolves to its CPU ms per s and the frames drawn. */
async function monitorCost(dir, seconds) {
  const command = [process.execPath, CLI, 'monitor', '--state-dir', dir].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ')
  const child = spawn('script', ['-qfec', command, '/dev/null'], { stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, TERM: 'xterm' } })
  try {
    let frames = 0
    let text = ''
    child.stdout.on('data', (d) => {
      const s = String(d)
      frames += s.split('\x1b[H').length - 1
      text = (text + s).slice(-20000)
    })
    let monitor = null
    for (let i = 0; i < 200 && !monitor; i++) {
      await sleep(25)
      monitor = processTree(child.pid).find((p) => {
        try {
          return p !== child.pid && fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(CLI)
        } catch {
          return false
        }
      })
    }
    if (!monitor) throw new Error('the monitor did not start')
    while (frames < 2) await sleep(50)
    const from = frames
    const msPerS = await measure(monitor, seconds)
    const drawn = frames - from
    const complete = Array.from({ length: BACKENDS }, (_, i) => `bench-${i}`).every((n) => text.includes(n))
    child.stdin.write('q')
    return { msPerS, frames: drawn, complete }
  } finally {
    const ended = child.exitCode === null ? once(child, 'exit') : null
    setTimeout(() => child.kill('SIGKILL'), 3000).unref()
    await ended
  }
}

module.exports = async function monitoring({ runs: seconds }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-bench-'))
  const rows = []
  const figures = {}
  let managers = []
  try {
    managers = await startBackends(dir)
    const dash = await dashboardCost(dir, seconds)
    const mon = await monitorCost(dir, seconds)
    const pct = (msPerS) => msPerS / 10
    rows.push({
      group: 'dashboard',
      name: `backend-process-manager: backend-pm dashboard, ${BACKENDS} backends, 1 page listening: CPU ms per s`,
      ...summary([dash.msPerS]),
      correct: pct(dash.msPerS) <= 2 && dash.complete && dash.samples >= seconds - 1,
      note: `${dash.samples} samples in ${seconds} s${dash.complete ? '' : ', some incomplete'}`,
    })
    rows.push({
      group: 'monitor',
      name: `backend-process-manager: backend-pm monitor, ${BACKENDS} backends: CPU ms per s`,
      ...summary([mon.msPerS]),
      correct: mon.complete && mon.frames >= seconds - 1,
      note: `${mon.frames} frames in ${seconds} s${mon.complete ? '' : ', some backends missing'}`,
    })
    figures['dashboard CPU, % of one core'] = pct(dash.msPerS)
    figures['monitor CPU, % of one core'] = pct(mon.msPerS)
  } finally {
    await Promise.all(managers.map((pm) => pm.stopBackend()))
    fs.rmSync(dir, { recursive: true, force: true })
  }
  return { title: `Monitoring (${BACKENDS} backends, 1 sample a second, measured over ${seconds} s)`, unit: 'CPU ms per s', rows, figures }
}
