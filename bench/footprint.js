'use strict'
// Footprint: require() time, the size of the .node binary, and the memory (RSS) that loading the addon and
// managing one running backend add to the app process. Each figure comes from fresh Node processes.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const { summary } = require('./lib')

const ROOT = path.resolve(__dirname, '..')
const FIXTURE = path.join(ROOT, '__test__', 'fixtures', 'backend.js')

function fresh(code) {
  return JSON.parse(execFileSync(process.execPath, ['-e', code], { cwd: ROOT, encoding: 'utf8' }))
}

module.exports = async function footprint({ runs }) {
  const requireMs = []
  for (let i = 0; i < Math.max(10, Math.min(runs, 30)); i++) {
    requireMs.push(fresh(`const t = performance.now(); require(${JSON.stringify(ROOT)}); console.log(JSON.stringify(performance.now() - t))`))
  }
  const binary = fs.readdirSync(ROOT).find((f) => f.endsWith('.node'))
  const rss = fresh(`
    const fs = require('node:fs'), os = require('node:os'), path = require('node:path')
    const rss = () => { global.gc?.(); return process.memoryUsage().rss }
    const before = rss()
    const { ProcessManager } = require(${JSON.stringify(ROOT)})
    const loaded = rss()
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-bench-'))
    const pm = new ProcessManager({ name: 'bench-rss', command: process.execPath, args: [${JSON.stringify(FIXTURE)}], port: 47000, stateDir: dir, logger: false })
    pm.on('stdout', () => {})
    pm.startBackend(dir).then(async (b) => {
      await new Promise((r) => setTimeout(r, 300))
      const running = rss()
      const backendRss = Number(fs.readFileSync('/proc/' + b.pid + '/statm', 'utf8').split(' ')[1]) * 4096
      await pm.stopBackend()
      fs.rmSync(dir, { recursive: true, force: true })
      console.log(JSON.stringify({ loadMiB: (loaded - before) / 2 ** 20, backendMiB: (running - loaded) / 2 ** 20, backendOwnMiB: backendRss / 2 ** 20 }))
    })`)
  // Threads and RSS of the app with 0, 10 and 50 running backends and with 5 backends of 2 replicas (issue 21,
  // docs/design.md §23: threads do not grow with backends). "0" is the app after one backend was started and
  // stopped. Small Python servers, ready when their port accepts; __test__/threads.test.js holds the bound.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-bench-'))
  let scale
  try {
    scale = JSON.parse(execFileSync(process.execPath, [path.join(ROOT, '__test__', 'fixtures', 'threads.js'), ROOT, dir, '47100', '10', '50', '5x2'], { cwd: ROOT, encoding: 'utf8' }))
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
  // The death guard's RSS.
  const guard = fresh(`
    const fs = require('node:fs'), os = require('node:os'), path = require('node:path')
    const { ProcessManager } = require(${JSON.stringify(ROOT)})
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-bench-'))
    const guarded = new ProcessManager({ name: 'bench-guarded', command: 'python3', args: ['-m', 'http.server', '{port}', '--bind', '{host}'], port: 47400, portRange: 5, ready: 'port', stateDir: dir, logger: false, deathGuard: 'guard' })
    guarded.startBackend(dir).then(async () => {
      // Children are listed by the thread that forked them.
      const kids = fs.readdirSync('/proc/self/task').flatMap((t) => fs.readFileSync('/proc/self/task/' + t + '/children', 'utf8').trim().split(' ').filter(Boolean).map(Number))
      const guard = kids.find((k) => fs.readFileSync('/proc/' + k + '/comm', 'utf8').trim() === 'sh')
      const guardRssKiB = guard ? Number(/VmRSS:\\s+(\\d+)/.exec(fs.readFileSync('/proc/' + guard + '/status', 'utf8'))[1]) : null
      await guarded.stopBackend()
      fs.rmSync(dir, { recursive: true, force: true })
      console.log(JSON.stringify({ guardRssKiB }))
    })`)
  const req = summary(requireMs)
  return {
    title: 'Footprint',
    unit: '',
    rows: [],
    figures: {
      requireMedianMs: req.median,
      requireP95Ms: req.p95,
      binaryFile: binary,
      binaryMiB: binary ? fs.statSync(path.join(ROOT, binary)).size / 2 ** 20 : null,
      rssAddedByLoadingMiB: rss.loadMiB,
      rssAddedByOneManagedBackendMiB: rss.backendMiB,
      backendOwnRssMiB: rss.backendOwnMiB,
      appThreadsWith0Backends: scale.base.threads,
      appThreadsWith10Backends: scale['10'].threads,
      appThreadsWith50Backends: scale['50'].threads,
      appThreadsWith5Backends2ReplicasEach: scale['5x2'].threads,
      appRssMiBWith0Backends: scale.base.rssMiB,
      appRssMiBWith10Backends: scale['10'].rssMiB,
      appRssMiBWith50Backends: scale['50'].rssMiB,
      appRssMiBWith5Backends2ReplicasEach: scale['5x2'].rssMiB,
      deathGuardRssKiB: guard.guardRssKiB,
    },
  }
}
