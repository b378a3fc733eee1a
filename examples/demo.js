'use strict'
// The main job end to end (`npm start`): another program holds the preferred port, the manager starts the
// example backend on the next free port, health-checks it, shows the status table, and stops it gracefully.
const path = require('node:path')
const { spawn } = require('node:child_process')
const { ProcessManager, isPortAvailable, findPortHolders, listRecords } = require('..')
const { recordsTable } = require('../lib/format.js')

const say = (text = '') => console.log(text)
const step = (n, text) => say(`\n${n}. ${text}`)

/**
 * A stand-in for "another program" on the preferred port: a child process listening on it. It exits when
 * its stdin closes, so it ends with the demo however the demo ends.
 */
async function holdPort(port) {
  const code = `require('node:net').createServer().listen(${port}, '127.0.0.1', () => console.log('listening'));
    process.stdin.on('end', () => process.exit(0)).resume()`
  const holder = spawn(process.execPath, ['-e', code], { stdio: ['pipe', 'pipe', 'inherit'] })
  await new Promise((resolve, reject) => {
    holder.stdout.once('data', resolve)
    holder.once('exit', (code) => reject(new Error(`the port holder exited with code ${code}`)))
  })
  return holder
}

async function main() {
  const root = path.resolve(__dirname, '..')
  // The preferred port: 8000 as in the original setup, or the first free one after it on a busy machine.
  let preferred = 8000
  while (!(await isPortAvailable(preferred))) preferred++

  step(1, `Another program takes the preferred port ${preferred}`)
  const holder = await holdPort(preferred)
  try {
    const [held] = await findPortHolders([preferred])
    say(`   port ${preferred} is now held by pid ${held?.pid ?? '?'} (${held?.name ?? 'unknown'})`)

    step(2, 'Start the example backend with the manager')
    const pm = new ProcessManager({
      name: 'demo-backend',
      entry: 'examples/backend/server.js',
      port: preferred,
      logger: { info: (m) => say(`   ${m}`), warn: (m) => say(`   ${m}`), error: (m) => say(`   ${m}`) },
    })
    pm.on('stdout', (line) => say(`   backend> ${line}`))
    pm.on('stderr', (line) => say(`   backend! ${line}`))
    const backend = await pm.startBackend(root)
    say(`   => running: pid ${backend.pid}, port ${backend.port} (fallback from ${preferred}), ${backend.url}`)

    step(3, 'Health check')
    const healthy = await pm.checkBackendHealth(backend.port)
    const body = await (await fetch(`${backend.url}/health`)).text()
    say(`   GET ${backend.url}/health -> ${healthy ? 'healthy' : 'NOT healthy'}: ${body}`)

    step(4, 'Status (what `backend-pm status` shows)')
    const records = await listRecords(pm.options.stateDir)
    say(recordsTable(records.filter((r) => r.name === 'demo-backend')).replace(/^/gm, '   '))

    step(5, 'Graceful stop')
    const result = await pm.stopBackend()
    say(`   => stopped pid ${result.pid}: exit code ${result.exitCode}, ${result.forced ? 'force-killed' : 'graceful (no force kill needed)'}, ${result.durationMs} ms`)
    const left = (await listRecords(pm.options.stateDir)).filter((r) => r.name === 'demo-backend')
    say(`   records left: ${left.length}, port ${backend.port} free again: ${await pm.isPortAvailable(backend.port)}`)
    if (!healthy || result.forced || left.length > 0) process.exitCode = 1
  } finally {
    holder.kill()
  }
  say('\nDone.')
}

main().catch((err) => {
  console.error(`demo failed: ${err.message}${err.code ? ` (${err.code})` : ''}`)
  process.exitCode = 1
})
