'use strict'
// Builds the native addon with napi-rs's CLI (`napi build --platform`, which also writes binding.js and
// binding.d.ts), then the dashboard's inlined chart library (scripts/build-dashboard.js), and notes which
// profile the host's binary was built with (scripts/ensure-built.js reads it: `npm run bench` wants a release
// build, the tests take either). Arguments go to `napi build`, so the release workflow's
// `npm run build -- --target aarch64-apple-darwin` cross-builds (with `napi build && …` in package.json they
// went to the last command instead). Usage: node scripts/build.js [--release] [napi build flags…]
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const { stamp } = require('./ensure-built.js')

const root = path.join(__dirname, '..')
const args = process.argv.slice(2)
const napi = path.join(root, 'node_modules', '.bin', process.platform === 'win32' ? 'napi.cmd' : 'napi')
const built = spawnSync(napi, ['build', '--platform', '--js', 'binding.js', '--dts', 'binding.d.ts', ...args], {
  cwd: root,
  stdio: 'inherit',
  shell: process.platform === 'win32',
})
if (built.status !== 0) process.exit(built.status ?? 1)
require('./build-dashboard.js').write()
// A cross build (`--target`) writes another platform's file; the host's binary is what the stamp describes.
if (!args.some((a) => a === '--target' || a.startsWith('--target=') || a === '-t')) stamp(args.includes('--release') || args.includes('-r') ? 'release' : 'debug')
