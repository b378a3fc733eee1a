'use strict'
// Shared test helpers. Every helper that creates something registers its cleanup with the test context,
// so nothing is left behind even when an assertion fails.
const fs = require('node:fs')
const os = require('node:os')
const net = require('node:net')
const path = require('node:path')
const http = require('node:http')
const { spawn, execFile } = require('node:child_process')
const { once } = require('node:events')
const { ProcessManager } = require('..')
const { procStat, isAlive, processTree, groupMembers } = require('./procs')

const ROOT = path.resolve(__dirname, '..')
const FIXTURE = path.join(__dirname, 'fixtures', 'backend.js')
const CLI = path.join(ROOT, 'cli.js')

/**
 * `skip` values that say why a test does not run on a platform (node:test reports the reason):
 * - posixOnly: the behaviour under test is POSIX (signals, /proc, process groups, file modes, tmux…): skipped
 *   on Windows, where the Rust tests in src/os/win check the Windows counterpart.
 * - wineLacks: Windows behaviour Wine 8 does not have (docs/platforms.md, with the evidence): skipped only
 *   under Wine (BPM_UNDER_WINE=1, set by scripts/test-wine.sh); runs on Windows.
 * - wineUnexplained: fails under Wine for a reason not yet found (docs/platforms.md): skipped only under Wine.
 */
/** How an outside kill (`process.kill(pid, 'SIGKILL')`) ends a process: a signal on POSIX, TerminateProcess's exit code 1 on Windows. */
const KILLED = process.platform === 'win32' ? { exitCode: 1, signal: null } : { exitCode: null, signal: 'SIGKILL' }
const UNDER_WINE = process.platform === 'win32' && process.env.BPM_UNDER_WINE === '1'
const posixOnly = (reason) => process.platform === 'win32' && `POSIX-only: ${reason}`
/** `skip` for a test that reads /proc or drives Linux programs (Chromium at /usr/bin, xdg-open): its reason off Linux. */
const linuxOnly = (reason) => process.platform !== 'linux' && `Linux-only: ${reason}`
const wineLacks = (reason) => UNDER_WINE && `Wine 8 lacks: ${reason}`
const wineUnexplained = (reason) => UNDER_WINE && `fails under Wine, not yet explained: ${reason}`

/** A fresh state folder, removed after the test. */
function tempDir(t, prefix = 'bpm-test-') {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  // Every backend of this test file still running is stopped first (its manager writes its output into the
  // state folder's logs until then; tests in a file run one at a time), then the folder is removed —
  // retried, for the last lines of a backend that ended by itself.
  // A failing hook would skip the test's later hooks (its process cleanup): a folder that still cannot be
  // removed is tried once more when the test process exits, and said so.
  t.after(async () => {
    await ProcessManager.stopAll().catch(() => {})
    try {
      fs.rmSync(dir, { recursive: true, force: true, maxRetries: 5 })
    } catch (err) {
      t.diagnostic(`${dir} could not be removed yet (${err.code}); removed at exit`)
      process.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }))
    }
  })
  return dir
}

/** Listens on `host:port` (port 0: any), closed after the test. `ipv6Only` keeps a `::` socket off IPv4. */
async function holdPort(t, host, port = 0, { ipv6Only = false } = {}) {
  const server = net.createServer()
  server.listen({ host, port, ipv6Only, exclusive: true })
  await once(server, 'listening')
  t.after(() => new Promise((resolve) => server.close(resolve)))
  return server.address().port
}

/**
 * A run of `count` consecutive ports, all free now (each checked), at random in 20000-32767: below the ports
 * the OS hands out for outgoing connections and `listen(0)` (Linux 32768-60999, Windows and macOS from 49152),
 * which the other test files running at the same time take by the thousand; a run in their range could be
 * taken between this check and the test's start (seen once: nodemon's preferred port).
 */
async function freeRun(count) {
  const { isPortAvailable } = require('..')
  for (let tries = 0; tries < 200; tries++) {
    const start = 20000 + Math.floor(Math.random() * (32768 - count - 20000))
    let ok = true
    for (let p = start; p < start + count && ok; p++) ok = await isPortAvailable(p)
    if (ok) return start
  }
  throw new Error(`no run of ${count} free ports found`)
}

/** The PID record files of a state folder (none when it does not exist). */
function records(dir) {
  return fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith('.json')) : []
}

/** Polls `predicate` (for things no event announces, like another process's death) until true or timeout. */
async function waitFor(predicate, timeoutMs = 5000, what = 'condition') {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (await predicate()) return
    await new Promise((r) => setTimeout(r, 10))
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
}

/**
 * What tells the process now at `pid` from a later one given the same pid, or null when none runs there:
 * Linux: its start time in clock ticks (/proc); elsewhere: when it started (ms since the epoch, a range: its
 * age from the addon, taken from the clock before and after asking), a promise.
 */
