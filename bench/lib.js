'use strict'
// Shared pieces of the benchmarks: statistics, timing, process checks, an independent bindability check.
const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')

const now = () => performance.timeOrigin + performance.now()
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

function quantile(values, q) {
  if (values.length === 0) return NaN
  const sorted = [...values].sort((a, b) => a - b)
  const pos = (sorted.length - 1) * q
  const lo = Math.floor(pos)
  const hi = Math.ceil(pos)
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo)
}

function summary(values) {
  return { n: values.length, median: quantile(values, 0.5), p95: quantile(values, 0.95), min: Math.min(...values), max: Math.max(...values) }
}

/** Runs `fn` `runs` times after `warmup` unrecorded runs; returns the durations in ms. */
async function time(fn, runs, warmup = 3) {
  for (let i = 0; i < warmup; i++) await fn()
  const out = []
  for (let i = 0; i < runs; i++) {
    const t = performance.now()
    await fn()
    out.push(performance.now() - t)
  }
  return out
}

const { isAlive } = require('../__test__/procs.js')

function listenOnce(host, port) {
  return new Promise((resolve) => {
    const server = net.createServer()
    server.once('error', (err) => resolve(err.code === 'EADDRNOTAVAIL' || err.code === 'EAFNOSUPPORT'))
    server.listen({ host, port, ipv6Only: host.includes(':'), exclusive: true }, () => server.close(() => resolve(true)))
  })
}

/** Independent of the code under test: can a server listen on `port` on every loopback and wildcard address? */
async function bindableEverywhere(port) {
  for (const host of ['127.0.0.1', '::1', '0.0.0.0', '::']) if (!(await listenOnce(host, port))) return false
  return true
}

/** Holds `port` on `host` (IPv6 hosts only on IPv6); resolves to a closer. */
function hold(host, port) {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen({ host, port, ipv6Only: host.includes(':'), exclusive: true }, () => resolve(() => new Promise((r) => server.close(r))))
  })
}

async function freeRun(count, from = 30000) {
  for (let start = from; start < 60000; start += count + 7) {
    let ok = true
    for (let p = start; p < start + count && ok; p++) ok = await bindableEverywhere(p)
    if (ok) return start
  }
  throw new Error('no free run of ports')
}

function machine() {
  const cpus = os.cpus()
  return {
    cpu: cpus[0]?.model?.trim() ?? 'unknown',
    cores: cpus.length,
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
  }
}

/** Rows of this project (the rest are peers). */
const isOurs = (name) => name.startsWith('backend-process-manager')

const fmt = (ms) => (Number.isFinite(ms) ? (ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(3)) : '-')

module.exports = { now, sleep, quantile, summary, time, isAlive, bindableEverywhere, hold, freeRun, machine, fmt, isOurs }
