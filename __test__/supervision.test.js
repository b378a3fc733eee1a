'use strict'
// Supervision and isolation with real processes: restarts with backoff, the restart limit, the watchdog,
// the memory limit, stats of the whole tree, priority and limits, the token, the inherited environment and
// the polite shutdown requests. Every test stops what it started and kills leftovers by pid.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { once } = require('node:events')
const { ROOT, tempDir, freeRun, isAlive, records, waitFor, fixtureManager, httpGet, holdPort, KILLED, linuxOnly, UNDER_WINE, killAfter } = require('./helpers')

/** The next `count` events of `kind`, in order. */
function next(pm, kind, count = 1, timeoutMs = 15000) {
  return new Promise((resolve, reject) => {
    const seen = []
    const timer = setTimeout(() => {
      pm.off(kind, on)
      reject(new Error(`only ${seen.length} of ${count} '${kind}' events within ${timeoutMs} ms`))
    }, timeoutMs)
    const on = (e) => {
      seen.push(e)
      if (seen.length === count) {
        clearTimeout(timer)
        pm.off(kind, on)
        resolve(seen)
      }
    }
    pm.on(kind, on)
  })
}

const procStatField = (pid, field) => {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[field - 3])
}

test('a backend SIGKILLed from outside is restarted on the same port; its record is replaced', async (t) => {
  const { pm, stateDir } = fixtureManager(t, { port: await freeRun(3), restart: true })
  const first = await pm.startBackend(ROOT)
  const restarts = []
  pm.on('restart', (e) => restarts.push(e))
  const ready = next(pm, 'ready')
  const killedAt = Date.now()
  process.kill(first.pid, 'SIGKILL')
  const [second] = await ready
  const took = Date.now() - killedAt
  t.diagnostic(`restarted ${took} ms after the kill`)
  // The default first restart delay is 100 ms; the rest is a process start (a node.exe start under Wine on a
  // busy machine took 1874 ms once). The bound tells a restart from none, with room for a loaded machine.
  assert.ok(took < (UNDER_WINE ? 10000 : 3000), `back after ${took} ms`)
  assert.equal(second.port, first.port, 'the port is kept')
  assert.notEqual(second.pid, first.pid)
  assert.deepEqual(pm.backend, second)
  assert.equal(restarts.length, 1)
  assert.deepEqual(
    { attempt: restarts[0].attempt, reason: restarts[0].reason, pid: restarts[0].pid, signal: restarts[0].signal },
    { attempt: 1, reason: 'exit', pid: first.pid, signal: KILLED.signal },
  )
  assert.deepEqual(records(stateDir), [`fixture-${second.pid}.json`], 'the old record is gone')
  const record = JSON.parse(fs.readFileSync(path.join(stateDir, `fixture-${second.pid}.json`), 'utf8'))
  assert.equal(record.restarts, 1)
  assert.equal((await pm.stats()).restarts, 1)
})

test('a backend that crashes at once every time fails after maxRestarts, with growing delays; nothing is left', async (t) => {
  const once = path.join(tempDir(t), 'first')
  const restart = { maxRestarts: 3, initialDelayMs: 50, maxDelayMs: 1000 }
  const { pm, stateDir } = fixtureManager(t, { port: await freeRun(3), restart, env: { ONCE_FILE: once, CRASH_AGAIN: '1' } })
  const first = await pm.startBackend(ROOT)
  const exits = []
  pm.on('exit', (e) => exits.push(e))
  const restarts = []
  pm.on('restart', (e) => restarts.push(e))
  const failed = next(pm, 'failed')
  process.kill(first.pid, 'SIGKILL')
  const [event] = await failed
  assert.equal(event.restarts, 3)
  assert.match(event.error, /stays down/)
  assert.deepEqual(restarts.map((r) => r.delayMs), [50, 100, 200], 'the delay doubles')
  assert.deepEqual(restarts.map((r) => r.attempt), [1, 2, 3])
  assert.deepEqual(restarts.slice(1).map((r) => r.exitCode), [7, 7], 'restarts that crash count as exits')
  assert.equal(pm.backend, null)
  assert.equal(await pm.stats(), null)
  for (const e of exits) assert.equal(isAlive(e.pid), false)
  assert.deepEqual(records(stateDir), [])
  assert.equal(await pm.stopBackend(), null, 'nothing runs')
})

