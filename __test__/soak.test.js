'use strict'
// The short soak (the long one is `npm run soak`): repeated start/stop with crashes, stops during start and
// parallel managers leaves no process, no record and no descriptor behind, and memory flat.
const test = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { execFile } = require('node:child_process')
const { linuxOnly, tempDir } = require('./helpers')

/** Runs scripts/soak.js with `args` in a state folder the test removes; its JSON report, or a failure that says how it ended. */
async function soak(t, args) {
  const script = path.join(__dirname, '..', 'scripts', 'soak.js')
  const env = { ...process.env, SOAK_STATE_DIR: tempDir(t) }
  // The timeout only guards against a hang: a loaded machine has taken over 120 s for the short soak.
  const { stdout, stderr, code, signal } = await new Promise((resolve) => {
    execFile(process.execPath, ['--expose-gc', script, ...args, '--json'], { timeout: 300000, env }, (err, stdout, stderr) => resolve({ code: err ? err.code : 0, signal: err?.signal ?? null, stdout, stderr }))
  })
  assert.ok(stdout.trim().startsWith('{'), `the soak ended without its report (code ${code}, signal ${signal}): ${stderr.slice(-2000)}`)
  return { ...JSON.parse(stdout), stderr, code }
}

test('short soak: 50 mixed cycles after warm-up, then 20 starts from the exit handler, leave nothing behind', { skip: linuxOnly('counts descriptors in /proc/self/fd') }, async (t) => {
  const { ok, figures, limits, stderr, code } = await soak(t, ['--cycles', '50', '--warmup', '100', '--from-exit', '20'])
  t.diagnostic(JSON.stringify(figures))
  assert.equal(figures.processesLeft, 0)
  assert.equal(figures.recordsLeft, 0)
  assert.ok(Math.abs(figures.fdsAfter - figures.fdsBefore) <= limits.fdDelta, `fds ${figures.fdsBefore} -> ${figures.fdsAfter}`)
  assert.ok(figures.anonGrowthMiB < limits.anonGrowthMiB, `anonymous memory grew ${figures.anonGrowthMiB} MiB (RSS ${figures.rssGrowthMiB} MiB)`)
  assert.ok(figures.crashes > 0 && figures.stopsDuringStart > 0 && figures.parallel > 0 && figures.restarts > 0)
  assert.equal(figures.startsFromExit, 20, `started again from the exit handler: ${figures.startsFromExit} of 20 (${figures.lastFromExitError})`)
  assert.equal(ok, true)
  assert.equal(code, 0, stderr)
})

test('short restart soak: 30 kill → restart → stop cycles leave nothing behind', { skip: linuxOnly('counts descriptors in /proc/self/fd') }, async (t) => {
  const { ok, figures, limits, stderr, code } = await soak(t, ['--restarts', '--cycles', '30', '--warmup', '20', '--from-exit', '0'])
  t.diagnostic(JSON.stringify(figures))
  assert.equal(figures.restarts, 50)
  assert.equal(figures.processesLeft, 0)
  assert.equal(figures.recordsLeft, 0)
  assert.ok(Math.abs(figures.fdsAfter - figures.fdsBefore) <= limits.fdDelta, `fds ${figures.fdsBefore} -> ${figures.fdsAfter}`)
  assert.equal(ok, true)
  assert.equal(code, 0, stderr)
})
