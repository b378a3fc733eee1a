'use strict'
// Log files (docs/api.md, "Logs and diagnostics"): framed lines of the backend's output and the manager's
// own, secrets redacted, rotation by size, 0600 files in a private folder, and a full or read-only disk that
// drops and counts lines without touching the backend.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const { once } = require('node:events')
const { ProcessManager } = require('..')
const { ROOT, FIXTURE, CLI, tempDir, freeRun, fixtureManager, startProcess, httpGet, cli, linuxOnly, posixOnly } = require('./helpers')

const LINE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (out|err|pm) \d+ /

/** A backend (a Node one-liner) that prints what `print` evaluates to, then serves /health. */
function printingBackend(print) {
  return `
    console.log(${print})
    console.error('to stderr')
    require('node:http').createServer((q, s) => s.end('ok')).listen(process.env.PORT, process.env.HOST)`
}

test('a backend\'s output and the manager\'s lines go to <stateDir>/logs/<name>.log, framed; pm.logs() reads them back', async (t) => {
  const stateDir = tempDir(t)
  const { pm } = fixtureManager(t, { stateDir, port: await freeRun(3), name: 'logged' })
  const b = await pm.startBackend(ROOT)
  await pm.stopBackend()
  const file = path.join(stateDir, 'logs', 'logged.log')
  const text = fs.readFileSync(file, 'utf8')
  for (const line of text.trimEnd().split('\n')) assert.match(line, LINE)
  assert.match(text, new RegExp(` out 0 BOOT ${b.pid}\\n`))
  assert.match(text, new RegExp(` pm 0 backend started with pid ${b.pid}`))
  assert.match(text, / pm 0 backend is ready at /)
  assert.match(text, new RegExp(` pm 0 backend pid ${b.pid} stopped \\(`))
  if (process.platform !== 'win32') {
    assert.equal(fs.statSync(file).mode & 0o777, 0o600)
    assert.equal(fs.statSync(path.dirname(file)).mode & 0o777, 0o700)
  }
  const lines = await pm.logs({ lines: 3 })
  assert.equal(lines.length, 3)
  assert.match(lines[2].line, /stopped \(/)
  for (const l of lines) assert.deepEqual(Object.keys(l).sort(), ['line', 'replica', 'stream', 'time'])
  const out = await pm.logs({ stream: 'out' })
  assert.ok(out.length >= 1 && out.every((l) => l.stream === 'out'))
  assert.equal(out[0].line, `BOOT ${b.pid}`)
  await assert.rejects(pm.logs({ stream: 'stdout' }), { code: 'ERR_INVALID_ARG', message: /stream must be/ })
  await assert.rejects(pm.logs({ line: 5 }), { code: 'ERR_INVALID_ARG', message: /unknown option "line"/ })
})

test('with replicas, each replica\'s output and the manager\'s lines about it carry its index', async (t) => {
  const stateDir = tempDir(t)
  const { pm } = fixtureManager(t, { stateDir, port: await freeRun(4), name: 'twice', replicas: 2 })
  const b = await pm.startBackend(ROOT)
  const [first, second] = b.replicas.map((r) => r.pid)
  t.after(() => pm.stopBackend())
  await pm.stopBackend()
  const lines = (await pm.logs({ lines: 1000 })).filter((l) => l.stream === 'pm')
  for (const [index, pid] of [[0, first], [1, second]]) {
    const about = lines.filter((l) => l.line.includes(`pid ${pid}`))
    assert.ok(about.some((l) => l.line.startsWith(`backend started with pid ${pid}`)), JSON.stringify(about))
    assert.ok(about.some((l) => l.line.startsWith(`backend pid ${pid} stopped (`)), JSON.stringify(about))
    assert.deepEqual([...new Set(about.map((l) => l.replica))], [index], `the lines about pid ${pid}`)
  }
  const text = fs.readFileSync(path.join(stateDir, 'logs', 'twice.log'), 'utf8')
  assert.match(text, new RegExp(` pm 1 backend started with pid ${second}`))
  assert.match(text, new RegExp(` out 1 BOOT ${second}\\n`))
})

test('the token and secret-looking environment values never reach the log file', async (t) => {
  const stateDir = tempDir(t)
  const pm = new ProcessManager({
    name: 'secretive', command: process.execPath, args: ['-e', printingBackend('`key=${process.env.MY_API_KEY} token=${process.env.BACKEND_TOKEN} author=${process.env.AUTHOR}`')],
    env: { MY_API_KEY: 'sk-live-0123456789', AUTHOR: 'ada-lovelace' }, token: true, stateDir, port: await freeRun(3), logger: false,
  })
  t.after(() => pm.stopBackend())
  const b = await pm.startBackend(ROOT)
  await pm.stopBackend()
  const text = fs.readFileSync(path.join(stateDir, 'logs', 'secretive.log'), 'utf8')
  assert.ok(!text.includes('sk-live-0123456789'), 'the API key')
  assert.ok(!text.includes(b.token), 'the token')
  assert.match(text, / out 0 key=\[redacted\] token=\[redacted\] author=ada-lovelace\n/, 'AUTHOR is not a secret word')
  assert.match(text, / err 0 to stderr\n/)
})

test('a secret printed line by line (a PEM key) or percent-encoded in a URL never reaches the log file either', async (t) => {
  const stateDir = tempDir(t)
  const key = ['-----BEGIN PRIVATE KEY-----', 'MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7', 'k3mQ9xT0aVbY2pLr8sWnHdE1uFcZ4gJo', '-----END PRIVATE KEY-----', ''].join('\n')
  const password = 'p@ss/w0rd:42'
  const pm = new ProcessManager({
    name: 'encoded', command: process.execPath, args: ['-e', printingBackend('`${process.env.PRIVATE_KEY}url=postgres://app:${encodeURIComponent(process.env.DB_PASSWORD)}@localhost/app`')],
    env: { PRIVATE_KEY: key, DB_PASSWORD: password }, stateDir, port: await freeRun(3), logger: false,
  })
  t.after(() => pm.stopBackend())
  await pm.startBackend(ROOT)
  await pm.stopBackend()
  const text = fs.readFileSync(path.join(stateDir, 'logs', 'encoded.log'), 'utf8')
  for (const line of key.split('\n').filter((l) => l.length >= 6)) assert.ok(!text.includes(line), `the key's line ${line}`)
  assert.ok(!text.includes(encodeURIComponent(password)), 'the password, percent-encoded')
  assert.match(text, / out 0 url=postgres:\/\/app:\[redacted\]@localhost\/app\n/)
})

test('a flood of output rotates by size: at most keep old files, none over maxBytes, no line split', async (t) => {
  const stateDir = tempDir(t)
  const dir = path.join(tempDir(t), 'logs')
  const { pm, seen } = fixtureManager(t, { stateDir, name: 'flood', port: await freeRun(3), env: { FLOOD_MB: '2', FLOOD_MARK_FILE: path.join(stateDir, 'flooded') }, logs: { dir, maxBytes: 256 * 1024, keep: 2 } })
  await pm.startBackend(ROOT)
  await seen(/^BOOT/)
  // The fixture marks the file when its flood is written; the log writer may still be behind.
  const { waitFor } = require('./helpers')
  await waitFor(() => fs.existsSync(path.join(stateDir, 'flooded')), 20000, 'the flood to be written')
  await pm.stopBackend()
  const files = fs.readdirSync(dir).sort()
  assert.deepEqual(files, ['flood.1.log', 'flood.2.log', 'flood.log'])
  // Everything the backend wrote (a flooded pipe holds up to 1 MiB when it ends) is in the log when the
  // stop resolves, before the stop's own line, which is the last.
  assert.match(fs.readFileSync(path.join(dir, 'flood.log'), 'utf8').trimEnd().split('\n').at(-1), / pm 0 backend pid \d+ stopped \(/)
  for (const f of files) {
    const text = fs.readFileSync(path.join(dir, f), 'utf8')
    assert.ok(Buffer.byteLength(text) <= 256 * 1024, `${f}: ${Buffer.byteLength(text)} bytes`)
    assert.ok(text.endsWith('\n'))
    for (const line of text.slice(0, -1).split('\n')) assert.match(line, LINE, `${f}: a whole framed line`)
  }
  assert.deepEqual(pm.options.logs, { dir, maxBytes: 256 * 1024, keep: 2 })
})

test('rotated files a larger keep left (a previous run\'s) go at the next rotation: at most keep are left', async (t) => {
  const stateDir = tempDir(t)
  const dir = path.join(tempDir(t), 'logs')
  fs.mkdirSync(dir, { mode: 0o700 })
  for (const n of [2, 3, 4]) fs.writeFileSync(path.join(dir, `shrunk.${n}.log`), `2020-01-01T00:00:00.000Z out 0 from keep 4\n`, { mode: 0o600 })
  const { pm, seen } = fixtureManager(t, { stateDir, name: 'shrunk', port: await freeRun(3), env: { FLOOD_MB: '1', FLOOD_MARK_FILE: path.join(stateDir, 'flooded') }, logs: { dir, maxBytes: 256 * 1024, keep: 1 } })
  await pm.startBackend(ROOT)
  await seen(/^BOOT/)
  const { waitFor } = require('./helpers')
  await waitFor(() => fs.existsSync(path.join(stateDir, 'flooded')), 20000, 'the flood to be written')
  await pm.stopBackend()
  assert.deepEqual(fs.readdirSync(dir).sort(), ['shrunk.1.log', 'shrunk.log'])
  assert.ok((await pm.logs({ lines: 1e6 })).every((l) => !l.line.includes('from keep 4')))
})

test('logs: false keeps no file; bad logs options are refused naming the key', async (t) => {
  const stateDir = tempDir(t)
  const { pm } = fixtureManager(t, { stateDir, port: await freeRun(3), logs: false })
  await pm.startBackend(ROOT)
  await pm.stopBackend()
  assert.equal(fs.existsSync(path.join(stateDir, 'logs')), false)
  assert.deepEqual(await pm.logs(), [])
  assert.equal(pm.options.logs, false)
  for (const [logs, message] of [[{ maxBytes: 10 }, /logs.maxBytes/], [{ keep: -1 }, /logs.keep/], [{ dir: '' }, /logs.dir/], [{ size: 1 }, /unknown option "size" in logs/], ['yes', /logs must be/]]) {
    assert.throws(() => new ProcessManager({ logs, logger: false }), { code: 'ERR_INVALID_ARG', message }, JSON.stringify(logs))
  }
  assert.equal(new ProcessManager({ stateDir, logger: false }).options.logs.dir, path.join(stateDir, 'logs'))
})

/** A tmpfs of `size` mounted on a fresh folder, unmounted after the test; null (with the reason) where it cannot be made. */
function smallDisk(t, size) {
  const dir = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'bpm-disk-'))
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, 'tmpfs', dir], { stdio: 'pipe' })
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true })
    return { skip: `no tmpfs can be mounted here: ${String(err.stderr || err.message).trim()}` }
  }
  // Unmounted lazily (what still has a file open there keeps it until it closes it), then its folder removed.
  t.after(() => {
    execFileSync('umount', ['-l', dir], { stdio: 'ignore' })
    fs.rmSync(dir, { recursive: true, force: true })
  })
  return { dir }
}

