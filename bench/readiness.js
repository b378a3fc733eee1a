'use strict'
// Readiness: a backend that starts listening after a random 100–2000 ms and records that moment; every
// contender waits for the same backend at the same time, and we measure how long after the listen each one
// reports ready.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const http = require('node:http')
const { ProcessManager } = require('..')
const { now, sleep, summary, freeRun } = require('./lib')

const FIXTURE = path.join(__dirname, '..', '__test__', 'fixtures', 'backend.js')

/** The original hand-written manager: one GET, then a fixed 1000 ms between retries. */
async function originalWait(port, maxRetries = 30) {
  const ok = () => new Promise((resolve) => {
    http.get({ host: '127.0.0.1', port, path: '/health', agent: false, timeout: 1000 }, (res) => {
      res.resume()
      resolve(res.statusCode === 200)
    }).on('error', () => resolve(false))
  })
  for (let i = 0; i < maxRetries; i++) {
    if (await ok()) return true
    await sleep(1000)
  }
  return false
}

module.exports = async function readiness({ runs }) {
  const waitOn = require('wait-on')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-bench-'))
  const delays = { 'backend-process-manager startBackend': [], 'backend-process-manager waitForBackendReady': [], 'wait-on (defaults)': [], 'original manager (1000 ms retries)': [] }
  try {
    for (let run = 0; run < runs; run++) {
      const port = await freeRun(1, 30000 + (run % 40) * 211)
      const mark = path.join(dir, `listen-${run}`)
      const listenDelay = 100 + Math.floor(Math.random() * 1900)
      const pm = new ProcessManager({
        name: 'bench-ready', command: process.execPath, args: [FIXTURE], port, portRange: 0, stateDir: dir, logger: false,
        env: { LISTEN_DELAY_MS: String(listenDelay), LISTEN_MARK_FILE: mark },
      })
      const observer = new ProcessManager({ name: 'bench-observer', port, stateDir: dir, logger: false })
      const at = {}
      const stamp = (name) => () => (at[name] = now())
      await Promise.all([
        pm.startBackend(dir).then(stamp('backend-process-manager startBackend')),
        observer.waitForBackendReady(port, 40, 1000).then(stamp('backend-process-manager waitForBackendReady')),
        waitOn({ resources: [`http-get://127.0.0.1:${port}/health`], timeout: 30000 }).then(stamp('wait-on (defaults)')),
        originalWait(port).then(stamp('original manager (1000 ms retries)')),
      ])
      const listenedAt = Number(fs.readFileSync(mark, 'utf8').trim())
      for (const name of Object.keys(delays)) delays[name].push(at[name] - listenedAt)
      await pm.stopBackend()
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
  const rows = Object.entries(delays).map(([name, values]) => ({ name, ...summary(values), correct: true }))
  return { title: `Readiness: delay from the backend listening to "ready" (${runs} runs, listen after 100–2000 ms)`, unit: 'ms', rows }
}
