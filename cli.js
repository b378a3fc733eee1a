#!/usr/bin/env node
'use strict'
// backend-pm: troubleshooting commands for backends run by backend-process-manager.
const fs = require('node:fs')
const path = require('node:path')
const { parseArgs } = require('node:util')
const { ProcessManager, isPortAvailable, findPortHolders, listRecords, cleanupRecords, defaultStateDir, defaultLogDir, readLogs, logNames, exportDiagnostics } = require('./index.js')
const { recordsTable, table, messageForPeople } = require('./lib/format.js')

const USAGE = `Usage: backend-pm <command> [options]

Commands:
  status [--json]                         list PID records: pid, port, running/orphaned/stale, uptime,
                                          CPU, memory, and who listens on their ports
  cleanup [--json]                        terminate orphaned backends, delete stale records
  test-ports [port] [--count N] [--json]  availability of port … port+N-1 (default 8000, 10 ports) and
                                          the process holding each busy one
  monitor [--once] [--json] [--log-dir DIR]
                                          live view of every backend: state, CPU, memory, restarts,
                                          health latency, sparklines, log file, a failed one's last
                                          stderr lines; q quits. --once: one frame
  dashboard [--port N] [--open] [--log-dir DIR]
                                          serve a live page with charts and stop buttons on
                                          127.0.0.1 (the URL carries a secret token)
  logs [NAME] [--lines N] [--follow] [--json] [--log-dir DIR]
                                          the last lines of a backend's log file (stdout, stderr
                                          and the manager's own lines); --follow: then new ones
  diagnostics OUT.zip [--log-dir DIR]     a zip for a support ticket: status, PID records, the last
                                          lines of every log, versions (secrets are redacted)
  start [--entry FILE] [--command CMD] [supervision] [-- args…]
                                          run a backend in the foreground; Ctrl-C stops it gracefully
                                          supervision: --restart, --health-interval MS,
                                          --max-memory BYTES, --priority low|below-normal|normal|
                                          above-normal|high, --token, --no-inherit-env

Options for every command:
  --name NAME        backend name (records <name>-<pid>.json); status, cleanup, monitor,
                     dashboard: only this name
  --state-dir DIR    folder of the PID records (default: ${defaultStateDir()})
  --host HOST        address the backend listens on (default 127.0.0.1)
  --port PORT        preferred port (default 8000); dashboard: the page's port (default: any free)
  -h, --help         show this help

Defaults can come from a "backendProcessManager" object in ./package.json (same keys as the
ProcessManager options). Exit codes: 0 success, 1 failure, 2 bad usage.`

class UsageError extends Error {}

const COMMON = {
  name: { type: 'string' },
  'state-dir': { type: 'string' },
  host: { type: 'string' },
  port: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
}
const COMMANDS = {
  status: { json: { type: 'boolean' } },
  cleanup: { json: { type: 'boolean' } },
  'test-ports': { json: { type: 'boolean' }, count: { type: 'string' } },
  monitor: { once: { type: 'boolean' }, json: { type: 'boolean' }, 'log-dir': { type: 'string' } },
  dashboard: { open: { type: 'boolean' }, 'log-dir': { type: 'string' } },
  diagnostics: { 'log-dir': { type: 'string' } },
  logs: { lines: { type: 'string' }, follow: { type: 'boolean' }, json: { type: 'boolean' }, 'log-dir': { type: 'string' } },
  start: {
    entry: { type: 'string' },
    command: { type: 'string' },
    restart: { type: 'boolean' },
    'health-interval': { type: 'string' },
    'max-memory': { type: 'string' },
    priority: { type: 'string' },
    token: { type: 'boolean' },
    'no-inherit-env': { type: 'boolean' },
  },
}

function parse(argv) {
  const [command, ...rest] = argv
  if (command === undefined || command === '-h' || command === '--help' || command === 'help') return { command: 'help' }
  if (!(command in COMMANDS)) throw new UsageError(`unknown command ${JSON.stringify(command)}`)
  let parsed
  try {
    parsed = parseArgs({ args: rest, options: { ...COMMON, ...COMMANDS[command] }, allowPositionals: true, strict: true })
  } catch (err) {
    throw new UsageError(err.message)
  }
  const { values, positionals } = parsed
  const dashDash = rest.indexOf('--')
  const extraArgs = dashDash >= 0 ? rest.slice(dashDash + 1) : []
  const beforeDashDash = dashDash >= 0 ? positionals.slice(0, positionals.length - extraArgs.length) : positionals
  if (['test-ports', 'logs', 'diagnostics'].includes(command) ? beforeDashDash.length > 1 : beforeDashDash.length > 0) {
    throw new UsageError(`unexpected argument ${JSON.stringify(beforeDashDash.at(-1))}`)
  }
  if (command !== 'start' && extraArgs.length > 0) throw new UsageError(`"--" arguments only go with start`)
  return { command, values, positionals: beforeDashDash, extraArgs }
}

