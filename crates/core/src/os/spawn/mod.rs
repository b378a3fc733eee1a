//! Starting a backend and watching it, with no thread per backend (docs/design.md §1-3, §23):
//! - every backend is forked by one long-lived spawner thread (`spawner`): Linux's parent-death signal
//!   fires when the *thread* that forked exits, so that thread lives as long as the app, and the signal
//!   means "the app died";
//! - the exit is awaited on the runtime (`exit_wait`: a pidfd on Linux, one kqueue on macOS, the system's
//!   wait pool on Windows), never through SIGCHLD, which libuv owns inside Node; the output pipes are read
//!   on the runtime too (`output`; threads on Windows, which has no async anonymous pipes);
//! - the child leads its own process group, and stays unreaped until the group has been dealt with, so its
//!   pid (= the group id) cannot be reused while we still signal the group;
//! - the child is held before it runs the program until `Child::run_program` (docs/design.md §25): the
//!   caller writes the PID record first, so an app killed at any moment leaves either nothing running or
//!   a recorded orphan. Unix: a gate pipe read before `exec`; Windows: created suspended, resumed then.
//!
//! Each system's half is its `imp` module (unix.rs, windows.rs), as in tokio's `process`.

mod exit_wait;
#[cfg(unix)]
#[path = "unix.rs"]
mod imp;
#[cfg(windows)]
#[path = "windows.rs"]
mod imp;
mod output;
mod spawner;

#[cfg(windows)]
pub(crate) use imp::Job;
pub use output::{LineSink, Lines, Output, Stream};

use crate::error::{PmError, Result};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

#[derive(Debug, Clone, Default)]
pub struct SpawnSpec {
  pub program: String,
  pub args: Vec<String>,
  pub cwd: std::path::PathBuf,
  /// The complete environment of the backend.
  pub env: Vec<(String, String)>,
  /// Unix nice value set in the child before it runs the program (inherited by all it starts); Windows:
  /// the matching priority class.
  pub nice: i32,
  /// `RLIMIT_NOFILE` (Unix).
  pub open_files: Option<u64>,
  /// `Some(false)`: no core dumps (Unix).
  pub core_dumps: Option<bool>,
  /// Give the backend a stdin pipe that stays open until `Child::close_stdin` (a stop request); otherwise
  /// its stdin is empty.
  pub stdin_pipe: bool,
  /// A listening socket handed to the backend as file descriptor 3, with `LISTEN_FDS=1` and `LISTEN_PID`
  /// (systemd's socket activation; Unix).
  pub listen_socket: Option<Arc<std::net::TcpListener>>,
  /// Linux: no parent-death signal (the death guard, or nothing, ends the backend with the app instead).
  pub no_parent_death_signal: bool,
}

/// How the backend ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExitInfo {
  pub exit_code: Option<i32>,
  pub signal: Option<String>,
}

impl ExitInfo {
  pub fn describe(&self) -> String {
    match (&self.exit_code, &self.signal) {
      (Some(code), _) => format!("exit code {code}"),
      (None, Some(signal)) => format!("signal {signal}"),
      (None, None) => "an unknown status".into(),
    }
  }
}

/// A running (or exited, not yet released) backend process.
pub struct Child {
  pub pid: u32,
  pub output: Arc<Output>,
  exit: watch::Receiver<Option<ExitInfo>>,
  /// The process, until it is reaped: once it has exited *and* the owner released it.
  reaping: Arc<Mutex<Reaping>>,
  stdin: Mutex<Option<Box<dyn Write + Send>>>,
  /// What went wrong short of failing the spawn, for the caller to log.
  warnings: Vec<String>,
  /// While the child is held before its program; `None` once let go or stopped.
  held: Mutex<Option<Held>>,
  /// The program could not be started once let go: the failed spawn reaped the process, so its pid (and
  /// group id) may be another process's by now.
  never_ran: AtomicBool,
  /// A force kill was sent to the whole tree (`force_now`: a bounded stop's end, or the owner's), so the
  /// stop that sees the exit reports it forced even when its own escalation had not come yet.
  forced: AtomicBool,
  /// The job that holds the backend's tree (`None` when it could not be made: see `warnings`).
  #[cfg(windows)]
  pub job: Option<Job>,
  /// Set before the force stop, so that its exit is reported as forced.
  #[cfg(windows)]
  killed: Arc<AtomicBool>,
}

/// Who may reap the process: both the exit watch (once it saw the exit) and the owner (`release`) must
/// agree. Reaping an exited process does not block.
#[derive(Default)]
struct Reaping {
  process: Option<std::process::Child>,
  exited: bool,
  released: bool,
}

