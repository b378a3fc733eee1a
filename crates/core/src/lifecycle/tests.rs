//! The lifecycle without Node: real processes, a real HTTP server (python3's http.server).

use super::launch::Runtime;
use super::*;
use crate::options::{Either, Options, OptionsInput, RestartInput, StartArgs};
use crate::os::process;
use crate::state::record;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

#[derive(Default)]
struct Recorded {
  exits: Mutex<Vec<(u32, ExitInfo, bool)>>,
  exit_count: watch::Sender<usize>,
  idles: watch::Sender<usize>,
  /// Why each restart came, in order.
  restarts: watch::Sender<Vec<(Reason, u32)>>,
  /// The lifecycle's events in order, in short (`exit`, `restart`, `ready`, `failed`, `idle`).
  sequence: Mutex<Vec<String>>,
}

impl Events for Recorded {
  fn line(&self, _stream: Stream, _text: &str) {}
  fn emit(&self, event: Event) {
    let short = match &event {
      Event::Ready(_) => Some("ready".to_string()),
      Event::Exit { expected, .. } => Some(format!("exit expected={expected}")),
      Event::Restart {
        attempt, reason, ..
      } => Some(format!("restart {attempt} {}", reason.as_str())),
      Event::Failed {
        reason, restarts, ..
      } => Some(format!("failed {} after {restarts}", reason.as_str())),
      Event::Idle => Some("idle".to_string()),
      _ => None,
    };
    self.sequence.lock().unwrap().extend(short);
    if event == Event::Idle {
      self.idles.send_modify(|n| *n += 1);
    }
    if let Event::Restart { reason, pid, .. } = event {
      self.restarts.send_modify(|r| r.push((reason, pid)));
    }
    if let Event::Exit {
      pid,
      exit,
      expected,
      ..
    } = event
    {
      let mut exits = self.exits.lock().unwrap();
      exits.push((pid, exit, expected));
      self.exit_count.send_replace(exits.len());
    }
  }
}

fn python3() -> String {
  let found = std::process::Command::new("python3")
    .arg("--version")
    .output()
    .is_ok_and(|o| o.status.success());
  assert!(
    found,
    "python3 is needed by the lifecycle tests (a real HTTP server)"
  );
  "python3".into()
}

fn manager(dir: &std::path::Path) -> (Arc<Manager>, Arc<Recorded>) {
  manager_with(dir, |_| {})
}

/// A manager of a Python HTTP server on a free port, its records in `dir`, with `set`'s changes.
fn manager_with(
  dir: &std::path::Path,
  set: impl FnOnce(&mut OptionsInput),
) -> (Arc<Manager>, Arc<Recorded>) {
  let mut given = OptionsInput {
    name: Some("core-test".into()),
    command: Some(python3()),
    args: Some(
      ["-m", "http.server", "{port}", "--bind", "{host}"]
        .map(String::from)
        .to_vec(),
    ),
    port: Some(crate::net::port::unused_port().into()),
    port_range: Some(50.0),
    health_path: Some("/".into()),
    stop_timeout_ms: Some(2000.0),
    state_dir: Some(dir.display().to_string()),
    ..Default::default()
  };
  set(&mut given);
  let options = Options::try_from(given).unwrap();
  let events = Arc::new(Recorded::default());
  (Manager::new(options, events.clone()), events)
}

/// A backend started by a manager that restarts it after `backoff` when it crashes, every time.
async fn started_restarting_after(
  dir: &std::path::Path,
  backoff: Duration,
) -> (Arc<Manager>, Arc<Recorded>, BackendInfo) {
  let ms = Some(backoff.as_millis() as f64);
  let (pm, events) = manager_with(dir, |o| {
    o.restart = Some(Either::B(RestartInput {
      initial_delay_ms: ms,
      max_delay_ms: ms,
      ..Default::default()
    }))
  });
  let info = start(&pm, dir).await;
  (pm, events, info)
}

