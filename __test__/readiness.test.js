'use strict'
// Readiness signals (docs/api.md, "Readiness signals"): a non-HTTP backend's own listener ('port'), systemd's
// notify protocol ('notify': a Python backend with the socket module, and gunicorn, which speaks it), and a
// line of output ({ stdout }: uvicorn's "Uvicorn running on").
const test = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { ProcessManager } = require('..')
const { ROOT, tempDir, freeRun, isAlive, records, httpGet, linuxOnly, own, killAll } = require('./helpers')
const { ensurePythonDeps, PYDEPS, PYTHON } = require('../scripts/test-deps.js')

const PYTHON_ENV = { PYTHONPATH: PYDEPS, PYTHONDONTWRITEBYTECODE: '1', PYTHONUNBUFFERED: '1' }
const SERVERS = path.join(__dirname, 'fixtures', 'servers')

function manager(t, options) {
  const pm = new ProcessManager({ stateDir: tempDir(t), logger: false, startTimeoutMs: 8000, ...options })
  const pids = []
  pm.on('ready', (b) => pids.push(own(b.pid)))
  t.after(async () => {
    await pm.stopBackend().catch(() => {})
    await killAll(pids)
  })
  return pm
}

/** A TCP server that speaks no HTTP: it greets, and records what clients sent before it (nothing, from the manager). */
const RAW_SERVER = `
  const net = require('node:net')
  net.createServer((c) => { c.on('error', () => {}); c.on('data', (d) => console.log('GOT ' + JSON.stringify(String(d)))); c.end('hello\\n') })
    .listen(Number(process.env.PORT), process.env.HOST, () => console.log('raw listening'))`

test("ready: 'port' — a backend that speaks no HTTP is ready when its own listener accepts; nothing is written to it", async (t) => {
  const lines = []
  const pm = manager(t, { name: 'raw', command: process.execPath, args: ['-e', RAW_SERVER], port: await freeRun(3), ready: 'port' })
  pm.on('stdout', (l) => lines.push(l))
  const b = await pm.startBackend(ROOT)
  assert.equal(pm.options.ready, 'port')
  const net = require('node:net')
  const greeting = await new Promise((resolve, reject) => {
    const c = net.connect(b.port, '127.0.0.1')
    let text = ''
    c.on('data', (d) => (text += d)).on('end', () => resolve(text)).on('error', reject)
  })
  assert.equal(greeting, 'hello\n')
  await pm.stopBackend()
  assert.deepEqual(lines.filter((l) => l.startsWith('GOT ')), [], 'the readiness check sent no bytes')
})

/** A Python backend that listens, says STATUS=… and then (unless `NEVER_READY`) READY=1 on $NOTIFY_SOCKET. */
const NOTIFYING = `
import os, socket, http.server, threading
server = http.server.HTTPServer((os.environ["HOST"], int(os.environ["PORT"])), http.server.SimpleHTTPRequestHandler)
threading.Thread(target=server.serve_forever, daemon=True).start()
say = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
say.connect(os.environ["NOTIFY_SOCKET"])
say.send(b"STATUS=warming the cache")
if not os.environ.get("NEVER_READY"):
    say.send(b"READY=1\\nSTATUS=serving")
threading.Event().wait()
`

test("ready: 'notify' — READY=1 from a Python backend's socket module; STATUS= lines become status events", { skip: linuxOnly('a Linux python3 (and NOTIFY_SOCKET is Unix)') }, async (t) => {
  const pm = manager(t, { name: 'notify', command: PYTHON, args: ['-c', NOTIFYING], port: await freeRun(3), ready: 'notify' })
  const statuses = []
  pm.on('status', (s) => statuses.push(s.text))
  const b = await pm.startBackend(ROOT)
  assert.equal((await httpGet(`${b.url}/`)).status, 200)
  assert.deepEqual(statuses.slice(0, 1), ['warming the cache'])
  await new Promise((resolve) => (statuses.length >= 2 ? resolve() : pm.once('status', resolve)))
  assert.deepEqual(statuses, ['warming the cache', 'serving'])
  await pm.stopBackend()
  assert.equal(isAlive(b.pid), false)
})

