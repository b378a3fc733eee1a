'use strict'
// Faults and hostile input: what a backend, the machine or another process can do to the manager.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { execFile } = require('node:child_process')
const { once } = require('node:events')
const { ProcessManager, cleanupRecords } = require('..')
const { ROOT, FIXTURE, tempDir, freeRun, isAlive, records, waitFor, memoryLogger, fixtureManager, startScript, recordOf, posixOnly, wineLacks, linuxOnly, killAfter } = require('./helpers')

test('a backend that closes stdout and stderr keeps running and stops normally', { skip: wineLacks('CTRL_BREAK_EVENT is not delivered (GenerateConsoleCtrlEvent fails), so the stop is forced') }, async (t) => {
  const { pm } = fixtureManager(t, { port: await freeRun(3), env: { CLOSE_STDIO: '1' } })
  const b = await pm.startBackend(ROOT)
  assert.equal(await pm.checkBackendHealth(b.port), true)
  assert.equal(await pm.waitForBackendReady(b.port, 2, 100), true)
  const result = await pm.stopBackend()
  assert.equal(result.forced, false)
  assert.equal(isAlive(b.pid), false)
})

test('a backend flooding more output than the queues hold is neither blocked nor buffered without bound', { skip: wineLacks('fast alertable pipe reads: 40 MiB took 18 s through the output reader (std pipe, ReadFileEx + SleepEx, 16 KiB reads) against 0.8 s through node.exe\'s own pipe, and the fixture\'s blocking stdout holds its health answer until the flood is through; the stop needs CTRL_BREAK_EVENT too') }, async (t) => {
  // 160 MiB of output: 2.5 times the log writer's queue (64 MiB of framed lines, docs/api.md), so a queue
  // without bound on the way (the log's, or the lines waiting for this JS thread) shows as growth past the
  // bound: the log queue, its spare buffers (4 MiB), and room for the rest (at most 4096 lines waiting for the
  // JS thread, the pipe reader's buffer, threads, the allocator). Measured peaks: 15-20 MiB with the writer
  // keeping up; 78-80 MiB with it slowed to 50 MB/s (a slow disk: the queue full); 161 MiB with that and no
  // bound on the log queue, 462 MiB with no bound on the lines waiting for this thread. A smaller flood can fit
  // in the queues whole when the disk is slow (40 MiB of it grew a CI run's app by 46 MiB).
  const floodMiB = 160
  const boundMiB = 64 + 4 + 40
  const mark = path.join(tempDir(t), 'flood-done')
  const { pm } = fixtureManager(t, { port: await freeRun(3), env: { FLOOD_MB: String(floodMiB), FLOOD_MARK_FILE: mark } })
  let lines = 0
  pm.on('stdout', () => lines++)
  // The peak is what counts, and it can come while this thread is busy: on Linux the kernel's own (VmHWM,
  // reset here), elsewhere the highest reading taken.
  const peak = peakRss()
  const rssBefore = process.memoryUsage().rss
  const b = await pm.startBackend(ROOT)
  // This thread busy for a second while the flood goes on: lines wait for it up to their cap, and the backend
  // is not held back by it.
  const until = Date.now() + 1000
  while (Date.now() < until);
  await waitFor(() => {
    peak.read()
    return fs.existsSync(mark)
  }, 60000, 'the flood to finish')
  // It stayed healthy meanwhile.
  assert.equal(await pm.checkBackendHealth(b.port), true)
  const growthMiB = (peak.read() - rssBefore) / 2 ** 20
  t.diagnostic(`${lines} lines delivered, peak RSS growth ${growthMiB.toFixed(1)} MiB for ${floodMiB} MiB of output`)
  assert.ok(lines > 1000, `only ${lines} lines delivered`)
  assert.ok(growthMiB < boundMiB, `the app's memory grew by ${growthMiB.toFixed(1)} MiB (bound ${boundMiB})`)
  assert.equal((await pm.stopBackend()).forced, false)
})

/** The process's peak RSS from now on: `read()` gives it so far. */
function peakRss() {
  if (process.platform === 'linux') {
    fs.writeFileSync('/proc/self/clear_refs', '5')
    return { read: () => Number(/^VmHWM:\s+(\d+) kB$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]) * 1024 }
  }
  let peak = process.memoryUsage().rss
  return { read: () => (peak = Math.max(peak, process.memoryUsage().rss)) }
}

