'use strict'
// Quitting and updating (docs/api.md, "Quitting and updating"): the synchronous stops from real exit paths,
// stopAll() across managers and groups, `start-failed`, and the Electron helper against a stand-in `app`
// that follows Electron's documented event order (Electron itself cannot be installed here).
const test = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { EventEmitter, once } = require('node:events')
const { ProcessManager, BackendGroup } = require('..')
const { manage } = require('backend-process-manager/electron')
const { ROOT, FIXTURE, tempDir, freeRun, isAlive, records, fixtureManager, startScript, posixOnly, wineLacks, waitFor, killIfAlive, killAfter } = require('./helpers')

/** An app script whose manager(s) start the fixture backend; `quit` is its code run once they are up. */
function appScript({ stateDir, port, count = 1, env = {}, quit }) {
  return `
    const { ProcessManager } = require(${JSON.stringify(ROOT)})
    const managers = Array.from({ length: ${count} }, (_, i) => new ProcessManager({
      name: 'quit-' + i, command: process.execPath, args: [${JSON.stringify(FIXTURE)}], env: ${JSON.stringify(env)},
      stateDir: ${JSON.stringify(stateDir)}, port: ${port} + i * 3, portRange: 2, stopTimeoutMs: 10000, logger: false,
    }))
    Promise.all(managers.map((pm) => pm.startBackend(${JSON.stringify(ROOT)}))).then((started) => {
      console.log('STARTED ' + started.map((b) => b.pid).join(' '))
      const report = (results, began) => console.log('STOPPED ' + JSON.stringify({ results, ms: Date.now() - began }))
      ${quit}
    })
  `
}

const startedPids = async (app) => (await app.line(/^STARTED /)).split(' ').slice(1).map(Number)
const stopped = async (app) => JSON.parse((await app.line(/^STOPPED /)).slice('STOPPED '.length))

test('stopSync() from process.on("exit") stops a backend that ignores SIGTERM within timeoutMs + 250 ms: nothing left', { skip: posixOnly('ignores SIGTERM') }, async (t) => {
  const stateDir = tempDir(t)
  const app = startScript(t, appScript({
    stateDir, port: await freeRun(3), env: { IGNORE_SIGTERM: '1' },
    quit: `process.on('exit', () => { const began = Date.now(); report([managers[0].stopSync({ timeoutMs: 400 })], began) }); process.exit(0)`,
  }))
  const [pid] = await startedPids(app)
  killAfter(t, pid)
  const { results, ms } = await stopped(app)
  assert.equal(results[0].pid, pid)
  assert.equal(results[0].forced, true)
  assert.deepEqual(results[0].survivors, [])
  // The contract's bound is timeoutMs + 250; a little more for a busy machine's clock reads.
  assert.ok(ms <= 400 + 250 + 250, `blocked ${ms} ms`)
  assert.ok(ms >= 350, `the polite stop got its time: ${ms} ms`)
  const [code] = await app.exited
  assert.equal(code, 0)
  assert.equal(isAlive(pid), false)
  assert.deepEqual(records(stateDir), [])
})

test('stopAllSync() from a SIGTERM handler that calls process.exit(): every manager\'s backend gone, politely', { skip: posixOnly('a SIGTERM handler (Windows ends the process at once)') }, async (t) => {
  const stateDir = tempDir(t)
  const app = startScript(t, appScript({
    stateDir, port: await freeRun(9), count: 3,
    quit: `process.on('SIGTERM', () => process.exit(0)); process.on('exit', () => { const began = Date.now(); report(ProcessManager.stopAllSync({ timeoutMs: 2000 }), began) }); console.log('READY-FOR-SIGTERM')`,
  }))
  const pids = await startedPids(app)
  killAfter(t, ...pids)
  await app.line(/^READY-FOR-SIGTERM/)
  app.child.kill('SIGTERM')
  const { results, ms } = await stopped(app)
  assert.deepEqual(results.map((r) => r.pid).sort(), [...pids].sort())
  for (const r of results) assert.equal(r.forced, false, JSON.stringify(r))
  assert.ok(ms <= 2000 + 250 + 250, `blocked ${ms} ms`)
  await app.exited
  for (const pid of pids) assert.equal(isAlive(pid), false, `pid ${pid}`)
  assert.deepEqual(records(stateDir), [])
})

