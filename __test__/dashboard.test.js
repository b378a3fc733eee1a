'use strict'
// The dashboard: the CLI's page in a real headless Chromium (charts fill with a running backend's data, Stop
// behind a confirmation ends its processes), the token and the listener, and pm.dashboard() (Restart, Stop,
// the event stream).
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const net = require('node:net')
const path = require('node:path')
const http = require('node:http')
const { fileURLToPath: url2path } = require('node:url')
const { ROOT, CLI, tempDir, freeRun, fixtureManager, startProcess, httpGet, waitFor, isAlive, processTree, posixOnly, linuxOnly, killIfAlive } = require('./helpers')
const { ProcessManager } = require('..')

const CHROMIUM = '/usr/bin/chromium'
const ARTIFACTS = path.join(ROOT, 'target', 'test-artifacts')

/** A POST of JSON (no keep-alive, no proxy): `{ status, body }`. */
function post(url, value, headers = {}) {
  return new Promise((resolve, reject) => {
    const body = typeof value === 'string' ? value : JSON.stringify(value)
    const req = http.request(url, { method: 'POST', agent: false, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers } }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (d) => (text += d))
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: text }))
    })
    req.on('error', reject)
    req.end(body)
  })
}

/** Reads server-sent events from `url` until `count` data events came; resolves with the parsed ones. */
function readEvents(url, count, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const events = []
    let buffer = ''
    const req = http.get(url, { agent: false }, (res) => {
      if (res.statusCode !== 200) return reject(new Error(`HTTP ${res.statusCode}`))
      res.setEncoding('utf8')
      res.on('data', (d) => {
        buffer += d
        let i
        while ((i = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, i)
          buffer = buffer.slice(i + 2)
          const type = /^event: (.*)$/m.exec(block)?.[1] ?? 'message'
          const data = /^data: (.*)$/m.exec(block)?.[1]
          if (data !== undefined) events.push({ type, data: JSON.parse(data) })
          if (events.filter((e) => e.type === 'message').length >= count) {
            clearTimeout(timer)
            req.destroy()
            resolve(events)
          }
        }
      })
    })
    const timer = setTimeout(() => {
      req.destroy()
      reject(new Error(`${count} events did not come within ${timeoutMs} ms: ${JSON.stringify(events)}`))
    }, timeoutMs)
    req.on('error', (err) => (events.length ? null : reject(err)))
  })
}

/** Resolves to the error code of a TCP connect to `host:port` (null when it connected). */
function connectError(host, port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port, timeout: 2000 })
    socket.once('connect', () => {
      socket.destroy()
      resolve(null)
    })
    socket.once('timeout', () => {
      socket.destroy()
      resolve('ETIMEDOUT')
    })
    socket.once('error', (err) => resolve(err.code))
  })
}

/** The local addresses of listening TCP sockets on `port`, from /proc/net/tcp and tcp6 (Linux). */
function listenAddresses(port) {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0')
  const out = []
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = ''
    try {
      text = fs.readFileSync(file, 'utf8')
    } catch {
      continue
    }
    for (const line of text.split('\n').slice(1)) {
      const [, local, , state] = line.trim().split(/\s+/)
      if (state === '0A' && local?.endsWith(`:${hexPort}`)) out.push(`${path.basename(file)} ${local.split(':')[0]}`)
    }
  }
  return out
}

/** A non-loopback IPv4 address of this machine, if it has one. */
function externalAddress() {
  for (const list of Object.values(os.networkInterfaces())) for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address
  return null
}

/** Headless Chromium (Debian's) through playwright-core, with a fresh profile; closed and removed after the test. */
async function browser(t) {
  assert.ok(fs.existsSync(CHROMIUM), `the browser test needs ${CHROMIUM}: apt-get install -y chromium`)
  const { chromium } = require('playwright-core')
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-chromium-'))
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 900 },
  })
  t.after(async () => {
    await context.close().catch(() => {})
    // Anything of that browser still running (it was started with this profile) is ended by pid.
    for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map(Number)) {
      try {
        if (fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(profile)) killIfAlive(pid)
      } catch {}
    }
    fs.rmSync(profile, { recursive: true, force: true })
  })
  const page = context.pages()[0] ?? (await context.newPage())
  return { context, page }
}

