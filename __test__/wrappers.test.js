'use strict'
// Servers run through a wrapper (`sh -c`, an npm script, nodemon). When the app is killed, the parent-death
// SIGTERM reaches only the wrapper, which exits without taking the real server along: the server lives on in
// the dead wrapper's process group, re-parented, still holding the port. The next start, killExistingBackend
// and the CLI's cleanup must find and end it, so the app gets its preferred port back.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { ProcessManager, isPortAvailable } = require('..')
const { ROOT, FIXTURE, tempDir, freeRun, procStat, isAlive, processTree, records, waitFor, memoryLogger, startScript, cli, linuxOnly, killAfter } = require('./helpers')

const APP = path.join(__dirname, 'fixtures', 'app.js')
const NODEMON = path.join(ROOT, 'node_modules', '.bin', 'nodemon')

// How each wrapper is written by a user, and what it does with the SIGTERM it gets when the app dies.
const WRAPPERS = [
  {
    // sh dies of the SIGTERM; its background job is never signalled.
    name: 'sh -c',
    command: 'sh',
    args: ['-c', 'node server.js & wait'],
  },
  {
    // npm passes the SIGTERM to the script's shell (/bin/sh -c "node server.js"), which dies of it without
    // passing it on (dash; a shell that execs the command instead would hand it to the server).
    name: 'npm run serve',
    command: 'npm',
    args: ['run', 'serve'],
    env: { npm_config_update_notifier: 'false' },
  },
  {
    // nodemon passes the SIGTERM on to the server and exits at once (code 143) without waiting for it: a
    // server that takes its time over SIGTERM outlives it. Here a stubborn one, which ignores it (and SIGINT,
    // nodemon's other stop signal).
    name: 'nodemon',
    command: NODEMON,
    args: ['--no-update-notifier', 'server.js'],
    orphanEnv: { IGNORE_SIGTERM: '1', IGNORE_SIGINT: '1' },
  },
]

/** A project folder with the server and its npm scripts, a state folder, and a folder for logs. */
function project(t) {
  const base = tempDir(t, 'bpm-wrap-')
  const dir = path.join(base, 'project')
  fs.mkdirSync(dir)
  fs.copyFileSync(FIXTURE, path.join(dir, 'server.js'))
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({
    name: 'wrapped-server',
    private: true,
    scripts: { start: 'node server.js', serve: 'node server.js' },
    // Read by the CLI run in this folder: a stubborn orphan is force-killed after 1 s.
    backendProcessManager: { stopTimeoutMs: 1000 },
  }))
  const stateDir = path.join(base, 'state')
  const logs = path.join(base, 'logs')
  fs.mkdirSync(logs)
  return { dir, stateDir, signalLog: path.join(logs, 'signals') }
}

/** Manager options for `wrapper` in `proj` (the server's own options come through the environment). */
function options(wrapper, proj, port, env = {}) {
  return { name: 'web', command: wrapper.command, args: wrapper.args, cwd: proj.dir, port, stateDir: proj.stateDir, stopTimeoutMs: 1000, env: { ...wrapper.env, ...env } }
}

/**
 * An app starts the wrapped server and is SIGKILLed. Resolves once the wrapper has exited and the server has
 * been checked to live on in the wrapper's group, holding the port.
 */
async function orphanBehindWrapper(t, wrapper) {
  const proj = project(t)
  const port = await freeRun(5)
  const env = { ...wrapper.orphanEnv, SIGTERM_LOG_FILE: proj.signalLog }
  const app = startScript(t, `require(${JSON.stringify(APP)})`, { APP_OPTIONS: JSON.stringify(options(wrapper, proj, port, env)) })
  const info = JSON.parse((await app.line(/^READY /, 20000)).slice('READY '.length))
  const server = Number((await app.line(/^OUT BOOT \d+$/)).split(' ')[2])
  const tree = processTree(info.pid)
  killAfter(t, ...tree, server)
  assert.equal(info.port, port)
  assert.ok(tree.includes(server), `the server ${server} runs under the wrapper ${info.pid} (tree ${tree})`)
  assert.equal(procStat(server).pgrp, info.pid, 'the server is in the wrapper\'s process group')

  const killedAt = Date.now()
  app.child.kill('SIGKILL')
  await app.exited
  const wrapperPids = tree.filter((p) => p !== server)
  await waitFor(() => wrapperPids.every((p) => !isAlive(p)), 15000, `the wrapper processes ${wrapperPids} to exit`)
  const signals = fs.existsSync(proj.signalLog) ? fs.readFileSync(proj.signalLog, 'utf8').split('\n').filter(Boolean) : []
  t.diagnostic(`${wrapper.name}: wrapper gone ${Date.now() - killedAt} ms after the app; signals the server logged so far: [${signals}]`)
  assert.equal(isAlive(server), true, `the server ${server} died with its wrapper (it got [${signals}]): nothing is left to clean up`)
  assert.equal(procStat(server).pgrp, info.pid, 'the server is still in the dead wrapper\'s group')
  assert.equal(await isPortAvailable(port), false, 'the orphaned server still holds the port')
  assert.deepEqual(records(proj.stateDir), [`web-${info.pid}.json`], 'the app had no time to delete its record')
  return { proj, port, wrapperPid: info.pid, server }
}

