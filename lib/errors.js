'use strict'
// The one error of a bad argument or option (docs/api.md: code ERR_INVALID_ARG), for every JS file.

/** An `Error` with `code: 'ERR_INVALID_ARG'` and `message`, to be thrown by the caller. */
function invalidArg(message) {
  const err = new Error(message)
  err.code = 'ERR_INVALID_ARG'
  return err
}

module.exports = { invalidArg }
