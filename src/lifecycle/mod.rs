//! The lifecycle of one named backend: clean up orphans → pick a port → spawn → record → wait until
//! healthy → run → stop. `manager` holds the phases and the public operations, `attempt` one try on one
//! port, `instance` one spawned process and its record, `launch` what to run.

mod attempt;
mod instance;
pub mod launch;
pub mod manager;

pub use manager::Manager;

use crate::os::spawn::{ExitInfo, Stream};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct BackendInfo {
  pub pid: u32,
  pub port: u16,
  pub host: String,
  pub url: String,
  /// Epoch milliseconds.
  pub started_at: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StopResult {
  pub pid: u32,
  pub exit: ExitInfo,
  pub forced: bool,
  /// From the stop request until the whole process group was gone.
  pub duration: Duration,
  /// Processes of the backend still alive after the force kill (its record is then kept).
  pub survivors: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
  Info,
  Warn,
}

/// Something that happened, for the app (the binding forwards these to JS as events and log lines).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
  Exit {
    pid: u32,
    exit: ExitInfo,
    expected: bool,
  },
  Log {
    level: Level,
    message: String,
  },
}

/// Where a manager reports what happens. `line` is separate: it is the one that can flood.
pub trait Events: Send + Sync {
  fn line(&self, stream: Stream, text: &str);
  fn emit(&self, event: Event);
}

#[cfg(test)]
mod tests;
