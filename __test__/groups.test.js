'use strict'
// BackendGroup with real processes: dependency order, env from the started dependencies, all or nothing,
// reverse-order stop, re-emitted events. Every test stops what it started.
const test = require('node:test')
const assert = require('node:assert/strict')
const { ROOT, FIXTURE, tempDir, freeRun, isAlive, records, killIfAlive, httpGet, memoryLogger } = require('./helpers')
const { BackendGroup, isPortAvailable } = require('..')

/** A group of fixture backends sharing one private state folder; stopped (and its pids killed) after the test. */
function fixtureGroup(t, members) {
  const stateDir = tempDir(t)
  const group = new BackendGroup(
    members.map((m) => ({ command: process.execPath, args: [FIXTURE], stateDir, logger: false, startTimeoutMs: 5000, ...m })),
  )
  const pids = new Set()
  group.on('ready', (e) => pids.add(e.pid))
  group.on('stdout', ({ line }) => /^BOOT \d+$/.test(line) && pids.add(Number(line.slice(5))))
  t.after(async () => {
    await group.stopAll().catch(() => {})
    for (const pid of pids) killIfAlive(pid)
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