/**
 * Decimal digits only: `0x1F40` or `8e3` are not a number someone meant to type. Any count of them: the range
 * is checked where the API checks it, with its words (`--max-memory 2000000000` is a fine limit).
 */
function integer(text, what) {
  if (!/^[0-9]+$/.test(text)) throw new UsageError(`${what} must be a decimal integer, got ${JSON.stringify(text)}`)
  return Number(text)
}

/** The "backendProcessManager" object of ./package.json, if any. */
function projectConfig() {
  const file = path.join(process.cwd(), 'package.json')
  let pkg
  try {
    pkg = JSON.parse(fs.readFileSync(file, 'utf8'))
  } catch (err) {
    if (err.code === 'ENOENT') return {}
    throw new Error(`cannot read ${file}: ${err.message}`)
  }
  const config = pkg.backendProcessManager ?? {}
  if (typeof config !== 'object' || Array.isArray(config)) throw new Error(`"backendProcessManager" in ${file} must be an object`)
  return config
}

function managerOptions(values) {
  const options = { ...projectConfig() }
  if (values.name !== undefined) options.name = values.name
  if (values['state-dir'] !== undefined) options.stateDir = path.resolve(values['state-dir'])
  else if (options.stateDir !== undefined) options.stateDir = path.resolve(options.stateDir)
  if (values.host !== undefined) options.host = values.host
  if (values.port !== undefined) options.port = integer(values.port, '--port')
  if (values.entry !== undefined) options.entry = values.entry
  if (values.command !== undefined) options.command = values.command
  if (values.restart) options.restart = true
  if (values['health-interval'] !== undefined) options.healthIntervalMs = integer(values['health-interval'], '--health-interval')
  if (values['max-memory'] !== undefined) options.maxMemoryBytes = integer(values['max-memory'], '--max-memory')
  if (values.priority !== undefined) options.priority = values.priority
  if (values.token) options.token = true
  if (values['no-inherit-env']) options.inheritEnv = false
  return options
}

const print = (text) => {
  process.stdout.write(`${text}\n`)
}
const printJson = (value) => print(JSON.stringify(value, null, 2))

async function status(values, options) {
  const pm = new ProcessManager({ ...options, logger: false })
  const stateDir = pm.options.stateDir
  // `--name`, else the project's configured name, else every name.
  const name = options.name
  let records = await listRecords(stateDir)
  if (name !== undefined) records = records.filter((r) => r.name === name)
  if (values.json) return printJson({ stateDir, records })
  print(`State folder: ${stateDir}${name !== undefined ? ` (backends named ${JSON.stringify(name)})` : ''}`)
  print(records.length === 0 ? 'No backend records.' : recordsTable(records))
  const count = (state) => records.filter((r) => r.state === state).length
  const [orphans, stale, invalid] = [count('orphaned'), count('stale'), count('invalid')]
  if (orphans + stale + invalid > 0) print(`\n${orphans} orphaned, ${stale} stale, ${invalid} unreadable: run "backend-pm cleanup" to clean up.`)
  const foreign = count('foreign')
  if (foreign > 0) print(`${foreign} file(s) in the state folder are not records of this library; they are left alone.`)
}

async function cleanup(values, options) {
  const pm = new ProcessManager({ ...options, logger: false })
  const { stateDir, stopTimeoutMs } = pm.options
  const items = await cleanupRecords(stateDir, { name: options.name, stopTimeoutMs })
  const count = (...actions) => items.filter((i) => actions.includes(i.action)).length
  const summary = {
    terminated: count('terminated'),
    removed: count('stale-removed', 'invalid-removed'),
    failed: count('failed', 'not-deleted'),
    left: count('foreign', 'untrusted', 'protected', 'busy'),
  }
  if (values.json) printJson({ stateDir, items, ...summary })
  else {
    print(`State folder: ${stateDir}`)
    for (const item of items) print(`${item.action.padEnd(15)} ${item.detail}`)
    print(`${summary.terminated} orphan(s) terminated, ${summary.removed} stale record(s) deleted, ${summary.failed} failure(s), ${summary.left} file(s) left alone.`)
  }
  return summary.failed > 0 ? 1 : 0
}

