'use strict'
// Port finding: the first 50 ports of a range held by another process (most on 127.0.0.1, every fifth on
// ::1 only); each contender looks for a free port from the start of the range. Correctness: the answer must
// be bindable on every family (checked independently) and inside the range.
const { findAvailablePort } = require('..')
const native = require('../binding.js')
const { time, summary, bindableEverywhere, hold, freeRun } = require('./lib')

const HELD = 50
const RANGE = 100

module.exports = async function ports({ runs }) {
  const start = await freeRun(RANGE + 1)
  const end = start + RANGE
  const closers = []
  for (let p = start; p < start + HELD; p++) closers.push(await hold(p % 5 === 0 ? '::1' : '127.0.0.1', p))
  const { default: getPort, portNumbers, clearLockedPorts } = await import('get-port')
  const portfinder = require('portfinder')
  const { detectPort } = require('detect-port')

  const contenders = {
    'backend-process-manager': async () => {
      const port = await findAvailablePort(start, { endPort: end })
      native.releasePort(port) // each run starts from the same state, as a fresh process would
      return port
    },
    'get-port': async () => {
      const port = await getPort({ port: portNumbers(start, end) })
      clearLockedPorts()
      return port
    },
    portfinder: () => portfinder.getPortPromise({ port: start, stopPort: end }),
    // detect-port has no end of range: it tries 10 ports from the start, then takes any port the OS gives.
    'detect-port': () => detectPort(start),
  }
  const rows = []
  try {
    for (const [name, find] of Object.entries(contenders)) {
      const answers = new Set()
      const times = await time(async () => answers.add(await find()), runs)
      const wrong = []
      for (const port of answers) {
        if (port < start || port > end) wrong.push(`${port} (outside ${start}–${end})`)
        else if (!(await bindableEverywhere(port))) wrong.push(`${port} (not bindable on every address${port < start + HELD && port % 5 === 0 ? ': held on ::1' : ''})`)
      }
      const note = wrong.length ? `${wrong.length} of ${answers.size} distinct answers wrong, e.g. ${wrong.slice(0, 3).join(', ')}` : undefined
      rows.push({ name, ...summary(times), correct: wrong.length === 0, note, answers: [...answers].slice(0, 3) })
    }
  } finally {
    for (const close of closers) await close()
  }
  return { title: `Port finding (ports ${start}–${start + HELD - 1} held, every 5th on ::1 only)`, unit: 'ms', rows }
}
