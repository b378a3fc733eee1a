//! One spawned backend process: what the app knows of it, its PID record, and its end, which happens
//! exactly once, whoever gets there first (a stop, its own exit, a failed start). The port it listens on
//! is held by its owner (a start attempt, then the supervised run), which outlives it across restarts.

use super::{BackendInfo, StopResult};
use crate::blocking;
use crate::error::Result;
use crate::os::process;
use crate::os::spawn::Child;
use crate::os::stop::{self, Polite};
use crate::state::record::{self, Record, MARKER, RECORD_VERSION};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// The record file of an instance. Writes and the final delete are serialized by the lock around it, and
/// once `closed` nothing is written again: a record never outlives its backend (nor is rewritten after).
#[derive(Default)]
struct RecordFile {
  path: Option<PathBuf>,
  /// What the file holds now: a rewrite with the same content is skipped (it would cost an fsync).
  written: Option<Record>,
  closed: bool,
}

pub struct Instance {
  pub info: BackendInfo,
  pub child: Arc<Child>,
  name: String,
  state_dir: PathBuf,
  restarts: u32,
  replica_of: Option<u16>,
  /// When it was spawned: its uptime.
  pub spawned: Instant,
  record: tokio::sync::Mutex<RecordFile>,
  /// The temporary file made after the first write for the next (the rewrite at ready); only the writer
  /// thread puts it here and takes it, in the order of the writes.
  spare: Arc<Mutex<Option<record::Spare>>>,
  stop_requested_at: Mutex<Option<Instant>>,
  /// The watchdog's verdict, kept in the record for `backend-pm status`.
  healthy: Mutex<Option<bool>>,
  health_path: String,
  finished: OnceCell<StopResult>,
  /// The last write of the record failed (reported once until a write succeeds again).
  record_failing: AtomicBool,
}

impl Instance {
  pub fn new(
    info: BackendInfo,
    child: Arc<Child>,
    name: &str,
    state_dir: PathBuf,
    health_path: &str,
    restarts: u32,
    replica_of: Option<u16>,
  ) -> Arc<Instance> {
    Arc::new(Instance {
      info,
      child,
      name: name.to_string(),
      state_dir,
      restarts,
      replica_of,
      spawned: Instant::now(),
      record: tokio::sync::Mutex::new(RecordFile::default()),
      spare: Arc::new(Mutex::new(None)),
      stop_requested_at: Mutex::new(None),
      healthy: Mutex::new(None),
      health_path: health_path.to_string(),
      finished: OnceCell::new(),
      record_failing: AtomicBool::new(false),
    })
  }

  /// Writes (or rewrites) the PID record with what runs now: a launcher may have exec'd the real server
  /// since the last write. Nothing is written once the instance has ended.
  pub async fn write_record(&self) -> Result<()> {
    let mut file = self.record.lock().await;
    let record = self.record_now(file.written.as_ref());
    if file.closed || file.written.as_ref() == Some(&record) {
      return Ok(());
    }
    let dir = self.state_dir.clone();
    let to_write = record.clone();
    let first = file.path.is_none();
    let spare = self.spare.clone();
    let written = blocking::write_in_turn_then(move || {
      let ready = lock(&spare).take();
      let written = record::rewrite_record(&dir, &to_write, !first, ready);
      // After the answer (and before any later write of the writer thread, which would make the
      // temporary name again): the previous record that an exchange left under the temporary name is
      // deleted, and after the first write the next one's file is made.
      let leftover = written.as_ref().ok().and_then(|w| w.leftover.clone());
      let prepare = first && written.is_ok();
      let rest: blocking::Job = Box::new(move || {
        if let Some(path) = leftover {
          let _ = std::fs::remove_file(path);
        }
        if prepare {
          *lock(&spare) = record::Spare::make(&dir, &to_write.name, to_write.pid);
        }
      });
      (written.map(|w| w.path), Some(rest))
    })
    .await
    .and_then(|written| written);
    file.path = Some(written?);
    self.record_failing.store(false, Ordering::SeqCst);
    file.written = Some(record);
    Ok(())
  }

  /// Whether a failed rewrite is the first of a run of failures (the app is told once, not at every
  /// health change of a backend on a full disk).
  pub fn first_record_failure(&self) -> bool {
    !self.record_failing.swap(true, Ordering::SeqCst)
  }

