'use strict'
// The JS suite on a Windows node.exe (under Wine here, through scripts/test-wine.sh): each __test__ file on
// its own with `node --test`, the addon given as argv[2] (NAPI_RS_NATIVE_LIBRARY_PATH, so binding.js loads it).
// Prints per file how many tests passed, failed and were skipped (skips say why: POSIX-only), and the names of
// the failures; the full TAP output of each file goes to target/wine-js/<file>.tap.
// Usage: node scripts/test-wine.js ADDON.node [file.test.js ...]   (default: every __test__/*.test.js)
const fs = require('node:fs')
const path = require('node:path')
const { spawn } = require('node:child_process')

const root = path.join(__dirname, '..')
const dir = path.join(root, '__test__')
const addon = path.resolve(process.argv[2] ?? '')
if (!process.argv[2] || !fs.existsSync(addon)) {
  console.error(`usage: node scripts/test-wine.js ADDON.node [file.test.js ...] (no addon at ${addon})`)
  process.exit(2)
}
const wanted = process.argv.slice(3).map((f) => path.basename(f))
const files = fs.readdirSync(dir).filter((f) => f.endsWith('.test.js') && (wanted.length === 0 || wanted.includes(f))).sort()
const logDir = path.join(root, 'target', 'wine-js')
fs.mkdirSync(logDir, { recursive: true })
// A file that hangs is ended (with its tree: node --test puts the file's process in a job on Windows).
const FILE_TIMEOUT_MS = Number(process.env.BPM_WINE_FILE_TIMEOUT_MS ?? 300000)
const CONCURRENCY = Number(process.env.BPM_WINE_CONCURRENCY ?? 2)

function runFile(file) {
  return new Promise((resolve) => {
    const started = Date.now()
    const child = spawn(process.execPath, ['--test', '--test-reporter=tap', path.join(dir, file)], {
      cwd: root,
      env: { ...process.env, NAPI_RS_NATIVE_LIBRARY_PATH: addon },
      stdio: ['ignore', 'pipe', 'pipe'],
      windowsHide: true,
    })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (out += d))
    const timer = setTimeout(() => {
      out += `\n# ${file}: ended after ${FILE_TIMEOUT_MS} ms\n`
      child.kill()
    }, FILE_TIMEOUT_MS)
    child.on('close', (code) => {
      clearTimeout(timer)
      fs.writeFileSync(path.join(logDir, `${file}.tap`), out)
      const count = (key) => Number(new RegExp(`^# ${key} (\\d+)$`, 'm').exec(out)?.[1] ?? NaN)
      // Top-level failures only ("not ok" at the start of a line); their subtests are in the .tap file.
      const failures = [...out.matchAll(/^not ok \d+ - (.*)$/gm)]
        .filter((m) => !/ # SKIP\b/.test(m[1]))
        .map((m) => `${m[1]}${whyFailed(out.slice(m.index + m[0].length))}`)
      resolve({ file, code, tests: count('tests'), pass: count('pass'), fail: count('fail'), skipped: count('skipped'), failures, seconds: (Date.now() - started) / 1000 })
    })
  })
}

/**
 * What a CI log needs to tell a failure without the .tap file: from the YAML block after a top-level
 * "not ok", its error (first 4 lines) and the test file's line in its stack.
 */
