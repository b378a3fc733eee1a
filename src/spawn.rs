//! Starting a backend and watching it. Each backend gets one dedicated, long-lived thread that forks it,
//! then blocks in `waitid` on that one pid (DESIGN.md §1-3):
//! - inside Node, libuv owns SIGCHLD and resets it, so a SIGCHLD-based reaper (tokio's) can hang forever;
//!   a blocking wait on our own pid needs no signal at all and never touches Node's children;
//! - Linux's parent-death signal fires when the *thread* that forked exits, so the forking thread must live
//!   as long as the child: then the signal means "the app died";
//! - the child leads its own process group, and stays unreaped (`WNOWAIT`) until the group has been dealt
//!   with, so its pid (= the group id) cannot be reused while we still signal the group.

use crate::error::{PmError, Result};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::{oneshot, watch};

/// Lines of stderr kept for error reports.
pub const STDERR_TAIL_LINES: usize = 20;
/// A longer line is cut into pieces of this size, so one endless line cannot grow memory without bound.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// Our threads only wait and copy lines: a small stack keeps the memory of many backends (and of the C
/// library's cache of exited threads' stacks) small.
pub const THREAD_STACK: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct SpawnSpec {
  pub program: String,
  pub args: Vec<String>,
  pub cwd: std::path::PathBuf,
  /// The complete environment of the backend.
  pub env: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
  Stdout,
  Stderr,
}

/// How the backend ended.
#[derive(Debug, Clone, PartialEq, Eq)]
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

pub type LineSink = Arc<dyn Fn(Stream, String) + Send + Sync>;

/// What the output readers learned, shared with the manager.
#[derive(Default)]
pub struct OutputState {
  stderr_tail: Mutex<VecDeque<String>>,
  /// The backend said its port was taken (`EADDRINUSE`, "address already in use").
  pub address_in_use: AtomicBool,
  open_streams: Mutex<usize>,
  closed: tokio::sync::Notify,
}

impl OutputState {
  pub fn stderr_tail(&self) -> Vec<String> {
    self
      .stderr_tail
      .lock()
      .unwrap_or_else(|e| e.into_inner())
      .iter()
      .cloned()
      .collect()
  }

  /// Waits (at most `limit`) until both output pipes reached end of file, so that an error report holds the
  /// backend's last words. A grandchild may keep the pipes open, hence the limit.
  pub async fn wait_closed(&self, limit: std::time::Duration) {
    let closed = self.closed.notified();
    tokio::pin!(closed);
    closed.as_mut().enable();
    if *self.open_streams.lock().unwrap_or_else(|e| e.into_inner()) == 0 {
      return;
    }
    let _ = tokio::time::timeout(limit, closed).await;
  }

  fn stream_closed(&self) {
    let mut open = self.open_streams.lock().unwrap_or_else(|e| e.into_inner());
    *open = open.saturating_sub(1);
    if *open == 0 {
      self.closed.notify_waiters();
    }
  }
}

fn says_address_in_use(line: &str) -> bool {
  let lower = line.to_ascii_lowercase();
  lower.contains("eaddrinuse")
    || lower.contains("address already in use")
    || lower.contains("only one usage of each socket address")
}

/// A running (or exited, not yet released) backend process.
pub struct Child {
  pub pid: u32,
  pub output: Arc<OutputState>,
  exit: watch::Receiver<Option<ExitInfo>>,
  /// Dropping or sending on this lets the waiter thread reap the child.
  reap: Mutex<Option<mpsc::Sender<()>>>,
  #[cfg(windows)]
  pub job: Option<windows_job::Job>,
}

impl Child {
  /// The exit, once the backend has ended (it may still be unreaped).
  pub fn exit_info(&self) -> Option<ExitInfo> {
    self.exit.borrow().clone()
  }