  /// The record for what runs now. After the first write only the executable can have changed (the start
  /// time is the fork's, kept across `exec`): only it is read again.
  fn record_now(&self, written: Option<&Record>) -> Record {
    let me = process::own_pid();
    let backend = match written {
      Some(before) if before.start_time != 0 => Some(process::Identity {
        start_time: before.start_time,
        exe: process::exe(self.info.pid),
      }),
      _ => process::identity(self.info.pid),
    };
    Record {
      manager: MARKER.into(),
      version: RECORD_VERSION,
      name: self.name.clone(),
      pid: self.info.pid,
      port: self.info.port,
      host: self.info.host.clone(),
      started_at: self.info.started_at,
      // Held before its program, it is still a copy of the app: its executable is not the backend's yet.
      // Its start time (fork time, kept across exec) identifies it meanwhile.
      exe: match self.child.is_held() {
        true => None,
        false => backend.as_ref().and_then(|b| b.exe.clone()),
      },
      start_time: backend.map_or(0, |b| b.start_time),
      owner_pid: me,
      owner_start_time: process::own_start_time(),
      restarts: self.restarts,
      health_path: Some(self.health_path.clone()),
      healthy: *self.healthy.lock().unwrap_or_else(|e| e.into_inner()),
      replica_of: self.replica_of,
      boot_id: process::boot_id(),
    }
  }

  /// Records the watchdog's verdict (rewriting the PID record when it changed).
  pub async fn set_healthy(&self, healthy: bool) -> Result<()> {
    let changed = self
      .healthy
      .lock()
      .unwrap_or_else(|e| e.into_inner())
      .replace(healthy)
      != Some(healthy);
    if changed {
      self.write_record().await?;
    }
    Ok(())
  }

  pub fn request_stop(&self) {
    let mut at = self
      .stop_requested_at
      .lock()
      .unwrap_or_else(|e| e.into_inner());
    at.get_or_insert_with(Instant::now);
  }

  fn stop_requested(&self) -> Option<Instant> {
    *self
      .stop_requested_at
      .lock()
      .unwrap_or_else(|e| e.into_inner())
  }

  /// Ends the instance once: stops it (when a stop was requested: `polite` requests, then the signal) or
  /// deals with its exit, stops what is left of its group, and closes its record — unless something
  /// survived even the force kill, whose record is then kept for a later cleanup. Every caller gets the
  /// result; the one whose call ended it also gets what there is to report (`Ended::report`).
  pub async fn end(&self, stop_timeout: Duration, polite: Polite) -> Ended {
    let report = Mutex::new(None);
    let result = self
      .finished
      .get_or_init(|| async {
        let requested = self.stop_requested();
        let began = requested.unwrap_or_else(Instant::now);
        let outcome = stop::stop_child(&self.child, stop_timeout, polite).await;
        let mut file = self.record.lock().await;
        file.closed = true;
        // Queued after the writes, so after the one that may still make it.
        let spare = self.spare.clone();
        let _ =
          blocking::write_in_turn(move || lock(&spare).take().map(record::Spare::discard)).await;
        let mut delete_error = None;
        if outcome.survivors.is_empty() {
          if let Some(path) = file.path.take() {
            let shown = path.display().to_string();
            if let Ok(Err(e)) = blocking::run(move || record::delete_record(&path)).await {
              delete_error = Some(format!("could not delete {shown}: {e}"));
            }
          }
        }
        drop(file);
        *report.lock().unwrap_or_else(|e| e.into_inner()) = Some(EndReport {
          asked: requested.is_some(),
          delete_error,
        });
        StopResult {
          pid: self.info.pid,
          exit: outcome.exit,
          forced: outcome.forced,
          duration: began.elapsed(),
          survivors: outcome.survivors,
          replicas: Vec::new(),
        }
      })
      .await
      .clone();
    Ended {
      result,
      report: report.into_inner().unwrap_or_else(|e| e.into_inner()),
    }
  }
}

/// How an instance ended.
pub struct Ended {
  pub result: StopResult,
  /// For the call that ended it (`None` for the others, which found it ended).
  pub report: Option<EndReport>,
}

pub struct EndReport {
  /// The end was asked for (a stop, or a watchdog verdict), rather than an exit of its own.
  pub asked: bool,
  /// What went wrong deleting its record.
  pub delete_error: Option<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
  mutex.lock().unwrap_or_else(|e| e.into_inner())
}
