'use strict'
// The dashboard: a page server on 127.0.0.1 only, behind a random token, that streams one sample a second
// (server-sent events) from a data source and runs its Stop/Restart actions. Two sources: the records of a
// state folder (the CLI) and a list of managers, each with an optional group name (the app itself).
const crypto = require('node:crypto')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const http = require('node:http')
const { pathToFileURL } = require('node:url')
const { spawn } = require('node:child_process')
const { RecordSampler, probeHealth, logFileOf, stderrTail } = require('./monitor.js')
const { everyLine, managerReplicaLines, invalidArg } = require('./format.js')
const { buildPage } = require('./dashboard-page.js')

/** Samples kept for a page that connects later: five minutes. */
const KEEP = 300
const INTERVAL_MS = 1000
const MAX_CLIENTS = 16
const MAX_BODY = 4096


function httpError(status, message) {
  const err = new Error(message)
  err.status = status
  return err
}

const ALIVE = new Set(['running', 'orphaned', 'unhealthy'])
/** States of a manager's backend that ended against its will: its stderr tells why. */
const FAILED = new Set(['failed', 'exited'])
/** ProcessManager's own health probe (index.js), which checks the listener's owner before sending the token. */
const PROBE_HEALTH = Symbol.for('backend-process-manager.probeHealth')

/** What the page is sent of a line: the monitor's fields and the actions it may ask for. */
function view(line, actions) {
  return {
    id: line.id,
    // What the charts follow: the same across restarts (a record's id changes with each process).
    key: line.key ?? line.id,
    name: line.name,
    group: line.group ?? null,
    state: line.state,
    file: line.file ?? null,
    pid: line.pid ?? null,
    port: line.port ?? null,
    host: line.host ?? null,
    uptimeMs: line.uptimeMs ?? null,
    cpuPercent: line.cpuPercent ?? null,
    memoryBytes: line.memoryBytes ?? null,
    processCount: line.processCount ?? null,
    restarts: line.restarts ?? null,
    healthy: line.healthy ?? null,
    healthStatus: line.healthStatus ?? null,
    healthLatencyMs: line.healthLatencyMs ?? null,
    healthError: line.healthError ?? null,
    logFile: line.logFile ?? null,
    stderrTail: line.stderrTail ?? [],
    replicas: (line.replicas ?? []).map((r) => view(r, actions)),
    actions: actions(line),
  }
}

/**
 * The records of a state folder (`listRecords`, the addon's health probe and the logs of `logDir`). Stop = `stopRecord`
 * of the record (of every replica, for a backend with replicas): its app sees an unexpected exit and
 * starts it again if its restart policy says so, which a record does not tell — so there is no Restart.
 */
function recordsSource({ stateDir, name, logDir = null, stopTimeoutMs, stopRecord = require('../binding.js').stopRecord, listRecords }) {
  const sampler = new RecordSampler({ stateDir, name, logDir, ...(listRecords ? { listRecords } : {}) })
  let lines = new Map()
  const actions = (line) => (ALIVE.has(line.state) && (line.file || line.replicas?.some((r) => ALIVE.has(r.state))) ? ['stop'] : [])
  const source = {
    title: 'Backends',
    subtitle: stateDir,
    note: 'Stop ends the backend (checked to be the recorded process); its app starts it again if its restart policy says so.',
    async sample() {
      const s = await sampler.sample()
      lines = new Map(everyLine(s.backends).map((line) => [line.id, line]))
      return { at: s.sampledAt, backends: s.backends.map((b) => view(b, actions)) }
    },
    async act(id, action) {
      if (!lines.has(id)) await source.sample()
      const line = lines.get(id)
      if (!line) throw httpError(404, 'no such backend (it may have ended)')
      if (action !== 'stop' || !actions(line).includes('stop')) throw httpError(400, `${action} is not possible for ${line.name} (${line.state})`)
      // Only files this source listed itself are ever stopped, never a path from the request.
      const files = line.file ? [line.file] : line.replicas.filter((r) => ALIVE.has(r.state)).map((r) => r.file)
      const items = []
      for (const file of files) items.push(await stopRecord(file, { stopTimeoutMs }))
      const ok = items.every((i) => i.action === 'terminated')
      return { ok, message: items.map((i) => i.detail).join('; '), items }
    },
    close() {
      sampler.close()
    },
  }
  return source
}

