'use strict'
// The backend-pm command line, run as a child process.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { ROOT, FIXTURE, CLI, tempDir, holdPort, freeRun, isAlive, records, fixtureManager, startScript, cli, recordOf, startProcess, waitFor, posixOnly, wineLacks, killAfter } = require('./helpers')

/**
 * The orphan tests make an orphan by killing its app. On Windows the app's death ends its backend's job
 * (kill-on-close; under Wine the backend is gone 5 ms after its app), so no orphan is left: the Windows
 * cleanup is tested in Rust (an_orphan_is_terminated_only_when_it_matches_its_record).
 */
const orphanByAppKill = posixOnly("an orphan is made by killing its app; on Windows the app's death ends the backend's job")

/** An app that started a SIGTERM-ignoring backend and was then killed: its backend is an orphan. */
async function makeOrphan(t, stateDir) {
  const code = `
    const { ProcessManager } = require(${JSON.stringify(ROOT)})
    const pm = new ProcessManager({ name: 'orphan', command: process.execPath, args: [${JSON.stringify(FIXTURE)}],
      stateDir: ${JSON.stringify(stateDir)}, port: ${await freeRun(3)}, logger: false, env: { IGNORE_SIGTERM: '1' } })
    pm.startBackend(process.cwd()).then((b) => console.log('READY', b.pid, b.port))`
  const owner = startScript(t, code)
  const [, pid, port] = (await owner.line(/^READY/)).split(' ').map(Number)
  killAfter(t, pid)
  owner.child.kill('SIGKILL')
  await owner.exited
  return { pid, port }
}

function staleRecord(stateDir, name = 'stale', pid = 999999) {
  const record = recordOf({ name, pid, port: 8123, exe: '/bin/false', startTime: 1, ownerPid: 999998, ownerStartTime: 1 })
  const file = path.join(stateDir, `${name}-${pid}.json`)
  fs.writeFileSync(file, JSON.stringify(record), { mode: 0o600 })
  return file
}

test('status --json lists a running backend and marks an orphan as orphaned', { skip: orphanByAppKill }, async (t) => {
  const { pm, stateDir } = fixtureManager(t, { port: await freeRun(3) })
  const running = await pm.startBackend(ROOT)
  const orphan = await makeOrphan(t, stateDir)
  const { code, stdout } = await cli(['status', '--json', '--state-dir', stateDir])
  assert.equal(code, 0)
  const report = JSON.parse(stdout)
  assert.equal(report.stateDir, stateDir)
  const byPid = new Map(report.records.map((r) => [r.pid, r]))
  assert.equal(byPid.get(running.pid).state, 'running')
  assert.equal(byPid.get(running.pid).port, running.port)
  assert.equal(byPid.get(running.pid).listenerPid, running.pid)
  assert.ok(byPid.get(running.pid).memoryBytes > 0)
  assert.equal(byPid.get(orphan.pid).state, 'orphaned')
  assert.equal(byPid.get(orphan.pid).orphaned, true)

  const human = await cli(['status', '--state-dir', stateDir])
  assert.equal(human.code, 0)
  assert.match(human.stdout, /PID\s+NAME\s+PORT\s+STATE\s+HEALTH\s+RESTARTS\s+UPTIME\s+CPU\s+MEMORY\s+PROCS\s+LISTENER/)
  assert.match(human.stdout, new RegExp(`${orphan.pid}\\s+orphan\\s+${orphan.port}\\s+orphaned`))
  assert.match(human.stdout, new RegExp(`${running.pid}\\s+fixture\\s+${running.port}\\s+running`))
})

