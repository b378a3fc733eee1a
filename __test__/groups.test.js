'use strict'
// BackendGroup with real processes: dependency order, env from the started dependencies, all or nothing,
// reverse-order stop, re-emitted events. Every test stops what it started.
const test = require('node:test')
const path = require('node:path')
const fs = require('node:fs')
const assert = require('node:assert/strict')
const { ROOT, FIXTURE, tempDir, freeRun, isAlive, records, httpGet, httpRequest, waitFor, memoryLogger, holdPort, own, killAll } = require('./helpers')
const { BackendGroup, isPortAvailable } = require('..')

/** A group of fixture backends sharing one private state folder; stopped (and its pids killed) after the test. */
function fixtureGroup(t, members) {
  const stateDir = tempDir(t)
  const group = new BackendGroup(
    members.map((m) => ({ command: process.execPath, args: [FIXTURE], stateDir, logger: false, startTimeoutMs: 5000, ...m })),
  )
  const pids = new Set()
  group.on('ready', (e) => pids.add(own(e.pid)))
  group.on('stdout', ({ line }) => /^BOOT \d+$/.test(line) && pids.add(own(Number(line.slice(5)))))
  t.after(async () => {
    await group.stopAll().catch(() => {})
    await killAll(pids)
  })
  return { group, stateDir, pids }
}

test('startAll starts dependencies first and hands the worker the api URL; stopAll stops in reverse order', async (t) => {
  const [apiPort, workerPort] = [await freeRun(3), await freeRun(3)]
  const { group, stateDir } = fixtureGroup(t, [
    { name: 'worker', port: workerPort, dependsOn: ['api'], env: ({ api }) => ({ API_URL: api.url }) },
    { name: 'api', port: apiPort },
  ])
  assert.deepEqual(group.names, ['api', 'worker'])
  const order = []
  const stdout = []
  group.on('ready', (e) => order.push(`ready ${e.name}`))
  group.on('exit', (e) => order.push(`exit ${e.name}`))
  group.on('stdout', (e) => stdout.push(e))
  const started = await group.startAll(ROOT)
  assert.deepEqual(Object.keys(started), ['api', 'worker'])
  assert.deepEqual(order, ['ready api', 'ready worker'])
  assert.ok(stdout.some((e) => e.name === 'api' && /^BOOT /.test(e.line)), 'stdout lines come with the name')
  const { body } = await httpGet(`${started.worker.url}/env`)
  assert.equal(JSON.parse(body).API_URL, started.api.url, 'the worker got the started api URL')
  assert.equal(group.get('api').backend.pid, started.api.pid)
  const status = await group.status()
  assert.deepEqual(
    status.map((s) => [s.name, s.dependsOn, s.backend?.pid]),
    [
      ['api', [], started.api.pid],
      ['worker', ['api'], started.worker.pid],
    ],
  )
  assert.equal(records(stateDir).length, 2)

  const stopped = await group.stopAll()
  assert.deepEqual(order.slice(2), ['exit worker', 'exit api'], 'the worker stops before the api')
  assert.equal(stopped.api.pid, started.api.pid)
  assert.ok(!isAlive(started.api.pid) && !isAlive(started.worker.pid))
  assert.deepEqual(records(stateDir), [])
})

test('a group whose second backend fails: startAll rejects with its error naming it, the first is stopped, no records', async (t) => {
  const { group, stateDir, pids } = fixtureGroup(t, [
    { name: 'api', port: await freeRun(3) },
    { name: 'worker', port: await freeRun(3), dependsOn: ['api'], env: { EXIT_AT_START: '3' } },
  ])
  const error = await group.startAll(ROOT).then(() => null, (e) => e)
  assert.equal(error?.code, 'ERR_BACKEND_EXITED')
  assert.equal(error.backend, 'worker')
  assert.equal(error.exitCode, 3)
  assert.ok(pids.size >= 2)
  for (const pid of pids) assert.ok(!isAlive(pid), `pid ${pid} is gone`)
  assert.equal(group.get('api').backend, null, 'the api was stopped')
  assert.deepEqual(records(stateDir), [])
})

