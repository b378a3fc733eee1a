'use strict'
// The spawn gate and failed record writes: a backend's program runs only once its PID record is on disk, so an
// app killed at any moment leaves either nothing running or an orphan that a cleanup can find; a record that
// cannot be written fails the start with nothing left behind, and one that cannot be rewritten is a warning.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const { once } = require('node:events')
const { ProcessManager, isPortAvailable } = require('..')
const { procStat, ROOT, FIXTURE, tempDir, freeRun, isAlive, groupMembers, waitFor, memoryLogger, startScript, linuxOnly, own, killIfAlive } = require('./helpers')

const notRoot = process.platform === 'linux' && process.getuid() !== 0 && 'needs root to mount a small tmpfs (or a read-only bind mount) as the state folder'

/** The children of `pid`, from every one of its threads (the thread that forked lists the child). */
function childrenOf(pid) {
  const found = []
  let tasks = []
  try {
    tasks = fs.readdirSync(`/proc/${pid}/task`)
  } catch {}
  for (const tid of tasks) {
    try {
      found.push(...fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').split(' ').filter(Boolean).map(Number))
    } catch {}
  }
  return found
}

/** The pids a backend wrote to `file` when its program began (none if it never ran). */
function ranPids(file) {
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map(Number) : []
}

/** The start time of a process (clock ticks after boot, /proc/PID/stat), or null when there is none. */
const startTime = (pid) => procStat(pid)?.startTicks ?? null

/** A backend process seen now: its pid and start time, so that a cleanup never signals a reused pid. */
const seen = (pid) => ({ pid, start: startTime(pid) })

/**
 * Kills what is left of the process groups of backends this test started: the leader if it is still that
 * process, and the members of its group (while a group exists its id is never reused as a pid).
 */
function killGroups(backends) {
  for (const { pid, start } of backends) {
    const now = startTime(pid)
    if (now !== null && now !== start) continue
    for (const member of [pid, ...groupMembers(pid)]) killIfAlive(member)
  }
}

/**
 * A fresh folder with `mountArgs` mounted on it (then `remount`, if given); unmounted and removed after the
 * test, in that order.
 */
function mountedDir(t, mountArgs, remount) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-mount-'))
  fs.chmodSync(dir, 0o700)
  t.after(() => {
    execFileSync('umount', ['-l', dir])
    fs.rmSync(dir, { recursive: true, force: true })
  })
  execFileSync('mount', [...mountArgs, dir])
  if (remount) execFileSync('mount', [...remount, dir])
  return dir
}

/** A private tmpfs of `size`. */
const smallTmpfs = (t, size) => mountedDir(t, ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, 'tmpfs'])

/** Writes one file into `dir` until the file system says it is full. */
function fill(dir) {
  const fd = fs.openSync(path.join(dir, 'filler'), 'a')
  try {
    for (;;) fs.writeSync(fd, Buffer.alloc(4096, 1))
  } catch (err) {
    assert.equal(err.code, 'ENOSPC')
  } finally {
    fs.closeSync(fd)
  }
  return dir
}

// A backend that ignores SIGTERM from its first instruction (the trap is inherited by its `sleep`s) and
// writes its pid to RAN_FILE as it begins: a survivor of the app's death that only a cleanup can end.
const STUBBORN = ['-c', 'trap "" TERM; echo $$ >> "$RAN_FILE"; while :; do sleep 1; done']