function whyFailed(rest) {
  const block = /^  ---\n([\s\S]*?)^  \.\.\.$/m.exec(rest)?.[1] ?? ''
  const inline = /^  error: '(.*)'$/m.exec(block)?.[1]
  const lines = inline !== undefined ? [inline] : (/^  error: \|-\n((?:    .*\n)+)/m.exec(block)?.[1] ?? '').split('\n').map((l) => l.trim())
  // A file whose process ended midway fails as a whole ("test failed"): how it ended tells a crash from a kill.
  const exit = /^  exitCode: (.*)$/m.exec(block)?.[1]
  const signal = /^  signal: (.*)$/m.exec(block)?.[1]
  const ended = exit !== undefined ? [`its process ended with exit code ${exit}${signal && signal !== '~' ? `, signal ${signal}` : ''}`] : []
  const message = [...lines.filter(Boolean).slice(0, 4), ...ended].join(' / ')
  const at = /\\__test__\\([^\\\n]+\.js:\d+):\d+\)?$/m.exec(block)?.[1] ?? /\/__test__\/([^/\n]+\.js:\d+):\d+\)?$/m.exec(block)?.[1]
  return message || at ? `\n      ${message}${at ? ` (at ${at})` : ''}` : ''
}

/**
 * A file is run again (up to `WINE_RUNS` runs in all, the earlier ones reported) when Wine failed it, not a
 * test: its run ended without node --test's summary (its process ended early, even with exit code 0, seen
 * under Wine; once its rerun right after ended at once too), or a process start failed with Wine's own
 * ERROR_INTERNAL_ERROR (os error 1359: seen once in a `node.exe` start with two files running, not on a
 * rerun). Node reports that error as `spawn UNKNOWN` (libuv has no name for it): the fixture backend says
 * so when it cannot start a grandchild. A test that fails is never run again; the last run counts like any
 * other.
 */
const WINE_START_FAILURE = /\(os error 1359\)|could not start a grandchild: spawn UNKNOWN/
const WINE_RUNS = 3
async function runFileChecked(file) {
  const tap = path.join(logDir, `${file}.tap`)
  const reruns = []
  for (let run = 1; ; run++) {
    const result = await runFile(file)
    const why = Number.isNaN(result.tests)
      ? `ended after ${result.seconds.toFixed(1)} s without a summary (exit ${result.code})`
      : result.code !== 0 && WINE_START_FAILURE.test(fs.readFileSync(tap, 'utf8'))
        ? `failed (${result.failures.join('; ')}) with Wine's internal error in a process start`
        : null
    if (why === null || run === WINE_RUNS) return reruns.length === 0 ? result : { ...result, rerun: reruns.join('; ') }
    fs.renameSync(tap, path.join(logDir, `${file}.${run}.tap`))
    reruns.push(`run ${run} ${why} (${file}.${run}.tap)`)
  }
}

async function main() {
  console.log(`JS suite on ${process.execPath} ${process.version} ${process.platform}/${process.arch}, addon ${addon}`)
  const queue = [...files]
  const results = []
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (queue.length > 0) results.push(await runFileChecked(queue.shift()))
  }))
  results.sort((a, b) => a.file.localeCompare(b.file))
  const total = { tests: 0, pass: 0, fail: 0, skipped: 0 }
  console.log('file                      tests  pass  fail  skip  seconds')
  for (const r of results) {
    for (const k of Object.keys(total)) total[k] += Number.isNaN(r[k]) ? 0 : r[k]
    console.log(`${r.file.padEnd(24)} ${String(r.tests).padStart(6)} ${String(r.pass).padStart(5)} ${String(r.fail).padStart(5)} ${String(r.skipped).padStart(5)} ${r.seconds.toFixed(1).padStart(8)}${r.code === 0 ? '' : `  exit ${r.code}`}`)
    if (r.rerun) console.log(`    rerun: ${r.rerun}`)
    if (Number.isNaN(r.tests)) console.log('    no summary: the file did not run to its end')
    for (const f of r.failures) console.log(`    not ok: ${f}`)
  }
  console.log(`${'total'.padEnd(24)} ${String(total.tests).padStart(6)} ${String(total.pass).padStart(5)} ${String(total.fail).padStart(5)} ${String(total.skipped).padStart(5)}`)
  console.log(`TAP output per file: ${logDir}`)
  process.exit(results.every((r) => r.code === 0 && !Number.isNaN(r.tests)) ? 0 : 1)
}

main()
