'use strict'
// The public API of backend-process-manager (docs/api.md): a thin layer over the native binding. The core
// checks every option and argument and owns every default; this layer keeps what only JS has (the logger,
// the event emitter, `process.env` and `process.execPath`) and turns native notifications into events.

const { EventEmitter } = require('node:events')
const native = require('./binding.js')
const { BackendGroup: Group } = require('./lib/group.js')
const { invalidArg } = require('./lib/format.js')
const { readyForCore } = require('./lib/js-regex.js')

/** The options the JS layer keeps for itself. */
function splitLogger(options) {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) return { logger: console, rest: options }
  const { logger = console, ...rest } = options
  if (logger !== false && (logger === null || typeof logger !== 'object')) {
    throw invalidArg(`logger must be an object with info, warn and error methods, or false, got ${logger === null ? 'null' : typeof logger}`)
  }
  // A logger of another shape (`{}`, `{ log }`) would silence every line without a word: refused.
  const missing = logger === false ? [] : ['info', 'warn', 'error'].filter((m) => typeof logger[m] !== 'function')
  if (missing.length > 0) throw invalidArg(`logger must be an object with info, warn and error methods, or false; it has no ${missing.join(', ')} method`)
  return { logger, rest }
}

function runtime() {
  return { nodePath: process.execPath, electron: Boolean(process.versions.electron), env: { ...process.env } }
}

/** Set by ProcessManager's static block: the synchronous stop of several managers at once. */
let stopManagersSync

class ProcessManager extends EventEmitter {
  /** Every manager made in this process (weakly: an idle one the app dropped may be collected). */
  static #all = new Set()
  #native
  #logger
  #prefix
  /** A ref'd timer while a backend starts or runs: like a child process, it keeps Node's event loop alive. */
  #keepAlive = null
  #busy = 0
  /** The arguments of the last `startBackend()`, for the dashboard's Restart. */
  #lastStart = null
  /** The last events (output lines aside: they are in the log), for a diagnostics archive. */
  #recentEvents = []
  /** `ready: { stdout }` as the app gave it (the core has it rewritten: lib/js-regex.js), or null. */
  #readyShown = null

  /** @param {import('./index').ProcessManagerOptions} [options] */
  constructor(options) {
    super()
    const { logger, rest } = splitLogger(options)
    const ready = rest && typeof rest === 'object' && 'ready' in rest ? readyForCore(rest.ready) : null
    this.#readyShown = ready?.shown ?? null
    // The native side holds this callback for good; through a WeakRef it does not hold the manager, so an
    // idle manager the app no longer uses can be garbage-collected (a running one is held by #keepAlive).
    const onEvent = ProcessManager.#forwarder(new WeakRef(this))
    try {
      this.#native = new native.NativeManager(ready ? { ...rest, ready: ready.ready } : rest, onEvent)
    } catch (err) {
      // The core's message quotes the pattern it was given: the app's own is the one to show.
      if (ready?.quoted && err.code === 'ERR_INVALID_ARG') err.message = err.message.replace(JSON.stringify(ready.ready.stdout), ready.quoted)
      throw err
    }
    this.#logger = logger
    this.#prefix = `[${this.#native.options.name}]`
    ProcessManager.#all.add(new WeakRef(this))
  }

