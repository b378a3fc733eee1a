'use strict'
const test = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { ProcessManager, defaultStateDir } = require('..')

test('defaults reproduce the original setup', () => {
  const pm = new ProcessManager()
  const o = pm.options
  assert.equal(o.name, 'backend')
  assert.equal(o.entry, 'backend-nodejs/server.js')
  assert.equal(o.command, undefined)
  assert.deepEqual(o.args, [])
  assert.equal(o.host, '127.0.0.1')
  assert.equal(o.port, 8000)
  assert.equal(o.portRange, 100)
  assert.equal(o.portEnv, 'PORT')
  assert.equal(o.healthPath, '/health')
  assert.equal(o.healthTimeoutMs, 1000)
  assert.equal(o.startTimeoutMs, 10000)
  assert.equal(o.stopTimeoutMs, 5000)
  assert.equal(o.stateDir, defaultStateDir())
  assert.equal(pm.backend, null)
})

test('v2 options are off by default; replicas turn restart on unless it is set to false', () => {
  const o = new ProcessManager().options
  assert.deepEqual(
    { restart: o.restart, healthIntervalMs: o.healthIntervalMs, unhealthyThreshold: o.unhealthyThreshold, maxMemoryBytes: o.maxMemoryBytes, statsIntervalMs: o.statsIntervalMs, priority: o.priority, limits: o.limits, inheritEnv: o.inheritEnv, token: o.token, replicas: o.replicas, balance: o.balance, listen: o.listen, shutdown: o.shutdown },
    { restart: false, healthIntervalMs: 0, unhealthyThreshold: 3, maxMemoryBytes: 0, statsIntervalMs: 0, priority: 'normal', limits: {}, inheritEnv: true, token: false, replicas: 1, balance: 'least-connections', listen: 'port', shutdown: { stdin: false } },
  )
  const policy = { maxRestarts: 5, windowMs: 60000, initialDelayMs: 100, maxDelayMs: 10000, resetAfterMs: 30000 }
  assert.deepEqual(new ProcessManager({ restart: true }).options.restart, policy)
  assert.deepEqual(new ProcessManager({ restart: { maxRestarts: 2 } }).options.restart, { ...policy, maxRestarts: 2 })
  assert.deepEqual(new ProcessManager({ replicas: 2 }).options.restart, policy)
  assert.equal(new ProcessManager({ replicas: 2, restart: false }).options.restart, false)
})

test('the default state folder is per user, not a shared /tmp path', () => {
  const dir = defaultStateDir()
  assert.ok(path.isAbsolute(dir))
  assert.match(dir, /backend-process-manager$/)
  if (process.env.XDG_RUNTIME_DIR) assert.ok(dir.startsWith(process.env.XDG_RUNTIME_DIR))
})

test('bad options throw ERR_INVALID_ARG at construction', () => {
  const bad = [
    { port: 0 },
    { port: 65536 },
    { port: 1.5 },
    { port: '8000' },
    { portRange: -1 },
    { startTimeoutMs: -1 },
    { stopTimeoutMs: -5 },
    { healthTimeoutMs: NaN },
    { name: '' },
    { name: 'a/b' },
    { name: 'a\\b' },
    { name: 42 },
    { args: 'x' },
    { env: 'x' },
    { host: 'not a host' },
    { healthPath: 'health' },
    { logger: 'loud' },
    { logger: {} },
    { logger: { log: () => {} } },
    { logger: { info() {}, warn() {}, error: 'x' } },
    { startTimeout: 5 }, // a typo of startTimeoutMs
  ]
  for (const options of bad) {
    assert.throws(() => new ProcessManager(options), { code: 'ERR_INVALID_ARG' }, JSON.stringify(options))
  }
  assert.throws(() => new ProcessManager('x'), { code: 'ERR_INVALID_ARG' })
  assert.throws(() => new ProcessManager({ logger: { info() {} } }), { code: 'ERR_INVALID_ARG', message: /no warn, error method/ })
  // A class instance's methods (electron-log, winston) live on its prototype: accepted.
  class Logger { info() {} warn() {} error() {} }
  assert.doesNotThrow(() => new ProcessManager({ logger: new Logger() }))
})