function identityOf(pid) {
  if (process.platform === 'linux') return procStat(pid)?.startTicks ?? null
  const { processUsage } = require('..')
  const before = Date.now()
  return processUsage([pid]).then(([usage]) => {
    const after = Date.now()
    return usage === undefined ? null : { from: before - usage.elapsedMs, to: after - usage.elapsedMs }
  }, () => null)
}

function sameIdentity(a, b) {
  if (a === null || b === null) return false
  if (typeof a === 'number') return a === b
  // Start times read at two moments: the same process when the ranges meet (20 ms for clock steps).
  return a.from <= b.to + 20 && b.from <= a.to + 20
}

/**
 * The processes the tests learned of and may kill later, each with its identity as it was then. A pid alone
 * is not enough: Windows (and Wine) give a freed pid to the next process at once, and Linux reuses pids after
 * pid_max (32768 here) of them; a cleanup that killed "the pid of a backend that ended long ago" killed
 * another test file's process (seen under Wine: a file's process ended midway, a backend died at its start).
 */
const identities = new Map()

/** Notes `pid` as a process the test may kill later: the one there now. Returns `pid`. */
function own(pid) {
  if (pid > 1) identities.set(pid, identityOf(pid))
  return pid
}

/**
 * Kills a process this test started (noted with `own()` when learned, or the one at `pid` now), if it still
 * runs, and only if it is that process, not a later one given its pid. Off Linux this resolves once done.
 */
function killIfAlive(pid, signal = 'SIGKILL') {
  if (!(pid > 1)) return undefined
  if (!identities.has(pid)) own(pid)
  const kill = (then, now) => {
    try {
      if (sameIdentity(then, now)) process.kill(pid, signal)
    } catch {}
  }
  if (process.platform === 'linux') return kill(identities.get(pid), identityOf(pid))
  return Promise.all([identities.get(pid), identityOf(pid)]).then(([then, now]) => kill(then, now))
}

/** Whether the process noted at `pid` (`own()`) still runs: alive, and not a later process given its pid. */
async function stillRuns(pid) {
  return isAlive(pid) && sameIdentity(await identities.get(pid), await identityOf(pid))
}

/** Kills each of `pids` as `killIfAlive()` does; resolves once done. */
async function killAll(pids, signal = 'SIGKILL') {
  await Promise.all([...pids].map((p) => killIfAlive(p, signal)))
}

/** Notes `pids` now (`own()`) and kills them after the test, the same processes only. */
function killAfter(t, ...pids) {
  for (const p of pids) own(p)
  t.after(() => killAll(pids))
}

/**
 * Kills a child process this test spawned and every descendant it has now; resolves once they are all gone.
 * Nothing is done once the child has been reaped (its `exit` came): its pid may belong to another process.
 */
async function killTree(child, timeoutMs = 5000) {
  if (child.exitCode !== null || child.signalCode !== null) return
  const pids = processTree(child.pid)
  for (const p of pids) own(p)
  await killAll(pids)
  await waitFor(async () => (await Promise.all(pids.map(stillRuns))).every((runs) => !runs), timeoutMs, `the processes ${pids.join(', ')} to end`)
}

/** A logger that keeps lines for assertions. */
function memoryLogger() {
  const lines = []
  const add = (level) => (m) => lines.push(`${level}: ${m}`)
  return { lines, info: add('info'), warn: add('warn'), error: add('error') }
}

/**
 * A manager for the fixture backend with a private state folder; after the test its backend is stopped and
 * every pid it printed as a grandchild is killed if still alive.
 */
function fixtureManager(t, options = {}) {
  // Registered first, so the backend is stopped (its record and last log lines written) before the state
  // folder is removed: after-hooks run in the order they were added.
  let stopping = () => {}
  t.after(() => stopping())
  const stateDir = options.stateDir ?? tempDir(t)
  const logger = options.logger ?? memoryLogger()
  const pm = new ProcessManager({
    name: 'fixture',
    command: process.execPath,
    args: [FIXTURE],
    stopTimeoutMs: 2000,
    startTimeoutMs: 5000,
    ...options,
    stateDir,
    logger,
  })
  const started = []
  const grandchildren = []
  const lines = []
  const waiters = new Set()
  pm.on('ready', (b) => started.push(own(b.pid), ...(b.replicas ?? []).map((r) => own(r.pid))))
  pm.on('stdout', (line) => {
    const m = /^GRANDCHILD (\d+)$/.exec(line)
    if (m) grandchildren.push(own(Number(m[1])))
    // The fixture's announcements come first; a backend flooding its output must not fill the test's memory.
    if (lines.length < 1000) lines.push(line)
    for (const w of [...waiters]) w()
  })
  stopping = async () => {
    await pm.stopBackend().catch(() => {})
    await killAll([...started, ...grandchildren])
  }
  /** Resolves once the backend has written `count` stdout lines matching `re` (its BOOT line, grandchildren…). */
  const seen = (re, count = 1, timeoutMs = 10000) =>
    new Promise((resolve, reject) => {
      const check = () => {
        const found = lines.filter((l) => re.test(l))
        if (found.length >= count) {
          waiters.delete(check)
          clearTimeout(timer)
          resolve(found)
        }
      }
      const timer = setTimeout(() => {
        waiters.delete(check)
        reject(new Error(`no ${count} lines ${re} within ${timeoutMs} ms: ${JSON.stringify(lines)}`))
      }, timeoutMs)
      waiters.add(check)
      check()
    })
  return { pm, stateDir, logger, grandchildren, seen }
}