test('cleanup terminates an orphan, deletes a stale record, reports both, and spares a live backend', { skip: orphanByAppKill }, async (t) => {
  const { pm, stateDir } = fixtureManager(t, { port: await freeRun(3) })
  const running = await pm.startBackend(ROOT)
  const orphan = await makeOrphan(t, stateDir)
  const stale = staleRecord(stateDir)
  const { code, stdout } = await cli(['cleanup', '--json', '--state-dir', stateDir])
  assert.equal(code, 0)
  const report = JSON.parse(stdout)
  assert.equal(report.terminated, 1)
  assert.equal(report.removed, 1)
  assert.equal(report.failed, 0)
  assert.deepEqual(report.items.map((i) => [i.pid, i.action]).sort(), [[999999, 'stale-removed'], [orphan.pid, 'terminated']].sort())
  assert.equal(isAlive(orphan.pid), false)
  assert.equal(fs.existsSync(stale), false)
  assert.equal(isAlive(running.pid), true, 'a backend whose app is alive is left alone')
  assert.ok(fs.existsSync(path.join(stateDir, `fixture-${running.pid}.json`)))

  staleRecord(stateDir)
  const human = await cli(['cleanup', '--state-dir', stateDir])
  assert.equal(human.code, 0)
  assert.match(human.stdout, /stale-removed/)
  assert.match(human.stdout, /0 orphan\(s\) terminated, 1 stale record\(s\) deleted, 0 failure\(s\)/)
})

test('test-ports marks a held port busy and names the holding process', { skip: wineLacks('the TCP table gives owner pid 0, so the port holder has no pid') }, async (t) => {
  const start = await freeRun(5)
  await holdPort(t, '127.0.0.1', start + 2)
  const { code, stdout } = await cli(['test-ports', String(start), '--count', '5', '--json'])
  assert.equal(code, 0)
  const { ports } = JSON.parse(stdout)
  assert.deepEqual(ports.map((p) => p.port), [start, start + 1, start + 2, start + 3, start + 4])
  const held = ports[2]
  assert.equal(held.available, false)
  assert.equal(held.pid, process.pid)
  assert.equal(held.name, path.basename(fs.realpathSync(process.execPath)))
  for (const i of [0, 1, 3, 4]) assert.equal(ports[i].available, true)

  const human = await cli(['test-ports', String(start), '--count', '5'])
  assert.match(human.stdout, new RegExp(`${start + 2}\\s+busy\\s+pid ${process.pid} \\(${path.basename(fs.realpathSync(process.execPath))}\\)`))
  assert.match(human.stdout, /4 of 5 ports free/)
})

/** `backend-pm start` of the fixture backend, with its output as lines (stderr included). */
function cliStart(t, stateDir, port, env = {}) {
  return startProcess(t, process.execPath, [CLI, 'start', '--command', process.execPath, '--state-dir', stateDir, '--port', String(port), '--name', 'cli-start', '--', FIXTURE], { env, mergeStderr: true })
}

test('start runs a backend, prints its port, and stops it gracefully on SIGINT', { skip: posixOnly('Ctrl-C as SIGINT sent with kill()') }, async (t) => {
  const stateDir = tempDir(t)
  const port = await freeRun(3)
  const run = cliStart(t, stateDir, port)
  const [, pid, shown] = /running: pid (\d+), port (\d+)/.exec(await run.line(/running: pid/))
  assert.equal(Number(shown), port)
  assert.equal(isAlive(Number(pid)), true)
  run.child.kill('SIGINT')
  const [code] = await run.exited
  assert.equal(code, 0, run.lines.join('\n'))
  await run.line(/backend stopped in \d+ ms/)
  assert.equal(isAlive(Number(pid)), false)
  assert.deepEqual(records(stateDir), [])
})

test('start after a retry on a taken port runs the backend that got through, and Ctrl-C ends it with exit 0', { skip: posixOnly('Ctrl-C as SIGINT sent with kill()') }, async (t) => {
  const stateDir = tempDir(t)
  const port = await freeRun(4)
  const run = cliStart(t, stateDir, port, { EADDRINUSE_BELOW: String(port + 1) })
  const [, pid, shown] = /running: pid (\d+), port (\d+)/.exec(await run.line(/running: pid/))
  assert.equal(Number(shown), port + 1, 'the first attempt lost its port')
  assert.equal(isAlive(Number(pid)), true, 'the failed attempt\'s exit did not end the command')
  run.child.kill('SIGINT')
  const [code] = await run.exited
  assert.equal(code, 0, run.lines.join('\n'))
  assert.equal(isAlive(Number(pid)), false)
})

