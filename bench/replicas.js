'use strict'
// Replicas: throughput and added latency of one backend run as 2 processes behind one port — our balancer
// (least-connections, its default, and round-robin), our `listen: 'fd'` (the manager's listening socket
// handed to both, nothing in between), the C peers in the same role (HAProxy in TCP mode, leastconn, one
// thread; nginx's stream module, least_conn, one worker process), Node's http-proxy round-robin over the
// same 2 replicas (at its defaults and with a keep-alive agent) and Node's cluster module with 2 workers
// (pm2's cluster mode) — against the limit: one wrk straight at each replica at once. The backend is
// bench/replica-backend.js (short answer), loopback only. HAProxy and nginx come from Debian's packages
// (haproxy, nginx, libnginx-mod-stream), installed with apt-get when missing and we are root (services are
// kept from starting: policy-rc.d), else their rows are skipped with a note; each runs in the foreground
// with its config in a private temporary folder, listening on 127.0.0.1 only, and is stopped by its pid.
//
// Load: wrk -t2 -c64 at the public port; the direct limit is two wrk -t1 -c32 at once (the same 2 threads
// and 64 keep-alive connections in all). The machine has few cores and wrk shares them with the replicas
// and the front (the balancer runs in this bench's own process, as it would in an app's main process), so
// every figure is "on this machine with its load generator", not the front's ceiling. Contenders are
// interleaved, in a rotated order each round, after a 1 s unrecorded warm-up each; throughput rows hold the
// req/s of each run, and their p95 is the slow tail (the 5th percentile of req/s). Latency: wrk -t1 -c1
// --latency (one keep-alive connection, requests back to back), p50 and p99 per run; "added" is the
// contender's figure minus a direct replica's in the same round, median over rounds.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const http = require('node:http')
const net = require('node:net')
const { spawn } = require('node:child_process')
const { once } = require('node:events')
const { ProcessManager } = require('..')
const { quantile, freeRun, isAlive } = require('./lib')

const BACKEND = path.join(__dirname, 'replica-backend.js')
const PROXY = path.join(__dirname, 'replica-proxy.js')
const BODY = 'hello world\n'
const THREADS = 2
const CONNECTIONS = 64
const START_LIMIT_MS = 15000
const STOP_LIMIT_MS = 3000
/** /proc reports CPU time in clock ticks of USER_HZ, which is 100 on Linux. */
const TICK_MS = 10

const TARGETS = { balancerOfDirect: 0.6, balancerOverProxy: 4, fdOfDirect: 0.85, addedP50Ms: 0.1, balancerOverHaproxy: 1, cpuOfHaproxy: 1 }
/** Debian's stream module for nginx (package libnginx-mod-stream). */
const NGINX_STREAM_MODULE = '/usr/lib/nginx/modules/ngx_stream_module.so'
/** Keeps Debian's maintainer scripts from starting the packages' system services while they install. */
const POLICY_RC = '/usr/sbin/policy-rc.d'

/** CPU ms (user + system) a process has used, from /proc/PID/stat. */
function cpuMs(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) * TICK_MS
}

const ownCpuMs = () => {
  const u = process.cpuUsage()
  return (u.user + u.system) / 1000
}

/** Every process this area starts itself (wrk, the proxies, the cluster primary), to stop them all. */
const children = new Set()

function track(child) {
  children.add(child)
  child.once('exit', () => children.delete(child))
  return child
}

const exited = (child) => child.exitCode !== null || child.signalCode !== null

/** SIGTERM, then SIGKILL if it has not exited within STOP_LIMIT_MS; resolves once it has exited. */
async function stop(child) {
  if (exited(child)) return
  const gone = once(child, 'exit')
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), STOP_LIMIT_MS)
  await gone
  clearTimeout(timer)
}

/** A Node process of ours; resolves with it and the first stdout line matching `ready`'s pattern. */
function startNode(args, env, ready) {
  const child = track(spawn(process.execPath, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] }))
  return new Promise((resolve, reject) => {
    let out = ''
    const timer = setTimeout(() => reject(new Error(`${args.join(' ')}: not ready within ${START_LIMIT_MS} ms`)), START_LIMIT_MS)
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', (d) => {
      out += d
      const m = ready.exec(out)
      if (m) {
        clearTimeout(timer)
        resolve({ child, match: m })
      }
    })
    child.once('error', reject)
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      reject(new Error(`${args.join(' ')} exited (${code ?? signal}) before it was ready: ${out}`))
    })
  })
}

