'use strict'
// backend-pm monitor: a live terminal view of the records of a state folder, and the sampler it shares with
// the dashboard (CPU % from two readings of the tree's CPU time, the addon's health probe, a minute of
// history per backend, each backend's log file and a failed one's last stderr lines).
const fs = require('node:fs')
const path = require('node:path')
const native = require('../binding.js')
const { formatDuration, formatBytes, byBackend, totals, everyLine } = require('./format.js')

/** Samples kept per backend: one a second, the sparklines' last minute. */
const HISTORY = 60
const PROBE_TIMEOUT_MS = 1000

/** Where to probe a backend that listens on `host`: wildcards through loopback, brackets off, no name lookup. */
function probeHost(host) {
  const bare = String(host ?? '127.0.0.1').replace(/^\[(.*)\]$/, '$1')
  if (bare === '0.0.0.0' || bare === 'localhost' || bare === '') return '127.0.0.1'
  if (bare === '::') return '::1'
  return bare
}

/**
 * The addon's health probe for backends this process did not start, one native manager (of no backend) per
 * host, health path and time-out: the same GET, proxies never used, as `checkBackendHealth`.
 */
const probers = new Map()
function proberFor(host, healthPath, timeoutMs) {
  const key = `${host}\0${healthPath}\0${timeoutMs}`
  let prober = probers.get(key)
  if (!prober) {
    prober = new native.NativeManager({ host, healthPath, healthTimeoutMs: timeoutMs, logs: false }, () => {})
    probers.set(key, prober)
  }
  return prober
}

/**
 * One GET of `http://host:port{healthPath}` by the addon's probe (at most `timeoutMs`, at most 1 s). Any answer
 * counts as answering (a 401 is a backend that wants its token); the latency is the time to the status
 * line. Resolves to `{ status, latencyMs, error }`; an abort resolves at once with `error: 'aborted'`.
 */
async function probeHealth(host, port, healthPath, { timeoutMs = PROBE_TIMEOUT_MS, signal } = {}) {
  if (signal?.aborted) return { status: null, latencyMs: null, error: 'aborted' }
  let onAbort
  const aborted = new Promise((resolve) => {
    onAbort = () => resolve({ status: null, latencyMs: null, error: 'aborted' })
    signal?.addEventListener('abort', onAbort, { once: true })
  })
  const probed = (async () => {
    try {
      const r = await proberFor(probeHost(host), healthPath || '/health', timeoutMs).probeHealth(port)
      return { status: r.status ?? null, latencyMs: r.status == null ? null : round(r.latencyMs, 1), error: r.error ?? null }
    } catch (err) {
      return { status: null, latencyMs: null, error: err.message }
    }
  })()
  try {
    return await Promise.race([probed, aborted])
  } finally {
    signal?.removeEventListener('abort', onAbort)
  }
}

// ---- Logs: a backend's log file, and a failed one's last stderr lines (docs/api.md "Logs") ----

/** Lines of stderr shown for a failed backend. */
const STDERR_TAIL_LINES = 5

/** `<logDir>/<name>.log`; `null` without a log folder (logs off) or for a name no log file can have. */
function logFileOf(logDir, name) {
  if (!logDir || name == null) return null
  try {
    return native.logFilePath(logDir, name)
  } catch {
    return null
  }
}

/** The last `lines` stderr lines of `name`'s log (rotated files included), oldest first; `[]` when there are none. */
async function stderrTail(logDir, name, lines = STDERR_TAIL_LINES) {
  if (logFileOf(logDir, name) === null) return []
  try {
    return (await native.readLogs(logDir, name, { lines, stream: 'err' })).map((l) => l.line)
  } catch {
    // An unreadable folder says nothing about the backend: the monitor goes on without its lines.
    return []
  }
}

const round = (value, digits) => (value == null ? null : Number(value.toFixed(digits)))
const ALIVE = new Set(['running', 'orphaned'])
/** States of a line whose backend runs (`unhealthy`: running, and its app's watchdog says so). */
const LIVE = new Set(['running', 'orphaned', 'unhealthy'])
const STATE_ORDER = ['running', 'orphaned', 'stale', 'invalid', 'foreign']
/** States of a line whose backend failed: its process is gone though its record says it should run. */
const FAILED = new Set(['stale'])

