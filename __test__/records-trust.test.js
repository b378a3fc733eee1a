'use strict'
// What a PID record may lead to: never a signal to a process that only reused a backend's pid, never a
// record of another boot acted on, and never a record read from a folder others can write to.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { once } = require('node:events')
const { ProcessManager, listRecords, cleanupRecords, stopRecord } = require('..')
const { ROOT, tempDir, isAlive, procStat, recordOf, cli, fixtureManager, freeRun, linuxOnly, killAfter } = require('./helpers')

/** A process of this test that does nothing, started with `setsid` (`detached`) when `ownGroup`. */
async function bystander(t, { ownGroup = false } = {}) {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore', detached: ownGroup })
  killAfter(t, child.pid)
  await once(child, 'spawn')
  return child.pid
}

/** The start time /proc gives the process (clock ticks since boot), as records hold it. */
function startTimeOf(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19])
}

/** Writes a record for `pid` with a dead owner; `fields` override. */
function plant(dir, pid, fields = {}) {
  const record = recordOf({ name: 'api', pid, port: 8000, exe: fs.realpathSync(process.execPath), startTime: startTimeOf(pid), ownerPid: 999999, ownerStartTime: 1, ...fields })
  const file = path.join(dir, `api-${pid}.json`)
  fs.writeFileSync(file, JSON.stringify(record), { mode: 0o600 })
  return file
}

test('a process that got a dead backend\'s pid and leads its own group is a stranger: its record is stale, nothing is signalled', { skip: linuxOnly('start times from /proc') }, async (t) => {
  const stateDir = tempDir(t)
  const pid = await bystander(t, { ownGroup: true })
  assert.equal(procStat(pid).pgrp, pid, 'it leads its own group')
  // The backend that had this pid started earlier than the process that has it now.
  const file = plant(stateDir, pid, { startTime: startTimeOf(pid) - 1 })
  const { code, stdout, stderr } = await cli(['cleanup', '--json', '--state-dir', stateDir])
  assert.equal(code, 0, stderr)
  const report = JSON.parse(stdout)
  assert.equal(isAlive(pid), true, `the stranger was signalled: ${stdout}`)
  assert.deepEqual(report.items.map((i) => i.action), ['stale-removed'])
  assert.equal(report.terminated, 0)
  assert.equal(fs.existsSync(file), false, 'the stale record is deleted')

  // The next start of that name cleans up the same way.
  const again = plant(stateDir, pid, { startTime: startTimeOf(pid) - 1 })
  const pm = new ProcessManager({ name: 'api', stateDir, logger: false })
  assert.equal(await pm.killExistingBackend(), false)
  assert.equal(isAlive(pid), true, 'the stranger was signalled by killExistingBackend()')
  assert.equal(fs.existsSync(again), false)
})

test('a record carries the boot id; one of another boot is stale even when its process matches', { skip: linuxOnly('/proc/sys/kernel/random/boot_id') }, async (t) => {
  const bootId = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()
  const { pm, stateDir } = fixtureManager(t, { port: await freeRun(3) })
  const running = await pm.startBackend(ROOT)
  const written = JSON.parse(fs.readFileSync(path.join(stateDir, `fixture-${running.pid}.json`), 'utf8'))
  assert.equal(written.bootId, bootId)

  const other = tempDir(t)
  const pid = await bystander(t)
  const file = plant(other, pid, { bootId: '00000000-0000-4000-8000-000000000000' })
  const [listed] = await listRecords(other)
  assert.equal(listed.state, 'stale')
  const items = await cleanupRecords(other)
  assert.deepEqual(items.map((i) => i.action), ['stale-removed'])
  assert.equal(isAlive(pid), true, 'a process matching a record of another boot was signalled')
  assert.equal(fs.existsSync(file), false)
})

test('every way of reading or cleaning records refuses a state folder others can write to, and signals nothing', { skip: linuxOnly('file modes; start times from /proc') }, async (t) => {
  const root = tempDir(t)
  for (const [mode, reason] of [
    [0o777, /other users can write to it/],
    [0o1777, /shared temporary folder/],
  ]) {
    const dir = path.join(root, `mode-${mode.toString(8)}`)
    fs.mkdirSync(dir)
    fs.chmodSync(dir, mode)
    // A record planted there would have its process terminated: it matches, and its owner is gone.
    const pid = await bystander(t)
    const file = plant(dir, pid)
    const refused = (err) => {
      assert.equal(err.code, 'ERR_STATE_DIR')
      assert.match(err.message, reason)
      assert.ok(err.message.includes(dir), err.message)
      return true
    }
    await assert.rejects(listRecords(dir), refused)
    await assert.rejects(cleanupRecords(dir), refused)
    await assert.rejects(stopRecord(file), refused)
    const pm = new ProcessManager({ name: 'api', stateDir: dir, logger: false })
    await assert.rejects(pm.killExistingBackend(), refused)
    await assert.rejects(pm.status(), refused)
    // The live monitor and the dashboard refuse it before they open, rather than show errors later.
    for (const command of ['status', 'cleanup', 'monitor', 'dashboard']) {
      const { code, stderr } = await cli([command, '--state-dir', dir])
      assert.equal(code, 1, `${command}: ${stderr}`)
      assert.match(stderr, /ERR_STATE_DIR/)
      assert.ok(stderr.includes(dir), stderr)
    }
    assert.equal(isAlive(pid), true, 'a process named in an untrusted folder was signalled')
    assert.equal(fs.existsSync(file), true, 'nothing in the folder was deleted')
  }
})