test('an app killed at any moment after it forked its backend leaves no backend without a record', { skip: linuxOnly('reads the app\'s children from /proc'), timeout: 240000 }, async (t) => {
  const ROUNDS = 20
  const project = tempDir(t)
  const stateDir = path.join(project, 'records')
  const ran = path.join(project, 'ran')
  const backends = []
  t.after(() => killGroups(backends))
  const port = await freeRun(3)
  let programRan = 0
  for (let round = 0; round < ROUNDS; round++) {
    fs.rmSync(ran, { force: true })
    const app = startScript(t, `
      const { ProcessManager } = require(${JSON.stringify(ROOT)})
      const pm = new ProcessManager({ name: 'gated', command: '/bin/sh', args: ${JSON.stringify(STUBBORN)},
        stateDir: ${JSON.stringify(stateDir)}, port: ${port}, logger: false, startTimeoutMs: 60000,
        env: { RAN_FILE: ${JSON.stringify(ran)} } })
      pm.startBackend(process.cwd()).catch(() => {})`)
    // Watch for the fork without yielding (a timer would let it run far ahead), then kill the app after a
    // delay that sweeps the first few milliseconds of the backend's life across the rounds.
    const deadline = Date.now() + 30000
    let backend
    while (backend === undefined && Date.now() < deadline) [backend] = childrenOf(app.child.pid)
    assert.ok(backend, `round ${round}: the app forked no backend within 30 s`)
    backends.push(seen(backend))
    const killAt = process.hrtime.bigint() + BigInt(round * 250_000)
    while (process.hrtime.bigint() < killAt);
    app.child.kill('SIGKILL')
    await app.exited

    // Either the program never runs (the forked process ends without it) or it began and says so.
    await waitFor(() => ranPids(ran).length > 0 || !isAlive(backend), 10000, `round ${round}: backend ${backend} to run or end`)
    const [pid] = ranPids(ran)
    if (pid === undefined) continue
    programRan++
    assert.equal(pid, backend, 'the program runs in the forked process')
    assert.ok(fs.existsSync(path.join(stateDir, `gated-${pid}.json`)), `round ${round}: backend ${pid} runs without a PID record (state folder: ${fs.readdirSync(stateDir)})`)
    const cleaner = new ProcessManager({ name: 'gated', stateDir, logger: false, stopTimeoutMs: 300 })
    assert.equal(await cleaner.killExistingBackend(), true, `round ${round}: the orphan ${pid} was found`)
    await waitFor(() => !isAlive(pid) && groupMembers(pid).length === 0, 10000, `round ${round}: orphan ${pid} and its group to end`)
  }
  // Whatever was killed mid-write is cleaned too: no record and no temporary file is left.
  const cleaner = new ProcessManager({ name: 'gated', stateDir, logger: false, stopTimeoutMs: 300 })
  await cleaner.killExistingBackend()
  // Records and their temporary files: none (the logs folder holds the apps' log files).
  assert.deepEqual(fs.existsSync(stateDir) ? fs.readdirSync(stateDir).filter((f) => f !== 'logs') : [], [])
  for (const { pid } of backends) assert.equal(isAlive(pid), false, `backend ${pid} is still alive`)
  t.diagnostic(`the program ran in ${programRan} of ${ROUNDS} rounds`)
})

