//! What the records of a state folder say about the machine: which backends run, which are orphans (their
//! app is gone), which records are stale — and the cleanup that terminates true orphans only.

use super::record::{self, Entry, Problem, Record};
use crate::error::Result;
use crate::net::listeners::{self, PortHolder};
use crate::os::process::{self, AtPid};
use crate::os::stop::{self, OrphanEnd};
use crate::os::tree;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordState {
  /// The backend runs and the app that started it is alive.
  Running,
  /// The backend runs but its app is gone.
  Orphaned,
  /// The backend's own process is gone but processes of its group live on (a wrapper such as `npm start`
  /// died and left its server running), and its app is gone.
  OrphanedGroup,
  /// The recorded process is gone, or its pid now names another process.
  Stale,
  /// One of ours, but unreadable.
  Invalid,
  /// Not a record of this library, or not safe to act on: left alone.
  Foreign,
}

impl RecordState {
  pub fn as_str(self) -> &'static str {
    match self {
      RecordState::Running => "running",
      RecordState::Orphaned | RecordState::OrphanedGroup => "orphaned",
      RecordState::Stale => "stale",
      RecordState::Invalid => "invalid",
      RecordState::Foreign => "foreign",
    }
  }
}

/// What a record's backend is now. A record of another boot, or whose pid now names another process (even
/// one that leads its own group), is stale; only the recorded process, or the group it left when it
/// exited (nothing at its pid, or its zombie), can be the backend.
pub fn classify(record: &Record) -> RecordState {
  if record.of_another_boot() {
    return RecordState::Stale;
  }
  match record.backend() {
    AtPid::Recorded if record.is_orphaned() => RecordState::Orphaned,
    AtPid::Recorded => RecordState::Running,
    AtPid::Exited
      if record.is_orphaned()
        && !stop::orphaned_group(record.pid, record.start_time).is_empty() =>
    {
      RecordState::OrphanedGroup
    }
    AtPid::Exited | AtPid::Stranger => RecordState::Stale,
  }
}

/// What a backend's processes use together.
#[derive(Debug, Clone, Default)]
pub struct TreeStatus {
  pub uptime_ms: u64,
  /// Average over the backend's life, in percent of one core.
  pub cpu_percent: f64,
  pub cpu_time_ms: u64,
  pub memory_bytes: u64,
  pub process_count: u32,
  /// The executable name of the backend's own process (or of its group's first member).
  pub name: String,
}

#[derive(Debug, Clone)]
pub struct RecordStatus {
  pub file: PathBuf,
  pub record: Option<Record>,
  pub state: RecordState,
  pub problem: Option<String>,
  pub usage: Option<TreeStatus>,
  /// The process listening on the record's port, where the OS tells.
  pub listener: Option<PortHolder>,
}

/// The processes of a record's backend: its own tree, or what is left of its group.
fn processes(record: &Record, state: RecordState) -> Vec<u32> {
  match state {
    RecordState::Running | RecordState::Orphaned => tree::with_descendants(record.pid),
    RecordState::OrphanedGroup => stop::orphaned_group(record.pid, record.start_time),
    _ => Vec::new(),
  }
}

fn tree_status(record: &Record, pids: &[u32]) -> Option<TreeStatus> {
  let first = *pids.first()?;
  let usage = tree::usage(pids);
  let uptime_ms = now_ms().saturating_sub(record.started_at);
  let cpu_time_ms = usage.cpu_time.as_millis() as u64;
  Some(TreeStatus {
    uptime_ms,
    cpu_percent: if uptime_ms > 0 {
      (cpu_time_ms as f64 / uptime_ms as f64 * 1000.0).round() / 10.0
    } else {
      0.0
    },
    cpu_time_ms,
    memory_bytes: usage.memory_bytes,
    process_count: usage.process_count,
    name: process::process_name(first).unwrap_or_default(),
  })
}

fn now_ms() -> u64 {
  std::time::SystemTime::now()
    .duration_since(std::time::UNIX_EPOCH)
    .map_or(0, |d| d.as_millis() as u64)
}