const { spawnSync } = require('node:child_process')

/** Does `command args` run and exit 0? */
const runs = (command, args) => spawnSync(command, args, { stdio: 'ignore' }).status === 0

/**
 * HAProxy and nginx with its stream module, installed with apt-get when missing (as root, on Debian).
 * Resolves to { haproxy, nginx }: true when usable, else the reason it is not.
 */
function ensurePeers() {
  const present = () => ({
    haproxy: runs('haproxy', ['-v']) || 'haproxy not installed',
    nginx: !runs('nginx', ['-v']) ? 'nginx not installed' : fs.existsSync(NGINX_STREAM_MODULE) || `nginx's stream module (${NGINX_STREAM_MODULE}) not installed`,
  })
  let found = present()
  if (found.haproxy === true && found.nginx === true) return found
  const why = process.platform !== 'linux' || !fs.existsSync('/usr/bin/apt-get') ? 'no apt-get to install it' : process.getuid?.() !== 0 ? 'not root, cannot install it' : null
  if (why) return { haproxy: found.haproxy === true || `${found.haproxy}; ${why}`, nginx: found.nginx === true || `${found.nginx}; ${why}` }
  console.error('replicas: installing haproxy, nginx and libnginx-mod-stream with apt-get (their services are not started)')
  const ownPolicy = !fs.existsSync(POLICY_RC)
  if (ownPolicy) fs.writeFileSync(POLICY_RC, '#!/bin/sh\nexit 101\n', { mode: 0o755 })
  try {
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
    spawnSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env })
    spawnSync('apt-get', ['install', '-y', '-qq', 'haproxy', 'nginx', 'libnginx-mod-stream'], { stdio: 'inherit', env })
  } finally {
    if (ownPolicy) fs.rmSync(POLICY_RC, { force: true })
  }
  found = present()
  return { haproxy: found.haproxy === true || `${found.haproxy} (apt-get install failed)`, nginx: found.nginx === true || `${found.nginx} (apt-get install failed)` }
}