  /** The managers alive in this process. */
  static #live() {
    const live = []
    for (const ref of ProcessManager.#all) {
      const pm = ref.deref()
      if (pm) live.push(pm)
      else ProcessManager.#all.delete(ref)
    }
    return live
  }

  /** Every stop begun first, then all waited for: the thread is blocked `timeoutMs + 250` at most, not that per manager. */
  static #stopSync(managers, options) {
    for (const pm of managers) pm.#native.beginStopSync(options)
    return managers.map((pm) => pm.#native.finishStopSync()).filter((r) => r !== null)
  }

  static {
    stopManagersSync = (managers, options) => ProcessManager.#stopSync(managers, options)
  }

  /**
   * Stops every backend of every manager in this process, blocking the calling thread (for
   * `process.on('exit')`, Electron's `will-quit`, a session end): polite stop, force kill after `timeoutMs`
   * (default 1000), up to 250 ms more to see the processes gone; records deleted. Returns the `StopResult`s.
   */
  static stopAllSync(options) {
    return ProcessManager.#stopSync(ProcessManager.#live(), options)
  }

  /**
   * Stops every backend of every `ProcessManager` and `BackendGroup` in this process (groups in reverse
   * dependency order); resolves once every process is gone, with the `StopResult`s.
   */
  static async stopAll() {
    const fromGroups = await Promise.all(BackendGroup.live().map((g) => g.stopAll()))
    const rest = await Promise.all(ProcessManager.#live().map((pm) => pm.stopBackend()))
    return [...fromGroups.flatMap((byName) => Object.values(byName)), ...rest].filter((r) => r !== null)
  }

  /** `stopBackend()` for where a promise cannot be awaited, blocking the thread (see `stopAllSync`); the `StopResult` or null. */
  stopSync(options) {
    return ProcessManager.#stopSync([this], options)[0] ?? null
  }

  /** Built outside the constructor, so the closure cannot capture the instance itself. */
  static #forwarder(weak) {
    return (event) => weak.deref()?.#onNativeEvent(event)
  }

  /** `{ kind, data }` from the core: a log line for the logger, or an event as docs/api.md names it. */
  #onNativeEvent({ kind, data }) {
    switch (kind) {
      case 'log': {
        const log = this.#logger && this.#logger[data.level]
        if (typeof log === 'function') log.call(this.#logger, `${this.#prefix} ${data.message}`)
        break
      }
      case 'idle':
        this.#releaseLoopIfIdle()
        break
      default:
        this.emit(kind, data)
    }
  }

  /**
   * Output lines cross from the native side only while someone listens to them: the native side is told
   * when the first `stdout`/`stderr` listener comes and the last goes (`once`, `prependOnceListener` and
   * `off` go through these). A backend flooding its output nobody listens to then costs the JS thread nothing.
   */
  #listening = 0
  #outputListenersChanged() {
    const now = (this.listenerCount('stdout') > 0 ? 1 : 0) | (this.listenerCount('stderr') > 0 ? 2 : 0)
    if (now === this.#listening) return
    this.#listening = now
    this.#native.listenToOutput(Boolean(now & 1), Boolean(now & 2))
  }

  addListener(kind, listener) {
    super.addListener(kind, listener)
    this.#outputListenersChanged()
    return this
  }

  on(kind, listener) {
    super.on(kind, listener)
    this.#outputListenersChanged()
    return this
  }

  prependListener(kind, listener) {
    super.prependListener(kind, listener)
    this.#outputListenersChanged()
    return this
  }

  removeListener(kind, listener) {
    super.removeListener(kind, listener)
    this.#outputListenersChanged()
    return this
  }

  off(kind, listener) {
    super.off(kind, listener)
    this.#outputListenersChanged()
    return this
  }

  removeAllListeners(...kind) {
    super.removeAllListeners(...kind)
    this.#outputListenersChanged()
    return this
  }

  emit(kind, ...args) {
    if (kind !== 'stdout' && kind !== 'stderr') {
      const data = args[0] instanceof Error ? { message: args[0].message, code: args[0].code } : args[0]
      // The time is formatted when the events are exported, not on the way to a `ready`.
      this.#recentEvents.push({ time: Date.now(), kind, data: kind === 'start-failed' ? { error: describeError(data.error) } : data })
      if (this.#recentEvents.length > RECENT_EVENTS) this.#recentEvents.shift()
    }
    return super.emit(kind, ...args)
  }

  /**
   * A `.zip` for a support ticket: status, PID records, the last 2,000 lines of each log, the options in
   * force, the last 200 events, versions — the token and secret-looking values redacted in every file.
   */
  async exportDiagnostics(file) {
    const { name, stateDir, backend, records } = await this.status()
    const entries = {
      'status.json': json({ name, stateDir, backend, records }),
      'options.json': json(this.options),
      'events.json': json(this.#recentEvents.map((e) => ({ ...e, time: new Date(e.time).toISOString() }))),
      'versions.json': json(versions()),
    }
    return this.#native.exportDiagnostics(file, entries)
  }

  /** The options in force, defaults applied (without the logger). */
  get options() {
    const options = this.#native.options
    return this.#readyShown ? { ...options, ready: this.#readyShown } : options
  }

  /** The running backend, or `null`. */
  get backend() {
    return this.#native.backend ?? null
  }

  /** Keeps Node alive while `work` runs and while a backend runs (or restarts) after it, as a child process would. */
  async #holdingLoop(work) {
    // The timer's callback holds `this`, so the manager (and the native side that will report the exit)
    // cannot be garbage-collected while its backend runs, even if the app drops its last reference.
    this.#keepAlive ??= setInterval(() => void this, 2 ** 30)
    this.#busy++
    try {
      return await work()
    } finally {
      this.#busy--
      this.#releaseLoopIfIdle()
    }
  }

  #releaseLoopIfIdle() {
    if (this.#keepAlive && this.#busy === 0 && !this.#native.active) {
      clearInterval(this.#keepAlive)
      this.#keepAlive = null
    }
  }

  async startBackend(projectRoot = process.cwd(), isPackaged = false) {
    this.#lastStart = [projectRoot, isPackaged]
    try {
      const starting = this.#native.start(projectRoot, isPackaged, runtime())
      const { info, fresh } = await this.#holdingLoop(() => starting)
      // `ready` comes before the call resolves, once per backend started (restarts emit their own).
      if (fresh) this.emit('ready', info)
      return info
    } catch (error) {
      // For code that did not make the call (a splash screen, an error dialog): the rejection is the caller's.
      this.emit('start-failed', { error })
      throw error
    }
  }

  async stopBackend() {
    const stopping = this.#native.stop()
    return this.#holdingLoop(() => stopping)
  }

  /** Replaces every process of the running backend with a new one, one at a time (with replicas or `listen: 'fd'`, no request fails); the backend, or `null` when nothing runs. */
  async reload() {
    const reloading = this.#native.reload()
    return this.#holdingLoop(() => reloading)
  }

  async findAvailablePort(startPort) {
    return this.#native.findAvailablePort(startPort)
  }

  async isPortAvailable(port) {
    return native.isPortAvailable(port)
  }

  async checkBackendHealth(port) {
    return this.#native.checkHealth(port)
  }

  /** A start, a running or restarting backend, or a stop is under way (`pm.backend` is null while it starts): for the Electron helper. */
  [Symbol.for('backend-process-manager.active')]() {
    return this.#native.active
  }

  /** The dashboard's health probe: `{ status, latencyMs, error }`, with the token only for the backend's own listener. */
  [Symbol.for('backend-process-manager.probeHealth')](port) {
    return this.#native.probeHealth(port)
  }

  async waitForBackendReady(port, maxRetries, retryDelayMs) {
    return this.#native.waitForReady(port, maxRetries, retryDelayMs)
  }

  async killExistingBackend() {
    return this.#native.killExisting()
  }

  /** The last lines of this backend's log file (`logs` option) across its rotated files, oldest first: `[{ time, stream, replica, line }]`. */
  async logs(options) {
    return this.#native.logs(options)
  }

  /** CPU, memory and process count of the running backend's whole tree, uptime, restarts, health; `null` when it is not running. */
  async stats() {
    return this.#native.stats()
  }

  /** This manager's backend and every record of the state folder. */
  async status() {
    const { name, stateDir } = this.options
    const records = await native.recordStatuses(stateDir)
    return { name, stateDir, backend: this.backend, records }
  }

  /**
   * A live page of this backend (charts of CPU, memory, health latency and restarts; Stop and Restart) on
   * 127.0.0.1, behind a random token carried by `url`. Resolves to `{ url, close() }`.
   */
  async dashboard(options) {
    const { managerDashboard } = require('./lib/dashboard.js')
    const member = { manager: this, restart: () => this.#restartBackend(), canRestart: () => this.#lastStart !== null }
    return managerDashboard([member], this.options.name, options)
  }

  /** Stop, then start with the arguments of the last `startBackend()`. */
  async #restartBackend() {
    const [projectRoot, isPackaged] = this.#lastStart
    await this.stopBackend()
    return this.startBackend(projectRoot, isPackaged)
  }
}