/// Force-kills the backend `pid` and waits until `exits` exits in all are reported.
async fn crash(events: &Recorded, pid: u32, exits: usize) -> watch::Receiver<usize> {
  let mut exit_count = events.exit_count.subscribe();
  crate::os::signal::signal_pid(pid, crate::os::signal::Stop::Force);
  tokio::time::timeout(Duration::from_secs(5), exit_count.wait_for(|n| *n >= exits))
    .await
    .expect("the crash is reported")
    .unwrap();
  exit_count
}

/// Force-kills the backend `pid` and waits until `idle` was reported `idles` times in all (`what`: why
/// it comes); nothing is under way then.
async fn killed_until_idle(
  pm: &Manager,
  reported: &mut watch::Receiver<usize>,
  pid: u32,
  idles: usize,
  what: &str,
) {
  crate::os::signal::signal_pid(pid, crate::os::signal::Stop::Force);
  tokio::time::timeout(Duration::from_secs(10), reported.wait_for(|n| *n >= idles))
    .await
    .expect(what)
    .unwrap();
  assert!(!pm.is_active());
}

/// A manager whose backend is started by `/bin/sh` with `args`.
fn launched_by(dir: &std::path::Path, args: &[&str]) -> (Arc<Manager>, Arc<Recorded>) {
  manager_with(dir, |o| {
    o.command = Some("/bin/sh".into());
    o.args = Some(args.iter().map(|a| a.to_string()).collect());
  })
}

fn start_args(dir: &std::path::Path) -> (StartArgs, Runtime) {
  (
    StartArgs {
      project_root: dir.to_path_buf(),
      is_packaged: false,
    },
    Runtime {
      node_path: String::new(),
      electron: false,
      env: std::env::vars().collect(),
    },
  )
}

async fn start(pm: &Arc<Manager>, dir: &std::path::Path) -> BackendInfo {
  let (args, runtime) = start_args(dir);
  let (info, fresh) = pm.start(args, runtime).await.unwrap();
  assert!(fresh, "this call started it");
  info
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_and_crash() {
  let dir = tempfile::tempdir().unwrap();
  let (pm, events) = manager(dir.path());
  let info = start(&pm, dir.path()).await;
  assert!(pm.check_health(info.port).await);
  assert_eq!(record::list_records(dir.path(), None).unwrap().len(), 1);
  let stopped = pm.stop().await.unwrap();
  assert!(!stopped.forced);
  assert!(stopped.survivors.is_empty());
  assert!(!process::is_alive(info.pid));
  assert!(record::list_records(dir.path(), None).unwrap().is_empty());
  assert!(pm.stop().await.is_none());

  let info = start(&pm, dir.path()).await;
  crash(&events, info.pid, 2).await;
  let exits = events.exits.lock().unwrap().clone();
  assert_eq!(exits.len(), 2, "{exits:?}");
  assert!(exits[0].2, "the first exit was asked for");
  assert_eq!(
    (exits[1].0, exits[1].1.signal.as_deref(), exits[1].2),
    (info.pid, Some("SIGKILL"), false)
  );
  assert!(pm.backend().is_none());
  assert!(record::list_records(dir.path(), None).unwrap().is_empty());
}

/// A launcher that `exec`s the server (a shell, a version manager's shim, an `env` shebang) keeps the pid
/// and start time but changes the executable. Once the start resolves, the record names what runs: read
/// then, it is the running backend's, not a stale record a cleanup would delete, orphaning the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launchers_record_names_the_server_once_started() {
  let dir = tempfile::tempdir().unwrap();
  let launcher = format!("exec {} -m http.server \"$0\" --bind \"$1\"", python3());
  let (pm, _events) = launched_by(dir.path(), &["-c", &launcher, "{port}", "{host}"]);
  let info = start(&pm, dir.path()).await;
  let written = record::list_records(dir.path(), None)
    .unwrap()
    .into_iter()
    .find_map(|e| e.record.ok());
  let state = written.as_ref().map(crate::state::orphans::classify);
  let live = process::identity(info.pid).and_then(|i| i.exe);
  // Stopped before the checks: nothing is left running when they fail.
  pm.stop().await.unwrap();
  assert!(live.is_some(), "the server ran");
  assert_eq!(
    (state, written.and_then(|r| r.exe)),
    (Some(crate::state::orphans::RecordState::Running), live),
    "the record read as soon as the start resolved"
  );
}

