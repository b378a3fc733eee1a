'use strict'
// Secrets go only to the backend's own listener (docs/api.md, `token`): another local user who takes the
// backend's port between the port check and the backend's bind sees connections, never the token.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { once } = require('node:events')
const { ROOT, freeRun, fixtureManager, waitFor, linuxOnly, wineLacks, killTree } = require('./helpers')

const SETPRIV = '/usr/bin/setpriv'
const NOBODY = 65534

/**
 * A listener run as another user (uid 65534) that, once told to, listens on `port` and prints every
 * connection (`CONN`) and every byte it receives (`DATA <json>`); it answers a request head with a 200, as
 * a server that happened to take the port would. Killed after the test.
 */
async function startStranger(t, port) {
  const code = `
    const net = require('node:net')
    process.stdin.once('data', () => {
      const server = net.createServer((socket) => {
        console.log('CONN')
        let head = ''
        socket.on('data', (d) => {
          console.log('DATA ' + JSON.stringify(d.toString('latin1')))
          head += d.toString('latin1')
          if (head.includes('\\r\\n\\r\\n')) socket.end('HTTP/1.1 200 OK\\r\\ncontent-length: 0\\r\\nconnection: close\\r\\n\\r\\n')
        })
        socket.on('error', () => {})
      })
      server.on('error', (e) => console.log('FAILED ' + e.code))
      server.listen({ host: '127.0.0.1', port: ${port}, exclusive: true }, () => console.log('LISTENING'))
    })
    console.log('READY')
  `
  const child = spawn(SETPRIV, [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', process.execPath, '-e', code], { stdio: ['pipe', 'pipe', 'inherit'] })
  t.after(() => killTree(child))
  const lines = []
  const waiters = new Set()
  let buffer = ''
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', (d) => {
    buffer += d
    let i
    while ((i = buffer.indexOf('\n')) >= 0) {
      lines.push(buffer.slice(0, i))
      buffer = buffer.slice(i + 1)
      for (const w of [...waiters]) w()
    }
  })
  const line = (re, timeoutMs = 10000) =>
    new Promise((resolve, reject) => {
      const check = () => {
        const found = lines.find((l) => re.test(l))
        if (found === undefined) return
        waiters.delete(check)
        clearTimeout(timer)
        resolve(found)
      }
      const timer = setTimeout(() => {
        waiters.delete(check)
        reject(new Error(`the stranger printed no ${re} within ${timeoutMs} ms: ${JSON.stringify(lines)}`))
      }, timeoutMs)
      waiters.add(check)
      check()
    })
  await Promise.race([line(/^READY$/), once(child, 'exit').then(([c]) => Promise.reject(new Error(`the stranger exited with ${c}`)))])
  return { child, lines, line, listen: () => child.stdin.write('go\n') }
}

const asRootOnLinux = linuxOnly('another user runs the listener (setpriv)') || (process.getuid() !== 0 || !fs.existsSync(SETPRIV) ? 'needs root and setpriv to run a listener as another user' : false)

test('another user who takes the port between the check and the bind never receives the token, and the next port gets a new one', { skip: asRootOnLinux }, async (t) => {
  const port = await freeRun(8)
  const stranger = await startStranger(t, port)
  // The backend listens 2.5 s after it starts: the stranger binds the port in between, and the readiness
  // probes of the first attempt find the stranger's listener until the backend fails with EADDRINUSE.
  const { pm, seen, logger } = fixtureManager(t, { port, token: true, startTimeoutMs: 20000, env: { LISTEN_DELAY_MS: '2500', REQUIRE_TOKEN: '1' } })
  const starting = pm.startBackend(ROOT)
  starting.catch(() => {})
  const [boot] = await seen(/^BOOT /)
  stranger.listen()
  // The token the first attempt was started with (as the probes of that attempt would carry it).
  const firstToken = /(?:^|\0)BACKEND_TOKEN=([0-9a-f]+)/.exec(fs.readFileSync(`/proc/${boot.split(' ')[1]}/environ`, 'latin1'))?.[1]
  assert.ok(firstToken, 'the first backend has a token')
  assert.equal(await stranger.line(/^(LISTENING|FAILED)/), 'LISTENING', 'the stranger took the port before the backend')
  const b = await starting
  assert.notEqual(b.port, port, 'the backend lost the race for its first port')
  assert.ok(logger.lines.some((l) => l.includes(`took port ${port}`)), logger.lines.join('\n'))
  // The probes did reach the stranger (the test would prove nothing otherwise)...
  assert.ok(stranger.lines.includes('CONN'), `the stranger saw no connection: ${JSON.stringify(stranger.lines)}`)
  // ...but not one byte of a request with the token.
  const received = stranger.lines.filter((l) => l.startsWith('DATA ')).map((l) => JSON.parse(l.slice(5))).join('')
  const seenTokens = [...received.matchAll(/bearer\s+(\S+)/gi)].map((m) => m[1])
  assert.deepEqual(seenTokens, [], `the stranger received: ${JSON.stringify(received)}`)
  assert.ok(!received.includes(b.token), 'the final token never reached the stranger')
  // A start that lost its port to another program goes on with a token that program cannot have seen.
  assert.notEqual(b.token, firstToken)
  // The backend works with the token it was given.
  const res = await fetch(`${b.url}/health`, { headers: { authorization: `Bearer ${b.token}` } })
  assert.equal(res.status, 200)
})