test('a full disk drops and counts log lines, warns once, the backend runs; when space is back, writing resumes with a second warning', { skip: linuxOnly('mounts a small tmpfs') }, async (t) => {
  const disk = smallDisk(t, '64k')
  if (disk.skip) return t.skip(disk.skip)
  const filler = path.join(disk.dir, 'filler')
  // Fill the disk to the last byte (tmpfs counts whole pages: a file's last page would still take lines).
  assert.throws(() => fs.writeFileSync(filler, Buffer.alloc(1024 * 1024)), { code: 'ENOSPC' })
  const { pm } = fixtureManager(t, { name: 'full', port: await freeRun(3), logs: { dir: disk.dir } })
  const warnings = []
  pm.on('warning', (w) => warnings.push(w))
  const warned = once(pm, 'warning', { signal: AbortSignal.timeout(15000) })
  const b = await pm.startBackend(ROOT)
  const [first] = await warned
  assert.equal(first.code, 'ERR_LOG_WRITE')
  assert.ok(first.dropped >= 1)
  assert.match(first.message, /full\.log/)
  for (let i = 0; i < 20; i++) assert.equal((await httpGet(`${b.url}/health`)).status, 200, 'the backend runs')
  await pm.logs() // waits for the writer: more lines were dropped meanwhile, still one warning
  assert.equal(warnings.length, 1, JSON.stringify(warnings))
  fs.rmSync(filler)
  await pm.stopBackend()
  await pm.logs()
  assert.equal(warnings.length, 2, JSON.stringify(warnings))
  const again = warnings[1]
  assert.match(again.message, /works again/)
  assert.ok(again.dropped >= first.dropped)
  const text = fs.readFileSync(path.join(disk.dir, 'full.log'), 'utf8')
  assert.match(text, new RegExp(` pm 0 ${again.dropped} lines were dropped`))
  assert.match(text, new RegExp(` pm 0 backend pid ${b.pid} stopped`))
  for (const line of text.trimEnd().split('\n')) assert.match(line, LINE, 'no half line left by a failed write')
})

