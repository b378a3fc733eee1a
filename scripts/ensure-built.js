'use strict'
// Builds the native addon when it is missing or older than its sources, and the dashboard's inlined chart
// library (lib/uplot.generated.js), so `npm test`, `npm start` and `npm run bench` work on a fresh clone.
// Usage: node scripts/ensure-built.js [--release]
// - without --release (the tests, the soak, the Node 24 run): a binary newer than its sources is used as it
//   is, of either profile; one is built when there is none or it is older than its sources: a release build,
//   or a debug one with BPM_BUILD=debug (faster to build while iterating; the JS suite takes ~1.7x as long on it).
// - with --release (`npm start`, `npm run bench`): the binary must be a release build; a debug one, or one
//   whose profile is unknown, is rebuilt.
// The profile of the host's binary is noted by scripts/build.js in target/addon-profile.json, with the
// binary's size and time, so that a binary built some other way does not pass for a known profile.
const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')

const root = path.resolve(__dirname, '..')
const triple = { 'linux-x64': 'linux-x64-gnu', 'linux-arm64': 'linux-arm64-gnu', 'darwin-x64': 'darwin-x64', 'darwin-arm64': 'darwin-arm64', 'win32-x64': 'win32-x64-msvc', 'win32-arm64': 'win32-arm64-msvc' }[`${process.platform}-${process.arch}`]
const binary = path.join(root, `backend-process-manager.${triple}.node`)
const STAMP = path.join(root, 'target', 'addon-profile.json')

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

/** Notes that the host's binary, as it is now, was built with `profile`. */
function stamp(profile) {
  const st = fs.statSync(binary)
  fs.mkdirSync(path.dirname(STAMP), { recursive: true })
  fs.writeFileSync(STAMP, `${JSON.stringify({ binary: path.basename(binary), profile, size: st.size, mtimeMs: st.mtimeMs })}\n`)
}

/** 'release', 'debug', or null: the profile noted for the host's binary, if the note is about this file. */
function builtProfile() {
  try {
    const note = JSON.parse(fs.readFileSync(STAMP, 'utf8'))
    const st = fs.statSync(binary)
    return note.binary === path.basename(binary) && note.size === st.size && note.mtimeMs === st.mtimeMs ? note.profile : null
  } catch {
    return null
  }
}

function main() {
  const release = process.argv.includes('--release')
  require('./build-dashboard.js').write()
  const fresh = fs.existsSync(binary) && fs.statSync(binary).mtimeMs >= newestSource()
  const profile = fresh ? builtProfile() : null
  if (fresh && (!release || profile === 'release')) return 0
  const wanted = !release && process.env.BPM_BUILD === 'debug' ? 'debug' : 'release'
  const why = !fs.existsSync(binary) ? 'none is built' : !fresh ? 'it is older than its sources' : `the one there is ${profile ? `a ${profile}` : 'of an unknown'} build`
  console.log(`building the native addon (${wanted}: ${why})…`)
  const result = spawnSync(process.execPath, [path.join(__dirname, 'build.js'), ...(wanted === 'release' ? ['--release'] : [])], { cwd: root, stdio: 'inherit' })
  return result.status ?? 1
}

if (require.main === module) process.exit(main())
module.exports = { stamp }
