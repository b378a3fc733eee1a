'use strict'
// http-proxy (Node) in front of the replicas, round-robin, for the replicas area. Usage:
// node bench/replica-proxy.js <port> <keepalive|defaults> <target url>…  — prints `listening` once it does.
// `defaults`: createProxyServer({}) (no agent: a new upstream connection per request); `keepalive`: an
// http.Agent with keepAlive, its best setting for throughput. An upstream error is answered 502.
const http = require('node:http')
const httpProxy = require('http-proxy')

const [port, mode, ...targets] = process.argv.slice(2)
const proxy = httpProxy.createProxyServer(mode === 'keepalive' ? { agent: new http.Agent({ keepAlive: true }) } : {})
let next = 0
const server = http.createServer((req, res) => {
  proxy.web(req, res, { target: targets[next++ % targets.length] }, () => {
    if (!res.headersSent) res.statusCode = 502
    res.end()
  })
})
server.listen(Number(port), '127.0.0.1', () => console.log('listening'))