test('independent backends start in parallel; one that fails stops the other', async (t) => {
  const port = await freeRun(3)
  const slowLog = memoryLogger()
  const { group, stateDir, pids } = fixtureGroup(t, [
    { name: 'slow', port, env: { LISTEN_DELAY_MS: '300' }, logger: slowLog },
    { name: 'broken', port: await freeRun(3), env: { EXIT_AT_START: '4' } },
  ])
  const ready = []
  group.on('ready', (e) => ready.push(e.name))
  const error = await group.startAll(ROOT).then(() => null, (e) => e)
  assert.equal(error?.backend, 'broken')
  // In parallel: the slow one was spawned, and still starting when the broken one failed (in sequence it
  // would have been ready first); its start was cancelled.
  const spawned = slowLog.lines.map((l) => /backend started with pid (\d+)/.exec(l)?.[1]).filter(Boolean).map(Number)
  assert.equal(spawned.length, 1, slowLog.lines.join('\n'))
  assert.ok(!isAlive(spawned[0]), 'the slow one is gone')
  assert.deepEqual(ready, [])
  for (const pid of pids) assert.ok(!isAlive(pid), `pid ${pid} is gone`)
  assert.deepEqual(records(stateDir), [])
  assert.equal(await isPortAvailable(port), true)
})

