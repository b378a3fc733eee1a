'use strict'
// Replicas with real processes: the balancer in front of them (spread, failover, reload with draining),
// the socket handed over (listen: 'fd'), and a stop that leaves nothing. Load is sequential requests on
// fresh connections; a replica is killed between two of them, so a failure can only come from the
// manager (routing to a dead replica), never from a request cut in the middle. Every test stops what it
// started and kills leftovers by pid.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const net = require('node:net')
const path = require('node:path')
const { ROOT, tempDir, freeRun, isAlive, records, waitFor, killIfAlive, fixtureManager, httpGet, cli, posixOnly } = require('./helpers')
const { isPortAvailable } = require('..')

/** The pid a fixture answer names. */
const pidOf = (body) => Number(/^pid (\d+)/.exec(body)?.[1])

/**
 * Sequential requests on fresh connections until `until()` is true (checked between requests); `between`
 * runs between request `at` and the next. Every failure is kept.
 */
async function load(url, { until, between = {} }) {
  const served = []
  const failures = []
  for (let i = 0; !(await until(i)); i++) {
    if (between[i]) await between[i]()
    try {
      const { status, body } = await httpGet(url)
      if (status !== 200) failures.push(`request ${i}: status ${status}`)
      else served.push(pidOf(body))
    } catch (e) {
      failures.push(`request ${i}: ${e.message}`)
    }
  }
  return { served, failures }
}

/** Pids of every replica the manager reports now. */
const replicaPids = (pm) => (pm.backend?.replicas ?? []).map((r) => r.pid)

/** Each replica's pid, port and health, kept for the cleanup too. */
function trackReplicas(t, pm) {
  const seen = new Set()
  const note = (info) => {
    seen.add(info.pid)
    for (const r of info.replicas ?? []) seen.add(r.pid)
  }
  pm.on('ready', note)
  t.after(() => {
    for (const pid of seen) killIfAlive(pid)
  })
  return seen
}

test('3 replicas behind the public port: fresh connections reach all 3; one record each; a stop leaves nothing', async (t) => {
  const { pm, stateDir } = fixtureManager(t, { port: await freeRun(4), replicas: 3 })
  trackReplicas(t, pm)
  const info = await pm.startBackend(ROOT)
  assert.equal(info.replicas.length, 3)
  const pids = info.replicas.map((r) => r.pid)
  assert.equal(new Set(pids).size, 3)
  assert.ok(info.replicas.every((r) => r.healthy && r.port > 0 && r.port !== info.port))
  assert.equal(info.pid, pids[0], 'BackendInfo.pid is the first replica')
  // Each replica has a record, which names the public port.
  assert.deepEqual(records(stateDir).sort(), pids.map((p) => `fixture-${p}.json`).sort())
  for (const pid of pids) {
    const record = JSON.parse(fs.readFileSync(path.join(stateDir, `fixture-${pid}.json`), 'utf8'))
    assert.equal(record.replicaOf, info.port)
  }
  const { served, failures } = await load(info.url, { until: (i) => i === 60 })
  assert.deepEqual(failures, [])
  assert.deepEqual(new Set(served), new Set(pids), 'every replica served')
  for (const pid of pids) {
    const share = served.filter((p) => p === pid).length
    assert.ok(share >= 10, `replica ${pid} served ${share} of 60`)
  }
  // The CLI shows the replicas under their backend: one line for it (the public port), one per replica.
  const { stdout } = await cli(['status', '--state-dir', stateDir])
  const lines = stdout.split('\n')
  const head = lines.findIndex((l) => /^\s*-\s+fixture\s+\d+\s+3 replicas/.test(l))
  assert.ok(head >= 0, stdout)
  assert.ok(lines[head].includes(String(info.port)))
  for (const [i, r] of info.replicas.entries()) {
    assert.match(lines[head + 1 + i], new RegExp(`^\\s*\\d+\\s+replica \\(port \\d+\\)\\s+${info.port}\\s+running`))
  }
  const stats = await pm.stats()
  assert.equal(stats.replicas.length, 3)
  assert.equal(stats.processCount, 3)
  assert.equal(stats.memoryBytes, stats.replicas.reduce((sum, r) => sum + r.memoryBytes, 0))

  const stopped = await pm.stopBackend()
  assert.equal(stopped.replicas.length, 3)
  assert.deepEqual(stopped.replicas.map((r) => r.pid).sort(), [...pids].sort())
  assert.ok(pids.every((p) => !isAlive(p)), 'every replica is gone')
  assert.equal(await isPortAvailable(info.port), true, 'the public port is free')
  for (const r of info.replicas) assert.equal(await isPortAvailable(r.port), true, `replica port ${r.port} is free`)
  assert.deepEqual(records(stateDir), [])
  assert.equal(pm.backend, null)
})

