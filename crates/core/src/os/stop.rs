//! Stopping: polite signal to the whole group → bounded wait → force kill of the whole tree → reap
//! (systemd's `TimeoutStopSec` ladder). Also the termination of an orphan found through a record, whether
//! its leader still runs or only its group is left (a wrapper that died and left its server behind).

use super::process::{self, AtPid, Identity};
use super::signal::{signal_group, PinnedProcess, Stop};
use super::spawn::{Child, ExitInfo};
use super::tree;
use std::collections::HashSet;
use std::time::Duration;
use tokio::time::{timeout, Instant};

/// How long a force-killed process may take to disappear before we give up on it (and say so).
pub const FORCE_GRACE: Duration = Duration::from_secs(5);
/// How often a group is looked at while its last members shut down.
const GROUP_POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
pub struct StopOutcome {
  pub exit: ExitInfo,
  /// The force kill was needed.
  pub forced: bool,
  /// Processes that were still alive after the force kill (uninterruptible sleep, another user's…).
  pub survivors: Vec<u32>,
}

/// Stop requests tried, in order, before the stop signal (`shutdown` option). Each gets
/// `min(1 s, grace / 4)` to work before the next step; the force kill still comes `grace` after the first.
#[derive(Default)]
pub struct Polite {
  /// A request the backend takes as "stop" (an HTTP call); resolves once answered (or failed).
  pub request: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
  /// Close the backend's stdin.
  pub close_stdin: bool,
}

/// Stops our own backend and its whole process group. Safe to call when it already exited.
pub async fn stop_child(child: &Child, grace: Duration, polite: Polite) -> StopOutcome {
  stop_child_within(child, grace, FORCE_GRACE, polite).await
}

async fn stop_child_within(
  child: &Child,
  grace: Duration,
  force_grace: Duration,
  polite: Polite,
) -> StopOutcome {
  let deadline = Instant::now() + grace;
  let step = (grace / 4).min(Duration::from_secs(1));
  let exited_within = |limit: Duration| async move {
    let limit = limit.min(deadline.saturating_duration_since(Instant::now()));
    timeout(limit, child.exited()).await.is_ok()
  };
  if child.never_ran() {
    // Its program could not be started and the failed spawn reaped it: its pid may be another's now.
    return StopOutcome {
      exit: child.exit_info().unwrap_or_default(),
      forced: false,
      survivors: Vec::new(),
    };
  }
  let mut forced = false;
  let mut survivors = Vec::new();
  if child.exit_info().is_none() {
    let mut done = false;
    let mut asked = false;
    if let Some(request) = polite.request {
      asked = true;
      let _ = timeout(step, request).await;
      done = exited_within(step).await;
    }
    if !done && polite.close_stdin && child.close_stdin() {
      asked = true;
      done = exited_within(step).await;
    }
    if !done {
      // A stop signal that could not be sent (Windows: no console to send the break on) leaves nothing
      // to wait for, unless an earlier request may still be working.
      if imp::send(child, Stop::Polite) || asked {
        done = exited_within(grace).await;
      }
    }
    if !done {
      forced = true;
      imp::send(child, Stop::Force);
      if timeout(force_grace, child.exited()).await.is_err() {
        survivors.push(child.pid);
      }
    }
  }
  let exit = child.exit_info().unwrap_or_default();
  // A bounded stop's end (`stopSync`) or the owner may have forced the tree before this stop's own turn.
  forced |= child.was_forced();
  let drained = imp::drain_group(child, deadline, force_grace).await;
  forced |= drained.forced;
  survivors.extend(drained.survivors);
  if survivors.is_empty() {
    child.release();
  }
  StopOutcome {
    exit,
    forced,
    survivors,
  }
}

#[derive(Default)]
struct Drained {
  forced: bool,
  survivors: Vec<u32>,
}

/// The Unix half: the group is watched through its members, and signalled by its id.
#[cfg(unix)]
mod imp {
  use super::{signal_group, tree, Child, Drained, Stop, GROUP_POLL};
  use std::time::Duration;
  use tokio::time::Instant;