/// While the server starts (after its launcher exec'd it, before it is ready), its record must not name
/// the launcher: a status would call the live backend stale, and a cleanup (another instance of the app,
/// the CLI) would delete its record — leaving nothing to find it by if the app then dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launchers_record_does_not_name_the_launcher_while_the_server_starts() {
  let dir = tempfile::tempdir().unwrap();
  // The shell runs a while before it execs the server, which never gets ready (the stop cancels it).
  let launcher = format!(
    "sleep 0.5; exec {} -c 'import time; time.sleep(60)'",
    python3()
  );
  let (pm, _events) = launched_by(dir.path(), &["-c", &launcher]);
  let (args, runtime) = start_args(dir.path());
  let starting = pm.start(args, runtime);
  let looking = async {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // Once the server runs at the recorded pid: what the record says of it then.
    let seen = loop {
      let written = record::list_records(dir.path(), None)
        .unwrap()
        .into_iter()
        .find_map(|e| e.record.ok());
      let server = written.as_ref().and_then(|r| {
        let exe = process::identity(r.pid)?.exe?;
        let name = std::path::Path::new(&exe)
          .file_name()?
          .to_string_lossy()
          .into_owned();
        name.starts_with("python").then_some(exe)
      });
      if let (Some(written), Some(server)) = (written, server) {
        break Some((
          crate::state::orphans::classify(&written),
          written.exe,
          server,
        ));
      }
      if tokio::time::Instant::now() > deadline {
        break None;
      }
      tokio::time::sleep(Duration::from_millis(10)).await;
    };
    pm.stop().await;
    seen
  };
  let (started, seen) = tokio::join!(starting, looking);
  assert!(started.is_err(), "the stop cancelled the start");
  let (state, exe, server) = seen.expect("the launcher exec'd the server");
  assert_eq!(
    state,
    crate::state::orphans::RecordState::Running,
    "record exe {exe:?} while {server} runs"
  );
  assert!(exe.is_none() || exe == Some(server), "record exe {exe:?}");
}

/// The order of the calls is kept: a start asked for during a stop waits for it and starts afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_during_a_stop_starts_a_new_backend() {
  let dir = tempfile::tempdir().unwrap();
  let (pm, _) = manager(dir.path());
  let first = start(&pm, dir.path()).await;
  let stopping = pm.stop();
  let (args, runtime) = start_args(dir.path());
  let starting = pm.start(args, runtime);
  let (stopped, second) = tokio::join!(stopping, starting);
  let (second, fresh) = second.unwrap();
  assert!(fresh);
  assert_eq!(stopped.unwrap().pid, first.pid);
  assert_ne!(second.pid, first.pid);
  assert!(!process::is_alive(first.pid));
  assert_eq!(pm.backend(), Some(second));
  pm.stop().await;
}

/// A stop during a start cancels it: the start fails, the stop reports what it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_start_cancels_it() {
  let dir = tempfile::tempdir().unwrap();
  let (pm, events) = manager(dir.path());
  let (args, runtime) = start_args(dir.path());
  let starting = pm.start(args, runtime);
  let mut spawned = events.exit_count.subscribe();
  let stopping = async {
    // Once the backend's record exists, it has been spawned.
    while record::list_records(dir.path(), None).unwrap().is_empty() {
      tokio::time::sleep(Duration::from_millis(2)).await;
    }
    pm.stop().await
  };
  let (started, stopped) = tokio::join!(starting, stopping);
  let err = started.unwrap_err();
  assert_eq!(err.code(), "ERR_BACKEND_EXITED");
  assert!(
    err.to_string().contains("stopBackend() was called"),
    "{err}"
  );
  let stopped = stopped.expect("the stop reports the process it stopped");
  assert!(!process::is_alive(stopped.pid));
  spawned.wait_for(|n| *n == 1).await.unwrap();
  assert!(pm.backend().is_none());
  assert!(record::list_records(dir.path(), None).unwrap().is_empty());
}

