'use strict'
// backend-pm monitor: one frame (--once), the JSON snapshot, the sampler's arithmetic, and the live view in a
// real terminal (tmux): alternate screen, hidden cursor, `q` and SIGTERM give the terminal back.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFileSync, spawnSync } = require('node:child_process')
const { ROOT, CLI, tempDir, freeRun, fixtureManager, cli, recordOf, waitFor, isAlive, processTree, posixOnly, wineLacks, killAll } = require('./helpers')
const { RecordSampler, sparkline } = require('../lib/monitor.js')

const ANSI = /\x1b\[[0-9;?]*[A-Za-z]/g
/** Terminal columns of a line: every character the monitor prints (ASCII, blocks, …, ×, ·) takes one. */
const columns = (line) => [...line.replace(ANSI, '')].length

const LONG_NAME = 'a-backend-with-a-name-far-too-long-for-its-column'

/** Two running fixture backends in one state folder (one with a busy grandchild), and a stale record. */
async function twoBackends(t) {
  const first = fixtureManager(t, { name: 'alpha', port: await freeRun(3) })
  const second = fixtureManager(t, { name: LONG_NAME, port: await freeRun(3), stateDir: first.stateDir, env: { BUSY_GRANDCHILD: '1' } })
  const a = await first.pm.startBackend(ROOT)
  const b = await second.pm.startBackend(ROOT)
  const [busyLine] = await second.seen(/^GRANDCHILD \d+$/)
  const stale = recordOf({ name: 'gone', pid: 999999, port: 8123, exe: '/bin/false', startTime: 1, ownerPid: 999998, ownerStartTime: 1 })
  fs.writeFileSync(path.join(first.stateDir, 'gone-999999.json'), JSON.stringify(stale), { mode: 0o600 })
  return { stateDir: first.stateDir, a, b, busy: Number(busyLine.split(' ')[1]) }
}

test('monitor --once prints one frame of at most 80 columns with every record; --json the same as data', { skip: wineLacks('process CPU times: a spinning tree shows ~14 %') }, async (t) => {
  const { stateDir, a, b, busy } = await twoBackends(t)

  const once = await cli(['monitor', '--once', '--state-dir', stateDir])
  assert.equal(once.code, 0, once.stderr)
  const lines = once.stdout.trimEnd().split('\n')
  for (const line of lines) assert.ok(columns(line) <= 80, `${columns(line)} columns: ${JSON.stringify(line)}`)
  assert.doesNotMatch(once.stdout, /\x1b/, 'no escape sequences when the output is not a terminal')
  assert.match(lines[0], new RegExp(`^backend-pm monitor\\s+${stateDir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`))
  assert.match(lines[1], /^2 running, 1 stale/)
  assert.match(lines[2], /^NAME\s+STATE\s+PID\s+PORT\s+UPTIME\s+CPU\s+MEMORY\s+PRC\s+RST\s+HEALTH$/)
  assert.match(once.stdout, new RegExp(`^alpha\\s+running\\s+${a.pid}\\s+${a.port}\\s+\\d+s\\s+[\\d.]+%\\s+[\\d.]+ MiB\\s+1\\s+0\\s+200 [\\d.]+ms$`, 'm'))
  // The long name is cut to its column (with …); the busy grandchild makes two processes.
  assert.match(once.stdout, new RegExp(`^${LONG_NAME.slice(0, 13)}…\\s+running\\s+${b.pid}\\s+${b.port}\\s+\\d+s\\s+[\\d.]+%\\s+[\\d.]+ MiB\\s+2\\s+0\\s+200 [\\d.]+ms$`, 'm'))
  assert.match(once.stdout, /^gone\s+stale\s+999999\s+8123\s+-\s+-\s+-\s+-\s+0\s+-$/m)
  assert.equal(lines.filter((l) => /^\s+cpu .* mem /.test(l)).length, 2, 'a sparkline line per live backend')

  const json = await cli(['monitor', '--json', '--state-dir', stateDir])
  assert.equal(json.code, 0, json.stderr)
  const snap = JSON.parse(json.stdout)
  assert.equal(snap.stateDir, stateDir)
  assert.ok(Math.abs(snap.sampledAt - Date.now()) < 30000)
  const byName = new Map(snap.backends.map((x) => [x.name, x]))
  assert.deepEqual([...byName.keys()].sort(), [LONG_NAME, 'alpha', 'gone'].sort())
  const keys = ['id', 'name', 'group', 'state', 'file', 'pid', 'port', 'host', 'uptimeMs', 'cpuPercent', 'memoryBytes', 'processCount', 'restarts', 'healthy', 'healthStatus', 'healthLatencyMs', 'healthError', 'replicas']
  for (const x of snap.backends) assert.deepEqual(Object.keys(x), keys)
  const alpha = byName.get('alpha')
  assert.equal(alpha.pid, a.pid)
  assert.equal(alpha.port, a.port)
  assert.equal(alpha.state, 'running')
  assert.equal(alpha.file, path.join(stateDir, `alpha-${a.pid}.json`))
  assert.equal(alpha.healthStatus, 200)
  assert.ok(alpha.healthLatencyMs > 0 && alpha.healthLatencyMs < 1000)
  assert.ok(alpha.memoryBytes > 1e6)
  // CPU % is the rate between two readings: the spinning grandchild keeps its tree well above the idle one.
  const long = byName.get(LONG_NAME)
  assert.equal(long.processCount, 2)
  assert.ok(isAlive(busy))
  // Above idle (an idle tree reads ~0.0x %) even on a loaded machine: 16 % seen with a load average of 12 on
  // 2 cores, 3.4 % with the whole suite run under `nice -n 10` beside builds (the spinner inherits the nice).
  assert.ok(long.cpuPercent > 1, `a spinning tree at ${long.cpuPercent}%`)
  assert.ok(alpha.cpuPercent < long.cpuPercent, `idle ${alpha.cpuPercent}% < busy ${long.cpuPercent}%`)
  const gone = byName.get('gone')
  assert.equal(gone.state, 'stale')
  assert.equal(gone.healthStatus, null)
  assert.equal(gone.memoryBytes, null)
})

test('monitor: a token-protected backend answering 401 counts as answering, with its latency', async (t) => {
  const { pm, stateDir } = fixtureManager(t, { name: 'guarded', port: await freeRun(3), token: true, env: { REQUIRE_TOKEN: '1' } })
  const b = await pm.startBackend(ROOT)
  const { code, stdout } = await cli(['monitor', '--json', '--state-dir', stateDir])
  assert.equal(code, 0)
  const [x] = JSON.parse(stdout).backends
  assert.equal(x.pid, b.pid)
  assert.equal(x.healthStatus, 401)
  assert.ok(x.healthLatencyMs > 0)
  assert.equal(x.healthError, null)
})

test('monitor: --name limits the view; the live view refuses a stdout that is not a terminal', async (t) => {
  const first = fixtureManager(t, { name: 'one', port: await freeRun(3) })
  const second = fixtureManager(t, { name: 'two', port: await freeRun(3), stateDir: first.stateDir })
  await first.pm.startBackend(ROOT)
  const two = await second.pm.startBackend(ROOT)
  const { stdout } = await cli(['monitor', '--json', '--name', 'two', '--state-dir', first.stateDir])
  assert.deepEqual(JSON.parse(stdout).backends.map((x) => x.pid), [two.pid])
  const live = await cli(['monitor', '--state-dir', first.stateDir])
  assert.equal(live.code, 2)
  assert.match(live.stderr, /needs a terminal; use --once or --json/)
})

test('sampler: replicas (records with replicaOf) are one backend line with its replicas; without it, one line each', async () => {
  const now = Date.now()
  const rec = (pid, port, extra = {}) => ({
    file: `/state/api-${pid}.json`, state: 'running', name: 'api', pid, port, host: '127.0.0.1', startedAt: now, ownerPid: 1, restarts: 1,
    healthy: null, healthPath: '/health', alive: true, orphaned: false, uptimeMs: 5000 + pid, cpuPercent: 1, cpuTimeMs: pid, memoryBytes: 1000,
    processCount: 1, processName: 'node', listenerPid: pid, listenerName: 'node', problem: null, ...extra,
  })
  let round = 0
  const listRecords = async () => {
    round++
    return [
      rec(11, 9001, { replicaOf: 9000, cpuTimeMs: 100 + round * 100 }),
      rec(12, 9002, { replicaOf: 9000, cpuTimeMs: 100 }),
      ...(round === 3 ? [] : [rec(13, 9100)]),
      { ...rec(14, 9200), name: 'old', state: 'stale', alive: false },
    ]
  }
  const sampler = new RecordSampler({ stateDir: '/state', probe: false, listRecords })
  const first = await sampler.sample()
  assert.equal(first.backends.length, 3)
  await new Promise((r) => setTimeout(r, 200))
  const { backends } = await sampler.sample()
  const group = backends.find((b) => b.replicas.length > 0)
  assert.equal(group.port, 9000)
  assert.equal(group.name, 'api')
  assert.deepEqual(group.replicas.map((r) => [r.pid, r.port]), [[11, 9001], [12, 9002]])
  assert.equal(group.memoryBytes, 2000)
  assert.equal(group.restarts, 2)
  // Replica 11 used 100 ms of CPU in about 200 ms: about 50 %; the group adds up its replicas.
  const r11 = group.replicas[0].cpuPercent
  assert.ok(r11 > 20 && r11 <= 55, `${r11}%`)
  assert.equal(group.replicas[1].cpuPercent, 0)
  assert.equal(group.cpuPercent, r11)
  assert.deepEqual(backends.map((b) => [b.name, b.port, b.state]), [['api', 9000, 'running'], ['api', 9100, 'running'], ['old', 9200, 'stale']])
  assert.equal(group.history.memoryBytes.length, 2)
  // A backend missing from a sample has a gap there: its history stays a window of time.
  await sampler.sample()
  const fourth = await sampler.sample()
  assert.deepEqual(fourth.backends.find((b) => b.port === 9100).history.memoryBytes, [1000, 1000, null, 1000])
})

test('sparkline: a fixed one-minute window, blank before the first sample, scaled to the largest value', () => {
  assert.equal(sparkline([], { width: 10 }).text, ' '.repeat(10))
  const full = sparkline(Array.from({ length: 60 }, (_, i) => i), { width: 8, floor: 1 })
  assert.equal(full.text, '▁▂▃▄▅▆▇█')
  const recent = sparkline([5, 10], { width: 30 })
  assert.equal(recent.text.length, 30)
  assert.match(recent.text, /^ +[▁-█]$/)
  assert.equal(sparkline([0, null, 0], { width: 30, slots: 3, floor: 5 }).text, `${'▁'.repeat(10)}${'·'.repeat(10)}${'▁'.repeat(10)}`)
  // Memory: steady is a flat line mid-height; a tenth more fills the height.
  assert.equal(sparkline([100, 100, 100], { width: 3, slots: 3, band: 0.1 }).text, '▄▄▄')
  assert.equal(sparkline([100, 105, 110], { width: 3, slots: 3, band: 0.1 }).text, '▁▄█')
})

// ---- The live view in a real terminal ----

function tmuxAvailable() {
  return spawnSync('tmux', ['-V']).status === 0
}

/** A tmux server of this test alone (its own socket), `width` × 30; killed, with what runs in it, after the test. */
function tmux(t, width) {
  assert.ok(tmuxAvailable(), 'tmux is needed for the terminal test: apt-get install -y tmux')
  // Its own folder, removed only after the server is gone (the socket is how the server is found).
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-tmux-'))
  const socket = path.join(dir, 'sock')
  const env = { ...process.env, TMUX: '', TERM: 'xterm-256color' }
  const run = (...args) => execFileSync('tmux', ['-S', socket, ...args], { env, encoding: 'utf8' })
  let server = null
  t.after(async () => {
    const inside = server ? processTree(server) : []
    spawnSync('tmux', ['-S', socket, 'kill-server'], { env, stdio: 'ignore' })
    await killAll(inside)
    await waitFor(() => inside.every((p) => !isAlive(p)), 5000, 'the tmux server and its panes to end')
    fs.rmSync(dir, { recursive: true, force: true })
  })
  return {
    run,
    start(command) {
      run('new-session', '-d', '-x', String(width), '-y', '30', command)
      server = Number(run('display-message', '-p', '#{pid}'))
    },
    screen: () => run('capture-pane', '-p'),
    flag: (name) => run('display-message', '-p', `#{${name}}`).trim(),
  }
}

/** A shell in the pane prints a marker, runs the monitor, prints its exit code, and stays. */
function monitorCommand(stateDir) {
  const q = (s) => `'${s.replace(/'/g, `'\\''`)}'`
  return `sh -c ${q(`echo BEFORE-MARKER; ${q(process.execPath)} ${q(CLI)} monitor --state-dir ${q(stateDir)}; echo EXIT=$?; exec sleep 600`)}`
}

test('monitor in a terminal: alternate screen, hidden cursor, 80 columns; q exits 0 and restores the terminal', { skip: posixOnly('drives a terminal through tmux') }, async (t) => {
  const { pm, stateDir } = fixtureManager(t, { name: 'shown-in-tmux', port: await freeRun(3) })
  const b = await pm.startBackend(ROOT)
  const term = tmux(t, 100)
  term.start(monitorCommand(stateDir))
  await waitFor(() => term.screen().includes(String(b.pid)) && /\s+cpu .*[▁-█]/.test(term.screen()), 15000, 'the monitor to show the backend')
  assert.equal(term.flag('alternate_on'), '1', 'the monitor draws on the alternate screen')
  assert.equal(term.flag('cursor_flag'), '0', 'the cursor is hidden')
  const screen = term.screen()
  assert.doesNotMatch(screen, /BEFORE-MARKER/, 'the shell output is not on the alternate screen')
  assert.match(screen, new RegExp(`shown-in-tmux\\s+running\\s+${b.pid}\\s+${b.port}\\s`))
  assert.match(screen, /q quits/)
  for (const line of screen.split('\n')) assert.ok(columns(line.trimEnd()) <= 80, `a line of ${columns(line.trimEnd())} columns on a 100-column terminal`)
  // A second frame replaces the first: the uptime moves on.
  const uptime = () => new RegExp(`${b.pid}\\s+${b.port}\\s+(\\d+)s`).exec(term.screen())?.[1]
  const before = uptime()
  await waitFor(() => uptime() !== before, 5000, 'the next frame')

  term.run('send-keys', 'q')
  await waitFor(() => /EXIT=\d+/.test(term.screen()), 5000, 'the monitor to exit')
  const after = term.screen()
  assert.match(after, /EXIT=0/)
  assert.match(after, /BEFORE-MARKER/, 'the screen from before is back')
  assert.doesNotMatch(after, /shown-in-tmux/, 'nothing of the monitor is left on the normal screen')
  assert.equal(term.flag('alternate_on'), '0', 'the alternate screen was left')
  assert.equal(term.flag('cursor_flag'), '1', 'the cursor is shown again')
  assert.ok(isAlive(b.pid), 'the monitor only watched')
})

test('monitor in a terminal: SIGTERM also restores the terminal', { skip: posixOnly('drives a terminal through tmux') }, async (t) => {
  const stateDir = tempDir(t)
  const term = tmux(t, 80)
  term.start(monitorCommand(stateDir))
  await waitFor(() => term.screen().includes('No backend records'), 15000, 'the monitor to start')
  assert.equal(term.flag('alternate_on'), '1')
  const shell = Number(term.flag('pane_pid'))
  const monitor = processTree(shell).find((p) => p !== shell && fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(CLI))
  assert.ok(monitor, 'the monitor process')
  process.kill(monitor, 'SIGTERM')
  await waitFor(() => /EXIT=\d+/.test(term.screen()), 5000, 'the monitor to exit')
  assert.match(term.screen(), /EXIT=143/)
  assert.match(term.screen(), /BEFORE-MARKER/)
  assert.equal(term.flag('alternate_on'), '0')
  assert.equal(term.flag('cursor_flag'), '1')
})

/** The lines of `name`'s entry in a frame: its own line and the indented ones under it. */
function entryLines(lines, name) {
  const start = lines.findIndex((l) => l.startsWith(`${name} `))
  assert.ok(start >= 0, `no line for ${name}: ${lines.join('\n')}`)
  const rest = lines.slice(start + 1)
  const end = rest.findIndex((l) => !l.startsWith('  '))
  return [lines[start], ...(end < 0 ? rest : rest.slice(0, end))]
}

/** The path a `  log …` line shows, checked against the full path (a long one is cut at its start, with …). */
function assertShowsLogFile(entry, file) {
  const logLines = entry.filter((l) => l.startsWith('  log '))
  assert.equal(logLines.length, 1, entry.join('\n'))
  const shown = logLines[0].slice('  log '.length)
  if (shown.startsWith('…')) assert.ok(file.endsWith(shown.slice(1)) && shown.length > 20, `${shown} is not the end of ${file}`)
  else assert.equal(shown, file)
}

test('monitor --once shows each backend\'s log file, and for one whose process is gone the last lines of its stderr', async (t) => {
  const failing = fixtureManager(t, { name: 'crashed', port: await freeRun(3), env: { FAIL_WITH_LINE: 'Error: cannot open database /data/app.db' } })
  const { stateDir } = failing
  await assert.rejects(failing.pm.startBackend(ROOT), { code: 'ERR_BACKEND_EXITED' })
  // The line reaches the log file through the log writer, after the rejection at the latest.
  await waitFor(async () => (await failing.pm.logs({ stream: 'err' })).length > 0, 5000, 'the stderr line in the log')
  const fine = fixtureManager(t, { name: 'fine', port: await freeRun(3), stateDir })
  const running = await fine.pm.startBackend(ROOT)
  // Its app died with it: the record stays while the process is gone (a stale record).
  const stale = recordOf({ name: 'crashed', pid: 999999, port: 8123, exe: '/bin/false', startTime: 1, ownerPid: 999998, ownerStartTime: 1 })
  fs.writeFileSync(path.join(stateDir, 'crashed-999999.json'), JSON.stringify(stale), { mode: 0o600 })

  const { code, stdout, stderr } = await cli(['monitor', '--once', '--state-dir', stateDir])
  assert.equal(code, 0, stderr)
  const lines = stdout.trimEnd().split('\n')
  for (const line of lines) assert.ok(columns(line) <= 80, `${columns(line)} columns: ${JSON.stringify(line)}`)
  const logDir = path.join(stateDir, 'logs')

  const fineEntry = entryLines(lines, 'fine')
  assert.match(fineEntry[0], new RegExp(`^fine\\s+running\\s+${running.pid}\\s`))
  assertShowsLogFile(fineEntry, path.join(logDir, 'fine.log'))
  assert.deepEqual(fineEntry.filter((l) => l.startsWith('  err ')), [], 'a running backend shows no stderr lines')

  const crashedEntry = entryLines(lines, 'crashed')
  assert.match(crashedEntry[0], /^crashed\s+stale\s+999999\s/)
  assertShowsLogFile(crashedEntry, path.join(logDir, 'crashed.log'))
  assert.deepEqual(crashedEntry.filter((l) => l.startsWith('  err ')), ['  err Error: cannot open database /data/app.db'])

  // Another log folder (--log-dir) is where the paths then point, and it holds no stderr of "crashed".
  const otherLogs = tempDir(t)
  const other = await cli(['monitor', '--once', '--state-dir', stateDir, '--log-dir', otherLogs])
  assert.equal(other.code, 0, other.stderr)
  const otherEntry = entryLines(other.stdout.trimEnd().split('\n'), 'crashed')
  assertShowsLogFile(otherEntry, path.join(otherLogs, 'crashed.log'))
  assert.deepEqual(otherEntry.filter((l) => l.startsWith('  err ')), [])
})