/** `backend-pm dashboard` for a state folder; resolves with its URL once it printed it. */
async function cliDashboard(t, stateDir, extra = []) {
  const proc = startProcess(t, process.execPath, [CLI, 'dashboard', '--state-dir', stateDir, ...extra])
  const url = (await proc.line(/^\s+http:\/\/127\.0\.0\.1:\d+\/\?token=[0-9a-f]{64}$/)).trim()
  return { proc, url, origin: new URL(url).origin, port: Number(new URL(url).port), token: new URL(url).searchParams.get('token') }
}

test('CLI dashboard in Chromium: charts fill with a running backend, Stop needs a confirmation and ends its processes', { skip: linuxOnly("drives Debian's /usr/bin/chromium") }, async (t) => {
  const kept = fixtureManager(t, { name: 'kept', port: await freeRun(3) })
  const target = fixtureManager(t, { name: 'target', port: await freeRun(3), stateDir: kept.stateDir, env: { GRANDCHILDREN: '1' } })
  const keptBackend = await kept.pm.startBackend(ROOT)
  const backend = await target.pm.startBackend(ROOT)
  const [grandchildLine] = await target.seen(/^GRANDCHILD \d+$/)
  const grandchild = Number(grandchildLine.split(' ')[1])
  const id = path.join(kept.stateDir, `target-${backend.pid}.json`)

  const dash = await cliDashboard(t, kept.stateDir)
  const { page } = await browser(t)
  const requests = []
  const problems = []
  page.on('request', (r) => requests.push(r.url()))
  page.on('console', (m) => m.type() === 'error' && problems.push(m.text()))
  page.on('pageerror', (err) => problems.push(err.message))
  const response = await page.goto(dash.url)
  assert.equal(response.status(), 200)

  // The memory chart has data of the running backend, and the table shows it.
  // Charts follow a backend by name, address and port (across restarts); the table's rows are its records.
  const key = `target@127.0.0.1:${backend.port}`
  await page.waitForFunction((key) => (window.dashboard?.values('memory', key) ?? []).filter((v) => v > 0).length >= 2, key, { timeout: 20000 })
  const memory = await page.evaluate((key) => window.dashboard.values('memory', key).filter((v) => v != null), key)
  assert.ok(memory.every((mib) => mib > 1 && mib < 4096), `MiB: ${memory}`)
  assert.ok(await page.locator('[data-chart="memory"] canvas').count() >= 1, 'uPlot drew a canvas')
  const row = page.locator(`tr[data-id="${id}"]`)
  assert.match(await row.innerText(), new RegExp(`target\\s+running\\s+${backend.pid}\\s+${backend.port}`))
  assert.equal(await row.locator('text=Restart').count(), 0, 'no Restart from the records: the policy is the app\'s')

  // Cancel leaves it running.
  await row.locator('button[data-action="stop"]').click()
  assert.equal(await page.locator('#confirm').isVisible(), true)
  assert.match(await page.locator('#confirm-text').innerText(), new RegExp(`Stop target \\(pid ${backend.pid}, port ${backend.port}\\)\\?`))
  await page.locator('#confirm-no').click()
  assert.equal(await page.locator('#confirm').isVisible(), false)
  await new Promise((r) => setTimeout(r, 300))
  assert.ok(isAlive(backend.pid), 'cancelled: still running')

  await row.locator('button[data-action="stop"]').click()
  await page.locator('#confirm-yes').click()
  await waitFor(() => !isAlive(backend.pid) && !isAlive(grandchild), 10000, 'the backend and its grandchild to end')
  await page.waitForFunction(() => /terminated|stopped/i.test(document.getElementById('notice').textContent), null, { timeout: 10000 })
  await page.waitForFunction((id) => !document.querySelector(`tr[data-id="${CSS.escape(id)}"]`), id, { timeout: 10000 })
  assert.equal(fs.existsSync(id), false, 'its record is gone')
  assert.ok(isAlive(keptBackend.pid), 'the other backend is untouched')

  fs.mkdirSync(ARTIFACTS, { recursive: true })
  const shot = path.join(ARTIFACTS, 'dashboard.png')
  await page.screenshot({ path: shot, fullPage: true })
  t.diagnostic(`screenshot: ${shot}`)

  // Everything the page loaded came from its own server (nothing external), and nothing was blocked or failed.
  assert.ok(requests.length >= 2)
  for (const url of requests) assert.ok(url.startsWith(`${dash.origin}/`), `request to ${url}`)
  assert.deepEqual(problems, [])
})

