'use strict'
// What the CLI, the monitor, the dashboard and the API share: durations, sizes and aligned tables; replicas
// under their backend (the one place that groups them and sums their figures); the error of a bad argument.

function formatDuration(ms) {
  if (ms == null) return '-'
  const s = Math.floor(ms / 1000)
  if (s < 60) return `${s}s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m}m${String(s % 60).padStart(2, '0')}s`
  const h = Math.floor(m / 60)
  if (h < 48) return `${h}h${String(m % 60).padStart(2, '0')}m`
  return `${Math.floor(h / 24)}d${String(h % 24).padStart(2, '0')}h`
}

function formatBytes(bytes) {
  if (bytes == null) return '-'
  const units = ['B', 'KiB', 'MiB', 'GiB']
  let value = bytes
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit++
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`
}

/** Columns padded to their widest cell; numbers right-aligned. */
function table(headers, rows) {
  const cells = [headers, ...rows.map((r) => r.map((c) => (c == null ? '-' : String(c))))]
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => r[i].length)))
  const numeric = headers.map((_, i) => rows.length > 0 && rows.every((r) => r[i] == null || /^-?[\d.]+( ?[%A-Za-z]+)?$/.test(String(r[i])) || r[i] === '-'))
  return cells
    .map((r) => r.map((c, i) => (numeric[i] ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ').trimEnd())
    .join('\n')
}

function listener(record) {
  if (record.listenerPid == null) return record.state === 'running' || record.state === 'orphaned' ? 'none' : '-'
  return `${record.listenerPid} (${record.listenerName ?? '?'})`
}

// ---- Replicas ----
// A replicated backend leaves one PID record per replica (`replicaOf`: the backend's public port); the status
// table, the monitor and the dashboard show them under one line for the backend, with the replicas' totals.
// A manager of the app itself lists its replicas in `stats().replicas` (or `backend.replicas`); the dashboard
// shows those the same way.

/** The sum of some values, `null` when none is known. */
const sum = (values) => (values.some((v) => v != null) ? values.reduce((a, v) => a + (v ?? 0), 0) : null)

/**
 * Items (records, or lines made from them) in first-seen order, those of one replicated backend (same name,
 * host and public port) gathered: `[{ item } | { replicaOf, replicas: [...] }]`.
 */
function byBackend(items) {
  const out = []
  const sets = new Map()
  for (const item of items) {
    if (item.replicaOf == null) {
      out.push({ item })
      continue
    }
    const key = `${item.name}\0${item.host}\0${item.replicaOf}`
    let set = sets.get(key)
    if (!set) {
      set = { replicaOf: item.replicaOf, replicas: [] }
      sets.set(key, set)
      out.push(set)
    }
    set.replicas.push(item)
  }
  return out
}

/** The replicas' totals of CPU, memory, processes and restarts (each `null` when no replica has it). */
function totals(replicas) {
  const of = (field) => sum(replicas.map((r) => r[field]))
  return { cpuPercent: of('cpuPercent'), memoryBytes: of('memoryBytes'), processCount: of('processCount'), restarts: of('restarts') }
}

/** A backend line and its replicas' lines, in one list. */
const everyLine = (backends) => backends.flatMap((b) => [b, ...(b.replicas ?? [])])

/** The status table's label of a replica record: sharing the public socket, or on a port of its own. */
const replicaLabel = (record) => (record.port === record.replicaOf ? 'replica (shared socket)' : `replica (port ${record.port})`)

/**
 * The dashboard's lines for the replicas a manager runs (`stats().replicas` when it has them, else
 * `backend.replicas`): their figures where known, else pid and port.
 */
function managerReplicaLines(replicas, { id, name, group }) {
  return replicas.map((r, i) => ({
    id: `${id}#replica${i + 1}`,
    name: `${name} #${i + 1}`,
    group: group ?? null,
    state: r.healthy === false ? 'unhealthy' : 'running',
    pid: r.pid ?? null,
    port: r.port ?? null,
    uptimeMs: r.uptimeMs ?? null,
    cpuPercent: r.cpuPercent == null ? null : Number(r.cpuPercent.toFixed(1)),
    memoryBytes: r.memoryBytes ?? null,
    processCount: r.processCount ?? null,
    restarts: r.restarts ?? null,
    healthy: r.healthy ?? null,
    healthLatencyMs: r.healthLatencyMs ?? null,
  }))
}

// ---- Errors ----

/** The one error of a bad argument or option (docs/api.md: code ERR_INVALID_ARG), for every JS file. */
function invalidArg(message) {
  const err = new Error(message)
  err.code = 'ERR_INVALID_ARG'
  return err
}

function health(record) {
  if (record.healthy == null) return '-'
  return record.healthy ? 'healthy' : 'UNHEALTHY'
}

/**
 * Records grouped by backend name; the replicas of one backend (same name, same public port) follow a line
 * for the backend itself, which shows the public port and the replicas' totals.
 */
function groupRecords(records) {
  const byName = new Map()
  for (const r of records) {
    const key = r.name ?? r.file
    if (!byName.has(key)) byName.set(key, [])
    byName.get(key).push(r)
  }
  const lines = []
  for (const [name, group] of byName) {
    const parts = byBackend(group)
    for (const { item } of parts) if (item) lines.push({ record: item })
    for (const { replicaOf: port, replicas } of parts) {
      if (!replicas) continue
      const { cpuPercent, memoryBytes, processCount } = totals(replicas)
      lines.push({ backend: { name, port, replicas: replicas.length, cpuPercent, memoryBytes, processCount } })
      for (const r of replicas) lines.push({ record: r, replica: true })
    }
  }
  return lines
}

/** The status table of PID records: replicas under their backend. */
function recordsTable(records) {
  const cpu = (p) => (p == null ? '-' : `${p.toFixed(1)}%`)
  return table(
    ['PID', 'NAME', 'PORT', 'STATE', 'HEALTH', 'RESTARTS', 'UPTIME', 'CPU', 'MEMORY', 'PROCS', 'LISTENER'],
    groupRecords(records).map(({ record: r, replica, backend: b }) =>
      b
        ? ['-', b.name, b.port, `${b.replicas} replicas`, '-', '-', '-', cpu(b.cpuPercent), formatBytes(b.memoryBytes), b.processCount, '-']
        : [
            r.pid,
            replica ? `  ${replicaLabel(r)}` : (r.name ?? r.file),
            replica ? r.replicaOf : r.port,
            r.state,
            health(r),
            r.restarts,
            formatDuration(r.uptimeMs),
            cpu(r.cpuPercent),
            formatBytes(r.memoryBytes),
            r.processCount,
            listener(r),
          ],
    ),
  )
}

/**
 * An error's message for a person rather than a program: without its pointer to the `stderrTail` field
 * (those who show the message show the tail itself, or there is none to show).
 */
const messageForPeople = (message) => String(message).replace(/\.? See stderrTail for its last output\.?$/, '.')

module.exports = { messageForPeople, formatDuration, formatBytes, table, recordsTable, groupRecords, byBackend, totals, everyLine, replicaLabel, managerReplicaLines, invalidArg }