test('a log folder made read-only mid-run: lines are dropped with one warning, the backend keeps running', { skip: linuxOnly('remounts a tmpfs read-only') }, async (t) => {
  const disk = smallDisk(t, '1m')
  if (disk.skip) return t.skip(disk.skip)
  const { pm } = fixtureManager(t, { port: await freeRun(3), name: 'ro', logs: { dir: path.join(disk.dir, 'logs') } })
  const warnings = []
  pm.on('warning', (w) => warnings.push(w))
  const b = await pm.startBackend(ROOT)
  execFileSync('mount', ['-o', 'remount,ro', disk.dir])
  const warned = once(pm, 'warning', { signal: AbortSignal.timeout(15000) })
  await pm.reload()
  await warned
  assert.equal(warnings.length, 1)
  assert.equal(warnings[0].code, 'ERR_LOG_WRITE')
  assert.match(warnings[0].message, /Read-only file system|read-only/i)
  assert.notEqual(pm.backend.pid, b.pid)
  assert.equal((await httpGet(`${pm.backend.url}/health`)).status, 200)
})

test('a secret cut by the 64 KiB line limit leaves no part of it in the log: what is left of it is redacted', async (t) => {
  const stateDir = tempDir(t)
  const secret = 'sk-live-0123456789abcdef'
  const pm = new ProcessManager({
    name: 'cut-secret', command: process.execPath, args: ['-e', printingBackend('"a".repeat(64 * 1024 - 10) + process.env.MY_API_KEY + " tail"')],
    env: { MY_API_KEY: secret }, stateDir, port: await freeRun(3), logger: false,
  })
  t.after(() => pm.stopBackend())
  await pm.startBackend(ROOT)
  await pm.stopBackend()
  const text = fs.readFileSync(path.join(stateDir, 'logs', 'cut-secret.log'), 'utf8')
  assert.ok(!text.includes(secret.slice(0, 10)), 'the first 10 characters of the secret')
  assert.match(text, / out 0 a+\[redacted\]…\[truncated \d+ bytes\]\n/)
})