test('CLI dashboard: every request needs the token; POSTs need JSON from the page\'s origin; 127.0.0.1 only', { skip: posixOnly('ends the dashboard with SIGTERM and expects exit 0') }, async (t) => {
  const { pm, stateDir } = fixtureManager(t, { name: 'guarded', port: await freeRun(3) })
  const backend = await pm.startBackend(ROOT)
  const dash = await cliDashboard(t, stateDir)
  const page = await httpGet(dash.url)
  assert.equal(page.status, 200)
  const headers = await new Promise((resolve) => http.get(dash.url, { agent: false }, (res) => resolve(res.headers) || res.resume()))
  assert.match(headers['content-security-policy'], /default-src 'none'/)
  assert.match(headers['content-security-policy'], /script-src 'sha256-[^']+' 'sha256-[^']+'(;|$)/)
  assert.doesNotMatch(headers['content-security-policy'], /unsafe-inline|unsafe-eval|https?:/)
  assert.equal(headers['x-content-type-options'], 'nosniff')
  assert.equal(headers['referrer-policy'], 'no-referrer')

  for (const url of [`${dash.origin}/`, `${dash.origin}/?token=${'0'.repeat(64)}`, `${dash.origin}/?token=${dash.token.slice(0, 63)}`, `${dash.origin}/events`, `${dash.origin}/snapshot?token=`, `${dash.origin}/favicon.ico`, `${dash.origin}/launch?code=x`]) {
    assert.equal((await httpGet(url)).status, 403, url)
  }
  const id = path.join(stateDir, `guarded-${backend.pid}.json`)
  assert.equal((await post(`${dash.origin}/action`, { id, action: 'stop' })).status, 403)
  assert.equal((await post(`${dash.origin}/action?token=${'f'.repeat(64)}`, { id, action: 'stop' })).status, 403)
  assert.equal((await post(`${dash.origin}/action?token=${dash.token}`, { id, action: 'stop' }, { origin: 'http://evil.example' })).status, 403)
  assert.equal((await post(`${dash.origin}/action?token=${dash.token}`, `{"id":${JSON.stringify(id)},"action":"stop"}`, { 'content-type': 'text/plain' })).status, 415)
  assert.equal((await httpGet(dash.url, { host: 'evil.example' })).status, 403, 'another Host (DNS rebinding)')
  assert.equal((await post(`${dash.origin}/action?token=${dash.token}`, { id: '/etc/passwd', action: 'stop' })).status, 404, 'only files it listed')
  assert.ok(isAlive(backend.pid), 'nothing was stopped')

  // The snapshot (with the token) is the sampler's data, with Stop as the only action.
  const snapshot = JSON.parse((await httpGet(`${dash.origin}/snapshot?token=${dash.token}`)).body)
  assert.deepEqual(snapshot.backends.map((b) => [b.pid, b.port, b.state, b.actions]), [[backend.pid, backend.port, 'running', ['stop']]])

  // Listening on 127.0.0.1 only: the kernel's table, and connects to the other addresses.
  assert.deepEqual(listenAddresses(dash.port), ['tcp 0100007F'])
  assert.ok(['ECONNREFUSED', 'EADDRNOTAVAIL', 'ENETUNREACH', 'EAFNOSUPPORT'].includes(await connectError('::1', dash.port)))
  const external = externalAddress()
  if (external) assert.equal(await connectError(external, dash.port), 'ECONNREFUSED', `${external}:${dash.port}`)

  // With the token, Stop from the API (what the page sends) ends the backend.
  const stopped = await post(`${dash.origin}/action?token=${dash.token}`, { id, action: 'stop' }, { origin: dash.origin })
  assert.equal(stopped.status, 200, stopped.body)
  assert.equal(JSON.parse(stopped.body).items[0].action, 'terminated')
  await waitFor(() => !isAlive(backend.pid), 5000, 'the backend to end')

  // SIGTERM ends the dashboard cleanly, and its port is closed.
  dash.proc.child.kill('SIGTERM')
  const [code] = await dash.proc.exited
  assert.equal(code, 0)
  assert.equal(await connectError('127.0.0.1', dash.port), 'ECONNREFUSED')
})

