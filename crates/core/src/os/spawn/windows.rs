//! The Windows half of spawning. The backend starts suspended, goes into a kill-on-close job object, and
//! only runs once its PID record is written: nothing it starts can be outside the job, and nothing runs
//! without a record (docs/design.md §3, §19, §25). It leads a console
//! process group of its own, the target of the polite stop (CTRL_BREAK_EVENT).

use super::output::{self, Pipe, Stream};
use super::{
  build_command, exit_wait, lock, no_thread, path_of, spawn_error, spawner, spawner_ended,
  watch_exit, Child, ExitInfo, LineSink, Reaping, SpawnSpec,
};
use crate::error::Result;
use crate::os::win::console;
pub(crate) use crate::os::win::job::Job;
use crate::os::win::job::{resume_threads, FORCED_EXIT_CODE};
use std::io::Write;
use std::os::windows::io::{AsHandle, AsRawHandle, OwnedHandle};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// Nothing more is needed to let a suspended child go than its pid.
pub struct Held;

/// A started (suspended) backend, in its job.
struct Started {
  process: std::process::Child,
  job: Option<Job>,
  warnings: Vec<String>,
  killed: Arc<AtomicBool>,
}

/// Starts the backend suspended, in its job, on the spawner thread: it has a pid (for its record) but runs
/// nothing until `Child::run_program` resumes it. Dropping it unreleased ends it.
pub async fn spawn_held(spec: SpawnSpec, sink: LineSink) -> Result<Arc<Child>> {
  let (program, cwd, path_env) = (spec.program.clone(), spec.cwd.clone(), path_of(&spec));
  let (tx, rx) = oneshot::channel::<std::io::Result<Started>>();
  spawner::run(move || {
    if let Err(Ok(mut orphan)) = tx.send(start(&spec)) {
      // Nobody will ever stop it (or let it run): don't leave it there.
      let _ = orphan.process.kill();
      let _ = orphan.process.wait();
    }
  })
  .map_err(|e| no_thread(&program, e))?;
  let Started {
    mut process,
    job,
    warnings,
    killed,
  } = match rx.await {
    Ok(Ok(started)) => started,
    Ok(Err(e)) => return Err(spawn_error(&program, &cwd, path_env.as_deref(), e)),
    Err(_) => return Err(spawner_ended(&program)),
  };
  let pid = process.id();
  let pipes: Vec<(Stream, Pipe)> = [
    process
      .stdout
      .take()
      .map(|s| (Stream::Stdout, Box::new(s) as Pipe)),
    process
      .stderr
      .take()
      .map(|s| (Stream::Stderr, Box::new(s) as Pipe)),
  ]
  .into_iter()
  .flatten()
  .collect();
  let stdin = process
    .stdin
    .take()
    .map(|s| Box::new(s) as Box<dyn Write + Send>);
  let handle = process.as_handle().try_clone_to_owned();
  let (exit_tx, exit_rx) = watch::channel(None);
  let reaping = Arc::new(Mutex::new(Reaping {
    process: Some(process),
    ..Reaping::default()
  }));
  tokio::spawn(watch_exit(
    reaping.clone(),
    exit_tx,
    wait_exit(handle, reaping.clone(), killed.clone()),
  ));
  Ok(Arc::new(Child {
    pid,
    output: output::start_readers(pid, pipes, sink),
    exit: exit_rx,
    reaping,
    stdin: Mutex::new(stdin),
    warnings,
    held: Mutex::new(Some(super::Held {
      os: Held,
      program,
      cwd,
      path_env,
    })),
    never_ran: AtomicBool::new(false),
    forced: AtomicBool::new(false),
    job,
    killed,
  }))
}

/// Creates the suspended process and puts it in its job (on the spawner thread).
fn start(spec: &SpawnSpec) -> std::io::Result<Started> {
  let mut command = build_command(spec);
  let console = console::lock();
  configure(&mut command, spec);
  let spawned = command.spawn();
  drop(console);
  let mut process = spawned?;
  let killed = Arc::new(AtomicBool::new(false));
  match contain(&process, &killed) {
    Ok((job, warnings)) => Ok(Started {
      process,
      job,
      warnings,
      killed,
    }),
    Err(e) => {
      // It never ran a single instruction.
      let _ = process.kill();
      let _ = process.wait();
      Err(e)
    }
  }
}

/// How often a process whose wait could not be registered is looked at.
const EXIT_POLL: Duration = Duration::from_millis(50);

/// Resolves with the exit of the process (a handle of its own keeps it open meanwhile).
async fn wait_exit(
  handle: std::io::Result<OwnedHandle>,
  reaping: Arc<Mutex<Reaping>>,
  killed: Arc<AtomicBool>,
) -> ExitInfo {
  let registered = match &handle {
    Ok(handle) => exit_wait::exited(handle).await.is_ok(),
    Err(_) => false,
  };
  loop {
    let polled = lock(&reaping).process.as_mut().map(|p| p.try_wait());
    match polled {
      Some(Ok(Some(status))) => return exit_of(status, &killed),
      Some(Ok(None)) if !registered => tokio::time::sleep(EXIT_POLL).await,
      // Signalled with no status yet cannot happen; nor can a reap before the exit was seen.
      _ => return ExitInfo::default(),
    }
  }
}

