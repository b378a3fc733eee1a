//! Signals to process groups and single processes, behind one small per-OS surface, and `PinnedProcess`:
//! a process found through a record, held so that the identity check and the signal reach the same one.

/// The polite and the forceful stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
  Polite,
  Force,
}

#[cfg(unix)]
mod imp {
  use super::Stop;
  use rustix::process::{kill_process, kill_process_group, Pid, Signal};

  pub fn signal_of(sig: Stop) -> Signal {
    match sig {
      Stop::Polite => Signal::TERM,
      Stop::Force => Signal::KILL,
    }
  }

  /// `None` for 0 and 1: a signal there would mean "every process" or init.
  pub fn target(pid: u32) -> Option<Pid> {
    i32::try_from(pid)
      .ok()
      .filter(|p| *p > 1)
      .and_then(Pid::from_raw)
  }

  /// Signals every process of group `pgid`. False when the group no longer exists.
  pub fn signal_group(pgid: u32, sig: Stop) -> bool {
    target(pgid).is_some_and(|g| kill_process_group(g, signal_of(sig)).is_ok())
  }

  /// Signals one process by pid. Only for pids whose identity was just checked (see `PinnedProcess`) or
  /// our own unreaped children.
  pub fn signal_pid(pid: u32, sig: Stop) -> bool {
    target(pid).is_some_and(|p| kill_process(p, signal_of(sig)).is_ok())
  }

  pub fn name(signo: i32) -> String {
    const KNOWN: [(Signal, &str); 15] = [
      (Signal::HUP, "SIGHUP"),
      (Signal::INT, "SIGINT"),
      (Signal::QUIT, "SIGQUIT"),
      (Signal::ILL, "SIGILL"),
      (Signal::TRAP, "SIGTRAP"),
      (Signal::ABORT, "SIGABRT"),
      (Signal::BUS, "SIGBUS"),
      (Signal::FPE, "SIGFPE"),
      (Signal::KILL, "SIGKILL"),
      (Signal::USR1, "SIGUSR1"),
      (Signal::SEGV, "SIGSEGV"),
      (Signal::USR2, "SIGUSR2"),
      (Signal::PIPE, "SIGPIPE"),
      (Signal::ALARM, "SIGALRM"),
      (Signal::TERM, "SIGTERM"),
    ];
    KNOWN
      .iter()
      .find(|(s, _)| s.as_raw() == signo)
      .map_or_else(|| format!("SIG{signo}"), |(_, n)| (*n).to_string())
  }
}

#[cfg(windows)]
mod imp {
  use super::Stop;
  use crate::os::win::{console, job::Job, job::FORCED_EXIT_CODE, process::Pinned};

  /// The polite stop: CTRL_BREAK_EVENT to console process group `pgid` (a backend leads one: it is
  /// started with CREATE_NEW_PROCESS_GROUP), while its leader runs. Once the leader is gone, whether the
  /// id still names a group cannot be asked, and an id that names none may reach every process on the
  /// console, this one included: no break then. The force stop: our backend's job, or else `pgid` and
  /// its descendants.
  pub fn signal_group(pgid: u32, sig: Stop) -> bool {
    if pgid <= 4 {
      return false;
    }
    match sig {
      Stop::Polite => {
        Pinned::running(pgid, false).is_some() && console::send_break(pgid, pgid).is_ok()
      }
      Stop::Force => match Job::of(pgid) {
        Some(job) => job.terminate(),
        None => Pinned::running(pgid, true).is_some_and(|leader| terminate_tree(&leader)),
      },
    }
  }

  /// One process: the break to the console group it leads (Windows has no polite signal for a single
  /// process; our backends lead a group); `TerminateProcess` for the force stop.
  pub fn signal_pid(pid: u32, sig: Stop) -> bool {
    if pid <= 4 {
      return false;
    }
    match sig {
      Stop::Polite => signal_group(pid, Stop::Polite),
      Stop::Force => Pinned::running(pid, true).is_some_and(|p| p.terminate(FORCED_EXIT_CODE)),
    }
  }