test('CLI dashboard: a SIGTERM as soon as the URL is printed still ends it cleanly (exit 0)', { skip: posixOnly('ends the dashboard with SIGTERM') }, async (t) => {
  const stateDir = tempDir(t)
  for (let i = 0; i < 5; i++) {
    const dash = await cliDashboard(t, stateDir)
    dash.proc.child.kill('SIGTERM')
    assert.deepEqual(await dash.proc.exited, [0, null], `run ${i + 1}`)
  }
})

test('CLI dashboard --open: the browser is given a private redirect file, never a secret on its command line', { skip: linuxOnly('the browser is opened through xdg-open') }, async (t) => {
  const stateDir = tempDir(t)
  // A stand-in xdg-open on PATH records every argument it was given (what other users see in /proc/*/cmdline).
  const bin = tempDir(t, 'bpm-bin-')
  const seen = path.join(bin, 'seen')
  fs.writeFileSync(path.join(bin, 'xdg-open'), `#!/bin/sh\nprintf '%s\\n' "$@" > ${JSON.stringify(seen)}.tmp && mv ${JSON.stringify(seen)}.tmp ${JSON.stringify(seen)}\n`, { mode: 0o755 })
  const proc = startProcess(t, process.execPath, [CLI, 'dashboard', '--open', '--state-dir', stateDir], { env: { PATH: `${bin}:${process.env.PATH}` } })
  const url = (await proc.line(/token=/)).trim()
  const token = new URL(url).searchParams.get('token')
  await waitFor(() => fs.existsSync(seen), 10000, 'xdg-open to be called')
  const argv = fs.readFileSync(seen, 'utf8').trim().split('\n')
  for (const arg of argv) assert.ok(!arg.includes(token) && !/token|code=/.test(arg), `no secret on the command line: ${arg}`)
  assert.equal(argv.length, 1)
  assert.match(argv[0], /^file:\/\//)
  const file = url2path(argv[0])
  t.after(() => fs.rmSync(path.dirname(file), { recursive: true, force: true }))
  // Only its user can read the file, or list and enter its folder.
  const fileStat = fs.statSync(file)
  const dirStat = fs.statSync(path.dirname(file))
  assert.equal(fileStat.mode & 0o777, 0o600)
  assert.equal(dirStat.mode & 0o777, 0o700)
  assert.ok(fileStat.isFile() && dirStat.isDirectory())
  assert.equal(fileStat.uid, process.getuid())
  assert.equal(dirStat.uid, process.getuid())
  // The file leads to the tokened page, which answers; without the token the server answers 403.
  const target = /http-equiv="refresh" content="0;url=([^"]+)"/.exec(fs.readFileSync(file, 'utf8'))?.[1]
  assert.equal(target, url)
  assert.equal((await httpGet(target)).status, 200)
  const bare = new URL(target)
  bare.search = ''
  assert.equal((await httpGet(bare.href)).status, 403)
  // Closing the dashboard removes the file and its folder.
  proc.child.kill('SIGTERM')
  const [code] = await proc.exited
  assert.equal(code, 0)
  assert.equal(fs.existsSync(path.dirname(file)), false, 'the redirect file and its folder are gone')
})

