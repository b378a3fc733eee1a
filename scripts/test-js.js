'use strict'
// Runs the JS tests (__test__/*.test.js) with Node's own test runner: `node scripts/test-js.js [node binary]`.
// The file list is explicit because `node --test <folder>` means different things across Node versions.
const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')

const dir = path.join(__dirname, '..', '__test__')
const files = fs.readdirSync(dir).filter((f) => f.endsWith('.test.js')).sort().map((f) => path.join(dir, f))
const node = process.argv[2] ? path.resolve(process.argv[2]) : process.execPath
// The tests start helper scripts with `process.execPath`, so they run on the same Node as the runner.
const result = spawnSync(node, ['--test', '--test-concurrency=2', ...files], { stdio: 'inherit' })
process.exit(result.status ?? 1)