test('stopSync() with nothing running returns null; bad options are ERR_INVALID_ARG', async (t) => {
  const { pm } = fixtureManager(t)
  assert.equal(pm.stopSync(), null)
  for (const bad of [{ timeoutMs: -1 }, { timeoutMs: 1.5 }, { timeoutMs: 60001 }, { timeout: 5 }, 'x']) {
    assert.throws(() => pm.stopSync(bad), { code: 'ERR_INVALID_ARG' }, JSON.stringify(bad))
  }
})

test('ProcessManager.stopAll() stops groups in reverse dependency order and lone managers; every process gone', async (t) => {
  const stateDir = tempDir(t)
  const port = await freeRun(12)
  const common = { command: process.execPath, args: [FIXTURE], stateDir, portRange: 2, logger: false }
  const group = new BackendGroup([
    { ...common, name: 'stopall-api', port },
    { ...common, name: 'stopall-web', port: port + 3, dependsOn: ['stopall-api'] },
  ])
  const lone = new ProcessManager({ ...common, name: 'stopall-lone', port: port + 6 })
  const order = []
  group.on('exit', (e) => order.push(e.name))
  const started = await group.startAll(ROOT)
  const alone = await lone.startBackend(ROOT)
  const pids = [started['stopall-api'].pid, started['stopall-web'].pid, alone.pid]
  killAfter(t, ...pids)
  const results = await ProcessManager.stopAll()
  assert.deepEqual(results.map((r) => r.pid).sort(), [...pids].sort())
  assert.deepEqual(order, ['stopall-web', 'stopall-api'], 'the dependent first')
  for (const pid of pids) assert.equal(isAlive(pid), false)
  assert.deepEqual(records(stateDir), [])
  assert.deepEqual(await ProcessManager.stopAll(), [], 'nothing left to stop')
})

test('a rejected startBackend() also emits start-failed with the error', async (t) => {
  const { pm } = fixtureManager(t, { port: await freeRun(3), env: { EXIT_AT_START: '3' } })
  const events = []
  pm.on('start-failed', (e) => events.push(e))
  const err = await pm.startBackend(ROOT).catch((e) => e)
  assert.equal(err.code, 'ERR_BACKEND_EXITED')
  assert.equal(events.length, 1)
  assert.equal(events[0].error, err)
})

/** Electron's `app` as documented: quit() emits before-quit (preventable), then will-quit (preventable), then quit. */
class StandInApp extends EventEmitter {
  quits = []
  quit() {
    let prevented = false
    this.emit('before-quit', { preventDefault: () => (prevented = true) })
    if (prevented) return this.quits.push('before-quit prevented')
    let willPrevented = false
    this.emit('will-quit', { preventDefault: () => (willPrevented = true) })
    if (willPrevented) return this.quits.push('will-quit prevented')
    this.quits.push('quit')
    this.emit('quit')
  }
}

test('manage(): the first before-quit waits for a graceful stop, then the app quits; will-quit finds nothing left', { skip: wineLacks('CTRL_BREAK_EVENT is not delivered (GenerateConsoleCtrlEvent fails), so the stop is forced') }, async (t) => {
  const { pm, stateDir } = fixtureManager(t, { port: await freeRun(3), env: { TERM_DELAY_MS: '200' } })
  const app = new StandInApp()
  const before = app.listenerCount('before-quit')
  const managed = manage(app, pm)
  const b = await pm.startBackend(ROOT)
  const exits = []
  pm.on('exit', (e) => exits.push(e))
  const quit = once(app, 'quit')
  app.quit()
  assert.deepEqual(app.quits, ['before-quit prevented'])
  assert.equal(isAlive(b.pid), true, 'still stopping politely')
  await quit
  assert.deepEqual(app.quits, ['before-quit prevented', 'quit'])
  assert.equal(exits.length, 1)
  assert.equal(exits[0].expected, true)
  assert.equal(exits[0].exitCode, 0, 'stopped politely')
  assert.equal(isAlive(b.pid), false)
  assert.deepEqual(records(stateDir), [])
  managed.dispose()
  assert.equal(app.listenerCount('before-quit'), before)
  assert.equal(app.listenerCount('will-quit'), 0)
  assert.equal(pm.listenerCount('ready'), 1, 'only the test helper\'s own listener is left')
})