test("ready: 'notify' — a backend that never says READY=1 fails at startTimeoutMs with ERR_START_TIMEOUT; nothing is left", { skip: linuxOnly('a Linux python3 (and NOTIFY_SOCKET is Unix)') }, async (t) => {
  const pm = manager(t, { name: 'mute', command: PYTHON, args: ['-c', NOTIFYING], env: { NEVER_READY: '1' }, port: await freeRun(3), ready: 'notify', startTimeoutMs: 1500 })
  const spawned = []
  pm.on('exit', (e) => spawned.push(e.pid))
  const began = Date.now()
  const err = await pm.startBackend(ROOT).catch((e) => e)
  assert.equal(err.code, 'ERR_START_TIMEOUT', err.message)
  assert.match(err.lastHealthError, /READY=1/)
  assert.ok(Date.now() - began < 1500 + 6000, 'within startTimeoutMs and the stop')
  assert.equal(spawned.length, 1)
  assert.equal(isAlive(spawned[0]), false)
  assert.deepEqual(records(pm.options.stateDir), [])
})

test("ready: 'notify' with gunicorn, which speaks systemd's protocol: ready on its READY=1, and it serves", { skip: linuxOnly('the Python servers are installed for Linux (and NOTIFY_SOCKET is Unix)') }, async (t) => {
  ensurePythonDeps()
  const pm = manager(t, { name: 'gunicorn-notify', command: PYTHON, args: ['-m', 'gunicorn', '--workers', '1', '--bind', '{host}:{port}', 'wsgi_app:app'], cwd: SERVERS, env: PYTHON_ENV, port: await freeRun(3), ready: 'notify' })
  const statuses = []
  pm.on('status', (s) => statuses.push(s.text))
  const b = await pm.startBackend(ROOT)
  // Its arbiter says READY=1 once it listens; its worker takes the queued request when it has booted.
  assert.equal((await httpGet(`${b.url}/health`, {}, 10000)).status, 200)
  assert.ok(statuses.includes('Gunicorn arbiter booted'), JSON.stringify(statuses))
})

test('ready: { stdout } — ready on the line uvicorn prints when it runs', { skip: linuxOnly('the Python servers are installed for Linux') }, async (t) => {
  ensurePythonDeps()
  const pm = manager(t, { name: 'uvicorn-line', command: PYTHON, args: ['-m', 'uvicorn', 'asgi_app:app', '--host', '{host}', '--port', '{port}'], cwd: SERVERS, env: PYTHON_ENV, port: await freeRun(3), ready: { stdout: 'Uvicorn running on' } })
  const b = await pm.startBackend(ROOT)
  // The line was queued for the log before the ready it caused (output events come on their own path).
  assert.ok((await pm.logs()).some((l) => l.stream !== 'pm' && /Uvicorn running on/.test(l.line)), 'ready came after its line')
  assert.equal((await httpGet(`${b.url}/health`)).status, 200)
  assert.deepEqual(pm.options.ready, { stdout: 'Uvicorn running on' })
})

test('ready: { stdout } — a backend that exits before its line fails at once with ERR_BACKEND_EXITED', async (t) => {
  const pm = manager(t, { name: 'early-exit', command: process.execPath, args: ['-e', "console.error('cannot open the database'); process.exit(3)"], port: await freeRun(3), ready: { stdout: 'listening' } })
  const began = Date.now()
  const err = await pm.startBackend(ROOT).catch((e) => e)
  assert.equal(err.code, 'ERR_BACKEND_EXITED')
  assert.equal(err.exitCode, 3)
  assert.deepEqual(err.stderrTail, ['cannot open the database'])
  assert.ok(Date.now() - began < 5000)
})

// A backend that says it is ready in its own words, then serves nothing (nothing is probed with { stdout }).
const SAYS_READY = "console.log('Server READY on ' + process.env.PORT); setInterval(() => {}, 1000)"

test('ready: { stdout } takes a RegExp, its i flag included: a line that differs only in case is the signal with it, and not without', async (t) => {
  const pm = manager(t, { name: 'regexp-line', command: process.execPath, args: ['-e', SAYS_READY], port: await freeRun(3), ready: { stdout: /^server ready on \d+$/i } })
  // The pattern as given; the core has it as `(?i)` and the rewritten source.
  assert.deepEqual(pm.options.ready, { stdout: '/^server ready on \\d+$/i' })
  const b = await pm.startBackend(ROOT)
  assert.ok(isAlive(b.pid))
  assert.ok((await pm.logs()).some((l) => l.stream === 'out' && l.line === `Server READY on ${b.port}`), 'the line was written')
  // Without the flag the same line is not the signal: the start runs into its deadline.
  const strict = manager(t, { name: 'regexp-case', command: process.execPath, args: ['-e', SAYS_READY], port: await freeRun(3), ready: { stdout: /^server ready on \d+$/ }, startTimeoutMs: 1500 })
  const err = await strict.startBackend(ROOT).catch((e) => e)
  assert.equal(err.code, 'ERR_START_TIMEOUT')
})

