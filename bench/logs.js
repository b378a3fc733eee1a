'use strict'
// Log throughput: a backend (bench/log-writer.py) writes LOG_BYTES of 100-byte lines to stdout as fast as it
// can. The figure is the bytes over the time from its first write until its last line is in the log file
// (in the page cache, as the reference's are when its last write returns: no one fsyncs): a pipe reader
// that let the backend finish early and wrote the rest later would otherwise look faster than it is. The
// backend's own write rate (first write to last) is shown beside it. Beside it: the same backend writing straight to a file (the reference), into a
// pipe that `cat` copies to a file (the floor of anything that reads a pipe), ours with `logs` on (its
// defaults) and off, and pm2 running it (its defaults, which write raw chunks and so are its fastest, and
// `--time`, which stamps lines as ours frames them), its daemon started in a private PM2_HOME and killed
// by pid at the end whatever happens. Every log is read back: a line dropped, repeated or split is counted
// (ours keeps the last 60 MB by default: its kept window is checked).
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const readline = require('node:readline')
const { fork, spawn, execFileSync } = require('node:child_process')
const { once } = require('node:events')
const { now, sleep, quantile, isAlive } = require('./lib')
const { endsDone } = require('./log-runner.js')

const LOG_BYTES = 200 * 1000 * 1000
const WRITER = path.join(__dirname, 'log-writer.py')
const PM2 = path.join(__dirname, '..', 'node_modules', 'pm2', 'bin', 'pm2')
const LIMIT_MS = 180000

/**
 * Reads the lines of `files` (in order) as the writer wrote them: `strip` takes a file's framing off a line
 * (null: not one of the writer's lines). Counts the writer's lines seen, and the faults: a line out of
 * sequence (dropped or repeated before it) or not whole (split, or glued to another).
 */
async function check(files, strip) {
  let lines = 0
  let faults = 0
  let block = null
  let next = null // the number of the line expected next in the block (1000: a header)
  let sawDone = false
  for (const file of files) {
    if (!fs.existsSync(file)) continue
    const rl = readline.createInterface({ input: fs.createReadStream(file, { highWaterMark: 1 << 20 }), crlfDelay: Infinity })
    for await (const raw of rl) {
      const line = strip(raw)
      if (line === null) continue
      lines++
      if (line === 'start') continue
      if (line === 'done') {
        sawDone = true
        if (next !== null && next !== 1000) faults++
        continue
      }
      const header = /^block (\d{8})$/.exec(line)
      if (header) {
        const n = Number(header[1])
        if (block !== null && (n !== block + 1 || next !== 1000)) faults++
        block = n
        next = 0
        continue
      }
      const numbered = /^(\d{3}) (x+)$/.exec(line)
      if (!numbered || numbered[2].length !== 95) {
        faults++
        continue
      }
      // A window that starts inside a block (rotation) begins where it begins.
      if (next !== null && Number(numbered[1]) !== next) faults++
      next = Number(numbered[1]) + 1
    }
  }
  return { lines, faults, sawDone }
}

const raw = (l) => l
const ourFrame = (l) => {
  const m = /^\S+ (out|err|pm) \d+ (.*)$/.exec(l)
  return m && m[1] === 'out' ? m[2] : null
}
// pm2 --time: "2026-12-02T15:40:01: text" before each chunk it got (not each line).
const pm2Time = (l) => l.replace(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?: /, '')

const result = (file) => JSON.parse(fs.readFileSync(file, 'utf8'))
const rate = (r) => r.bytes / 1e6 / ((r.ended - r.began) / 1000)
/** The rate until the last line was in the log `loggedMs` after the backend began. */
const loggedRate = (r, loggedMs) => r.bytes / 1e6 / (loggedMs / 1000)

async function waitFor(cond, what) {
  const limit = now() + LIMIT_MS
  while (!cond()) {
    if (now() > limit) throw new Error(`timed out waiting for ${what}`)
    await sleep(1)
  }
}

/** The backend alone, its stdout a file. */
async function straight(dir) {
  const out = path.join(dir, 'out.log')
  const fd = fs.openSync(out, 'w')
  const child = spawn('python3', [WRITER], { stdio: ['ignore', fd, 'inherit'], env: { ...process.env, LOG_BYTES: String(LOG_BYTES), RESULT_FILE: path.join(dir, 'result.json') } })
  fs.closeSync(fd)
  await once(child, 'exit')
  const r = result(path.join(dir, 'result.json'))
  return { rate: rate(r), writeRate: rate(r), loggedMs: r.ended - r.began, cpuMs: 0, ...(await check([out], raw)), expected: r.lines + 2 }
}