async function testPorts(values, positionals, options) {
  const first = positionals.length > 0 ? integer(positionals[0], 'port') : (options.port ?? 8000)
  const count = values.count === undefined ? 10 : integer(values.count, '--count')
  if (count < 1 || count > 10000) throw new UsageError(`--count must be from 1 to 10000, got ${count}`)
  // The first port is always checked, so one out of range gets the API's error instead of an empty table.
  const last = Math.max(first, Math.min(first + count - 1, 65535))
  const ports = []
  for (let p = first; p <= last; p++) ports.push(p)
  // With --host, that address alone is checked; without it, every loopback and wildcard address.
  const host = values.host ?? null
  const available = await Promise.all(ports.map((p) => isPortAvailable(p, { host })))
  const holders = new Map((await findPortHolders(ports.filter((_, i) => !available[i]))).map((h) => [h.port, h]))
  const rows = ports.map((port, i) => ({
    port,
    available: available[i],
    pid: holders.get(port)?.pid ?? null,
    name: holders.get(port)?.name ?? null,
  }))
  if (values.json) return printJson({ ports: rows })
  print(table(['PORT', 'STATUS', 'HELD BY'], rows.map((r) => [
    r.port,
    r.available ? 'free' : 'busy',
    r.available ? '' : r.pid != null ? `pid ${r.pid} (${r.name ?? '?'})` : 'unknown process',
  ])))
  print(`${rows.filter((r) => r.available).length} of ${rows.length} ports free.`)
}

/** The log folder: --log-dir, else `logs.dir` of the project's config, else `<stateDir>/logs` with --state-dir, else the per-user one. */
function logDir(values, options) {
  if (values['log-dir'] !== undefined) return path.resolve(values['log-dir'])
  if (options.logs?.dir !== undefined) return path.resolve(options.logs.dir)
  if (options.stateDir !== undefined) return path.join(options.stateDir, 'logs')
  return defaultLogDir()
}

/** A log line as written: `time stream replica text`. */
function parseLogLine(text) {
  const m = /^(\S+) (out|err|pm) (\d+) (.*)$/.exec(text)
  return m && { time: m[1], stream: m[2], replica: Number(m[3]), line: m[4] }
}

async function logs(values, positionals, options) {
  const dir = logDir(values, options)
  const name = positionals[0] ?? options.name
  const lines = values.lines === undefined ? 50 : integer(values.lines, '--lines')
  if (name === undefined) {
    const names = await logNames(dir)
    if (names.length !== 1) {
      if (values.json) printJson({ logDir: dir, names })
      else print(names.length === 0 ? `No logs in ${dir}.` : `Logs in ${dir}: ${names.join(', ')}\nName one: backend-pm logs NAME`)
      return 0
    }
    return logs(values, names, options)
  }
  // Ctrl-C and SIGTERM end a follower cleanly from the start: a stop sent as soon as the first lines show
  // would otherwise find no handler yet while the rest print, and end it by the signal's default action.
  const stopped = values.follow ? stopSignal() : null
  const show = (l) => print(values.json ? JSON.stringify(l) : `${l.time} ${l.stream} ${l.replica} ${l.line}`)
  const found = await readLogs(dir, name, { lines })
  for (const l of found) show(l)
  if (found.length === 0 && !fs.existsSync(require('./binding.js').logFilePath(dir, name))) {
    // A mistyped name reads as an empty log otherwise. Said on stderr: stdout (and --json) stay the log's.
    const names = await logNames(dir)
    console.error(`No log of ${JSON.stringify(name)} in ${dir}${names.length > 0 ? ` (logs there: ${names.join(', ')})` : ''}.${values.follow ? ' Waiting for it…' : ''}`)
  }
  if (!values.follow) return 0
  return follow(require('./binding.js').logFilePath(dir, name), show, stopped)
}