  /// Resolves when the backend has ended.
  pub async fn exited(&self) -> ExitInfo {
    let mut rx = self.exit.clone();
    loop {
      if let Some(info) = rx.borrow_and_update().clone() {
        return info;
      }
      if rx.changed().await.is_err() {
        // The waiter thread is gone without a word; it only does that after reporting.
        return rx.borrow().clone().unwrap_or(ExitInfo {
          exit_code: None,
          signal: None,
        });
      }
    }
  }

  /// Lets the waiter thread reap the (exited) leader, which frees its pid and process-group id.
  pub fn release(&self) {
    if let Some(tx) = self.reap.lock().unwrap_or_else(|e| e.into_inner()).take() {
      let _ = tx.send(());
    }
  }
}

impl Drop for Child {
  fn drop(&mut self) {
    self.release();
  }
}

/// Starts the backend on its own waiter thread and returns once it runs (or failed to start).
pub async fn spawn(spec: SpawnSpec, on_line: LineSink) -> Result<Arc<Child>> {
  let (started_tx, started_rx) = oneshot::channel::<Result<Arc<Child>>>();
  let thread_name = format!(
    "bpm-waiter-{}",
    spec.program.rsplit(['/', '\\']).next().unwrap_or("")
  );
  let spawned = std::thread::Builder::new()
    .name(thread_name)
    .stack_size(THREAD_STACK)
    .spawn(move || waiter_thread(spec, on_line, started_tx));
  if let Err(e) = spawned {
    return Err(PmError::SpawnFailed {
      command: String::new(),
      reason: format!("no thread to watch it: {e}"),
    });
  }
  started_rx.await.unwrap_or_else(|_| {
    Err(PmError::SpawnFailed {
      command: String::new(),
      reason: "the waiter thread ended early".into(),
    })
  })
}

fn build_command(spec: &SpawnSpec) -> Command {
  let mut cmd = Command::new(&spec.program);
  cmd
    .args(&spec.args)
    .current_dir(&spec.cwd)
    .env_clear()
    .envs(spec.env.iter().map(|(k, v)| (k, v)))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
  #[cfg(unix)]
  {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
  }
  #[cfg(target_os = "linux")]
  {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid has no preconditions.
    let app_pid = unsafe { libc::getpid() };
    // SAFETY: runs between fork and exec; prctl, getppid and _exit are async-signal-safe and nothing here
    // allocates.
    unsafe {
      cmd.pre_exec(move || {
        if libc::prctl(
          libc::PR_SET_PDEATHSIG,
          libc::SIGTERM as libc::c_ulong,
          0,
          0,
          0,
        ) != 0
        {
          return Err(std::io::Error::last_os_error());
        }
        // The app may have died between fork and prctl; then no signal will ever come.
        if libc::getppid() != app_pid {
          libc::_exit(143);
        }
        Ok(())
      });
    }
  }
  #[cfg(windows)]
  {
    use std::os::windows::process::CommandExt;
    const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
    const CREATE_NO_WINDOW: u32 = 0x0800_0000;
    cmd.creation_flags(CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW);
  }
  cmd
}