test('a grandchild that calls setsid leaves the group and survives the stop (documented); the group dies', { skip: posixOnly('setsid and process groups') }, async (t) => {
  const { pm, grandchildren, seen } = fixtureManager(t, { port: await freeRun(3), env: { DETACHED_GRANDCHILD: '1', GRANDCHILDREN: '1' } })
  const b = await pm.startBackend(ROOT)
  const detached = Number((await seen(/^DETACHED /))[0].split(' ')[1])
  await seen(/^GRANDCHILD /)
  killAfter(t, detached)
  await pm.stopBackend()
  assert.equal(isAlive(b.pid), false)
  assert.equal(isAlive(grandchildren[0]), false, 'the grandchild in the group is gone')
  assert.equal(isAlive(detached), true, 'a process in a session of its own is out of reach of group signals')
})

test('the state folder deleted while a backend runs: stop, status and the next start still work', { skip: wineLacks('CTRL_BREAK_EVENT is not delivered (GenerateConsoleCtrlEvent fails), so the stop is forced') }, async (t) => {
  const { pm, stateDir } = fixtureManager(t, { port: await freeRun(3) })
  const b = await pm.startBackend(ROOT)
  // Removed again when it is not empty: the backend's output still goes to the log file under the folder,
  // and the log writer makes it again when lines come after the listing (`startBackend()` can resolve
  // before the last ones are written).
  for (let tries = 1; ; tries++) {
    try {
      fs.rmSync(stateDir, { recursive: true })
      break
    } catch (err) {
      if (err.code !== 'ENOTEMPTY' || tries === 20) throw err
    }
  }
  assert.deepEqual((await pm.status()).records, [])
  const result = await pm.stopBackend()
  assert.equal(result.forced, false)
  assert.equal(isAlive(b.pid), false)
  const again = await pm.startBackend(ROOT)
  assert.deepEqual(records(stateDir), [`fixture-${again.pid}.json`])
})

test('a record replaced by a symlink is neither followed nor overwritten', { skip: posixOnly('symlink (CreateSymbolicLink is a no-op under Wine; the Rust test covers reparse points)') }, async (t) => {
  const dir = tempDir(t)
  const victim = path.join(dir, 'precious.txt')
  fs.writeFileSync(victim, 'precious')
  const { pm, stateDir, logger } = fixtureManager(t, { port: await freeRun(3) })
  const b = await pm.startBackend(ROOT)
  const file = path.join(stateDir, `fixture-${b.pid}.json`)
  fs.rmSync(file)
  fs.symlinkSync(victim, file)
  // Another manager's cleanup reads the folder: the link is not trusted, and left alone.
  const other = new ProcessManager({ name: 'fixture', stateDir, logger: memoryLogger() })
  assert.equal(await other.killExistingBackend(), false)
  assert.equal(isAlive(b.pid), true)
  const status = await other.status()
  assert.equal(status.records[0].state, 'foreign')
  assert.match(status.records[0].problem, /symbolic link/)
  await pm.stopBackend()
  assert.equal(fs.readFileSync(victim, 'utf8'), 'precious')
  assert.equal(fs.existsSync(file), false, 'the stop removed the link itself')
  assert.ok(!logger.lines.some((l) => l.startsWith('error')))
})