  /// After the leader exited: members of its group that are still alive (grandchildren) get until
  /// `deadline` to finish after the polite signal, then the force kill. The leader is still unreaped, so
  /// the group id cannot have been reused. Watching the group scans every process, so it runs off the
  /// async workers.
  pub async fn drain_group(child: &Child, deadline: Instant, force_grace: Duration) -> Drained {
    let (pgid, deadline) = (child.pid, deadline.into_std());
    crate::blocking::run(move || drain_unix(pgid, deadline, force_grace))
      .await
      .unwrap_or_default()
  }

  fn drain_unix(pgid: u32, deadline: std::time::Instant, force_grace: Duration) -> Drained {
    let members = || -> Vec<u32> {
      tree::group_members(pgid)
        .into_iter()
        .map(|m| m.pid)
        .filter(|&p| p != pgid)
        .collect()
    };
    let empty_until = |until: std::time::Instant| loop {
      let left = members();
      if left.is_empty() || std::time::Instant::now() >= until {
        return left;
      }
      std::thread::sleep(GROUP_POLL);
    };
    if members().is_empty() {
      return Drained::default();
    }
    signal_group(pgid, Stop::Polite);
    if empty_until(deadline).is_empty() {
      return Drained::default();
    }
    signal_group(pgid, Stop::Force);
    Drained {
      forced: true,
      survivors: empty_until(std::time::Instant::now() + force_grace),
    }
  }

  /// Sends the stop to the backend's whole group; false when it could not be sent.
  pub fn send(child: &Child, sig: Stop) -> bool {
    signal_group(child.pid, sig)
  }

  pub fn own_uid() -> Option<u32> {
    Some(rustix::process::geteuid().as_raw())
  }
}

/// The Windows half: the backend's tree is its job.
#[cfg(windows)]
mod imp {
  use super::{process, signal_group, tree, Child, Drained, Stop, GROUP_POLL};
  use std::time::Duration;
  use tokio::time::Instant;

  /// After the leader exited: what is left in its job (see `drain_job`).
  pub async fn drain_group(child: &Child, _deadline: Instant, force_grace: Duration) -> Drained {
    drain_job(child, force_grace).await
  }

  /// Windows: how long what is left in a backend's job after its leader exited by itself may take to end by
  /// itself before the job ends it.
  const EXITING_SETTLE: Duration = Duration::from_millis(100);

  /// After the leader exited (Windows): what is left in its job — processes it started, not the console
  /// host that a hidden console adds — is ended with the job, after `EXITING_SETTLE` for what is already
  /// exiting. A group whose leader is gone gets no break (os/signal.rs), so that is a force kill;
  /// terminating a job that holds only the console host is not.
  async fn drain_job(child: &Child, force_grace: Duration) -> Drained {
    use crate::os::win::job::Job;
    let Some(job) = child.job.clone() else {
      return Drained::default();
    };
    let leader = child.pid;
    let left_until = move |job: Job, until: std::time::Instant| loop {
      let left: Vec<u32> = job
        .pids()
        .unwrap_or_default()
        .into_iter()
        .filter(|&p| p != leader && process::is_alive(p) && !tree::is_console_host(p))
        .collect();
      if left.is_empty() || std::time::Instant::now() >= until {
        return left;
      }
      std::thread::sleep(GROUP_POLL);
    };
    // What is already on its way out gets a moment: the console host of a hidden console ends when its last
    // client (the leader) does, and a process that is exiting can no longer be named as one (seen under
    // Wine: listed alive, nameless and gone a moment later, and the stop was reported forced).
    let now = job.clone();
    let settle = std::time::Instant::now() + EXITING_SETTLE;
    let left = crate::blocking::run(move || left_until(now, settle))
      .await
      .unwrap_or_default();
    child.kill_tree();
    if left.is_empty() {
      return Drained::default();
    }
    let until = std::time::Instant::now() + force_grace;
    Drained {
      forced: true,
      survivors: crate::blocking::run(move || left_until(job, until))
        .await
        .unwrap_or_default(),
    }
  }

  /// Sends the stop to the backend's whole tree; false when it could not be sent.
  pub fn send(child: &Child, sig: Stop) -> bool {
    match sig {
      // The break goes to the backend's console process group (docs/api.md, "Stopping on Windows").
      Stop::Polite => signal_group(child.pid, Stop::Polite),
      Stop::Force => child.kill_tree(),
    }
  }

  /// Windows records no user id with a process here.
  pub fn own_uid() -> Option<u32> {
    None
  }
}