test('Ctrl-C while the backend is still starting stops it cleanly, exit 0', { skip: posixOnly('Ctrl-C as SIGINT sent with kill()') }, async (t) => {
  const stateDir = tempDir(t)
  const run = cliStart(t, stateDir, await freeRun(3), { LISTEN_DELAY_MS: '10000' })
  const pid = Number((await run.line(/^BOOT \d+$/)).split(' ')[1])
  run.child.kill('SIGINT')
  const [code] = await run.exited
  assert.equal(code, 0, run.lines.join('\n'))
  await run.line(/stopped before it became ready/)
  assert.equal(isAlive(pid), false)
  assert.deepEqual(records(stateDir), [])
})

test('start --restart brings the backend back after a crash and still stops with Ctrl-C', { skip: posixOnly('Ctrl-C as SIGINT sent with kill()') }, async (t) => {
  const stateDir = tempDir(t)
  const port = await freeRun(3)
  const run = startProcess(t, process.execPath, [CLI, 'start', '--restart', '--command', process.execPath, '--state-dir', stateDir, '--port', String(port), '--name', 'cli-restart', '--', FIXTURE], { mergeStderr: true })
  const first = Number(/running: pid (\d+)/.exec(await run.line(/running: pid/))[1])
  process.kill(first, 'SIGKILL')
  const [, second, again] = /running again: pid (\d+), port (\d+)/.exec(await run.line(/running again: pid/)).map(Number)
  assert.notEqual(second, first)
  assert.equal(again, port)
  run.child.kill('SIGINT')
  const [code] = await run.exited
  assert.equal(code, 0, run.lines.join('\n'))
  assert.equal(isAlive(second), false)
  assert.deepEqual(records(stateDir), [])
})

test('status shows restarts and the watchdog\'s verdict', async (t) => {
  const { pm, stateDir } = fixtureManager(t, { port: await freeRun(3), restart: true, healthIntervalMs: 50 })
  const first = await pm.startBackend(ROOT)
  const back = new Promise((resolve) => pm.once('ready', resolve))
  process.kill(first.pid, 'SIGKILL')
  const second = await back
  // The first watchdog probe writes its verdict into the record; no event says when the file is rewritten.
  const file = path.join(stateDir, `fixture-${second.pid}.json`)
  await waitFor(() => fs.existsSync(file) && JSON.parse(fs.readFileSync(file, 'utf8')).healthy === true, 5000, 'the verdict in the record')
  const { stdout } = await cli(['status', '--json', '--state-dir', stateDir])
  const record = JSON.parse(stdout).records.find((r) => r.pid === second.pid)
  assert.equal(record.restarts, 1)
  assert.equal(record.healthy, true)
  const human = await cli(['status', '--state-dir', stateDir])
  assert.match(human.stdout, new RegExp(`${second.pid}\\s+fixture\\s+${second.port}\\s+running\\s+healthy\\s+1\\s`))
})

test('ports and hosts on the command line are checked: no hex, no exponent, no names', async () => {
  for (const args of [['test-ports', '0x1F40'], ['status', '--port', '8e3'], ['test-ports', '--host', 'banana'], ['test-ports', '--count', '0']]) {
    const { code, stderr } = await cli(args)
    assert.equal(code, 2, `${args.join(' ')}: ${stderr}`)
  }
})

test('numbers on the command line take every value the option takes, and are refused with the API\'s words', async (t) => {
  // Issue 20 item 14: numbers were capped at 9 digits, so --max-memory 2000000000 was refused.
  const refused = [
    [['status', '--port', '99999'], /port must be an integer from 1 to 65535, got 99999/],
    [['test-ports', '99999'], /port must be an integer from 1 to 65535, got 99999/],
    [['start', '--health-interval', '99999999999', '--command', process.execPath], /healthIntervalMs must be a number of milliseconds from 0 to 2147483647, got 99999999999/],
    [['start', '--max-memory', '99999999999999999999', '--command', process.execPath], /maxMemoryBytes must be an integer from 0 to 9007199254740992/],
  ]
  for (const [args, message] of refused) {
    const { code, stderr } = await cli(args)
    assert.equal(code, 2, `${args.join(' ')}: ${stderr}`)
    assert.match(stderr, message)
  }
  if (process.platform === 'win32') return // the rest stops with Ctrl-C as SIGINT
  const stateDir = tempDir(t)
  const run = startProcess(t, process.execPath, [CLI, 'start', '--max-memory', '2000000000', '--health-interval', '3600000', '--command', process.execPath, '--state-dir', stateDir, '--port', String(await freeRun(3)), '--name', 'cli-numbers', '--', FIXTURE], { mergeStderr: true })
  const pid = Number(/running: pid (\d+)/.exec(await run.line(/running: pid/))[1])
  run.child.kill('SIGINT')
  const [code] = await run.exited
  assert.equal(code, 0, run.lines.join('\n'))
  assert.equal(isAlive(pid), false)
})