  /// Ends a pinned process, then its descendants as listed just before (each pinned, and created no
  /// earlier than it, before it is ended: a stale parent link names an older process).
  pub fn terminate_tree(leader: &Pinned) -> bool {
    let Ok(born) = leader.times().map(|t| t.created) else {
      return false;
    };
    let descendants = crate::os::tree::with_descendants(leader.pid);
    let ended = leader.terminate(FORCED_EXIT_CODE);
    for pid in descendants.into_iter().filter(|&p| p != leader.pid) {
      if let Some(p) = Pinned::running(pid, true) {
        if p.times().is_ok_and(|t| t.created >= born) {
          p.terminate(FORCED_EXIT_CODE);
        }
      }
    }
    ended
  }
}

#[cfg(unix)]
pub use imp::name;
pub use imp::{signal_group, signal_pid};

/// A process found through a record, pinned so that the identity check and the signal reach the same
/// process: on Linux a pidfd (a reused pid makes the signal fail with ESRCH instead of hitting a stranger).
/// On Windows an open process handle: while it is open the pid cannot be given to another process.
pub struct PinnedProcess {
  pub pid: u32,
  handle: pinned::Handle,
}

impl PinnedProcess {
  /// `None` when the process is gone (or `pid` is 0 or 1).
  pub fn pin(pid: u32) -> Option<Self> {
    if pid <= 1 {
      return None;
    }
    let handle = pinned::pin(pid)?;
    Some(PinnedProcess { pid, handle })
  }

  pub fn signal(&self, sig: Stop) -> bool {
    self.handle.signal(self.pid, sig)
  }

  /// Signals the process group this (verified) process leads, each process once.
  pub fn signal_group(&self, sig: Stop) -> bool {
    self.handle.signal_group(self.pid, sig)
  }

  /// Waits up to `timeout` for the process to exit; true when it has.
  pub fn wait_exit(&self, timeout: std::time::Duration) -> bool {
    self.handle.wait_exit(self.pid, timeout)
  }
}

/// Waits for `pid` to be gone by looking every few milliseconds (where nothing can be awaited).
#[cfg(unix)]
fn poll_exit(pid: u32, timeout: std::time::Duration) -> bool {
  let deadline = std::time::Instant::now() + timeout;
  while crate::os::process::is_alive(pid) {
    if std::time::Instant::now() >= deadline {
      return false;
    }
    std::thread::sleep(std::time::Duration::from_millis(5));
  }
  true
}

/// Linux: a pidfd, when the kernel has them (5.3+); plain pid signals right after the identity check
/// before that.
#[cfg(target_os = "linux")]
mod pinned {
  use super::{imp, poll_exit, signal_group, signal_pid, Stop};
  use rustix::process::{pidfd_open, PidfdFlags};
  use std::os::fd::OwnedFd;

  pub struct Handle(Option<OwnedFd>);

  pub fn pin(pid: u32) -> Option<Handle> {
    match pidfd_open(imp::target(pid)?, PidfdFlags::empty()) {
      Ok(fd) => Some(Handle(Some(fd))),
      Err(rustix::io::Errno::SRCH) => None,
      // A kernel before 5.3.
      Err(_) => Some(Handle(None)),
    }
  }

  impl Handle {
    pub fn signal(&self, pid: u32, sig: Stop) -> bool {
      match &self.0 {
        Some(fd) => rustix::process::pidfd_send_signal(fd, imp::signal_of(sig)).is_ok(),
        None => signal_pid(pid, sig),
      }
    }

    /// Linux 6.9+ signals the group through the pidfd (`PIDFD_SIGNAL_PROCESS_GROUP`), so it cannot reach
    /// a group whose leader was replaced; before that, `killpg` right after the identity check.
    pub fn signal_group(&self, pid: u32, sig: Stop) -> bool {
      self
        .pidfd_signal_group(sig)
        .unwrap_or_else(|| signal_group(pid, sig))
    }

    /// `Some(sent)`, or `None` when the kernel does not know the flag (or there is no pidfd). rustix's
    /// `pidfd_send_signal` takes no flags, hence the raw call.
    fn pidfd_signal_group(&self, sig: Stop) -> Option<bool> {
      use std::os::fd::AsRawFd;
      const PIDFD_SIGNAL_PROCESS_GROUP: libc::c_uint = 1 << 2;
      let fd = self.0.as_ref()?;
      // SAFETY: `fd` is a pidfd we own and keep open for the call; a null siginfo is allowed by
      // pidfd_send_signal(2); the signal number is a valid one.
      let rc = unsafe {
        libc::syscall(
          libc::SYS_pidfd_send_signal,
          fd.as_raw_fd(),
          imp::signal_of(sig).as_raw(),
          std::ptr::null::<libc::siginfo_t>(),
          PIDFD_SIGNAL_PROCESS_GROUP,
        )
      };
      match rc {
        0 => Some(true),
        _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) => None,
        _ => Some(false),
      }
    }

