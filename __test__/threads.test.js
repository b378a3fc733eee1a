'use strict'
// Threads do not grow with backends (docs/design.md §23): an app with 10 running backends, or with 5 backends
// of 2 replicas, has at most 2 more threads than after one backend was started and stopped. Measured in a
// fresh Node process (fixtures/threads.js), whose backends this test kills with it if it fails.
const test = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { once } = require('node:events')
const { ROOT, tempDir, freeRun, linuxOnly, killTree } = require('./helpers')

test('10 backends, or 5 backends of 2 replicas, add at most 2 threads to the app', { skip: linuxOnly('threads are counted in /proc/self/task'), timeout: 240_000 }, async (t) => {
  const stateDir = tempDir(t)
  const firstPort = await freeRun(40)
  const child = spawn(process.execPath, [path.join(__dirname, 'fixtures', 'threads.js'), ROOT, stateDir, String(firstPort), '10', '5x2'], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.after(() => killTree(child))
  let out = ''
  let err = ''
  child.stdout.on('data', (d) => (out += d))
  child.stderr.on('data', (d) => (err += d))
  const [code] = await once(child, 'exit')
  assert.equal(code, 0, err)
  const figures = JSON.parse(out)
  t.diagnostic(`threads: ${JSON.stringify(Object.fromEntries(Object.entries(figures).map(([k, v]) => [k, v.threads])))}`)
  assert.ok(figures['10'].threads - figures.base.threads <= 2, `10 backends: ${figures['10'].threads} threads against ${figures.base.threads}`)
  assert.ok(figures['5x2'].threads - figures.base.threads <= 2, `5 × 2 replicas: ${figures['5x2'].threads} threads against ${figures.base.threads}`)
})
