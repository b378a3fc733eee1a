'use strict'
// Diagnostics archives (docs/api.md, "Diagnostics"): a zip the system's own tools open, with status, records,
// logs, options, events and versions, and no secret the manager knows in any file.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const { ProcessManager } = require('..')
const { ROOT, tempDir, freeRun, cli, posixOnly } = require('./helpers')

const hasPython = (() => {
  try {
    execFileSync('python3', ['--version'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
})()

/** The archive's files as Python's zipfile reads them (after its own integrity test). */
function unzip(file) {
  const script = 'import json, sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nassert z.testzip() is None\nprint(json.dumps({n: z.read(n).decode() for n in z.namelist()}))'
  return JSON.parse(execFileSync('python3', ['-c', script, file], { encoding: 'utf8', maxBuffer: 64 << 20 }))
}

const SECRET = 'sk-live-7f3a9c2e1b'
const LOUD_BACKEND = `
  console.log('my key is ' + process.env.STRIPE_API_KEY + ' and my token ' + process.env.BACKEND_TOKEN)
  require('node:http').createServer((q, s) => s.end('ok')).listen(process.env.PORT, process.env.HOST)`

test('pm.exportDiagnostics(): a zip with status, records, logs, options, events and versions; no secret in any file', { skip: !hasPython && 'python3 (the zip reader) is not installed' }, async (t) => {
  const stateDir = tempDir(t)
  const pm = new ProcessManager({
    name: 'diag', command: process.execPath, args: ['-e', LOUD_BACKEND], env: { STRIPE_API_KEY: SECRET, GREETING: 'hello-world' },
    token: true, stateDir, port: await freeRun(3), logger: false,
  })
  t.after(() => pm.stopBackend())
  const b = await pm.startBackend(ROOT)
  const file = path.join(tempDir(t), 'support.zip')
  const written = await pm.exportDiagnostics(file)
  assert.equal(written.path, file)
  assert.equal(written.bytes, fs.statSync(file).size)
  if (process.platform !== 'win32') assert.equal(fs.statSync(file).mode & 0o777, 0o600)
  const files = unzip(file)
  assert.deepEqual(Object.keys(files).sort(), ['events.json', 'logs/diag.log', 'options.json', `records/diag-${b.pid}.json`, 'status.json', 'versions.json'])
  for (const [name, text] of Object.entries(files)) {
    assert.ok(!text.includes(SECRET), `${name} holds the API key`)
    assert.ok(!text.includes(b.token), `${name} holds the token`)
  }
  assert.match(files['logs/diag.log'], / out 0 my key is \[redacted\] and my token \[redacted\]/)
  const options = JSON.parse(files['options.json'])
  assert.equal(options.env.STRIPE_API_KEY, '[redacted]')
  assert.equal(options.env.GREETING, 'hello-world', 'not a secret')
  const status = JSON.parse(files['status.json'])
  assert.equal(status.backend.pid, b.pid)
  assert.equal(status.backend.token, '[redacted]')
  assert.equal(status.records[0].pid, b.pid)
  const events = JSON.parse(files['events.json'])
  assert.equal(events.at(-1).kind, 'ready')
  const versions = JSON.parse(files['versions.json'])
  assert.equal(versions.node, process.versions.node)
  assert.equal(versions.package, require('../package.json').version)
  assert.equal(versions.electron, null)
  if (fs.existsSync('/usr/bin/unzip')) execFileSync('unzip', ['-t', file], { stdio: 'ignore' })
})

test('a secret with a quote, a backslash or a newline is redacted in the JSON files too, where it is escaped', { skip: !hasPython && 'python3 (the zip reader) is not installed' }, async (t) => {
  const stateDir = tempDir(t)
  const password = 'pa"ss\\wo\nrd-42'
  const pm = new ProcessManager({
    name: 'escaped', command: process.execPath, args: ['-e', LOUD_BACKEND], env: { DB_PASSWORD: password, STRIPE_API_KEY: SECRET },
    stateDir, port: await freeRun(3), logger: false,
  })
  t.after(() => pm.stopBackend())
  await pm.startBackend(ROOT)
  const file = path.join(tempDir(t), 'support.zip')
  await pm.exportDiagnostics(file)
  const escaped = JSON.stringify(password).slice(1, -1)
  assert.notEqual(escaped, password)
  for (const [name, text] of Object.entries(unzip(file))) {
    assert.ok(!text.includes(password), `${name} holds the password`)
    assert.ok(!text.includes(escaped), `${name} holds the password, JSON-escaped`)
  }
  assert.equal(JSON.parse(unzip(file)['options.json']).env.DB_PASSWORD, '[redacted]')
})

test('an archive that cannot be written rejects with ERR_FILE_WRITE naming it; nothing is left', async (t) => {
  const pm = new ProcessManager({ stateDir: tempDir(t), logger: false })
  const file = path.join(tempDir(t), 'no-such-folder', 'x.zip')
  await assert.rejects(pm.exportDiagnostics(file), (err) => err.code === 'ERR_FILE_WRITE' && err.path === file && /x\.zip/.test(err.message))
  await assert.rejects(pm.exportDiagnostics(''), { code: 'ERR_INVALID_ARG' })
})

test('a log folder others can write is refused with ERR_STATE_DIR naming it as the log folder and logs.dir', { skip: posixOnly('folder mode bits') }, async (t) => {
  const logDir = path.join(tempDir(t), 'open')
  fs.mkdirSync(logDir)
  fs.chmodSync(logDir, 0o777)
  const pm = new ProcessManager({ stateDir: tempDir(t), logs: { dir: logDir }, logger: false })
  const file = path.join(tempDir(t), 'x.zip')
  await assert.rejects(pm.exportDiagnostics(file), (err) => {
    assert.equal(err.code, 'ERR_STATE_DIR')
    assert.equal(err.path, logDir)
    assert.match(err.message, /^log folder .*logs\.dir/)
    return true
  })
  assert.equal(fs.existsSync(file), false)
})

test('backend-pm diagnostics OUT.zip: status, records and logs of the state folder', { skip: !hasPython && 'python3 (the zip reader) is not installed' }, async (t) => {
  const stateDir = tempDir(t)
  const pm = new ProcessManager({ name: 'cli-diag', command: process.execPath, args: ['-e', LOUD_BACKEND], stateDir, port: await freeRun(3), logger: false })
  t.after(() => pm.stopBackend())
  const b = await pm.startBackend(ROOT)
  await pm.logs() // its lines are on disk
  const file = path.join(tempDir(t), 'cli.zip')
  const { code, stdout, stderr } = await cli(['diagnostics', file, '--state-dir', stateDir])
  assert.equal(code, 0, stderr)
  assert.match(stdout, /wrote .*cli\.zip \(\d+ bytes\)/)
  const files = unzip(file)
  assert.deepEqual(Object.keys(files).sort(), ['logs/cli-diag.log', `records/cli-diag-${b.pid}.json`, 'status.json', 'versions.json'])
  assert.match(files['logs/cli-diag.log'], /my key is undefined/)
  assert.equal(JSON.parse(files['status.json']).records[0].pid, b.pid)
  const usage = await cli(['diagnostics'])
  assert.equal(usage.code, 2)
})
