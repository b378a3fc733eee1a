'use strict'
// What the tests (and the soak and benchmark scripts) need to know of other processes: alive or not, their
// tree and group. Linux reads /proc; elsewhere liveness comes from a signal-0 probe.
const fs = require('node:fs')

/** State, parent and process group of a process from /proc/<pid>/stat, or null when there is none. */
function procStat(pid) {
  let stat
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return null
  }
  // The command name may hold spaces and parentheses: the fields start after its last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const [state, ppid, pgrp] = fields
  // Field 22 of the file, its start time in clock ticks since boot: with the pid, what names one process.
  return { state, ppid: Number(ppid), pgrp: Number(pgrp), startTicks: Number(fields[19]) }
}

/**
 * Alive and not a zombie (a zombie has exited; only its entry waits for its parent). A process whose main
 * thread is a zombie while its other threads still run is still exiting (and holding its sockets): alive.
 */
function isAlive(pid) {
  if (process.platform !== 'linux') {
    try {
      process.kill(pid, 0)
      return true
    } catch (err) {
      return err.code === 'EPERM'
    }
  }
  const stat = procStat(pid)
  if (stat === null) return false
  if (stat.state !== 'Z' && stat.state !== 'X') return true
  try {
    return fs.readdirSync(`/proc/${pid}/task`).length > 1
  } catch {
    return false
  }
}

/** `pid` and all its descendants, from /proc/<pid>/task/<tid>/children (Linux), parents before children. */
function processTree(pid) {
  const tree = []
  const visit = (p) => {
    tree.push(p)
    let tasks = []
    try {
      tasks = fs.readdirSync(`/proc/${p}/task`)
    } catch {}
    for (const tid of tasks) {
      let children = ''
      try {
        children = fs.readFileSync(`/proc/${p}/task/${tid}/children`, 'utf8')
      } catch {}
      for (const c of children.split(' ').filter(Boolean)) visit(Number(c))
    }
  }
  // Without /proc (Windows, macOS) only the process itself is known; a backend's tree ends with its job there.
  if (process.platform !== 'linux') return isAlive(pid) ? [pid] : []
  if (procStat(pid) !== null) visit(pid)
  return tree
}

/** Live processes whose process group is `pgid`, found in /proc (also those re-parented away from the tree). */
function groupMembers(pgid) {
  return fs.readdirSync('/proc').filter((e) => /^\d+$/.test(e)).map(Number).filter((p) => procStat(p)?.pgrp === pgid && isAlive(p))
}

module.exports = { procStat, isAlive, processTree, groupMembers }
