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
const http = require('node:http')
const { once } = require('node:events')
const { ROOT, tempDir, freeRun, isAlive, records, waitFor, fixtureManager, httpGet, httpRequest, cli, posixOnly, linuxOnly, startProcess, UNDER_WINE, own, killIfAlive, killAll } = require('./helpers')
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
    seen.add(own(info.pid))
    for (const r of info.replicas ?? []) seen.add(own(r.pid))
  }
  pm.on('ready', note)
  t.after(() => killAll(seen))
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
  // Under Wine a node.exe takes 1-5 s to start on a busy machine (5.2 s seen once): its bound is wider there.
  const bound = UNDER_WINE ? 15000 : 5000
  assert.ok(took < bound, `healthy again after ${took} ms`)
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
  await waitFor(() => replicaPids(pm).length === 2 && !replicaPids(pm).includes(pids[0]), 10000, 'the killed replica to be back')

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

/** A POST of `bytes` on a fresh connection: resolves to { status, body }, rejects when the connection ends without an answer. */
const httpPost = (url, bytes, timeoutMs = 10000) => httpRequest(url, { method: 'POST', body: bytes, timeoutMs })

/** The side effects recorded so far: [{ method, pid }]. */
const sideEffects = (file) =>
  (fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '').split('\n').filter(Boolean).map((l) => {
    const [method, pid] = l.split(' ')
    return { method, pid: Number(pid) }
  })

test('a replica that ran a POST and died before answering: the POST is not replayed (once, and the client sees the close); a GET is', async (t) => {
  const dir = tempDir(t)
  const effects = path.join(dir, 'side-effects')
  const die = path.join(dir, 'die')
  const { pm } = fixtureManager(t, {
    port: await freeRun(3),
    replicas: 2,
    args: [path.join(__dirname, 'fixtures', 'side-effect-backend.js')],
    env: { SIDE_EFFECT_FILE: effects, DIE_FILE: die },
    restart: { initialDelayMs: 20 },
  })
  trackReplicas(t, pm)
  const info = await pm.startBackend(ROOT)
  // Both up, the one that died replaced: until the manager has seen the death, its replica still shows the
  // dead pid as healthy (under Wine for long enough that the next request went to the dead one and its live
  // peer, and had to wait for a replacement).
  const replacedAndUp = (dead) => () => {
    const pids = replicaPids(pm)
    return pids.length === 2 && !pids.includes(dead) && pm.backend.replicas.every((r) => r.healthy)
  }

  // The replica dies with the rest of the 30 KB unread, so the kernel resets the connection.
  fs.writeFileSync(die, 'reset')
  const posted = await httpPost(info.url, Buffer.alloc(30 * 1024, 'p')).then((r) => r, (e) => e)
  assert.ok(posted instanceof Error, `the client got an answer: ${JSON.stringify(posted)}`)
  assert.ok(!fs.existsSync(die), 'a replica took the POST and died')
  assert.deepEqual(sideEffects(effects).map((e) => e.method), ['POST'], 'the POST ran exactly once')
  await waitFor(replacedAndUp(sideEffects(effects)[0].pid), 10000, 'the dead replica to be back')
  assert.deepEqual(sideEffects(effects).map((e) => e.method), ['POST'], 'the POST ran exactly once')

  // A GET is replayed whether the dying replica's connection closes cleanly or is reset.
  for (const how of ['exit', 'reset']) {
    fs.writeFileSync(effects, '')
    fs.writeFileSync(die, how)
    const got = await httpGet(info.url, {}, 10000).catch((e) => assert.fail(`GET (replica dies by ${how}): ${e.message}`))
    assert.equal(got.status, 200, 'the GET was replayed on the other replica')
    const gets = sideEffects(effects)
    assert.equal(gets.length, 2, `run by the replica that died (${how}), then by the other: ${JSON.stringify(gets)}`)
    assert.notEqual(gets[0].pid, gets[1].pid)
    assert.equal(pidOf(got.body), gets[1].pid)
    await waitFor(replacedAndUp(gets[0].pid), 10000, 'the dead replica to be back')
  }
})

/**
 * An app (a Node process of its own, under `ulimit -n`) running the fixture as 2 replicas with `balancer`;
 * on SIGUSR2 it reads a file and prints "READ ok" or "READ <error code>". Resolves once it is ready.
 */