/// An instance of `sleep 30` named `name`, its records in `dir`: held at its gate (`held`), or running.
async fn sleeping_instance(
  dir: &std::path::Path,
  name: &str,
  held: bool,
) -> (Arc<instance::Instance>, Arc<crate::os::spawn::Child>) {
  let sink: crate::os::spawn::LineSink = Arc::new(|_, _: &crate::os::spawn::Lines<'_>| {});
  let spec = crate::os::spawn::SpawnSpec {
    program: "sleep".into(),
    args: vec!["30".into()],
    cwd: dir.into(),
    env: std::env::vars().collect(),
    ..Default::default()
  };
  let child = match held {
    true => crate::os::spawn::spawn_held(spec, sink).await,
    false => crate::os::spawn::spawn(spec, sink).await,
  }
  .unwrap();
  let info = BackendInfo {
    pid: child.pid,
    port: crate::net::port::unused_port(),
    host: "127.0.0.1".into(),
    url: String::new(),
    started_at: 1,
    token: None,
    replicas: None,
  };
  let instance = instance::Instance::new(info, child.clone(), name, dir.into(), "/", 0, None);
  (instance, child)
}

/// A record is never written again once its backend ended (a late rewrite once left records behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_record_is_written_after_the_end() {
  let dir = tempfile::tempdir().unwrap();
  let (instance, _) = sleeping_instance(dir.path(), "late", false).await;
  instance.write_record().await.unwrap();
  assert_eq!(record::list_records(dir.path(), None).unwrap().len(), 1);
  instance.request_stop();
  instance
    .end(Duration::from_secs(2), Default::default())
    .await;
  assert!(record::list_records(dir.path(), None).unwrap().is_empty());
  instance.write_record().await.unwrap();
  assert!(
    record::list_records(dir.path(), None).unwrap().is_empty(),
    "a write after the end is refused"
  );
}

/// The rewrite at ready names the executable that runs now (the server a launcher exec'd, here `sleep`
/// after a held copy of this process), keeps the start time of the first write, and leaves nothing but
/// the record in the folder (the previous record that an exchange leaves under the temporary name is
/// deleted).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rewrite_names_the_running_executable_and_leaves_only_the_record() {
  let dir = tempfile::tempdir().unwrap();
  let (instance, child) = sleeping_instance(dir.path(), "rewrite", true).await;
  instance.write_record().await.unwrap();
  let held = only_record(dir.path());
  assert_eq!(held.exe, None, "held, it is still a copy of the app");
  let own = crate::os::process::exe(crate::os::process::own_pid());
  child.run_program().await.unwrap();
  // The exec happens in the child after the gate opens: seen when its executable is no longer ours.
  let deadline = std::time::Instant::now() + Duration::from_secs(5);
  let exe = loop {
    let exe = crate::os::process::exe(child.pid);
    if exe.is_some() && exe != own {
      break exe;
    }
    assert!(std::time::Instant::now() < deadline, "sleep never ran");
    tokio::task::yield_now().await;
  };
  instance.write_record().await.unwrap();
  // A write queued after it runs after what that write left to do.
  crate::blocking::write_in_turn(|| ()).await.unwrap();
  let ready = only_record(dir.path());
  assert_eq!(ready.exe, exe);
  assert_eq!(ready.start_time, held.start_time);
  assert_eq!(ready.backend(), crate::os::process::AtPid::Recorded);
  let files: Vec<_> = std::fs::read_dir(dir.path())
    .unwrap()
    .flatten()
    .map(|e| e.file_name())
    .collect();
  assert_eq!(files.len(), 1, "{files:?}");
  instance.request_stop();
  instance
    .end(Duration::from_secs(2), Default::default())
    .await;
  assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[cfg(unix)]