// JavaScript forms that the core's engine refuses or reads another way (lib/js-regex.js rewrites them), each
// with a line it matches in JavaScript: `\<` and `\>` are the characters (word boundaries in Rust), `{,2}` is
// text (a repetition in Rust), `--` in a class ends a range (a set difference in Rust), `\cI` is a tab, `[^]`
// any character, `\z` the letter (the end of the text in Rust), `\q` the letter (refused in Rust).
const LINE = 'up <1> {,2} [+-] z\t.'
const JS_FORMS = ['^up \\<1\\> ', ' \\{?{,2}\\}? ', '\\[[+--]{2}\\]', 'z\\cI\\.$', '[^]\\z', '^\\q?up', '^u\\p?p ']

test('ready: { stdout } patterns mean what they mean in JavaScript: the rewrite for the core keeps their meaning, and the core accepts it', () => {
  const { toCoreRegex } = require('../lib/js-regex.js')
  const lines = [LINE, 'up 1 2', 'up <1>', '[+-]', '[,,]', '[ab]', 'z\t.', 'a\rb', 'a\nb', 'a\u2028b', 'ab', 'ready {,2} now', 'x{2}', 'q', 'K', '\u0000', 'é', '😀']
  const patterns = [...JS_FORMS, 'a.b', '^a[^]b$', 'a[\\b]?b', 'x{2}', 'x\\{2}', '[\\]]', '[a-]', '[-a]', '[\\d-z]+', '[]', '\\0', '\\x41|\\u00e9', '\\/', '(?<n>a)b', '[\\s\\S]', 'a|', '\\cJ', 'K\\K?', '\\ud83d\\ude00']
  for (const pattern of patterns) {
    const rewritten = toCoreRegex(pattern)
    for (const line of lines) {
      assert.equal(new RegExp(rewritten).test(line), new RegExp(pattern).test(line), `${JSON.stringify(pattern)} -> ${JSON.stringify(rewritten)} on ${JSON.stringify(line)}`)
    }
    assert.doesNotThrow(() => new ProcessManager({ ready: { stdout: pattern }, logger: false }), pattern)
  }
})

test('ready: { stdout } in JavaScript forms that the core reads differently: each is the signal on a line it matches in JavaScript', async (t) => {
  for (const pattern of JS_FORMS) {
    assert.ok(new RegExp(pattern).test(LINE), `${pattern} matches the line in JavaScript`)
    const pm = manager(t, { name: 'js-forms', command: process.execPath, args: ['-e', `console.log(${JSON.stringify(LINE)}); setInterval(() => {}, 1000)`], port: await freeRun(3), ready: { stdout: pattern }, startTimeoutMs: 5000 })
    const b = await pm.startBackend(ROOT).catch((e) => assert.fail(`${pattern}: ${e.message}`))
    assert.ok(isAlive(b.pid))
    await pm.stopBackend()
  }
})

test('bad ready options are refused at construction, naming the option', () => {
  for (const [ready, message] of [['tcp', /ready must be/], [{ stdout: '(' }, /ready.stdout/], [{ stdout: '' }, /ready.stdout/], [{ stderr: 'x' }, /unknown option "stderr" in ready/],
    // JavaScript's syntax: Rust's inline flags are not JavaScript; look-around is JavaScript but not matched here.
    [{ stdout: '(?i)ready' }, /ready.stdout "\(\?i\)ready" is not a JavaScript regular expression/], [{ stdout: '(?<=on )\\d+' }, /ready.stdout "\(\?<=on \)\\\\d\+" is not a pattern this library can match: look-around/],
    [{ stdout: /(a)\1/ }, /ready.stdout \/\(a\)\\1\/ is not a pattern this library can match: backreferences/], [{ stdout: '(?<n>a)\\k<n>' }, /back-references are not supported/],
    [{ stdout: new RegExp('ready', 'v') }, /ready.stdout \/ready\/v: the flag v is not supported/], [{}, /needs stdout/], [5, /ready must be a string/]]) {
    assert.throws(() => new ProcessManager({ ready, logger: false }), { code: 'ERR_INVALID_ARG', message }, JSON.stringify(ready))
  }
  assert.equal(new ProcessManager({ logger: false }).options.ready, 'http')
})

