'use strict'
// Constructor options of API.md: defaults, types and ranges. Bad options throw ERR_INVALID_ARG.

const native = require('../binding.js')
const { invalidArg } = require('./errors.js')

const DEFAULTS = {
  name: 'backend',
  entry: 'backend-nodejs/server.js',
  command: undefined,
  args: [],
  cwd: undefined,
  env: {},
  host: '127.0.0.1',
  port: 8000,
  portRange: 100,
  portEnv: 'PORT',
  healthPath: '/health',
  healthTimeoutMs: 1000,
  startTimeoutMs: 10000,
  stopTimeoutMs: 5000,
  stateDir: undefined,
  logger: console,
}

function show(value) {
  if (typeof value === 'string') return JSON.stringify(value)
  if (typeof value === 'number' || typeof value === 'boolean' || value == null) return String(value)
  return typeof value
}

function checkPort(value, what) {
  if (!Number.isInteger(value) || value < 1 || value > 65535) {
    throw invalidArg(`${what} must be an integer from 1 to 65535, got ${show(value)}`)
  }
}

function checkPositiveInt(value, what, max = 2 ** 32 - 1) {
  if (!Number.isInteger(value) || value < 1 || value > max) throw invalidArg(`${what} must be an integer from 1 to ${max}, got ${show(value)}`)
}

/** Like setTimeout's limit: about 24.8 days. */
const MAX_TIMEOUT_MS = 2 ** 31 - 1

function checkString(value, what, { allowEmpty = false } = {}) {
  if (typeof value !== 'string' || (!allowEmpty && value === '')) {
    throw invalidArg(`${what} must be a non-empty string, got ${show(value)}`)
  }
}

function checkTimeout(value, what) {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > MAX_TIMEOUT_MS) {
    throw invalidArg(`${what} must be a number of milliseconds from 0 to ${MAX_TIMEOUT_MS}, got ${show(value)}`)
  }
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/

function checkHost(value) {
  checkString(value, 'host')
  // `localhost` may resolve to ::1 or 127.0.0.1; the backend and the probe must agree on one address.
  if (value === 'localhost') return '127.0.0.1'
  const bare = value.replace(/^\[(.*)\]$/, '$1')
  if (IPV4.test(bare) || (bare.includes(':') && /^[0-9a-fA-F:.]+$/.test(bare))) return bare
  throw invalidArg(`host must be an IP address such as 127.0.0.1 or ::1, got ${show(value)}`)
}

/** Applies the defaults and checks every option; throws ERR_INVALID_ARG on the first bad one. */
function resolveOptions(options) {
  if (options === undefined || options === null) options = {}
  if (typeof options !== 'object' || Array.isArray(options)) throw invalidArg('options must be an object')
  for (const key of Object.keys(options)) {
    if (!(key in DEFAULTS)) throw invalidArg(`unknown option ${JSON.stringify(key)}; known options: ${Object.keys(DEFAULTS).join(', ')}`)
  }
  const o = { ...DEFAULTS }
  for (const [k, v] of Object.entries(options)) if (v !== undefined) o[k] = v

  checkString(o.name, 'name')
  if (/[\\/\0]/.test(o.name) || o.name.startsWith('.') || o.name.length > 100) {
    throw invalidArg(`name ${show(o.name)} must not contain path separators or start with a dot`)
  }
  checkString(o.entry, 'entry')
  if (o.command !== undefined) checkString(o.command, 'command')
  if (!Array.isArray(o.args) || !o.args.every((a) => typeof a === 'string')) throw invalidArg('args must be an array of strings')
  if (o.cwd !== undefined) checkString(o.cwd, 'cwd')
  if (o.env === null || typeof o.env !== 'object' || Array.isArray(o.env)) throw invalidArg('env must be an object of strings')
  for (const [k, v] of Object.entries(o.env)) {
    if (v !== undefined && v !== null && typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean') {
      throw invalidArg(`env.${k} must be a string, got ${show(v)}`)
    }
  }
  o.host = checkHost(o.host)
  checkPort(o.port, 'port')
  if (!Number.isInteger(o.portRange) || o.portRange < 0 || o.portRange > 65534) {
    throw invalidArg(`portRange must be an integer from 0 to 65534, got ${show(o.portRange)}`)
  }
  checkString(o.portEnv, 'portEnv')
  checkString(o.healthPath, 'healthPath')
  if (!o.healthPath.startsWith('/')) throw invalidArg(`healthPath must start with "/", got ${show(o.healthPath)}`)
  if (/[\s]/.test(o.healthPath)) throw invalidArg('healthPath must not contain white space')
  checkTimeout(o.healthTimeoutMs, 'healthTimeoutMs')
  checkTimeout(o.startTimeoutMs, 'startTimeoutMs')
  checkTimeout(o.stopTimeoutMs, 'stopTimeoutMs')
  if (o.stateDir === undefined) o.stateDir = native.defaultStateDir()
  checkString(o.stateDir, 'stateDir')
  if (o.logger !== false && (o.logger === null || typeof o.logger !== 'object')) {
    throw invalidArg('logger must be an object with info, warn and error methods, or false')
  }
  o.args = [...o.args]
  o.env = { ...o.env }
  return o
}

module.exports = { resolveOptions, checkPort, checkPositiveInt, checkTimeout, DEFAULTS }
