'use strict'
// A Node backend that answers its first request at once: plain `net`, no HTTP parser to warm up (Node's http
// needs 5-10 ms after listen for its first answer), so benchmarks of restarts measure the manager, not the
// backend. Appends the epoch ms of its process start to $START_MARK_FILE and of its listen to
// $LISTEN_MARK_FILE; prints a line once it listens (as most servers do); answers every request with 200.
const fs = require('node:fs')
const net = require('node:net')

const { env } = process
if (env.START_MARK_FILE) fs.appendFileSync(env.START_MARK_FILE, `${performance.timeOrigin}\n`)
const answer = Buffer.from('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok')
const server = net.createServer((socket) => {
  socket.once('data', () => socket.end(answer))
  socket.on('error', () => {})
})
server.listen(Number(env.PORT), env.HOST, () => {
  if (env.LISTEN_MARK_FILE) fs.appendFileSync(env.LISTEN_MARK_FILE, `${performance.timeOrigin + performance.now()}\n`)
  console.log(`listening on ${env.HOST}:${env.PORT}`)
})
