//! The Unix half of spawning: a process group of its own, the parent-death signal, the gate that holds the
//! child before `exec` until its PID record is written; the fork on the spawner thread, the exit awaited
//! on the runtime.

use super::output::{self, Pipe, Stream};
use super::{
  build_command, exit_wait, lock, no_thread, path_of, spawn_error, spawner, spawner_ended,
  watch_exit, Child, ExitInfo, LineSink, Reaping, SpawnSpec,
};
use crate::error::Result;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, watch};

/// What a held child needs to be let go: its gate, and the spawn's outcome, which comes once the program
/// runs (or could not be started).
pub struct Held {
  gate: Gate,
  started: oneshot::Receiver<std::io::Result<u32>>,
}

/// Starts the backend on the spawner thread, held at its gate; returns once it reported its pid.
pub async fn spawn_held(spec: SpawnSpec, sink: LineSink) -> Result<Arc<Child>> {
  let (program, cwd, path_env) = (spec.program.clone(), spec.cwd.clone(), path_of(&spec));
  let failed = |e: std::io::Error| spawn_error(&program, &cwd, path_env.as_deref(), e);
  // A look at the file (and the PATH search of a bare name): off the async worker.
  let look = (program.clone(), cwd.clone(), path_env.clone());
  crate::blocking::run(move || super::refuse_format(&look.0, &look.1, look.2.as_deref())).await??;
  let mut command = build_command(&spec);
  configure(&mut command, &spec);
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
  let (mut gate, child_ends) = Gate::install(&mut command).map_err(failed)?;
  // The spec holds the socket handed to the backend (`listen: 'fd'`); the command's copy goes with the spawn.
  drop(spec);
  let (spawned_tx, spawned_rx) = oneshot::channel::<std::io::Result<std::process::Child>>();
  spawner::run(move || {
    let spawned = command.spawn();
    // Our copies of the child's descriptors (its output pipes, its socket): they must close with the
    // backend, not wait for the next start.
    drop(command);
    drop(child_ends);
    if let Err(Ok(mut orphan)) = spawned_tx.send(spawned) {
      // Nobody watches it any more (its runtime is gone): end it rather than leave it unwatched.
      crate::os::signal::signal_group(orphan.id(), crate::os::signal::Stop::Force);
      let _ = orphan.wait();
    }
  })
  .map_err(|e| no_thread(&program, e))?;
  let (started_tx, mut started_rx) = oneshot::channel::<std::io::Result<u32>>();
  let (exit_tx, exit_rx) = watch::channel(None);
  let reaping = Arc::new(Mutex::new(Reaping::default()));
  tokio::spawn(watch_spawned(
    spawned_rx,
    started_tx,
    reaping.clone(),
    exit_tx,
  ));
  // Until a `Child` owns it: a start that fails below leaves the process to be reaped once it exited.
  let unowned = Unowned(Some(reaping.clone()));
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
    Err(_) => return Err(spawner_ended(&program)),
  };
  if outcome_known {
    // Ended without being held (killed from outside): the outcome is known, and there is nothing to open.
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(Ok(pid));
    started_rx = rx;
  }
  let pipes: Vec<(Stream, Pipe)> = vec![(Stream::Stdout, out_read), (Stream::Stderr, err_read)];
  unowned.disarm();
  Ok(Arc::new(Child {
    pid,
    output: output::start_readers(pid, pipes, sink),
    exit: exit_rx,
    reaping,
    stdin: Mutex::new(stdin),
    warnings: Vec::new(),
    held: Mutex::new(Some(super::Held {
      os: Held {
        gate,
        started: started_rx,
      },
      program,
      cwd,
      path_env,
    })),
    never_ran: AtomicBool::new(false),
    forced: AtomicBool::new(false),
  }))
}

/// A started process no `Child` owns yet: dropped armed, it is released (reaped once it exited).
struct Unowned(Option<Arc<Mutex<Reaping>>>);

impl Unowned {
  fn disarm(mut self) {
    self.0 = None;
  }
}

impl Drop for Unowned {
  fn drop(&mut self) {
    if let Some(reaping) = self.0.take() {
      let mut reaping = lock(&reaping);
      reaping.released = true;
      reaping.reap_if_done();
    }
  }
}

