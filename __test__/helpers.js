'use strict'
// Shared test helpers. Every helper that creates something registers its cleanup with the test context,
// so nothing is left behind even when an assertion fails.
const fs = require('node:fs')
const os = require('node:os')
const net = require('node:net')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { once } = require('node:events')
const { ProcessManager } = require('..')

const ROOT = path.resolve(__dirname, '..')
const FIXTURE = path.join(__dirname, 'fixtures', 'backend.js')

/** A fresh state folder, removed after the test. */
function tempDir(t, prefix = 'bpm-test-') {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
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

/** A run of `count` consecutive ports, all free now (each checked), starting at a random high port. */
async function freeRun(count) {
  const { isPortAvailable } = require('..')
  for (let tries = 0; tries < 200; tries++) {
    const start = 20000 + Math.floor(Math.random() * 40000)
    let ok = true
    for (let p = start; p < start + count && ok; p++) ok = await isPortAvailable(p)
    if (ok) return start
  }
  throw new Error(`no run of ${count} free ports found`)
}

/** Alive and not a zombie (a zombie has exited; only its entry waits for its parent). */
function isAlive(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
    return state !== 'Z' && state !== 'X'
  } catch {
    return false
  }
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

/** Kills a process this test started, if it still runs. */
function killIfAlive(pid, signal = 'SIGKILL') {
  try {
    if (pid > 1 && isAlive(pid)) process.kill(pid, signal)
  } catch {}
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
  pm.on('ready', (b) => started.push(b.pid))
  pm.on('stdout', (line) => {
    const m = /^GRANDCHILD (\d+)$/.exec(line)
    if (m) grandchildren.push(Number(m[1]))
  })
  t.after(async () => {
    await pm.stopBackend().catch(() => {})
    for (const pid of [...started, ...grandchildren]) killIfAlive(pid)
  })
  return { pm, stateDir, logger, grandchildren }
}

/** Starts a helper Node script (an "app" owning a backend) and collects its stdout lines. */
function startScript(t, code, env = {}) {
  const child = spawn(process.execPath, ['-e', code], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const lines = []
  let stderr = ''
  let buffer = ''
  const waiters = []
  child.stdout.on('data', (d) => {
    buffer += d
    let i
    while ((i = buffer.indexOf('\n')) >= 0) {
      lines.push(buffer.slice(0, i))
      buffer = buffer.slice(i + 1)
      for (const w of [...waiters]) w()
    }
  })
  child.stderr.on('data', (d) => (stderr += d))
  const exited = once(child, 'exit')
  t.after(() => killIfAlive(child.pid))
  /** Resolves with the first stdout line matching `re`. */
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
      const timer = setTimeout(() => reject(new Error(`no line ${re} within ${timeoutMs} ms; stdout ${JSON.stringify(lines)}, stderr ${stderr}`)), timeoutMs)
      waiters.push(check)
      check()
      child.once('exit', () => setImmediate(() => {
        if (waiters.includes(check)) {
          clearTimeout(timer)
          reject(new Error(`script exited without ${re}; stderr: ${stderr}`))
        }
      }))
    })
  return { child, lines, line, exited, stderr: () => stderr }
}

module.exports = { ROOT, FIXTURE, tempDir, holdPort, freeRun, isAlive, waitFor, killIfAlive, memoryLogger, fixtureManager, startScript }