fn waiter_thread(spec: SpawnSpec, on_line: LineSink, started: oneshot::Sender<Result<Arc<Child>>>) {
  let mut process = match build_command(&spec).spawn() {
    Ok(p) => p,
    Err(e) => {
      let reason = match e.kind() {
        std::io::ErrorKind::NotFound => {
          format!(
            "{e} (is `{}` installed and on the PATH, and does {} exist?)",
            spec.program,
            spec.cwd.display()
          )
        }
        std::io::ErrorKind::PermissionDenied => format!("{e} (is it executable?)"),
        _ => e.to_string(),
      };
      let _ = started.send(Err(PmError::SpawnFailed {
        command: spec.program.clone(),
        reason,
      }));
      return;
    }
  };
  let pid = process.id();
  let output = Arc::new(OutputState::default());
  let (exit_tx, exit_rx) = watch::channel(None);
  let (reap_tx, reap_rx) = mpsc::channel::<()>();

  let streams: Vec<(Stream, Box<dyn Read + Send>)> = [
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
  *output
    .open_streams
    .lock()
    .unwrap_or_else(|e| e.into_inner()) = streams.len();
  for (stream, pipe) in streams {
    let reader_output = output.clone();
    let on_line = on_line.clone();
    let name = format!(
      "bpm-{}-{pid}",
      if stream == Stream::Stdout {
        "out"
      } else {
        "err"
      }
    );
    let reader = std::thread::Builder::new()
      .name(name)
      .stack_size(THREAD_STACK)
      .spawn(move || read_lines(stream, pipe, &reader_output, &on_line));
    if reader.is_err() {
      // Without a reader the pipe would fill and block the backend; it gets no output events instead.
      output.stream_closed();
    }
  }

  #[cfg(windows)]
  let job = windows_job::Job::adopt(&process);

  let child = Arc::new(Child {
    pid,
    output,
    exit: exit_rx,
    reap: Mutex::new(Some(reap_tx)),
    #[cfg(windows)]
    job,
  });
  let caller_gone = started.send(Ok(child)).is_err();
  if caller_gone {
    // Nobody will ever stop it: don't leave it running.
    #[cfg(unix)]
    crate::signal::signal_group(pid, crate::signal::Stop::Force);
    #[cfg(not(unix))]
    let _ = process.kill();
  }

  let info = wait_exit_keep_pid(&mut process);
  let _ = exit_tx.send(Some(info));
  // Hold the zombie (and with it the pid and group id) until the manager has dealt with the group.
  let _ = reap_rx.recv();
  let _ = process.wait();
}

fn read_lines(
  stream: Stream,
  pipe: Box<dyn Read + Send>,
  output: &OutputState,
  on_line: &LineSink,
) {
  let mut reader = BufReader::with_capacity(16 * 1024, pipe);
  let mut buf = Vec::with_capacity(256);
  loop {
    buf.clear();
    let n = match (&mut reader)
      .take(MAX_LINE_BYTES as u64)
      .read_until(b'\n', &mut buf)
    {
      Ok(n) => n,
      Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
      Err(_) => 0,
    };
    if n == 0 {
      break;
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
      buf.pop();
    }
    let line = String::from_utf8_lossy(&buf).into_owned();
    if says_address_in_use(&line) {
      output.address_in_use.store(true, Ordering::SeqCst);
    }
    if stream == Stream::Stderr {
      let mut tail = output.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
      if tail.len() == STDERR_TAIL_LINES {
        tail.pop_front();
      }
      tail.push_back(line.clone());
    }
    on_line(stream, line);
  }
  output.stream_closed();
}

/// Blocks until the child exits, leaving it unreaped (Unix: `waitid(WNOWAIT)`).
#[cfg(unix)]
fn wait_exit_keep_pid(process: &mut std::process::Child) -> ExitInfo {
  let pid = process.id();
  loop {
    // SAFETY: siginfo_t is plain data; waitid fills it for our own child.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let rc = unsafe {
      libc::waitid(
        libc::P_PID,
        pid as libc::id_t,
        &mut info,
        libc::WEXITED | libc::WNOWAIT,
      )
    };
    if rc == 0 {
      // SAFETY: filled in by a successful waitid.
      let status = unsafe { info.si_status() };
      return match info.si_code {
        libc::CLD_EXITED => ExitInfo {
          exit_code: Some(status),
          signal: None,
        },
        _ => ExitInfo {
          exit_code: None,
          signal: Some(crate::signal::name(status)),
        },
      };
    }
    if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
      // Someone else reaped it (not possible unless the host calls waitpid(-1)); report what std sees.
      return match process.try_wait() {
        Ok(Some(status)) => exit_info_from(status),
        _ => ExitInfo {
          exit_code: None,
          signal: None,
        },
      };
    }
  }
}

#[cfg(windows)]
fn wait_exit_keep_pid(process: &mut std::process::Child) -> ExitInfo {
  // The open process handle pins the pid until `process` is dropped, so a plain wait is safe here.
  match process.wait() {
    Ok(status) => exit_info_from(status),
    Err(_) => ExitInfo {
      exit_code: None,
      signal: None,
    },
  }
}