test('manage(): before-quit-for-update and powerMonitor shutdown stop the backends synchronously, and the update\'s quit is not held', async (t) => {
  const { pm: first } = fixtureManager(t, { port: await freeRun(3) })
  const { pm: second } = fixtureManager(t, { port: await freeRun(3) })
  const app = new StandInApp()
  const autoUpdater = new EventEmitter()
  const powerMonitor = new EventEmitter()
  manage(app, first, { autoUpdater })
  manage(app, second, { powerMonitor })
  const a = await first.startBackend(ROOT)
  const b = await second.startBackend(ROOT)
  autoUpdater.emit('before-quit-for-update')
  assert.equal(isAlive(a.pid), false, 'gone when the event handler returned')
  assert.equal(isAlive(b.pid), true, 'the other manager is not touched')
  powerMonitor.emit('shutdown')
  assert.equal(isAlive(b.pid), false)
  app.quit()
  assert.deepEqual(app.quits, ['quit'])
})

test('manage(): the splash closes on the first ready; a failed start shows an error box with the backend\'s last output', async (t) => {
  const { pm } = fixtureManager(t, { port: await freeRun(3) })
  const app = new StandInApp()
  const closed = []
  const boxes = []
  const splash = { close: () => closed.push(Date.now()), isDestroyed: () => closed.length > 0 }
  manage(app, pm, { splash, dialog: { showErrorBox: (title, content) => boxes.push({ title, content }) } })
  await pm.startBackend(ROOT)
  assert.equal(closed.length, 1)
  await pm.stopBackend()
  await pm.startBackend(ROOT)
  assert.equal(closed.length, 1, 'closed once')
  await pm.stopBackend()

  const { pm: failing } = fixtureManager(t, { port: await freeRun(3), env: { EXIT_AT_START: '3' } })
  manage(app, failing, { dialog: { showErrorBox: (title, content) => boxes.push({ title, content }) } })
  await failing.startBackend(ROOT).catch(() => {})
  assert.equal(boxes.length, 1)
  assert.match(boxes[0].title, /could not start/)
  assert.match(boxes[0].content, /ERR_BACKEND_EXITED/)
  assert.match(boxes[0].content, /failing at start on purpose/)
  // The box shows the last output itself: no pointer to the error object's `stderrTail` field for the user.
  assert.doesNotMatch(boxes[0].content, /stderrTail/)
  // Nor when it wrote nothing to stderr (no tail to show).
  const { pm: silent } = fixtureManager(t, { port: await freeRun(3), args: ['-e', 'process.exit(5)'] })
  manage(app, silent, { dialog: { showErrorBox: (title, content) => boxes.push({ title, content }) } })
  await assert.rejects(silent.startBackend(ROOT), (e) => e.code === 'ERR_BACKEND_EXITED' && e.stderrTail.length === 0)
  assert.equal(boxes.length, 2)
  assert.match(boxes[1].content, /exited with exit code 5 before it became healthy\.\n/)
  assert.doesNotMatch(boxes[1].content, /stderrTail/)
  assert.throws(() => manage(app, failing, { splashh: {} }), { code: 'ERR_INVALID_ARG', message: /splashh/ })
  assert.throws(() => manage({}, failing), { code: 'ERR_INVALID_ARG' })
})