const { posixOnly } = require('./helpers')

/**
 * An HTTP backend on the socket it is handed (`listen: 'fd'`) that starts accepting only after
 * ACCEPT_AFTER_MS (or exits then, with EXIT_INSTEAD), and says which connections and requests it got.
 */
const HANDED_SOCKET_SERVER = `
  const http = require('node:http')
  let connections = 0
  const server = http.createServer((req, res) => { console.log('REQUEST ' + req.method + ' ' + req.url); res.end('ok') })
  server.on('connection', () => console.log('CONNECTION ' + ++connections))
  setTimeout(() => {
    if (process.env.EXIT_INSTEAD) { console.error('giving up before accepting'); process.exit(4) }
    server.listen({ fd: 3 }, () => console.log('accepting'))
  }, Number(process.env.ACCEPT_AFTER_MS))`

test("listen: 'fd' + 'http' — one probe waits in the held socket's backlog: the backend gets exactly one connection, and ready comes after its accept", { skip: posixOnly("listen: 'fd' (a socket as fd 3) is refused on Windows") }, async (t) => {
  const lines = []
  const acceptAfter = 1200
  // A probe that waits is bounded by the start's deadline, not by healthTimeoutMs.
  const pm = manager(t, { name: 'fd-probe', command: process.execPath, args: ['-e', HANDED_SOCKET_SERVER], env: { ACCEPT_AFTER_MS: String(acceptAfter) }, port: await freeRun(3), listen: 'fd', healthTimeoutMs: 100 })
  pm.on('stdout', (l) => lines.push(l))
  const began = Date.now()
  const b = await pm.startBackend(ROOT)
  assert.ok(Date.now() - began >= acceptAfter, 'ready only once the backend accepted')
  await pm.stopBackend()
  assert.equal(isAlive(b.pid), false)
  // Probes that each give up after healthTimeoutMs would have queued one connection per try.
  assert.deepEqual(lines.filter((l) => /^(CONNECTION|REQUEST) /.test(l)), ['CONNECTION 1', 'REQUEST GET /health'])
})

test("listen: 'fd' + 'port' — ready only once the backend accepts from the held socket (a connect alone completes at once there)", { skip: posixOnly("listen: 'fd' (a socket as fd 3) is refused on Windows") }, async (t) => {
  const lines = []
  const acceptAfter = 1200
  const pm = manager(t, { name: 'fd-port', command: process.execPath, args: ['-e', HANDED_SOCKET_SERVER], env: { ACCEPT_AFTER_MS: String(acceptAfter) }, port: await freeRun(3), listen: 'fd', ready: 'port' })
  pm.on('stdout', (l) => lines.push(l))
  const began = Date.now()
  const b = await pm.startBackend(ROOT)
  assert.ok(Date.now() - began >= acceptAfter, `ready after ${Date.now() - began} ms, before the backend accepted (after ${acceptAfter} ms)`)
  assert.ok(lines.includes('accepting'), JSON.stringify(lines))
  assert.equal(await httpGet(`${b.url}/`).then((r) => r.status), 200)
  await pm.stopBackend()
  assert.equal(isAlive(b.pid), false)
  // One probe: it is the first connection, and nothing was written to it.
  assert.equal(lines.filter((l) => /^CONNECTION /.test(l))[0], 'CONNECTION 1')
  assert.ok(!lines.includes('REQUEST GET /health'), JSON.stringify(lines))
})

test("listen: 'fd' + 'http' — a backend that exits while the probe waits in the backlog fails at once with ERR_BACKEND_EXITED", { skip: posixOnly("listen: 'fd' (a socket as fd 3) is refused on Windows") }, async (t) => {
  const pm = manager(t, { name: 'fd-exit', command: process.execPath, args: ['-e', HANDED_SOCKET_SERVER], env: { ACCEPT_AFTER_MS: '300', EXIT_INSTEAD: '1' }, port: await freeRun(3), listen: 'fd', startTimeoutMs: 20000 })
  const began = Date.now()
  const err = await pm.startBackend(ROOT).catch((e) => e)
  assert.equal(err.code, 'ERR_BACKEND_EXITED', err.message)
  assert.equal(err.exitCode, 4)
  assert.deepEqual(err.stderrTail, ['giving up before accepting'])
  assert.ok(Date.now() - began < 8000, 'well before startTimeoutMs')
  assert.deepEqual(records(pm.options.stateDir), [])
})