impl Reaping {
  fn reap_if_done(&mut self) {
    if self.exited && self.released {
      if let Some(process) = self.process.take() {
        imp::reap(process);
      }
    }
  }
}

/// A child held before its program, and what is needed to let it go.
struct Held {
  os: imp::Held,
  program: String,
  cwd: PathBuf,
  /// The backend's `PATH`, where a bare command name was looked for.
  path_env: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
  m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Child {
  /// Lets the held child run its program (once its PID record is written). `SpawnFailed` when the program
  /// could not be started (missing, not executable); nothing of it runs then. A child already let go (or
  /// stopped) is left as it is.
  pub async fn run_program(&self) -> Result<()> {
    let held = lock(&self.held).take();
    match held {
      Some(held) => imp::let_go(self, held).await,
      None => Ok(()),
    }
  }

  /// Ends a held child without running its program (its record could not be written). False when it was
  /// not held (any more).
  pub fn stop_at_gate(&self) -> bool {
    let held = lock(&self.held).take();
    let Some(held) = held else {
      return false;
    };
    imp::stop_held(self, held);
    true
  }

  /// Held before its program: the process exists, the program does not run yet.
  pub fn is_held(&self) -> bool {
    lock(&self.held).is_some()
  }

  /// The program could not be started, and the process is already reaped: nothing of it is left to stop,
  /// and its pid must not be signalled.
  pub fn never_ran(&self) -> bool {
    self.never_ran.load(Ordering::SeqCst)
  }

  /// Whether `force_now` force-killed the tree.
  pub fn was_forced(&self) -> bool {
    self.forced.load(Ordering::SeqCst)
  }

  /// The exit, once the backend has ended (it may still be unreaped).
  pub fn exit_info(&self) -> Option<ExitInfo> {
    self.exit.borrow().clone()
  }

  /// Resolves when the backend has ended.
  pub async fn exited(&self) -> ExitInfo {
    let mut rx = self.exit.clone();
    let reported = rx.wait_for(Option::is_some).await.map(|info| info.clone());
    // The exit watch only drops its sender after reporting.
    reported
      .unwrap_or_else(|_| rx.borrow().clone())
      .unwrap_or_default()
  }

  /// Closes the backend's stdin pipe (a stop request, for backends that treat end of input so). False when
  /// it had none, or it was closed already.
  pub fn close_stdin(&self) -> bool {
    lock(&self.stdin).take().is_some()
  }

  /// What went wrong short of failing the spawn (Windows: the backend could not be put in a job object),
  /// for the caller to log.
  pub fn warnings(&self) -> Vec<String> {
    self.warnings.clone()
  }

  /// Force-kills the backend's whole tree now, unless its leader was already released (then its group id
  /// may name someone else's group). Holding the reaping lock keeps it unreaped while signalling.
  pub fn force_now(&self) {
    let reaping = lock(&self.reaping);
    if !reaping.released {
      self.forced.store(true, Ordering::SeqCst);
      imp::force_tree(self);
    }
  }

  /// Lets the (exited) leader be reaped, which frees its pid and process-group id.
  pub fn release(&self) {
    let mut reaping = lock(&self.reaping);
    if reaping.released {
      return;
    }
    // Before the reap frees the group id for reuse, the death guard forgets it.
    imp::forget_group(self.pid);
    reaping.released = true;
    reaping.reap_if_done();
  }

  /// A child that never reports an exit, for tests of what happens when a process cannot be ended.
  #[cfg(all(test, unix))]
  pub fn never_ending(pid: u32) -> (Arc<Child>, watch::Sender<Option<ExitInfo>>) {
    let (tx, rx) = watch::channel(None);
    let child = Child {
      pid,
      output: Arc::new(Output::default()),
      exit: rx,
      reaping: Arc::new(Mutex::new(Reaping {
        released: true,
        ..Reaping::default()
      })),
      stdin: Mutex::new(None),
      warnings: Vec::new(),
      held: Mutex::new(None),
      never_ran: AtomicBool::new(false),
      forced: AtomicBool::new(false),
    };
    (Arc::new(child), tx)
  }
}

impl Drop for Child {
  fn drop(&mut self) {
    // Nobody can let it run any more.
    self.stop_at_gate();
    self.release();
  }
}

/// Reports the exit `wait` resolves with, then lets the process be reaped once the owner released it.
async fn watch_exit(
  reaping: Arc<Mutex<Reaping>>,
  exit: watch::Sender<Option<ExitInfo>>,
  wait: impl Future<Output = ExitInfo>,
) {
  let info = wait.await;
  let _ = exit.send(Some(info));
  let mut reaping = lock(&reaping);
  reaping.exited = true;
  reaping.reap_if_done();
}

/// Starts the backend and lets it run at once (tests that need no record).
#[cfg(test)]
pub async fn spawn(spec: SpawnSpec, sink: LineSink) -> Result<Arc<Child>> {
  let child = spawn_held(spec, sink).await?;
  child.run_program().await?;
  Ok(child)
}

/// Starts the backend, held before its program: it has a pid (for its record) but runs nothing until
/// `Child::run_program`. Dropping it unreleased stops it there.
pub async fn spawn_held(spec: SpawnSpec, sink: LineSink) -> Result<Arc<Child>> {
  imp::spawn_held(spec, sink).await
}

fn no_thread(program: &str, e: std::io::Error) -> PmError {
  PmError::SpawnFailed {
    command: program.to_string(),
    reason: "no thread to start it".into(),
    problem: None,
    source: Some(Arc::new(e)),
  }
}

fn spawner_ended(program: &str) -> PmError {
  PmError::SpawnFailed {
    command: program.to_string(),
    reason: "its start was dropped before it finished".into(),
    problem: None,
    source: None,
  }
}

fn build_command(spec: &SpawnSpec) -> Command {
  let mut cmd = imp::command(spec);
  cmd
    .current_dir(&spec.cwd)
    .env_clear()
    .envs(spec.env.iter().map(|(k, v)| (k, v)))
    .stdin(if spec.stdin_pipe {
      Stdio::piped()
    } else {
      Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
  cmd
}

/// The backend's `PATH`.
fn path_of(spec: &SpawnSpec) -> Option<String> {
  spec
    .env
    .iter()
    .find(|(k, _)| imp::is_path_variable(k))
    .map(|(_, v)| v.clone())
}

/// Unix: refuses, before anything is forked, a file the system would not run as a program but `execvp`
/// would hand to `/bin/sh` as a script (os/exec_format.rs): the error an ENOEXEC gives, with what to do.
#[cfg(unix)]
fn refuse_format(program: &str, cwd: &Path, path_env: Option<&str>) -> Result<()> {
  use crate::os::spawn_problem::{locate, Kind, SpawnProblem};
  let Ok(path) = locate(program, cwd, path_env) else {
    return Ok(());
  };
  let Some(refusal) = crate::os::exec_format::refusal(&path) else {
    return Ok(());
  };
  Err(PmError::SpawnFailed {
    command: program.to_string(),
    reason: refusal.advice(&path.display().to_string()),
    problem: Some(SpawnProblem {
      kind: Kind::NotExecutable,
      path: Some(path),
      searched: None,
    }),
    source: Some(Arc::new(std::io::Error::from_raw_os_error(libc::ENOEXEC))),
  })
}

fn spawn_error(program: &str, cwd: &Path, path_env: Option<&str>, e: std::io::Error) -> PmError {
  let problem = crate::os::spawn_problem::classify(program, cwd, path_env, &e);
  PmError::SpawnFailed {
    command: program.to_string(),
    reason: problem.advice(program, &e),
    problem: Some(problem),
    source: Some(std::sync::Arc::new(e)),
  }
}

#[cfg(all(test, unix))]
mod tests {
  use super::*;
  use std::time::Duration;

  fn sh(script: &str) -> SpawnSpec {
    SpawnSpec {
      program: "/bin/sh".into(),
      args: vec!["-c".into(), script.into()],
      cwd: std::env::temp_dir(),
      env: std::env::vars().collect(),
      ..Default::default()
    }
  }

  type Lines = Arc<Mutex<Vec<(Stream, String)>>>;

  fn collect() -> (LineSink, Lines) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink_lines = lines.clone();
    let sink: LineSink = Arc::new(move |s, ls: &crate::os::spawn::Lines<'_>| {
      let mut all = sink_lines.lock().unwrap();
      all.extend(ls.iter().map(|l| (s, l.to_string())));
    });
    (sink, lines)
  }

  #[tokio::test]
  async fn reports_exit_code_and_output_lines() {
    let (sink, lines) = collect();
    let child = spawn(sh("echo out; echo err >&2; exit 3"), sink)
      .await
      .unwrap();
    let info = child.exited().await;
    assert_eq!(info.exit_code, Some(3));
    child.output.wait_closed(Duration::from_secs(2)).await;
    assert_eq!(child.output.stderr_tail(), vec!["err".to_string()]);
    let lines = lines.lock().unwrap().clone();
    assert!(lines.contains(&(Stream::Stdout, "out".into())));
    // Unreaped until released: the pid is still ours.
    assert!(std::path::Path::new(&format!("/proc/{}", child.pid)).exists());
    child.release();
  }

  #[tokio::test]
  async fn a_missing_program_is_a_spawn_error_with_the_os_error_as_cause() {
    let (sink, _) = collect();
    let mut spec = sh("");
    spec.program = "/nonexistent/backend-binary".into();
    match spawn(spec, sink).await {
      Err(err @ PmError::SpawnFailed { .. }) => {
        assert_eq!(
          err.os_cause().map(|e| e.kind()),
          Some(std::io::ErrorKind::NotFound)
        );
        assert!(err.to_string().contains("/nonexistent/backend-binary"));
      }
      other => panic!("expected SpawnFailed, got {:?}", other.err()),
    }
  }

  #[tokio::test]
  async fn the_child_leads_its_own_group_and_a_kill_is_reported_as_a_signal() {
    let (sink, _) = collect();
    let child = spawn(sh("sleep 30"), sink).await.unwrap();
    assert_eq!(
      crate::os::process::process_group(child.pid),
      Some(child.pid)
    );
    assert!(crate::os::signal::signal_group(
      child.pid,
      crate::os::signal::Stop::Force
    ));
    let info = child.exited().await;
    assert_eq!(info.signal.as_deref(), Some("SIGKILL"));
    child.release();
  }

  /// The gate (docs/design.md §25): the process exists (a pid for the record) but is still a copy of this
  /// program until let go; stopped there, it ends without running anything.
  #[tokio::test]
  async fn a_held_child_runs_its_program_only_when_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let script = format!("echo $$ > {}", ran.display());
    let own_exe = std::fs::read_link("/proc/self/exe").ok();
    for let_go in [false, true] {
      let (sink, _) = collect();
      let child = spawn_held(sh(&script), sink).await.unwrap();
      assert!(child.is_held());
      if cfg!(target_os = "linux") {
        let exe = std::fs::read_link(format!("/proc/{}/exe", child.pid)).ok();
        assert_eq!(exe, own_exe, "held: not the program yet");
      }
      if let_go {
        child.run_program().await.unwrap();
      } else {
        assert!(child.stop_at_gate());
      }
      let info = child.exited().await;
      child.release();
      if let_go {
        assert_eq!(info.exit_code, Some(0));
        let pid = std::fs::read_to_string(&ran).unwrap();
        assert_eq!(
          pid.trim(),
          child.pid.to_string(),
          "the program runs in the held process"
        );
      } else {
        assert_eq!(info.exit_code, Some(imp::STOPPED_AT_GATE));
        assert!(!ran.exists(), "the program never ran");
      }
    }
  }

