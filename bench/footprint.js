'use strict'
// Footprint: require() time, the size of the .node binary, and the memory (RSS) that loading the addon and
// managing one running backend add to the app process. Each figure comes from fresh Node processes.
const fs = require('node:fs')
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
    },
  }
}