fn exit_info_from(status: std::process::ExitStatus) -> ExitInfo {
  #[cfg(unix)]
  {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
      return ExitInfo {
        exit_code: None,
        signal: Some(crate::signal::name(sig)),
      };
    }
  }
  ExitInfo {
    exit_code: status.code(),
    signal: None,
  }
}

/// Windows: the backend's tree lives in a job object that is killed when the app's last handle to it closes
/// (the app died) or when we terminate it. The child is assigned right after it starts; a grandchild it
/// creates in that first instant escapes the job — a documented limit (no suspended start through std).
#[cfg(windows)]
pub mod windows_job {
  use std::os::windows::io::AsRawHandle;
  use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
  use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation,
    SetInformationJobObject, TerminateJobObject, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
  };

  pub struct Job(HANDLE);
  // SAFETY: a job handle may be used from any thread.
  unsafe impl Send for Job {}
  unsafe impl Sync for Job {}

  impl Job {
    pub fn adopt(process: &std::process::Child) -> Option<Job> {
      // SAFETY: Win32 calls on handles we own; the info struct is zero-initialised plain data.
      unsafe {
        let job = CreateJobObjectW(std::ptr::null(), std::ptr::null());
        if job.is_null() {
          return None;
        }
        let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = std::mem::zeroed();
        info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
        let size = std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32;
        let set = SetInformationJobObject(
          job,
          JobObjectExtendedLimitInformation,
          &info as *const _ as *const _,
          size,
        );
        if set == 0 || AssignProcessToJobObject(job, process.as_raw_handle() as HANDLE) == 0 {
          CloseHandle(job);
          return None;
        }
        Some(Job(job))
      }
    }

    pub fn terminate(&self) -> bool {
      // SAFETY: a valid job handle.
      unsafe { TerminateJobObject(self.0, 1) != 0 }
    }
  }

  impl Drop for Job {
    fn drop(&mut self) {
      // SAFETY: closing our own handle; with KILL_ON_JOB_CLOSE this ends what is left of the tree.
      unsafe {
        CloseHandle(self.0);
      }
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::time::Duration;

  fn sh(script: &str) -> SpawnSpec {
    SpawnSpec {
      program: "/bin/sh".into(),
      args: vec!["-c".into(), script.into()],
      cwd: std::env::temp_dir(),
      env: std::env::vars().collect(),
    }
  }

  type Lines = Arc<Mutex<Vec<(Stream, String)>>>;

  fn collect() -> (LineSink, Lines) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink_lines = lines.clone();
    let sink: LineSink = Arc::new(move |s, l| sink_lines.lock().unwrap().push((s, l)));
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
  async fn a_missing_program_is_a_spawn_error() {
    let (sink, _) = collect();
    let mut spec = sh("");
    spec.program = "/nonexistent/backend-binary".into();
    match spawn(spec, sink).await {
      Err(PmError::SpawnFailed { command, .. }) => {
        assert_eq!(command, "/nonexistent/backend-binary")
      }
      other => panic!("expected SpawnFailed, got {:?}", other.err()),
    }
  }

  #[tokio::test]
  async fn the_child_leads_its_own_group_and_a_kill_is_reported_as_a_signal() {
    let (sink, _) = collect();
    let child = spawn(sh("sleep 30"), sink).await.unwrap();
    assert_eq!(crate::identity::process_group(child.pid), Some(child.pid));
    assert!(crate::signal::signal_group(
      child.pid,
      crate::signal::Stop::Force
    ));
    let info = child.exited().await;
    assert_eq!(info.signal.as_deref(), Some("SIGKILL"));
    child.release();
  }

  #[test]
  fn recognises_address_in_use_messages() {
    assert!(says_address_in_use(
      "Error: listen EADDRINUSE: address already in use 127.0.0.1:8000"
    ));
    assert!(says_address_in_use(
      "OSError: [Errno 98] Address already in use"
    ));
    assert!(!says_address_in_use("listening on 8000"));
  }
}
