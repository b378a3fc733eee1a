// Type test (tsc --noEmit in `npm test`): the public API as docs/api.md shows it must type-check, and misuse must not.
import {
  ProcessManager,
  BackendGroup,
  findAvailablePort,
  isPortAvailable,
  findPortHolders,
  listRecords,
  cleanupRecords,
  defaultStateDir,
  type BackendInfo,
  type StopResult,
  type ProcessManagerError,
  type StatusReport,
  type Dashboard,
  type LogLine,
} from '../../index'
import * as binding from '../../binding'
import { manage } from '../../electron'

async function main(): Promise<void> {
  const pm = new ProcessManager({ name: 'myfinance-backend', port: 8000, logger: false })
  const backend: BackendInfo = await pm.startBackend('/app', false)
  const url: string = backend.url
  pm.on('ready', (info) => info.port.toFixed())
  pm.on('exit', (e) => (e.expected ? e.exitCode : e.signal))
  pm.on('stdout', (line) => line.toUpperCase())
  const stopped: StopResult | null = await pm.stopBackend()
  const forced: boolean | undefined = stopped?.forced
  const survivors: number[] | undefined = stopped?.survivors
  const port: number = await pm.findAvailablePort()
  const free: boolean = await pm.isPortAvailable(port)
  const healthy: boolean = await pm.checkBackendHealth(port)
  const ready: boolean = await pm.waitForBackendReady(port, 10, 1000)
  const killed: boolean = await pm.killExistingBackend()
  const report: StatusReport = await pm.status()
  const states = report.records.map((r) => r.state)
  const foreign: boolean = states.includes('foreign')
  const trees = report.records.map((r) => [r.processCount, r.cpuTimeMs])
  const low: number = await findAvailablePort(3000, { endPort: 3100, exclude: [3001], host: '127.0.0.1' })
  const lowFree: boolean = await isPortAvailable(low, { host: '::1' })
  const holders = await findPortHolders([low])
  const records = await listRecords(defaultStateDir())
  const cleaned = await cleanupRecords(undefined, { name: 'x' })
  try {
    await pm.startBackend('/app')
  } catch (err) {
    const e = err as ProcessManagerError
    if (e.code === 'ERR_BACKEND_EXITED') console.log(e.exitCode, e.stderrTail)
    if (e.code === 'ERR_INTERNAL' || e.code === 'ERR_SPAWN_FAILED') console.log(e.cause?.errno)
  }
  // The generated binding agrees on the shared shapes.
  const nativeInfo: binding.BackendInfo = backend
  void [url, foreign, trees, forced, survivors, free, healthy, ready, killed, states, lowFree, holders, records, cleaned, nativeInfo]

  // Supervision: typed options, events and stats.
  const supervised = new ProcessManager({
    restart: { maxRestarts: 3, initialDelayMs: 50 },
    healthIntervalMs: 1000,
    maxMemoryBytes: 2 ** 30,
    priority: 'low',
    limits: { openFiles: 1024, coreDumps: false },
    inheritEnv: ['LANG'],
    token: true,
    shutdown: { http: 'POST /shutdown', stdin: true },
  })
  supervised.on('restart', (e) => e.delayMs + e.attempt + (e.reason === 'memory' ? 1 : 0))
  supervised.on('failed', (e) => e.error.length + e.restarts)
  supervised.on('unhealthy', (e) => (e.reason === 'health' ? e.failures : e.memoryBytes))
  supervised.on('healthy', (e) => e.latencyMs)
  supervised.on('port-changed', (e) => e.port - e.previous)
  supervised.on('stats', (s) => s.cpuPercent + s.memoryBytes + s.processCount)
  supervised.on('warning', (w) => (w.code === 'ERR_STATE_DIR' ? w.message.length : 0))
  const stats = await supervised.stats()
  const token: string | null | undefined = (await supervised.startBackend('/app')).token
  void [stats?.healthLatencyMs, token]
  // @ts-expect-error priorities are named
  new ProcessManager({ priority: 'urgent' })
  // @ts-expect-error restart events carry a number of attempts
  supervised.on('restart', (e: { attempt: string }) => e)

  const replicated = new ProcessManager({ replicas: 3, balance: 'round-robin', listen: 'fd' })
  const info = await replicated.startBackend('/app')
  const replicaPorts: Array<number | null> | undefined = info.replicas?.map((r) => (r.healthy ? r.port : null))
  const reloaded: BackendInfo | null = await replicated.reload()
  replicated.on('exit', (e) => e.replica ?? -1)
  replicated.on('ready', (e) => e.replica)
  const perReplica = (await replicated.stats())?.replicas?.map((s) => s.pid)
  const stoppedAll = (await replicated.stopBackend())?.replicas.map((r) => r.durationMs)
  void [replicaPorts, reloaded, perReplica, stoppedAll]
  // @ts-expect-error balance strategies are named
  new ProcessManager({ balance: 'random' })
  const limited = new ProcessManager({ replicas: 2, balancer: { maxConnections: 64, idleTimeoutMs: 60000, firstByteTimeoutMs: 5000 } })
  const held: number | undefined = limited.options.balancer.maxConnections
  void held
  // @ts-expect-error balancer limits are named
  new ProcessManager({ balancer: { maxConnection: 8 } })

  const group = new BackendGroup([
    { name: 'api', port: 8000 },
    { name: 'worker', dependsOn: ['api'], env: ({ api }) => ({ API_URL: api.url }) },
  ])
  const all: Record<string, BackendInfo> = await group.startAll('/app', false)
  group.on('ready', (e) => e.name + e.url)
  group.on('stdout', (e) => e.name + e.line)
  const member: ProcessManager | undefined = group.get('api')
  const statuses = await group.status()
  const groupPage: Dashboard = await group.dashboard({ port: 0 })
  await groupPage.close()
  const stoppedGroup = await group.stopAll()
  void [all, member, statuses.map((s) => s.dependsOn), stoppedGroup.api?.pid]
  // @ts-expect-error members need a name
  new BackendGroup([{ port: 8000 }])
  // The dashboard: a URL with its token, and a close.
  const dashboard: Dashboard = await pm.dashboard({ port: 0 })
  const dashboardUrl: string = dashboard.url
  await dashboard.close()
  void dashboardUrl
  // @ts-expect-error the dashboard's port is a number
  await pm.dashboard({ port: '8080' })

  // Quitting: synchronous stops, every manager at once, and the Electron helper.
  const stoppedNow: StopResult | null = pm.stopSync({ timeoutMs: 500 })
  const allNow: StopResult[] = ProcessManager.stopAllSync()
  const allLater: StopResult[] = await ProcessManager.stopAll()
  const groupNow: StopResult[] = group.stopAllSync({ timeoutMs: 100 })
  pm.on('start-failed', (e) => e.error.code)
  const { EventEmitter } = await import('node:events')
  const electronApp = Object.assign(new EventEmitter(), { quit() {} })
  const managed = manage(electronApp, pm, { autoUpdater: new EventEmitter(), dialog: { showErrorBox() {} } })
  manage(electronApp, group)
  managed.dispose()
  void [stoppedNow, allNow, allLater, groupNow]
  // Logs.
  const logged = new ProcessManager({ logs: { dir: '/tmp/logs', maxBytes: 1 << 20, keep: 3 } })
  const lines: LogLine[] = await logged.logs({ lines: 10, stream: 'err' })
  const logOptions = logged.options.logs
  const keep: number | undefined = logOptions ? logOptions.keep : undefined
  logged.on('warning', (w) => w.code + w.dropped)
  new ProcessManager({ logs: false })
  void [lines.map((l) => l.time + l.stream + l.replica + l.line), keep]
  const archive = await logged.exportDiagnostics('/tmp/support.zip')
  void [archive.path, archive.bytes]
  // @ts-expect-error streams are out, err or pm
  await logged.logs({ stream: 'stdout' })
  // @ts-expect-error timeoutMs is a number
  pm.stopSync({ timeoutMs: '5' })

  // A readiness line as a string in JavaScript's syntax or as a RegExp.
  new ProcessManager({ ready: { stdout: 'Uvicorn running on' } })
  new ProcessManager({ ready: { stdout: /uvicorn running on/i } })
  // @ts-expect-error the pattern is a string or a RegExp
  new ProcessManager({ ready: { stdout: 42 } })

  // @ts-expect-error ports are numbers
  await pm.isPortAvailable('80')
  // @ts-expect-error unknown option
  new ProcessManager({ startTimeout: 5 })
  // @ts-expect-error events are typed
  pm.on('ready', (info: string) => info)
}
void main
