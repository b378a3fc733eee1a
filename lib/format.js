'use strict'
// Human-readable output shared by the CLI and the demo: durations, sizes and aligned tables.
const { byBackend, totals, replicaLabel } = require('./replicas.js')

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

module.exports = { formatDuration, formatBytes, table, recordsTable, groupRecords }
