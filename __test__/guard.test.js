'use strict'
// The death guard (docs/api.md, "Death guard"): with the parent-death signal off, an app killed with SIGKILL
// leaves no backend group behind — one guard for the whole app, a polite stop first, the force kill after
// stopTimeoutMs for a backend that ignores SIGTERM. A control run with deathGuard 'none' shows the
// parent-death signal really is off, so the guard is what ended them.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const { ROOT, FIXTURE, tempDir, freeRun, isAlive, processTree, waitFor, startScript, linuxOnly, killAfter } = require('./helpers')

// Starting the app, two backends and their grandchildren (five Node processes) is setup, not what is
// measured: beside the heaviest test files on two shared cores it once took over 10 s.
const UP_WITHIN_MS = 30000

/** An app with two managers (one backend ignores SIGTERM), each backend with a grandchild in its group. */
function app(t, stateDir, port, deathGuard) {
  return startScript(t, `
    const { ProcessManager } = require(${JSON.stringify(ROOT)})
    const common = { command: process.execPath, args: [${JSON.stringify(FIXTURE)}], stateDir: ${JSON.stringify(stateDir)}, portRange: 2, stopTimeoutMs: 400, logger: false, deathGuard: ${JSON.stringify(deathGuard)} }
    const polite = new ProcessManager({ ...common, name: 'polite', port: ${port}, env: { GRANDCHILDREN: '1' } })
    const stubborn = new ProcessManager({ ...common, name: 'stubborn', port: ${port + 3}, env: { GRANDCHILDREN: '1', IGNORE_SIGTERM: '1' } })
    const grandchildren = []
    for (const pm of [polite, stubborn]) pm.on('stdout', (l) => /^GRANDCHILD \\d+$/.test(l) && grandchildren.push(Number(l.split(' ')[1])))
    Promise.all([polite.startBackend(${JSON.stringify(ROOT)}), stubborn.startBackend(${JSON.stringify(ROOT)})]).then(async (started) => {
      while (grandchildren.length < 2) await new Promise((r) => setTimeout(r, 10))
      console.log('UP ' + JSON.stringify({ backends: started.map((b) => b.pid), grandchildren }))
    })`)
}

const comm = (pid) => {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim()
  } catch {
    return null
  }
}
const rssKiB = (pid) => Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1])

test("deathGuard 'guard': one small guard per app; SIGKILL the app and every backend group is gone (politely, then by force)", { skip: linuxOnly('reads /proc for the guard and its memory') }, async (t) => {
  const stateDir = tempDir(t)
  const running = app(t, stateDir, await freeRun(6), 'guard')
  const { backends, grandchildren } = JSON.parse((await running.line(/^UP /, UP_WITHIN_MS)).slice(3))
  const everything = [...backends, ...grandchildren]
  killAfter(t, ...everything)
  const guards = processTree(running.child.pid).filter((p) => comm(p) === 'sh' && !backends.includes(p))
  assert.equal(guards.length, 1, `one guard for two backends: ${guards}`)
  const [guard] = guards
  killAfter(t, guard)
  const rss = rssKiB(guard)
  t.diagnostic(`guard pid ${guard}: ${rss} KiB resident`)
  assert.ok(rss <= 2048, `the guard holds ${rss} KiB`)
  const killedAt = Date.now()
  process.kill(running.child.pid, 'SIGKILL')
  await waitFor(() => !isAlive(backends[0]) && !isAlive(grandchildren[0]), 1000, 'the polite backend and its grandchild to end within 1 s')
  await waitFor(() => everything.every((p) => !isAlive(p)), 400 + 1000, 'the stubborn one to be force-killed after stopTimeoutMs')
  t.diagnostic(`all gone ${Date.now() - killedAt} ms after the app's SIGKILL`)
  await waitFor(() => !isAlive(guard), 2000, 'the guard to exit')
})

test("deathGuard 'none' (control): the parent-death signal is off, so a killed app's backends live on", { skip: linuxOnly('the parent-death signal is Linux\'s') }, async (t) => {
  const stateDir = tempDir(t)
  const running = app(t, stateDir, await freeRun(6), 'none')
  const { backends, grandchildren } = JSON.parse((await running.line(/^UP /, UP_WITHIN_MS)).slice(3))
  const everything = [...backends, ...grandchildren]
  killAfter(t, ...everything)
  process.kill(running.child.pid, 'SIGKILL')
  await running.exited
  // Long enough for a parent-death SIGTERM to have ended the polite one (it exits at once on SIGTERM).
  await new Promise((r) => setTimeout(r, 500))
  assert.ok(everything.every(isAlive), 'nothing ended them')
})