test('one replica SIGKILLed under load: no request fails, and 3 healthy replicas are back within 5 s', async (t) => {
  const { pm } = fixtureManager(t, { port: await freeRun(4), replicas: 3, restart: { initialDelayMs: 50 } })
  trackReplicas(t, pm)
  const info = await pm.startBackend(ROOT)
  const victim = info.replicas[1].pid
  let restarted = null
  pm.on('ready', (e) => e.replica === 1 && (restarted = e))
  let killedAt = 0
  const healthyAgain = () => {
    const replicas = pm.backend?.replicas ?? []
    return replicas.length === 3 && replicas.every((r) => r.healthy) && !replicas.some((r) => r.pid === victim)
  }
  const { served, failures } = await load(info.url, {
    between: {
      20: () => {
        killedAt = Date.now()
        process.kill(victim, 'SIGKILL')
      },
    },
    until: (i) => i > 60 && healthyAgain() && restarted !== null,
  })
  const took = Date.now() - killedAt
  t.diagnostic(`${served.length} requests; 3 healthy replicas again ${took} ms after the kill`)
  assert.deepEqual(failures, [], 'no request failed')
  assert.ok(took < 5000, `healthy again after ${took} ms`)
  assert.ok(!isAlive(victim))
  const { served: later } = await load(info.url, { until: (i) => i === 30 })
  assert.ok(later.includes(restarted.pid), 'the restarted replica serves')
})

test('reload() under load replaces every replica with no failed request; the old processes are gone', async (t) => {
  const { pm, stateDir } = fixtureManager(t, { port: await freeRun(4), replicas: 3 })
  trackReplicas(t, pm)
  const info = await pm.startBackend(ROOT)
  const before = replicaPids(pm)
  let reloaded = null
  let done = false
  const { served, failures } = await load(info.url, {
    between: { 10: () => void (reloaded = pm.reload().finally(() => (done = true))) },
    until: (i) => i > 10 && done,
  })
  const after = await reloaded
  t.diagnostic(`${served.length} requests during the reload`)
  assert.deepEqual(failures, [], 'no request failed')
  const now = after.replicas.map((r) => r.pid)
  assert.equal(now.length, 3)
  assert.ok(now.every((p) => !before.includes(p)), 'every pid was replaced')
  assert.ok(before.every((p) => !isAlive(p)), 'the old processes are gone')
  assert.deepEqual(records(stateDir).sort(), now.map((p) => `fixture-${p}.json`).sort())
  assert.equal(after.port, info.port, 'the public port stays')
  const { served: later } = await load(info.url, { until: (i) => i === 30 })
  assert.deepEqual(new Set(later), new Set(now))
})