for (const [problem, stateFolder, osError] of [
  ['full (ENOSPC)', (t) => fill(smallTmpfs(t, '64k')), /No space left on device/],
  ['read-only (EROFS)', (t) => {
    const dir = tempDir(t)
    return mountedDir(t, ['--bind', dir], ['-o', 'remount,ro,bind'])
  }, /Read-only file system/],
]) {
  test(`a state folder that is ${problem}: startBackend fails with ERR_STATE_DIR, and nothing runs or stays reserved`, { skip: linuxOnly('Linux mounts') || notRoot }, async (t) => {
    const project = tempDir(t)
    const stateDir = stateFolder(t)
    const entries = () => fs.readdirSync(stateDir).filter((f) => f !== 'logs')
    const before = entries()
    const ran = path.join(project, 'ran')
    const port = await freeRun(3)
    const pm = new ProcessManager({ name: 'nospace', command: '/bin/sh', args: STUBBORN, stateDir, port, logger: false, stopTimeoutMs: 300, env: { RAN_FILE: ran } })
    const exits = []
    pm.on('exit', (e) => exits.push(e))
    const ownChildren = new Set(childrenOf(process.pid))
    const err = await pm.startBackend(project).then(() => assert.fail('the start succeeded'), (e) => e)
    // A program that ran would have written its pid: whatever is left of it goes after the test.
    const ranNow = ranPids(ran).map(seen)
    t.after(() => killGroups(ranNow))
    assert.equal(err.code, 'ERR_STATE_DIR', err.stack)
    assert.equal(err.path, stateDir)
    assert.ok(err.message.includes(stateDir), err.message)
    assert.match(err.message, osError)
    assert.deepEqual(ranPids(ran), [], 'the program never ran')
    for (const { pid } of exits) assert.equal(isAlive(pid), false, `process ${pid} is gone`)
    assert.deepEqual(childrenOf(process.pid).filter((p) => !ownChildren.has(p) && isAlive(p)), [], 'the process held for the program is gone')
    assert.equal(pm.backend, null)
    assert.deepEqual(entries(), before, 'no record and no temporary file')
    // Free again, and no longer reserved: another manager is handed the same port.
    assert.equal(await isPortAvailable(port), true)
    const other = new ProcessManager({ name: 'other', stateDir: tempDir(t), port, logger: false })
    assert.equal(await other.findAvailablePort(port), port)
  })
}

test('a running backend whose PID record cannot be rewritten keeps running; one warning is emitted', { skip: linuxOnly('Linux mounts') || notRoot }, async (t) => {
  const project = tempDir(t)
  const stateDir = smallTmpfs(t, '64k')
  const statusFile = path.join(project, 'status')
  const logger = memoryLogger()
  const pm = new ProcessManager({
    name: 'fixture', command: process.execPath, args: [FIXTURE], stateDir, port: await freeRun(3), logger,
    stopTimeoutMs: 2000, healthIntervalMs: 100, unhealthyThreshold: 2, env: { HEALTH_STATUS_FILE: statusFile },
  })
  const warnings = []
  pm.on('warning', (w) => warnings.push(w))
  const b = await pm.startBackend(ROOT)
  own(b.pid)
  t.after(async () => {
    await pm.stopBackend().catch(() => {})
    killIfAlive(b.pid)
  })
  // The record as written once the backend was ready and healthy; then the disk fills up.
  const recordFile = path.join(stateDir, `fixture-${b.pid}.json`)
  await waitFor(() => JSON.parse(fs.readFileSync(recordFile, 'utf8')).healthy === true, 10000, 'the healthy verdict in the record')
  fill(stateDir)
  const failures = () => logger.lines.filter((l) => l.startsWith('warn:') && l.includes('could not update the PID record')).length
  // Unhealthy, healthy (what the file says already: nothing to write), unhealthy: two failed rewrites.
  for (const [status, verdict] of [['500', 'unhealthy'], ['200', 'healthy'], ['500', 'unhealthy']]) {
    const seen = once(pm, verdict)
    fs.writeFileSync(statusFile, status)
    await seen
  }
  await waitFor(() => failures() >= 2, 10000, 'two failed rewrites')
  assert.equal(isAlive(b.pid), true, 'the backend keeps running')
  assert.equal(pm.backend?.pid, b.pid)
  assert.equal(warnings.length, 1, JSON.stringify(warnings))
  assert.equal(warnings[0].code, 'ERR_STATE_DIR')
  assert.ok(warnings[0].message.includes(stateDir), warnings[0].message)
  assert.match(warnings[0].message, /No space left on device/)
  assert.equal(JSON.parse(fs.readFileSync(recordFile, 'utf8')).healthy, true, 'the last good record is kept')
  assert.deepEqual(fs.readdirSync(stateDir).filter((f) => f.endsWith('.tmp')), [], 'no temporary file is left')
  await pm.stopBackend()
  assert.equal(isAlive(b.pid), false)
  assert.equal(fs.existsSync(recordFile), false, 'the record is deleted at the stop')
})
