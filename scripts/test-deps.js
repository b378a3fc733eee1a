'use strict'
// What the JS tests need besides npm's packages, so that `npm test` passes on a fresh machine:
// - the Python servers that __test__/real-servers.test.js runs (uvicorn, gunicorn, flask and what they need),
//   at pinned versions, into .cache/pydeps with `pip install --target`: no virtualenv, nothing in the user's
//   site-packages. Idempotent: once installed, a stamp naming the pins makes the next run instant.
// - on Linux, the programs some tests drive: tmux (the monitor in a terminal), Debian's Chromium (the
//   dashboard in a browser), Go (`go run`). Missing ones are installed with apt-get when this runs as root
//   on a system that has it (Debian, Ubuntu); otherwise it says what to install, and those tests fail saying so.
// `node scripts/test-deps.js` installs both (npm test runs it first); require() it for `ensurePythonDeps()`
// and `PYDEPS` (PYTHONPATH).
const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')

const PYDEPS = path.resolve(__dirname, '..', '.cache', 'pydeps')
const PYTHON = process.env.PYTHON || 'python3'
// The whole dependency closure is pinned, so every machine runs the same servers.
const PINS = [
  'uvicorn==0.54.0',
  'h11==0.16.0',
  'click==8.5.1',
  'gunicorn==27.0.1',
  'flask==3.1.3',
  'werkzeug==3.1.9',
  'jinja2==3.1.6',
  'markupsafe==3.0.4',
  'itsdangerous==2.2.0',
  'blinker==1.9.0',
]

/** Installs the pinned packages unless they already are; throws with pip's output when that fails. */
function ensurePythonDeps() {
  const stamp = path.join(PYDEPS, '.pins')
  const wanted = `${PINS.join('\n')}\n`
  if (fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === wanted) return PYDEPS
  // Install next to the target and move it in place at the end: an interrupted install never looks complete.
  fs.mkdirSync(path.dirname(PYDEPS), { recursive: true })
  const staging = `${PYDEPS}.staging-${process.pid}`
  fs.rmSync(staging, { recursive: true, force: true })
  const args = ['-m', 'pip', 'install', '--disable-pip-version-check', '--no-input', '--quiet', '--only-binary=:all:', '--target', staging, ...PINS]
  const result = spawnSync(PYTHON, args, { encoding: 'utf8', env: { ...process.env, PIP_ROOT_USER_ACTION: 'ignore' } })
  if (result.status !== 0) {
    fs.rmSync(staging, { recursive: true, force: true })
    const why = result.error ? result.error.message : `${result.stdout}${result.stderr}`
    throw new Error(`could not install the Python test servers (${PYTHON} ${args.join(' ')}): ${why}`)
  }
  fs.writeFileSync(path.join(staging, '.pins'), wanted)
  fs.rmSync(PYDEPS, { recursive: true, force: true })
  fs.renameSync(staging, PYDEPS)
  return PYDEPS
}

// Program → the Debian package that has it.
const SYSTEM_TOOLS = { tmux: 'tmux', chromium: 'chromium', go: 'golang-go' }

/** Whether `program` is an executable file in a folder of PATH. */
function onPath(program) {
  return (process.env.PATH ?? '').split(path.delimiter).some((dir) => {
    try {
      fs.accessSync(path.join(dir, program), fs.constants.X_OK)
      return true
    } catch {
      return false
    }
  })
}

/**
 * Installs the missing test programs with apt-get when it can (Linux, root, apt-get present); returns the
 * Debian packages still missing (empty when all are there).
 */
function ensureSystemTools() {
  if (process.platform !== 'linux') return []
  const missing = () => Object.entries(SYSTEM_TOOLS).filter(([program]) => !onPath(program)).map(([, pkg]) => pkg)
  const packages = missing()
  if (packages.length === 0 || process.getuid() !== 0 || !onPath('apt-get')) return packages
  console.log(`installing the programs some tests drive: ${packages.join(' ')} (apt-get)…`)
  // Waits for another apt-get's lock instead of failing at once.
  const apt = (...args) => spawnSync('apt-get', ['-o', 'DPkg::Lock::Timeout=600', ...args], { stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } })
  apt('update', '-qq')
  apt('install', '-y', '-qq', ...packages)
  return missing()
}

module.exports = { ensurePythonDeps, ensureSystemTools, onPath, PYDEPS, PYTHON, PINS }

// Never fails `npm test` by itself: a test that needs what could not be installed fails, saying what it needs.
if (require.main === module) {
  // The Python servers serve tests that run on Linux only.
  if (process.platform === 'linux') {
    try {
      const started = Date.now()
      ensurePythonDeps()
      console.log(`Python test servers ready in ${path.relative(process.cwd(), PYDEPS) || PYDEPS} (${Date.now() - started} ms)`)
    } catch (err) {
      console.error(err.message)
    }
  }
  const missing = ensureSystemTools()
  if (missing.length > 0) console.error(`not installed (the tests that drive them will fail until they are): apt-get install -y ${missing.join(' ')}`)
}