test('manage() of a group: before-quit stops every member, then the app quits', async (t) => {
  const stateDir = tempDir(t)
  const port = await freeRun(6)
  const common = { command: process.execPath, args: [FIXTURE], stateDir, portRange: 2, logger: false }
  const group = new BackendGroup([
    { ...common, name: 'managed-api', port },
    { ...common, name: 'managed-web', port: port + 3, dependsOn: ['managed-api'] },
  ])
  const app = new StandInApp()
  manage(app, group)
  const started = await group.startAll(ROOT)
  const pids = Object.values(started).map((b) => b.pid)
  killAfter(t, ...pids)
  const quit = once(app, 'quit')
  app.quit()
  await quit
  for (const pid of pids) assert.equal(isAlive(pid), false)
  assert.deepEqual(records(stateDir), [])
})

test('manage(): a backend still starting is stopped too — before-quit waits for it, will-quit stops it synchronously', async (t) => {
  for (const via of ['before-quit', 'will-quit']) {
    const { pm, stateDir } = fixtureManager(t, { port: await freeRun(3), startTimeoutMs: 20000, env: { LISTEN_DELAY_MS: '15000' } })
    const app = new StandInApp()
    const managed = manage(app, pm)
    const starting = pm.startBackend(ROOT).catch((err) => err)
    await waitFor(() => records(stateDir).length === 1, 5000, 'the starting backend\'s record')
    const pid = Number(/-(\d+)\.json$/.exec(records(stateDir)[0])[1])
    assert.equal(pm.backend, null, 'not ready yet')
    if (via === 'before-quit') {
      const quit = once(app, 'quit')
      app.quit()
      assert.deepEqual(app.quits, ['before-quit prevented'])
      await quit
    } else {
      app.emit('will-quit', { preventDefault() {} })
    }
    assert.equal(isAlive(pid), false, `${via}: the starting backend is gone`)
    assert.deepEqual(records(stateDir), [])
    await starting
    managed.dispose()
  }
})

test('manage(): the error box names the backend\'s log file, not only its folder', async (t) => {
  const { pm } = fixtureManager(t, { port: await freeRun(3), env: { EXIT_AT_START: '3' } })
  const boxes = []
  manage(new StandInApp(), pm, { dialog: { showErrorBox: (title, content) => boxes.push({ title, content }) } })
  await pm.startBackend(ROOT).catch(() => {})
  assert.equal(boxes.length, 1)
  assert.ok(boxes[0].content.includes(path.join(pm.options.logs.dir, 'fixture.log')), boxes[0].content)
})

test('manage(): a backend that fails for good shows an error box with its last stderr lines and its log file', async (t) => {
  const restart = { maxRestarts: 1, initialDelayMs: 10 }
  const { pm } = fixtureManager(t, { port: await freeRun(3), restart, env: { ONCE_FILE: path.join(tempDir(t), 'first'), CRASH_AGAIN: '1' } })
  const boxes = []
  manage(new StandInApp(), pm, { dialog: { showErrorBox: (title, content) => boxes.push({ title, content }) } })
  const failed = once(pm, 'failed')
  const { pid } = await pm.startBackend(ROOT)
  killIfAlive(pid)
  await failed
  await waitFor(() => boxes.length > 0, 5000, 'the error box')
  assert.equal(boxes.length, 1)
  assert.match(boxes[0].title, /stopped and is not restarted/)
  assert.match(boxes[0].content, /crashing again on purpose/, 'the stderr tail')
  assert.ok(boxes[0].content.includes(path.join(pm.options.logs.dir, 'fixture.log')), boxes[0].content)
})

test('manage(): a start that the quit itself cancels shows no error box', async (t) => {
  const { pm, stateDir } = fixtureManager(t, { port: await freeRun(3), startTimeoutMs: 20000, env: { LISTEN_DELAY_MS: '15000' } })
  const app = new StandInApp()
  const boxes = []
  manage(app, pm, { dialog: { showErrorBox: (title, content) => boxes.push({ title, content }) } })
  const failures = []
  pm.on('start-failed', (e) => failures.push(e.error.code))
  const starting = pm.startBackend(ROOT).catch((err) => err)
  await waitFor(() => records(stateDir).length === 1, 5000, 'the starting backend\'s record')
  const quit = once(app, 'quit')
  app.quit()
  await quit
  await starting
  assert.equal(failures.length, 1, 'the start did fail')
  assert.deepEqual(boxes, [])
})