/// Every record-like file of `dir` with its state, the backend's CPU and memory (its whole tree), and who
/// listens on its port. Blocking: run it off the JS thread.
pub fn statuses(dir: &Path) -> Result<Vec<RecordStatus>> {
  let entries = record::list_records(dir, None)?;
  let classified: Vec<(Entry, RecordState, Vec<u32>)> = entries
    .into_iter()
    .map(|entry| {
      let state = match &entry.record {
        Ok(r) => classify(r),
        Err(Problem::Invalid(_)) => RecordState::Invalid,
        Err(_) => RecordState::Foreign,
      };
      let pids = entry
        .record
        .as_ref()
        .map(|r| processes(r, state))
        .unwrap_or_default();
      (entry, state, pids)
    })
    .collect();
  let ports: Vec<u16> = classified
    .iter()
    .filter_map(|(e, _, _)| e.record.as_ref().ok().map(|r| r.port))
    .collect();
  let likely: Vec<u32> = classified
    .iter()
    .flat_map(|(_, _, pids)| pids.iter().copied())
    .collect();
  let holders = listeners::port_holders(&ports, &likely);
  Ok(
    classified
      .into_iter()
      .map(|(Entry { path, record }, state, pids)| match record {
        Ok(record) => RecordStatus {
          usage: tree_status(&record, &pids),
          listener: holders.iter().find(|h| h.port == record.port).cloned(),
          file: path,
          record: Some(record),
          state,
          problem: None,
        },
        Err(problem) => RecordStatus {
          file: path,
          record: None,
          state,
          problem: Some(problem.reason().to_string()),
          usage: None,
          listener: None,
        },
      })
      .collect(),
  )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupAction {
  /// An orphaned backend was terminated and its record deleted.
  Terminated,
  /// A record naming a gone or different process was deleted; nothing was signalled.
  StaleRemoved,
  /// A record of ours that cannot be read was deleted.
  InvalidRemoved,
  /// An orphan that matched its record could not be terminated (it is still alive).
  Failed,
  /// A record file could not be deleted.
  NotDeleted,
  /// A file that is not safe to act on (symlink, another user's, writable by others) was left in place.
  Untrusted,
  /// A file that is not a record of this library was left in place.
  Foreign,
  /// Another process holds the record's lock: it is cleaning up that orphan right now.
  Busy,
  /// The orphan's group holds this process or one of its ancestors: nothing was signalled.
  Protected,
}

impl CleanupAction {
  pub fn as_str(self) -> &'static str {
    match self {
      CleanupAction::Terminated => "terminated",
      CleanupAction::StaleRemoved => "stale-removed",
      CleanupAction::InvalidRemoved => "invalid-removed",
      CleanupAction::Failed => "failed",
      CleanupAction::NotDeleted => "not-deleted",
      CleanupAction::Untrusted => "untrusted",
      CleanupAction::Foreign => "foreign",
      CleanupAction::Busy => "busy",
      CleanupAction::Protected => "protected",
    }
  }

  /// Whether the record file goes once the action is done.
  fn deletes_record(self) -> bool {
    matches!(
      self,
      CleanupAction::Terminated | CleanupAction::StaleRemoved | CleanupAction::InvalidRemoved
    )
  }
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
/// and the orphaned groups of dead wrappers; deletes stale records, broken records of ours and the
/// temporary files of writers killed mid-write. Backends
/// whose app is alive, files that are not ours and this process's own ancestry are left alone. Blocking:
/// run it off the JS thread.
pub fn cleanup(dir: &Path, name: Option<&str>, grace: Duration) -> Result<Vec<CleanupItem>> {
  // Listing checks the folder first: nothing is deleted in one that is not safe.
  let entries = record::list_records(dir, name)?;
  record::remove_dead_temp_files(dir, name);
  let protected = tree::ancestry(process::own_pid());
  let items = entries
    .into_iter()
    .filter_map(|Entry { path, record }| {
      let (action, detail, record) = match record {
        Ok(r) => {
          let (action, detail) = clean_record(&path, &r, grace, &protected)?;
          (action, detail, Some(r))
        }
        Err(problem) => {
          let (action, detail) = problem_action(&problem);
          (action, detail, None)
        }
      };
      Some(finish_item(path, record, action, detail))
    })
    .collect();
  Ok(items)
}

fn problem_action(problem: &Problem) -> (CleanupAction, String) {
  match problem {
    Problem::Foreign(reason) => (
      CleanupAction::Foreign,
      format!("left a file that is not a PID record of this library in place ({reason})"),
    ),
    Problem::Untrusted(reason) => (
      CleanupAction::Untrusted,
      format!(
        "ignored a file that is not safe to act on ({reason}); remove it by hand if it is yours"
      ),
    ),
    Problem::Invalid(reason) => (
      CleanupAction::InvalidRemoved,
      format!("deleted an unreadable record: {reason}"),
    ),
  }
}

/// Stops the backend of one record whatever its app's state (the monitor's and the dashboard's stop
/// button): identity-checked like a cleanup, and never this process or its parents. Its app, if alive,
/// sees an exit it did not ask for (and restarts it if its policy says so). Blocking.
pub fn stop_record(path: &Path, grace: Duration) -> Result<CleanupItem> {
  let read = record::read_record_in_state_dir(path)?;
  let protected = tree::ancestry(process::own_pid());
  let (action, detail, record) = match read {
    Ok(r) => {
      let (action, detail) = end_record(path, &r, classify(&r), grace, &protected);
      (action, detail, Some(r))
    }
    Err(problem) => {
      let (action, detail) = problem_action(&problem);
      // Only a stop was asked for: a broken record of ours is still left for a cleanup to judge.
      let action = match action {
        CleanupAction::InvalidRemoved => CleanupAction::Untrusted,
        other => other,
      };
      (action, detail, None)
    }
  };
  Ok(finish_item(path.to_path_buf(), record, action, detail))
}

/// What to do with one readable record; `None` for a backend whose app is alive (left alone, unreported).
fn clean_record(
  path: &Path,
  r: &Record,
  grace: Duration,
  protected: &HashSet<u32>,
) -> Option<(CleanupAction, String)> {
  let state = classify(r);
  if state == RecordState::Running {
    return None;
  }
  Some(end_record(path, r, state, grace, protected))
}

/// Ends the backend of a record in `state` (terminating it unless it is stale).
fn end_record(
  path: &Path,
  r: &Record,
  state: RecordState,
  grace: Duration,
  protected: &HashSet<u32>,
) -> (CleanupAction, String) {
  if state == RecordState::Stale {
    let why = if r.of_another_boot() {
      "was written before the machine restarted"
    } else {
      "is gone or is another program now"
    };
    return (
      CleanupAction::StaleRemoved,
      format!("deleted stale record: process {} {why}", r.pid),
    );
  }
  // Held while the orphan is terminated, so that a second cleaner skips it.
  let Some(_lock) = record::lock_record(path) else {
    return (
      CleanupAction::Busy,
      format!(
        "orphaned backend pid {} is being cleaned up by another process",
        r.pid
      ),
    );
  };
  let end = match state {
    RecordState::OrphanedGroup => {
      stop::terminate_orphaned_group(r.pid, r.start_time, grace, protected)
    }
    _ => stop::terminate_orphan(r.pid, &r.identity(), grace, protected),
  };
  let what = if state == RecordState::OrphanedGroup {
    format!(
      "the processes left in the group of orphaned backend pid {} (port {})",
      r.pid, r.port
    )
  } else {
    let orphaned = if state == RecordState::Orphaned {
      "orphaned "
    } else {
      ""
    };
    format!("{orphaned}backend pid {} (port {})", r.pid, r.port)
  };
  match end {
    OrphanEnd::Terminated => (CleanupAction::Terminated, format!("terminated {what}")),
    OrphanEnd::Survived => (CleanupAction::Failed, format!("could not terminate {what}")),
    OrphanEnd::Protected => (
      CleanupAction::Protected,
      format!("did not signal {what}: its group holds this process or one of its parents"),
    ),
    // It ended (or another cleaner ended it) while we looked.
    OrphanEnd::NotFound => (
      CleanupAction::StaleRemoved,
      format!(
        "deleted the record of backend pid {}, which has exited",
        r.pid
      ),
    ),
  }
}

fn finish_item(
  file: PathBuf,
  record: Option<Record>,
  mut action: CleanupAction,
  mut detail: String,
) -> CleanupItem {
  if action.deletes_record() {
    if let Err(e) = record::delete_record(&file) {
      action = CleanupAction::NotDeleted;
      detail = format!("{detail}; but the record could not be deleted: {e}");
    }
  }
  CleanupItem {
    name: record.as_ref().map(|r| r.name.clone()),
    pid: record.as_ref().map(|r| r.pid),
    port: record.as_ref().map(|r| r.port),
    file,
    action,
    detail,
  }
}

#[cfg(all(test, unix))]
mod tests {
  use super::*;

  fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(file);
    let mut f = std::fs::OpenOptions::new()
      .write(true)
      .create_new(true)
      .mode(0o600)
      .open(&path)
      .unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    path
  }

  #[test]
  fn files_that_are_not_ours_survive_every_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let invoice = write(dir.path(), "invoice-2024.json", "{\"total\": 12}");
    let backup = write(dir.path(), "backup-20250101.json", "not even json");
    let items = cleanup(dir.path(), None, Duration::from_millis(100)).unwrap();
    assert_eq!(items.len(), 2);
    assert!(
      items.iter().all(|i| i.action == CleanupAction::Foreign),
      "{items:?}"
    );
    assert!(invoice.exists() && backup.exists());
    let invoice_named = cleanup(dir.path(), Some("invoice"), Duration::from_millis(100)).unwrap();
    assert_eq!(invoice_named[0].action, CleanupAction::Foreign);
    assert!(invoice.exists());
  }

  /// A record naming this very process (or its parent), with a dead owner: never signalled.
  #[test]
  fn a_cleanup_never_signals_its_own_process_or_its_ancestors() {
    let dir = tempfile::tempdir().unwrap();
    let me = process::own_pid();
    for pid in [me, process::parent(me).unwrap()] {
      let mut r = crate::state::record::tests::sample("self", pid);
      let identity = process::identity(pid).unwrap();
      r.start_time = identity.start_time;
      r.exe = identity.exe;
      r.owner_pid = 999_999;
      r.owner_start_time = 1;
      record::write_record(dir.path(), &r).unwrap();
    }
    let items = cleanup(dir.path(), None, Duration::from_millis(100)).unwrap();
    assert_eq!(items.len(), 2);
    for item in &items {
      assert_eq!(item.action, CleanupAction::Protected, "{item:?}");
      assert!(item.file.exists(), "the record is kept");
    }
  }

  /// A child of this test leading its own group, killed with its whole group and reaped when dropped, so
  /// that nothing is left behind when an assertion fails. Until it is reaped, its pid (the group's id)
  /// cannot be reused, even when it is a zombie.
  struct Started(std::process::Child);

  impl Drop for Started {
    fn drop(&mut self) {
      crate::os::signal::signal_group(self.0.id(), crate::os::signal::Stop::Force);
      let _ = self.0.kill();
      let _ = self.0.wait();
    }
  }

  /// A shell running `script`, leading its own group as a program started with `setsid` does.
  #[cfg(target_os = "linux")]
  fn group_leader(script: &str) -> Started {
    use std::os::unix::process::CommandExt;
    Started(
      std::process::Command::new("/bin/sh")
        .args(["-c", script])
        .process_group(0)
        .spawn()
        .unwrap(),
    )
  }

  /// `sleep 60` leading its own group (started directly: its executable is `sleep` from the start).
  fn sleeper() -> Started {
    use std::os::unix::process::CommandExt;
    Started(
      std::process::Command::new("sleep")
        .arg("60")
        .process_group(0)
        .spawn()
        .unwrap(),
    )
  }

  /// A record for `pid` as the library writes it, with a dead owner; `fields` override.
  fn orphan_record(dir: &Path, pid: u32, fields: serde_json::Value) -> PathBuf {
    let mut body = serde_json::json!({
      "manager": record::MARKER, "version": 1, "name": "api", "pid": pid, "port": 8000,
      "host": "127.0.0.1", "startedAt": 0, "ownerPid": 999_999, "ownerStartTime": 1
    });
    for (k, v) in fields.as_object().unwrap() {
      body[k] = v.clone();
    }
    write(dir, &format!("api-{pid}.json"), &body.to_string())
  }

  #[cfg(target_os = "linux")]
  fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
      if std::time::Instant::now() > deadline {
        return false;
      }
      std::thread::sleep(Duration::from_millis(5));
    }
    true
  }

  /// The backend exited by itself; later an unrelated program of this user got its pid and leads its own
  /// group. That program is a stranger (its start time differs): the record is stale, nothing is signalled.
  #[test]
  fn a_stranger_leading_its_own_group_at_a_recorded_pid_is_never_signalled() {
    let dir = tempfile::tempdir().unwrap();
    let stranger = sleeper();
    let pid = stranger.0.id();
    let live = process::identity(pid).unwrap();
    // The recorded backend started before the stranger, as a process that had the pid earlier did.
    let file = orphan_record(
      dir.path(),
      pid,
      serde_json::json!({ "exe": live.exe, "startTime": live.start_time - 1 }),
    );
    let items = cleanup(dir.path(), None, Duration::from_millis(100)).unwrap();
    assert!(
      process::is_alive(pid),
      "the stranger was signalled: {items:?}"
    );
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].action, CleanupAction::StaleRemoved, "{items:?}");
    assert!(!file.exists(), "the stale record is deleted");
  }

  /// Start times count from boot: a record of another boot is stale even when a live process matches it;
  /// one of this boot (or without a boot id, as older versions wrote) is still acted on.
  #[cfg(target_os = "linux")]
  #[test]
  fn a_record_of_another_boot_is_stale_even_when_its_process_matches() {
    let dir = tempfile::tempdir().unwrap();
    let this_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let (earlier, current, unknown) = (sleeper(), sleeper(), sleeper());
    let exact = |pid: u32| {
      let live = process::identity(pid).unwrap();
      serde_json::json!({ "exe": live.exe, "startTime": live.start_time })
    };
    let mut other_boot = exact(earlier.0.id());
    other_boot["bootId"] = "0f6b2c4e-another-boot".into();
    let old = orphan_record(dir.path(), earlier.0.id(), other_boot);
    let mut same_boot = exact(current.0.id());
    same_boot["bootId"] = this_boot.trim().into();
    let now = orphan_record(dir.path(), current.0.id(), same_boot);
    let without = orphan_record(dir.path(), unknown.0.id(), exact(unknown.0.id()));
    let items = cleanup(dir.path(), None, Duration::from_millis(100)).unwrap();
    let action = |pid: u32| items.iter().find(|i| i.pid == Some(pid)).unwrap().action;
    assert!(process::is_alive(earlier.0.id()), "{items:?}");
    assert_eq!(action(earlier.0.id()), CleanupAction::StaleRemoved);
    assert!(!old.exists());
    assert_eq!(action(current.0.id()), CleanupAction::Terminated);
    assert!(wait_for(|| !process::is_alive(current.0.id())));
    assert!(!now.exists());
    assert_eq!(action(unknown.0.id()), CleanupAction::Terminated);
    assert!(wait_for(|| !process::is_alive(unknown.0.id())));
    assert!(!without.exists());
  }

  /// The app was killed and no one reaped the wrapper it started: only the wrapper's zombie is left at the
  /// recorded pid, its start time the recorded one. Its group is the orphan, and it is ended.
  #[cfg(target_os = "linux")]
  #[test]
  fn the_group_of_a_zombie_wrapper_is_an_orphaned_group() {
    let dir = tempfile::tempdir().unwrap();
    let mut wrapper = group_leader("sleep 60 & wait");
    let pid = wrapper.0.id();
    let live = process::identity(pid).unwrap();
    assert!(wait_for(|| tree::group_members(pid).len() == 2));
    let server = tree::group_members(pid)
      .into_iter()
      .find(|m| m.pid != pid)
      .unwrap()
      .pid;
    let file = orphan_record(
      dir.path(),
      pid,
      serde_json::json!({ "exe": live.exe, "startTime": live.start_time }),
    );
    // Killed, not reaped: a zombie while this test holds it.
    wrapper.0.kill().unwrap();
    assert!(wait_for(|| !process::is_alive(pid)));
    let items = cleanup(dir.path(), None, Duration::from_secs(2)).unwrap();
    assert_eq!(items[0].action, CleanupAction::Terminated, "{items:?}");
    assert!(
      wait_for(|| !process::is_alive(server)),
      "the server lives on"
    );
    assert!(!file.exists());
  }

  mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
      #![proptest_config(ProptestConfig::with_cases(48))]

      /// Records with arbitrary fields — some naming live bystanders with arbitrary start times and dead
      /// owners — never get anything signalled: without the exact start time of the live process, a record
      /// is stale. (Only processes this test started are named, never the test runner itself.)
      #[test]
      fn cleanup_of_arbitrary_records_signals_nothing(
        texts in proptest::collection::vec(crate::state::record::tests::properties::record_like(), 1..6),
        start_times in proptest::collection::vec(any::<u64>(), 6),
      ) {
        let dir = tempfile::tempdir().unwrap();
        let mut bystanders: Vec<std::process::Child> = (0..2)
          .map(|_| std::process::Command::new("sleep").arg("30").spawn().unwrap())
          .collect();
        for (i, text) in texts.iter().enumerate() {
          // Half the files: a well-formed record for a live bystander with an arbitrary start time.
          let body = if i % 2 == 0 {
            serde_json::json!({
              "manager": record::MARKER, "version": 1, "name": "x", "pid": bystanders[(i / 2) % 2].id(),
              "port": 8000, "host": "127.0.0.1", "startedAt": 0, "exe": null, "startTime": start_times[i],
              "ownerPid": 999_999, "ownerStartTime": 1
            }).to_string()
          } else {
            text.clone()
          };
          write(dir.path(), &format!("x-{}.json", 1000 + i), &body);
        }
        let items = cleanup(dir.path(), None, Duration::from_millis(50)).unwrap();
        let alive = bystanders.iter_mut().all(|b| b.try_wait().unwrap().is_none());
        for b in &mut bystanders {
          let _ = b.kill();
          let _ = b.wait();
        }
        prop_assert!(alive, "a bystander was signalled");
        for item in &items {
          prop_assert!(!matches!(item.action, CleanupAction::Terminated | CleanupAction::Failed), "{:?}", item);
        }
      }
    }
  }
}