test('a log file that is a hard link to a file elsewhere is not written through: lines are dropped with one warning, the backend runs', { skip: posixOnly('hard links and modes as on Unix') }, async (t) => {
  const stateDir = tempDir(t)
  const dir = path.join(stateDir, 'logs')
  fs.mkdirSync(dir, { mode: 0o700 })
  const outside = path.join(tempDir(t), 'elsewhere.txt')
  fs.writeFileSync(outside, 'not a log\n', { mode: 0o644 })
  fs.linkSync(outside, path.join(dir, 'linked.log'))
  const { pm } = fixtureManager(t, { stateDir, port: await freeRun(3), name: 'linked' })
  const warned = once(pm, 'warning', { signal: AbortSignal.timeout(15000) })
  const b = await pm.startBackend(ROOT)
  const [warning] = await warned
  assert.equal(warning.code, 'ERR_LOG_WRITE')
  assert.match(warning.message, /linked\.log.*link/)
  assert.equal((await httpGet(`${b.url}/health`)).status, 200, 'the backend runs')
  await pm.stopBackend()
  assert.equal(fs.readFileSync(outside, 'utf8'), 'not a log\n')
})

test('a FIFO in place of a log file blocks nothing: lines are dropped with a warning; pm.logs(), backend-pm logs and diagnostics return', { skip: posixOnly('mkfifo') }, async (t) => {
  const stateDir = tempDir(t)
  const dir = path.join(stateDir, 'logs')
  fs.mkdirSync(dir, { mode: 0o700 })
  const fifo = path.join(dir, 'piped.log')
  execFileSync('mkfifo', ['-m', '600', fifo])
  // A reader stuck opening the FIFO is let go (it sees end of file) by a writer that opens and closes it.
  t.after(() => {
    try {
      fs.closeSync(fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK))
    } catch {}
  })
  const { pm } = fixtureManager(t, { stateDir, port: await freeRun(3), name: 'piped' })
  const warned = once(pm, 'warning', { signal: AbortSignal.timeout(15000) })
  const b = await pm.startBackend(ROOT)
  const [warning] = await warned
  assert.equal(warning.code, 'ERR_LOG_WRITE')
  assert.match(warning.message, /piped\.log/)
  let timer
  const hung = new Promise((resolve) => (timer = setTimeout(resolve, 10000, 'hung')))
  assert.deepEqual(await Promise.race([pm.logs(), hung]), [])
  clearTimeout(timer)
  assert.equal((await httpGet(`${b.url}/health`)).status, 200, 'the backend runs')
  const logs = await cli(['logs', 'piped', '--state-dir', stateDir])
  assert.equal(logs.code, 0, logs.stderr)
  const diagnostics = await cli(['diagnostics', path.join(tempDir(t), 'piped.zip'), '--state-dir', stateDir])
  assert.equal(diagnostics.code, 0, diagnostics.stderr)
})

