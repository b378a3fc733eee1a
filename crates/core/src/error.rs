//! One error type for the whole core. Each variant is one `code` of the API reference's error table
//! (docs/api.md, "Errors"); the binding turns it into a JS `Error` with that code, the variant's fields and,
//! where an OS error lies underneath, that error as `cause`.

use std::io;
use std::sync::Arc;

/// Cloneable, so that every caller waiting on one start gets its error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PmError {
  #[error("{0}")]
  InvalidArg(String),

  #[error("no free port between {start_port} and {end_port}: every port in the range is in use or reserved; widen `portRange` or free a port")]
  NoFreePort { start_port: u16, end_port: u16 },

  #[error("could not start `{command}`: {reason}")]
  SpawnFailed {
    command: String,
    /// What happened and what to do (the message).
    reason: String,
    /// The kind of failure, for the API's `reason` field (with `path` and `searched`).
    problem: Option<crate::os::spawn_problem::SpawnProblem>,
    #[source]
    source: Option<Arc<io::Error>>,
  },

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

  #[error("{folder} {path} cannot be used: {reason}")]
  StateDir {
    /// "state folder", or "log folder" (the same checks, `ERR_STATE_DIR` both).
    folder: &'static str,
    path: String,
    reason: String,
    #[source]
    source: Option<Arc<io::Error>>,
  },

  /// A file the caller asked for (a diagnostics archive) could not be written.
  #[error("{path} cannot be written: {reason}")]
  FileWrite {
    path: String,
    reason: String,
    #[source]
    source: Option<Arc<io::Error>>,
  },

  /// A bug: a panic or a broken invariant. The message says where.
  #[error("internal error in backend-process-manager: {0}. Please report it")]
  Internal(String),
}

pub type Result<T> = std::result::Result<T, PmError>;

/// The extra fields of an error code, in the API's names and JS-ready types.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
  Number(f64),
  Text(String),
  Lines(Vec<String>),
  Null,
}

impl PmError {
  pub fn code(&self) -> &'static str {
    match self {
      PmError::InvalidArg(_) => "ERR_INVALID_ARG",
      PmError::NoFreePort { .. } => "ERR_NO_FREE_PORT",
      PmError::SpawnFailed { .. } => "ERR_SPAWN_FAILED",
      PmError::BackendExited { .. } => "ERR_BACKEND_EXITED",
      PmError::StartTimeout { .. } => "ERR_START_TIMEOUT",
      PmError::StateDir { .. } => "ERR_STATE_DIR",
      PmError::FileWrite { .. } => "ERR_FILE_WRITE",
      PmError::Internal(_) => "ERR_INTERNAL",
    }
  }

  pub fn invalid(message: impl Into<String>) -> Self {
    PmError::InvalidArg(message.into())
  }

  pub fn state_dir(path: &std::path::Path, reason: impl Into<String>) -> Self {
    PmError::folder("state folder", path, reason)
  }

  /// A private folder (`folder`: what it is, e.g. "log folder") that cannot be used.
  pub fn folder(folder: &'static str, path: &std::path::Path, reason: impl Into<String>) -> Self {
    PmError::StateDir {
      folder,
      path: path.display().to_string(),
      reason: reason.into(),
      source: None,
    }
  }

  /// A state-folder error caused by an OS error, which is kept as the cause.
  pub fn state_dir_io(path: &std::path::Path, doing: &str, err: io::Error) -> Self {
    PmError::folder_io("state folder", path, doing, err)
  }

  /// As `folder`, caused by an OS error, which is kept as the cause.
  pub fn folder_io(
    folder: &'static str,
    path: &std::path::Path,
    doing: &str,
    err: io::Error,
  ) -> Self {
    PmError::StateDir {
      folder,
      path: path.display().to_string(),
      reason: format!("{doing}: {err}"),
      source: Some(Arc::new(err)),
    }
  }

  /// The fields the API lists for this code (`startPort`, `exitCode`, …).
  pub fn fields(&self) -> Vec<(&'static str, Field)> {
    let opt_num = |n: Option<i32>| n.map_or(Field::Null, |n| Field::Number(n.into()));
    let opt_text = |t: &Option<String>| t.clone().map_or(Field::Null, Field::Text);
    match self {
      PmError::InvalidArg(_) | PmError::Internal(_) => Vec::new(),
      PmError::NoFreePort {
        start_port,
        end_port,
      } => vec![
        ("startPort", Field::Number((*start_port).into())),
        ("endPort", Field::Number((*end_port).into())),
      ],
      PmError::SpawnFailed {
        command, problem, ..
      } => {
        let mut fields = vec![("command", Field::Text(command.clone()))];
        if let Some(p) = problem {
          fields.push(("reason", Field::Text(p.kind.as_str().into())));
          if let Some(path) = &p.path {
            fields.push(("path", Field::Text(path.display().to_string())));
          }
          if let Some(searched) = &p.searched {
            fields.push(("searched", Field::Lines(searched.clone())));
          }
        }
        fields
      }
      PmError::BackendExited {
        exit_code,
        signal,
        stderr_tail,
        ..
      } => vec![
        ("exitCode", opt_num(*exit_code)),
        ("signal", opt_text(signal)),
        ("stderrTail", Field::Lines(stderr_tail.clone())),
      ],
      PmError::StartTimeout {
        port,
        last_health_error,
        ..
      } => vec![
        ("port", Field::Number((*port).into())),
        ("lastHealthError", Field::Text(last_health_error.clone())),
      ],
      PmError::StateDir { path, .. } | PmError::FileWrite { path, .. } => {
        vec![("path", Field::Text(path.clone()))]
      }
    }
  }

  /// The OS error underneath, if any.
  pub fn os_cause(&self) -> Option<&io::Error> {
    match self {
      PmError::SpawnFailed { source, .. }
      | PmError::StateDir { source, .. }
      | PmError::FileWrite { source, .. } => source.as_deref(),
      _ => None,
    }
  }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
  payload
    .downcast_ref::<&str>()
    .map(|s| s.to_string())
    .or_else(|| payload.downcast_ref::<String>().cloned())
    .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs `work`; a panic in it becomes `ERR_INTERNAL` with the panic's message instead of unwinding.
