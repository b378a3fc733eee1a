'use strict'
// One manager in a process of its own (forked by supervision.js): starts the fixture backend, lets it run
// for a while — with a watchdog every `interval` ms, or none — and reports the CPU this process spent per
// second meanwhile (its native threads included). Usage: fork('bench/supervised.js', [dir, ms, interval]).
const path = require('node:path')
const { ProcessManager } = require('..')
const { freeRun, sleep } = require('./lib')

const [dir, ms, interval] = process.argv.slice(2)

async function main() {
  const pm = new ProcessManager({
    name: `bench-watchdog-${interval}`, command: process.execPath, args: [path.join(__dirname, '..', '__test__', 'fixtures', 'backend.js')],
    port: await freeRun(1, 43000 + Number(interval)), portRange: 50, stateDir: dir, logger: false, healthIntervalMs: Number(interval),
  })
  await pm.startBackend(dir)
  const before = process.cpuUsage()
  const began = performance.now()
  await sleep(Number(ms))
  const used = process.cpuUsage(before)
  const seconds = (performance.now() - began) / 1000
  await pm.stopBackend()
  process.send({ cpuMsPerSecond: (used.user + used.system) / 1000 / seconds }, () => process.exit(0))
}

main()