test('stopBackend() during a restart delay cancels the restart for good', async (t) => {
  const { pm, stateDir } = fixtureManager(t, { port: await freeRun(3), restart: { initialDelayMs: 1500 } })
  const first = await pm.startBackend(ROOT)
  const scheduled = next(pm, 'restart')
  process.kill(first.pid, 'SIGKILL')
  await scheduled
  const starts = []
  pm.on('ready', (b) => starts.push(b))
  assert.equal(await pm.stopBackend(), null, 'nothing was running')
  // Past the moment the restart was due, nothing started.
  await new Promise((resolve) => setTimeout(resolve, 2000))
  assert.deepEqual(starts, [])
  assert.equal(pm.backend, null)
  assert.deepEqual(records(stateDir), [])
  // startBackend() after that starts afresh.
  const again = await pm.startBackend(ROOT)
  assert.equal(again.port, first.port)
})

test('a restart whose port another program took moves to a new port: port-changed, and ready, backend and url name the new one', async (t) => {
  // The port is taken once the restart is scheduled and before it is due: 2 s leaves a slow machine time.
  const { pm, stateDir } = fixtureManager(t, { port: await freeRun(3), restart: { initialDelayMs: 2000 } })
  const first = await pm.startBackend(ROOT)
  const scheduled = next(pm, 'restart')
  const changed = next(pm, 'port-changed')
  const ready = next(pm, 'ready')
  process.kill(first.pid, 'SIGKILL')
  await scheduled
  // Another program takes the port during the restart delay.
  await holdPort(t, '127.0.0.1', first.port)
  const [moved] = await changed
  const [second] = await ready
  assert.equal(moved.previous, first.port)
  assert.notEqual(moved.port, first.port)
  assert.equal(second.port, moved.port, 'ready names the new port')
  assert.equal(second.url, `http://127.0.0.1:${moved.port}`)
  assert.deepEqual(pm.backend, second)
  assert.equal((await httpGet(`${pm.backend.url}/`)).body, `pid ${second.pid}\n`, 'the url reaches the backend')
  const record = JSON.parse(fs.readFileSync(path.join(stateDir, `fixture-${second.pid}.json`), 'utf8'))
  assert.equal(record.port, moved.port)
})

test('health turning 500: unhealthy, then restarted with reason "unhealthy"', async (t) => {
  const statusFile = path.join(tempDir(t), 'status')
  const once = path.join(tempDir(t), 'first')
  const { pm } = fixtureManager(t, {
    port: await freeRun(3),
    restart: { initialDelayMs: 50 },
    healthIntervalMs: 100,
    unhealthyThreshold: 2,
    // Only the first process reads the status file: its restart is healthy.
    env: { HEALTH_STATUS_FILE: statusFile, ONCE_FILE: once },
  })
  const first = await pm.startBackend(ROOT)
  const unhealthy = next(pm, 'unhealthy')
  const exited = next(pm, 'exit')
  const restarted = next(pm, 'restart')
  const ready = next(pm, 'ready')
  fs.writeFileSync(statusFile, '500')
  const [verdict] = await unhealthy
  assert.equal(verdict.reason, 'health')
  assert.equal(verdict.failures, 2)
  assert.match(verdict.error, /500/)
  const [exit] = await exited
  assert.deepEqual([exit.pid, exit.expected, exit.reason], [first.pid, false, 'unhealthy'])
  const [restart] = await restarted
  assert.equal(restart.reason, 'unhealthy')
  fs.rmSync(statusFile)
  const [second] = await ready
  assert.notEqual(second.pid, first.pid)
  assert.equal(isAlive(first.pid), false)
})

test('without restart, an unhealthy backend is only reported, then healthy again: same process', async (t) => {
  const statusFile = path.join(tempDir(t), 'status')
  const { pm } = fixtureManager(t, { port: await freeRun(3), healthIntervalMs: 100, unhealthyThreshold: 2, env: { HEALTH_STATUS_FILE: statusFile } })
  const b = await pm.startBackend(ROOT)
  const unhealthy = next(pm, 'unhealthy')
  fs.writeFileSync(statusFile, '500')
  await unhealthy
  assert.equal((await pm.stats()).healthy, false)
  const healthy = next(pm, 'healthy')
  fs.writeFileSync(statusFile, '200')
  const [back] = await healthy
  assert.equal(typeof back.latencyMs, 'number')
  assert.deepEqual(pm.backend, b, 'the same process runs')
  assert.equal(isAlive(b.pid), true)
  assert.equal((await pm.stats()).healthy, true)
})

