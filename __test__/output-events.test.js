'use strict'
// `stdout` and `stderr` events (docs/api.md, "Events"): lines cross from the native side only while the app
// listens to them, so a listener added after the start, removed, or added again must still get every line
// written meanwhile, whole and in order.
const test = require('node:test')
const assert = require('node:assert/strict')
const { ProcessManager } = require('..')
const { ROOT, tempDir, freeRun, httpGet } = require('./helpers')

/**
 * A backend that serves /health, and on /burst?n=N&tag=T writes N numbered lines of growing length (up to
 * ~8 KB, so many share one pipe read and some span two) to stdout, and one to stderr per 100, then
 * `T end` on both.
 */
const BACKEND = `
  const http = require('node:http')
  http.createServer((q, s) => {
    const url = new URL(q.url, 'http://x')
    if (url.pathname === '/burst') {
      const n = Number(url.searchParams.get('n'))
      const tag = url.searchParams.get('tag')
      let out = ''
      let err = ''
      for (let i = 0; i < n; i++) {
        out += tag + ' ' + i + ' ' + 'x'.repeat((i * 37) % 8000) + '\\n'
        if (i % 100 === 0) err += tag + ' err ' + i + '\\n'
      }
      process.stdout.write(out + tag + ' end\\n')
      process.stderr.write(err + tag + ' end\\n')
    }
    s.end('ok')
  }).listen(process.env.PORT, process.env.HOST)`

const expectedOut = (tag, n) => [...Array.from({ length: n }, (_, i) => `${tag} ${i} ${'x'.repeat((i * 37) % 8000)}`), `${tag} end`]
const expectedErr = (tag, n) => [...Array.from({ length: Math.ceil(n / 100) }, (_, i) => `${tag} err ${i * 100}`), `${tag} end`]

/** Collects the lines of `kind` that start with `tag` until `tag end`; resolves with them. */
function collect(pm, kind, tag) {
  const lines = []
  let listener
  const done = new Promise((resolve) => {
    listener = (line) => {
      if (!line.startsWith(`${tag} `)) return
      lines.push(line)
      if (line === `${tag} end`) resolve(lines)
    }
    pm.on(kind, listener)
  })
  return { done, stop: () => pm.off(kind, listener) }
}

test('a stdout/stderr listener added after the start gets every line, whole and in order, also after all were removed and one added again', { timeout: 60000 }, async (t) => {
  const pm = new ProcessManager({
    name: 'output-events', command: process.execPath, args: ['-e', BACKEND], stateDir: tempDir(t), port: await freeRun(3), logger: false,
  })
  t.after(() => pm.stopBackend())
  const b = await pm.startBackend(ROOT)
  assert.equal(pm.listenerCount('stdout'), 0)

  const n = 3000
  const out = collect(pm, 'stdout', 'a')
  const err = collect(pm, 'stderr', 'a')
  await httpGet(`${b.url}/burst?n=${n}&tag=a`)
  assert.deepEqual(await out.done, expectedOut('a', n))
  assert.deepEqual(await err.done, expectedErr('a', n))

  // Nobody listens: nothing is asked of the listeners that left.
  out.stop()
  err.stop()
  assert.equal(pm.listenerCount('stdout') + pm.listenerCount('stderr'), 0)
  let late = 0
  const counting = () => late++
  await httpGet(`${b.url}/burst?n=50&tag=b`)
  // Listening again (through `once` first, which adds and removes a listener of its own).
  const first = new Promise((resolve) => pm.once('stdout', resolve))
  pm.on('stdout', counting)
  const again = collect(pm, 'stdout', 'c')
  await httpGet(`${b.url}/burst?n=${n}&tag=c`)
  assert.deepEqual(await again.done, expectedOut('c', n))
  assert.equal(typeof (await first), 'string')
  assert.ok(late >= n + 1, `the second listener saw ${late} lines`)
  again.stop()
  pm.removeAllListeners('stdout')
  assert.equal(pm.listenerCount('stdout'), 0)
})
