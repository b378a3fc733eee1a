// Public types of backend-process-manager. What the native binding returns or emits as it is — results,
// events, reasons, stats, the options in force — comes from its generated types (binding.d.ts), so the two
// cannot drift apart; this file adds what only the JS layer has.
import { EventEmitter } from 'node:events'
import type * as native from './binding'

export type BackendInfo = native.BackendInfo
export type StopResult = native.StopResult
export type RecordStatus = native.RecordStatus
export type CleanupItem = native.CleanupItem
export type PortHolder = native.PortHolder
export type ProcessUsage = native.ProcessUsage
export type ReplicaInfo = native.ReplicaInfo
export type Stats = native.Stats
export type ExitEvent = native.ExitEvent
export type RestartEvent = native.RestartEvent
export type FailedEvent = native.FailedEvent
export type UnhealthyEvent = native.UnhealthyEvent
export type HealthyEvent = native.HealthyEvent
export type PortChangedEvent = native.PortChangedEvent
export type StatusEvent = native.StatusEvent
export type WarningEvent = native.WarningEvent
export type OptionsInForce = native.OptionsInForce
export type Reason = native.Reason
export type Verdict = native.Verdict
export type Priority = native.Priority
export type Balance = native.Balance
export type Listen = native.Listen
export type DeathGuard = native.DeathGuard
export type ReadyCheck = native.ReadyCheck
export type ReadyStdout = native.ReadyStdout
export type LogLine = native.LogLine
export type DiagnosticsFile = native.DiagnosticsFile
export type RecordState = RecordStatus['state']
export type CleanupAction = CleanupItem['action']
/** Why a backend was restarted, or stays down (`restart`, `failed`; `exit` has the last two). */
export type RestartReason = Reason
export type LogStream = LogLine['stream']

/** The methods the manager logs through; `console` by default. */
export interface Logger {
  info(message: string): void
  warn(message: string): void
  error(message: string): void
}

export interface ProcessManagerOptions {
  /** Names the PID records, the log prefix and the state folder entry. Default `'backend'`. */
  name?: string
  /** Script run by the Node runtime, relative to `projectRoot`. Default `'backend-nodejs/server.js'`. */
  entry?: string
  /** Executable to run instead of the Node runtime (Python, a Go binary, …); then `entry` is not used. */
  command?: string
  /** Arguments; every `{port}` and `{host}` is replaced by the chosen values. Default `[]`. */
  args?: string[]
  /** Working directory of the backend. Default: `projectRoot`. */
  cwd?: string
  /** Extra environment, merged over `process.env`. Default `{}`. */
  env?: Record<string, string | number | boolean | null | undefined>
  /** Address the backend listens on and is probed at: an IP address, or `'localhost'` for 127.0.0.1. Default `'127.0.0.1'`. */
  host?: string
  /** Preferred port. Default `8000`. */
  port?: number
  /** How many ports after `port` may be tried. Default `100`. */
  portRange?: number
  /** Environment variable that carries the port (`HOST` carries the host). Default `'PORT'`. */
  portEnv?: string
  /** HTTP path probed for readiness; any 2xx answer is healthy. Default `'/health'`. */
  healthPath?: string
  /** Timeout of one health probe. Default `1000`. */
  healthTimeoutMs?: number
  /** Deadline for the backend to become healthy. Default `10000`. */
  startTimeoutMs?: number
  /** Grace period after the polite stop request before the force kill. Default `5000`. */
  stopTimeoutMs?: number
  /** Folder holding the PID records. Default: a per-user state folder (see `defaultStateDir()`). */
  stateDir?: string
  /**
   * The backend's stdout and stderr and the manager's own lines in `<dir>/<name>.log`, rotated by size, secrets
   * redacted. `false`: no files. Default on: `{ dir: <stateDir>/logs with a stateDir, else defaultLogDir(),
   * maxBytes: 10485760, keep: 5 }`. In Electron pass `app.getPath('logs')` as `dir`.
   */
  logs?: false | true | LogOptions
  /** What tells that the backend is ready. Default `'http'`. */
  ready?: ReadyCheck | ReadyStdout
  /** What ends the backends when the app dies without stopping them. Default `'auto'`. */
  deathGuard?: DeathGuard
  /** Where the manager logs; `false` silences it. Default `console`. */
  logger?: Logger | false