test('a backend allocating past maxMemoryBytes is restarted with reason "memory"', async (t) => {
  const once = path.join(tempDir(t), 'first')
  const { pm, seen } = fixtureManager(t, {
    port: await freeRun(3),
    restart: { initialDelayMs: 50 },
    maxMemoryBytes: 150 * 2 ** 20,
    statsIntervalMs: 200,
    env: { ALLOCATE_MB: '200', ONCE_FILE: once },
  })
  const first = await pm.startBackend(ROOT)
  const unhealthy = next(pm, 'unhealthy')
  const restarted = next(pm, 'restart')
  await seen(/^ALLOCATED$/)
  const [verdict] = await unhealthy
  assert.equal(verdict.reason, 'memory')
  assert.ok(verdict.memoryBytes > 150 * 2 ** 20, String(verdict.memoryBytes))
  const [restart] = await restarted
  assert.deepEqual([restart.reason, restart.pid], ['memory', first.pid])
})

test('stats() of a busy backend with grandchildren: the whole tree, CPU as the kernel counts it; null after the stop', { skip: linuxOnly('reads CPU time and memory from /proc') }, async (t) => {
  const { pm, seen } = fixtureManager(t, { port: await freeRun(3), env: { BUSY_GRANDCHILD: '1', GRANDCHILDREN: '1' } })
  const b = await pm.startBackend(ROOT)
  const pids = [b.pid, ...(await seen(/^GRANDCHILD /, 2)).map((l) => Number(l.split(' ')[1]))]
  // The kernel's count of the tree's CPU time (utime + stime, in 1/100 s) beside each sample, so the rate is
  // checked against what the processes really used in the same window, however loaded the machine is.
  const cpuTicks = () =>
    pids.reduce((sum, pid) => {
      const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
      return sum + Number(fields[11]) + Number(fields[12])
    }, 0)
  assert.equal((await pm.stats()).cpuPercent, 0, 'the first sample has no rate yet')
  const [ticksBefore, before] = [cpuTicks(), performance.now()]
  await new Promise((resolve) => setTimeout(resolve, 1000))
  const stats = await pm.stats()
  const [ticksAfter, after] = [cpuTicks(), performance.now()]
  const used = ((ticksAfter - ticksBefore) * 10) / (after - before) * 100
  const rss = pids.reduce((sum, pid) => sum + Number(fs.readFileSync(`/proc/${pid}/statm`, 'utf8').split(' ')[1]) * 4096, 0)
  t.diagnostic(`cpu ${stats.cpuPercent}% vs /proc ${used.toFixed(1)}%, memory ${stats.memoryBytes} vs /proc ${rss}, ${stats.processCount} processes`)
  assert.equal(stats.pid, b.pid)
  assert.equal(stats.processCount, 3)
  assert.ok(used > 10, `the busy grandchild used ${used}% of a core`)
  assert.ok(Math.abs(stats.cpuPercent - used) <= Math.max(10, used * 0.2), `${stats.cpuPercent}% vs ${used}%`)
  assert.ok(Math.abs(stats.memoryBytes - rss) <= rss * 0.25, `${stats.memoryBytes} vs ${rss}`)
  assert.ok(stats.uptimeMs >= 1000)
  assert.equal(stats.healthy, true)
  assert.equal(typeof stats.healthLatencyMs, 'number')
  await pm.stopBackend()
  assert.equal(await pm.stats(), null)
})

test('stats events come every statsIntervalMs while it runs', async (t) => {
  const { pm } = fixtureManager(t, { port: await freeRun(3), statsIntervalMs: 100 })
  const b = await pm.startBackend(ROOT)
  const events = await next(pm, 'stats', 3)
  for (const e of events) assert.equal(e.pid, b.pid)
})

