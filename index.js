'use strict'
// The public API of backend-process-manager (API.md). A thin layer over the native binding: it owns the
// defaults, checks the options, resolves what to run, and turns native notifications into events.

const { EventEmitter } = require('node:events')
const path = require('node:path')
const native = require('./binding.js')
const { fromNative, invalidArg } = require('./lib/errors.js')
const { resolveOptions, checkPort, checkPositiveInt, checkTimeout } = require('./lib/options.js')

/** Calls a native async function and rebuilds its error as the public one. */
async function call(fn, ...args) {
  try {
    return await fn(...args)
  } catch (err) {
    throw fromNative(err)
  }
}

/** `app.asar` cannot hold a running program: packaged apps run the backend from `app.asar.unpacked`. */
function unpackedPath(p) {
  return p.replace(/([\\/])app\.asar([\\/]|$)/, '$1app.asar.unpacked$2')
}

class ProcessManager extends EventEmitter {
  #options
  #native
  #starting = null
  #stopping = null
  /** A ref'd timer while a backend starts or runs: like a child process, it keeps Node's event loop alive. */
  #keepAlive = null

  /** @param {import('./index').ProcessManagerOptions} [options] */
  constructor(options) {
    super()
    this.#options = resolveOptions(options)
    // The native side holds this callback for good; through a WeakRef it does not hold the manager, so an
    // idle manager the app no longer uses can be garbage-collected (a running one is held by #keepAlive).
    const onEvent = ProcessManager.#forwarder(new WeakRef(this))
    this.#native = wrapNative(() => new native.NativeManager(nativeConfig(this.#options), onEvent))
  }

