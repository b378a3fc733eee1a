'use strict'
// Apps started at the same instant, each with its own state folder and the same preferred port (two windows
// of an app, two apps built on the same template): each must be served by its own backend, on its own port.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { FIXTURE, tempDir, freeRun, startScript, httpGet, wineLacks, killTree } = require('./helpers')

const APP = path.join(__dirname, 'fixtures', 'app.js')

/**
 * Starts `count` apps, releases them together once all are waiting, and checks what each got: its start
 * resolved, its URL is answered by its own backend (the fixture answers `GET /` with `pid <pid>`), and no two
 * share a port. Returns the problems found, the ports used and how many apps were not served by their own
 * backend; every app and backend is gone afterwards.
 */
async function round(t, count) {
  const port = await freeRun(count + 5)
  const dir = tempDir(t, 'bpm-race-')
  const startFile = path.join(dir, 'go', 'start')
  fs.mkdirSync(path.dirname(startFile))
  const apps = []
  try {
    for (let i = 0; i < count; i++) {
      // A generous start deadline: 30 Node processes booting at once on a busy 2-core machine take a while.
      const options = { name: 'race', command: process.execPath, args: [FIXTURE], port, stateDir: path.join(dir, `app${i + 1}`), stopTimeoutMs: 2000, startTimeoutMs: 60000 }
      apps.push(startScript(t, `require(${JSON.stringify(APP)})`, { APP_OPTIONS: JSON.stringify(options), APP_START_FILE: startFile }))
    }
    await Promise.all(apps.map((a) => a.line(/^WAITING$/, 90000)))
    fs.writeFileSync(startFile, '')
    const results = await Promise.all(apps.map((a) => a.line(/^(READY|FAILED) /, 90000)))

    const problems = []
    const infos = []
    let misserved = 0 // apps whose start failed or whose URL another backend (or nothing) answers
    const notServed = (problem) => {
      misserved++
      problems.push(problem)
    }
    for (const [i, line] of results.entries()) {
      const [word, json] = [line.slice(0, line.indexOf(' ')), line.slice(line.indexOf(' ') + 1)]
      const value = JSON.parse(json)
      if (word === 'FAILED') notServed(`app ${i + 1}'s start failed: ${value.code} ${value.message}`)
      else infos[i] = value
    }
    // Every app asks its URL only now, when all have resolved: a backend that lost the port is gone by then.
    await Promise.all(infos.map(async (info, i) => {
      if (!info) return
      let answer
      try {
        answer = (await httpGet(`${info.url}/`)).body.trim()
      } catch (err) {
        return notServed(`app ${i + 1}'s ${info.url}/ answered nothing (${err.code ?? err.message}); its backend is pid ${info.pid}`)
      }
      if (answer !== `pid ${info.pid}`) notServed(`app ${i + 1} got ${JSON.stringify(answer)} from ${info.url}/; its backend is pid ${info.pid}`)
    }))
    const ports = infos.filter(Boolean).map((info) => info.port)
    const shared = [...new Set(ports)].filter((p) => ports.filter((q) => q === p).length > 1)
    for (const p of shared) {
      const sharing = infos.flatMap((info, i) => (info?.port === p ? [i + 1] : []))
      problems.push(`apps ${sharing.join(', ')} all resolved on port ${p}`)
    }
    return { problems, ports, misserved }
  } finally {
    await Promise.all(apps.map((a) => killTree(a.child)))
  }
}

test('two apps started at the same instant are each served by their own backend (20 rounds)', { timeout: 300000 }, async (t) => {
  const began = Date.now()
  const failed = []
  let sharedPort = 0
  for (let r = 1; r <= 20; r++) {
    const { problems, ports } = await round(t, 2)
    if (new Set(ports).size < ports.length) sharedPort++
    if (problems.length > 0) failed.push(`round ${r}: ${problems.join('; ')}`)
  }
  t.diagnostic(`${failed.length} of 20 rounds went wrong, ${sharedPort} with both apps on one port; ${Date.now() - began} ms`)
  assert.equal(failed.length, 0, `${failed.length} of 20 rounds went wrong:\n${failed.join('\n')}`)
})

test('30 apps started at the same instant are each served by their own backend, on 30 ports', { skip: wineLacks('30 node.exe apps at once do not all start within 90 s on 2 cores'), timeout: 300000 }, async (t) => {
  const began = Date.now()
  const { problems, ports, misserved } = await round(t, 30)
  t.diagnostic(`30 apps: ${misserved} not served by their own backend, ${new Set(ports).size} distinct ports among ${ports.length} started; ${Date.now() - began} ms`)
  assert.equal(problems.length, 0, `30 apps landed on ${new Set(ports).size} ports:\n${problems.join('\n')}`)
})
