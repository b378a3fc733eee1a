//! Stopping: polite signal to the whole group → bounded wait → force kill of the whole tree → reap
//! (systemd's `TimeoutStopSec` ladder). Also the termination of an orphan found through a record.

use crate::identity;
use crate::signal::{signal_group, PinnedProcess, Stop};
use crate::spawn::{Child, ExitInfo};
use std::time::Duration;
use tokio::time::{sleep, timeout, Instant};

/// How long a force-killed process may take to disappear before we stop waiting for it.
const FORCE_GRACE: Duration = Duration::from_secs(5);
/// How often the group is looked at while its last members shut down.
const GROUP_POLL: Duration = Duration::from_millis(5);

#[derive(Debug, Clone)]
pub struct StopOutcome {
  pub exit: ExitInfo,
  /// The force kill was needed.
  pub forced: bool,
}

/// Stops our own backend and its whole process group. Safe to call when it already exited.
pub async fn stop_child(child: &Child, grace: Duration) -> StopOutcome {
  let deadline = Instant::now() + grace;
  let mut forced = false;
  if child.exit_info().is_none() {
    send(child, Stop::Polite);
    if timeout(grace, child.exited()).await.is_err() {
      forced = true;
      send(child, Stop::Force);
      let _ = timeout(FORCE_GRACE, child.exited()).await;
    }
  }
  let exit = child.exit_info().unwrap_or(ExitInfo {
    exit_code: None,
    signal: None,
  });
  forced |= drain_group(child, deadline).await;
  child.release();
  StopOutcome { exit, forced }
}

/// After the leader exited: members of its group that are still alive (grandchildren) get until `deadline`
/// to finish after the polite signal, then the force kill. Returns true when force was needed. The leader is
/// still unreaped, so the group id cannot have been reused.
pub async fn drain_group(child: &Child, deadline: Instant) -> bool {
  if cfg!(not(target_os = "linux")) {
    // No cheap way to list the group's members: end whatever is left of it now.
    send(child, Stop::Force);
    return false;
  }
  if identity::group_members(child.pid, child.pid).is_empty() {
    return false;
  }
  send(child, Stop::Polite);
  while Instant::now() < deadline {
    sleep(GROUP_POLL).await;
    if identity::group_members(child.pid, child.pid).is_empty() {
      return false;
    }
  }
  send(child, Stop::Force);
  let give_up = Instant::now() + FORCE_GRACE;
  while !identity::group_members(child.pid, child.pid).is_empty() && Instant::now() < give_up {
    sleep(GROUP_POLL).await;
  }
  true
}

fn send(child: &Child, sig: Stop) {
  #[cfg(unix)]
  {
    signal_group(child.pid, sig);
  }
  #[cfg(windows)]
  {
    // No SIGTERM on Windows: both steps end the job (the whole tree). A backend that needs a graceful
    // Windows shutdown should offer an HTTP or stdin shutdown request (README, "Platforms").
    let _ = sig;
    let _ = signal_group;
    if let Some(job) = &child.job {
      job.terminate();
    } else {
      crate::signal::signal_pid(child.pid, Stop::Force);
    }
  }
}

/// Terminates an orphaned backend found through a record, if it is still the recorded process: polite
/// signal, up to `grace` to exit, then force. The process is pinned before its identity is checked, so the
/// signals cannot reach a process that merely reused the pid. Returns true when it was terminated.
pub fn terminate_orphan(pid: u32, expected: &identity::Identity, grace: Duration) -> bool {
  let Some(pinned) = PinnedProcess::pin(pid) else {
    return false;
  };
  if !identity::matches(pid, expected) {
    return false;
  }
  // The backend led its own group; grandchildren in it get the same signals, each process one of each.
  // Only while the pinned leader is alive and verified does that group id belong to it.
  let leads_group = identity::process_group(pid) == Some(pid);
  let signal_all = |sig: Stop| {
    if leads_group {
      pinned.signal_group(sig);
    } else {
      pinned.signal(sig);
    }
  };
  signal_all(Stop::Polite);
  if pinned.wait_exit(grace) {
    if leads_group {
      // Leftover group members lost their leader; they belong to the orphan's tree.
      let members = identity::group_members(pid, pid);
      if !members.is_empty() {
        signal_group(pid, Stop::Force);
      }
    }
    return true;
  }
  signal_all(Stop::Force);
  pinned.wait_exit(FORCE_GRACE)
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::os::unix::process::CommandExt;

  /// A process leading its own group, with two children in that group (like a backend found through an
  /// orphan's record).
  fn group_with_children() -> std::process::Child {
    std::process::Command::new("/bin/sh")
      .args(["-c", "sleep 30 & sleep 30 & wait"])
      .process_group(0)
      .spawn()
      .unwrap()
  }

  fn wait_for_members(pgid: u32, count: usize) -> Vec<u32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
      let members = identity::group_members(pgid, pgid);
      if members.len() >= count || std::time::Instant::now() > deadline {
        return members;
      }
      std::thread::sleep(Duration::from_millis(5));
    }
  }

  #[test]
  fn terminating_a_matching_orphan_ends_its_whole_group() {
    let mut leader = group_with_children();
    let pid = leader.id();
    let children = wait_for_members(pid, 2);
    assert_eq!(children.len(), 2, "the two children started");
    let expected = identity::identity(pid).unwrap();
    assert!(terminate_orphan(pid, &expected, Duration::from_secs(2)));
    leader.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while children.iter().any(|&c| identity::is_alive(c)) && std::time::Instant::now() < deadline {
      std::thread::sleep(Duration::from_millis(5));
    }
    for child in children {
      assert!(!identity::is_alive(child), "group member {child} survived");
    }
  }

  #[test]
  fn a_process_that_does_not_match_its_record_is_not_signalled() {
    let mut leader = group_with_children();
    let pid = leader.id();
    let mut other_start = identity::identity(pid).unwrap();
    other_start.start_time += 1;
    assert!(!terminate_orphan(
      pid,
      &other_start,
      Duration::from_millis(100)
    ));
    assert!(identity::is_alive(pid));
    signal_group(pid, Stop::Force);
    leader.wait().unwrap();
  }
}