  // Supervision (all off by default)
  /** Start the backend again after an unexpected exit (or a watchdog/memory verdict), with a backoff. Default `false`. */
  restart?: boolean | RestartPolicy
  /** While running, probe health this often (the watchdog). `0`: off (default). */
  healthIntervalMs?: number
  /** Consecutive failed watchdog probes that make the backend unhealthy. Default `3`. */
  unhealthyThreshold?: number
  /** Resident memory of the whole tree above which it counts as failed (reason `memory`). `0`: off (default). */
  maxMemoryBytes?: number
  /** Emit `stats` this often. `0`: off (default). */
  statsIntervalMs?: number
  /** Scheduling priority of the backend tree (nice 10/5/0/−5/−10; Windows priority classes). Default `'normal'`. */
  priority?: Priority
  /** Hard OS limits applied at spawn (Unix). */
  limits?: { openFiles?: number; coreDumps?: boolean }

  // Isolation and access
  /** `false`: only `env` plus PATH, HOME/USERPROFILE, TMPDIR/TEMP/TMP, LANG, SystemRoot; an array: those names too. Default `true`. */
  inheritEnv?: boolean | string[]
  /** A fresh 32-byte secret per start in `BACKEND_TOKEN`, sent by every probe as a bearer token, returned as `BackendInfo.token`. Default `false`. */
  token?: boolean
  /** Polite stop requests tried before the signal: an HTTP request (`'POST /shutdown'`), closing stdin. */
  shutdown?: { http?: string; stdin?: boolean }

  // Replicas
  /** Processes of the backend behind the public port (1–64). Default 1. With more, `restart` defaults to on. */
  replicas?: number
  /** How the load balancer picks a replica for a new connection. Default `'least-connections'`. */
  balance?: Balance
  /** `'fd'`: the manager binds the public port and hands the socket over as descriptor 3 (`LISTEN_FDS=1`; Unix). Default `'port'`. */
  listen?: Listen
  /** What clients can make the load balancer hold; missing keys take their defaults. */
  balancer?: BalancerLimits
}

export interface BalancerLimits {
  /** Client connections at once (each costs the app two descriptors); more wait in the kernel's queue. Default: a quarter of the app's open-file limit, at most 10000. */
  maxConnections?: number
  /** A connection with no byte either way this long is closed. `0`: never. Default 300000. */
  idleTimeoutMs?: number
  /** A replica that sends no byte of an answer this long after a request is taken out as frozen until a probe passes. `0`: off (default). */
  firstByteTimeoutMs?: number
}

export interface LogOptions {
  /** Folder of the log files (created 0700; must be this user's and not writable by others). */
  dir?: string
  /** `<name>.log` is rotated before it would pass this size (at least 4096). @default 10485760 */
  maxBytes?: number
  /** Rotated files kept besides `<name>.log` (0–100). @default 5 */
  keep?: number
}

export interface LogsOptions {
  /** @default 200 */
  lines?: number
  stream?: LogStream
}

export interface RestartPolicy {
  /** More restarts than this within `windowMs` and the backend stays down (`failed`). Default 5. */
  maxRestarts?: number
  /** Default 60000. */
  windowMs?: number
  /** The first delay; it doubles up to `maxDelayMs`. Default 100. */
  initialDelayMs?: number
  /** Default 10000. */
  maxDelayMs?: number
  /** Once healthy this long, the delay starts over. Default 30000. */
  resetAfterMs?: number
}

/** Present on events about one replica: its index. */
export interface ReplicaContext {
  replica?: number
}

export interface StatusReport {
  name: string
  stateDir: string
  backend: BackendInfo | null
  records: RecordStatus[]
}

export type ErrorCode =
  | 'ERR_INVALID_ARG'
  | 'ERR_NO_FREE_PORT'
  | 'ERR_SPAWN_FAILED'
  | 'ERR_BACKEND_EXITED'
  | 'ERR_START_TIMEOUT'
  | 'ERR_STATE_DIR'
  | 'ERR_FILE_WRITE'
  | 'ERR_INTERNAL'

/** Every rejection is an Error with a stable `code` and, where they apply, these fields. */
export interface ProcessManagerError extends Error {
  code: ErrorCode
  startPort?: number
  endPort?: number
  command?: string
  exitCode?: number | null
  signal?: string | null
  stderrTail?: string[]
  port?: number
  lastHealthError?: string
  /** `ERR_STATE_DIR`, `ERR_FILE_WRITE`: the folder or file; `ERR_SPAWN_FAILED`: the program or entry tried. */
  path?: string
  /** `ERR_SPAWN_FAILED`: why the program could not be started. */
  reason?: 'not-found' | 'not-executable' | 'permission' | 'blocked'
  /** `ERR_SPAWN_FAILED` with `reason: 'not-found'` for a bare command name: the PATH folders looked in. */
  searched?: string[]
  /** From `BackendGroup.startAll()`: the backend that failed. */
  backend?: string
  /** The OS error underneath, where there is one (`errno`, and `code` as the OS error kind). */
  cause?: Error & { code?: string; errno?: number }
}