fn only_record(dir: &std::path::Path) -> record::Record {
  let mut entries = record::list_records(dir, None).unwrap();
  assert_eq!(entries.len(), 1);
  entries.remove(0).record.unwrap()
}

/// A stop during a restart's backoff wins over the restart, and over a start that waited for it: the
/// owner takes the stop before the backoff's end, so nothing is started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_restarts_backoff_wins() {
  let dir = tempfile::tempdir().unwrap();
  let backoff = Duration::from_secs(1);
  let (pm, events, info) = started_restarting_after(dir.path(), backoff).await;
  let exit_count = crash(&events, info.pid, 1).await;
  // Asked in this order: a start (it waits for the restart), then a stop.
  let (args, runtime) = start_args(dir.path());
  let starting = pm.start(args, runtime);
  let stopping = pm.stop();
  let started = tokio::time::timeout(Duration::from_secs(5), starting)
    .await
    .expect("the start is answered");
  let error = started
    .expect_err("the stop wins over the start that waited")
    .to_string();
  assert!(error.contains("while the backend was down"), "{error}");
  let stopped = tokio::time::timeout(Duration::from_secs(5), stopping)
    .await
    .expect("the stop is answered");
  assert!(stopped.is_none(), "nothing ran: {stopped:?}");
  assert!(!pm.is_active());
  // Past the backoff: nothing was started again.
  tokio::time::sleep(backoff.mul_f64(1.5)).await;
  assert!(pm.backend().is_none());
  assert!(record::list_records(dir.path(), None).unwrap().is_empty());
  assert_eq!(*exit_count.borrow(), 1, "no second process ran");
  // Whether the owner took the down first (and armed the restart, which the stop then dropped) or the
  // stop first (and the down of a run being stopped restarts nothing): no `ready`, no `failed`.
  let sequence = events.sequence.lock().unwrap().clone();
  let others: Vec<&String> = sequence
    .iter()
    .filter(|e| !e.starts_with("restart"))
    .collect();
  assert_eq!(others, ["exit expected=false", "idle"], "{sequence:?}");
  assert!(
    sequence.len() <= 3,
    "one restart armed at most: {sequence:?}"
  );
}

/// A crash's restart waits out the backoff the owner armed: meanwhile nothing runs and the backend stays
/// active, and a start that came during the backoff is answered with the restarted process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_comes_once_the_owners_backoff_is_over() {
  let dir = tempfile::tempdir().unwrap();
  let backoff = Duration::from_millis(600);
  let (pm, events, info) = started_restarting_after(dir.path(), backoff).await;
  crash(&events, info.pid, 1).await;
  let crashed = std::time::Instant::now();
  assert!(pm.is_active(), "a backend between restarts is active");
  let (args, runtime) = start_args(dir.path());
  let (restarted, fresh) = tokio::time::timeout(Duration::from_secs(10), pm.start(args, runtime))
    .await
    .expect("the start is answered")
    .expect("the restarted backend");
  // The exit is reported before the backoff is asked for, so it is over at least that long after.
  let waited = crashed.elapsed();
  assert!(
    waited + Duration::from_millis(50) >= backoff,
    "restarted after {waited:?}, before the backoff of {backoff:?} was over"
  );
  assert!(!fresh, "the restart started it, not this call");
  assert_ne!(restarted.pid, info.pid, "a new process");
  assert_eq!(pm.backend().map(|b| b.pid), Some(restarted.pid));
  assert!(pm.stop().await.is_some());
  assert!(!pm.is_active());
}

