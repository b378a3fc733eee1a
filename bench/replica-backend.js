'use strict'
// The backend of the replicas area: a minimal Node HTTP server answering a short body ("hello world\n";
// "ok" on /health). It serves on the socket the manager hands over (descriptor 3) when LISTEN_FDS=1, else
// on PORT (and HOST). With CLUSTER_WORKERS=N it is Node's cluster primary instead (pm2's cluster mode): it
// forks N workers running this same file, which listen on PORT through it; it prints `workers <pid> …` once
// every worker listens, and on SIGTERM it stops them and exits once they have.
const cluster = require('node:cluster')
const http = require('node:http')

const workers = Number(process.env.CLUSTER_WORKERS ?? 0)

if (workers > 0 && cluster.isPrimary) {
  let listening = 0
  for (let i = 0; i < workers; i++) cluster.fork()
  cluster.on('listening', () => {
    if (++listening === workers) console.log(`workers ${Object.values(cluster.workers).map((w) => w.process.pid).join(' ')}`)
  })
  const alive = new Set(Object.values(cluster.workers))
  let stopping = false
  cluster.on('exit', (w) => {
    alive.delete(w)
    if (stopping && alive.size === 0) process.exit(0)
  })
  process.on('SIGTERM', () => {
    stopping = true
    if (alive.size === 0) process.exit(0)
    for (const w of alive) w.process.kill('SIGTERM')
  })
} else {
  const BODY = 'hello world\n'
  const server = http.createServer((req, res) => {
    res.setHeader('content-type', 'text/plain')
    res.end(req.url === '/health' ? 'ok' : BODY)
  })
  if (process.env.LISTEN_FDS === '1') server.listen({ fd: 3 })
  else server.listen(Number(process.env.PORT), process.env.HOST)
}
