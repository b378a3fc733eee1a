//! One error type for the whole core. Each variant is one `code` of API.md's error table; the binding turns
//! it into a JS `Error` with that code and the variant's fields (see `to_js_payload`).

use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum PmError {
  #[error("{0}")]
  InvalidArg(String),

  #[error("no free port between {start_port} and {end_port}: every port in the range is in use or reserved; widen `portRange` or free a port")]
  NoFreePort { start_port: u16, end_port: u16 },

  #[error("could not start `{command}`: {reason}")]
  SpawnFailed { command: String, reason: String },

  #[error("{message}")]
  BackendExited {
    message: String,
    exit_code: Option<i32>,
    signal: Option<String>,
    stderr_tail: Vec<String>,
  },

  #[error("the backend did not become healthy on port {port} within {timeout_ms} ms (last health check: {last_health_error}); it has been stopped. Check its output, or raise `startTimeoutMs`")]
  StartTimeout {
    port: u16,
    timeout_ms: u64,
    last_health_error: String,
  },

  #[error("state folder {path} cannot be used: {reason}. Pass a writable `stateDir`")]
  StateDir { path: String, reason: String },
}

pub type Result<T> = std::result::Result<T, PmError>;

impl PmError {
  pub fn code(&self) -> &'static str {
    match self {
      PmError::InvalidArg(_) => "ERR_INVALID_ARG",
      PmError::NoFreePort { .. } => "ERR_NO_FREE_PORT",
      PmError::SpawnFailed { .. } => "ERR_SPAWN_FAILED",
      PmError::BackendExited { .. } => "ERR_BACKEND_EXITED",
      PmError::StartTimeout { .. } => "ERR_START_TIMEOUT",
      PmError::StateDir { .. } => "ERR_STATE_DIR",
    }
  }

  pub fn state_dir(path: &std::path::Path, err: impl std::fmt::Display) -> Self {
    PmError::StateDir {
      path: path.display().to_string(),
      reason: err.to_string(),
    }
  }

  /// The code, message and extra fields of API.md, as the JSON object the JS layer rebuilds the error from.
  pub fn to_js_payload(&self) -> Value {
    let mut payload = json!({ "code": self.code(), "message": self.to_string() });
    let extra = match self {
      PmError::InvalidArg(_) => json!({}),
      PmError::NoFreePort {
        start_port,
        end_port,
      } => json!({ "startPort": start_port, "endPort": end_port }),
      PmError::SpawnFailed { command, .. } => json!({ "command": command }),
      PmError::BackendExited {
        exit_code,
        signal,
        stderr_tail,
        ..
      } => json!({ "exitCode": exit_code, "signal": signal, "stderrTail": stderr_tail }),
      PmError::StartTimeout {
        port,
        last_health_error,
        ..
      } => json!({ "port": port, "lastHealthError": last_health_error }),
      PmError::StateDir { path, .. } => json!({ "path": path }),
    };
    if let (Value::Object(target), Value::Object(fields)) = (&mut payload, extra) {
      target.extend(fields);
    }
    payload
  }
}