test("listen: 'fd' with 2 replicas: both serve, a kill under load fails nothing, and the port stays held while all are down", { skip: posixOnly("listen: 'fd' (a socket as fd 3) is refused on Windows") }, async (t) => {
  const { pm, stateDir } = fixtureManager(t, {
    port: await freeRun(2),
    replicas: 2,
    listen: 'fd',
    restart: { initialDelayMs: 1500, maxDelayMs: 1500 },
  })
  trackReplicas(t, pm)
  const info = await pm.startBackend(ROOT)
  assert.deepEqual(info.replicas.map((r) => r.port), [null, null])
  const pids = replicaPids(pm)
  // The kernel hands each connection to whichever replica accepts first: both do, over enough requests.
  const seen = new Set()
  const both = await load(info.url, { until: (i) => (seen.size === 2 && i >= 20) || i === 400 })
  for (const p of both.served) seen.add(p)
  assert.deepEqual(both.failures, [])
  assert.deepEqual(seen, new Set(pids), 'both replicas served')

  const { failures } = await load(info.url, {
    between: { 10: () => process.kill(pids[0], 'SIGKILL') },
    until: (i) => i === 40,
  })
  assert.deepEqual(failures, [], 'no request failed after a replica was killed')
  await waitFor(() => replicaPids(pm).length === 2, 10000, 'the killed replica to be back')

  // Every replica down (in its backoff): the socket is still the manager's, so the port is held, and a
  // client that connects meanwhile is served once a replica is back.
  const down = replicaPids(pm)
  const exits = new Promise((resolve) => {
    let n = 0
    pm.on('exit', () => ++n === 2 && resolve())
  })
  for (const pid of down) process.kill(pid, 'SIGKILL')
  await exits
  assert.equal(pm.backend, null, 'no replica runs')
  assert.equal(await isPortAvailable(info.port), false, 'the public port stays held')
  const other = net.createServer()
  const bound = await new Promise((resolve) => {
    other.once('error', () => resolve(false))
    other.listen(info.port, '127.0.0.1', () => resolve(true))
  })
  if (bound) other.close()
  assert.equal(bound, false, 'another program cannot take the port')
  const answered = await httpGet(info.url, {}, 10000)
  assert.equal(answered.status, 200, 'a request made while every replica was down is served')
  assert.ok(!down.includes(pidOf(answered.body)))

  await pm.stopBackend()
  assert.equal(await isPortAvailable(info.port), true)
  assert.deepEqual(records(stateDir), [])
})

test("listen: 'fd' with one process: reload() starts the new one beside the old, no request fails", { skip: posixOnly("listen: 'fd' (a socket as fd 3) is refused on Windows") }, async (t) => {
  // The old process answers what it accepted before it exits (GRACEFUL), as servers do on SIGTERM.
  const { pm } = fixtureManager(t, { port: await freeRun(2), listen: 'fd', env: { GRACEFUL: '1' } })
  trackReplicas(t, pm)
  const info = await pm.startBackend(ROOT)
  assert.equal(info.replicas, undefined)
  let reloaded = null
  let done = false
  const { failures } = await load(info.url, {
    between: { 5: () => void (reloaded = pm.reload().finally(() => (done = true))) },
    until: (i) => i > 5 && done,
  })
  const after = await reloaded
  assert.deepEqual(failures, [])
  assert.notEqual(after.pid, info.pid)
  assert.equal(after.port, info.port)
  assert.ok(!isAlive(info.pid))
  const { body } = await httpGet(info.url)
  assert.equal(pidOf(body), after.pid)
})

test('reload() of one process on its own port: stopped, then started again on that port; null when nothing runs', async (t) => {
  const { pm, stateDir } = fixtureManager(t, { port: await freeRun(2) })
  assert.equal(await pm.reload(), null)
  const info = await pm.startBackend(ROOT)
  const after = await pm.reload()
  assert.notEqual(after.pid, info.pid)
  assert.equal(after.port, info.port)
  assert.ok(!isAlive(info.pid))
  assert.deepEqual(records(stateDir), [`fixture-${after.pid}.json`])
  assert.deepEqual(pm.backend, after)
})