/// What happened to an orphan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanEnd {
  /// It is gone.
  Terminated,
  /// It is no longer the recorded process (or already gone): nothing was signalled.
  NotFound,
  /// Signalling it would have reached this process or one of its ancestors: nothing was signalled.
  Protected,
  /// It was signalled but is still alive.
  Survived,
}

/// Terminates an orphaned backend found through a record, if it is still the recorded process: polite
/// signal, up to `grace` to exit, then force. The process is pinned before its identity is checked, so the
/// signals cannot reach a process that merely reused the pid. If it exited meanwhile (only its zombie is
/// left, or it was reaped), what is left of its group is the orphan, ended by the group's id. `protected`
/// (this process and its ancestors) is never signalled.
pub fn terminate_orphan(
  pid: u32,
  expected: &Identity,
  grace: Duration,
  protected: &HashSet<u32>,
) -> OrphanEnd {
  let pinned = PinnedProcess::pin(pid);
  let pinned = match (process::at_pid(pid, expected), pinned) {
    // Running but not pinned (Windows: another user's process) is not ours to signal.
    (AtPid::Stranger, _) | (AtPid::Recorded, None) => return OrphanEnd::NotFound,
    (AtPid::Recorded, Some(pinned)) => pinned,
    // A wrapper that exited under the cleanup leaves its server in the group: not the end of it.
    _ => return terminate_orphaned_group(pid, expected.start_time, grace, protected),
  };
  // The backend led its own group; grandchildren in it get the same signals, each process one of each.
  // Only while the pinned leader is alive and verified does that group id belong to it.
  let leads_group = process::process_group(pid) == Some(pid);
  if protected.contains(&pid) || (leads_group && group_touches(pid, protected)) {
    return OrphanEnd::Protected;
  }
  let signal_all = |sig: Stop| {
    if leads_group {
      pinned.signal_group(sig);
    } else {
      pinned.signal(sig);
    }
  };
  signal_all(Stop::Polite);
  if !pinned.wait_exit(grace) {
    signal_all(Stop::Force);
    if !pinned.wait_exit(FORCE_GRACE) {
      return OrphanEnd::Survived;
    }
  }
  if leads_group {
    // Members that outlived the leader belong to the orphan's tree.
    return end_group(pid, 0, Duration::ZERO);
  }
  OrphanEnd::Terminated
}

/// Terminates what is left of an orphan's process group after its leader (a wrapper: `npm start`,
/// nodemon, `sh -c`) is gone. While any process has `pgid` as its group, Linux keeps that pid allocated,
/// so the group is still the backend's: its members must belong to this user and have started no earlier
/// than the backend (`not_before`, in the units of `Identity::start_time`).
pub fn terminate_orphaned_group(
  pgid: u32,
  not_before: u64,
  grace: Duration,
  protected: &HashSet<u32>,
) -> OrphanEnd {
  if orphaned_group(pgid, not_before).is_empty() {
    return OrphanEnd::NotFound;
  }
  if group_touches(pgid, protected) {
    return OrphanEnd::Protected;
  }
  end_group(pgid, not_before, grace)
}

/// The members of `pgid` that can be the rest of a backend started at `not_before` by this user.
pub fn orphaned_group(pgid: u32, not_before: u64) -> Vec<u32> {
  let me = imp::own_uid();
  tree::group_members(pgid)
    .into_iter()
    .filter(|m| m.start_time >= not_before && (me.is_none() || m.uid == me))
    .map(|m| m.pid)
    .collect()
}

fn group_touches(pgid: u32, protected: &HashSet<u32>) -> bool {
  tree::group_members(pgid)
    .iter()
    .any(|m| protected.contains(&m.pid))
}

/// Polite signal to the group, up to `grace` for it to empty, then force.
fn end_group(pgid: u32, not_before: u64, grace: Duration) -> OrphanEnd {
  let wait_empty = |limit: Duration| {
    let deadline = std::time::Instant::now() + limit;
    loop {
      if orphaned_group(pgid, not_before).is_empty() {
        return true;
      }
      if std::time::Instant::now() >= deadline {
        return false;
      }
      std::thread::sleep(GROUP_POLL);
    }
  };
  if wait_empty(Duration::ZERO) {
    return OrphanEnd::Terminated;
  }
  if !grace.is_zero() {
    signal_group(pgid, Stop::Polite);
    if wait_empty(grace) {
      return OrphanEnd::Terminated;
    }
  }
  signal_group(pgid, Stop::Force);
  if wait_empty(FORCE_GRACE) {
    OrphanEnd::Terminated
  } else {
    OrphanEnd::Survived
  }
}