  /// The listening socket handed over as descriptor 3 (`listen: 'fd'`) and the gate's own descriptors
  /// do not replace each other in the child.
  #[cfg(target_os = "linux")]
  #[tokio::test]
  async fn a_held_child_gets_its_listening_socket_as_descriptor_3() {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("fd3");
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut spec = sh(&format!(
      "readlink /proc/$$/fd/3 > {}; echo \"$LISTEN_PID\" >> {}",
      seen.display(),
      seen.display()
    ));
    spec.listen_socket = Some(Arc::new(socket));
    let (sink, _) = collect();
    let child = spawn(spec, sink).await.unwrap();
    assert_eq!(child.exited().await.exit_code, Some(0));
    child.release();
    let text = std::fs::read_to_string(&seen).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("socket:"), "{text}");
    assert_eq!(lines.next(), Some(child.pid.to_string().as_str()));
  }

  /// A program that cannot be started fails when let go; nothing is left to stop or signal.
  #[tokio::test]
  async fn a_missing_program_fails_when_let_go_and_is_never_signalled() {
    let (sink, _) = collect();
    let mut spec = sh("");
    spec.program = "/nonexistent/backend-binary".into();
    let child = spawn_held(spec, sink).await.unwrap();
    let err = child.run_program().await.unwrap_err();
    assert_eq!(
      err.os_cause().map(|e| e.kind()),
      Some(std::io::ErrorKind::NotFound)
    );
    assert!(child.never_ran());
  }

  /// A stopped process (Ctrl-Z, a debugger) has not exited: it must not be reported as ended.
  #[tokio::test]
  async fn a_stopped_and_continued_child_is_still_running() {
    use crate::os::signal::{signal_pid, Stop};
    let (sink, _) = collect();
    let child = spawn(sh("sleep 30"), sink).await.unwrap();
    let pid = rustix::process::Pid::from_raw(child.pid as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    assert!(
      tokio::time::timeout(Duration::from_millis(100), child.exited())
        .await
        .is_err(),
      "stop/continue is not an exit"
    );
    signal_pid(child.pid, Stop::Force);
    assert_eq!(child.exited().await.signal.as_deref(), Some("SIGKILL"));
    child.release();
  }
}