test('names that would disguise themselves and port variables the manager or a loader owns are refused, naming the option', () => {
  // Issue 20 item 15: these were accepted and spoofed status/monitor output, or overwrote the token.
  for (const name of ['\u202E\u202E', '\u202Eipa', 'api\u200B', '\u2066api\u2069', '\uFEFF', '   ', ' api', 'api ']) {
    assert.throws(() => new ProcessManager({ name, logger: false }), { code: 'ERR_INVALID_ARG', message: /^name / }, JSON.stringify(name))
  }
  for (const portEnv of ['BACKEND_TOKEN', 'LISTEN_FDS', 'LISTEN_PID', 'NOTIFY_SOCKET', 'HOST', 'LD_PRELOAD', 'ld_library_path', 'DYLD_INSERT_LIBRARIES', 'NODE_OPTIONS', 'PATH', 'MY PORT', '1PORT']) {
    assert.throws(() => new ProcessManager({ portEnv, logger: false }), { code: 'ERR_INVALID_ARG', message: /^portEnv / }, portEnv)
  }
  assert.equal(new ProcessManager({ portEnv: 'API_PORT', logger: false }).options.portEnv, 'API_PORT')
  assert.equal(new ProcessManager({ name: 'my api (ünïcode) 名', logger: false }).options.name, 'my api (ünïcode) 名')
})

test('good options are kept; localhost becomes the literal 127.0.0.1', () => {
  const pm = new ProcessManager({ name: 'api', host: 'localhost', port: 9000, logger: false, env: { A: '1' } })
  assert.equal(pm.options.host, '127.0.0.1')
  assert.equal(pm.options.port, 9000)
  assert.deepEqual(pm.options.env, { A: '1' })
  assert.equal(new ProcessManager({ host: '::1' }).options.host, '::1')
})

test('the package loads the native binary through its loader', () => {
  const binding = require('../binding.js')
  assert.equal(binding.__napiBindingTarget ?? 'native', 'native')
  assert.equal(typeof binding.NativeManager, 'function')
})

test('property: arbitrary option values either construct or throw ERR_INVALID_ARG, never anything else', () => {
  // A small seeded generator, so a failure can be replayed.
  let seed = 20261126
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31)
  const pick = (list) => list[Math.floor(rand() * list.length)]
  const values = [
    undefined, null, true, false, 0, -1, 1, 1.5, 80, 8000, 65535, 65536, 2 ** 31, 2 ** 53, 1e300, -1e300, NaN, Infinity, -Infinity,
    '', 'x', 'a/b', '..', '/health', 'health', '127.0.0.1', '::1', '[::1]', 'localhost', '999.1.1.1', 'name\u0000', '\u{1F600}',
    [], ['a'], [1], {}, { A: '1' }, { A: 1 }, { A: {} }, () => {}, Symbol('s'), 10n,
  ]
  const keys = [...Object.keys(new ProcessManager({ logger: false }).options), 'command', 'cwd', 'logger', 'unknownKey']
  for (let i = 0; i < 3000; i++) {
    const options = {}
    for (let k = 0, n = 1 + Math.floor(rand() * 4); k < n; k++) options[pick(keys)] = pick(values)
    try {
      const pm = new ProcessManager({ logger: false, ...options })
      assert.equal(typeof pm.options.port, 'number')
    } catch (err) {
      assert.equal(err.code, 'ERR_INVALID_ARG', `${err.stack}\nfor ${require('node:util').inspect(options)}`)
    }
  }
})

test('managers the app no longer references are garbage-collected (no cycle through the native callback)', (t) => {
  const { execFileSync } = require('node:child_process')
  const code = `
    const { ProcessManager } = require(${JSON.stringify(path.resolve(__dirname, '..'))})
    let collected = 0
    const registry = new FinalizationRegistry(() => collected++)
    for (let i = 0; i < 200; i++) registry.register(new ProcessManager({ logger: false }), i)
    const settle = (n) => { gc(); if (n === 0) return console.log(collected); setTimeout(() => settle(n - 1), 20) }
    settle(10)`
  const collected = Number(execFileSync(process.execPath, ['--expose-gc', '-e', code], { encoding: 'utf8' }))
  t.diagnostic(`${collected} of 200 managers collected`)
  assert.ok(collected >= 190, `only ${collected} of 200 managers were collected`)
})