test('a replica that keeps crashing fails on its own while the other serves; the backend fails when none is left', async (t) => {
  const crash = path.join(tempDir(t), 'crash')
  const { pm, stateDir } = fixtureManager(t, {
    port: await freeRun(3),
    replicas: 2,
    restart: { maxRestarts: 1, initialDelayMs: 20 },
    env: { CRASH_IF_EXISTS: crash },
  })
  trackReplicas(t, pm)
  const failed = []
  pm.on('failed', (e) => failed.push(e))
  const info = await pm.startBackend(ROOT)
  const [first, second] = replicaPids(pm)
  fs.writeFileSync(crash, '') // every new process crashes from now on
  const secondFailed = new Promise((resolve) => pm.on('failed', (e) => e.replica === 1 && resolve(e)))
  process.kill(second, 'SIGKILL')
  const event = await secondFailed
  assert.match(event.error, /stays down/)
  assert.deepEqual(replicaPids(pm), [first], 'the other replica runs on')
  const { failures } = await load(info.url, { until: (i) => i === 20 })
  assert.deepEqual(failures, [], 'and serves every request')

  const allFailed = new Promise((resolve) => pm.on('failed', (e) => e.replica === undefined && resolve(e)))
  process.kill(first, 'SIGKILL')
  const last = await allFailed
  assert.match(last.error, /no replica/)
  assert.deepEqual(failed.map((e) => e.replica), [1, 0, undefined])
  await waitFor(() => pm.backend === null && !pm.active, 5000, 'the manager to be idle')
  assert.deepEqual(records(stateDir), [])
  assert.equal(await isPortAvailable(info.port), true, 'the public port is free')
})

test('a replica that cannot start fails the whole start: the others are stopped, nothing is left', async (t) => {
  const { pm, stateDir } = fixtureManager(t, {
    port: await freeRun(3),
    replicas: 3,
    // The first process to boot writes ONCE_FILE; every later one finds it and crashes: one or two
    // replicas come up, the rest cannot.
    env: { ONCE_FILE: path.join(tempDir(t), 'first'), CRASH_AGAIN: '1' },
  })
  const seen = trackReplicas(t, pm)
  const pids = []
  pm.on('stdout', (line) => /^BOOT (\d+)$/.test(line) && pids.push(Number(line.slice(5))))
  const port = pm.options.port
  const error = await pm.startBackend(ROOT).then(() => null, (e) => e)
  assert.equal(error?.code, 'ERR_BACKEND_EXITED')
  assert.equal(seen.size, 0, 'no ready event')
  assert.ok(pids.length >= 2)
  assert.ok(pids.every((p) => !isAlive(p)), 'every replica is gone')
  assert.deepEqual(records(stateDir), [])
  assert.equal(await isPortAvailable(port), true, 'the public port is free')
  assert.equal(pm.backend, null)
})

test('options: replicas out of range, an unknown balance, and listen fd with shutdown.http and replicas are refused', { skip: posixOnly("listen: 'fd' is refused on Windows before the other checks") }, () => {
  const { ProcessManager } = require('..')
  const make = (o) => () => new ProcessManager({ command: 'x', logger: false, ...o })
  assert.throws(make({ replicas: 0 }), { code: 'ERR_INVALID_ARG', message: /replicas/ })
  assert.throws(make({ replicas: 65 }), { code: 'ERR_INVALID_ARG', message: /replicas/ })
  assert.throws(make({ replicas: 1.5 }), { code: 'ERR_INVALID_ARG' })
  assert.throws(make({ balance: 'random' }), { code: 'ERR_INVALID_ARG', message: /balance/ })
  assert.throws(make({ listen: 'socket' }), { code: 'ERR_INVALID_ARG', message: /listen/ })
  assert.throws(make({ replicas: 2, listen: 'fd', shutdown: { http: 'POST /quit' } }), { code: 'ERR_INVALID_ARG', message: /shutdown\.http/ })
  const pm = new ProcessManager({ command: 'x', logger: false, replicas: 2 })
  assert.ok(pm.options.restart, 'restart is on by default with replicas')
  const off = new ProcessManager({ command: 'x', logger: false, replicas: 2, restart: false })
  assert.equal(off.options.restart, false, 'an explicit false wins')
})
