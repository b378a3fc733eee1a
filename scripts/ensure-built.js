'use strict'
// Builds the native addon when it is missing or older than its sources, and the dashboard's inlined chart
// library (lib/uplot.generated.js), so `npm test` and `npm start` work on a fresh clone. BPM_BUILD=debug
// builds the addon without optimisation (faster while iterating).
const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')

const root = path.resolve(__dirname, '..')
const triple = { 'linux-x64': 'linux-x64-gnu', 'linux-arm64': 'linux-arm64-gnu', 'darwin-x64': 'darwin-x64', 'darwin-arm64': 'darwin-arm64', 'win32-x64': 'win32-x64-msvc', 'win32-arm64': 'win32-arm64-msvc' }[`${process.platform}-${process.arch}`]
const binary = path.join(root, `backend-process-manager.${triple}.node`)

function newestSource() {
  let newest = 0
  const visit = (p) => {
    const st = fs.statSync(p)
    if (st.isDirectory()) for (const e of fs.readdirSync(p)) visit(path.join(p, e))
    else newest = Math.max(newest, st.mtimeMs)
  }
  for (const p of ['src', 'crates', 'Cargo.toml', 'Cargo.lock', 'build.rs']) visit(path.join(root, p))
  return newest
}

require('./build-dashboard.js').write()

const built = fs.existsSync(binary) ? fs.statSync(binary).mtimeMs : 0
if (built >= newestSource()) process.exit(0)

const script = process.env.BPM_BUILD === 'debug' ? 'build:debug' : 'build'
console.log(`building the native addon (npm run ${script})…`)
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm'
const result = spawnSync(npm, ['run', script], { cwd: root, stdio: 'inherit', shell: process.platform === 'win32' })
process.exit(result.status ?? 1)
