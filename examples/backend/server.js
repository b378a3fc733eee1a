'use strict'
// The example backend: a small HTTP server that listens where the manager tells it (PORT, HOST), answers
// /health, and shuts down cleanly on SIGTERM (closing its server, then exiting).
const http = require('node:http')

const port = Number(process.env.PORT || 8000)
const host = process.env.HOST || '127.0.0.1'
const startedAt = Date.now()

const server = http.createServer((req, res) => {
  if (req.url === '/health') {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ status: 'ok', pid: process.pid, uptimeMs: Date.now() - startedAt }))
    return
  }
  res.writeHead(200, { 'content-type': 'application/json' })
  res.end(JSON.stringify({ hello: 'from the example backend', path: req.url }))
})

server.listen(port, host, () => console.log(`example backend listening on http://${host}:${port}`))

function shutdown(signal) {
  console.log(`example backend got ${signal}, closing`)
  server.close(() => process.exit(0))
  server.closeAllConnections?.()
  // Don't hang forever on a stuck connection; the manager would force-kill us anyway.
  setTimeout(() => process.exit(0), 2000).unref()
}
process.on('SIGTERM', () => shutdown('SIGTERM'))
process.on('SIGINT', () => shutdown('SIGINT'))