pub fn catch_panic<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
  std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
    .unwrap_or_else(|panic| Err(PmError::Internal(panic_message(&*panic))))
}

/// Runs `work` as a task of its own; a panic in it becomes `ERR_INTERNAL` with the panic's message.
pub async fn catch_panic_async<T: Send + 'static>(
  work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
  match tokio::spawn(work).await {
    Ok(result) => result,
    Err(join) if join.is_panic() => Err(PmError::Internal(panic_message(&*join.into_panic()))),
    Err(_) => Err(PmError::Internal("the work was cancelled".into())),
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn every_code_has_the_fields_of_the_api() {
    let exited = PmError::BackendExited {
      message: "m".into(),
      exit_code: Some(3),
      signal: None,
      stderr_tail: vec!["x".into()],
    };
    assert_eq!(exited.code(), "ERR_BACKEND_EXITED");
    assert_eq!(
      exited.fields(),
      vec![
        ("exitCode", Field::Number(3.0)),
        ("signal", Field::Null),
        ("stderrTail", Field::Lines(vec!["x".into()]))
      ]
    );
    let dir = PmError::state_dir_io(
      std::path::Path::new("/x"),
      "creating it",
      io::Error::from(io::ErrorKind::PermissionDenied),
    );
    assert_eq!(dir.code(), "ERR_STATE_DIR");
    assert!(dir.os_cause().is_some());
    assert_eq!(PmError::Internal("x".into()).code(), "ERR_INTERNAL");
  }

  #[tokio::test]
  async fn a_panic_becomes_an_internal_error_with_its_message() {
    let err =
      catch_panic::<()>(|| panic!("thread name may not contain interior null bytes")).unwrap_err();
    assert_eq!(err.code(), "ERR_INTERNAL");
    assert!(err.to_string().contains("interior null bytes"), "{err}");
    let err = catch_panic_async::<()>(async { panic!("in a task: {}", 42) })
      .await
      .unwrap_err();
    assert_eq!(err.code(), "ERR_INTERNAL");
    assert!(err.to_string().contains("in a task: 42"), "{err}");
    assert_eq!(catch_panic_async(async { Ok(7) }).await.unwrap(), 7);
  }
}