/// Takes the spawn's outcome from the spawner thread, then reports the exit (the pid stays ours until the
/// child is released and reaped).
async fn watch_spawned(
  spawned: oneshot::Receiver<std::io::Result<std::process::Child>>,
  started: oneshot::Sender<std::io::Result<u32>>,
  reaping: Arc<Mutex<Reaping>>,
  exit: watch::Sender<Option<ExitInfo>>,
) {
  let process = match spawned.await {
    Ok(Ok(process)) => process,
    Ok(Err(e)) => {
      let _ = exit.send(Some(ExitInfo::default()));
      let _ = started.send(Err(e));
      return;
    }
    Err(_) => {
      let _ = exit.send(Some(ExitInfo::default()));
      return;
    }
  };
  let pid = process.id();
  lock(&reaping).process = Some(process);
  let _ = started.send(Ok(pid));
  watch_exit(reaping, exit, exit_wait::exited(pid)).await;
}

/// Opens the gate, and waits until the program runs (or could not be started).
pub async fn let_go(child: &Child, held: super::Held) -> Result<()> {
  let super::Held {
    os: Held { gate, started },
    program,
    cwd,
    path_env,
  } = held;
  gate.open();
  match started.await {
    Ok(Ok(_)) => Ok(()),
    Ok(Err(e)) => {
      child.never_ran.store(true, Ordering::SeqCst);
      Err(spawn_error(&program, &cwd, path_env.as_deref(), e))
    }
    Err(_) => Err(spawner_ended(&program)),
  }
}

/// A gate dropped unopened tells the child to stop.
pub fn stop_held(_child: &Child, held: super::Held) {
  drop(held);
}

/// The force stop of the whole group.
pub fn force_tree(child: &Child) {
  crate::os::signal::signal_group(child.pid, crate::os::signal::Stop::Force);
}

/// Before the reap frees the group id for reuse, the death guard forgets it.
pub fn forget_group(pid: u32) {
  if let Some(guard) = crate::os::guard::started() {
    guard.forget(pid);
  }
}

/// Reaps an exited child (does not block).
pub fn reap(mut process: std::process::Child) {
  let _ = process.wait();
}

/// The command as given, or wrapped to learn its pid for a listening socket.
pub fn command(spec: &SpawnSpec) -> Command {
  match &spec.listen_socket {
    Some(_) => with_listen_pid(spec),
    None => {
      let mut cmd = Command::new(&spec.program);
      cmd.args(&spec.args);
      cmd
    }
  }
}

pub fn is_path_variable(name: &str) -> bool {
  name == "PATH"
}

/// The command for a backend that gets a listening socket: `LISTEN_PID` must be its own pid, which is
/// known only after the fork, so a shell sets it and `exec`s the program, which keeps that pid.
pub fn with_listen_pid(spec: &SpawnSpec) -> Command {
  let mut cmd = Command::new("/bin/sh");
  cmd
    .args(["-c", "LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\""])
    .arg(&spec.program)
    .args(&spec.args);
  cmd
}

pub fn configure(cmd: &mut Command, spec: &SpawnSpec) {
  use std::os::unix::process::CommandExt;
  cmd.process_group(0);
  if let Some(socket) = &spec.listen_socket {
    let socket = socket.clone();
    // SAFETY: the closure runs between fork and exec; dup2 and fcntl are plain system calls, and nothing
    // here allocates. Descriptor 3 is the child's own copy: the parent's table is not touched.
    unsafe {
      cmd.pre_exec(move || {
        use rustix::io::{fcntl_setfd, FdFlags};
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        if socket.as_raw_fd() == 3 {
          // Already descriptor 3: it only has to survive the exec.
          fcntl_setfd(&*socket, FdFlags::empty())?;
        } else {
          let mut three = std::mem::ManuallyDrop::new(OwnedFd::from_raw_fd(3));
          rustix::io::dup2(&*socket, &mut three)?;
        }
        Ok(())
      });
    }
  }
  let (nice, open_files, core_dumps) = (spec.nice, spec.open_files, spec.core_dumps);
  if nice != 0 || open_files.is_some() || core_dumps == Some(false) {
    // SAFETY: the closure runs between fork and exec; setpriority and setrlimit are plain system calls
    // and nothing here allocates. A limit or priority the user may not set is left as it was: the parent
    // checks what took effect and warns.
    unsafe {
      cmd.pre_exec(move || {
        use rustix::process::{setpriority_process, setrlimit, Resource, Rlimit};
        if nice != 0 {
          let _ = setpriority_process(None, nice);
        }
        if let Some(n) = open_files {
          let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
              current: Some(n),
              maximum: Some(n),
            },
          );
        }
        if core_dumps == Some(false) {
          let _ = setrlimit(
            Resource::Core,
            Rlimit {
              current: Some(0),
              maximum: Some(0),
            },
          );
        }
        Ok(())
      });
    }
  }
  #[cfg(target_os = "linux")]
  if !spec.no_parent_death_signal {
    let app = rustix::process::getpid();
    // SAFETY: the closure runs between fork and exec, where only async-signal-safe calls are allowed:
    // prctl and getppid are plain system calls, and nothing here allocates (an io::Error from a raw OS
    // error code does not).
    unsafe {
      cmd.pre_exec(move || {
        // SIGTERM, not SIGKILL: the backend may save its data (docs/design.md §2).
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
        // The app may have died between fork and prctl; then no signal will ever come.
        if rustix::process::getppid() != Some(app) {
          return Err(std::io::Error::from_raw_os_error(
            rustix::io::Errno::SRCH.raw_os_error(),
          ));
        }
        Ok(())
      });
    }
  }
}

