'use strict'
// Replicas in one place. A replicated backend leaves one PID record per replica (`replicaOf`: the backend's
// public port); the status table, the monitor and the dashboard show them under one line for the backend,
// with the replicas' totals. A manager of the app itself lists its replicas in `stats().replicas` (or
// `backend.replicas`); the dashboard shows those the same way.

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

module.exports = { byBackend, totals, everyLine, replicaLabel, managerReplicaLines, sum }