test('pm.dashboard(): live samples of this backend; Restart starts it again with the same arguments; Stop stops it', async (t) => {
  const { pm, grandchildren } = fixtureManager(t, { name: 'in-app', port: await freeRun(5), token: true, env: { REQUIRE_TOKEN: '1', GRANDCHILDREN: '1' } })
  await assert.rejects(pm.dashboard({ port: -1 }), { code: 'ERR_INVALID_ARG' })
  await assert.rejects(pm.dashboard({ prot: 1 }), { code: 'ERR_INVALID_ARG' })
  const first = await pm.startBackend(ROOT)
  const dash = await pm.dashboard()
  t.after(() => dash.close())
  assert.deepEqual(Object.keys(dash).sort(), ['close', 'url'])
  const url = new URL(dash.url)
  assert.equal(url.hostname, '127.0.0.1')
  assert.match(url.searchParams.get('token'), /^[0-9a-f]{64}$/)
  assert.equal((await httpGet(`${url.origin}/`)).status, 403)

  const events = await readEvents(`${url.origin}/events?token=${url.searchParams.get('token')}`, 2)
  assert.equal(events[0].type, 'hello')
  const samples = events.filter((e) => e.type === 'message').map((e) => e.data)
  for (const s of samples) {
    assert.equal(s.backends.length, 1)
    const [b] = s.backends
    assert.equal(b.pid, first.pid)
    assert.equal(b.port, first.port)
    assert.equal(b.state, 'running')
    assert.equal(b.processCount, 2)
    assert.ok(b.memoryBytes > 1e6)
    // The probe carries the backend's token: the backend answers 200, not 401.
    assert.equal(b.healthStatus, 200)
    assert.deepEqual(b.actions, ['stop', 'restart'])
    assert.equal(JSON.stringify(s).includes(first.token), false, 'the backend\'s token never reaches the page')
  }
  assert.ok(samples[1].at - samples[0].at >= 500, 'about a second apart')

  const action = (body) => post(`${url.origin}/action?token=${url.searchParams.get('token')}`, body, { origin: url.origin })
  const restarted = await action({ id: 'in-app', action: 'restart' })
  assert.equal(restarted.status, 200, restarted.body)
  const second = pm.backend
  assert.notEqual(second.pid, first.pid)
  assert.equal(JSON.parse(restarted.body).pid, second.pid)
  await waitFor(() => !isAlive(first.pid), 5000, 'the first backend to be gone')
  assert.equal((await httpGet(`${second.url}/health`, { authorization: `Bearer ${second.token}` })).status, 200)

  // The second backend and its grandchild, which it announces on stdout (only Linux lists a tree, from /proc).
  await waitFor(() => grandchildren.length === 2, 5000, "the second backend's grandchild")
  const treeBefore = [second.pid, grandchildren[1]]
  if (process.platform === 'linux') assert.deepEqual(processTree(second.pid).sort(), [...treeBefore].sort())
  const stopped = await action({ id: 'in-app', action: 'stop' })
  assert.equal(stopped.status, 200, stopped.body)
  assert.equal(pm.backend, null)
  for (const pid of treeBefore) assert.equal(isAlive(pid), false, `pid ${pid}`)
  const after = JSON.parse((await httpGet(`${url.origin}/snapshot?token=${url.searchParams.get('token')}`)).body)
  assert.equal(after.backends[0].state, 'stopped')
  assert.deepEqual(after.backends[0].actions, ['start'])
  assert.equal((await action({ id: 'in-app', action: 'stop' })).status, 400, 'nothing to stop')

  await dash.close()
  assert.equal(await connectError('127.0.0.1', Number(url.port)), 'ECONNREFUSED', 'closed')
})

test('dashboards of a backend with replicas: the snapshot lists its replicas under it (the app\'s: no actions of their own; the CLI\'s: Stop each)', { skip: posixOnly('ends the dashboard with SIGTERM') }, async (t) => {
  const { pm, stateDir } = fixtureManager(t, { name: 'twice', port: await freeRun(3), replicas: 2 })
  const backend = await pm.startBackend(ROOT)
  const pids = backend.replicas.map((r) => r.pid).sort()

  const dash = await pm.dashboard()
  t.after(() => dash.close())
  const url = new URL(dash.url)
  const inApp = await httpGet(`${url.origin}/snapshot?token=${url.searchParams.get('token')}`)
  assert.equal(inApp.status, 200, inApp.body)
  const [line] = JSON.parse(inApp.body).backends
  assert.deepEqual(line.actions, ['stop', 'restart'])
  assert.deepEqual(line.replicas.map((r) => r.pid).sort(), pids)
  assert.deepEqual(line.replicas.map((r) => r.actions), [[], []])

  const cliDash = await cliDashboard(t, stateDir)
  const fromCli = await httpGet(`${cliDash.origin}/snapshot?token=${cliDash.token}`)
  assert.equal(fromCli.status, 200, fromCli.body)
  const [record] = JSON.parse(fromCli.body).backends
  assert.equal(record.port, backend.port)
  assert.deepEqual(record.replicas.map((r) => r.pid).sort(), pids)
  assert.deepEqual(record.replicas.map((r) => r.actions), [['stop'], ['stop']])
  cliDash.proc.child.kill('SIGTERM')
  assert.equal((await cliDash.proc.exited)[0], 0)
})