/** A manager like the next run of the app: same name and state folder, the server stopping normally. */
function nextApp(t, wrapper, orphan) {
  const pm = new ProcessManager({ ...options(wrapper, orphan.proj, orphan.port), logger: memoryLogger() })
  t.after(() => pm.stopBackend())
  return pm
}

/** Starts the next backend; everything it runs is killed after the test (after the manager's own stop). */
async function startNext(t, pm, orphan) {
  const b = await pm.startBackend(orphan.proj.dir)
  const tree = processTree(b.pid)
  killAfter(t, ...tree)
  return b
}

const survivor = (o) => `the server ${o.server} of the dead wrapper ${o.wrapperPid} still runs, holding port ${o.port}`

for (const wrapper of WRAPPERS) {
  test.describe(`a server behind ${wrapper.name} that outlives its crashed app`, () => {
    test('killExistingBackend() ends it, deletes its record, and the next start gets the preferred port', { skip: linuxOnly('servers behind sh -c, npm and nodemon ended as a POSIX process tree (/proc, signals)') }, async (t) => {
      const orphan = await orphanBehindWrapper(t, wrapper)
      const pm = nextApp(t, wrapper, orphan)
      const problems = []
      const killed = await pm.killExistingBackend()
      if (killed !== true) problems.push(`killExistingBackend() returned ${killed}`)
      if (isAlive(orphan.server)) problems.push(survivor(orphan))
      const left = records(orphan.proj.stateDir)
      if (left.length > 0) problems.push(`records left: ${left}`)
      const b = await startNext(t, pm, orphan)
      if (b.port !== orphan.port) problems.push(`the next startBackend got port ${b.port}, not the preferred ${orphan.port}`)
      assert.equal(problems.length, 0, problems.join('; '))
    })

    test('startBackend() ends it first and reuses the preferred port', { skip: linuxOnly('servers behind sh -c, npm and nodemon ended as a POSIX process tree (/proc, signals)') }, async (t) => {
      const orphan = await orphanBehindWrapper(t, wrapper)
      const pm = nextApp(t, wrapper, orphan)
      const problems = []
      const b = await startNext(t, pm, orphan)
      if (isAlive(orphan.server)) problems.push(survivor(orphan))
      if (b.port !== orphan.port) problems.push(`startBackend got port ${b.port}, not the preferred ${orphan.port}`)
      const left = records(orphan.proj.stateDir).filter((f) => f !== `web-${b.pid}.json`)
      if (left.length > 0) problems.push(`records left besides the new backend's: ${left}`)
      assert.equal(problems.length, 0, problems.join('; '))
    })

    test('`backend-pm cleanup` ends it and reports it terminated', { skip: linuxOnly('servers behind sh -c, npm and nodemon ended as a POSIX process tree (/proc, signals)') }, async (t) => {
      const orphan = await orphanBehindWrapper(t, wrapper)
      const { code, stdout, stderr } = await cli(['cleanup', '--json', '--state-dir', orphan.proj.stateDir], { cwd: orphan.proj.dir })
      assert.equal(code, 0, stderr)
      const report = JSON.parse(stdout)
      const problems = []
      if (report.terminated !== 1) problems.push(`cleanup reported ${report.terminated} terminated (${report.items.map((i) => `${i.action}: ${i.detail}`).join('; ')})`)
      if (isAlive(orphan.server)) problems.push(survivor(orphan))
      else if (!(await isPortAvailable(orphan.port))) problems.push(`port ${orphan.port} is still held`)
      const left = records(orphan.proj.stateDir)
      if (left.length > 0) problems.push(`records left: ${left}`)
      assert.equal(problems.length, 0, problems.join('; '))
    })
  })
}
