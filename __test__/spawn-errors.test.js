'use strict'
// Spawn errors that say what to do (docs/api.md, "Spawn errors"): ERR_SPAWN_FAILED carries `reason`
// ('not-found' with `path` or, for a bare name, the PATH folders `searched`; 'not-executable'; 'permission'),
// and nothing is left running or recorded.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const { ProcessManager } = require('..')
const { ROOT, FIXTURE, tempDir, freeRun, records, posixOnly, linuxOnly, processTree, httpGet } = require('./helpers')

async function startFails(t, options) {
  const stateDir = tempDir(t)
  const pm = new ProcessManager({ stateDir, logger: false, port: await freeRun(3), ...options })
  t.after(() => pm.stopBackend())
  const exits = []
  pm.on('exit', (e) => exits.push(e))
  const before = new Set(processTree(process.pid))
  const err = await pm.startBackend(ROOT).catch((e) => e)
  assert.equal(err.code, 'ERR_SPAWN_FAILED', err.message)
  assert.deepEqual(records(stateDir), [], 'no record')
  assert.equal(pm.backend, null)
  assert.deepEqual(processTree(process.pid).filter((p) => p !== process.pid && !before.has(p)), [], 'nothing left running')
  return err
}

test('a bare command name not on the PATH: reason not-found, with the folders searched and what to do', async (t) => {
  const bin = tempDir(t)
  const err = await startFails(t, { command: 'no-such-backend-bpm', inheritEnv: false, env: { PATH: [bin, path.join(bin, 'sub')].join(path.delimiter) } })
  assert.equal(err.reason, 'not-found')
  assert.deepEqual(err.searched, [bin, path.join(bin, 'sub')])
  assert.equal(err.path, 'no-such-backend-bpm', 'the path tried is the name as given, looked for in `searched`')
  assert.match(err.message, /not found in the folders of the backend's PATH/)
  assert.match(err.message, /full path of the program as `command`/)
})

test('a path that does not exist, and a missing entry script: reason not-found with the path tried', async (t) => {
  const dir = tempDir(t)
  const missing = await startFails(t, { command: './no-such-binary', cwd: dir })
  assert.equal(missing.reason, 'not-found')
  assert.equal(missing.path, path.join(dir, 'no-such-binary'))
  const entry = await startFails(t, { entry: 'backend/missing.js' })
  assert.equal(entry.reason, 'not-found')
  assert.equal(path.normalize(entry.path), path.join(ROOT, 'backend', 'missing.js'))
})

test('a file without the execute permission, and a folder: reason not-executable with the path', { skip: posixOnly('execute permission bits') }, async (t) => {
  const dir = tempDir(t)
  const script = path.join(dir, 'server.sh')
  fs.writeFileSync(script, '#!/bin/sh\necho hi\n', { mode: 0o644 })
  const plain = await startFails(t, { command: script })
  assert.equal(plain.reason, 'not-executable')
  assert.equal(plain.path, script)
  assert.match(plain.message, /chmod \+x/)
  const folder = await startFails(t, { command: dir })
  assert.equal(folder.reason, 'not-executable')
})

test('the system refuses to run a program (a file system mounted noexec): reason permission', { skip: linuxOnly('mounts a noexec tmpfs') || (process.getuid?.() !== 0 && 'needs root to mount') }, async (t) => {
  const mnt = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'bpm-noexec-'))
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m,noexec,mode=0700', 'tmpfs', mnt])
  t.after(() => {
    execFileSync('umount', ['-l', mnt])
    fs.rmSync(mnt, { recursive: true, force: true })
  })
  const script = path.join(mnt, 'server.sh')
  fs.writeFileSync(script, '#!/bin/sh\necho hi\n', { mode: 0o755 })
  const err = await startFails(t, { command: script })
  assert.equal(err.reason, 'permission')
  assert.equal(err.path, script)
  assert.match(err.message, /refused to run/)
})

/** A copy of a program of this machine, marked as built for another CPU (its ELF `e_machine`, bytes 18-19). */
function foreignElf(dir) {
  const bytes = fs.readFileSync('/bin/true')
  // 183 (aarch64) on an x86 machine, 62 (x86-64) elsewhere; little-endian, as both are.
  const other = process.arch === 'x64' || process.arch === 'ia32' ? 183 : 62
  bytes.writeUInt16LE(other, 18)
  const file = path.join(dir, 'server-arm64')
  fs.writeFileSync(file, bytes, { mode: 0o755 })
  return file
}

test('a program built for another CPU, and a binary that is not a program: reason not-executable, nothing run', { skip: linuxOnly('an ELF program to patch') }, async (t) => {
  const dir = tempDir(t)
  const foreign = foreignElf(dir)
  const arch = await startFails(t, { command: foreign })
  assert.equal(arch.reason, 'not-executable', arch.message)
  assert.equal(arch.path, foreign)
  assert.match(arch.message, /another CPU/)
  assert.equal(arch.cause?.errno, require('node:os').constants.errno.ENOEXEC)
  // Found through the PATH, as a bare name.
  const bare = await startFails(t, { command: 'server-arm64', inheritEnv: false, env: { PATH: dir } })
  assert.equal(bare.reason, 'not-executable', bare.message)
  assert.equal(bare.path, foreign)
  const garbage = path.join(dir, 'server.bin')
  fs.writeFileSync(garbage, Buffer.from([0xde, 0xad, 0x28, 0x00, 0x29, 0xbe, 0xef, 0x00, 0x0a, 0x01]), { mode: 0o755 })
  const notProgram = await startFails(t, { command: garbage })
  assert.equal(notProgram.reason, 'not-executable', notProgram.message)
  assert.equal(notProgram.path, garbage)
  assert.match(notProgram.message, /not a program/)
})

test('a shell script without a #! line still runs through /bin/sh', { skip: posixOnly('shell scripts') }, async (t) => {
  const dir = tempDir(t)
  const script = path.join(dir, 'serve')
  fs.writeFileSync(script, `exec ${JSON.stringify(process.execPath)} ${JSON.stringify(FIXTURE)}\n`, { mode: 0o755 })
  const pm = new ProcessManager({ stateDir: tempDir(t), logger: false, port: await freeRun(3), command: script, stopTimeoutMs: 2000 })
  t.after(() => pm.stopBackend())
  const backend = await pm.startBackend(ROOT)
  const res = await httpGet(`http://127.0.0.1:${backend.port}/`)
  assert.equal(res.status, 200)
  assert.match(res.body, new RegExp(`pid ${backend.pid}`))
})