test('backend-pm logs NAME prints the last lines, --json as objects, --follow what comes next until Ctrl-C', { skip: posixOnly('Ctrl-C as SIGINT sent with kill()') }, async (t) => {
  const stateDir = tempDir(t)
  const { pm } = fixtureManager(t, { stateDir, name: 'cli-logs', port: await freeRun(3) })
  const first = await pm.startBackend(ROOT)
  const { cli } = require('./helpers')
  const json = await cli(['logs', 'cli-logs', '--state-dir', stateDir, '--lines', '2', '--json'])
  assert.equal(json.code, 0, json.stderr)
  const objects = json.stdout.trim().split('\n').map((l) => JSON.parse(l))
  assert.equal(objects.length, 2)
  assert.equal(objects[1].stream, 'pm')
  // Without a name, the one log there is shown.
  const only = await cli(['logs', '--state-dir', stateDir, '--lines', '1'])
  assert.match(only.stdout, / pm 0 backend is ready at /)
  // A name with no log says so (on stderr, stdout stays the log's), naming the logs there.
  const typo = await cli(['logs', 'cli-log', '--state-dir', stateDir])
  assert.equal(typo.stdout, '')
  assert.match(typo.stderr, /No log of "cli-log" in .* \(logs there: cli-logs\)/)
  const follow = startProcess(t, process.execPath, [CLI, 'logs', 'cli-logs', '--state-dir', stateDir, '--lines', '1', '--follow'])
  await follow.line(/ pm 0 backend is ready/)
  await pm.stopBackend()
  await follow.line(new RegExp(` pm 0 backend pid ${first.pid} stopped`))
  follow.child.kill('SIGINT')
  const [code] = await follow.exited
  assert.equal(code, 0)
})