  /** Built outside the constructor, so the closure cannot capture the instance itself. */
  static #forwarder(weak) {
    return (event) => weak.deref()?.#onNativeEvent(event)
  }

  #onNativeEvent(event) {
    switch (event.kind) {
      case 'stdout':
      case 'stderr':
        this.emit(event.kind, event.text)
        break
      case 'exit':
        this.#releaseLoopIfIdle()
        this.emit('exit', {
          pid: event.pid,
          exitCode: event.exitCode ?? null,
          signal: event.signal ?? null,
          expected: event.expected === true,
        })
        break
      case 'log': {
        const { logger, name } = this.#options
        const level = event.level || 'info'
        if (logger && typeof logger[level] === 'function') logger[level](`[${name}] ${event.text}`)
        break
      }
    }
  }

  /** The options in force, defaults applied. */
  get options() {
    const { logger, ...rest } = this.#options
    return { ...rest, env: { ...rest.env }, args: [...rest.args] }
  }

  /** The running backend, or `null`. */
  get backend() {
    return this.#native.backend ?? null
  }

  async startBackend(projectRoot = process.cwd(), isPackaged = false) {
    if (typeof projectRoot !== 'string' || projectRoot === '') {
      throw invalidArg(`projectRoot must be a folder path, got ${describe(projectRoot)}`)
    }
    if (this.#starting) return this.#starting
    const running = this.backend
    if (running) return running
    // The timer's callback holds `this`, so the manager (and the native side that will report the exit)
    // cannot be garbage-collected while its backend runs, even if the app drops its last reference.
    this.#keepAlive ??= setInterval(() => void this, 2 ** 30)
    this.#starting = (async () => {
      if (this.#stopping) await this.#stopping.catch(() => {})
      const info = await call(() => this.#native.start(this.#launch(projectRoot, Boolean(isPackaged))))
      this.emit('ready', info)
      return info
    })()
    try {
      return await this.#starting
    } finally {
      this.#starting = null
      this.#releaseLoopIfIdle()
    }
  }

  #releaseLoopIfIdle() {
    if (this.#keepAlive && !this.#starting && !this.#native.backend) {
      clearInterval(this.#keepAlive)
      this.#keepAlive = null
    }
  }

  async stopBackend() {
    if (this.#stopping) return this.#stopping
    this.#stopping = call(() => this.#native.stop())
    try {
      return await this.#stopping
    } finally {
      this.#stopping = null
      this.#releaseLoopIfIdle()
    }
  }

  async findAvailablePort(startPort = this.#options.port) {
    checkPort(startPort, 'startPort')
    const endPort = Math.min(startPort + this.#options.portRange, 65535)
    return call(native.findAvailablePort, startPort, endPort, [], null)
  }

  async isPortAvailable(port) {
    return isPortAvailable(port)
  }

  async checkBackendHealth(port) {
    checkPort(port, 'port')
    return call(() => this.#native.checkHealth(port))
  }

  async waitForBackendReady(port, maxRetries = 10, retryDelayMs = 1000) {
    checkPort(port, 'port')
    checkPositiveInt(maxRetries, 'maxRetries')
    checkTimeout(retryDelayMs, 'retryDelayMs')
    return call(() => this.#native.waitForReady(port, maxRetries, retryDelayMs))
  }

  async killExistingBackend() {
    return call(() => this.#native.killExisting())
  }

  /** This manager's backend and every record of the state folder. */
  async status() {
    const records = await call(native.recordStatuses, this.#options.stateDir)
    return { name: this.#options.name, stateDir: this.#options.stateDir, backend: this.backend, records }
  }

  #launch(projectRoot, isPackaged) {
    const o = this.#options
    let root = path.resolve(projectRoot)
    if (isPackaged) root = unpackedPath(root)
    const usesNode = o.command === undefined
    const program = usesNode ? process.execPath : o.command
    let entryFile
    let args = [...o.args]
    if (usesNode) {
      entryFile = path.resolve(root, o.entry)
      if (isPackaged) entryFile = unpackedPath(entryFile)
      args = [entryFile, ...args]
    }
    let cwd = o.cwd === undefined ? root : path.resolve(root, o.cwd)
    if (isPackaged) cwd = unpackedPath(cwd)
    const env = {}
    for (const [k, v] of Object.entries({ ...process.env, ...o.env })) {
      if (v !== undefined && v !== null) env[k] = String(v)
    }
    // Inside Electron, process.execPath is the Electron binary: this makes it behave as plain Node.
    if (usesNode && process.versions.electron) env.ELECTRON_RUN_AS_NODE = '1'
    return { program, args, cwd, env, entryFile }
  }
}

function nativeConfig(o) {
  return {
    name: o.name,
    host: o.host,
    port: o.port,
    portRange: o.portRange,
    portEnv: o.portEnv,
    healthPath: o.healthPath,
    healthTimeoutMs: o.healthTimeoutMs,
    startTimeoutMs: o.startTimeoutMs,
    stopTimeoutMs: o.stopTimeoutMs,
    stateDir: o.stateDir,
  }
}

function wrapNative(create) {
  try {
    return create()
  } catch (err) {
    throw fromNative(err)
  }
}

function describe(value) {
  return typeof value === 'string' ? JSON.stringify(value) : String(value)
}

/** True when `port` binds on 127.0.0.1, ::1 (where IPv6 exists), 0.0.0.0 and ::. */
async function isPortAvailable(port) {
  checkPort(port, 'port')
  return call(native.isPortAvailable, port, null)
}

/**
 * The first available port from `startPort` to `endPort` (default `startPort + 100`), skipping `exclude`;
 * with `host`, only that address is checked. The port is reserved in this process for 15 s.
 */
async function findAvailablePort(startPort, options = {}) {
  checkPort(startPort, 'startPort')
  if (options === null || typeof options !== 'object') throw invalidArg('options must be an object')
  const endPort = options.endPort === undefined ? Math.min(startPort + 100, 65535) : options.endPort
  checkPort(endPort, 'endPort')
  if (endPort < startPort) throw invalidArg(`endPort ${endPort} is below startPort ${startPort}`)
  const exclude = options.exclude === undefined ? [] : [...options.exclude]
  for (const p of exclude) checkPort(p, 'exclude entry')
  if (options.host !== undefined && typeof options.host !== 'string') throw invalidArg('host must be a string')
  return call(native.findAvailablePort, startPort, endPort, exclude, options.host ?? null)
}

/** The processes listening on `ports`, where the OS tells (Linux). Only busy ports are listed. */
async function findPortHolders(ports) {
  if (!Array.isArray(ports)) throw invalidArg('ports must be an array of port numbers')
  for (const p of ports) checkPort(p, 'port')
  return call(native.portHolders, ports)
}

/** Every PID record of `stateDir` with its state, CPU, memory and port listener. */
async function listRecords(stateDir = native.defaultStateDir()) {
  if (typeof stateDir !== 'string') throw invalidArg('stateDir must be a string')
  return call(native.recordStatuses, stateDir)
}

/** Terminates orphans (of `name`, or all) that match their records; deletes stale and unreadable records. */
async function cleanupRecords(stateDir = native.defaultStateDir(), { name, stopTimeoutMs = 5000 } = {}) {
  if (typeof stateDir !== 'string') throw invalidArg('stateDir must be a string')
  return call(native.cleanupRecords, stateDir, name ?? null, stopTimeoutMs)
}

module.exports = {
  ProcessManager,
  isPortAvailable,
  findAvailablePort,
  findPortHolders,
  listRecords,
  cleanupRecords,
  defaultStateDir: native.defaultStateDir,
}