const RECENT_EVENTS = 200
const json = (value) => `${JSON.stringify(value, null, 2)}\n`

/** An error as a diagnostics archive keeps it: its message, code and fields. */
function describeError(error) {
  if (!(error instanceof Error)) return error
  const { message, code, ...fields } = Object.assign({}, error, { message: error.message, code: error.code })
  return { message, code, ...fields }
}

/** What a support ticket needs to know of the software around the backend. */
function versions() {
  const os = require('node:os')
  return {
    package: require('./package.json').version,
    node: process.versions.node,
    electron: process.versions.electron ?? null,
    os: `${os.type()} ${os.release()}`,
    platform: process.platform,
    arch: process.arch,
  }
}

/** True when `port` binds on 127.0.0.1, ::1 (where IPv6 exists), 0.0.0.0 and :: (or only on `options.host`). */
async function isPortAvailable(port, options) {
  return native.isPortAvailable(port, options?.host ?? null)
}

/**
 * The first available port from `startPort` to `endPort` (default `startPort + 100`), skipping `exclude`;
 * with `host`, only that address is checked. The port is reserved for 15 s.
 */
async function findAvailablePort(startPort, options) {
  return native.findAvailablePort(startPort, options)
}

/** Several named backends, started in dependency order and stopped in reverse (docs/api.md, "Several different backends"). */
class BackendGroup extends Group {
  static #all = new Set()