/**
 * Managers of the app itself: `members` is `[{ manager, group?, restart?, canRestart?, events? }]` (a group
 * of backends passes one entry per member, with its group name). `manager` may be a function returning the
 * member's manager now (a group member whose `env` is a function gets a new one at each `startAll()`); its
 * events then come from `events`, an emitter that passes them on with the member's `name` (the group), so
 * nothing that happens on a new manager is missed and the member's state is kept. Figures come from `manager.stats()` — or
 * its `stats` events when it emits them, so the app's own CPU sampling windows are not cut short — and
 * health from its watchdog when it runs one, else from a probe of our own (with the backend's token); the
 * path of its log file, and for a backend that failed or exited on its own, its last stderr lines.
 * Stop = `stopBackend()`; Restart = `restart()` (stop, then start with the same arguments).
 */
function managerSource(members, { title = 'Backends', subtitle = '' } = {}) {
  const used = new Set()
  const entries = members.map((m) => {
    const managerNow = typeof m.manager === 'function' ? m.manager : () => m.manager
    const name = managerNow().options.name
    let id = m.group ? `${m.group}/${name}` : name
    for (let i = 2; used.has(id); i++) id = `${m.group ? `${m.group}/` : ''}${name}#${i}`
    used.add(id)
    const entry = { ...m, id, phase: managerNow().backend ? 'running' : 'stopped', lastStats: null, busy: false, restarts: null }
    Object.defineProperty(entry, 'manager', { get: managerNow })
    // Listened to on the emitter that passes the member's events on (only those naming it), else on its manager.
    entry.emitter = m.events ?? managerNow()
    const own = m.events ? (fn) => (payload) => payload?.name === name && fn(payload) : (fn) => fn
    entry.listeners = {
      ready: () => (entry.phase = 'running'),
      restart: () => (entry.phase = 'restarting'),
      failed: () => (entry.phase = 'failed'),
      // A start that rejected (its process ended before it was ready): failed too, so its stderr is shown.
      'start-failed': () => (entry.phase = 'failed'),
      // An unexpected exit is followed by `restart` when the policy restarts it; else it stays `exited`.
      exit: (e) => {
        if (!entry.busy) entry.phase = e.expected ? 'stopped' : 'exited'
      },
      stats: (s) => (entry.lastStats = s),
    }
    for (const [event, fn] of Object.entries(entry.listeners)) entry.emitter.on(event, (entry.listeners[event] = own(fn)))
    return entry
  })
  const aborter = new AbortController()
  const actions = (e, state) => {
    const restartable = typeof e.restart === 'function' && (e.canRestart ? e.canRestart() : true)
    if (state === 'running' || state === 'unhealthy') return ['stop', ...(restartable ? ['restart'] : [])]
    if (state === 'restarting') return ['stop']
    return restartable ? ['start'] : []
  }

  async function sampleOne(e) {
    const { manager } = e
    const backend = manager.backend
    const opts = manager.options
    let stats = null
    if (backend) {
      stats = opts.statsIntervalMs > 0 && e.lastStats?.pid === backend.pid ? e.lastStats : await manager.stats()
    }
    if (stats) e.restarts = stats.restarts
    const line = {
      id: e.id,
      name: opts.name,
      group: e.group ?? null,
      state: backend ? (stats?.healthy === false ? 'unhealthy' : 'running') : e.phase === 'running' ? 'exited' : e.phase,
      pid: backend?.pid ?? null,
      port: backend?.port ?? null,
      host: backend?.host ?? null,
      uptimeMs: stats?.uptimeMs ?? null,
      cpuPercent: stats ? Number(stats.cpuPercent.toFixed(1)) : null,
      memoryBytes: stats?.memoryBytes ?? null,
      processCount: stats?.processCount ?? null,
      restarts: e.restarts,
      healthy: stats?.healthy ?? null,
      replicas: [],
    }
    if (backend && opts.healthIntervalMs > 0) {
      line.healthLatencyMs = stats?.healthLatencyMs ?? null
    } else if (backend) {
      // Through the manager, which writes the token only to the backend's own listener (never to a
      // program of another user that took the port).
      const ownProbe = manager[PROBE_HEALTH]
      const probe = ownProbe
        ? await ownProbe.call(manager, backend.port).catch((err) => ({ status: null, latencyMs: null, error: err.message }))
        : await probeHealth(backend.host, backend.port, opts.healthPath, { timeoutMs: Math.min(1000, opts.healthTimeoutMs), signal: aborter.signal })
      line.healthStatus = probe.status
      line.healthLatencyMs = probe.latencyMs == null ? null : Number(probe.latencyMs.toFixed(1))
      line.healthError = probe.error
    }
    // Replicas, where the manager runs them: their figures when stats() lists them, else pid and port.
    line.replicas = managerReplicaLines(stats?.replicas ?? backend?.replicas ?? [], { id: e.id, name: opts.name, group: e.group })
    const logDir = opts.logs ? opts.logs.dir : null
    line.logFile = logFileOf(logDir, opts.name)
    line.stderrTail = line.logFile && FAILED.has(line.state) ? await stderrTail(logDir, opts.name) : []
    return view(line, (l) => (l === line ? actions(e, line.state) : []))
  }

  return {
    title,
    subtitle,
    note: '',
    async sample() {
      const backends = await Promise.all(entries.map(sampleOne))
      return { at: Date.now(), backends }
    },
    async act(id, action) {
      const e = entries.find((x) => x.id === id)
      if (!e) throw httpError(404, 'no such backend')
      const state = e.manager.backend ? 'running' : e.phase
      if (!actions(e, state).includes(action)) throw httpError(400, `${action} is not possible for ${id} (${state})`)
      if (e.busy) throw httpError(409, `${id}: another action is still running`)
      e.busy = true
      try {
        if (action === 'stop') {
          const result = await e.manager.stopBackend()
          e.phase = 'stopped'
          return { ok: true, message: result ? `stopped pid ${result.pid}${result.forced ? ' (force-killed)' : ''} in ${Math.round(result.durationMs)} ms` : 'it was not running' }
        }
        const info = await e.restart()
        e.phase = 'running'
        // The backend's token stays in the app: the page does not need it.
        return { ok: true, message: `running: pid ${info.pid}, port ${info.port}`, pid: info.pid, port: info.port }
      } catch (err) {
        return { ok: false, error: `${err.message}${err.code ? ` (${err.code})` : ''}` }
      } finally {
        e.busy = false
      }
    },
    close() {
      aborter.abort()
      for (const e of entries) for (const [event, fn] of Object.entries(e.listeners)) e.emitter.off(event, fn)
    },
  }
}