/// The byte that lets the held child run the program; anything else (or the end of the pipe) ends it.
const GO: u8 = b'g';
const STOP: u8 = b's';
/// The exit code of a child that was stopped at the gate, before it ran anything.
pub const STOPPED_AT_GATE: i32 = 125;
/// While it waits, the held child looks this often whether the app is still its parent. The end of the gate
/// pipe says so at once, except while another child the app forked meanwhile still holds a copy of its
/// write end (every fork copies every descriptor; close-on-exec only takes them away at that child's exec).
const APP_CHECK_EVERY: rustix::event::Timespec = rustix::event::Timespec {
  tv_sec: 0,
  tv_nsec: 100_000_000,
};

/// The lowest descriptor number of the gate's ends in the child.
const FIRST_GATE_FD: i32 = 10;

/// The manager's side of the spawn gate (docs/design.md §25): the child reports its pid, then blocks before
/// `exec` until the manager writes `GO` (after the PID record is on disk). If the app dies first, the child
/// sees the pipe's end (or a new parent) and exits without running anything.
pub struct Gate {
  /// The child writes its pid here (4 bytes) before it waits.
  report: Option<OwnedFd>,
  /// Where `GO` or `STOP` is written. `None` once written.
  write: Option<OwnedFd>,
  /// Kept open, so that writing to it never raises SIGPIPE, even once the child is gone.
  _read: OwnedFd,
}

/// The child's ends of the gate, which the parent keeps open until the child has them (the spawn returned).
pub struct ChildEnds {
  _gate: OwnedFd,
  _report: OwnedFd,
}

impl Gate {
  /// Adds the gate to `cmd` as its last step before `exec` (after the process group, limits and the
  /// parent-death signal, so a held child is already what the program will be, minus the program).
  pub fn install(cmd: &mut Command) -> std::io::Result<(Gate, ChildEnds)> {
    use std::os::unix::process::CommandExt;
    let (gate_read, gate_write) = std::io::pipe()?;
    let (report_read, report_write) = std::io::pipe()?;
    // The child's ends sit above the descriptors the spawn sets up in the child (stdio, and the listening
    // socket moved to 3), which would otherwise replace them there.
    let high = |fd: OwnedFd| rustix::io::fcntl_dupfd_cloexec(&fd, FIRST_GATE_FD);
    let (gate_read, gate_write) = (high(gate_read.into())?, high(gate_write.into())?);
    let (report_read, report_write): (OwnedFd, OwnedFd) =
      (report_read.into(), high(report_write.into())?);
    let (read, write, report) = (
      gate_read.as_raw_fd(),
      gate_write.as_raw_fd(),
      report_write.as_raw_fd(),
    );
    let app = rustix::process::getpid();
    // SAFETY: the closure runs between fork and exec, where only async-signal-safe calls are allowed:
    // close, getpid, write, sigaction, poll, read, getppid and _exit are plain system calls, and nothing
    // here allocates. `read` and `report` belong to `ChildEnds`, open until the spawn returned, so they
    // are open in the child. `write` is the manager's end: if the gate was dropped before the fork, its
    // STOP is already in the pipe, and the number it had (maybe another descriptor by then) is only closed
    // in a child about to exit.
    unsafe {
      cmd.pre_exec(move || {
        wait_at_gate(app, read, write, report);
        Ok(())
      });
    }
    Ok((
      Gate {
        report: Some(report_read),
        write: Some(gate_write),
        _read: gate_read.try_clone()?,
      },
      ChildEnds {
        _gate: gate_read,
        _report: report_write,
      },
    ))
  }