/// A memory sample above `maxMemoryBytes` reaches the owner, whose verdict restarts the process with
/// the reason `memory`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owners_memory_verdict_restarts_the_process() {
  let dir = tempfile::tempdir().unwrap();
  let (pm, events) = manager_with(dir.path(), |o| {
    o.max_memory_bytes = Some(1.0);
    o.restart = Some(Either::B(RestartInput {
      initial_delay_ms: Some(100.0),
      ..Default::default()
    }));
  });
  let info = start(&pm, dir.path()).await;
  let mut restarts = events.restarts.subscribe();
  tokio::time::timeout(
    Duration::from_secs(10),
    restarts.wait_for(|r| !r.is_empty()),
  )
  .await
  .expect("the memory limit's verdict restarts it")
  .unwrap();
  assert_eq!(restarts.borrow()[0], (Reason::Memory, info.pid));
  pm.stop().await;
  assert!(!pm.is_active());
}

/// Parallel starts share one start: one call starts it, the others join, and all get the same backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_starts_share_one_backend() {
  let dir = tempfile::tempdir().unwrap();
  let (pm, _) = manager(dir.path());
  let calls: Vec<_> = (0..3)
    .map(|_| {
      let (args, runtime) = start_args(dir.path());
      pm.start(args, runtime)
    })
    .collect();
  let mut answers = Vec::new();
  for call in calls {
    answers.push(call.await);
  }
  let records = record::list_records(dir.path(), None).unwrap().len();
  // Stopped before anything is asserted, so that a failure leaves no process behind.
  let stopped = pm.stop().await;
  let answers: Vec<(BackendInfo, bool)> = answers.into_iter().map(Result::unwrap).collect();
  let fresh = answers.iter().filter(|(_, fresh)| *fresh).count();
  assert_eq!(fresh, 1, "one call started it");
  let pid = answers[0].0.pid;
  assert!(
    answers.iter().all(|(info, _)| info.pid == pid),
    "{answers:?}"
  );
  assert_eq!(records, 1);
  assert_eq!(stopped.map(|s| s.pid), Some(pid));
  assert!(!process::is_alive(pid));
}

/// A bounded stop during a longer one brings the force kill forward: the owner's deadline for the stop
/// ends a backend that ignores the stop signal long before its own `stopTimeoutMs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_stop_during_a_long_one_force_kills_at_its_own_deadline() {
  let dir = tempfile::tempdir().unwrap();
  let stubborn = "import signal, runpy, sys\n\
    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
    signal.signal(signal.SIGINT, signal.SIG_IGN)\n\
    sys.argv = ['server', sys.argv[1], '--bind', sys.argv[2]]\n\
    runpy.run_module('http.server', run_name='__main__')";
  let (pm, _) = manager_with(dir.path(), |o| {
    o.args = Some(
      ["-c", stubborn, "{port}", "{host}"]
        .map(String::from)
        .to_vec(),
    );
    o.stop_timeout_ms = Some(60_000.0);
  });
  let info = start(&pm, dir.path()).await;
  let began = std::time::Instant::now();
  let long = pm.stop();
  let grace = Duration::from_millis(200);
  let bounded = pm.stop_within(grace);
  let limit = super::deadlines::Deadlines::force_kill_after(grace) + Duration::from_secs(5);
  let stopped = tokio::time::timeout(limit, bounded).await;
  if stopped.is_err() {
    // Not ended in time: ended here, so that the failure leaves no process behind.
    crate::os::signal::signal_pid(info.pid, crate::os::signal::Stop::Force);
  }
  let stopped = stopped.expect("the bounded stop's deadline ended it");
  let took = began.elapsed();
  assert_eq!(stopped.map(|s| s.pid), Some(info.pid));
  assert_eq!(
    long.await.map(|s| s.pid),
    Some(info.pid),
    "both stops get the result"
  );
  assert!(
    took < Duration::from_secs(30),
    "long before stopTimeoutMs: {took:?}"
  );
  assert!(!process::is_alive(info.pid));
}

