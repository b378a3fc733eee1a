'use strict'
// BackendGroup (docs/api.md, "Several different backends"): several named backends started in dependency
// order — each as soon as the ones it depends on are up, independent ones in parallel — all or nothing,
// and stopped in reverse order. The core checks the members (unique names, known dependencies, no cycle);
// this layer only sequences ProcessManager calls.

const { EventEmitter } = require('node:events')
const native = require('../binding.js')
const { invalidArg } = require('./format.js')

/** The events a member emits that the group passes on, with the member's name. */
const MEMBER_EVENTS = ['ready', 'exit', 'restart', 'failed', 'start-failed', 'unhealthy', 'healthy', 'port-changed', 'stats', 'stdout', 'stderr', 'warning', 'status']


/** The env of a member whose `env` is a function, from its started dependencies (`infoOf(name)`: a `BackendInfo`). */
function envOf(member, infoOf) {
  const env = member.envFn(Object.fromEntries(member.dependsOn.map((d) => [d, infoOf(d)])))
  if (env !== undefined && env !== null && (typeof env !== 'object' || Array.isArray(env))) {
    const name = member.options.name
    throw Object.assign(invalidArg(`env() of ${JSON.stringify(name)} must return an object, got ${Array.isArray(env) ? 'an array' : typeof env}`), { backend: name })
  }
  return env ?? {}
}

class BackendGroup extends EventEmitter {
  /** name → { options, dependsOn, envFn, pm } */
  #members = new Map()
  /** Names in start order (every dependency before what depends on it). */
  #order = []
  #ProcessManager
  #starting = null
  /** The arguments of the last `startAll()`, for the dashboard's Start and Restart of one member. */
  #lastStart = null

  /**
   * @param {Array<import('../index').BackendGroupMember>} entries
   * @param {typeof import('../index').ProcessManager} ProcessManager
   */
  constructor(entries, ProcessManager) {
    super()
    this.#ProcessManager = ProcessManager
    if (!Array.isArray(entries)) throw invalidArg('a BackendGroup takes an array of ProcessManager options, each with a name')
    const ordered = native.groupOrder(entries.map((e) => (e !== null && typeof e === 'object' ? { name: e.name, dependsOn: e.dependsOn } : e)))
    for (const { index, dependsOn } of ordered) {
      const { dependsOn: _, env, ...options } = entries[index]
      if (env !== undefined && env !== null && typeof env !== 'function' && typeof env !== 'object') {
        throw invalidArg(`env of ${JSON.stringify(options.name)} must be an object or a function of the started dependencies, got ${typeof env}`)
      }
      const envFn = typeof env === 'function' ? env : null
      const member = {
        options: envFn ? options : { ...options, env },
        dependsOn: dependsOn.map((i) => entries[i].name),
        envFn,
        pm: null,
      }
      // Made now, so that every option is checked at construction and get(name) works before startAll().
      member.pm = this.#manager(member, {})
      this.#members.set(options.name, member)
      this.#order.push(options.name)
    }
  }