test('group.dashboard(): every member on one page, followed across startAll() (a member whose env is a function gets a new manager); Stop and Start per member', async (t) => {
  const [apiPort, workerPort] = [await freeRun(3), await freeRun(3)]
  const { group } = fixtureGroup(t, [
    { name: 'api', port: apiPort },
    { name: 'worker', port: workerPort, dependsOn: ['api'], env: ({ api }) => ({ API_URL: api.url }) },
  ])
  await assert.rejects(group.dashboard({ prot: 1 }), { code: 'ERR_INVALID_ARG' })
  await assert.rejects(group.dashboard({ port: -1 }), { code: 'ERR_INVALID_ARG' })
  const dash = await group.dashboard()
  t.after(() => dash.close())
  assert.deepEqual(Object.keys(dash).sort(), ['close', 'url'])
  const url = new URL(dash.url)
  const token = url.searchParams.get('token')
  assert.equal(url.hostname, '127.0.0.1')
  assert.equal((await httpGet(`${url.origin}/snapshot`)).status, 403)
  const snapshot = async () => JSON.parse((await httpGet(`${url.origin}/snapshot?token=${token}`)).body)
  const action = (body) => httpRequest(`${url.origin}/action?token=${token}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  assert.deepEqual((await snapshot()).backends.map((b) => [b.name, b.state, b.actions]), [['api', 'stopped', []], ['worker', 'stopped', []]])

  const started = await group.startAll(ROOT)
  // A snapshot is at most 1.5 s old.
  const states = async () => (await snapshot()).backends.map((b) => b.state).join(' ')
  await waitFor(async () => (await states()) === 'running running', 5000, 'both running on the page')
  const running = (await snapshot()).backends
  assert.deepEqual(running.map((b) => [b.name, b.state, b.pid, b.port, b.actions]), [
    ['api', 'running', started.api.pid, started.api.port, ['stop', 'restart']],
    ['worker', 'running', started.worker.pid, started.worker.port, ['stop', 'restart']],
  ])

  const stopped = await action({ id: running[1].id, action: 'stop' })
  assert.equal(stopped.status, 200, stopped.body)
  assert.equal(group.get('worker').backend, null)
  assert.equal(isAlive(started.worker.pid), false)
  await waitFor(async () => (await states()) === 'running stopped', 5000, 'the worker stopped on the page')
  assert.deepEqual((await snapshot()).backends.map((b) => [b.name, b.state, b.actions]), [['api', 'running', ['stop', 'restart']], ['worker', 'stopped', ['start']]])
  const again = await action({ id: running[1].id, action: 'start' })
  assert.equal(again.status, 200, again.body)
  const worker = group.get('worker').backend
  assert.notEqual(worker.pid, started.worker.pid)
  assert.equal(JSON.parse((await httpGet(`${worker.url}/env`)).body).API_URL, started.api.url, 'started again with its env')
  await waitFor(async () => (await snapshot()).backends[1].pid === worker.pid, 5000, 'the new worker on the page')
})

test('group.dashboard(): a member whose new manager (env a function) fails its start shows failed, with its stderr; the other member keeps its state', async (t) => {
  const crash = path.join(tempDir(t), 'crash')
  const [apiPort, workerPort] = [await freeRun(3), await freeRun(3)]
  const { group } = fixtureGroup(t, [
    { name: 'api', port: apiPort },
    { name: 'worker', port: workerPort, dependsOn: ['api'], env: ({ api }) => ({ API_URL: api.url, CRASH_IF_EXISTS: crash }) },
  ])
  const dash = await group.dashboard()
  t.after(() => dash.close())
  const url = new URL(dash.url)
  const snapshot = async () => JSON.parse((await httpGet(`${url.origin}/snapshot?token=${url.searchParams.get('token')}`)).body).backends
  await group.startAll(ROOT)
  await waitFor(async () => (await snapshot()).map((b) => b.state).join(' ') === 'running running', 5000, 'both running on the page')
  await group.stopAll()
  fs.writeFileSync(crash, '')
  const error = await group.startAll(ROOT).then(() => null, (e) => e)
  assert.equal(error?.backend, 'worker')
  // The failure happened on a manager the page had not sampled yet: it shows all the same.
  await waitFor(async () => (await snapshot())[1].state === 'failed', 5000, 'the worker failed on the page')
  const [api, worker] = await snapshot()
  assert.match(worker.stderrTail.join('\n'), /fixture: crashing on purpose/)
  assert.deepEqual(worker.actions, ['start'])
  assert.equal(api.state, 'stopped', 'the api, stopped by the all-or-nothing start')
})

test('group.dashboard(): Start of a member waits for its dependencies and calls its env function with them as they are now (a dependency that moved to another port)', async (t) => {
  const [apiPort, workerPort] = [await freeRun(3), await freeRun(3)]
  const { group } = fixtureGroup(t, [
    { name: 'api', port: apiPort },
    { name: 'worker', port: workerPort, dependsOn: ['api'], env: ({ api }) => ({ API_URL: api.url }) },
  ])
  const dash = await group.dashboard()
  t.after(() => dash.close())
  const url = new URL(dash.url)
  const token = url.searchParams.get('token')
  const snapshot = async () => JSON.parse((await httpGet(`${url.origin}/snapshot?token=${token}`)).body).backends
  const action = async (id, what) => JSON.parse((await httpRequest(`${url.origin}/action?token=${token}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ id, action: what }) })).body)
  const started = await group.startAll(ROOT)
  await waitFor(async () => (await snapshot()).map((b) => b.state).join(' ') === 'running running', 5000, 'both running on the page')
  const [api, worker] = await snapshot()
  assert.equal((await action(worker.id, 'stop')).ok, true)
  assert.equal((await action(api.id, 'stop')).ok, true)
  await waitFor(async () => (await snapshot()).map((b) => b.state).join(' ') === 'stopped stopped', 5000, 'both stopped on the page')
  const refused = await action(worker.id, 'start')
  assert.equal(refused.ok, false)
  assert.match(refused.error, /depends on api, which is not running/)
  assert.equal(group.get('worker').backend, null, 'not started without its dependency')
  // Another program takes the api's port: the api starts on another one, and the worker is told that one.
  await holdPort(t, '127.0.0.1', started.api.port)
  assert.equal((await action(api.id, 'start')).ok, true)
  const movedApi = group.get('api').backend
  assert.notEqual(movedApi.port, started.api.port)
  assert.equal((await action(worker.id, 'start')).ok, true)
  const body = JSON.parse((await httpGet(`${group.get('worker').backend.url}/env`)).body)
  assert.equal(body.API_URL, movedApi.url)
})

test('cycles, unknown dependencies, duplicate and missing names are refused at construction', () => {
  const make = (members) => () => new BackendGroup(members.map((m) => ({ command: 'x', logger: false, ...m })))
  assert.throws(make([{ name: 'a', dependsOn: ['b'] }, { name: 'b', dependsOn: ['a'] }]), { code: 'ERR_INVALID_ARG', message: /cycle: a → b → a/ })
  assert.throws(make([{ name: 'a', dependsOn: ['nope'] }]), { code: 'ERR_INVALID_ARG', message: /"nope"/ })
  assert.throws(make([{ name: 'a' }, { name: 'a' }]), { code: 'ERR_INVALID_ARG', message: /unique/ })
  assert.throws(make([{}]), { code: 'ERR_INVALID_ARG', message: /no name/ })
  assert.throws(make([{ name: 'a', portRange: -1 }]), { code: 'ERR_INVALID_ARG', message: /portRange/ })
  assert.throws(() => new BackendGroup('a'), { code: 'ERR_INVALID_ARG' })
  assert.throws(make([{ name: 'a', env: 5 }]), { code: 'ERR_INVALID_ARG', message: /env/ })
})
