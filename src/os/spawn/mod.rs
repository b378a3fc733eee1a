//! Starting a backend and watching it. Each backend gets one dedicated, long-lived thread that starts it,
//! then blocks waiting for that one process (docs/design.md §1-3):
//! - inside Node, libuv owns SIGCHLD and resets it, so a SIGCHLD-based reaper (tokio's) can hang forever;
//!   a blocking wait on our own pid needs no signal at all and never touches Node's children;
//! - Linux's parent-death signal fires when the *thread* that forked exits, so the forking thread must live
//!   as long as the child: then the signal means "the app died";
//! - the child leads its own process group, and stays unreaped until the group has been dealt with, so its
//!   pid (= the group id) cannot be reused while we still signal the group;
//! - the child is held before it runs the program until `Child::run_program` (docs/design.md §25): the
//!   caller writes the PID record first, so an app killed at any moment leaves either nothing running or
//!   a recorded orphan. Unix: a gate pipe read before `exec`; Windows: created suspended, resumed then.

mod output;
#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

pub use output::{LineSink, Output, Stream};
#[cfg(windows)]
pub use windows::Job;

use crate::error::{PmError, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::{oneshot, watch};

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
  /// Sending on (or dropping) this lets the waiter thread reap the child.
  reap: Mutex<Option<mpsc::Sender<()>>>,
  stdin: Mutex<Option<Box<dyn Write + Send>>>,
  /// What went wrong short of failing the spawn, for the caller to log.
  warnings: Vec<String>,
  /// While the child is held before its program; `None` once let go or stopped.
  held: Mutex<Option<Held>>,
  /// The program could not be started once let go: the failed spawn reaped the process, so its pid (and
  /// group id) may be another process's by now.
  never_ran: AtomicBool,
  /// The job that holds the backend's tree (`None` when it could not be made: see `warnings`).
  #[cfg(windows)]
  pub job: Option<Job>,
  /// Set before the force stop, so that its exit is reported as forced.
  #[cfg(windows)]
  killed: Arc<AtomicBool>,
}

/// A child held before its program, and what is needed to let it go.
struct Held {
  #[cfg(unix)]
  gate: unix::Gate,
  /// Unix: the spawn's outcome, which comes once the program runs (or could not be started).
  #[cfg(unix)]
  started: oneshot::Receiver<std::io::Result<u32>>,
  program: String,
  cwd: PathBuf,
  /// The backend's `PATH`, where a bare command name was looked for.
  path_env: Option<String>,
}

