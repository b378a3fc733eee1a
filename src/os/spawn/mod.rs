//! Starting a backend and watching it. Each backend gets one dedicated, long-lived thread that starts it,
//! then blocks waiting for that one process (docs/design.md §1-3):
//! - inside Node, libuv owns SIGCHLD and resets it, so a SIGCHLD-based reaper (tokio's) can hang forever;
//!   a blocking wait on our own pid needs no signal at all and never touches Node's children;
//! - Linux's parent-death signal fires when the *thread* that forked exits, so the forking thread must live
//!   as long as the child: then the signal means "the app died";
//! - the child leads its own process group, and stays unreaped until the group has been dealt with, so its
//!   pid (= the group id) cannot be reused while we still signal the group.

mod output;
#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

pub use output::{LineSink, Output, Stream};
#[cfg(windows)]
pub use windows::Job;

use crate::error::{PmError, Result};
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::{oneshot, watch};

/// Our threads only wait and copy lines: a small stack keeps the memory of many backends (and of the C
/// library's cache of exited threads' stacks) small.
pub const THREAD_STACK: usize = 256 * 1024;

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
  stdin: Mutex<Option<std::process::ChildStdin>>,
  /// What went wrong short of failing the spawn, for the caller to log.
  warnings: Vec<String>,
  /// The job that holds the backend's tree (`None` when it could not be made: see `warnings`).
  #[cfg(windows)]
  pub job: Option<Job>,
  /// Set before the force stop, so that its exit is reported as forced.
  #[cfg(windows)]
  killed: Arc<std::sync::atomic::AtomicBool>,
}

impl Child {
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
    self.killed.store(true, std::sync::atomic::Ordering::SeqCst);
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
    };
    (Arc::new(child), tx)
  }
}

impl Drop for Child {
  fn drop(&mut self) {
    self.release();
  }
}

/// Starts the backend on its own waiter thread and returns once it runs (or failed to start).
pub async fn spawn(spec: SpawnSpec, sink: LineSink) -> Result<Arc<Child>> {
  let (started_tx, started_rx) = oneshot::channel::<Result<Arc<Child>>>();
  let command = spec.program.clone();
  let thread_name = format!(
    "bpm-waiter-{}",
    spec.program.rsplit(['/', '\\']).next().unwrap_or("")
  );
  let spawned = std::thread::Builder::new()
    .name(thread_name)
    .stack_size(THREAD_STACK)
    .spawn(move || waiter_thread(spec, sink, started_tx));
  let failed = |reason: String, source| PmError::SpawnFailed {
    command: command.clone(),
    reason,
    source,
  };
  if let Err(e) = spawned {
    return Err(failed("no thread to watch it".into(), Some(Arc::new(e))));
  }
  started_rx
    .await
    .unwrap_or_else(|_| Err(failed("its waiter thread ended early".into(), None)))
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

fn spawn_error(spec: &SpawnSpec, e: std::io::Error) -> PmError {
  let reason = match e.kind() {
    std::io::ErrorKind::NotFound => format!(
      "{e} (is `{}` installed and on the PATH, and does {} exist?)",
      spec.program,
      spec.cwd.display()
    ),
    std::io::ErrorKind::PermissionDenied => format!("{e} (is it executable?)"),
    _ => e.to_string(),
  };
  PmError::SpawnFailed {
    command: spec.program.clone(),
    reason,
    source: Some(std::sync::Arc::new(e)),
  }
}

fn waiter_thread(spec: SpawnSpec, sink: LineSink, started: oneshot::Sender<Result<Arc<Child>>>) {
  let mut command = build_command(&spec);
  #[cfg(windows)]
  let console = crate::os::win::console::lock();
  #[cfg(windows)]
  windows::configure(&mut command, &spec);
  let spawned = command.spawn();
  #[cfg(windows)]
  drop(console);
  let mut process = match spawned {
    Ok(p) => p,
    Err(e) => {
      let _ = started.send(Err(spawn_error(&spec, e)));
      return;
    }
  };
  // The command and the spec hold the socket handed to the backend (`listen: 'fd'`): the backend has its
  // own copy now, and the manager's must close with the manager's run, not live as long as this thread.
  drop(command);
  let pid = process.id();
  #[cfg(windows)]
  let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
  #[cfg(windows)]
  let (job, warnings) = match windows::contain(&process, &killed) {
    Ok(contained) => contained,
    Err(e) => {
      // It never ran a single instruction.
      let _ = process.kill();
      let _ = process.wait();
      let _ = started.send(Err(spawn_error(&spec, e)));
      return;
    }
  };
  #[cfg(not(windows))]
  let warnings = Vec::new();
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
    stdin: Mutex::new(process.stdin.take()),
    warnings,
    #[cfg(windows)]
    job,
    #[cfg(windows)]
    killed: killed.clone(),
  });
  if started.send(Ok(child)).is_err() {
    // Nobody will ever stop it: don't leave it running.
    #[cfg(unix)]
    crate::os::signal::signal_group(pid, crate::os::signal::Stop::Force);
    #[cfg(not(unix))]
    let _ = process.kill();
  }

  #[cfg(unix)]
  let info = unix::wait_exit_keep_pid(&mut process);
  #[cfg(windows)]
  let info = windows::wait_exit(&mut process, &killed);
  let _ = exit_tx.send(Some(info));
  // Hold the zombie (and with it the pid and group id) until the owner has dealt with the group.
  let _ = reap_rx.recv();
  let _ = process.wait();
  // The pid is free once the handle closes: its job is no longer found by pid.
  #[cfg(windows)]
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
