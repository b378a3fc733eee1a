'use strict'
// Makes the monitoring pictures of docs/cli.md from real data: four fixture backends (one under varying load, one
// with grandchildren, one that crashes and is restarted, one that wants a token) are watched for about a
// minute; then the dashboard is photographed in headless Chromium (docs/dashboard.png) and a frame of
// `backend-pm monitor` is read from a tmux pane (printed). Needs /usr/bin/chromium and tmux.
// Usage: node scripts/monitoring-docs.js [seconds]
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const http = require('node:http')
const { execFileSync, spawnSync } = require('node:child_process')
const { ProcessManager } = require('..')
const { serveDashboard, recordsSource } = require('../lib/dashboard.js')

const ROOT = path.join(__dirname, '..')
const FIXTURE = path.join(ROOT, '__test__', 'fixtures', 'backend.js')
const seconds = Number(process.argv[2] ?? 60)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

async function main() {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-docs-'))
  const stateDir = path.join(work, 'backend-process-manager')
  fs.mkdirSync(stateDir, { mode: 0o700 })
  const make = (name, port, extra = {}) => new ProcessManager({ name, command: process.execPath, args: [FIXTURE], port, portRange: 20, stateDir, logger: false, ...extra })
  const managers = [
    make('api', 8000),
    make('jobs', 8100, { env: { GRANDCHILDREN: '2' } }),
    make('reports', 8200, { restart: { initialDelayMs: 200 } }),
    make('search', 8300, { token: true, env: { REQUIRE_TOKEN: '1' } }),
  ]
  const socket = path.join(work, 'tmux.sock')
  let dashboard = null
  let context = null
  let loading = true
  try {
    const [api] = await Promise.all(managers.map((pm) => pm.startBackend(ROOT)))
    dashboard = await serveDashboard({ source: recordsSource({ stateDir, stopTimeoutMs: 2000 }) })
    const { chromium } = require('playwright-core')
    context = await chromium.launchPersistentContext(path.join(work, 'profile'), {
      executablePath: '/usr/bin/chromium',
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: { width: 1280, height: 1000 },
    })
    const page = context.pages()[0] ?? (await context.newPage())
    await page.goto(dashboard.url)
    execFileSync('tmux', ['-S', socket, 'new-session', '-d', '-x', '80', '-y', '24', `${process.execPath} ${path.join(ROOT, 'cli.js')} monitor --state-dir ${stateDir}`], { env: { ...process.env, TMUX: '' } })

    // Load on the api that rises and falls, and a crash of the reports backend a third of the way in.
    const load = (async () => {
      const started = Date.now()
      while (loading) {
        const t = (Date.now() - started) / 1000
        const perTick = Math.round(6 + 6 * Math.sin(t / 6))
        await Promise.all(Array.from({ length: perTick }, () => new Promise((resolve) => http.get(`${api.url}/work`, { agent: false }, (res) => res.resume().on('end', resolve)).on('error', resolve))))
        await sleep(20)
      }
    })()
    await sleep((seconds * 1000) / 3)
    process.kill(managers[2].backend.pid, 'SIGKILL')
    await sleep((seconds * 2000) / 3)

    const frame = execFileSync('tmux', ['-S', socket, 'capture-pane', '-p'], { encoding: 'utf8' }).replace(/\s+$/, '')
    fs.mkdirSync(path.join(ROOT, 'docs'), { recursive: true })
    const shot = path.join(ROOT, 'docs', 'dashboard.png')
    await page.screenshot({ path: shot, fullPage: true })
    loading = false
    await load
    console.log(`wrote ${path.relative(process.cwd(), shot)}\n\nbackend-pm monitor, ${new Date().toISOString()}:\n${frame}`)
  } finally {
    loading = false
    spawnSync('tmux', ['-S', socket, 'kill-server'], { stdio: 'ignore' })
    await context?.close()
    await dashboard?.close()
    await Promise.all(managers.map((pm) => pm.stopBackend()))
    fs.rmSync(work, { recursive: true, force: true })
  }
}

main().catch((err) => {
  console.error(err)
  process.exitCode = 1
})