impl Child {
  /// Lets the held child run its program (once its PID record is written). `SpawnFailed` when the program
  /// could not be started (missing, not executable); nothing of it runs then. A child already let go (or
  /// stopped) is left as it is.
  pub async fn run_program(&self) -> Result<()> {
    let held = self.held.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(held) = held else {
      return Ok(());
    };
    #[cfg(unix)]
    {
      let Held {
        gate,
        started,
        program,
        cwd,
        path_env,
      } = held;
      gate.open();
      match started.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
          self.never_ran.store(true, Ordering::SeqCst);
          Err(spawn_error(&program, &cwd, path_env.as_deref(), e))
        }
        Err(_) => Err(waiter_ended(&program)),
      }
    }
    #[cfg(windows)]
    {
      windows::resume(self.pid).map_err(|e| {
        // It never ran a single instruction.
        self.kill_tree();
        spawn_error(&held.program, &held.cwd, held.path_env.as_deref(), e)
      })
    }
  }

  /// Ends a held child without running its program (its record could not be written). False when it was
  /// not held (any more).
  pub fn stop_at_gate(&self) -> bool {
    let held = self.held.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(held) = held else {
      return false;
    };
    // Unix: a gate dropped unopened tells the child to stop.
    drop(held);
    #[cfg(windows)]
    self.kill_tree();
    true
  }

  /// Held before its program: the process exists, the program does not run yet.
  pub fn is_held(&self) -> bool {
    self
      .held
      .lock()
      .unwrap_or_else(|e| e.into_inner())
      .is_some()
  }

  /// The program could not be started, and the process is already reaped: nothing of it is left to stop,
  /// and its pid must not be signalled.
  pub fn never_ran(&self) -> bool {
    self.never_ran.load(Ordering::SeqCst)
  }

  /// The exit, once the backend has ended (it may still be unreaped).
  pub fn exit_info(&self) -> Option<ExitInfo> {
    self.exit.borrow().clone()
  }

  /// Resolves when the backend has ended.
  pub async fn exited(&self) -> ExitInfo {
    let mut rx = self.exit.clone();
    let reported = rx.wait_for(Option::is_some).await.map(|info| info.clone());
    // The waiter thread only drops its sender after reporting.
    reported
      .unwrap_or_else(|_| rx.borrow().clone())
      .unwrap_or_default()
  }

  /// Closes the backend's stdin pipe (a stop request, for backends that treat end of input so). False when
  /// it had none, or it was closed already.
  pub fn close_stdin(&self) -> bool {
    self
      .stdin
      .lock()
      .unwrap_or_else(|e| e.into_inner())
      .take()
      .is_some()
  }

  /// What went wrong short of failing the spawn (Windows: the backend could not be put in a job object),
  /// for the caller to log.
  pub fn warnings(&self) -> Vec<String> {
    self.warnings.clone()
  }

  /// Ends the backend's whole tree at once (the force stop): the job on Windows. False when nothing
  /// could be signalled.
  #[cfg(windows)]
  pub fn kill_tree(&self) -> bool {
    self.killed.store(true, Ordering::SeqCst);
    match &self.job {
      Some(job) => job.terminate(),
      None => crate::os::signal::signal_pid(self.pid, crate::os::signal::Stop::Force),
    }
  }

  /// Force-kills the backend's whole tree now, unless its leader was already released (then its group id
  /// may name someone else's group). Holding the release lock keeps it unreaped while signalling.
  pub fn force_now(&self) {
    let reap = self.reap.lock().unwrap_or_else(|e| e.into_inner());
    if reap.is_none() {
      return;
    }
    #[cfg(unix)]
    crate::os::signal::signal_group(self.pid, crate::os::signal::Stop::Force);
    #[cfg(windows)]
    self.kill_tree();
  }

  /// Lets the waiter thread reap the (exited) leader, which frees its pid and process-group id.
  pub fn release(&self) {
    if let Some(tx) = self.reap.lock().unwrap_or_else(|e| e.into_inner()).take() {
      // Before the reap frees the group id for reuse, the death guard forgets it.
      #[cfg(unix)]
      if let Some(guard) = crate::os::guard::started() {
        guard.forget(self.pid);
      }
      let _ = tx.send(());
    }
  }

  /// A child that never reports an exit, for tests of what happens when a process cannot be ended.
  #[cfg(all(test, unix))]
  pub fn never_ending(pid: u32) -> (Arc<Child>, watch::Sender<Option<ExitInfo>>) {
    let (tx, rx) = watch::channel(None);
    let child = Child {
      pid,
      output: Arc::new(Output::default()),
      exit: rx,
      reap: Mutex::new(None),
      stdin: Mutex::new(None),
      warnings: Vec::new(),
      held: Mutex::new(None),
      never_ran: AtomicBool::new(false),
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

/// Starts the backend on its own waiter thread and lets it run at once (tests that need no record).
#[cfg(test)]
pub async fn spawn(spec: SpawnSpec, sink: LineSink) -> Result<Arc<Child>> {
  let child = spawn_held(spec, sink).await?;
  child.run_program().await?;
  Ok(child)
}

fn thread_name(program: &str) -> String {
  format!(
    "bpm-waiter-{}",
    program.rsplit(['/', '\\']).next().unwrap_or("")
  )
}

fn no_thread(program: &str, e: std::io::Error) -> PmError {
  PmError::SpawnFailed {
    command: program.to_string(),
    reason: "no thread to watch it".into(),
    problem: None,
    source: Some(Arc::new(e)),
  }
}

fn waiter_ended(program: &str) -> PmError {
  PmError::SpawnFailed {
    command: program.to_string(),
    reason: "its waiter thread ended early".into(),
    problem: None,
    source: None,
  }
}

/// Starts the backend on its own waiter thread, held before its program: it has a pid (for its record) but
/// runs nothing until `Child::run_program`. Dropping it unreleased stops it there.
#[cfg(unix)]
pub async fn spawn_held(spec: SpawnSpec, sink: LineSink) -> Result<Arc<Child>> {
  let (program, cwd, path_env) = (spec.program.clone(), spec.cwd.clone(), path_of(&spec));
  let failed = |e: std::io::Error| spawn_error(&program, &cwd, path_env.as_deref(), e);
  let mut command = build_command(&spec);
  // Pipes of our own: the spawn returns only once the program runs, and its output must be read before.
  let (out_read, out_write) = std::io::pipe().map_err(failed)?;
  let (err_read, err_write) = std::io::pipe().map_err(failed)?;
  command.stdout(out_write).stderr(err_write);
  let stdin = match spec.stdin_pipe {
    true => {
      let (read, write) = std::io::pipe().map_err(failed)?;
      command.stdin(read);
      Some(Box::new(write) as Box<dyn Write + Send>)
    }
    false => None,
  };
  let (mut gate, child_ends) = unix::Gate::install(&mut command).map_err(failed)?;
  // The spec holds the socket handed to the backend (`listen: 'fd'`); the command's copy goes with the spawn.
  drop(spec);
  let (started_tx, mut started_rx) = oneshot::channel::<std::io::Result<u32>>();
  let (exit_tx, exit_rx) = watch::channel(None);
  let (reap_tx, reap_rx) = mpsc::channel::<()>();
  std::thread::Builder::new()
    .name(thread_name(&program))
    .stack_size(crate::blocking::THREAD_STACK)
    .spawn(move || {
      let spawned = command.spawn();
      // Our copies of the child's descriptors (its output pipes, its socket): they must close with the
      // backend, not live as long as this thread.
      drop(command);
      drop(child_ends);
      let mut process = match spawned {
        Ok(process) => process,
        Err(e) => {
          let _ = exit_tx.send(Some(ExitInfo::default()));
          let _ = started_tx.send(Err(e));
          return;
        }
      };
      let _ = started_tx.send(Ok(process.id()));
      let info = unix::wait_exit_keep_pid(&mut process);
      let _ = exit_tx.send(Some(info));
      // Hold the zombie (and with it the pid and group id) until the owner has dealt with the group.
      let _ = reap_rx.recv();
      let _ = process.wait();
    })
    .map_err(|e| no_thread(&program, e))?;
  enum First {
    Reported(std::io::Result<Option<u32>>),
    Started(std::result::Result<std::io::Result<u32>, oneshot::error::RecvError>),
  }
  let first = tokio::select! {
    biased;
    reported = gate.reported_pid() => First::Reported(reported),
    started = &mut started_rx => First::Started(started),
  };
  let outcome_known = !matches!(first, First::Reported(Ok(Some(_))));
  let started = match first {
    First::Reported(Ok(Some(pid))) => Ok(Ok(pid)),
    // Our end of the report failed: the gate, dropped unopened, stops the child.
    First::Reported(Err(e)) => return Err(failed(e)),
    // It ended before it was held (a failed setup step): the spawn says why.
    First::Reported(Ok(None)) => (&mut started_rx).await,
    First::Started(started) => started,
  };
  let pid = match started {
    Ok(Ok(pid)) => pid,
    Ok(Err(e)) => return Err(failed(e)),
    Err(_) => return Err(waiter_ended(&program)),
  };
  if outcome_known {
    // Ended without being held (killed from outside): the outcome is known, and there is nothing to open.
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(Ok(pid));
    started_rx = rx;
  }
  let pipes: Vec<(Stream, Box<dyn Read + Send>)> = vec![
    (Stream::Stdout, Box::new(out_read)),
    (Stream::Stderr, Box::new(err_read)),
  ];
  Ok(Arc::new(Child {
    pid,
    output: output::start_readers(pid, pipes, sink),
    exit: exit_rx,
    reap: Mutex::new(Some(reap_tx)),
    stdin: Mutex::new(stdin),
    warnings: Vec::new(),
    held: Mutex::new(Some(Held {
      gate,
      started: started_rx,
      program,
      cwd,
      path_env,
    })),
    never_ran: AtomicBool::new(false),
  }))
}

/// Starts the backend suspended, in its job, on its own waiter thread: it has a pid (for its record) but
/// runs nothing until `Child::run_program` resumes it. Dropping it unreleased ends it.
#[cfg(windows)]
pub async fn spawn_held(spec: SpawnSpec, sink: LineSink) -> Result<Arc<Child>> {
  let (started_tx, started_rx) = oneshot::channel::<Result<Arc<Child>>>();
  let program = spec.program.clone();
  std::thread::Builder::new()
    .name(thread_name(&program))
    .stack_size(crate::blocking::THREAD_STACK)
    .spawn(move || waiter_thread(spec, sink, started_tx))
    .map_err(|e| no_thread(&program, e))?;
  started_rx
    .await
    .unwrap_or_else(|_| Err(waiter_ended(&program)))
}

fn build_command(spec: &SpawnSpec) -> Command {
  let mut cmd = match &spec.listen_socket {
    #[cfg(unix)]
    Some(_) => unix::with_listen_pid(spec),
    _ => {
      let mut cmd = Command::new(&spec.program);
      cmd.args(&spec.args);
      cmd
    }
  };
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
  #[cfg(unix)]
  unix::configure(&mut cmd, spec);
  cmd
}

/// The backend's `PATH` (Windows compares variable names without case).
fn path_of(spec: &SpawnSpec) -> Option<String> {
  spec
    .env
    .iter()
    .find(|(k, _)| k == "PATH" || (cfg!(windows) && k.eq_ignore_ascii_case("PATH")))
    .map(|(_, v)| v.clone())
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

#[cfg(windows)]
fn waiter_thread(spec: SpawnSpec, sink: LineSink, started: oneshot::Sender<Result<Arc<Child>>>) {
  let mut command = build_command(&spec);
  let console = crate::os::win::console::lock();
  windows::configure(&mut command, &spec);
  let spawned = command.spawn();
  drop(console);
  let mut process = match spawned {
    Ok(p) => p,
    Err(e) => {
      let _ = started.send(Err(spawn_error(
        &spec.program,
        &spec.cwd,
        path_of(&spec).as_deref(),
        e,
      )));
      return;
    }
  };
  drop(command);
  let pid = process.id();
  let killed = Arc::new(AtomicBool::new(false));
  let (job, warnings) = match windows::contain(&process, &killed) {
    Ok(contained) => contained,
    Err(e) => {
      // It never ran a single instruction.
      let _ = process.kill();
      let _ = process.wait();
      let _ = started.send(Err(spawn_error(
        &spec.program,
        &spec.cwd,
        path_of(&spec).as_deref(),
        e,
      )));
      return;
    }
  };
  let held = Held {
    program: spec.program.clone(),
    cwd: spec.cwd.clone(),
    path_env: path_of(&spec),
  };
  drop(spec);
  let pipes: Vec<(Stream, Box<dyn Read + Send>)> = [
    process
      .stdout
      .take()
      .map(|s| (Stream::Stdout, Box::new(s) as Box<dyn Read + Send>)),
    process
      .stderr
      .take()
      .map(|s| (Stream::Stderr, Box::new(s) as Box<dyn Read + Send>)),
  ]
  .into_iter()
  .flatten()
  .collect();
  let output = output::start_readers(pid, pipes, sink);
  let (exit_tx, exit_rx) = watch::channel(None);
  let (reap_tx, reap_rx) = mpsc::channel::<()>();

  let child = Arc::new(Child {
    pid,
    output,
    exit: exit_rx,
    reap: Mutex::new(Some(reap_tx)),
    stdin: Mutex::new(
      process
        .stdin
        .take()
        .map(|s| Box::new(s) as Box<dyn Write + Send>),
    ),
    warnings,
    held: Mutex::new(Some(held)),
    never_ran: AtomicBool::new(false),
    job,
    killed: killed.clone(),
  });
  if started.send(Ok(child)).is_err() {
    // Nobody will ever stop it (or let it run): don't leave it there.
    let _ = process.kill();
  }

  let info = windows::wait_exit(&mut process, &killed);
  let _ = exit_tx.send(Some(info));
  // Hold the process handle (and with it the pid) until the owner has dealt with the job.
  let _ = reap_rx.recv();
  let _ = process.wait();
  // The pid is free once the handle closes: its job is no longer found by pid.
  Job::forget(pid);
}

pub(crate) fn exit_info_from(status: std::process::ExitStatus) -> ExitInfo {
  #[cfg(unix)]
  {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
      return ExitInfo {
        exit_code: None,
        signal: Some(crate::os::signal::name(sig)),
      };
    }
  }
  ExitInfo {
    exit_code: status.code(),
    signal: None,
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
    let sink: LineSink = Arc::new(move |s, l| sink_lines.lock().unwrap().push((s, l.to_string())));
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
        assert_eq!(info.exit_code, Some(unix::STOPPED_AT_GATE));
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
