'use strict'
// Installed as users install it: the platform package is made by `napi artifacts` for this machine's
// target, both packages are packed with `npm pack`, installed into a fresh project outside this repository
// (no access to its node_modules), and used there: require, start and stop the example backend, run the CLI.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const { ROOT, tempDir, isAlive } = require('./helpers')

const TRIPLE = { 'linux-x64': ['x86_64-unknown-linux-gnu', 'linux-x64-gnu'] }[`${process.platform}-${process.arch}`]
const NPM = process.platform === 'win32' ? 'npm.cmd' : 'npm'
const npm = (args, cwd) => execFileSync(NPM, args, { cwd, encoding: 'utf8', env: { ...process.env, NODE_PATH: '' } })

test('the packed packages install into a fresh project and work there', { skip: !TRIPLE && 'packaging is tested on linux x64' }, async (t) => {
  const [target, platform] = TRIPLE
  const binaryName = `backend-process-manager.${platform}.node`
  const work = tempDir(t, 'bpm-pack-')

  // 1. napi packaging for the local target: the built binary goes into its platform package.
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'))
  pkg.napi.targets = [target]
  fs.writeFileSync(path.join(work, 'package.json'), JSON.stringify(pkg, null, 2))
  fs.cpSync(path.join(ROOT, 'npm', platform), path.join(work, 'npm', platform), { recursive: true })
  fs.mkdirSync(path.join(work, 'artifacts', `bindings-${target}`), { recursive: true })
  fs.copyFileSync(path.join(ROOT, binaryName), path.join(work, 'artifacts', `bindings-${target}`, binaryName))
  execFileSync(process.execPath, [path.join(ROOT, 'node_modules', '@napi-rs', 'cli', 'dist', 'cli.js'), 'artifacts', '--cwd', work, '-d', 'artifacts', '--npm-dir', 'npm'], { stdio: 'pipe' })

  // 2. npm pack both packages; the main package ships only what users need. Packed from a built checkout
  // it also carries this machine's binary (so a local build can be installed into another app); packed
  // as the release does (no binary at the top), it carries none.
  const [platformPack] = JSON.parse(npm(['pack', '--json', '--pack-destination', work], path.join(work, 'npm', platform)))
  assert.deepEqual(platformPack.files.map((f) => f.path).sort(), ['README.md', binaryName, 'package.json'])
  const localTarballs = path.join(work, 'local')
  fs.mkdirSync(localTarballs)
  const [localPack] = JSON.parse(npm(['pack', '--json', '--pack-destination', localTarballs], ROOT))
  const shipped = localPack.files.map((f) => f.path).filter((f) => f !== binaryName).sort()
  assert.deepEqual(shipped, ['LICENSE', 'README.md', 'binding.d.ts', 'binding.js', 'cli.js', 'electron.d.ts', 'index.d.ts', 'index.js', 'lib/dashboard-page.js', 'lib/dashboard.js', 'lib/electron.js', 'lib/format.js', 'lib/group.js', 'lib/js-regex.js', 'lib/monitor.js', 'lib/uplot.generated.js', 'package.json'])
  assert.ok(localPack.files.some((f) => f.path === binaryName), 'a built checkout packs its binary')
  const release = path.join(work, 'release')
  for (const file of shipped) fs.cpSync(path.join(ROOT, file), path.join(release, file), { recursive: true })
  // The copy already holds what `prepack` generates (the dashboard's inlined chart library), and not the
  // script that generates it.
  const [mainPack] = JSON.parse(npm(['pack', '--json', '--ignore-scripts', '--pack-destination', work], release))
  assert.deepEqual(mainPack.files.map((f) => f.path).sort(), shipped)
  t.diagnostic(`main package ${mainPack.size} bytes packed; platform package ${platformPack.size} bytes packed`)

  // 3. A fresh app project, outside the repository, installs both tarballs.
  const app = path.join(work, 'app')
  fs.mkdirSync(path.join(app, 'backend-nodejs'), { recursive: true })
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }))
  fs.copyFileSync(path.join(ROOT, 'examples', 'backend', 'server.js'), path.join(app, 'backend-nodejs', 'server.js'))
  npm(['install', '--no-audit', '--no-fund', '--offline', path.join(work, mainPack.filename), path.join(work, platformPack.filename)], app)
  const installed = path.join(app, 'node_modules', 'backend-process-manager')
  assert.ok(!fs.readdirSync(installed).some((f) => f.endsWith('.node')), 'the binary comes from the platform package')

  // 4. Use it there, with the defaults of the original setup (backend-nodejs/server.js, port 8000…).
  const stateDir = path.join(work, 'state')
  const script = `
    const http = require('node:http')
    const { ProcessManager } = require('backend-process-manager')
    // The Electron helper is a subpath export of the installed package.
    if (typeof require('backend-process-manager/electron').manage !== 'function') throw new Error('no manage()')
    const binary = require.resolve('backend-process-manager-${platform}')
    const pm = new ProcessManager({ stateDir: ${JSON.stringify(stateDir)}, logger: false })
    pm.startBackend(process.cwd()).then(async (b) => {
      const status = await new Promise((resolve, reject) => http.get(b.url + '/health', (res) => { res.resume(); resolve(res.statusCode) }).on('error', reject))
      const stopped = await pm.stopBackend()
      // The dashboard works from the installed package alone (its chart library is inlined, not a dependency).
      const dashboard = await pm.dashboard()
      const page = await new Promise((resolve, reject) => http.get(dashboard.url, (res) => { let body = ''; res.on('data', (d) => (body += d)); res.on('end', () => resolve({ status: res.statusCode, uplot: body.includes('leeoniya/uPlot') })) }).on('error', reject))
      await dashboard.close()
      console.log(JSON.stringify({ binary, pid: b.pid, status, stopped, page }))
    })`
  const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { cwd: app, encoding: 'utf8', env: { ...process.env, NODE_PATH: '' } }))
  assert.ok(out.binary.startsWith(path.join(app, 'node_modules')), out.binary)
  assert.equal(out.status, 200)
  assert.equal(out.stopped.forced, false)
  assert.deepEqual(out.page, { status: 200, uplot: true })
  assert.equal(isAlive(out.pid), false)
  assert.deepEqual(fs.readdirSync(stateDir).filter((f) => f !== 'logs'), [], 'no record left (the logs folder stays)')

  // 5. The CLI is linked as a bin.
  const help = execFileSync(path.join(app, 'node_modules', '.bin', 'backend-pm'), ['--help'], { cwd: app, encoding: 'utf8' })
  assert.match(help, /Usage: backend-pm <command>/)

  // 6. The tarball of a built checkout alone installs and loads its own binary.
  const local = path.join(work, 'local-app')
  fs.mkdirSync(local)
  fs.writeFileSync(path.join(local, 'package.json'), JSON.stringify({ name: 'local-app', version: '1.0.0', private: true }))
  npm(['install', '--no-audit', '--no-fund', '--offline', '--omit=optional', path.join(localTarballs, localPack.filename)], local)
  const loaded = execFileSync(process.execPath, ['-e', `const m = require('backend-process-manager'); console.log(typeof m.ProcessManager, m.defaultStateDir().length > 0)`], { cwd: local, encoding: 'utf8', env: { ...process.env, NODE_PATH: '' } })
  assert.equal(loaded.trim(), 'function true')
})