test('records writable by others or owned by another user are ignored with a warning', { skip: posixOnly('file modes and owners') }, async (t) => {
  const stateDir = tempDir(t)
  const bystander = require('node:child_process').spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' })
  killAfter(t, bystander.pid)
  await once(bystander, 'spawn')
  const start = Number(fs.readFileSync(`/proc/${bystander.pid}/stat`, 'utf8').split(') ')[1].split(' ')[19])
  // A record that would match the live process exactly, with a dead owner: only its file's trust differs.
  const record = recordOf({ name: 'fixture', pid: bystander.pid, port: 8000, exe: fs.realpathSync(process.execPath), startTime: start, ownerPid: 999999, ownerStartTime: 1 })
  const writable = path.join(stateDir, `fixture-${bystander.pid}.json`)
  fs.writeFileSync(writable, JSON.stringify(record))
  fs.chmodSync(writable, 0o666)
  const cases = [[writable, /other users can write it/]]
  if (process.getuid?.() === 0) {
    const foreign = path.join(stateDir, 'fixture-424242.json')
    fs.writeFileSync(foreign, JSON.stringify({ ...record, pid: bystander.pid }), { mode: 0o600 })
    fs.chownSync(foreign, 65534, 65534)
    cases.push([foreign, /belongs to another user/])
  } else {
    t.diagnostic('not root: the other-user case needs chown')
  }
  const logger = memoryLogger()
  const pm = new ProcessManager({ name: 'fixture', stateDir, logger })
  assert.equal(await pm.killExistingBackend(), false)
  assert.equal(isAlive(bystander.pid), true, 'nothing was signalled')
  for (const [file, reason] of cases) {
    assert.ok(fs.existsSync(file), `${file} was left in place`)
    assert.ok(logger.lines.some((l) => l.startsWith('warn:') && reason.test(l) && l.includes(path.basename(file))), logger.lines.join('\n'))
  }
})

test('two processes cleaning up the same orphan: exactly one kill, no error', { skip: posixOnly('parent-death SIGTERM') }, async (t) => {
  const project = tempDir(t)
  const stateDir = path.join(project, 'records')
  const sigtermLog = path.join(project, 'sigterms')
  fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ backendProcessManager: { stateDir: 'records', stopTimeoutMs: 500 } }))
  const code = `
    const { ProcessManager } = require(${JSON.stringify(ROOT)})
    const pm = new ProcessManager({ name: 'orphan', command: process.execPath, args: [${JSON.stringify(FIXTURE)}],
      stateDir: ${JSON.stringify(stateDir)}, port: ${await freeRun(3)}, logger: false,
      env: { IGNORE_SIGTERM: '1', SIGTERM_LOG_FILE: ${JSON.stringify(sigtermLog)} } })
    pm.startBackend(process.cwd()).then((b) => console.log('READY', b.pid))`
  const owner = startScript(t, code)
  const pid = Number((await owner.line(/^READY/)).split(' ')[1])
  killAfter(t, pid)
  owner.child.kill('SIGKILL')
  await owner.exited
  const sigterms = () => (fs.existsSync(sigtermLog) ? fs.readFileSync(sigtermLog, 'utf8').split('\n').filter(Boolean).length : 0)
  // The kernel sends the parent-death SIGTERM as each thread of the dead app is passed over as the new
  // parent, so there may be more than one; wait until they have all been handled.
  let seen = -1
  let stableSince = Date.now()
  await waitFor(() => {
    const n = sigterms()
    if (n !== seen) [seen, stableSince] = [n, Date.now()]
    return n >= 1 && Date.now() - stableSince > 200
  }, 5000, 'the parent-death SIGTERMs')
  const before = sigterms()
  const cleanup = () => new Promise((resolve) => execFile(process.execPath, [path.join(ROOT, 'cli.js'), 'cleanup', '--json'], { cwd: project }, (err, stdout, stderr) => resolve({ code: err ? err.code : 0, stdout, stderr })))
  const [a, b] = await Promise.all([cleanup(), cleanup()])
  assert.equal(a.code, 0, a.stderr)
  assert.equal(b.code, 0, b.stderr)
  const reports = [JSON.parse(a.stdout), JSON.parse(b.stdout)]
  assert.equal(reports.reduce((n, r) => n + r.terminated, 0), 1, JSON.stringify(reports))
  assert.equal(isAlive(pid), false)
  assert.equal(sigterms(), before + 1, 'exactly one cleaner signalled the orphan')
  assert.deepEqual(records(stateDir), [])
})

