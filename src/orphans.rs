//! What the records of a state folder say about the machine: which backends run, which are orphans (their
//! app is gone), which records are stale — and the cleanup that terminates true orphans only.

use crate::identity;
use crate::record::{self, Entry, Problem, Record};
use crate::sockets;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordState {
  /// The backend runs and the app that started it is alive.
  Running,
  /// The backend runs but its app is gone.
  Orphaned,
  /// The recorded process is gone, or its pid now names another process.
  Stale,
  /// The file cannot be trusted or parsed.
  Invalid,
}

impl RecordState {
  pub fn as_str(self) -> &'static str {
    match self {
      RecordState::Running => "running",
      RecordState::Orphaned => "orphaned",
      RecordState::Stale => "stale",
      RecordState::Invalid => "invalid",
    }
  }
}

pub fn classify(record: &Record) -> RecordState {
  if !record.backend_is_alive() {
    RecordState::Stale
  } else if record.is_orphaned() {
    RecordState::Orphaned
  } else {
    RecordState::Running
  }
}

#[derive(Debug, Clone)]
pub struct RecordStatus {
  pub file: PathBuf,
  pub record: Option<Record>,
  pub state: RecordState,
  pub problem: Option<String>,
  pub usage: Option<identity::Usage>,
  /// The process listening on the record's port, where the OS tells.
  pub listener: Option<sockets::PortHolder>,
}

/// Every record of `dir` with its state, the backend's CPU and memory, and who listens on its port.
pub fn statuses(dir: &Path) -> Vec<RecordStatus> {
  let entries = record::list_records(dir, None);
  let (ports, pids): (Vec<u16>, Vec<u32>) = entries
    .iter()
    .filter_map(|e| e.record.as_ref().ok().map(|r| (r.port, r.pid)))
    .unzip();
  let holders = sockets::port_holders_hinted(&ports, &pids);
  entries
    .into_iter()
    .map(|Entry { path, record }| match record {
      Ok(record) => {
        let state = classify(&record);
        let usage = matches!(state, RecordState::Running | RecordState::Orphaned)
          .then(|| identity::usage(record.pid))
          .flatten();
        let listener = holders.iter().find(|h| h.port == record.port).cloned();
        RecordStatus {
          file: path,
          record: Some(record),
          state,
          problem: None,
          usage,
          listener,
        }
      }
      Err(problem) => RecordStatus {
        file: path,
        record: None,
        state: RecordState::Invalid,
        problem: Some(problem.reason().to_string()),
        usage: None,
        listener: None,
      },
    })
    .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CleanupAction {
  /// An orphaned backend was terminated and its record deleted.
  Terminated,
  /// A record naming a gone or different process was deleted; nothing was signalled.
  StaleRemoved,
  /// A record that cannot be parsed or trusted was deleted.
  InvalidRemoved,
  /// An orphan that matched its record could not be terminated (it is still alive).
  Failed,
  /// A record file could not be deleted.
  NotDeleted,
  /// A file that is not safe to act on (symlink, another user's, writable by others) was left in place.
  Untrusted,
  /// Another process holds the record's lock: it is cleaning up that orphan right now.
  Busy,
}

#[derive(Debug, Clone)]
pub struct CleanupItem {
  pub file: PathBuf,
  pub name: Option<String>,
  pub pid: Option<u32>,
  pub port: Option<u16>,
  pub action: CleanupAction,
  pub detail: String,
}

/// Terminates orphaned backends (of `name`, or of every name) whose live process still matches its record,
/// and deletes stale and invalid records. Backends whose app is alive are left alone. Blocking: run it off
/// the JS thread.
pub fn cleanup(dir: &Path, name: Option<&str>, grace: Duration) -> Vec<CleanupItem> {
  let mut items = Vec::new();
  for Entry { path, record } in record::list_records(dir, name) {
    let item = |action, detail: String, r: Option<&Record>| CleanupItem {
      file: path.clone(),
      name: r.map(|r| r.name.clone()),
      pid: r.map(|r| r.pid),
      port: r.map(|r| r.port),
      action,
      detail,
    };
    // Held while an orphan is terminated, so that a second cleaner skips it (dropped at the end of the loop).
    let mut _lock = None;
    let mut found = match &record {
      Err(Problem::Untrusted(reason)) => {
        items.push(item(
          CleanupAction::Untrusted,
          format!("ignored a file that is not safe to act on ({reason}); remove it by hand if it is yours"),
          None,
        ));
        continue;
      }
      Err(Problem::Invalid(reason)) => item(
        CleanupAction::InvalidRemoved,
        format!("deleted unreadable record: {reason}"),
        None,
      ),
      Ok(r) => match classify(r) {
        RecordState::Running => continue,
        RecordState::Stale | RecordState::Invalid => item(
          CleanupAction::StaleRemoved,
          format!(
            "deleted stale record: process {} is gone or is another program now",
            r.pid
          ),
          Some(r),
        ),
        RecordState::Orphaned => {
          _lock = record::lock_record(&path);
          if _lock.is_none() {
            items.push(item(
              CleanupAction::Busy,
              format!(
                "orphaned backend pid {} is being cleaned up by another process",
                r.pid
              ),
              Some(r),
            ));
            continue;
          }
          if crate::stop::terminate_orphan(r.pid, &r.identity(), grace) {
            item(
              CleanupAction::Terminated,
              format!(
                "terminated orphaned backend pid {} (port {})",
                r.pid, r.port
              ),
              Some(r),
            )
          } else if r.backend_is_alive() {
            item(
              CleanupAction::Failed,
              format!("could not terminate orphaned backend pid {}", r.pid),
              Some(r),
            )
          } else {
            // It ended (or another cleaner ended it) while we looked.
            item(
              CleanupAction::StaleRemoved,
              format!("deleted record of backend pid {}, which has exited", r.pid),
              Some(r),
            )
          }
        }
      },
    };
    if found.action != CleanupAction::Failed {
      if let Err(e) = record::delete_record(&path) {
        found.action = CleanupAction::NotDeleted;
        found.detail = format!("{}; but the record could not be deleted: {e}", found.detail);
      }
    }
    items.push(found);
  }
  items
}
