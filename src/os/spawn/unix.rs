//! The Unix half of spawning: a process group of its own, the parent-death signal, and a wait that leaves
//! the child unreaped.

use super::{ExitInfo, SpawnSpec};
use rustix::process::{waitid, Pid, WaitId, WaitIdOptions};
use std::process::Command;

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
  {
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

/// Blocks until the child exits, leaving it unreaped (`waitid(WNOWAIT)`), so that its pid and group id
/// stay ours. A stop or continue (Ctrl-Z, a debugger) is not an exit: some systems report those too.
pub fn wait_exit_keep_pid(process: &mut std::process::Child) -> ExitInfo {
  let Some(pid) = Pid::from_raw(process.id() as i32) else {
    return ExitInfo::default();
  };
  loop {
    match waitid(
      WaitId::Pid(pid),
      WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
    ) {
      Ok(Some(status)) if status.exited() => {
        return ExitInfo {
          exit_code: status.exit_status(),
          signal: None,
        }
      }
      Ok(Some(status)) if status.killed() || status.dumped() => {
        return ExitInfo {
          exit_code: None,
          signal: status.terminating_signal().map(crate::os::signal::name),
        }
      }
      Ok(_) | Err(rustix::io::Errno::INTR) => continue,
      // Someone else reaped it (only possible if the host calls waitpid(-1)): report what std sees.
      Err(_) => {
        return match process.try_wait() {
          Ok(Some(status)) => super::exit_info_from(status),
          _ => ExitInfo::default(),
        }
      }
    }
  }
}