async function limitedApp(t, { openFiles, balancer }) {
  const stateDir = tempDir(t)
  const port = await freeRun(3)
  const code = `
    const fs = require('node:fs')
    const { ProcessManager } = require(${JSON.stringify(ROOT)})
    const pm = new ProcessManager({ name: 'limited', command: process.execPath, args: [${JSON.stringify(path.join(__dirname, 'fixtures', 'backend.js'))}],
      port: ${port}, replicas: 2, stateDir: ${JSON.stringify(stateDir)}, logger: false, balancer: ${JSON.stringify(balancer)} })
    let n = 0
    process.on('SIGUSR2', () => {
      try { fs.readFileSync(${JSON.stringify(path.join(ROOT, 'package.json'))}); console.log('READ ok ' + ++n) }
      catch (e) { console.log('READ ' + e.code + ' ' + ++n) }
    })
    process.on('SIGTERM', () => pm.stopBackend().finally(() => process.exit(0)))
    pm.startBackend(${JSON.stringify(ROOT)}).then((info) => console.log('READY ' + info.port + ' ' + pm.options.balancer.maxConnections))
  `
  const app = startProcess(t, '/bin/sh', ['-c', `ulimit -n ${openFiles} && exec "$0" -e "$1"`, process.execPath, code])
  const [, publicPort, maxConnections] = /^READY (\d+) (\d+)$/.exec(await app.line(/^READY /, 20000))
  const fds = () => fs.readdirSync(`/proc/${app.child.pid}/fd`).length
  let reads = 0
  /** Has the app read a file (resolves to 'ok' or the error code)? */
  const read = async () => {
    const n = ++reads
    process.kill(app.child.pid, 'SIGUSR2')
    return (await app.line(new RegExp(`^READ \\S+ ${n}$`))).split(' ')[1]
  }
  return { app, port: Number(publicPort), maxConnections: Number(maxConnections), fds, read }
}

/** `count` TCP connections to `port` that send nothing; destroyed after the test. */
function idleConnections(t, port, count) {
  const sockets = Array.from({ length: count }, () => net.connect(port, '127.0.0.1').on('error', () => {}))
  t.after(() => sockets.forEach((s) => s.destroy()))
  return sockets
}

test('balancer.maxConnections: 50 idle clients hold at most 8 connections (16 descriptors) of the app; a file read still works; closing lets the waiting through', { skip: linuxOnly('reads /proc/PID/fd') }, async (t) => {
  const { port, fds, read } = await limitedApp(t, { openFiles: 256, balancer: { maxConnections: 8 } })
  const baseline = fds()
  const sockets = idleConnections(t, port, 50)
  const last = sockets.at(-1)
  let answer = ''
  last.on('data', (d) => (answer += d))
  last.write('GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n')
  // 8 accepted, each with its upstream connection: the app's descriptors rise by 16, and no further.
  await waitFor(() => fds() >= baseline + 16, 10000, '8 connections to be accepted')
  assert.equal(await read(), 'ok')
  const held = fds()
  assert.ok(held <= baseline + 16 + 4, `the app holds ${held} descriptors, ${held - baseline} more than before the clients`)
  assert.equal(answer, '', 'a client past maxConnections was served while 8 were held')
  for (const s of sockets.slice(0, -1)) s.destroy()
  await waitFor(() => /\npid \d+\n/.test(answer), 10000, 'the waiting client to be served')
  assert.match(answer, /^HTTP\/1\.1 200/)
})

test('balancer.maxConnections defaults to a quarter of the open-file limit: 300 idle clients cannot drain the app of descriptors', { skip: linuxOnly('reads /proc/PID/fd') }, async (t) => {
  const { port, fds, read, maxConnections } = await limitedApp(t, { openFiles: 256, balancer: {} })
  assert.equal(maxConnections, 64)
  const baseline = fds()
  idleConnections(t, port, 300)
  await waitFor(() => fds() >= baseline + 2 * 64, 10000, '64 connections to be accepted')
  assert.equal(await read(), 'ok', "the app's own file read")
  const held = fds()
  assert.ok(held <= baseline + 2 * 64 + 4, `the app holds ${held} descriptors, ${held - baseline} more than before the clients`)
})