test('the app exiting while its backend starts: the backend dies with it; the next start cleans up', async (t) => {
  const stateDir = tempDir(t)
  const code = `
    const { ProcessManager } = require(${JSON.stringify(ROOT)})
    const pm = new ProcessManager({ name: 'fixture', command: process.execPath, args: [${JSON.stringify(FIXTURE)}],
      stateDir: ${JSON.stringify(stateDir)}, port: ${await freeRun(3)}, logger: false, env: { LISTEN_DELAY_MS: '5000' } })
    pm.on('stdout', (line) => { if (line.startsWith('BOOT ')) { console.log(line); process.exit(0) } })
    pm.startBackend(process.cwd()).catch(() => {})`
  const app = startScript(t, code)
  const pid = Number((await app.line(/^BOOT /)).split(' ')[1])
  killAfter(t, pid)
  await app.exited
  await waitFor(() => !isAlive(pid), 1000, 'the backend to end with its app')
  assert.deepEqual(records(stateDir), [`fixture-${pid}.json`], 'the app had no time to delete its record')
  const logger = memoryLogger()
  const pm = new ProcessManager({ name: 'fixture', stateDir, logger })
  assert.equal(await pm.killExistingBackend(), false)
  assert.deepEqual(records(stateDir), [])
  assert.ok(logger.lines.some((l) => l.includes('stale')))
})

test('cleanupRecords deletes broken records of its own, leaves every other file, and signals nothing', async (t) => {
  const stateDir = tempDir(t)
  const foreign = [' ', '{', 'null', '[]', '{"version":1,"pid":1}', '\u0000\u0001binary', '{"total": 12}']
  foreign.forEach((text, i) => fs.writeFileSync(path.join(stateDir, `x-${i + 10}.json`), text, { mode: 0o600 }))
  // Empty or zeroed: a record's write cut short by a machine crash (records are not fsynced).
  const broken = [JSON.stringify(recordOf({ name: 'x', pid: 1, port: 1, exe: null, startTime: 0, ownerPid: 1, ownerStartTime: 0 })), JSON.stringify({ manager: 'backend-process-manager', version: 9 }), '', '\u0000'.repeat(256)]
  broken.forEach((text, i) => fs.writeFileSync(path.join(stateDir, `x-${i + 50}.json`), text, { mode: 0o600 }))
  const items = await cleanupRecords(stateDir, { stopTimeoutMs: 100 })
  assert.equal(items.length, foreign.length + broken.length)
  const byFile = new Map(items.map((i) => [path.basename(i.file), i.action]))
  foreign.forEach((_, i) => assert.equal(byFile.get(`x-${i + 10}.json`), 'foreign'))
  broken.forEach((_, i) => assert.equal(byFile.get(`x-${i + 50}.json`), 'invalid-removed'))
  assert.deepEqual(records(stateDir), foreign.map((_, i) => `x-${i + 10}.json`).sort())
})

test('a record naming the cleaning process itself (its app gone) is never signalled', { skip: linuxOnly('reads the start time from /proc') }, async (t) => {
  const stateDir = tempDir(t)
  const stat = fs.readFileSync(`/proc/${process.pid}/stat`, 'utf8')
  const startTime = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19])
  const record = recordOf({ name: 'self', pid: process.pid, port: 8000, exe: fs.realpathSync(process.execPath), startTime, ownerPid: 999999, ownerStartTime: 1 })
  const file = path.join(stateDir, `self-${process.pid}.json`)
  fs.writeFileSync(file, JSON.stringify(record), { mode: 0o600 })
  const items = await cleanupRecords(stateDir, { stopTimeoutMs: 100 })
  assert.deepEqual(items.map((i) => i.action), ['protected'])
  assert.ok(fs.existsSync(file), 'the record is kept')
})

test('stopRecord ends the backend of a record even while its app runs; the app sees an unexpected exit', async (t) => {
  const { stopRecord } = require('..')
  const { pm, stateDir } = fixtureManager(t, { port: await freeRun(3) })
  const b = await pm.startBackend(ROOT)
  const exited = once(pm, 'exit')
  const item = await stopRecord(path.join(stateDir, `fixture-${b.pid}.json`), { stopTimeoutMs: 2000 })
  assert.equal(item.action, 'terminated', item.detail)
  const [exit] = await exited
  assert.deepEqual([exit.pid, exit.expected], [b.pid, false])
  assert.equal(isAlive(b.pid), false)
  assert.deepEqual(records(stateDir), [])
  const missing = await stopRecord(path.join(stateDir, 'nope-1.json'))
  assert.equal(missing.action, 'foreign')
})