    pub fn wait_exit(&self, pid: u32, timeout: std::time::Duration) -> bool {
      use rustix::event::{poll, PollFd, PollFlags, Timespec};
      let Some(fd) = &self.0 else {
        return poll_exit(pid, timeout);
      };
      let deadline = std::time::Instant::now() + timeout;
      loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        let wait = Timespec::try_from(left).unwrap_or(Timespec {
          tv_sec: i64::MAX,
          tv_nsec: 0,
        });
        match poll(&mut fds, Some(&wait)) {
          Ok(n) if n > 0 => return true,
          Err(rustix::io::Errno::INTR) if !left.is_zero() => continue,
          _ => return !crate::os::process::is_alive(pid),
        }
      }
    }
  }
}

/// Other Unix systems: plain pid signals, right after the identity check.
#[cfg(all(unix, not(target_os = "linux")))]
mod pinned {
  use super::{poll_exit, signal_group, signal_pid, Stop};

  pub struct Handle;

  pub fn pin(_pid: u32) -> Option<Handle> {
    Some(Handle)
  }

  impl Handle {
    pub fn signal(&self, pid: u32, sig: Stop) -> bool {
      signal_pid(pid, sig)
    }

    pub fn signal_group(&self, pid: u32, sig: Stop) -> bool {
      signal_group(pid, sig)
    }

    pub fn wait_exit(&self, pid: u32, timeout: std::time::Duration) -> bool {
      poll_exit(pid, timeout)
    }
  }
}

/// Windows: an open process handle, through which the force stop goes.
#[cfg(windows)]
mod pinned {
  use super::{imp, signal_group, signal_pid, Stop};
  use crate::os::win::{job::FORCED_EXIT_CODE, process::Pinned};

  pub struct Handle(Pinned);

  /// Only a running process of this user: never another user's (docs/design.md §4). One we may not end
  /// (elevated) is still pinned: its signals then fail and it is reported, not taken for gone.
  pub fn pin(pid: u32) -> Option<Handle> {
    let process = Pinned::running(pid, true).or_else(|| Pinned::running(pid, false))?;
    process.is_own_user().then_some(Handle(process))
  }

  impl Handle {
    pub fn signal(&self, pid: u32, sig: Stop) -> bool {
      match sig {
        Stop::Force => self.0.terminate(FORCED_EXIT_CODE),
        Stop::Polite => signal_pid(pid, sig),
      }
    }

    /// The force stop goes through the pinned handle, so the leader ended is the one verified.
    pub fn signal_group(&self, pid: u32, sig: Stop) -> bool {
      match sig {
        Stop::Force => imp::terminate_tree(&self.0),
        Stop::Polite => signal_group(pid, sig),
      }
    }

    pub fn wait_exit(&self, _pid: u32, timeout: std::time::Duration) -> bool {
      self.0.wait(timeout).unwrap_or(true)
    }
  }
}

#[cfg(all(test, unix))]
mod tests {
  use super::*;

  #[test]
  fn names_of_common_signals() {
    assert_eq!(name(9), "SIGKILL");
    assert_eq!(name(15), "SIGTERM");
    assert_eq!(name(77), "SIG77");
  }

  #[test]
  fn init_and_every_process_are_never_targets() {
    assert!(!signal_pid(0, Stop::Force));
    assert!(!signal_pid(1, Stop::Polite));
    assert!(!signal_group(1, Stop::Polite));
    assert!(PinnedProcess::pin(1).is_none());
  }

  #[test]
  fn a_pinned_process_is_signalled_and_its_exit_seen() {
    let mut child = std::process::Command::new("sleep")
      .arg("30")
      .spawn()
      .unwrap();
    let pinned = PinnedProcess::pin(child.id()).unwrap();
    assert!(!pinned.wait_exit(std::time::Duration::from_millis(20)));
    assert!(pinned.signal(Stop::Force));
    assert!(pinned.wait_exit(std::time::Duration::from_secs(5)));
    child.wait().unwrap();
    assert!(
      !pinned.signal(Stop::Force),
      "a reaped process cannot be signalled through its pidfd"
    );
  }
}