test('balancer.idleTimeoutMs: a connection with no byte either way is closed by the balancer', async (t) => {
  const { pm } = fixtureManager(t, { port: await freeRun(3), replicas: 2, balancer: { idleTimeoutMs: 300 } })
  trackReplicas(t, pm)
  const info = await pm.startBackend(ROOT)
  const started = Date.now()
  const [socket] = idleConnections(t, info.port, 1)
  const closed = await Promise.race([once(socket, 'close').then(() => true), new Promise((resolve) => setTimeout(resolve, 10000, false))])
  const after = Date.now() - started
  assert.ok(closed, 'still open after 10 s')
  assert.ok(after >= 250, `closed after ${after} ms`)
  // A connection that keeps talking is not idle: keep-alive requests for twice the timeout.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  t.after(() => agent.destroy())
  const sockets = new Set()
  const until = Date.now() + 700
  while (Date.now() < until) {
    await new Promise((resolve, reject) => {
      http.get(info.url, { agent }, (res) => {
        sockets.add(res.socket)
        res.resume().on('end', resolve)
      }).on('error', reject)
    })
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  assert.equal(sockets.size, 1, 'the busy connection was closed')
})

test('balancer.firstByteTimeoutMs: a frozen replica (SIGSTOP) is taken out and reported unhealthy; later requests go to the other; healthy again once it answers', { skip: posixOnly('SIGSTOP'), timeout: 60000 }, async (t) => {
  const { pm } = fixtureManager(t, {
    port: await freeRun(3),
    replicas: 2,
    balance: 'round-robin',
    balancer: { firstByteTimeoutMs: 500 },
  })
  trackReplicas(t, pm)
  const info = await pm.startBackend(ROOT)
  const [frozen, other] = info.replicas.map((r) => r.pid)
  const verdicts = []
  // What the app sees at each event: the verdict is published before it is told.
  const seenHealth = () => pm.backend.replicas.map((r) => r.healthy)
  pm.on('unhealthy', (e) => verdicts.push(['unhealthy', e, seenHealth()]))
  pm.on('healthy', (e) => verdicts.push(['healthy', e, seenHealth()]))
  const unhealthy = once(pm, 'unhealthy')
  process.kill(frozen, 'SIGSTOP')
  own(frozen)
  t.after(() => killIfAlive(frozen, 'SIGCONT'))
  const served = []
  const failures = []
  try {
    for (let i = 0; i < 24; i++) {
      try {
        served.push(pidOf((await httpGet(info.url, {}, 3000)).body))
      } catch (e) {
        failures.push(e.message)
        if (failures.length > 1) break
      }
    }
  } finally {
    process.kill(frozen, 'SIGCONT')
  }
  assert.ok(failures.length <= 1, `more than the first request to the frozen replica failed: ${failures.join('; ')}`)
  assert.ok(served.length >= 23)
  assert.ok(served.slice(-20).every((p) => p === other), `served by ${served}`)
  // Reported once, for that replica, and seen so in pm.backend.
  const [verdict] = await unhealthy
  assert.equal(verdict.reason, 'health')
  assert.equal(verdict.replica, 0)
  assert.match(verdict.error, /balancer\.firstByteTimeoutMs \(500 ms\)/)
  const healthy = once(pm, 'healthy')
  // SIGCONT was sent above: the next probe (within a second) finds it answering and puts it back.
  const [back] = await healthy
  assert.equal(back.replica, 0)
  assert.deepEqual(verdicts.map(([kind, e, health]) => [kind, e.replica, health]), [['unhealthy', 0, [false, true]], ['healthy', 0, [true, true]]])
  assert.deepEqual(pm.backend.replicas.map((r) => [r.pid, r.healthy]), [[frozen, true], [other, true]])
  const answered = new Set()
  for (let i = 0; i < 8 && answered.size < 2; i++) answered.add(pidOf((await httpGet(info.url, {}, 3000)).body))
  assert.deepEqual([...answered].sort(), [frozen, other].sort(), 'both replicas answer again')
})

test('options: replicas out of range, an unknown balance, bad balancer limits, and listen fd with shutdown.http and replicas are refused', { skip: posixOnly("listen: 'fd' is refused on Windows before the other checks") }, () => {
  const { ProcessManager } = require('..')
  const make = (o) => () => new ProcessManager({ command: 'x', logger: false, ...o })
  assert.throws(make({ replicas: 0 }), { code: 'ERR_INVALID_ARG', message: /replicas/ })
  assert.throws(make({ replicas: 65 }), { code: 'ERR_INVALID_ARG', message: /replicas/ })
  assert.throws(make({ replicas: 1.5 }), { code: 'ERR_INVALID_ARG' })
  assert.throws(make({ balance: 'random' }), { code: 'ERR_INVALID_ARG', message: /balance/ })
  assert.throws(make({ listen: 'socket' }), { code: 'ERR_INVALID_ARG', message: /listen/ })
  assert.throws(make({ replicas: 2, listen: 'fd', shutdown: { http: 'POST /quit' } }), { code: 'ERR_INVALID_ARG', message: /shutdown\.http/ })
  assert.throws(make({ balancer: 8 }), { code: 'ERR_INVALID_ARG', message: /balancer/ })
  assert.throws(make({ balancer: { maxConnection: 8 } }), { code: 'ERR_INVALID_ARG', message: /maxConnection/ })
  for (const maxConnections of [0, 1.5, -1, '8']) {
    assert.throws(make({ balancer: { maxConnections } }), { code: 'ERR_INVALID_ARG', message: /balancer\.maxConnections/ })
  }
  assert.throws(make({ balancer: { idleTimeoutMs: -1 } }), { code: 'ERR_INVALID_ARG', message: /balancer\.idleTimeoutMs/ })
  assert.throws(make({ balancer: { firstByteTimeoutMs: 'soon' } }), { code: 'ERR_INVALID_ARG', message: /balancer\.firstByteTimeoutMs/ })
  const pm = new ProcessManager({ command: 'x', logger: false, replicas: 2 })
  assert.ok(pm.options.restart, 'restart is on by default with replicas')
  const { maxConnections, idleTimeoutMs, firstByteTimeoutMs } = pm.options.balancer
  assert.ok(Number.isInteger(maxConnections) && maxConnections >= 1 && maxConnections <= 10000, String(maxConnections))
  assert.deepEqual([idleTimeoutMs, firstByteTimeoutMs], [300000, 0])
  const set = new ProcessManager({ command: 'x', logger: false, balancer: { maxConnections: 8, firstByteTimeoutMs: 500 } })
  assert.deepEqual(set.options.balancer, { maxConnections: 8, idleTimeoutMs: 300000, firstByteTimeoutMs: 500 })
  const off = new ProcessManager({ command: 'x', logger: false, replicas: 2, restart: false })
  assert.equal(off.options.restart, false, 'an explicit false wins')
})