/** The events the core emits (its `log` lines go to the logger, `idle` lets Node exit), as `event: [payload]`. */
type NativeEvents = {
  [E in Exclude<native.NativeEvent, { kind: 'log' | 'idle' }> as E['kind']]: E extends { data: infer D } ? [D] : never
}

/**
 * Every event and its payload (docs/api.md, "Events"): `ready` (the backend from `startBackend()` or a restart, or
 * one replica with `replica`), `exit`, `stdout`, `stderr`, `restart`, `failed`, `unhealthy`, `healthy`,
 * `port-changed`, `stats`, `warning`, `status` (`STATUS=text` on the notify socket), and `start-failed` (a
 * `startBackend()` call rejected, for code that did not make the call).
 */
export type ProcessManagerEvents = NativeEvents & { 'start-failed': [event: StartFailedEvent] }

export interface StartFailedEvent {
  error: ProcessManagerError
}

export interface SyncStopOptions {
  /** How long the polite stop may take before the force kill of the whole tree, 0–60000. @default 1000 */
  timeoutMs?: number
}

export interface DashboardOptions {
  /** Port on 127.0.0.1. Default: any free port. */
  port?: number
}

/** A running dashboard server. */
export interface Dashboard {
  /** `http://127.0.0.1:<port>/?token=<64 hex digits>`: every request needs the token. */
  url: string
  /** Stops the server and ends the open pages' event streams. */
  close(): Promise<void>
}

export declare class ProcessManager extends EventEmitter<ProcessManagerEvents> {
  constructor(options?: ProcessManagerOptions)
  /** The options in force, defaults applied (without the logger). */
  readonly options: OptionsInForce
  /** The running backend, or `null`. */
  readonly backend: BackendInfo | null

  /**
   * Cleans up orphans of this `name`, picks a port, spawns the backend, writes its PID record and waits until
   * it is healthy. Calls while starting or running resolve to the same backend.
   */
  startBackend(projectRoot?: string, isPackaged?: boolean): Promise<BackendInfo>
  /**
   * Polite stop of the process group, up to `stopTimeoutMs`, then force kill of the tree. `null` when nothing runs.
   * A stop during a start cancels the start. `survivors` lists processes still alive after the force kill.
   */
  stopBackend(): Promise<StopResult | null>
  /**
   * `stopBackend()` for `process.on('exit')`, Electron's `will-quit` or a session end, where a promise cannot be
   * awaited: blocks the thread at most `timeoutMs + 250` ms (polite stop, force kill at `timeoutMs`, then up to
   * 250 ms to see the processes gone); the record is deleted. `null` when nothing runs.
   */
  stopSync(options?: SyncStopOptions): StopResult | null
  /** `stopSync()` for every manager of this process at once (the thread is blocked `timeoutMs + 250` at most in all). */
  static stopAllSync(options?: SyncStopOptions): StopResult[]
  /** Stops every backend of every `ProcessManager` and `BackendGroup` of this process (groups in reverse dependency order); resolves once every process is gone. */
  static stopAll(): Promise<StopResult[]>
  /** First available port in `[startPort, startPort + portRange]`, reserved for 15 s (never against this manager's own start). */
  findAvailablePort(startPort?: number): Promise<number>
  /** True only when the port binds on 127.0.0.1, ::1, 0.0.0.0 and ::. */
  isPortAvailable(port: number): Promise<boolean>
  /** One GET of `http://{host}:{port}{healthPath}`, no proxy. */
  checkBackendHealth(port: number): Promise<boolean>
  /** Polls until healthy; false once `maxRetries × retryDelayMs` has passed. */
  waitForBackendReady(port: number, maxRetries?: number, retryDelayMs?: number): Promise<boolean>
  /** Terminates orphaned backends of this `name`; true when one was terminated. */
  killExistingBackend(): Promise<boolean>
  /** This manager's backend and every record of the state folder. */
  status(): Promise<StatusReport>
  /** CPU (since the previous sample), memory and process count of the running backend's tree, uptime, restarts, health; `null` when it is not running. */
  stats(): Promise<Stats | null>
  /** The last lines of this backend's log file across its rotated files, oldest first (empty with `logs: false`). */
  logs(options?: LogsOptions): Promise<LogLine[]>
  /** A `.zip` for a support ticket (status, records, logs, options, events, versions), secrets redacted in every file. */
  exportDiagnostics(file: string): Promise<DiagnosticsFile>
  /**
   * Replaces every process with a new one, one at a time. With replicas (or `listen: 'fd'`) the new one starts
   * beside the old, which is drained and stopped once the new one is healthy: no request fails. One process on
   * its own port is stopped, then started again. `null` when nothing runs.
   */
  reload(): Promise<BackendInfo | null>
  /**
   * A live page of this backend on 127.0.0.1 (charts of CPU, memory, health latency and restarts; Stop and
   * Restart behind a confirmation), for a developer window. The URL carries a random token.
   */
  dashboard(options?: DashboardOptions): Promise<Dashboard>
}