/** Resolves once something accepts on 127.0.0.1:`port` (a peer that prints nothing when ready). */
async function accepting(port, child, what) {
  const deadline = Date.now() + START_LIMIT_MS
  for (;;) {
    if (exited(child)) throw new Error(`${what} exited (${child.exitCode ?? child.signalCode}) before it listened`)
    const ok = await new Promise((resolve) => {
      const socket = net.connect(port, '127.0.0.1', () => socket.end(() => resolve(true)))
      socket.once('error', () => resolve(false))
    })
    if (ok) return
    if (Date.now() > deadline) throw new Error(`${what}: not listening on ${port} within ${START_LIMIT_MS} ms`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/** HAProxy 2.x, TCP mode, leastconn over `upstreams`, one thread, in the foreground (-db). */
async function startHaproxy(dir, port, upstreams) {
  const config = path.join(dir, 'haproxy.cfg')
  fs.writeFileSync(config, [
    'global',
    '  nbthread 1',
    '  maxconn 4096',
    'defaults',
    '  mode tcp',
    '  timeout connect 1s',
    '  timeout client 60s',
    '  timeout server 60s',
    'frontend public',
    `  bind 127.0.0.1:${port}`,
    '  default_backend replicas',
    'backend replicas',
    '  balance leastconn',
    ...upstreams.map((u, i) => `  server r${i} 127.0.0.1:${u}`),
    '',
  ].join('\n'))
  const child = track(spawn('haproxy', ['-db', '-f', config], { stdio: ['ignore', 'ignore', 'inherit'] }))
  await accepting(port, child, 'haproxy')
  return child
}

/** nginx's stream module, least_conn over `upstreams`, one process (no master: its CPU is the front's). */
async function startNginx(dir, port, upstreams) {
  const config = path.join(dir, 'nginx.conf')
  fs.writeFileSync(config, [
    `load_module ${NGINX_STREAM_MODULE};`,
    'daemon off;',
    'master_process off;',
    'worker_processes 1;',
    `pid ${path.join(dir, 'nginx.pid')};`,
    `error_log ${path.join(dir, 'nginx-error.log')} error;`,
    'events { worker_connections 4096; }',
    'stream {',
    `  upstream replicas { least_conn; ${upstreams.map((u) => `server 127.0.0.1:${u};`).join(' ')} }`,
    `  server { listen 127.0.0.1:${port}; proxy_pass replicas; proxy_connect_timeout 1s; }`,
    '}',
    '',
  ].join('\n'))
  const child = track(spawn('nginx', ['-p', dir, '-e', path.join(dir, 'nginx-error.log'), '-c', config], { stdio: ['ignore', 'ignore', 'inherit'] }))
  await accepting(port, child, 'nginx')
  return child
}

/** Milliseconds of a wrk duration ("72.00us", "1.20ms", "2.00s"). */
function wrkDuration(text) {
  const m = /^([\d.]+)(us|ms|s|m)$/.exec(text)
  if (!m) return NaN
  return Number(m[1]) * { us: 0.001, ms: 1, s: 1000, m: 60000 }[m[2]]
}

/** Requests, req/s, p50/p99 (with --latency) and errors (socket errors plus non-2xx/3xx) of one wrk run. */
function parseWrk(output) {
  const run = { requests: NaN, perSecond: NaN, p50: NaN, p99: NaN, errors: 0 }
  for (const line of output.split('\n')) {
    const words = line.trim().split(/\s+/)
    if (words[0] === 'Requests/sec:') run.perSecond = Number(words[1])
    else if (words[0] === '50%') run.p50 = wrkDuration(words[1])
    else if (words[0] === '99%') run.p99 = wrkDuration(words[1])
    else if (words[1] === 'requests' && words[2] === 'in') run.requests = Number(words[0])
    else if (line.includes('Socket errors:')) run.errors += (line.match(/\d+/g) ?? []).map(Number).reduce((a, b) => a + b, 0)
    else if (line.includes('Non-2xx or 3xx responses:')) run.errors += Number(words.at(-1))
  }
  return run
}

/** One wrk process to its end; resolves with its parsed output. */
async function wrk(url, { threads, connections, seconds, latency = false }) {
  const args = ['-t', String(threads), '-c', String(connections), '-d', `${seconds}s`, '--timeout', '2s', ...(latency ? ['--latency'] : []), url]
  const child = track(spawn('wrk', args, { stdio: ['ignore', 'pipe', 'inherit'] }))
  let out = ''
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', (d) => (out += d))
  const [code] = await once(child, 'close').catch((e) => {
    throw e.code === 'ENOENT' ? new Error('wrk not found: the replicas area needs it (Debian: apt-get install wrk)') : e
  })
  if (code !== 0) throw new Error(`wrk ${args.join(' ')} exited with ${code}: ${out}`)
  const run = parseWrk(out)
  if (!Number.isFinite(run.perSecond)) throw new Error(`wrk output not understood: ${out}`)
  return run
}

/** One GET on a fresh connection; resolves to { status, body }. */
function get(url) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false, timeout: 5000 }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d) => (body += d))
      res.on('end', () => resolve({ status: res.statusCode, body }))
    })
    req.on('timeout', () => req.destroy(new Error(`GET ${url}: no answer within 5 s`)))
    req.on('error', reject)
  })
}

/** Does every url answer 200 with the backend's body (4 fresh connections each, to reach both replicas)? */
async function answersRight(urls) {
  for (const url of urls) {
    for (let i = 0; i < 4; i++) {
      const { status, body } = await get(url).catch((e) => ({ status: 0, body: e.message }))
      if (status !== 200 || body !== BODY) return `GET ${url}: ${status} ${JSON.stringify(body.slice(0, 80))}`
    }
  }
  return null
}

function manager(name, dir, port, options) {
  return new ProcessManager({ name, command: process.execPath, args: [BACKEND], port, portRange: 20, stateDir: dir, logger: false, replicas: 2, ...options })
}

/**
 * One throughput run of a contender: its wrk processes at once; req/s summed, the CPU split between its
 * serving processes (the busier one's share) and the CPU its front (balancer, proxy, cluster primary) spent
 * per 1000 requests.
 */