const sha256 = (text) => crypto.createHash('sha256').update(String(text)).digest()

/** The same digest length for any input, so the comparison itself tells nothing about the token. */
function tokenMatches(given, expectedDigest) {
  return typeof given === 'string' && crypto.timingSafeEqual(sha256(given), expectedDigest)
}

/**
 * Serves the page of `source` on 127.0.0.1 (`port`, or any free one). Every request must carry the token
 * (`?token=`). Resolves to `{ url, port, close() }`.
 */
async function serveDashboard({ source, port = 0 }) {
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    // The source is this dashboard's from here on (it listens to the managers): closed on every failure.
    source.close()
    throw invalidArg(`port must be an integer from 0 to 65535, got ${port}`)
  }
  const token = crypto.randomBytes(32).toString('hex')
  const digest = sha256(token)
  const page = buildPage(source)
  const clients = new Set()
  const history = []
  let latest = null
  let timer = null
  let ticking = false
  let closed = false
  // One sample at a time: two at once would measure CPU over a few milliseconds.
  let inflight = null
  const sampleNow = () => (inflight ??= Promise.resolve().then(() => source.sample()).finally(() => (inflight = null)))

  const headers = {
    'Content-Security-Policy': page.csp,
    'X-Content-Type-Options': 'nosniff',
    'Referrer-Policy': 'no-referrer',
    'X-Frame-Options': 'DENY',
    'Cross-Origin-Opener-Policy': 'same-origin',
    'Cross-Origin-Resource-Policy': 'same-origin',
    'Cache-Control': 'no-store',
  }
  const send = (res, status, body, type = 'text/plain; charset=utf-8', extra = {}) => {
    res.writeHead(status, { ...headers, 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), ...extra })
    res.end(body)
  }
  const sendJson = (res, status, value) => send(res, status, JSON.stringify(value), 'application/json; charset=utf-8')

  async function tick() {
    if (ticking || closed) return
    ticking = true
    const started = Date.now()
    try {
      latest = await sampleNow()
    } catch (err) {
      latest = { at: Date.now(), error: err.message, backends: [] }
    }
    ticking = false
    if (closed) return
    // What the charts need of it, for pages that connect later.
    history.push({ at: latest.at, backends: latest.backends.map(({ id, key, name, group, cpuPercent, memoryBytes, healthLatencyMs, restarts }) => ({ id, key, name, group, cpuPercent, memoryBytes, healthLatencyMs, restarts })) })
    if (history.length > KEEP) history.shift()
    const frame = `data: ${JSON.stringify(latest)}\n\n`
    for (const res of clients) {
      // A page that stopped reading is dropped rather than buffered without end.
      if (res.writableLength > 1 << 20) res.destroy()
      else res.write(frame)
    }
    // Sampling runs only while a page listens.
    timer = clients.size > 0 ? setTimeout(tick, Math.max(0, INTERVAL_MS - (Date.now() - started))) : null
  }

  function events(req, res) {
    if (clients.size >= MAX_CLIENTS) return send(res, 503, 'too many open dashboards\n')
    res.writeHead(200, { ...headers, 'Content-Type': 'text/event-stream; charset=utf-8', Connection: 'keep-alive' })
    res.write(`retry: 2000\nevent: hello\ndata: ${JSON.stringify({ history, latest: history.length > 0 ? latest : null })}\n\n`)
    clients.add(res)
    req.socket.setNoDelay(true)
    res.on('close', () => clients.delete(res))
    if (!timer && !ticking) tick()
  }

  async function action(req, res) {
    const type = String(req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase()
    if (type !== 'application/json') return sendJson(res, 415, { ok: false, error: 'expected application/json' })
    // A browser sends Origin with a POST; one from another origin is refused even with the token.
    if (req.headers.origin !== undefined && !origins.has(req.headers.origin)) return sendJson(res, 403, { ok: false, error: 'forbidden' })
    let body = ''
    for await (const chunk of req) {
      body += chunk
      if (body.length > MAX_BODY) return sendJson(res, 413, { ok: false, error: 'request too large' })
    }
    let job
    try {
      job = JSON.parse(body)
    } catch {
      return sendJson(res, 400, { ok: false, error: 'malformed JSON' })
    }
    if (typeof job?.id !== 'string' || !['stop', 'restart', 'start'].includes(job.action)) return sendJson(res, 400, { ok: false, error: 'expected { id, action: "stop" | "restart" | "start" }' })
    try {
      const result = await source.act(job.id, job.action)
      sendJson(res, result.ok === false ? 500 : 200, result)
    } catch (err) {
      sendJson(res, err.status ?? 500, { ok: false, error: err.message })
    } finally {
      // The next sample shows the outcome, and open pages get it now rather than within the second.
      latest = null
      if (timer) {
        clearTimeout(timer)
        timer = null
        tick()
      }
    }
  }

  let origins = new Set()
  let hosts = new Set()
  const server = http.createServer((req, res) => {
    handle(req, res).catch((err) => {
      if (!res.headersSent) sendJson(res, 500, { ok: false, error: err.message })
      else res.destroy()
    })
  })
  async function handle(req, res) {
    // DNS rebinding: a page of another site that resolves its name to 127.0.0.1 sends its own Host.
    if (!hosts.has(String(req.headers.host ?? '').toLowerCase())) return send(res, 403, 'forbidden\n')
    const url = new URL(req.url, 'http://127.0.0.1')
    if (!tokenMatches(url.searchParams.get('token'), digest)) return send(res, 403, 'forbidden\n')
    const route = `${req.method} ${url.pathname}`
    switch (route) {
      case 'GET /':
        return send(res, 200, page.html, 'text/html; charset=utf-8')
      case 'GET /events':
        return events(req, res)
      case 'GET /snapshot':
        if (!latest || Date.now() - latest.at > 1500) latest = await sampleNow()
        return sendJson(res, 200, latest)
      case 'POST /action':
        return action(req, res)
      default:
        return ['/', '/events', '/snapshot', '/action'].includes(url.pathname) ? send(res, 405, 'method not allowed\n') : send(res, 404, 'not found\n')
    }
  }

  await new Promise((resolve, reject) => {
    server.once('error', (err) => {
      const e = new Error(err.code === 'EADDRINUSE' ? `port ${port} is in use: choose another or leave it out` : `the dashboard cannot listen on 127.0.0.1:${port}: ${err.message}`)
      e.code = err.code === 'EADDRINUSE' ? 'ERR_NO_FREE_PORT' : 'ERR_INTERNAL'
      // The range tried, as every ERR_NO_FREE_PORT carries it: the one port asked for.
      if (e.code === 'ERR_NO_FREE_PORT') Object.assign(e, { startPort: port, endPort: port })
      e.cause = err
      source.close()
      reject(e)
    })
    server.listen({ host: '127.0.0.1', port, exclusive: true }, resolve)
  })
  const actual = server.address().port
  hosts = new Set([`127.0.0.1:${actual}`, `localhost:${actual}`])
  origins = new Set([`http://127.0.0.1:${actual}`, `http://localhost:${actual}`])
  const origin = `http://127.0.0.1:${actual}`

  return {
    url: `${origin}/?token=${token}`,
    port: actual,
    close() {
      if (closed) return Promise.resolve()
      closed = true
      clearTimeout(timer)
      for (const res of clients) res.end()
      source.close()
      return new Promise((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      })
    },
  }
}