/** A backend (node -e) that stops listening on SIGUSR2 and keeps running: its port is free for anyone to take. */
const CLOSES_ON_SIGUSR2 = `
  const server = require('node:http').createServer((req, res) => res.end('ok'))
  server.listen(Number(process.env.PORT), process.env.HOST, () => console.log('LISTENING'))
  process.on('SIGUSR2', () => server.close(() => console.log('CLOSED')))
  setInterval(() => {}, 1000)
`

/** Starts the backend, then lets a stranger take its port once the backend closed its listener. */
async function strangerOnBackendPort(t, options) {
  // The state folder goes only after the backend is stopped: a watchdog verdict rewrites the record, and
  // would put it back into a folder removed under a running manager.
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'bpm-test-'))
  let pm
  t.after(async () => {
    await pm?.stopBackend().catch(() => {})
    fs.rmSync(stateDir, { recursive: true, force: true })
  })
  let seen
  ;({ pm, seen } = fixtureManager(t, { stateDir, port: await freeRun(3), token: true, args: ['-e', CLOSES_ON_SIGUSR2], ...options }))
  const b = await pm.startBackend(ROOT)
  const stranger = await startStranger(t, b.port)
  process.kill(b.pid, 'SIGUSR2')
  await seen(/^CLOSED$/)
  stranger.listen()
  assert.equal(await stranger.line(/^(LISTENING|FAILED)/), 'LISTENING')
  const received = () => stranger.lines.filter((l) => l.startsWith('DATA ')).map((l) => JSON.parse(l.slice(5))).join('')
  const connections = () => stranger.lines.filter((l) => l === 'CONN').length
  return { pm, b, stranger, received, connections }
}

test("the watchdog's probes never send the token to another user's listener on the backend's port", { skip: asRootOnLinux }, async (t) => {
  const { b, stranger, received } = await strangerOnBackendPort(t, { healthIntervalMs: 100 })
  // Probes every 100 ms: they reach the stranger, and send it nothing.
  await stranger.line(/^CONN$/, 10000)
  await waitFor(() => stranger.lines.filter((l) => l === 'CONN').length >= 3, 10000, 'three probes')
  assert.equal(received(), '', 'not a byte of any request')
  assert.ok(!received().includes(b.token))
})

test("the shutdown.http stop request never sends the token to another user's listener on the backend's port", { skip: asRootOnLinux }, async (t) => {
  const { pm, b, stranger, received, connections } = await strangerOnBackendPort(t, { shutdown: { http: 'POST /shutdown' } })
  assert.equal(connections(), 0, 'nothing probes the port before the stop')
  // The stop's request reaches the stranger and is not sent; SIGTERM then ends the backend.
  const stopped = await pm.stopBackend()
  assert.equal(stopped.pid, b.pid)
  await stranger.line(/^CONN$/, 10000)
  assert.equal(received(), '', 'not a byte of the stop request')
})

test("the dashboard's health probe never sends the token to another user's listener on the backend's port", { skip: asRootOnLinux }, async (t) => {
  const { pm, b, stranger, received } = await strangerOnBackendPort(t, {})
  const dash = await pm.dashboard()
  t.after(() => dash.close())
  const snapshot = async () => (await fetch(dash.url.replace('/?', '/snapshot?'))).json()
  // A snapshot older than 1.5 s is sampled again, with a probe: ask until one reached the stranger.
  for (let tries = 0; tries < 10 && !stranger.lines.includes('CONN'); tries++) {
    await snapshot()
    await stranger.line(/^CONN$/, 2000).catch(() => {})
  }
  assert.ok(stranger.lines.includes('CONN'), `the dashboard never probed the port: ${JSON.stringify(stranger.lines)}`)
  assert.equal(received(), '', 'not a byte of any request')
  assert.ok(!received().includes(b.token))
  assert.equal((await snapshot()).backends[0].healthStatus, null)
})

test("the dashboard's health probe sends the token to the backend's own listener", { skip: wineLacks("fetch (undici) fails to connect to loopback with UNKNOWN (-4094) where node:net and node:http connect") }, async (t) => {
  const { pm } = fixtureManager(t, { port: await freeRun(3), token: true, env: { REQUIRE_TOKEN: '1' } })
  await pm.startBackend(ROOT)
  const dash = await pm.dashboard()
  t.after(() => dash.close())
  const line = (await (await fetch(dash.url.replace('/?', '/snapshot?'))).json()).backends[0]
  assert.equal(line.healthStatus, 200, JSON.stringify(line))
  assert.equal(typeof line.healthLatencyMs, 'number')
})