/** The backend's stdout a pipe that `cat` copies to a file. */
async function piped(dir) {
  const out = path.join(dir, 'out.log')
  const fd = fs.openSync(out, 'w')
  const cat = spawn('cat', [], { stdio: ['pipe', fd, 'inherit'] })
  fs.closeSync(fd)
  const child = spawn('python3', [WRITER], { stdio: ['ignore', cat.stdin, 'inherit'], env: { ...process.env, LOG_BYTES: String(LOG_BYTES), RESULT_FILE: path.join(dir, 'result.json') } })
  cat.stdin.destroy()
  await Promise.all([once(child, 'exit'), once(cat, 'exit')])
  const r = result(path.join(dir, 'result.json'))
  const loggedMs = now() - r.began
  return { rate: loggedRate(r, loggedMs), writeRate: rate(r), loggedMs, cpuMs: NaN, ...(await check([out], raw)), expected: r.lines + 2 }
}

/** Ours, in a process of its own (bench/log-runner.js). */
function ours(logs) {
  return async (dir, run) => {
    const name = `bench-logs-${run}`
    const runner = fork(path.join(__dirname, 'log-runner.js'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    try {
      await new Promise((resolve, reject) => {
        runner.once('message', resolve)
        runner.once('exit', (code) => reject(new Error(`log runner exited (${code})`)))
      })
      const answer = once(runner, 'message')
      runner.send({ cmd: 'run', dir, bytes: LOG_BYTES, logs, name, result: path.join(dir, 'result.json') })
      const [a] = await Promise.race([answer, sleep(LIMIT_MS).then(() => [{ ok: false, error: 'no answer' }])])
      if (!a.ok) throw new Error(a.error)
      const r = result(path.join(dir, 'result.json'))
      const logDir = path.join(dir, 'logs')
      const keep = 5
      const files = [...Array.from({ length: keep }, (_, i) => path.join(logDir, `${name}.${keep - i}.log`)), path.join(logDir, `${name}.log`)]
      const checked = logs === false ? { lines: NaN, faults: 0, sawDone: true } : await check(files, ourFrame)
      const kept = files.filter((f) => fs.existsSync(f)).reduce((s, f) => s + fs.statSync(f).size, 0)
      const loggedMs = Number.isFinite(a.loggedAt) ? a.loggedAt - r.began : NaN
      // logs: false keeps nothing: its figure is the backend's write rate.
      return { rate: logs === false ? rate(r) : loggedRate(r, loggedMs), writeRate: rate(r), loggedMs, cpuMs: a.cpuMs, ...checked, expected: logs === false ? NaN : r.lines + 2, rotated: logs !== false && kept < r.bytes, warnings: a.warnings }
    } finally {
      if (runner.exitCode === null && runner.signalCode === null) {
        runner.kill('SIGKILL')
        await once(runner, 'exit')
      }
    }
  }
}

/** pm2, with its daemon in `home` (started on the first run); `flags`: extra `pm2 start` flags. */
function pm2(home, flags) {
  const cli = (...args) => execFileSync(process.execPath, [PM2, ...args], { env: { ...process.env, PM2_HOME: home }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  const daemonPid = () => Number(fs.readFileSync(path.join(home, 'pm2.pid'), 'utf8').trim())
  const cpuOf = (pid) => {
    const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
    return ((Number(f[11]) + Number(f[12])) * 1000) / 100 // utime + stime, in clock ticks of 1/100 s
  }
  const run = async (dir, n) => {
    const name = `bench-logs-${n}${flags.length ? '-t' : ''}`
    const resultFile = path.join(dir, 'result.json')
    cli('ping')
    const pid = daemonPid()
    const cpu0 = cpuOf(pid)
    const out = path.join(home, 'logs', `${name}-out.log`)
    execFileSync(process.execPath, [PM2, 'start', WRITER, '--name', name, '--interpreter', 'python3', '--no-autorestart', ...flags], {
      env: { ...process.env, PM2_HOME: home, LOG_BYTES: String(LOG_BYTES), RESULT_FILE: resultFile }, stdio: 'ignore',
    })
    try {
      await waitFor(() => fs.existsSync(resultFile) && endsDone(out), `pm2's log of ${name}`)
      const loggedAt = now()
      const cpuMs = cpuOf(pid) - cpu0
      const r = result(resultFile)
      return { rate: loggedRate(r, loggedAt - r.began), writeRate: rate(r), loggedMs: loggedAt - r.began, cpuMs, ...(await check([out], flags.includes('--time') ? pm2Time : raw)), expected: r.lines + 2 }
    } finally {
      cli('delete', name)
      fs.rmSync(out, { force: true })
      fs.rmSync(path.join(home, 'logs', `${name}-error.log`), { force: true })
    }
  }
  return run
}

/** Ends pm2's daemon (and anything it still runs) by pid, and its home. */
async function killPm2(home) {
  const pidFile = path.join(home, 'pm2.pid')
  const pid = fs.existsSync(pidFile) ? Number(fs.readFileSync(pidFile, 'utf8').trim()) : null
  try {
    execFileSync(process.execPath, [PM2, 'kill'], { env: { ...process.env, PM2_HOME: home }, stdio: 'ignore', timeout: 20000 })
  } catch {}
  if (pid && isAlive(pid)) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {}
  }
  for (let i = 0; i < 200 && pid && isAlive(pid); i++) await sleep(10)
  fs.rmSync(home, { recursive: true, force: true })
}

module.exports = async function logs({ runs }) {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-bench-logs-'))
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-bench-pm2-'))
  // Whatever happens (an error, ^C), pm2's daemon goes with this process.
  const onExit = () => {
    try {
      const pid = Number(fs.readFileSync(path.join(home, 'pm2.pid'), 'utf8').trim())
      if (pid) process.kill(pid, 'SIGKILL')
    } catch {}
  }
  process.on('exit', onExit)
  const contenders = [
    { name: 'straight to a file (no manager; the reference)', run: straight, reference: true },
    { name: 'into a pipe that cat copies to a file (the floor of any pipe reader)', run: piped },
    { name: 'backend-process-manager, logs on (defaults: 10 MB files, keep 5)', run: ours(undefined) },
    { name: 'backend-process-manager, logs: false (pipe read, lines to JS only)', run: ours(false) },
    { name: 'pm2 7 (defaults: raw chunks, its fastest)', run: pm2(home, []) },
    { name: 'pm2 7 --time (each chunk stamped, as ours frames lines)', run: pm2(home, ['--time']) },
  ]
  const got = contenders.map(() => [])
  const failures = contenders.map(() => [])
  try {
    for (let r = 0; r < runs; r++) {
      for (const [i, c] of contenders.entries()) {
        const dir = fs.mkdtempSync(path.join(base, 'run-'))
        try {
          got[i].push(await c.run(dir, r))
        } catch (err) {
          failures[i].push(err.message.split('\n')[0])
        } finally {
          fs.rmSync(dir, { recursive: true, force: true })
        }
      }
    }
  } finally {
    await killPm2(home)
    process.off('exit', onExit)
    fs.rmSync(base, { recursive: true, force: true })
  }
  const rows = contenders.map((c, i) => {
    const runsOf = got[i]
    const rates = runsOf.map((x) => x.rate)
    const faults = runsOf.reduce((s, x) => s + x.faults, 0)
    const missing = runsOf.filter((x) => !x.rotated && Number.isFinite(x.expected) && x.lines !== x.expected).length
    const notes = []
    if (failures[i].length) notes.push(`${failures[i].length} run(s) failed: ${[...new Set(failures[i])].join('; ')}`)
    if (faults) notes.push(`${faults} line(s) dropped, repeated or split in ${runsOf.length} run(s)`)
    if (missing) notes.push(`${missing} run(s) with lines missing from the log`)
    const warned = [...new Set(runsOf.flatMap((x) => x.warnings ?? []))]
    if (warned.length) notes.push(`warnings: ${warned.join('; ')}`)
    if (runsOf.some((x) => x.rotated)) notes.push('rotated: the kept window (the last ~60 MB) was checked')
    return {
      name: c.name,
      reference: c.reference,
      n: rates.length,
      median: quantile(rates, 0.5),
      p95: quantile(rates, 0.05),
      writeRate: quantile(runsOf.map((x) => x.writeRate), 0.5),
      loggedMs: quantile(runsOf.map((x) => x.loggedMs), 0.5),
      cpuMs: quantile(runsOf.map((x) => x.cpuMs), 0.5),
      correct: failures[i].length === 0 && faults === 0 && missing === 0 && runsOf.every((x) => x.sawDone),
      note: notes.join('; ') || undefined,
    }
  })
  return {
    title: `Log throughput: a backend writing ${LOG_BYTES / 1e6} MB of 100-byte lines to stdout as fast as it can (${runs} runs each): the rate until its last line was in the log file, and its own write rate`,
    unit: 'MB/s, higher is better; p95: the slow tail (5th percentile); ratios against the straight-to-file row',
    higherIsBetter: true,
    columns: [{ key: 'writeRate', label: 'backend write MB/s' }, { key: 'loggedMs', label: 'all in the log (ms)' }, { key: 'cpuMs', label: 'manager cpu ms' }],
    rows,
  }
}