#[cfg(all(test, unix))]
mod tests {
  use super::*;

  /// A backend whose program could not be started (its process already ended at the spawn gate) is
  /// never signalled: nothing of it is left, and its pid may be someone else's by now.
  #[tokio::test]
  async fn a_child_whose_program_never_ran_is_not_signalled() {
    let spec = crate::os::spawn::SpawnSpec {
      program: "/nonexistent/backend-binary".into(),
      cwd: std::env::temp_dir(),
      ..Default::default()
    };
    let sink: crate::os::spawn::LineSink =
      std::sync::Arc::new(|_, _: &crate::os::spawn::Lines<'_>| {});
    let child = crate::os::spawn::spawn_held(spec, sink).await.unwrap();
    assert!(child.run_program().await.is_err());
    let stopped = stop_child(&child, Duration::from_secs(1), Polite::default()).await;
    assert!(!stopped.forced && stopped.survivors.is_empty());
  }
  /// A stop whose backend was force-killed from outside it before its own escalation (a bounded
  /// `stopSync`'s end calls `force_now` at `timeoutMs`) reports it forced: the exit comes from the kill.
  #[tokio::test]
  async fn a_force_from_outside_the_stop_is_reported_forced() {
    let spec = crate::os::spawn::SpawnSpec {
      program: "/bin/sh".into(),
      args: vec![
        "-c".into(),
        "trap '' TERM; echo up; while :; do sleep 1; done".into(),
      ],
      cwd: std::env::temp_dir(),
      ..Default::default()
    };
    let (up_tx, up) = std::sync::mpsc::channel();
    let sink: crate::os::spawn::LineSink =
      std::sync::Arc::new(move |_, lines: &crate::os::spawn::Lines<'_>| {
        if lines.iter().any(|l| l == "up") {
          let _ = up_tx.send(());
        }
      });
    let child = crate::os::spawn::spawn(spec, sink).await.unwrap();
    let _ended = Ended(child.pid);
    // The trap is set once it speaks.
    tokio::task::spawn_blocking(move || up.recv_timeout(Duration::from_secs(10)))
      .await
      .unwrap()
      .expect("the backend did not start");
    let stopping = stop_child(&child, Duration::from_secs(20), Polite::default());
    // Whether the kill comes before the stop has looked or while it waits politely, the exit is forced.
    let force = async { child.force_now() };
    let (stopped, ()) = tokio::join!(stopping, force);
    assert!(stopped.forced, "{stopped:?}");
    assert!(stopped.survivors.is_empty());
  }

  use std::os::unix::process::CommandExt;

  /// A process leading its own group, with two children in that group (like a backend found through an
  /// orphan's record).
  fn group_with_children(script: &str) -> std::process::Child {
    std::process::Command::new("/bin/sh")
      .args(["-c", script])
      .process_group(0)
      .spawn()
      .unwrap()
  }

  fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !done() {
      if std::time::Instant::now() > deadline {
        return false;
      }
      std::thread::sleep(Duration::from_millis(5));
    }
    true
  }

  fn members(pgid: u32) -> Vec<u32> {
    tree::group_members(pgid)
      .into_iter()
      .map(|m| m.pid)
      .filter(|&p| p != pgid)
      .collect()
  }

  #[test]
  fn terminating_a_matching_orphan_ends_its_whole_group() {
    let mut leader = group_with_children("sleep 30 & sleep 30 & wait");
    let pid = leader.id();
    assert!(
      wait_for(|| members(pid).len() == 2),
      "the two children started"
    );
    let children = members(pid);
    let expected = process::identity(pid).unwrap();
    let end = terminate_orphan(pid, &expected, Duration::from_secs(2), &HashSet::new());
    assert_eq!(end, OrphanEnd::Terminated);
    leader.wait().unwrap();
    assert!(
      wait_for(|| children.iter().all(|&c| !process::is_alive(c))),
      "a group member survived"
    );
  }

  #[test]
  fn a_process_that_does_not_match_its_record_is_not_signalled() {
    let mut leader = group_with_children("sleep 30 & wait");
    let pid = leader.id();
    let mut other_start = process::identity(pid).unwrap();
    other_start.start_time += 1;
    let end = terminate_orphan(
      pid,
      &other_start,
      Duration::from_millis(100),
      &HashSet::new(),
    );
    assert_eq!(end, OrphanEnd::NotFound);
    assert!(process::is_alive(pid));
    signal_group(pid, Stop::Force);
    leader.wait().unwrap();
  }

  #[test]
  fn the_rest_of_a_group_whose_leader_died_is_an_orphan() {
    // The leader exits (a wrapper killed by the app's death) once told to on its stdin; its server child
    // stays in the group.
    let mut leader = std::process::Command::new("/bin/sh")
      .args(["-c", "sleep 30 & read line; exit 0"])
      .process_group(0)
      .stdin(std::process::Stdio::piped())
      .spawn()
      .unwrap();
    let pid = leader.id();
    let started = process::identity(pid).unwrap().start_time;
    drop(leader.stdin.take());
    leader.wait().unwrap();
    assert!(wait_for(|| members(pid).len() == 1));
    let survivor = members(pid)[0];
    assert_eq!(orphaned_group(pid, started), vec![survivor]);
    assert!(
      orphaned_group(pid, u64::MAX).is_empty(),
      "members older than the backend are not its"
    );
    let end = terminate_orphaned_group(pid, started, Duration::from_secs(2), &HashSet::new());
    assert_eq!(end, OrphanEnd::Terminated);
    assert!(!process::is_alive(survivor));
  }

  #[test]
  fn a_group_holding_a_protected_process_is_never_signalled() {
    let mut leader = group_with_children("sleep 30 & wait");
    let pid = leader.id();
    let expected = process::identity(pid).unwrap();
    let protected: HashSet<u32> = [pid].into();
    assert_eq!(
      terminate_orphan(pid, &expected, Duration::from_millis(100), &protected),
      OrphanEnd::Protected
    );
    assert!(process::is_alive(pid));
    signal_group(pid, Stop::Force);
    leader.wait().unwrap();
  }

  /// The leader of a verified orphan's group, killed and not reaped (its parent is slow) or reaped while
  /// the cleanup runs: its group is still the orphan's and is ended, not abandoned. A zombie whose start
  /// time differs from the record is a stranger: nothing is signalled.
  #[test]
  fn an_orphan_whose_leader_exits_during_the_cleanup_still_has_its_group_ended() {
    for reaped in [false, true] {
      let mut leader = group_with_children("sleep 30 & wait");
      let pid = leader.id();
      let end_group_on_exit = Ended(pid);
      assert!(wait_for(|| members(pid).len() == 1), "the server started");
      let server = members(pid)[0];
      let expected = process::identity(pid).unwrap();
      leader.kill().unwrap();
      assert!(wait_for(|| !process::is_alive(pid)));
      if reaped {
        leader.wait().unwrap();
      } else {
        let mut stranger = expected.clone();
        stranger.start_time += 1;
        let end = terminate_orphan(pid, &stranger, Duration::from_secs(2), &HashSet::new());
        assert_eq!(end, OrphanEnd::NotFound, "another process's zombie");
        assert!(process::is_alive(server));
      }
      let end = terminate_orphan(pid, &expected, Duration::from_secs(2), &HashSet::new());
      assert_eq!(end, OrphanEnd::Terminated, "reaped: {reaped}");
      assert!(
        wait_for(|| !process::is_alive(server)),
        "the server lives on"
      );
      let _ = leader.wait();
      drop(end_group_on_exit);
    }
  }

  /// Force-kills what is left of a group this test started, however the test ends. Only while the group
  /// has members: a reaped leader's pid is free again once its group is empty.
  struct Ended(u32);

  impl Drop for Ended {
    fn drop(&mut self) {
      if !tree::group_members(self.0).is_empty() {
        signal_group(self.0, Stop::Force);
      }
    }
  }

  /// A process that cannot be ended (here: a child whose exit never comes) is reported, not released.
  #[tokio::test]
  async fn a_backend_that_survives_the_force_kill_is_reported_as_a_survivor() {
    let (child, _exit) = Child::never_ending(999_999);
    let outcome = stop_child_within(
      &child,
      Duration::from_millis(50),
      Duration::from_millis(50),
      Polite::default(),
    )
    .await;
    assert!(outcome.forced);
    assert_eq!(outcome.survivors, vec![999_999]);
  }
}
