'use strict'
// The examples as a new user runs them: the demo behind `npm start`, and the Electron main process under
// plain Node with a stand-in `electron` module (Electron itself cannot be installed here).
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { execFile } = require('node:child_process')
const { ROOT, tempDir, isAlive, wineLacks, linuxOnly } = require('./helpers')
const { defaultStateDir } = require('..')

/**
 * The records the examples left: XDG_RUNTIME_DIR (a test folder) steers their state folder on Linux only, so
 * elsewhere the records of `name-pid` in the user's default state folder.
 */
function recordsLeft(runtime, name, pid) {
  if (process.platform === 'linux') return fs.readdirSync(path.join(runtime, 'backend-process-manager'))
  const dir = defaultStateDir()
  return fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.startsWith(`${name}-${pid}.`)) : []
}

function run(file, env) {
  return new Promise((resolve) => {
    execFile(process.execPath, [file], { cwd: ROOT, env: { ...process.env, ...env }, timeout: 30000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr })
    })
  })
}

test('the demo resolves a port conflict, health-checks, shows status and stops gracefully', { skip: wineLacks('fetch (undici) fails to connect to loopback with UNKNOWN (-4094) where node:net and node:http connect (an in-process server too), and the TCP table\'s owner pid 0 leaves the port holder without a pid') }, async (t) => {
  const runtime = tempDir(t)
  const { code, stdout, stderr } = await run(path.join(ROOT, 'examples', 'demo.js'), { XDG_RUNTIME_DIR: runtime })
  assert.equal(code, 0, stdout + stderr)
  const preferred = Number(/takes the preferred port (\d+)/.exec(stdout)[1])
  const holder = Number(/is now held by pid (\d+)/.exec(stdout)[1])
  const [, pid, port] = /running: pid (\d+), port (\d+)/.exec(stdout).map(Number)
  assert.notEqual(port, preferred, 'the backend fell back to another port')
  assert.match(stdout, new RegExp(`port ${preferred} is in use, using port ${port}`))
  assert.match(stdout, /-> healthy:/)
  assert.match(stdout, new RegExp(`${pid}\\s+demo-backend\\s+${port}\\s+running`))
  assert.match(stdout, /graceful \(no force kill needed\)/)
  assert.match(stdout, /records left: 0/)
  for (const p of [pid, holder]) assert.equal(isAlive(p), false, `pid ${p} still runs`)
  assert.deepEqual(recordsLeft(runtime, 'demo-backend', pid), [])
})

const STUB = path.join(__dirname, 'fixtures', 'electron-stub')
const MAIN = path.join(ROOT, 'examples', 'electron', 'main.js')

test('Electron example: the window loads only after the backend is ready; quitting stops the backend', async (t) => {
  const runtime = tempDir(t)
  const { code, stdout, stderr } = await run(MAIN, { NODE_PATH: STUB, XDG_RUNTIME_DIR: runtime, STUB_QUIT_AFTER_LOAD: '1' })
  assert.equal(code, 0, stdout + stderr)
  const lines = stdout.split('\n')
  const at = (re) => lines.findIndex((l) => re.test(l))
  const [, pid] = /backend started with pid (\d+)/.exec(stdout).map(Number)
  const url = /backend is ready at (\S+)/.exec(stdout)[1]
  assert.ok(at(/backend is ready/) < at(/^WINDOW CREATED/), 'window created after ready')
  assert.ok(at(/^WINDOW LOAD /) > at(/backend is ready/))
  assert.ok(lines.includes(`WINDOW LOAD ${url}`))
  assert.ok(lines.includes('WINDOW LOADED 200'), 'the backend answered the window')
  // The first quit is held until the backend stopped; the second goes through.
  assert.ok(at(/^BEFORE-QUIT prevented/) < at(/backend pid \d+ stopped/))
  assert.ok(at(/backend pid \d+ stopped/) < at(/^BEFORE-QUIT allowed/))
  assert.ok(lines.includes('APP EXIT'))
  assert.equal(isAlive(pid), false)
  assert.deepEqual(recordsLeft(runtime, 'example-app-backend', pid), [], 'the record was deleted by the stop')
})

test('Electron example: a failed start shows an error dialog and quits', { skip: linuxOnly('the state folder is made unusable through XDG_RUNTIME_DIR, which steers it on Linux only (Windows: %LOCALAPPDATA% from the known-folder API)') }, async (t) => {
  const notAFolder = path.join(tempDir(t), 'file')
  fs.writeFileSync(notAFolder, '')
  const { code, stdout, stderr } = await run(MAIN, { NODE_PATH: STUB, XDG_RUNTIME_DIR: notAFolder })
  assert.equal(code, 0, stdout + stderr)
  assert.match(stdout, /^ERROR BOX The backend could not start: .*ERR_STATE_DIR/m)
  assert.doesNotMatch(stdout, /WINDOW CREATED/)
  assert.match(stdout, /APP EXIT/)
})

test('Electron example: Developer → Backend dashboard opens a window on the dashboard, closed with the app', async (t) => {
  const runtime = tempDir(t)
  const { code, stdout, stderr } = await run(MAIN, { NODE_PATH: STUB, XDG_RUNTIME_DIR: runtime, STUB_QUIT_AFTER_LOAD: '1', STUB_CLICK_MENU: 'Developer/Backend dashboard' })
  assert.equal(code, 0, stdout + stderr)
  const lines = stdout.split('\n')
  const at = (re) => lines.findIndex((l) => re.test(l))
  assert.match(stdout, /^MENU .*Developer\/Backend dashboard/m)
  const [, pid] = /backend started with pid (\d+)/.exec(stdout).map(Number)
  const loads = lines.filter((l) => l.startsWith('WINDOW LOAD '))
  assert.equal(loads.length, 2, stdout)
  const url = new URL(loads[1].slice('WINDOW LOAD '.length))
  assert.equal(url.hostname, '127.0.0.1')
  assert.match(url.searchParams.get('token'), /^[0-9a-f]{64}$/)
  assert.ok(at(/^MENU CLICK Developer\/Backend dashboard$/) < lines.indexOf(loads[1]), 'the window opens from the menu')
  assert.equal(lines.filter((l) => l === 'WINDOW LOADED 200').length, 2, 'the dashboard answered the window')
  assert.ok(lines.includes('PAGE TITLE example-app-backend'), 'the page of this backend')
  assert.ok(lines.includes('APP EXIT'))
  assert.equal(isAlive(pid), false)
})