/// `idle` comes once nothing is under way any more: after a stop, after a failed start, and after an
/// exit that nothing restarts (the JS layer then lets Node exit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_is_reported_when_nothing_is_under_way() {
  let dir = tempfile::tempdir().unwrap();
  let (pm, events) = manager(dir.path());
  let mut idles = events.idles.subscribe();
  let info = start(&pm, dir.path()).await;
  assert_eq!(*idles.borrow_and_update(), 0);
  pm.stop().await.unwrap();
  assert_eq!(*idles.borrow_and_update(), 1, "after a stop");
  assert!(!pm.is_active());

  let info2 = start(&pm, dir.path()).await;
  assert_ne!(info.pid, info2.pid);
  killed_until_idle(
    &pm,
    &mut idles,
    info2.pid,
    2,
    "idle after an exit that nothing restarts",
  )
  .await;
  assert!(pm.backend().is_none());
}

/// The owner decides on restarts: a crash loop (each restart exits before it is ready, and each of those
/// exits is one more down for the owner's book) is restarted as the policy allows, and given up on exactly
/// once when it reaches `maxRestarts`; then nothing is under way and nothing more happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_is_given_up_once_at_max_restarts() {
  let dir = tempfile::tempdir().unwrap();
  let marker = dir.path().join("crashed");
  // The first process serves; every later one exits with 7 before it is ready.
  let launcher = format!(
    "if [ -e \"$2\" ]; then exit 7; fi; : > \"$2\"; exec {} -m http.server \"$0\" --bind \"$1\"",
    python3()
  );
  let marker = marker.display().to_string();
  let (pm, events) = manager_with(dir.path(), |o| {
    o.command = Some("/bin/sh".into());
    o.args = Some(
      ["-c", &launcher, "{port}", "{host}", &marker]
        .map(String::from)
        .to_vec(),
    );
    o.restart = Some(Either::B(RestartInput {
      max_restarts: Some(2.0),
      initial_delay_ms: Some(20.0),
      max_delay_ms: Some(20.0),
      ..Default::default()
    }));
  });
  let mut idles = events.idles.subscribe();
  let info = start(&pm, dir.path()).await;
  killed_until_idle(&pm, &mut idles, info.pid, 1, "the owner gives up").await;
  assert!(pm.backend().is_none() && pm.stats().is_none());
  // Nothing was left to stop, and nothing happened after the give-up.
  assert!(pm.stop().await.is_none());
  let sequence = events.sequence.lock().unwrap().clone();
  assert_eq!(
    sequence,
    [
      "exit expected=false",
      "restart 1 exit",
      "exit expected=false",
      "restart 2 exit",
      "exit expected=false",
      "failed exit after 2",
      "idle"
    ],
    "{sequence:?}"
  );
  assert!(record::list_records(dir.path(), None).unwrap().is_empty());
}

/// A stop taken while the owner is in `Backoff` (its restart armed, the `restart` event out) drops the
/// armed restart: nothing is spawned once the backoff would have been over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_in_backoff_never_spawns() {
  let dir = tempfile::tempdir().unwrap();
  let backoff = Duration::from_millis(500);
  let (pm, events, info) = started_restarting_after(dir.path(), backoff).await;
  let mut restarts = events.restarts.subscribe();
  crate::os::signal::signal_pid(info.pid, crate::os::signal::Stop::Force);
  tokio::time::timeout(Duration::from_secs(5), restarts.wait_for(|r| !r.is_empty()))
    .await
    .expect("the owner arms the restart")
    .unwrap();
  assert!(pm.is_active() && pm.backend().is_none(), "between restarts");
  assert!(pm.stop().await.is_none(), "no process was running");
  assert!(!pm.is_active());
  // Past the backoff: nothing was started again.
  tokio::time::sleep(backoff * 2).await;
  let sequence = events.sequence.lock().unwrap().clone();
  assert_eq!(
    sequence,
    ["exit expected=false", "restart 1 exit", "idle"],
    "{sequence:?}"
  );
  assert!(record::list_records(dir.path(), None).unwrap().is_empty());
}