  /// The pid the held child reports; `None` when it ended (or failed to start) before reporting.
  pub async fn reported_pid(&mut self) -> std::io::Result<Option<u32>> {
    let Some(report) = self.report.take() else {
      return Ok(None);
    };
    rustix::fs::fcntl_setfl(&report, rustix::fs::OFlags::NONBLOCK)?;
    use tokio::io::{unix::AsyncFd, Interest};
    // SAFETY: the AsyncFd owns the descriptor (an OwnedFd), which stays open and the same until it is dropped.
    let report = unsafe { AsyncFd::register_with_interest(report, Interest::READABLE) }?;
    let mut pid = [0u8; 4];
    let mut got = 0;
    while got < pid.len() {
      let mut ready = report.readable().await?;
      match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut pid[got..])?)) {
        Ok(Ok(0)) => return Ok(None),
        Ok(Ok(n)) => got += n,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
        Ok(Err(e)) => return Err(e),
        Err(_would_block) => {}
      }
    }
    Ok(Some(u32::from_ne_bytes(pid)))
  }

  /// Lets the child run the program.
  pub fn open(mut self) {
    self.send(GO);
  }

  /// Writes the verdict once. The pipe is empty and we hold its read end: the one byte always fits, and
  /// no SIGPIPE can come.
  fn send(&mut self, byte: u8) {
    if let Some(write) = self.write.take() {
      let _ = rustix::io::retry_on_intr(|| rustix::io::write(&write, &[byte]));
    }
  }
}

/// A gate never opened stops its child: nothing may run without its record.
impl Drop for Gate {
  fn drop(&mut self) {
    self.send(STOP);
  }
}

/// The child's side of the gate, between fork and exec: async-signal-safe calls only, no allocation.
/// Returns only on `GO`; everything else ends the process without running the program.
fn wait_at_gate(app: rustix::process::Pid, read: i32, write: i32, report: i32) {
  use rustix::event::{poll, PollFd, PollFlags};
  use std::os::fd::BorrowedFd;
  let stop = || -> ! {
    // SAFETY: _exit is async-signal-safe; it ends this forked process without running the parent's
    // atexit handlers or flushing its buffers (which belong to the app).
    unsafe { libc::_exit(STOPPED_AT_GATE) }
  };
  // SAFETY: `write` is this process's copy of the manager's end, open since the fork; closing it is what
  // lets the app's death show as the end of the pipe. Nothing else here uses it.
  drop(unsafe { OwnedFd::from_raw_fd(write) });
  // SAFETY: both are open in this process until exec (see `Gate::install`).
  let (read, report) = unsafe { (BorrowedFd::borrow_raw(read), BorrowedFd::borrow_raw(report)) };
  let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
  // Four bytes to a pipe are written whole (fewer than PIPE_BUF).
  if rustix::io::retry_on_intr(|| rustix::io::write(report, &pid.to_ne_bytes())) != Ok(4) {
    stop();
  }
  default_sigterm_if_handled();
  loop {
    let mut fds = [PollFd::new(&read, PollFlags::IN)];
    match poll(&mut fds, Some(&APP_CHECK_EVERY)) {
      Ok(0) | Err(rustix::io::Errno::INTR) => {
        if rustix::process::getppid() != Some(app) {
          stop();
        }
      }
      Ok(_) => {
        let mut byte = [0u8; 1];
        match rustix::io::read(read, &mut byte) {
          Ok(1) if byte[0] == GO => return,
          Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
          _ => stop(),
        }
      }
      Err(_) => stop(),
    }
  }
}

/// A SIGTERM handler inherited from the app (Node's, when the app listens for SIGTERM) would run in the held
/// child and report the signal to the *app* through the descriptors it shares with it: a stop of the held
/// child must simply end it. `exec` resets handled signals anyway; an ignored SIGTERM stays ignored, as
/// the app passes it on.
fn default_sigterm_if_handled() {
  // SAFETY: sigaction is async-signal-safe; the structs are plain data, zeroed then filled as sigaction(2)
  // requires.
  unsafe {
    let mut current: libc::sigaction = std::mem::zeroed();
    if libc::sigaction(libc::SIGTERM, std::ptr::null(), &mut current) != 0 {
      return;
    }
    if current.sa_sigaction != libc::SIG_DFL && current.sa_sigaction != libc::SIG_IGN {
      let mut default: libc::sigaction = std::mem::zeroed();
      default.sa_sigaction = libc::SIG_DFL;
      libc::sigaction(libc::SIGTERM, &default, std::ptr::null_mut());
    }
  }
}
