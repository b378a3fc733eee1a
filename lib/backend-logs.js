'use strict'
// What the monitor and the dashboard show of a backend's log (docs/api.md "Logs"): where its file is, and for
// a backend that failed, the last lines it wrote to stderr — the first thing to read when it will not run.
const native = require('../binding.js')

/** Lines of stderr shown for a failed backend. */
const STDERR_TAIL_LINES = 5

/** `<logDir>/<name>.log`; `null` without a log folder (logs off) or for a name no log file can have. */
function logFileOf(logDir, name) {
  if (!logDir || name == null) return null
  try {
    return native.logFilePath(logDir, name)
  } catch {
    return null
  }
}

/** The last `lines` stderr lines of `name`'s log (rotated files included), oldest first; `[]` when there are none. */
async function stderrTail(logDir, name, lines = STDERR_TAIL_LINES) {
  if (logFileOf(logDir, name) === null) return []
  try {
    return (await native.readLogs(logDir, name, { lines, stream: 'err' })).map((l) => l.line)
  } catch {
    // An unreadable folder says nothing about the backend: the monitor goes on without its lines.
    return []
  }
}

module.exports = { logFileOf, stderrTail, STDERR_TAIL_LINES }