test('an option the API refuses (ERR_INVALID_ARG) is bad usage: the message, then the usage, exit 2', async () => {
  for (const [args, message] of [[['status', '--port', '99999'], /port must be an integer/], [['cleanup', '--name', 'a/b'], /name "a\/b" cannot be used/], [['test-ports', '--host', '::1', '70000'], /port must be an integer/]]) {
    const { code, stderr } = await cli(args)
    assert.equal(code, 2, `${args.join(' ')}: ${stderr}`)
    assert.match(stderr, message)
    assert.match(stderr, /Usage: backend-pm <command>/, args.join(' '))
  }
})

test('status counts unreadable records apart from stale ones, and leaves foreign files alone', async (t) => {
  const stateDir = tempDir(t)
  staleRecord(stateDir)
  fs.writeFileSync(path.join(stateDir, 'broken-5.json'), JSON.stringify({ manager: 'backend-process-manager', version: 7 }), { mode: 0o600 })
  fs.writeFileSync(path.join(stateDir, 'invoice-2024.json'), '{"total": 12}', { mode: 0o600 })
  const { code, stdout } = await cli(['status', '--state-dir', stateDir])
  assert.equal(code, 0)
  assert.match(stdout, /0 orphaned, 1 stale, 1 unreadable/)
  assert.match(stdout, /1 file\(s\) in the state folder are not records of this library/)
  const cleaned = JSON.parse((await cli(['cleanup', '--json', '--state-dir', stateDir])).stdout)
  assert.equal(cleaned.removed, 2)
  assert.equal(cleaned.left, 1)
  assert.deepEqual(records(stateDir), ['invoice-2024.json'])
})

test('unknown commands and flags print usage and exit 2', async () => {
  for (const args of [['bogus'], ['status', '--bogus'], ['test-ports', '--count'], ['status', 'extra'], ['test-ports', 'x']]) {
    const { code, stderr } = await cli(args)
    assert.equal(code, 2, args.join(' '))
    assert.match(stderr, /Usage: backend-pm <command>/)
  }
  const help = await cli(['--help'])
  assert.equal(help.code, 0)
  assert.match(help.stdout, /Usage: backend-pm/)
})

test('defaults come from "backendProcessManager" in ./package.json', async (t) => {
  const project = tempDir(t)
  const stateDir = path.join(project, 'records')
  fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'app', backendProcessManager: { stateDir: 'records', name: 'api' } }))
  fs.mkdirSync(stateDir, { mode: 0o700 })
  staleRecord(stateDir, 'api', 999997)
  const other = staleRecord(stateDir, 'other-app', 999996)
  const { code, stdout } = await cli(['status', '--json'], { cwd: project })
  assert.equal(code, 0)
  const report = JSON.parse(stdout)
  assert.equal(report.stateDir, stateDir)
  assert.deepEqual(report.records.map((r) => [r.name, r.state]), [['api', 'stale']], 'only the configured name')
  // The table says it is limited to that name, so the other app's backends are not silently missing from it.
  const text = await cli(['status'], { cwd: project })
  assert.match(text.stdout, /^State folder: .*records \(backends named "api"\)$/m)
  const cleaned = JSON.parse((await cli(['cleanup', '--json'], { cwd: project })).stdout)
  assert.deepEqual(cleaned.items.map((i) => i.name), ['api'])
  assert.ok(fs.existsSync(other), "another app's record is not the configured name's to clean")
})