const escapeHtml = (text) => text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)

/**
 * A page that sends the browser on to `url`, in a folder of its own that only this user can enter (0700)
 * and a file only this user can read (0600): the browser is given the file's path, so the secret in `url`
 * is never on a command line, which every local user can read in /proc (a single-use code there was
 * redeemed by another user before a slow browser did). Jupyter opens its browser the same way.
 * Returns `{ file, remove() }`.
 */
function writeRedirectFile(url) {
  // mkdtemp makes the folder 0700; on Windows the per-user temp folder is the user's alone.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'backend-pm-dashboard-'))
  const file = path.join(dir, 'open.html')
  const href = escapeHtml(url)
  fs.writeFileSync(
    file,
    `<!doctype html>\n<html><head><meta charset="utf-8"><meta name="referrer" content="no-referrer"><meta http-equiv="refresh" content="0;url=${href}"><title>Dashboard</title></head>\n<body><a href="${href}">Open the dashboard</a></body></html>\n`,
    { mode: 0o600, flag: 'wx' },
  )
  return { file, remove: () => fs.rmSync(dir, { recursive: true, force: true }) }
}

/** Opens `url` in the desktop's browser; a failure only prints a hint (the URL is printed anyway). */
function openBrowser(url) {
  const [command, args] =
    process.platform === 'darwin' ? ['open', [url]] : process.platform === 'win32' ? ['rundll32', ['url.dll,FileProtocolHandler', url]] : ['xdg-open', [url]]
  const child = spawn(command, args, { stdio: 'ignore', detached: true })
  child.on('error', (err) => process.stderr.write(`could not open a browser (${command}: ${err.message}); open the URL above\n`))
  child.unref()
}