test('backend-pm logs --follow: a SIGTERM as soon as the first line shows still ends it cleanly (exit 0), however many lines come before', { skip: posixOnly('ends the follower with SIGTERM') }, async (t) => {
  const dir = path.join(tempDir(t), 'logs')
  fs.mkdirSync(dir, { mode: 0o700 })
  const line = (i) => `2026-12-03T10:00:00.000Z out 0 line ${i} ${'x'.repeat(200)}\n`
  fs.writeFileSync(path.join(dir, 'many.log'), Array.from({ length: 5000 }, (_, i) => line(i)).join(''), { mode: 0o600 })
  for (let round = 0; round < 5; round++) {
    const follow = startProcess(t, process.execPath, [CLI, 'logs', 'many', '--log-dir', dir, '--lines', '5000', '--follow'])
    await follow.line(/ out 0 line 0 /)
    follow.child.kill('SIGTERM')
    const [code, signal] = await follow.exited
    assert.deepEqual([code, signal], [0, null], `round ${round}: ended by the signal's default action instead of cleanly`)
  }
})

test('backend-pm logs --follow never reads through a link in the log\'s place, and goes on with the regular file that replaces it', { skip: posixOnly('symlinks, and Ctrl-C as SIGINT sent with kill()') }, async (t) => {
  const dir = path.join(tempDir(t), 'logs')
  fs.mkdirSync(dir, { mode: 0o700 })
  const elsewhere = path.join(tempDir(t), 'elsewhere.log')
  fs.writeFileSync(elsewhere, '')
  const log = path.join(dir, 'linked.log')
  fs.writeFileSync(log, '2026-12-03T09:59:59.000Z out 0 FOLLOWING\n', { mode: 0o600 })
  const follow = startProcess(t, process.execPath, [CLI, 'logs', 'linked', '--log-dir', dir, '--lines', '1', '--follow'], { mergeStderr: true })
  await follow.line(/ out 0 FOLLOWING$/)
  // The log replaced by a link to a file elsewhere, which then grows.
  fs.unlinkSync(log)
  fs.symlinkSync(elsewhere, log)
  fs.appendFileSync(elsewhere, '2026-12-03T10:00:00.000Z out 0 THROUGH-THE-LINK\n')
  // No event tells that the follower looked and read nothing: a second is five of its looks.
  await new Promise((resolve) => setTimeout(resolve, 1000))
  fs.unlinkSync(log)
  fs.writeFileSync(log, '2026-12-03T10:00:01.000Z out 0 A-REGULAR-FILE\n', { mode: 0o600 })
  await follow.line(/ out 0 A-REGULAR-FILE$/)
  assert.deepEqual(follow.lines.filter((l) => l.includes('THROUGH-THE-LINK')), [])
  follow.child.kill('SIGINT')
  const [code] = await follow.exited
  assert.equal(code, 0)
})

test('a line up to 64 KiB arrives whole; a longer one is cut to 64 KiB with a mark, the same in the stdout events, pm.logs() and the file', async (t) => {
  const stateDir = tempDir(t)
  const pm = new ProcessManager({
    name: 'long-lines', command: process.execPath, args: ['-e', printingBackend('`${"a".repeat(20000)}\\n${"b".repeat(70000)}\\nafter`')],
    stateDir, port: await freeRun(3), logger: false,
  })
  t.after(() => pm.stopBackend())
  const events = []
  pm.on('stdout', (line) => events.push(line))
  const after = new Promise((resolve) => pm.on('stdout', (line) => line === 'after' && resolve()))
  await pm.startBackend(ROOT)
  await after
  const cut = `${'b'.repeat(64 * 1024)}…[truncated ${70000 - 64 * 1024} bytes]`
  const expected = ['a'.repeat(20000), cut, 'after']
  assert.deepEqual(events.map((l) => l.length), expected.map((l) => l.length), 'stdout events')
  assert.deepEqual(events, expected, 'stdout events')
  const logged = (await pm.logs({ stream: 'out' })).map((l) => l.line)
  assert.deepEqual(logged.map((l) => l.length), expected.map((l) => l.length), 'pm.logs()')
  assert.deepEqual(logged, expected, 'pm.logs()')
  const file = fs.readFileSync(path.join(stateDir, 'logs', 'long-lines.log'), 'utf8')
  const out = file.trimEnd().split('\n').filter((l) => / out 0 /.test(l)).map((l) => l.replace(LINE, ''))
  assert.deepEqual(out, expected, 'the log file')
})