test('dashboard of several managers (as a group feeds it): group names, one entry each; an outside kill shows as exited, Start brings it back', async (t) => {
  const { serveDashboard, managerSource } = require('../lib/dashboard.js')
  const api = fixtureManager(t, { name: 'api', port: await freeRun(3) })
  const worker = fixtureManager(t, { name: 'worker', port: await freeRun(3), stateDir: api.stateDir })
  const first = await api.pm.startBackend(ROOT)
  await worker.pm.startBackend(ROOT)
  const restart = (pm) => async () => {
    await pm.stopBackend()
    return pm.startBackend(ROOT)
  }
  const dash = await serveDashboard({ source: managerSource([{ manager: api.pm, group: 'shop', restart: restart(api.pm) }, { manager: worker.pm, group: 'shop' }]) })
  t.after(() => dash.close())
  const url = new URL(dash.url)
  const token = url.searchParams.get('token')
  const snapshot = async () => JSON.parse((await httpGet(`${url.origin}/snapshot?token=${token}`)).body)
  const s = await snapshot()
  assert.deepEqual(s.backends.map((b) => [b.id, b.group, b.name, b.state, b.actions]), [
    ['shop/api', 'shop', 'api', 'running', ['stop', 'restart']],
    ['shop/worker', 'shop', 'worker', 'running', ['stop']],
  ])

  const exited = new Promise((resolve) => api.pm.once('exit', resolve))
  process.kill(first.pid, 'SIGKILL')
  assert.equal((await exited).expected, false)
  await waitFor(async () => (await snapshot()).backends[0].state === 'exited', 5000, 'the dashboard to show the exit')
  assert.deepEqual((await snapshot()).backends[0].actions, ['start'])
  const started = await post(`${url.origin}/action?token=${token}`, { id: 'shop/api', action: 'start' }, { origin: url.origin })
  assert.equal(started.status, 200, started.body)
  assert.notEqual(api.pm.backend.pid, first.pid)
  assert.equal((await snapshot()).backends[0].state, 'running')
})

test('CLI dashboard --port: serves on that port; a port in use is an error (exit 1)', async (t) => {
  const stateDir = tempDir(t)
  const port = await freeRun(1)
  const dash = await cliDashboard(t, stateDir, ['--port', String(port)])
  assert.equal(dash.port, port)
  const second = startProcess(t, process.execPath, [CLI, 'dashboard', '--port', String(port), '--state-dir', stateDir])
  const [code] = await second.exited
  assert.equal(code, 1)
  assert.match(second.stderr(), new RegExp(`port ${port} is in use.*ERR_NO_FREE_PORT`))
  // pm.dashboard() rejects as every ERR_NO_FREE_PORT does: with the range it tried.
  const pm = new ProcessManager({ logger: false, stateDir })
  await assert.rejects(pm.dashboard({ port }), { code: 'ERR_NO_FREE_PORT', startPort: port, endPort: port })
})

const { recordOf } = require('./helpers')
const DB_ERROR = 'Error: cannot open database /data/app.db'

/** A manager whose start fails with a line on stderr (logged), and one that runs, in one state folder. */
async function failedAndRunning(t) {
  const failing = fixtureManager(t, { name: 'broken', port: await freeRun(3), env: { FAIL_WITH_LINE: DB_ERROR } })
  const running = fixtureManager(t, { name: 'healthy', port: await freeRun(3), stateDir: failing.stateDir })
  const backend = await running.pm.startBackend(ROOT)
  return { failing, running, backend, logDir: path.join(failing.stateDir, 'logs') }
}

test('dashboard of managers: each backend\'s log file; a backend whose start failed also shows the last lines of its stderr', async (t) => {
  const { serveDashboard, managerSource } = require('../lib/dashboard.js')
  const { failing, running, logDir } = await failedAndRunning(t)
  const dash = await serveDashboard({ source: managerSource([{ manager: running.pm }, { manager: failing.pm }]) })
  t.after(() => dash.close())
  const url = new URL(dash.url)
  const snapshot = async () => JSON.parse((await httpGet(`${url.origin}/snapshot?token=${url.searchParams.get('token')}`)).body)

  const before = (await snapshot()).backends
  assert.deepEqual(before.map((b) => [b.name, b.state, b.logFile, b.stderrTail]), [
    ['healthy', 'running', path.join(logDir, 'healthy.log'), []],
    ['broken', 'stopped', path.join(logDir, 'broken.log'), []],
  ])
  await assert.rejects(failing.pm.startBackend(ROOT), { code: 'ERR_BACKEND_EXITED' })
  // The line reaches the log through the log writer: the next samples show it.
  await waitFor(async () => (await snapshot()).backends[1].stderrTail.length > 0, 5000, 'the stderr line in a sample')
  const broken = (await snapshot()).backends[1]
  assert.equal(broken.state, 'failed')
  assert.equal(broken.logFile, path.join(logDir, 'broken.log'))
  assert.deepEqual(broken.stderrTail, [DB_ERROR])
  assert.deepEqual((await snapshot()).backends[0].stderrTail, [], 'a running backend shows no stderr lines')

  // Without logs there is no file to show.
  const quiet = fixtureManager(t, { name: 'quiet', port: await freeRun(3), logs: false })
  await quiet.pm.startBackend(ROOT)
  const source = managerSource([{ manager: quiet.pm }])
  t.after(() => source.close())
  const [line] = (await source.sample()).backends
  assert.equal(line.logFile, null)
  assert.deepEqual(line.stderrTail, [])
})