export interface FindPortOptions {
  /** Last port to try. Default `startPort + 100` (at most 65535). */
  endPort?: number
  /** Ports never to return. */
  exclude?: number[]
  /** Check only this address instead of all four (127.0.0.1, ::1, 0.0.0.0, ::). */
  host?: string
}

/** True when `port` binds on 127.0.0.1, ::1 (where IPv6 exists), 0.0.0.0 and :: — or only on `options.host`. */
export declare function isPortAvailable(port: number, options?: { host?: string }): Promise<boolean>
/** The first available port from `startPort`, reserved in this process for 15 s. */
export declare function findAvailablePort(startPort: number, options?: FindPortOptions): Promise<number>
/** The processes listening on `ports` (busy ports only), where the OS tells. */
export declare function findPortHolders(ports: number[]): Promise<PortHolder[]>
/** CPU time, CPU % (average since start), memory and age of each live process of `pids`. */
export declare function processUsage(pids: number[]): Promise<ProcessUsage[]>
/** Every PID record of `stateDir` with its state, CPU, memory and port listener. */
export declare function listRecords(stateDir?: string): Promise<RecordStatus[]>
/** Terminates orphans (of `name`, or all) that match their records; deletes stale and unreadable records. */
export declare function cleanupRecords(
  stateDir?: string,
  options?: { name?: string; stopTimeoutMs?: number },
): Promise<CleanupItem[]>
/** Stops the backend of one record file (its live process must match the record), whatever its app's state. */
export declare function stopRecord(file: string, options?: { stopTimeoutMs?: number }): Promise<CleanupItem>
/** The per-user folder where PID records are kept by default. */
export declare function defaultStateDir(): string
/** The per-user log folder (the default `logs.dir` without a `stateDir`). */
export declare function defaultLogDir(): string
/** The last lines of the log of `name` in `dir`, oldest first. */
export declare function readLogs(dir: string, name: string, options?: LogsOptions): Promise<LogLine[]>
/** The names of the logs in `dir`. */
export declare function logNames(dir: string): Promise<string[]>
/** `backend-pm diagnostics`: status and versions, the records of `stateDir`, the last lines of every log of `logDir`. */
export declare function exportDiagnostics(file: string, folders?: { stateDir?: string; logDir?: string }): Promise<DiagnosticsFile>

/** One backend of a group: `ProcessManager` options with a unique `name`. */
export interface BackendGroupMember extends Omit<ProcessManagerOptions, 'env'> {
  name: string
  /** Backends started (and healthy) before this one, and stopped after it. */
  dependsOn?: string[]
  /** Variables for the backend, or a function of its started dependencies: `({ api }) => ({ API_URL: api.url })`. */
  env?: Record<string, string | number | boolean | null | undefined> | ((started: Record<string, BackendInfo>) => Record<string, string | number | boolean | null | undefined>)
}

/** Every member event, with the member's `name`; output lines as `{ name, line }`. */
export type GroupEvents = {
  [K in keyof ProcessManagerEvents]: ProcessManagerEvents[K][0] extends string
    ? [event: { name: string; line: string }]
    : [event: ProcessManagerEvents[K][0] & { name: string }]
}

export interface GroupMemberStatus {
  name: string
  dependsOn: string[]
  backend: BackendInfo | null
  stats: Stats | null
}

/** Several named backends: started in dependency order (independent ones in parallel), stopped in reverse. */
export declare class BackendGroup extends EventEmitter<GroupEvents> {
  /** Throws `ERR_INVALID_ARG` for a dependency cycle, an unknown dependency, a duplicate or missing name, or a bad option. */
  constructor(entries: BackendGroupMember[])
  /** Member names in start order. */
  readonly names: string[]
  /** All or nothing: if one fails, the started ones are stopped and the promise rejects with that error (its `backend` names which). */
  startAll(projectRoot?: string, isPackaged?: boolean): Promise<Record<string, BackendInfo>>
  /** Stops each backend after the ones that depend on it. */
  stopAll(): Promise<Record<string, StopResult | null>>
  /** `stopAll()` blocking the thread, every member at once (see `ProcessManager.stopAllSync`). */
  stopAllSync(options?: SyncStopOptions): StopResult[]
  /** That backend's `ProcessManager` (a member with an `env` function gets a new one at each `startAll()`). */
  get(name: string): ProcessManager | undefined
  status(): Promise<GroupMemberStatus[]>
}
