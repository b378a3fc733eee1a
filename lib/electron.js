'use strict'
// `require('backend-process-manager/electron').manage(app, managerOrGroup, { splash, dialog, autoUpdater,
// powerMonitor })` (docs/api.md, "Quitting and updating"): Electron's quit, update and error conventions wired
// for one manager or group. It uses only the objects passed in — no require('electron') — so it runs (and is
// tested) under plain Node with stand-ins that follow Electron's documented event semantics.

const { invalidArg, messageForPeople } = require('./format.js')
const { logFilePath } = require('../binding.js')

const ACTIVE = Symbol.for('backend-process-manager.active')

const isGroup = (target) => typeof target?.startAll === 'function' && typeof target?.stopAll === 'function'

/** The managers behind `target`, looked up when needed: a group may replace a member's manager when it starts. */
function managersOf(target) {
  return isGroup(target) ? target.names.map((name) => target.get(name)) : [target]
}

function needsEvents(what, value, events = ['on', 'removeListener']) {
  if (value === null || typeof value !== 'object' || events.some((m) => typeof value[m] !== 'function')) {
    throw invalidArg(`${what} must be an object with ${events.join(', ')} methods (Electron's ${what})`)
  }
}

/** The text of an error dialog: what happened, the backend's last output, its log file (a group's member: `name`). */
function describe(error, target, name) {
  // The box lists the last output itself: the message's pointer to the error's `stderrTail` field means nothing to a user.
  const lines = [messageForPeople(typeof error === 'string' ? error : error?.message ?? String(error))]
  if (error?.code) lines.push(`(${error.code})`)
  if (error?.stderrTail?.length) lines.push('', 'Last output of the backend:', ...error.stderrTail)
  const managers = managersOf(target).filter((pm) => name === undefined || pm.options.name === name)
  const logFiles = managers.filter((pm) => pm.options.logs).map((pm) => logFilePath(pm.options.logs.dir, pm.options.name))
  if (logFiles.length > 0) lines.push('', `Log: ${logFiles.join(', ')}`)
  return lines.join('\n')
}

/** Lines of stderr kept for an error dialog, as many as an `ERR_BACKEND_EXITED` error's `stderrTail`. */
const STDERR_TAIL_LINES = 20

/** The last stderr lines of the backend (or replica) a `failed` event is about, from its log file; none with `logs: false`. */
async function lastStderr(target, event) {
  const pm = isGroup(target) ? target.get(event.name) : target
  if (!pm?.options.logs) return []
  const lines = await pm.logs({ stream: 'err', lines: event.replica === undefined ? STDERR_TAIL_LINES : 1000 })
  return lines.filter((l) => event.replica === undefined || l.replica === event.replica).slice(-STDERR_TAIL_LINES).map((l) => l.line)
}

/**
 * Wires Electron's conventions for `target` (a `ProcessManager` or a `BackendGroup`): the first `before-quit`
 * is held until its backends have stopped (bounded by the largest `stopTimeoutMs` plus 1 s), then the app
 * quits; `will-quit`, `powerMonitor`'s `shutdown` and `autoUpdater`'s `before-quit-for-update` stop them
 * synchronously; `splash` closes on the first `ready`; `dialog` shows `failed` and `start-failed`. Returns
 * `{ dispose() }`, which removes every listener it added.
 */
function manage(app, target, options = {}) {
  needsEvents('app', app, ['on', 'removeListener', 'quit'])
  if (!(target instanceof Object) || (!isGroup(target) && typeof target.stopBackend !== 'function')) {
    throw invalidArg('manage() takes a ProcessManager or a BackendGroup')
  }
  if (options === null || typeof options !== 'object' || Array.isArray(options)) throw invalidArg('manage() options must be an object')
  const known = ['splash', 'dialog', 'autoUpdater', 'powerMonitor']
  for (const key of Object.keys(options)) if (!known.includes(key)) throw invalidArg(`unknown manage() option ${JSON.stringify(key)} (known: ${known.join(', ')})`)
  const { splash, dialog, autoUpdater, powerMonitor } = options
  if (autoUpdater !== undefined) needsEvents('autoUpdater', autoUpdater)
  if (powerMonitor !== undefined) needsEvents('powerMonitor', powerMonitor)
  if (dialog !== undefined && typeof dialog?.showErrorBox !== 'function') throw invalidArg('dialog must be Electron\'s dialog (with showErrorBox)')
  if (splash !== undefined && typeof splash?.close !== 'function') throw invalidArg('splash must be a BrowserWindow (with close)')

  const added = []
  const on = (emitter, event, listener) => {
    emitter.on(event, listener)
    added.push([emitter, event, listener])
  }
  // A backend still starting (or waiting to restart) has no `pm.backend` yet, but its process must not outlive the app.
  const running = () => managersOf(target).some((pm) => pm.backend !== null || pm[ACTIVE]?.() === true)
  const stopSync = () => (isGroup(target) ? target.stopAllSync() : target.stopSync())
  const stopLimitMs = () => Math.max(...managersOf(target).map((pm) => pm.options.stopTimeoutMs)) + 1000
  /** Set once the stop is done (or the update took over): later quits go through untouched. */
  let stopped = false
  let stopping = null
  /** Set once the app quits (or updates, or the system shuts down): a start that the quit cancels is no error to show. */
  let quitting = false

  on(app, 'before-quit', (event) => {
    if (stopped || !running()) return
    event.preventDefault()
    if (stopping) return
    quitting = true
    let timer
    const bound = new Promise((resolve) => (timer = setTimeout(resolve, stopLimitMs())))
    const stop = isGroup(target) ? target.stopAll() : target.stopBackend()
    stopping = Promise.race([stop.catch(() => {}), bound]).finally(() => {
      clearTimeout(timer)
      stopped = true
      app.quit()
    })
  })
  // No promise is awaited past this point: what still runs is stopped here, blocking.
  on(app, 'will-quit', () => {
    quitting = true
    if (running()) stopSync()
  })
  if (powerMonitor) {
    on(powerMonitor, 'shutdown', () => {
      quitting = true
      stopSync()
    })
  }
  if (autoUpdater) {
    // The updater quits the app itself and replaces its files: nothing may hold them, and the quit must not be held.
    on(autoUpdater, 'before-quit-for-update', () => {
      stopped = true
      quitting = true
      stopSync()
    })
  }
  if (splash) {
    const close = () => {
      target.removeListener('ready', close)
      if (!splash.isDestroyed?.()) splash.close()
    }
    on(target, 'ready', close)
  }
  if (dialog) {
    const showErrorBox = (title, content) => {
      if (!quitting) dialog.showErrorBox(title, content)
    }
    on(target, 'failed', (event) => {
      // The event carries the error's message only: its stderr tail is read back from the backend's log.
      const show = (stderrTail) => showErrorBox(`The backend${event.name ? ` ${event.name}` : ''} stopped and is not restarted`, describe({ message: event.error, stderrTail }, target, event.name))
      lastStderr(target, event).then(show, () => show([]))
    })
    on(target, 'start-failed', (event) => showErrorBox(`The backend${event.name ? ` ${event.name}` : ''} could not start`, describe(event.error, target, event.name)))
  }
  return {
    dispose() {
      for (const [emitter, event, listener] of added.splice(0)) emitter.removeListener(event, listener)
    },
  }
}

module.exports = { manage }