test('CLI dashboard: each record\'s log file; a record whose process is gone also shows the last lines of its stderr', { skip: posixOnly('ends the dashboard with SIGTERM') }, async (t) => {
  const { failing, backend, logDir } = await failedAndRunning(t)
  const { stateDir } = failing
  await assert.rejects(failing.pm.startBackend(ROOT), { code: 'ERR_BACKEND_EXITED' })
  await waitFor(async () => (await failing.pm.logs({ stream: 'err' })).length > 0, 5000, 'the stderr line in the log')
  // Its app died with it: the record stays while the process is gone (a stale record).
  const stale = recordOf({ name: 'broken', pid: 999999, port: 8123, exe: '/bin/false', startTime: 1, ownerPid: 999998, ownerStartTime: 1 })
  fs.writeFileSync(path.join(stateDir, 'broken-999999.json'), JSON.stringify(stale), { mode: 0o600 })

  const dash = await cliDashboard(t, stateDir)
  const { backends } = JSON.parse((await httpGet(`${dash.origin}/snapshot?token=${dash.token}`)).body)
  const byName = new Map(backends.map((b) => [b.name, b]))
  assert.equal(byName.get('healthy').pid, backend.pid)
  assert.equal(byName.get('healthy').logFile, path.join(logDir, 'healthy.log'))
  assert.deepEqual(byName.get('healthy').stderrTail, [])
  assert.equal(byName.get('broken').state, 'stale')
  assert.equal(byName.get('broken').logFile, path.join(logDir, 'broken.log'))
  assert.deepEqual(byName.get('broken').stderrTail, [DB_ERROR])
  dash.proc.child.kill('SIGTERM')
  const [code] = await dash.proc.exited
  assert.equal(code, 0)
})

test('dashboard page in Chromium: the log file under each backend, and a failed one\'s stderr lines', { skip: linuxOnly("drives Debian's /usr/bin/chromium") }, async (t) => {
  const { serveDashboard, managerSource } = require('../lib/dashboard.js')
  const { failing, running, logDir } = await failedAndRunning(t)
  const dash = await serveDashboard({ source: managerSource([{ manager: running.pm }, { manager: failing.pm }]) })
  t.after(() => dash.close())
  const { page } = await browser(t)
  const problems = []
  page.on('pageerror', (err) => problems.push(err.message))
  assert.equal((await page.goto(dash.url)).status(), 200)
  await page.waitForFunction(() => document.querySelectorAll('tr.details').length === 2, null, { timeout: 20000 })
  const escape = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  const details = page.locator('tr.details')
  assert.match(await details.nth(0).innerText(), new RegExp(`^log: ${escape(path.join(logDir, 'healthy.log'))}$`))
  assert.match(await details.nth(1).innerText(), new RegExp(`^log: ${escape(path.join(logDir, 'broken.log'))}$`))
  assert.equal(await page.locator('pre.stderr').count(), 0, 'no stderr shown while nothing failed')

  await assert.rejects(failing.pm.startBackend(ROOT), { code: 'ERR_BACKEND_EXITED' })
  await page.waitForSelector('tr.details pre.stderr', { timeout: 20000 })
  assert.equal(await details.nth(1).locator('pre.stderr').innerText(), DB_ERROR)
  assert.equal(await details.nth(0).locator('pre.stderr').count(), 0)
  assert.deepEqual(problems, [])
})