/// Lets the suspended backend run. It never ran if that fails (then it is ended).
pub async fn let_go(child: &Child, held: super::Held) -> Result<()> {
  let super::Held {
    os: Held,
    program,
    cwd,
    path_env,
  } = held;
  resume(child.pid).map_err(|e| {
    child.kill_tree();
    spawn_error(&program, &cwd, path_env.as_deref(), e)
  })
}

/// It never ran a single instruction.
pub fn stop_held(child: &Child, _held: super::Held) {
  child.kill_tree();
}

/// The force stop of the whole tree: its job.
pub fn force_tree(child: &Child) {
  child.kill_tree();
}

/// Windows has no death guard.
pub fn forget_group(_pid: u32) {}

/// Closes the (exited) process's handle; the pid is free then, and its job is no longer found by pid.
pub fn reap(mut process: std::process::Child) {
  let pid = process.id();
  let _ = process.wait();
  drop(process);
  Job::forget(pid);
}

pub fn command(spec: &SpawnSpec) -> Command {
  debug_assert!(
    spec.listen_socket.is_none(),
    "listen: 'fd' is refused on Windows"
  );
  let mut cmd = Command::new(&spec.program);
  cmd.args(&spec.args);
  cmd
}

/// Windows compares variable names without case.
pub fn is_path_variable(name: &str) -> bool {
  name.eq_ignore_ascii_case("PATH")
}

impl Child {
  /// Ends the backend's whole tree at once (the force stop): the job on Windows. False when nothing
  /// could be signalled.
  pub fn kill_tree(&self) -> bool {
    self.killed.store(true, Ordering::SeqCst);
    match &self.job {
      Some(job) => job.terminate(),
      None => crate::os::signal::signal_pid(self.pid, crate::os::signal::Stop::Force),
    }
  }
}

/// Sets the creation flags. A command line in a terminal has a console: the backend shares it, and its
/// break is sent there. An app without one (Electron) gives the backend a hidden console of its own
/// (CREATE_NO_WINDOW), reached by attaching to it (os/win/console.rs).
pub fn configure(cmd: &mut Command, spec: &SpawnSpec) {
  use std::os::windows::process::CommandExt;
  use windows_sys::Win32::System::Threading::{
    ABOVE_NORMAL_PRIORITY_CLASS, BELOW_NORMAL_PRIORITY_CLASS, CREATE_NEW_PROCESS_GROUP,
    CREATE_NO_WINDOW, CREATE_SUSPENDED, HIGH_PRIORITY_CLASS, IDLE_PRIORITY_CLASS,
    NORMAL_PRIORITY_CLASS,
  };
  // The priority classes that match the nice values of `Priority`.
  let class = match spec.nice {
    n if n >= 10 => IDLE_PRIORITY_CLASS,
    n if n > 0 => BELOW_NORMAL_PRIORITY_CLASS,
    0 => NORMAL_PRIORITY_CLASS,
    n if n > -10 => ABOVE_NORMAL_PRIORITY_CLASS,
    _ => HIGH_PRIORITY_CLASS,
  };
  // Resource limits are Unix-only; the manager warns when they are set on Windows.
  let _ = (spec.open_files, spec.core_dumps);
  // Never DETACHED_PROCESS: a backend without a console cannot receive the break at all.
  let window = if console::has_console() {
    0
  } else {
    CREATE_NO_WINDOW
  };
  cmd.creation_flags(CREATE_SUSPENDED | CREATE_NEW_PROCESS_GROUP | window | class);
}

/// Puts the just-spawned (suspended) backend in a new job; `resume` lets it run. A job that cannot be made
/// or joined is a warning (the backend then runs without one: its tree does not end with the app).
pub fn contain(
  process: &std::process::Child,
  terminated: &Arc<AtomicBool>,
) -> std::io::Result<(Option<Job>, Vec<String>)> {
  let pid = process.id();
  let joined = Job::kill_on_close(terminated.clone()).and_then(|job| {
    job.assign(process.as_raw_handle(), pid)?;
    Ok(job)
  });
  let mut warnings = Vec::new();
  let job = match joined {
    Ok(job) => Some(job),
    Err(e) => {
      warnings.push(format!(
        "backend pid {pid} could not be put in a job object ({e}): processes it starts may outlive a stop or the app"
      ));
      None
    }
  };
  Ok((job, warnings))
}

/// Lets the suspended backend run. An error means it never ran (the caller ends it).
pub fn resume(pid: u32) -> std::io::Result<()> {
  resume_threads(pid).map(|_| ())
}

/// An exit with the job's termination code after we terminated it is reported as the force kill it was.
fn exit_of(status: std::process::ExitStatus, terminated: &AtomicBool) -> ExitInfo {
  if terminated.load(Ordering::SeqCst) && status.code() == Some(FORCED_EXIT_CODE as i32) {
    return ExitInfo {
      exit_code: None,
      signal: Some("SIGKILL".into()),
    };
  }
  ExitInfo {
    exit_code: status.code(),
    signal: None,
  }
}