async function throughput(c, seconds) {
  const serving = c.serving()
  const before = serving.map(cpuMs)
  const frontBefore = c.frontCpu?.()
  const runs = await Promise.all(c.loads.map((l) => wrk(l.url, { threads: l.threads, connections: l.connections, seconds })))
  const frontAfter = c.frontCpu?.()
  const used = serving.map((pid, i) => cpuMs(pid) - before[i])
  const requests = runs.reduce((s, r) => s + r.requests, 0)
  return {
    perSecond: runs.reduce((s, r) => s + r.perSecond, 0),
    errors: runs.reduce((s, r) => s + r.errors, 0),
    busiest: (Math.max(...used) / used.reduce((a, b) => a + b, 0)) * 100,
    frontCpu: c.frontCpu ? ((frontAfter - frontBefore) / requests) * 1000 : NaN,
  }
}

const median = (values) => quantile(values, 0.5)

function verdict(value, ok) {
  return `${value} (target ${ok[0]}: ${ok[1] ? 'met' : 'NOT met'})`
}

module.exports = async function replicas({ runs, quick }) {
  if (process.platform !== 'linux') return { title: 'Replicas (Linux only: reads /proc)', unit: 'req/s', rows: [] }
  const seconds = quick ? 2 : 5
  const latencySeconds = quick ? 1 : 2
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-bench-'))
  const loadAtStart = os.loadavg()[0]
  const managers = []
  const extraPids = [] // cluster workers: not our children, stopped through their primary, checked by pid
  try {
    const base = await freeRun(8, 48000)
    const [pmLeast, pmRound, pmFd] = [
      manager('bench-replicas-lc', dir, base, {}),
      manager('bench-replicas-rr', dir, base + 1, { balance: 'round-robin' }),
      manager('bench-replicas-fd', dir, base + 2, { listen: 'fd' }),
    ]
    managers.push(pmLeast, pmRound, pmFd)
    const [least, round, fd] = await Promise.all(managers.map((pm) => pm.startBackend(dir)))
    const replicaUrls = least.replicas.map((r) => `http://127.0.0.1:${r.port}/`)
    const proxyPort = (i) => base + 3 + i
    const [proxyDefaults, proxyKeepAlive] = await Promise.all(['defaults', 'keepalive'].map((mode, i) => startNode([PROXY, String(proxyPort(i)), mode, ...replicaUrls], {}, /^listening$/m)))
    const clusterPort = base + 5
    const clustered = await startNode([BACKEND], { CLUSTER_WORKERS: '2', PORT: String(clusterPort), HOST: '127.0.0.1' }, /^workers ([\d ]+)$/m)
    extraPids.push(...clustered.match[1].split(' ').map(Number))
    const replicaPorts = least.replicas.map((r) => r.port)
    const peers = ensurePeers()
    const skipped = []
    const peerRow = async (name, usable, start, port) => {
      if (usable !== true) {
        skipped.push(`${name}: skipped (${usable})`)
        return null
      }
      const child = await start(dir, port, replicaPorts)
      return { name, loads: at(`http://127.0.0.1:${port}/`), serving: () => pids(least), frontCpu: () => cpuMs(child.pid) }
    }

    const pids = (info) => info.replicas.map((r) => r.pid)
    const at = (url) => [{ url, threads: THREADS, connections: CONNECTIONS }]
    const haproxy = await peerRow('HAProxy 2 (tcp mode, leastconn, 1 thread)', peers.haproxy, startHaproxy, base + 6)
    const nginx = await peerRow('nginx stream (least_conn, 1 worker)', peers.nginx, startNginx, base + 7)
    const proxyUrl = (i) => `http://127.0.0.1:${proxyPort(i)}/`
    const contenders = [
      {
        name: 'direct: one wrk at each of the 2 replicas (the limit)',
        loads: replicaUrls.map((url) => ({ url, threads: THREADS / 2, connections: CONNECTIONS / 2 })),
        latencyUrl: replicaUrls[0],
        serving: () => pids(least),
      },
      { name: 'backend-process-manager balancer, replicas: 2 (least-connections, default)', reference: true, loads: at(least.url), serving: () => pids(least), frontCpu: ownCpuMs },
      { name: 'backend-process-manager balancer, replicas: 2, round-robin', loads: at(round.url), serving: () => pids(round), frontCpu: ownCpuMs },
      { name: "backend-process-manager listen: 'fd', replicas: 2", loads: at(fd.url), serving: () => pids(fd) },
      ...[haproxy, nginx].filter(Boolean),
      { name: 'http-proxy round-robin over the 2 replicas (defaults)', loads: at(proxyUrl(0)), serving: () => pids(least), frontCpu: () => cpuMs(proxyDefaults.child.pid) },
      { name: 'http-proxy round-robin, keep-alive agent', loads: at(proxyUrl(1)), serving: () => pids(least), frontCpu: () => cpuMs(proxyKeepAlive.child.pid) },
      { name: 'Node cluster, 2 workers (pm2 cluster mode)', loads: at(`http://127.0.0.1:${clusterPort}/`), serving: () => extraPids, frontCpu: () => cpuMs(clustered.child.pid) },
    ]
    for (const c of contenders) {
      c.latencyUrl ??= c.loads[0].url
      c.wrong = await answersRight(c.loads.map((l) => l.url))
      c.runs = []
      c.latency = []
    }

    // Round -1 warms every contender up (1 s each) and is not recorded.
    for (let round = -1; round < runs; round++) {
      const order = contenders.map((_, i) => contenders[(i + Math.max(round, 0)) % contenders.length])
      for (const c of order) {
        const run = await throughput(c, round < 0 ? 1 : seconds)
        if (round >= 0) c.runs.push(run)
      }
      if (round < 0) continue
      for (const c of order) c.latency.push(await wrk(c.latencyUrl, { threads: 1, connections: 1, seconds: latencySeconds, latency: true }))
    }

    const [direct] = contenders
    const limit = median(direct.runs.map((r) => r.perSecond))
    const rows = contenders.map((c) => {
      const rates = c.runs.map((r) => r.perSecond)
      const errors = c.runs.reduce((s, r) => s + r.errors, 0) + c.latency.reduce((s, r) => s + r.errors, 0)
      const added = (key) => (c === direct ? NaN : median(c.latency.map((l, i) => l[key] - direct.latency[i][key])))
      return {
        group: 'replicas',
        name: c.name,
        reference: c.reference,
        n: rates.length,
        median: median(rates),
        p95: quantile(rates, 0.05),
        min: Math.min(...rates),
        max: Math.max(...rates),
        ofDirect: (median(rates) / limit) * 100,
        p50: median(c.latency.map((l) => l.p50)),
        p99: median(c.latency.map((l) => l.p99)),
        addedP50: added('p50'),
        addedP99: added('p99'),
        busiest: median(c.runs.map((r) => r.busiest)),
        frontCpu: median(c.runs.map((r) => r.frontCpu)),
        correct: !c.wrong && errors === 0,
        ...(c.wrong || errors ? { note: [c.wrong, errors ? `${errors} wrk errors (socket errors or non-2xx)` : null].filter(Boolean).join('; ') } : {}),
      }
    })

    const byName = (name) => rows.find((r) => r.name === name)
    const [ours, oursRound, oursFd] = rows.slice(1, 4)
    const [proxyDef, proxyBest, cluster] = rows.slice(-3)
    const haproxyRow = haproxy && byName(haproxy.name)
    const nginxRow = nginx && byName(nginx.name)
    const pct = (v) => `${(v * 100).toFixed(0)} %`
    const times = (v) => `${v.toFixed(1)}×`
    const ms = (v) => `${v.toFixed(3)} ms`
    const oursBest = Math.max(ours.median, oursRound.median)
    const figures = {
      'load': `wrk -t${THREADS} -c${CONNECTIONS} (keep-alive) at the public port; direct: two wrk -t1 -c${CONNECTIONS / 2} at once; ${seconds} s a run, ${runs} runs each, interleaved; ${os.cpus().length} cores shared by wrk, the replicas and the front (the balancer runs in this bench process); 1-min load average at start ${loadAtStart.toFixed(2)}`,
      'latency': `wrk -t1 -c1 --latency (one keep-alive connection, requests back to back), ${latencySeconds} s a run; added = contender minus a direct replica in the same round, median over rounds`,
      'columns': '× ours: the contender\'s req/s over ours (below 1: ours serves more); % of direct: median req/s over the direct limit; p50/p99: one connection; busiest %: the busier serving process\'s share of their CPU time; front cpu: ms of CPU (user + system, /proc/PID/stat) the balancer (this whole bench process), HAProxy, nginx, proxy or cluster primary spent per 1000 requests',
      'balancer (least-connections) / direct limit': verdict(pct(ours.median / limit), [`≥ ${pct(TARGETS.balancerOfDirect)}`, ours.median / limit >= TARGETS.balancerOfDirect]),
      'balancer (round-robin) / direct limit': verdict(pct(oursRound.median / limit), [`≥ ${pct(TARGETS.balancerOfDirect)}`, oursRound.median / limit >= TARGETS.balancerOfDirect]),
      'balancer / http-proxy, both at their defaults': verdict(times(ours.median / proxyDef.median), [`≥ ${TARGETS.balancerOverProxy}×`, ours.median / proxyDef.median >= TARGETS.balancerOverProxy]),
      'balancer / http-proxy, each at its best (keep-alive agent)': verdict(times(oursBest / proxyBest.median), [`≥ ${TARGETS.balancerOverProxy}×`, oursBest / proxyBest.median >= TARGETS.balancerOverProxy]),
      "listen: 'fd' / direct limit": verdict(pct(oursFd.median / limit), [`≥ ${pct(TARGETS.fdOfDirect)}`, oursFd.median / limit >= TARGETS.fdOfDirect]),
      'Node cluster / direct limit': pct(cluster.median / limit),
      ...(haproxyRow
        ? {
            'balancer / HAProxy, req/s': verdict(times(ours.median / haproxyRow.median), [`≥ ${TARGETS.balancerOverHaproxy}×`, ours.median / haproxyRow.median >= TARGETS.balancerOverHaproxy]),
            'balancer / HAProxy, CPU ms per 1000 requests': verdict(`${ours.frontCpu.toFixed(1)} / ${haproxyRow.frontCpu.toFixed(1)} = ${times(ours.frontCpu / haproxyRow.frontCpu)}`, [`≤ ${TARGETS.cpuOfHaproxy}×`, ours.frontCpu / haproxyRow.frontCpu <= TARGETS.cpuOfHaproxy]),
          }
        : {}),
      ...(nginxRow
        ? {
            'balancer / nginx stream, req/s': times(ours.median / nginxRow.median),
            'balancer / nginx stream, CPU ms per 1000 requests': `${ours.frontCpu.toFixed(1)} / ${nginxRow.frontCpu.toFixed(1)} = ${times(ours.frontCpu / nginxRow.frontCpu)}`,
          }
        : {}),
      ...(skipped.length ? { 'peers skipped': skipped.join('; ') } : {}),
      'added by the balancer, p50 / p99': verdict(`${ms(ours.addedP50)} / ${ms(ours.addedP99)}`, [`p50 ≤ ${TARGETS.addedP50Ms} ms`, ours.addedP50 <= TARGETS.addedP50Ms]),
      "added with listen: 'fd', p50 / p99": `${ms(oursFd.addedP50)} / ${ms(oursFd.addedP99)}`,
    }
    return {
      title: `Replicas: one backend as 2 Node processes behind one port (${runs} runs of ${seconds} s per contender)`,
      unit: 'req/s, higher is better; p95: the slow tail',
      higherIsBetter: true,
      rows,
      columns: [
        { key: 'ofDirect', label: '% of direct' },
        { key: 'p50', label: 'p50 ms' },
        { key: 'p99', label: 'p99 ms' },
        { key: 'addedP50', label: '+p50 ms' },
        { key: 'addedP99', label: '+p99 ms' },
        { key: 'busiest', label: 'busiest %' },
        { key: 'frontCpu', label: 'front cpu ms/1k req' },
      ],
      figures,
    }
  } finally {
    await Promise.all([...children].map(stop))
    await Promise.all(managers.map((pm) => pm.stopBackend().catch(() => {})))
    for (const pid of extraPids) {
      if (isAlive(pid)) process.kill(pid, 'SIGKILL')
    }
    fs.rmSync(dir, { recursive: true, force: true })
  }
}