/** `backend-pm dashboard [--port N] [--open]`: serves until SIGINT, SIGTERM or SIGHUP; resolves to the exit code. */
async function command({ port, open }, { stateDir, name, logDir = null, stopTimeoutMs }) {
  const dashboard = await serveDashboard({ source: recordsSource({ stateDir, name, logDir, stopTimeoutMs }), port })
  // Listened for before the URL is printed: a stop sent as soon as the URL is read is a clean stop too.
  const signal = new Promise((resolve) => {
    const handlers = ['SIGINT', 'SIGTERM', 'SIGHUP'].map((sig) => [sig, () => {
      for (const [s, fn] of handlers) process.off(s, fn)
      resolve(sig)
    }])
    for (const [s, fn] of handlers) process.on(s, fn)
  })
  process.stdout.write(`Dashboard of ${stateDir}${name !== undefined ? ` (backends named ${JSON.stringify(name)})` : ''}:\n  ${dashboard.url}\n`)
  process.stdout.write('The URL carries a secret: whoever has it can stop these backends. Ctrl-C stops the dashboard.\n')
  let redirect = null
  const removeRedirect = () => redirect?.remove()
  if (open) {
    try {
      redirect = writeRedirectFile(dashboard.url)
      // Even when the process ends without a signal we handle, the file does not outlive the dashboard.
      process.once('exit', removeRedirect)
      openBrowser(pathToFileURL(redirect.file).href)
    } catch (err) {
      process.stderr.write(`could not open a browser (${err.message}); open the URL above\n`)
    }
  }
  const received = await signal
  await dashboard.close()
  removeRedirect()
  process.off('exit', removeRedirect)
  process.stdout.write(`dashboard stopped (${received})\n`)
  return 0
}

/**
 * `pm.dashboard(options)` and `group.dashboard(options)`: the page of `members` (as `managerSource` takes
 * them) under `title`. `options` is `{ port? }` (checked by `serveDashboard`), nothing else.
 */
async function managerDashboard(members, title, options = {}) {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) throw invalidArg(`dashboard options must be an object, got ${options === null ? 'null' : typeof options}`)
  for (const key of Object.keys(options)) if (key !== 'port') throw invalidArg(`unknown dashboard option ${JSON.stringify(key)} (known: port)`)
  const source = managerSource(members, { title, subtitle: 'backend-process-manager' })
  const served = await serveDashboard({ source, port: options.port ?? 0 })
  return { url: served.url, close: served.close }
}

module.exports = { serveDashboard, recordsSource, managerSource, managerDashboard, command }
