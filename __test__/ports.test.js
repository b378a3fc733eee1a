'use strict'
const test = require('node:test')
const assert = require('node:assert/strict')
const { ProcessManager, isPortAvailable, findAvailablePort } = require('..')
const { holdPort, freeRun } = require('./helpers')

const pm = new ProcessManager({ logger: false })
const hasIPv6 = require('node:os').networkInterfaces().lo?.some((a) => a.family === 'IPv6') ?? true

test('a port held on 127.0.0.1 is not available', async (t) => {
  const port = await holdPort(t, '127.0.0.1')
  assert.equal(await isPortAvailable(port), false)
  assert.equal(await pm.isPortAvailable(port), false)
})

test('a port held on ::1 only is not available', { skip: !hasIPv6 && 'no IPv6 on this machine' }, async (t) => {
  const port = await holdPort(t, '::1', 0, { ipv6Only: true })
  assert.equal(await isPortAvailable(port), false)
  // The same port is bindable on IPv4, so a single-family check would have called it free.
  assert.equal(await findAvailablePort(port, { endPort: port, host: '127.0.0.1' }), port)
})

test('a port held on 0.0.0.0 is not available', async (t) => {
  const port = await holdPort(t, '0.0.0.0')
  assert.equal(await isPortAvailable(port), false)
})

test('a port held on :: is not available', { skip: !hasIPv6 && 'no IPv6 on this machine' }, async (t) => {
  const port = await holdPort(t, '::', 0, { ipv6Only: true })
  assert.equal(await isPortAvailable(port), false)
})

test('a free port is available, and again after its holder closes', async (t) => {
  const start = await freeRun(1)
  assert.equal(await isPortAvailable(start), true)
  const server = require('node:net').createServer().listen(start, '127.0.0.1')
  await require('node:events').once(server, 'listening')
  assert.equal(await isPortAvailable(start), false)
  await new Promise((r) => server.close(r))
  assert.equal(await isPortAvailable(start), true)
})

test('findAvailablePort skips a run of held ports on mixed families', async (t) => {
  const start = await freeRun(12)
  for (let p = start; p < start + 10; p++) {
    await holdPort(t, p % 3 === 0 && hasIPv6 ? '::1' : '127.0.0.1', p, { ipv6Only: true })
  }
  const port = await findAvailablePort(start, { endPort: start + 11 })
  assert.equal(port, start + 10)
  const manager = new ProcessManager({ logger: false, port: start, portRange: 11 })
  assert.equal(await manager.findAvailablePort(), start + 11, 'start+10 is reserved for the first caller')
})

test('20 parallel findAvailablePort calls return 20 different ports', async () => {
  const start = await freeRun(25)
  const ports = await Promise.all(Array.from({ length: 20 }, () => findAvailablePort(start, { endPort: start + 24 })))
  assert.equal(new Set(ports).size, 20)
  for (const p of ports) assert.ok(p >= start && p <= start + 24)
})

test("12 parallel pm.findAvailablePort() calls on one manager return 12 different ports", async (t) => {
  // Issue 20 item 12: the manager's own reservations do not block its start, but two calls are two callers.
  const start = await freeRun(30)
  const mine = new ProcessManager({ logger: false, port: start, portRange: 29 })
  const ports = await Promise.all(Array.from({ length: 12 }, () => mine.findAvailablePort()))
  assert.equal(new Set(ports).size, 12, `ports: ${ports.join(', ')}`)
  for (const port of ports) assert.ok(port >= start && port <= start + 29)
  // Another manager is kept off them for the reservation's 15 s.
  const other = new ProcessManager({ logger: false, port: start, portRange: 29 })
  assert.ok(!ports.includes(await other.findAvailablePort()))
})

test('bad ports reject with ERR_INVALID_ARG', async () => {
  for (const bad of [0, 65536, -1, 1.5, '80', NaN, undefined, null, Infinity]) {
    await assert.rejects(isPortAvailable(bad), { code: 'ERR_INVALID_ARG' }, `isPortAvailable(${String(bad)})`)
    await assert.rejects(pm.isPortAvailable(bad), { code: 'ERR_INVALID_ARG' })
    if (bad !== undefined) await assert.rejects(pm.findAvailablePort(bad), { code: 'ERR_INVALID_ARG' })
    await assert.rejects(findAvailablePort(bad), { code: 'ERR_INVALID_ARG' })
    await assert.rejects(pm.checkBackendHealth(bad), { code: 'ERR_INVALID_ARG' })
  }
  await assert.rejects(findAvailablePort(9000, { endPort: 8000 }), { code: 'ERR_INVALID_ARG' })
  await assert.rejects(findAvailablePort(9000, { host: 'example' }), { code: 'ERR_INVALID_ARG' })
})

test('an exhausted range rejects with ERR_NO_FREE_PORT naming the range', async (t) => {
  const start = await freeRun(3)
  for (let p = start; p < start + 3; p++) await holdPort(t, '127.0.0.1', p)
  const err = await findAvailablePort(start, { endPort: start + 2 }).catch((e) => e)
  assert.equal(err.code, 'ERR_NO_FREE_PORT')
  assert.equal(err.startPort, start)
  assert.equal(err.endPort, start + 2)
  assert.match(err.message, new RegExp(`${start}.*${start + 2}`))
  const manager = new ProcessManager({ logger: false, port: start, portRange: 2 })
  await assert.rejects(manager.findAvailablePort(), { code: 'ERR_NO_FREE_PORT', startPort: start, endPort: start + 2 })
})

test('exclude is honoured', async () => {
  const start = await freeRun(3)
  const port = await findAvailablePort(start, { endPort: start + 2, exclude: [start, start + 1] })
  assert.equal(port, start + 2)
})