/** Starts a helper Node script (an "app" owning a backend) and collects its stdout lines. */
function startScript(t, code, env = {}) {
  return startProcess(t, process.execPath, ['-e', code], { env })
}

/**
 * Starts a process (with `cwd` and `env` over this one's) and collects its output lines (stdout, and stderr
 * too with `mergeStderr`); it and everything it started are killed after the test.
 */
function startProcess(t, command, args, { cwd = ROOT, env = {}, mergeStderr = false } = {}) {
  const child = spawn(command, args, {
    cwd,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const lines = []
  let stderr = ''
  const waiters = []
  const collect = (stream) => {
    let buffer = ''
    stream.on('data', (d) => {
      buffer += d
      let i
      while ((i = buffer.indexOf('\n')) >= 0) {
        lines.push(buffer.slice(0, i))
        buffer = buffer.slice(i + 1)
        for (const w of [...waiters]) w()
      }
    })
  }
  collect(child.stdout)
  if (mergeStderr) collect(child.stderr)
  child.stderr.on('data', (d) => (stderr += d))
  const exited = once(child, 'exit')
  // The app's backend and anything else it started go with it.
  t.after(() => killTree(child))
  /** Resolves with the first output line matching `re`. */
  const line = (re, timeoutMs = 10000) =>
    new Promise((resolve, reject) => {
      const check = () => {
        const found = lines.find((l) => re.test(l))
        if (found !== undefined) {
          clearTimeout(timer)
          waiters.splice(waiters.indexOf(check), 1)
          resolve(found)
        }
      }
      const timer = setTimeout(() => reject(new Error(`no line ${re} within ${timeoutMs} ms; output ${JSON.stringify(lines)}, stderr ${stderr}`)), timeoutMs)
      waiters.push(check)
      check()
      child.once('exit', () => setImmediate(() => {
        if (waiters.includes(check)) {
          clearTimeout(timer)
          reject(new Error(`the process exited without ${re}; output ${JSON.stringify(lines)}, stderr: ${stderr}`))
        }
      }))
    })
  return { child, lines, line, exited, stderr: () => stderr }
}


/** Runs `node cli.js …args`; resolves with its exit code and output. */
function cli(args, { cwd = ROOT, env = {} } = {}) {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { cwd, env: { ...process.env, ...env }, timeout: 30000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr })
    })
  })
}

/**
 * One request without keep-alive or proxy (a GET unless `method`; `body` is sent whole): `{ status, body }`;
 * rejects when nothing answers, or the connection ends without an answer.
 */
function httpRequest(url, { method = 'GET', headers = {}, body, timeoutMs = 5000 } = {}) {
  return new Promise((resolve, reject) => {
    const sent = body === undefined ? headers : { ...headers, 'content-length': body.length }
    const req = http.request(url, { method, agent: false, timeout: timeoutMs, headers: sent }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (d) => (text += d))
      res.on('end', () => resolve({ status: res.statusCode, body: text }))
      res.on('error', reject)
    })
    req.on('timeout', () => req.destroy(new Error(`no answer from ${url} within ${timeoutMs} ms`)))
    req.on('error', reject)
    req.end(body)
  })
}

/** One GET without keep-alive or proxy: `{ status, body }`; rejects when nothing answers. */
function httpGet(url, headers = {}, timeoutMs = 5000) {
  return httpRequest(url, { headers, timeoutMs })
}

/** A PID record as this library writes it (with its marker field), for tests that plant records. */
function recordOf(fields) {
  return { manager: 'backend-process-manager', version: 1, host: '127.0.0.1', startedAt: Date.now(), restarts: 0, ...fields }
}

module.exports = {
  KILLED,
  UNDER_WINE,
  posixOnly,
  linuxOnly,
  wineLacks,
  wineUnexplained,
  recordOf,
  startProcess,
  ROOT,
  FIXTURE,
  CLI,
  tempDir,
  holdPort,
  freeRun,
  procStat,
  isAlive,
  processTree,
  groupMembers,
  records,
  waitFor,
  own,
  killIfAlive,
  killAll,
  killAfter,
  killTree,
  memoryLogger,
  fixtureManager,
  startScript,
  cli,
  httpGet,
  httpRequest,
}