  /** A member's manager, its events passed on by the group. */
  #manager(member, env) {
    const options = member.envFn ? { ...member.options, env } : member.options
    const pm = new this.#ProcessManager(options)
    const name = member.options.name
    for (const kind of MEMBER_EVENTS) {
      pm.on(kind, (payload) => {
        const data = payload !== null && typeof payload === 'object' ? { name, ...payload } : { name, line: payload }
        this.emit(kind, data)
      })
    }
    return pm
  }

  /** The `ProcessManager` of the backend `name` (undefined for an unknown name). */
  get(name) {
    return this.#members.get(name)?.pm
  }

  /** Member names in start order. */
  get names() {
    return [...this.#order]
  }

  /**
   * Starts every backend, each once the ones it depends on are up, independent ones in parallel. All or
   * nothing: if one fails, the others are stopped and the promise rejects with that error, its `backend`
   * field naming the one that failed. Resolves with `{ name: BackendInfo }`.
   */
  async startAll(projectRoot = process.cwd(), isPackaged = false) {
    // A call that joins a start under way keeps that start's arguments (they are the ones in use).
    if (this.#starting === null) this.#lastStart = [projectRoot, isPackaged]
    this.#starting ??= this.#startAll(projectRoot, isPackaged).finally(() => (this.#starting = null))
    return this.#starting
  }

  async #startAll(projectRoot, isPackaged) {
    const started = new Map()
    const failure = { error: null }
    let stopping = null
    // The first failure stops the rest at once: starts in progress are cancelled, later ones never begin.
    const fail = (error, name) => {
      failure.error ??= Object.assign(error, { backend: error.backend ?? name })
      stopping ??= this.stopAll()
    }
    const starts = new Map()
    for (const name of this.#order) {
      const member = this.#members.get(name)
      const deps = member.dependsOn.map((d) => starts.get(d))
      starts.set(
        name,
        Promise.all(deps).then(async (ok) => {
          if (failure.error || ok.includes(false)) return false
          if (member.envFn && !member.pm.backend) {
            member.pm = this.#manager(member, envOf(member, (d) => started.get(d)))
          }
          try {
            started.set(name, await member.pm.startBackend(projectRoot, isPackaged))
            return true
          } catch (e) {
            fail(e, name)
            return false
          }
        }).catch((e) => {
          fail(e, name)
          return false
        }),
      )
    }
    await Promise.all(starts.values())
    if (failure.error) {
      await stopping
      // A start that finished as the stop began may have come up after it: stop again, now that all settled.
      await this.stopAll()
      throw failure.error
    }
    return Object.fromEntries(this.#order.map((n) => [n, started.get(n)]))
  }

  /**
   * Stops every backend, each after the ones that depend on it, independent ones in parallel. Resolves with
   * `{ name: StopResult | null }`.
   */
  async stopAll() {
    const stops = new Map()
    const dependents = (name) => this.#order.filter((n) => this.#members.get(n).dependsOn.includes(name))
    const stopOf = (name) => {
      if (!stops.has(name)) {
        const after = dependents(name).map(stopOf)
        stops.set(
          name,
          Promise.all(after).then(() => this.#members.get(name).pm.stopBackend()),
        )
      }
      return stops.get(name)
    }
    const results = await Promise.allSettled(this.#order.map(stopOf))
    return Object.fromEntries(this.#order.map((n, i) => [n, results[i].status === 'fulfilled' ? results[i].value : null]))
  }

  /**
   * Starts one member again on its own (the dashboard's Start and Restart): its dependencies must be running,
   * and a member whose `env` is a function gets it from them as they are now, as `startAll()` gives it.
   */
  async #restartMember(name, projectRoot, isPackaged) {
    const member = this.#members.get(name)
    const down = member.dependsOn.filter((d) => !this.#members.get(d).pm.backend)
    if (down.length > 0) {
      throw new Error(`${name} depends on ${down.join(', ')}, which ${down.length === 1 ? 'is' : 'are'} not running: start ${down.length === 1 ? 'it' : 'them'} first`)
    }
    await member.pm.stopBackend()
    if (member.envFn) {
      member.pm = this.#manager(member, envOf(member, (d) => this.#members.get(d).pm.backend))
    }
    return member.pm.startBackend(projectRoot, isPackaged)
  }

  /**
   * A live page of every backend of the group (charts of CPU, memory, health latency and restarts; Stop and
   * Restart of each) on 127.0.0.1, behind a random token carried by `url`, as `pm.dashboard()`. Start and
   * Restart start one member with the arguments of the last `startAll()`, once its dependencies run (an
   * `env` function is called again with them). Resolves to `{ url, close() }`.
   */
  async dashboard(options) {
    const { managerDashboard } = require('./dashboard.js')
    const members = this.#order.map((name) => ({
      // Whichever manager the member has now, its events through the group (which names it in each).
      manager: () => this.#members.get(name).pm,
      events: this,
      restart: () => this.#restartMember(name, ...this.#lastStart),
      canRestart: () => this.#lastStart !== null,
    }))
    return managerDashboard(members, this.#order.join(', '), options)
  }

  /** Every backend in start order: its name, what it depends on, the running backend (or null), and its stats. */
  async status() {
    return Promise.all(
      this.#order.map(async (name) => {
        const { dependsOn, pm } = this.#members.get(name)
        return { name, dependsOn, backend: pm.backend, stats: await pm.stats() }
      }),
    )
  }
}

module.exports = { BackendGroup }