/**
 * Samples the records of a state folder: each call lists them, turns two readings of a tree's CPU time into
 * CPU % of one core, probes the health path of every live backend, keeps a minute of history per backend
 * (across its restarts: the history follows name and port, the CPU reading the process), and with a
 * `logDir` gives each backend line its `logFile` and a failed (stale) one its last stderr lines.
 */
class RecordSampler {
  #stateDir
  #name
  #logDir
  #listRecords
  #probe
  #previousCpu = new Map()
  #history = new Map()
  #aborter = new AbortController()

  constructor({ stateDir, name, logDir = null, probe = true, listRecords = native.recordStatuses }) {
    this.#stateDir = stateDir
    this.#name = name
    this.#logDir = logDir
    this.#probe = probe
    this.#listRecords = listRecords
  }

  get stateDir() {
    return this.#stateDir
  }

  /** `{ stateDir, sampledAt, backends }` (see docs/api.md, `monitor --json`), and each backend's `history`. */
  async sample() {
    let records = await this.#listRecords(this.#stateDir)
    const sampledAt = Date.now()
    if (this.#name !== undefined) records = records.filter((r) => r.name === this.#name)
    const cpu = new Map()
    for (const r of records) {
      if (!ALIVE.has(r.state) || r.cpuTimeMs == null) continue
      const key = `${r.file}\0${r.pid}`
      const before = this.#previousCpu.get(key)
      cpu.set(r.file, before && sampledAt > before.at ? Math.max(0, ((r.cpuTimeMs - before.cpuTimeMs) / (sampledAt - before.at)) * 100) : null)
      this.#previousCpu.set(key, { cpuTimeMs: r.cpuTimeMs, at: sampledAt, seen: sampledAt })
    }
    for (const [key, v] of this.#previousCpu) if (v.seen !== sampledAt) this.#previousCpu.delete(key)

    const backends = groupReplicas(records.map((r) => recordLine(r, cpu.get(r.file) ?? null)))
    await Promise.all([this.#probe ? this.#probeAll(backends) : null, this.#addLogs(backends)])
    this.#record(backends, sampledAt)
    return { stateDir: this.#stateDir, sampledAt, backends }
  }

  async #probeAll(backends) {
    const lines = everyLine(backends).filter((b) => LIVE.has(b.state) && b.port != null)
    await Promise.all(lines.map(async (b) => {
      const result = await probeHealth(b.host, b.port, b.healthPath, { signal: this.#aborter.signal })
      b.healthStatus = result.status
      b.healthLatencyMs = result.latencyMs
      b.healthError = result.error
    }))
  }

  /** Each backend line's log file; for one whose process is gone (`stale`), its last stderr lines. */
  async #addLogs(backends) {
    await Promise.all(backends.map(async (b) => {
      b.logFile = logFileOf(this.#logDir, b.name)
      b.stderrTail = b.logFile && FAILED.has(b.state) ? await stderrTail(this.#logDir, b.name) : []
    }))
  }

  /** Appends this sample to each backend's history (a fixed window: `HISTORY` slots, `null` where none). */
  #record(backends, at) {
    const seen = new Set()
    const push = (h, values) => {
      for (const k of Object.keys(h)) h[k].push(k === 'at' ? at : values[k] ?? null)
      if (h.at.length > HISTORY) for (const k of Object.keys(h)) h[k].shift()
    }
    for (const b of backends) {
      let key = historyKey(b)
      if (seen.has(key)) key = b.id
      Object.defineProperty(b, 'key', { value: key, enumerable: false })
      seen.add(key)
      let h = this.#history.get(key)
      if (!h) this.#history.set(key, (h = { at: [], cpuPercent: [], memoryBytes: [], healthLatencyMs: [], restarts: [] }))
      push(h, b)
      Object.defineProperty(b, 'history', { value: h, enumerable: false })
    }
    // A backend missing from this sample gets a gap (the window stays a minute of time); one gone for a
    // whole minute has nothing left to show.
    for (const [key, h] of this.#history) {
      if (seen.has(key)) continue
      if (h.cpuPercent.every((v) => v == null) && h.memoryBytes.every((v) => v == null)) this.#history.delete(key)
      else push(h, {})
    }
  }

  /** Ends probes in flight (so a quitting monitor exits at once). */
  close() {
    this.#aborter.abort()
  }
}

/** A live backend is the same one across its restarts (a new record each time) while name, host and port stay. */
function historyKey(b) {
  return ALIVE.has(b.state) || b.state === 'unhealthy' ? `${b.name}@${b.host}:${b.port}` : b.id
}

/** One line of the view from one record. */
function recordLine(r, cpuPercent) {
  const alive = ALIVE.has(r.state)
  return {
    id: r.file,
    name: r.name ?? path.basename(r.file),
    group: r.group ?? null,
    // A running backend its app's watchdog found unhealthy is shown as such; `healthy` keeps the verdict.
    state: r.state === 'running' && r.healthy === false ? 'unhealthy' : r.state,
    file: r.file,
    pid: r.pid,
    port: r.port,
    host: r.host,
    healthPath: r.healthPath ?? '/health',
    replicaOf: r.replicaOf ?? null,
    uptimeMs: alive ? r.uptimeMs : null,
    cpuPercent: round(cpuPercent, 1),
    memoryBytes: alive ? r.memoryBytes : null,
    processCount: alive ? r.processCount : null,
    restarts: r.restarts,
    healthy: r.healthy,
    healthStatus: null,
    healthLatencyMs: null,
    healthError: null,
    replicas: [],
  }
}

/** Records of replicas (`replicaOf`: the public port) become one backend line with its replicas under it. */
function groupReplicas(lines) {
  const out = byBackend(lines).map(({ item, replicaOf, replicas }) => {
    if (item) return item
    const rs = replicas.sort((a, b) => (a.pid ?? 0) - (b.pid ?? 0))
    const [first] = rs
    const states = rs.map((r) => r.state)
    const uptimes = rs.map((r) => r.uptimeMs).filter((v) => v != null)
    const { cpuPercent, memoryBytes, processCount, restarts } = totals(rs)
    return {
      ...first,
      id: `replicas:${first.name}:${replicaOf}`,
      file: null,
      pid: null,
      port: replicaOf,
      replicaOf: null,
      state: ['running', 'unhealthy', ...STATE_ORDER.slice(1)].find((st) => states.includes(st)) ?? states[0],
      uptimeMs: uptimes.length ? Math.max(...uptimes) : null,
      cpuPercent: round(cpuPercent, 1),
      memoryBytes,
      processCount,
      restarts,
      healthy: rs.some((r) => r.healthy === false) ? false : rs.every((r) => r.healthy === true) ? true : null,
      replicas: rs,
    }
  })
  const rank = (b) => {
    const i = STATE_ORDER.indexOf(b.state === 'unhealthy' ? 'running' : b.state)
    return i < 0 ? STATE_ORDER.length : i
  }
  // Code-point order: localeCompare costs a millisecond a sort through ICU, every second.
  const cmp = (x, y) => (x < y ? -1 : x > y ? 1 : 0)
  return out.sort((a, b) => rank(a) - rank(b) || cmp(a.name, b.name) || (a.port ?? 0) - (b.port ?? 0) || cmp(String(a.id), String(b.id)))
}

/** The `--json` form of a sample: a stable shape, without the history and the probing details. */
function snapshotJson(sample) {
  const line = (b) => ({
    id: b.id,
    name: b.name,
    group: b.group,
    state: b.state,
    file: b.file,
    pid: b.pid,
    port: b.port,
    host: b.host,
    uptimeMs: b.uptimeMs,
    cpuPercent: b.cpuPercent,
    memoryBytes: b.memoryBytes,
    processCount: b.processCount,
    restarts: b.restarts,
    healthy: b.healthy,
    healthStatus: b.healthStatus,
    healthLatencyMs: b.healthLatencyMs,
    healthError: b.healthError,
    replicas: b.replicas.map(line),
  })
  return { stateDir: sample.stateDir, sampledAt: sample.sampledAt, backends: sample.backends.map(line) }
}

// ---- Text: display width, sanitising, sparklines ----

/** Control characters (and bidi overrides) in a file name must not reach the terminal as commands. */
function clean(text) {
  return String(text).replace(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g, '?')
}

function charWidth(cp) {
  if ((cp >= 0x300 && cp <= 0x36f) || (cp >= 0x200b && cp <= 0x200f) || (cp >= 0xfe00 && cp <= 0xfe0f) || (cp >= 0x20d0 && cp <= 0x20ff)) return 0
  if (
    (cp >= 0x1100 && cp <= 0x115f) || (cp >= 0x2e80 && cp <= 0xa4cf) || (cp >= 0xac00 && cp <= 0xd7a3) ||
    (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0xfe30 && cp <= 0xfe4f) || (cp >= 0xff00 && cp <= 0xff60) ||
    (cp >= 0xffe0 && cp <= 0xffe6) || (cp >= 0x1f300 && cp <= 0x1faff) || (cp >= 0x20000 && cp <= 0x3fffd)
  ) return 2
  return 1
}

const ANSI = /\x1b\[[0-9;?]*[A-Za-z]/y
const ANSI_ALL = /\x1b\[[0-9;?]*[A-Za-z]/g
const PRINTABLE_ASCII = /^[\x20-\x7e]*$/

/** Columns a string takes on a terminal (ANSI sequences take none). */
function displayWidth(text) {
  const plain = text.includes('\x1b') ? text.replace(ANSI_ALL, '') : text
  if (PRINTABLE_ASCII.test(plain)) return plain.length
  let width = 0
  for (const ch of plain) width += charWidth(ch.codePointAt(0))
  return width
}

/** At most `width` columns; a cut string ends with `…`. ANSI sequences are kept (and a reset added after a cut). */
function truncate(text, width) {
  if (displayWidth(text) <= width) return text
  let out = ''
  let used = 0
  let styled = false
  for (let i = 0; i < text.length;) {
    ANSI.lastIndex = i
    const m = ANSI.exec(text)
    if (m) {
      out += m[0]
      styled = true
      i += m[0].length
      continue
    }
    const cp = text.codePointAt(i)
    const w = charWidth(cp)
    if (used + w > width - 1) break
    out += String.fromCodePoint(cp)
    used += w
    i += cp > 0xffff ? 2 : 1
  }
  return `${out}…${styled ? '\x1b[0m' : ''}`
}

function pad(text, width, right = false) {
  const cut = truncate(text, width)
  const fill = ' '.repeat(Math.max(0, width - displayWidth(cut)))
  return right ? fill + cut : cut + fill
}

const BLOCKS = '▁▂▃▄▅▆▇█'

/**
 * A sparkline of `width` characters over a fixed window of `slots` values (the newest last; missing ones,
 * before the monitor started, blank). Each character shows the largest value of its slots, scaled from 0
 * to `max` (the window's largest, at least `floor`) — or, with `band`, over the window's own range widened
 * to at least `band` × its largest value, so memory that holds steady draws a flat line mid-height and a
 * growth of that share spans the whole height.
 */
function sparkline(values, { width, slots = HISTORY, floor = 0, band = 0 }) {
  const window = [...Array(Math.max(0, slots - values.length)).fill(undefined), ...values.slice(-slots)]
  const present = window.filter((v) => v != null)
  const max = Math.max(floor, ...present)
  let low = 0
  let span = max
  if (band > 0 && present.length) {
    const min = Math.min(...present)
    span = Math.max(max - min, band * max)
    low = min - (span - (max - min)) / 2
  }
  let out = ''
  for (let i = 0; i < width; i++) {
    const from = Math.floor((i * slots) / width)
    const part = window.slice(from, Math.max(from + 1, Math.floor(((i + 1) * slots) / width)))
    const vs = part.filter((v) => v != null)
    if (part.every((v) => v === undefined)) out += ' '
    else if (vs.length === 0) out += '·'
    else {
      const v = Math.max(...vs)
      out += span > 0 ? BLOCKS[Math.max(0, Math.min(7, Math.floor(((v - low) / span) * 7.999)))] : BLOCKS[0]
    }
  }
  return { text: out, max: present.length ? max : null }
}

function shortBytes(bytes) {
  if (bytes == null) return '-'
  const units = ['B', 'K', 'M', 'G', 'T']
  let v = bytes
  let u = 0
  while (v >= 1000 && u < units.length - 1) {
    v /= 1024
    u++
  }
  return `${v >= 100 || u === 0 ? Math.round(v) : v.toFixed(1)}${units[u]}`
}

function shortPercent(p) {
  if (p == null) return '-'
  return p >= 100 ? `${Math.round(p)}%` : `${p.toFixed(1)}%`
}

// ---- The frame ----

const WIDTH = 80
// NAME STATE PID PORT UPTIME CPU MEMORY PRC RST HEALTH: 14+9+7+5+6+6+9+3+3+9 columns and 9 spaces = 80.
const COLUMNS = [
  { head: 'NAME', width: 14 },
  { head: 'STATE', width: 9 },
  { head: 'PID', width: 7, right: true },
  { head: 'PORT', width: 5, right: true },
  { head: 'UPTIME', width: 6, right: true },
  { head: 'CPU', width: 6, right: true },
  { head: 'MEMORY', width: 9, right: true },
  { head: 'PRC', width: 3, right: true },
  { head: 'RST', width: 3, right: true },
  { head: 'HEALTH', width: 9 },
]

function healthText(b) {
  if (b.healthStatus != null) return `${b.healthStatus} ${b.healthLatencyMs < 10 ? b.healthLatencyMs.toFixed(1) : Math.round(b.healthLatencyMs)}ms`
  if (b.healthError) return b.healthError === 'timeout' ? 'timeout' : b.healthError === 'refused' ? 'refused' : 'error'
  return '-'
}

const STYLE = { bold: '\x1b[1m', dim: '\x1b[2m', red: '\x1b[31m', yellow: '\x1b[33m', green: '\x1b[32m', inverse: '\x1b[7m', reset: '\x1b[0m' }

function stateStyle(state) {
  if (state === 'running') return STYLE.green
  if (state === 'orphaned' || state === 'unhealthy') return STYLE.red
  if (state === 'stale' || state === 'invalid' || state === 'foreign') return STYLE.dim
  return ''
}

function row(cells, color) {
  return cells.map((c, i) => {
    const col = COLUMNS[i]
    const text = pad(clean(c ?? '-'), col.width, col.right)
    return color && i === 1 ? `${color}${text}${STYLE.reset}` : text
  }).join(' ')
}

function cellsOf(b, name) {
  return [
    name,
    b.state,
    b.pid == null ? '-' : String(b.pid),
    b.port == null ? '-' : String(b.port),
    formatDuration(b.uptimeMs),
    shortPercent(b.cpuPercent),
    formatBytes(b.memoryBytes),
    b.processCount == null ? '-' : String(b.processCount),
    b.restarts == null ? '-' : String(b.restarts),
    ALIVE.has(b.state) || b.state === 'unhealthy' ? healthText(b) : '-',
  ]
}

/** The name cell of a backend with replicas: `api ×3`, the name cut to leave room for the count. */
function nameCell(b) {
  const name = clean(b.name)
  if (b.replicas.length === 0) return name
  const suffix = ` ×${b.replicas.length}`
  return truncate(name, COLUMNS[0].width - suffix.length) + suffix
}

/** `text` in at most `room` columns, cut at its start (a path's end is the telling part). */
function tail(text, room) {
  const plain = clean(text)
  if (displayWidth(plain) <= room) return plain
  let out = ''
  for (const ch of [...plain].reverse()) {
    if (displayWidth(ch + out) > room - 1) break
    out = ch + out
  }
  return `…${out}`
}

/**
 * The lines of one frame, each at most `width` (≤ 80) columns: a header, the column heads, and per backend
 * its line, its replicas' lines, a line of CPU and memory sparklines for the last minute, the path of its
 * log file and, for a failed backend, the last lines of its stderr.
 */
function renderFrame(sample, { width = WIDTH, color = false, live = false, now = new Date() } = {}) {
  const s = color ? STYLE : { bold: '', dim: '', red: '', yellow: '', green: '', inverse: '', reset: '' }
  const lines = []
  const time = now.toTimeString().slice(0, 8)
  const title = 'backend-pm monitor  '
  const dirRoom = WIDTH - title.length - time.length - 2
  const dir = clean(sample.stateDir)
  const shownDir = displayWidth(dir) <= dirRoom ? dir : `…${dir.slice(-(dirRoom - 1))}`
  lines.push(`${s.bold}${title}${s.reset}${pad(shownDir, dirRoom)}  ${time}`)
  const count = (state) => sample.backends.filter((b) => b.state === state).length
  const running = count('running') + count('unhealthy')
  const others = ['orphaned', 'stale', 'invalid', 'foreign'].map((st) => [st, count(st)]).filter(([, n]) => n > 0).map(([st, n]) => `${n} ${st}`)
  lines.push(`${running} running${others.length ? `, ${others.join(', ')}` : ''} · CPU: % of one core · health: own probe${live ? ' · q quits' : ''}`)
  lines.push(`${s.inverse}${row(COLUMNS.map((c) => c.head))}${s.reset}`)
  if (sample.backends.length === 0) lines.push(`${s.dim}No backend records in this folder.${s.reset}`)
  for (const b of sample.backends) {
    lines.push(row(cellsOf(b, nameCell(b)), color ? stateStyle(b.state) : ''))
    b.replicas.forEach((r, i) => lines.push(row(cellsOf(r, ` └ #${i + 1}`), color ? stateStyle(r.state) : '')))
    const h = b.history
    if (h && (ALIVE.has(b.state) || b.state === 'unhealthy')) {
      const cpu = sparkline(h.cpuPercent, { width: 28, floor: 5 })
      const mem = sparkline(h.memoryBytes, { width: 28, floor: 1, band: 0.1 })
      const peakCpu = cpu.max == null ? '-' : shortPercent(Math.max(...h.cpuPercent.filter((v) => v != null), 0))
      const peakMem = mem.max == null ? '-' : shortBytes(mem.max)
      lines.push(`${s.dim}  cpu${s.reset} ${cpu.text} ${pad(peakCpu, 5, true)}${s.dim}  mem${s.reset} ${mem.text} ${pad(peakMem, 5, true)}`)
    }
    if (b.logFile) lines.push(`${s.dim}  log${s.reset} ${tail(b.logFile, WIDTH - 6)}`)
    for (const line of b.stderrTail ?? []) lines.push(`${s.red}  err${s.reset} ${clean(line)}`)
  }
  return lines.map((l) => truncate(l, Math.min(width, WIDTH)).trimEnd())
}

// ---- The command ----

/** `--once` and `--json`: two readings half a second apart, so that CPU % is the current rate. */
async function oneShot(sampler) {
  await sampler.sample()
  await new Promise((r) => setTimeout(r, 500))
  return sampler.sample()
}

const ESC = {
  altOn: '\x1b[?1049h',
  altOff: '\x1b[?1049l',
  hide: '\x1b[?25l',
  show: '\x1b[?25h',
  home: '\x1b[H',
  eraseLine: '\x1b[K',
  eraseBelow: '\x1b[J',
  reset: '\x1b[0m',
}

/**
 * The live view: alternate screen, hidden cursor, stdin in raw mode; a frame a second, drawn over the
 * previous one in a single write (each line cleared to its end, the rest of the screen below it), so it
 * does not flicker. `q` or Ctrl-C ends it; so do SIGINT, SIGTERM and SIGHUP, and an exception (after
 * restoring the terminal). Resolves to the exit code.
 */
function live(sampler, { stdin = process.stdin, stdout = process.stdout, intervalMs = 1000 } = {}) {
  return new Promise((resolve) => {
    let restored = false
    let timer = null
    let last = null
    let ticking = false
    let ended = false
    const fd = stdout.fd ?? 1
    const write = (text) => {
      try {
        fs.writeSync(fd, text)
      } catch {}
    }
    const restore = () => {
      if (restored) return
      restored = true
      try {
        if (stdin.isTTY) stdin.setRawMode(false)
      } catch {}
      write(`${ESC.reset}${ESC.show}${ESC.altOff}`)
    }
    const draw = () => {
      if (!last || restored) return
      const rows = stdout.rows || 24
      let lines = renderFrame(last, { width: stdout.columns || WIDTH, color: !process.env.NO_COLOR, live: true })
      if (lines.length > rows) lines = [...lines.slice(0, rows - 1), truncate(`… ${lines.length - rows + 1} more lines: enlarge the terminal`, Math.min(stdout.columns || WIDTH, WIDTH))]
      write(`${ESC.home}${lines.map((l) => `${l}${ESC.eraseLine}`).join('\r\n')}${ESC.eraseBelow}`)
    }
    const tick = async () => {
      if (ticking || ended) return
      ticking = true
      const started = Date.now()
      try {
        last = await sampler.sample()
        draw()
      } catch (err) {
        return end(1, err)
      } finally {
        ticking = false
      }
      if (!ended) timer = setTimeout(tick, Math.max(0, intervalMs - (Date.now() - started)))
    }
    const onKey = (data) => {
      const text = String(data)
      if (text.includes('q') || text.includes('Q') || text.includes('\x03')) end(0)
    }
    const signals = { SIGINT: () => end(0), SIGTERM: () => end(143), SIGHUP: () => end(129) }
    const onException = (err) => end(1, err)
    const onExit = () => restore()
    function end(code, err) {
      if (ended) return
      ended = true
      clearTimeout(timer)
      sampler.close()
      restore()
      stdin.off('data', onKey)
      stdin.pause()
      stdout.off('resize', draw)
      for (const [sig, fn] of Object.entries(signals)) process.off(sig, fn)
      process.off('uncaughtException', onException)
      process.off('unhandledRejection', onException)
      process.off('exit', onExit)
      if (err) process.stderr.write(`backend-pm monitor: ${err.stack ?? err}\n`)
      resolve(code)
    }
    for (const [sig, fn] of Object.entries(signals)) process.on(sig, fn)
    process.on('uncaughtException', onException)
    process.on('unhandledRejection', onException)
    process.on('exit', onExit)
    write(`${ESC.altOn}${ESC.hide}${ESC.home}${ESC.eraseBelow}`)
    if (stdin.isTTY) stdin.setRawMode(true)
    stdin.on('data', onKey)
    stdin.resume()
    stdout.on('resize', draw)
    tick()
  })
}

/** `backend-pm monitor [--once] [--json]`; resolves to the exit code. */
async function command({ once = false, json = false }, { stateDir, name, logDir = null }) {
  const sampler = new RecordSampler({ stateDir, name, logDir })
  if (json) {
    process.stdout.write(`${JSON.stringify(snapshotJson(await oneShot(sampler)), null, 2)}\n`)
    return 0
  }
  if (once) {
    const color = Boolean(process.stdout.isTTY) && !process.env.NO_COLOR
    process.stdout.write(`${renderFrame(await oneShot(sampler), { width: process.stdout.columns || WIDTH, color }).join('\n')}\n`)
    return 0
  }
  if (!process.stdout.isTTY) {
    process.stderr.write('backend-pm monitor: the live view needs a terminal; use --once or --json for one frame\n')
    return 2
  }
  return live(sampler)
}

module.exports = { RecordSampler, probeHealth, probeHost, logFileOf, stderrTail, renderFrame, snapshotJson, sparkline, displayWidth, truncate, clean, command, HISTORY }
