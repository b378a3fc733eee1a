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
const { ROOT, tempDir, freeRun, records, posixOnly, linuxOnly } = require('./helpers')

async function startFails(t, options) {
  const stateDir = tempDir(t)
  const pm = new ProcessManager({ stateDir, logger: false, port: await freeRun(3), ...options })
  t.after(() => pm.stopBackend())
  const exits = []
  pm.on('exit', (e) => exits.push(e))
  const err = await pm.startBackend(ROOT).catch((e) => e)
  assert.equal(err.code, 'ERR_SPAWN_FAILED', err.message)
  assert.deepEqual(records(stateDir), [], 'no record')
  assert.equal(pm.backend, null)
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
