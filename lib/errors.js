'use strict'
// Public errors: an Error with a stable `code` and the fields of API.md's error table.

function makeError(code, message, fields = {}) {
  const err = new Error(message)
  err.code = code
  Object.assign(err, fields)
  return err
}

function invalidArg(message) {
  return makeError('ERR_INVALID_ARG', message)
}

/** The native layer rejects with a JSON payload `{ code, message, ...fields }` as the message. */
function fromNative(err) {
  if (!err || typeof err.message !== 'string' || !err.message.startsWith('{')) return err
  let payload
  try {
    payload = JSON.parse(err.message)
  } catch {
    return err
  }
  const { code, message, ...fields } = payload
  if (typeof code !== 'string') return err
  return makeError(code, message, fields)
}

module.exports = { makeError, invalidArg, fromNative }
