'use strict'
// The tests' own cleanup kills processes by pid after a test: it must kill only the process it noted, never a
// later one given the same pid (Windows and Wine hand a freed pid out again soon; Linux after pid_max). Here a
// pid is handed out again on purpose: Linux gives the next process the pid after /proc/sys/kernel/ns_last_pid.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const { spawn } = require('node:child_process')
const { once } = require('node:events')
const { isAlive, waitFor, own, killIfAlive, killAfter, killTree, linuxOnly } = require('./helpers')

const NS_LAST_PID = '/proc/sys/kernel/ns_last_pid'
const canChoosePids = () => {
  try {
    fs.accessSync(NS_LAST_PID, fs.constants.W_OK)
    return true
  } catch {
    return false
  }
}

/** Not yet reaped: its pid is still its own. */
const running = (child) => child.exitCode === null && child.signalCode === null
const idle = () => spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' })

/** A new idle process given `pid` (tried again while other processes take it first); killed after the test. */
async function processAt(t, pid) {
  for (let tries = 0; tries < 50; tries++) {
    fs.writeFileSync(NS_LAST_PID, String(pid - 1))
    const child = idle()
    t.after(() => running(child) && child.kill('SIGKILL'))
    await once(child, 'spawn')
    if (child.pid === pid) return child
    child.kill('SIGKILL')
    await once(child, 'exit')
  }
  throw new Error(`pid ${pid} was taken by other processes 50 times`)
}

test('a noted pid given to a later process: killIfAlive, killAfter and killTree leave the later process alone', { skip: linuxOnly('chooses pids through /proc') || (!canChoosePids() && `needs write access to ${NS_LAST_PID} (root)`) }, async (t) => {
  const first = idle()
  await once(first, 'spawn')
  const pid = own(first.pid)
  const afterHooks = []
  killAfter({ after: (f) => afterHooks.push(f) }, pid)
  first.kill('SIGKILL')
  await once(first, 'exit')

  const later = await processAt(t, pid)
  await killIfAlive(pid)
  for (const hook of afterHooks) await hook()
  await killTree(first)
  assert.equal(isAlive(pid), true, 'the later process at the noted pid still runs')
  assert.equal(later.exitCode ?? later.signalCode, null)

  // The process noted now is the later one: that one is killed.
  own(pid)
  await killIfAlive(pid)
  const [, signal] = await once(later, 'exit')
  assert.equal(signal, 'SIGKILL')
})

test('a noted process that still runs is killed: by killIfAlive, by killAfter, and by killTree with what it started', async (t) => {
  const exited = (child) => (running(child) ? once(child, 'exit') : Promise.resolve())
  const [byPid, byHook] = [idle(), idle()]
  t.after(() => [byPid, byHook].forEach((c) => running(c) && c.kill('SIGKILL')))
  await Promise.all([once(byPid, 'spawn'), once(byHook, 'spawn')])
  own(byPid.pid)
  await killIfAlive(byPid.pid)
  await exited(byPid)

  const afterHooks = []
  killAfter({ after: (f) => afterHooks.push(f) }, byHook.pid)
  for (const hook of afterHooks) await hook()
  await exited(byHook)

  // A parent with a child of its own: killTree ends both (off Linux only the parent is known, the child ends
  // with its stdin: the parent's pipe).
  const parent = spawn(process.execPath, ['-e', `
    const c = require('node:child_process').spawn(process.execPath, ['-e', 'process.stdin.resume(); process.stdin.on("end", () => process.exit(0))'], { stdio: ['pipe', 'ignore', 'ignore'] })
    console.log(c.pid); setInterval(() => {}, 1000)`], { stdio: ['ignore', 'pipe', 'ignore'] })
  t.after(() => running(parent) && parent.kill('SIGKILL'))
  const [grandchild] = await once(parent.stdout, 'data')
  const grandchildPid = Number(String(grandchild).trim())
  await killTree(parent)
  await exited(parent)
  await waitFor(() => !isAlive(grandchildPid), 5000, 'its child to be gone too')
})
