// Public types of backend-process-manager. Shapes that the native binding returns as they are come from its
// generated types (binding.d.ts), so the two cannot drift apart.
import { EventEmitter } from 'node:events'
import type { BackendInfo, StopResult, RecordStatus, CleanupItem, PortHolder, ProcessUsage } from './binding'

export type { BackendInfo, StopResult, RecordStatus, CleanupItem, PortHolder, ProcessUsage }
export type RecordState = RecordStatus['state']
export type CleanupAction = CleanupItem['action']

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
  env?: Record<string, string | number | boolean | undefined>
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
  /** Where the manager logs; `false` silences it. Default `console`. */
  logger?: Logger | false
}

export interface ExitEvent {
  pid: number
  exitCode: number | null
  signal: string | null
  /** False when nobody asked the backend to stop (it crashed or was killed from outside). */
  expected: boolean
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
  path?: string
  /** The OS error underneath, where there is one (`errno`, and `code` as the OS error kind). */
  cause?: Error & { code?: string; errno?: number }
}

export interface ProcessManagerEvents {
  ready: [info: BackendInfo]
  exit: [event: ExitEvent]
  stdout: [line: string]
  stderr: [line: string]
}

export declare class ProcessManager extends EventEmitter {
  constructor(options?: ProcessManagerOptions)
  /** The options in force, defaults applied (without the logger). */
  readonly options: Required<Omit<ProcessManagerOptions, 'logger' | 'command' | 'cwd'>> &
    Pick<ProcessManagerOptions, 'command' | 'cwd'>
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

  on<K extends keyof ProcessManagerEvents>(event: K, listener: (...args: ProcessManagerEvents[K]) => void): this
  once<K extends keyof ProcessManagerEvents>(event: K, listener: (...args: ProcessManagerEvents[K]) => void): this
  off<K extends keyof ProcessManagerEvents>(event: K, listener: (...args: ProcessManagerEvents[K]) => void): this
  emit<K extends keyof ProcessManagerEvents>(event: K, ...args: ProcessManagerEvents[K]): boolean
}

export interface FindPortOptions {
  /** Last port to try. Default `startPort + 100` (at most 65535). */
  endPort?: number
  /** Ports never to return. */
  exclude?: Iterable<number>
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
/** The per-user folder where PID records are kept by default. */
export declare function defaultStateDir(): string