test('every entry point checks an argument the same way (one layer of checks)', async (t) => {
  const { findAvailablePort, isPortAvailable, cleanupRecords } = require('..')
  assert.equal(new ProcessManager({ host: 'localhost', logger: false }).options.host, '127.0.0.1')
  const port = await findAvailablePort(40000 + Math.floor(Math.random() * 20000), { host: 'localhost' })
  assert.ok(port > 0)
  assert.equal(typeof (await isPortAvailable(port, { host: 'localhost' })), 'boolean')
  assert.throws(() => new ProcessManager({ host: 'banana' }), { code: 'ERR_INVALID_ARG', message: /IP address/ })
  await assert.rejects(findAvailablePort(9000, { host: 'banana' }), { code: 'ERR_INVALID_ARG', message: /IP address/ })
  // Names count characters, not bytes: 100 characters of any script are fine, 101 are not.
  assert.equal(new ProcessManager({ name: '名'.repeat(100), logger: false }).options.name.length, 100)
  assert.throws(() => new ProcessManager({ name: '名'.repeat(101) }), { code: 'ERR_INVALID_ARG', message: /101 characters/ })
  const dir = require('node:fs').mkdtempSync(path.join(require('node:os').tmpdir(), 'bpm-opt-'))
  t.after(() => require('node:fs').rmSync(dir, { recursive: true, force: true }))
  await assert.rejects(cleanupRecords(dir, { stopTimeoutMs: 'x' }), { code: 'ERR_INVALID_ARG', message: /stopTimeoutMs/ })
  await assert.rejects(cleanupRecords(dir, { name: 5 }), { code: 'ERR_INVALID_ARG', message: /name must be a string/ })
  assert.deepEqual(await cleanupRecords(dir, null), [])
})

test('a NUL in any string option, or a port variable with "=", is ERR_INVALID_ARG', () => {
  const bad = [
    { command: 'no\0de' },
    { args: ['a\0'] },
    { env: { A: 'b\0' } },
    { env: { 'A=B': '1' } },
    { name: 'a\0' },
    { cwd: 'x\0' },
    { entry: 'x\0.js' },
    { stateDir: '/tmp/x\0' },
    { healthPath: '/h\0' },
    { portEnv: 'A=B' },
  ]
  for (const options of bad) assert.throws(() => new ProcessManager(options), { code: 'ERR_INVALID_ARG' }, JSON.stringify(options))
})

test('errors are real Errors with a code, the API fields and the OS error as cause; never JSON', async () => {
  const pm = new ProcessManager({ name: 'nocmd', command: 'definitely-not-a-command-bpm', logger: false, stateDir: require('node:fs').mkdtempSync(path.join(require('node:os').tmpdir(), 'bpm-err-')) })
  const err = await pm.startBackend(__dirname).catch((e) => e)
  require('node:fs').rmSync(pm.options.stateDir, { recursive: true, force: true })
  assert.ok(err instanceof Error)
  assert.equal(err.code, 'ERR_SPAWN_FAILED')
  assert.equal(err.command, 'definitely-not-a-command-bpm')
  assert.doesNotMatch(err.message, /^\{/)
  assert.ok(err.cause instanceof Error, 'the OS error is the cause')
  assert.equal(err.cause.code, 'NotFound')
  // Windows: Rust's std looks the program up on the PATH itself ("program not found"): no OS error code.
  if (process.platform !== 'win32') assert.equal(typeof err.cause.errno, 'number')
  let thrown
  try {
    new ProcessManager({ port: 0 })
  } catch (e) {
    thrown = e
  }
  assert.ok(thrown instanceof Error)
  assert.equal(thrown.code, 'ERR_INVALID_ARG')
})
