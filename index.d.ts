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

/**
 * The options of `new ProcessManager(options)` (docs/api.md): the binding's generated type, which the native
 * side reads and checks, plus what only the JS layer keeps.
 */
export interface ProcessManagerOptions extends Omit<native.ProcessManagerOptions, 'ready'> {
  /** Where the manager logs; `false` silences it. Default `console`. */
  logger?: Logger | false
  /**
   * What tells that the backend is ready. Default `'http'`. `{ stdout }`: the first stdout or stderr line that
   * matches, a string in JavaScript's regex syntax or a RegExp (its `i` and `s` flags apply); look-around and
   * back-references are refused.
   */
  ready?: ReadyCheck | { stdout: string | RegExp }
}

export type BalancerLimits = native.BalancerLimits

export type LogOptions = native.LogOptions

export type LogsOptions = native.LogsOptions

export type RestartPolicy = native.RestartPolicy

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
  /** `ERR_STATE_DIR`, `ERR_FILE_WRITE`: the folder or file; `ERR_SPAWN_FAILED`: the program or entry tried (for a bare command name not found, the name as given; see `searched`). */
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

export type SyncStopOptions = native.SyncStopOptions

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

export type FindPortOptions = native.FindPortOptions

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
export declare function cleanupRecords(stateDir?: string, options?: native.CleanupOptions): Promise<CleanupItem[]>
/** Stops the backend of one record file (its live process must match the record), whatever its app's state. */
export declare function stopRecord(file: string, options?: native.StopRecordOptions): Promise<CleanupItem>
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
  /** A live page of every backend of the group on 127.0.0.1, as `ProcessManager.dashboard()`; Start and Restart use the last `startAll()`'s arguments, once the member's dependencies run. */
  dashboard(options?: DashboardOptions): Promise<Dashboard>
}