  /** @param {Array<import('./index').BackendGroupMember>} entries */
  constructor(entries) {
    super(entries, ProcessManager)
    BackendGroup.#all.add(new WeakRef(this))
  }

  /** The groups alive in this process. */
  static live() {
    const live = []
    for (const ref of BackendGroup.#all) {
      const group = ref.deref()
      if (group) live.push(group)
      else BackendGroup.#all.delete(ref)
    }
    return live
  }

  /** `stopAll()` blocking the thread, every member at once (see `ProcessManager.stopAllSync`); the `StopResult`s. */
  stopAllSync(options) {
    return stopManagersSync(this.names.map((name) => this.get(name)), options)
  }
}

module.exports = {
  ProcessManager,
  BackendGroup,
  isPortAvailable,
  findAvailablePort,
  /** The processes listening on `ports`, where the OS tells. Only busy ports are listed. */
  findPortHolders: async (ports) => native.portHolders(ports),
  /** CPU and memory of each live process of `pids` (synchronous reads of the OS's process table). */
  processUsage: async (pids) => native.processUsage(pids),
  /** Every PID record of `stateDir` with its state, CPU, memory and port listener. */
  listRecords: async (stateDir) => native.recordStatuses(stateDir),
  /** Terminates orphans (of `name`, or all) that match their records; deletes stale and broken records. */
  cleanupRecords: async (stateDir, options) => native.cleanupRecords(stateDir, options),
  /** Stops the backend of one record file (identity-checked), whatever its app's state. */
  stopRecord: async (file, options) => native.stopRecord(file, options),
  defaultStateDir: native.defaultStateDir,
  /** The per-user log folder (`logs.dir` without a `stateDir`). */
  defaultLogDir: native.defaultLogDir,
  /** The last lines of the log of `name` in `dir`, oldest first. */
  readLogs: async (dir, name, options) => native.readLogs(dir, name, options),
  /** The names of the logs in `dir`. */
  logNames: async (dir) => native.logNames(dir),
  /** `backend-pm diagnostics`: status and versions, the records of `stateDir`, the last lines of every log of `logDir`. */
  exportDiagnostics: async (file, { stateDir, logDir } = {}) => {
    const dir = stateDir ?? native.defaultStateDir()
    const entries = {
      'status.json': json({ stateDir: dir, records: await native.recordStatuses(dir).catch((err) => ({ error: err.message })) }),
      'versions.json': json(versions()),
    }
    return native.exportDiagnostics(file, { stateDir: dir, logDir: logDir ?? native.defaultLogDir() }, entries)
  },
}