test("priority 'low' runs the backend at nice 10; limits.openFiles is its RLIMIT_NOFILE", { skip: linuxOnly('nice and RLIMIT_NOFILE from /proc') }, async (t) => {
  const { pm } = fixtureManager(t, { port: await freeRun(3), priority: 'low', limits: { openFiles: 512, coreDumps: false } })
  const b = await pm.startBackend(ROOT)
  assert.equal(procStatField(b.pid, 19), 10)
  const limits = fs.readFileSync(`/proc/${b.pid}/limits`, 'utf8')
  assert.match(limits, /Max open files\s+512\s+512/)
  assert.match(limits, /Max core file size\s+0\s+0/)
})

test('token: the backend gets a fresh secret per start, every probe sends it, others are refused', async (t) => {
  const { pm } = fixtureManager(t, { port: await freeRun(3), token: true, env: { REQUIRE_TOKEN: '1' } })
  const b = await pm.startBackend(ROOT)
  assert.match(b.token, /^[0-9a-f]{64}$/)
  assert.equal((await httpGet(`${b.url}/health`)).status, 401, 'a request without the token is refused')
  assert.equal((await httpGet(`${b.url}/health`, { authorization: `Bearer ${b.token}` })).status, 200)
  assert.equal(await pm.checkBackendHealth(b.port), true, 'the manager sends it')
  await pm.stopBackend()
  const again = await pm.startBackend(ROOT)
  assert.notEqual(again.token, b.token, 'a new token per start')
})

test('inheritEnv: false keeps the app environment out of the backend; PATH and env stay', async (t) => {
  process.env.BPM_APP_SECRET = 'do-not-leak'
  t.after(() => delete process.env.BPM_APP_SECRET)
  const { pm } = fixtureManager(t, { port: await freeRun(3), inheritEnv: false, env: { MINE: 'yes' } })
  const b = await pm.startBackend(ROOT)
  const env = JSON.parse((await httpGet(`${b.url}/env`)).body)
  assert.equal(env.BPM_APP_SECRET, undefined)
  assert.equal(env.MINE, 'yes')
  assert.equal(env.PATH, process.env.PATH)
  assert.equal(env.PORT, String(b.port))
})

test('shutdown.http stops a backend that ignores SIGTERM: not forced, exit code 0', async (t) => {
  const { pm } = fixtureManager(t, {
    port: await freeRun(3),
    stopTimeoutMs: 4000,
    shutdown: { http: 'POST /shutdown' },
    env: { IGNORE_SIGTERM: '1', SHUTDOWN_PATH: '/shutdown' },
  })
  const b = await pm.startBackend(ROOT)
  const result = await pm.stopBackend()
  assert.deepEqual([result.forced, result.exitCode, result.signal], [false, 0, null])
  assert.ok(result.durationMs < 2000, `${result.durationMs} ms`)
  assert.equal(isAlive(b.pid), false)
})

test('shutdown.stdin stops a backend that exits when its input ends', async (t) => {
  const { pm } = fixtureManager(t, { port: await freeRun(3), shutdown: { stdin: true }, env: { IGNORE_SIGTERM: '1', EXIT_ON_STDIN_END: '1' } })
  const b = await pm.startBackend(ROOT)
  const result = await pm.stopBackend()
  assert.deepEqual([result.forced, result.exitCode], [false, 0])
  assert.equal(isAlive(b.pid), false)
})

test('a restarting backend keeps the app alive; a script exits by itself after the stop', async (t) => {
  const code = `
    const { ProcessManager } = require(${JSON.stringify(ROOT)})
    const pm = new ProcessManager({ name: 'keep', command: process.execPath, args: [${JSON.stringify(path.join(__dirname, 'fixtures', 'backend.js'))}],
      stateDir: ${JSON.stringify(tempDir(t))}, port: ${await freeRun(3)}, logger: false, restart: { initialDelayMs: 300 } })
    pm.startBackend(process.cwd()).then((b) => {
      pm.once('restart', () => console.log('RESTARTING'))
      pm.once('ready', (again) => { console.log('BACK', again.pid); pm.stopBackend().then(() => console.log('STOPPED')) })
      process.kill(b.pid, 'SIGKILL')
    })`
  const { startScript } = require('./helpers')
  const app = startScript(t, code)
  await app.line(/^RESTARTING$/)
  const pid = Number((await app.line(/^BACK \d+$/)).split(' ')[1])
  killAfter(t, pid)
  await app.line(/^STOPPED$/)
  const [exitCode] = await app.exited
  assert.equal(exitCode, 0)
  assert.equal(isAlive(pid), false)
})