/** Resolves at the first SIGINT or SIGTERM, which no longer end the process by themselves. */
function stopSignal() {
  return new Promise((resolve) => {
    process.once('SIGINT', resolve)
    process.once('SIGTERM', resolve)
  })
}

/** The log file's status when it is a regular file (not a link, a FIFO or a folder), else null. */
function logFileStat(file) {
  try {
    const st = fs.lstatSync(file)
    return st.isFile() ? st : null
  } catch {
    return null // not there (yet), or between a rotation's renames
  }
}

/**
 * Prints what is appended to `file` until `stopped` (Ctrl-C), from its current end; a rotated file is
 * followed by its successor. As the other readings of a log, never through a link (where the OS can refuse
 * one) and never from anything but a regular file.
 */
function follow(file, show, stopped) {
  const first = logFileStat(file)
  let at = first ? first.size : 0
  let ino = first ? first.ino : null
  let rest = ''
  // Not through a link, and an open that cannot wait (on a FIFO swapped in after the look).
  const flags = fs.constants.O_RDONLY | (fs.constants.O_NOFOLLOW ?? 0) | (fs.constants.O_NONBLOCK ?? 0)
  return new Promise((resolve) => {
    const timer = setInterval(() => {
      const st = logFileStat(file)
      if (!st) {
        // Whatever regular file comes next is another one, even with the same inode number.
        ino = null
        return
      }
      if (st.ino !== ino || st.size < at) {
        ino = st.ino
        at = 0
        rest = ''
      }
      if (st.size <= at) return
      let fd
      let read
      const buffer = Buffer.alloc(st.size - at)
      try {
        fd = fs.openSync(file, flags)
        // Still the file looked at (not something swapped in since).
        if (fs.fstatSync(fd).ino !== st.ino) return
        read = fs.readSync(fd, buffer, 0, buffer.length, at)
      } catch {
        return
      } finally {
        if (fd !== undefined) fs.closeSync(fd)
      }
      at += read
      const text = rest + buffer.subarray(0, read).toString('utf8')
      const parts = text.split('\n')
      rest = parts.pop()
      for (const part of parts) {
        const l = parseLogLine(part)
        if (l) show(l)
      }
    }, 200)
    stopped.then(() => {
      clearInterval(timer)
      resolve(0)
    })
  })
}

/** The state folder (options and defaults applied, checked), the name to limit a view to, and the log folder. */
async function recordScope(values, options) {
  // `--port` is not the backend's here (the dashboard's own port, or nothing): it cannot make the options invalid.
  const { port, ...rest } = options
  const pm = new ProcessManager({ ...rest, logger: false })
  // A folder whose records cannot be trusted is refused here (ERR_STATE_DIR), before a live view or page opens.
  await listRecords(pm.options.stateDir)
  return { stateDir: pm.options.stateDir, name: options.name, stopTimeoutMs: pm.options.stopTimeoutMs, logDir: logDir(values, options) }
}

/**
 * `backend-pm start`: runs the backend in the foreground until it ends. Three promises say what can happen:
 * `started` (the start resolves or rejects), `signal` (the first SIGINT or SIGTERM, which begins the stop:
 * `stopped`) and `ended` (the backend exited on its own without a restart policy, or the policy gave up).
 */
async function start(options, extraArgs) {
  if (extraArgs.length > 0) options.args = extraArgs
  const pm = new ProcessManager({
    ...options,
    logger: { info: (m) => console.error(m), warn: (m) => console.error(m), error: (m) => console.error(m) },
  })
  pm.on('stdout', (line) => process.stdout.write(`${line}\n`))
  pm.on('stderr', (line) => process.stderr.write(`${line}\n`))
  pm.on('unhealthy', (e) => console.error(`backend unhealthy (${e.reason}): ${e.error ?? ''}`))
  pm.on('healthy', () => console.error('backend healthy again'))
  pm.on('port-changed', (e) => print(`backend moved from port ${e.previous} to port ${e.port}`))
  pm.on('restart', (e) => console.error(`backend pid ${e.pid} ended (${e.exitCode !== null ? `exit code ${e.exitCode}` : e.signal ?? e.reason}); restart ${e.attempt} in ${e.delayMs} ms`))

  // The handlers stay for the whole run: a second Ctrl-C while stopping must not kill the CLI mid-stop.
  let received = null
  const signal = new Promise((resolve) => {
    for (const name of ['SIGINT', 'SIGTERM']) {
      process.on(name, () => {
        received ??= name
        resolve(name)
      })
    }
  })
  const stopped = signal.then((name) => {
    console.error(`received ${name}, stopping the backend…`)
    return pm.stopBackend()
  })

  // Every exit is kept: a failed attempt on a taken port ends too, before the backend that is started.
  const restarting = pm.options.restart !== false
  const exits = []
  let current = null
  let announced = false
  let end
  const ended = new Promise((resolve) => (end = resolve))
  const crashed = () => (restarting ? null : exits.find((e) => e.pid === current && !e.expected))
  pm.on('exit', (e) => {
    exits.push(e)
    const crash = crashed()
    if (crash) end({ crash })
  })
  pm.on('failed', (e) => end({ failed: e }))
  pm.on('ready', (b) => {
    if (announced) print(`backend running again: pid ${b.pid}, port ${b.port}`)
    current = b.pid
  })

  const started = pm.startBackend(process.cwd())
  let backend
  try {
    backend = await started
  } catch (err) {
    // Ctrl-C during the start: the stop cancelled it, which is a clean end.
    if (received === null) throw err
    await stopped
    print('backend stopped before it became ready')
    return 0
  }
  current = backend.pid
  print(`backend "${pm.options.name}" running: pid ${backend.pid}, port ${backend.port}, ${backend.url}`)
  print('press Ctrl-C to stop it')
  announced = true
  // It may have ended already, between its start and now.
  const crash = crashed()
  if (crash) end({ crash })

  // It runs until Ctrl-C; or until it ends by itself (without --restart), or the restart policy gives up.
  const outcome = await Promise.race([ended, stopped.then((result) => ({ result }))])
  if (outcome.crash) {
    const e = outcome.crash
    console.error(`the backend exited on its own (${e.exitCode !== null ? `exit code ${e.exitCode}` : e.signal})`)
    return 1
  }
  if (outcome.failed) {
    console.error(`the backend failed and is not restarted again: ${outcome.failed.error}`)
    return 1
  }
  const { result } = outcome
  print(`backend stopped${result?.forced ? ' (force-killed after the grace period)' : ''}${result ? ` in ${Math.round(result.durationMs)} ms` : ''}`)
  return 0
}

async function main(argv) {
  let parsed
  try {
    parsed = parse(argv)
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    process.stderr.write(`backend-pm: ${err.message}\n\n${USAGE}\n`)
    return 2
  }
  const { command, values, positionals, extraArgs } = parsed
  if (command === 'help' || values.help) {
    print(USAGE)
    return 0
  }
  try {
    const options = managerOptions(values)
    switch (command) {
      case 'status':
        return (await status(values, options)) ?? 0
      case 'cleanup':
        return await cleanup(values, options)
      case 'test-ports':
        return (await testPorts(values, positionals, options)) ?? 0
      case 'monitor':
        return await require('./lib/monitor.js').command(values, await recordScope(values, options))
      case 'dashboard': {
        // --port is the page's own port here, never the backend's port from package.json.
        const port = values.port === undefined ? 0 : integer(values.port, '--port')
        return await require('./lib/dashboard.js').command({ port, open: Boolean(values.open) }, await recordScope(values, options))
      }
      case 'logs':
        return await logs(values, positionals, options)
      case 'diagnostics': {
        if (positionals.length !== 1) throw new UsageError('diagnostics needs the archive to write: backend-pm diagnostics OUT.zip')
        const written = await exportDiagnostics(path.resolve(positionals[0]), { stateDir: (await recordScope(values, options)).stateDir, logDir: logDir(values, options) })
        print(`wrote ${written.path} (${written.bytes} bytes)`)
        return 0
      }
      case 'start':
        return await start(options, extraArgs)
    }
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`backend-pm: ${err.message}\n\n${USAGE}\n`)
      return 2
    }
    // An option the API refuses is bad usage, like a malformed value: the usage follows the message.
    const usage = err.code === 'ERR_INVALID_ARG'
    process.stderr.write(`backend-pm: ${messageForPeople(err.message)}${err.code ? ` (${err.code})` : ''}\n${usage ? `\n${USAGE}\n` : ''}`)
    if (err.stderrTail?.length) process.stderr.write(`last output of the backend:\n  ${err.stderrTail.join('\n  ')}\n`)
    return usage ? 2 : 1
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code
  })
}

module.exports = { main }
