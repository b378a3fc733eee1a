//! Signals to process groups and single processes, by name, behind one small per-OS surface.

/// The polite and the forceful stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
  Polite,
  Force,
}

#[cfg(unix)]
mod imp {
  use super::Stop;

  fn raw(sig: Stop) -> libc::c_int {
    match sig {
      Stop::Polite => libc::SIGTERM,
      Stop::Force => libc::SIGKILL,
    }
  }

  /// Signals every process of group `pgid`. Returns false when the group no longer exists.
  pub fn signal_group(pgid: u32, sig: Stop) -> bool {
    if pgid <= 1 {
      return false;
    }
    // SAFETY: killpg has no memory-safety preconditions; pgid > 1 never targets init or "every process".
    unsafe { libc::killpg(pgid as libc::pid_t, raw(sig)) == 0 }
  }

  /// Signals one process by pid. Only for pids whose identity was just checked (see `PinnedProcess`).
  pub fn signal_pid(pid: u32, sig: Stop) -> bool {
    if pid <= 1 {
      return false;
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid as libc::pid_t, raw(sig)) == 0 }
  }

  pub fn name(signo: i32) -> String {
    let known = [
      (libc::SIGHUP, "SIGHUP"),
      (libc::SIGINT, "SIGINT"),
      (libc::SIGQUIT, "SIGQUIT"),
      (libc::SIGILL, "SIGILL"),
      (libc::SIGTRAP, "SIGTRAP"),
      (libc::SIGABRT, "SIGABRT"),
      (libc::SIGBUS, "SIGBUS"),
      (libc::SIGFPE, "SIGFPE"),
      (libc::SIGKILL, "SIGKILL"),
      (libc::SIGUSR1, "SIGUSR1"),
      (libc::SIGSEGV, "SIGSEGV"),
      (libc::SIGUSR2, "SIGUSR2"),
      (libc::SIGPIPE, "SIGPIPE"),
      (libc::SIGALRM, "SIGALRM"),
      (libc::SIGTERM, "SIGTERM"),
    ];
    known
      .iter()
      .find(|(n, _)| *n == signo)
      .map(|(_, s)| (*s).to_string())
      .unwrap_or_else(|| format!("SIG{signo}"))
  }
}

#[cfg(windows)]
mod imp {
  use super::Stop;
  /// Windows has no process groups to signal; the backend's job object is terminated instead (spawn.rs).
  pub fn signal_group(_pgid: u32, _sig: Stop) -> bool {
    false
  }
  pub fn signal_pid(pid: u32, _sig: Stop) -> bool {
    use windows_sys::Win32::Foundation::CloseHandle;
    use windows_sys::Win32::System::Threading::{OpenProcess, TerminateProcess, PROCESS_TERMINATE};
    // SAFETY: plain Win32 calls on a handle we own and close.
    unsafe {
      let handle = OpenProcess(PROCESS_TERMINATE, 0, pid);
      if handle.is_null() {
        return false;
      }
      let ok = TerminateProcess(handle, 1) != 0;
      CloseHandle(handle);
      ok
    }
  }
  pub fn name(signo: i32) -> String {
    format!("SIG{signo}")
  }
}

pub use imp::{name, signal_group, signal_pid};

/// A process found through a record, pinned so that the identity check and the signal reach the same
/// process: on Linux a pidfd (a reused pid makes the signal fail with ESRCH instead of hitting a stranger).
pub struct PinnedProcess {
  pub pid: u32,
  #[cfg(target_os = "linux")]
  pidfd: Option<std::os::fd::OwnedFd>,
}

impl PinnedProcess {
  pub fn pin(pid: u32) -> Option<Self> {
    if pid <= 1 {
      return None;
    }
    #[cfg(target_os = "linux")]
    {
      use std::os::fd::FromRawFd;
      // SAFETY: pidfd_open returns a new file descriptor we take ownership of, or -1.
      let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
      let pidfd = if fd >= 0 {
        Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
      } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return None;
      } else {
        None // kernel before 5.3: fall back to plain pid signals right after the identity check
      };
      Some(PinnedProcess { pid, pidfd })
    }
    #[cfg(not(target_os = "linux"))]
    {
      Some(PinnedProcess { pid })
    }
  }

  pub fn signal(&self, sig: Stop) -> bool {
    #[cfg(target_os = "linux")]
    if self.pidfd.is_some() {
      return self.pidfd_signal(sig, 0) == Some(true);
    }
    signal_pid(self.pid, sig)
  }

  /// Signals the process group this (verified) process leads, each process once. Linux 6.9+ does it through
  /// the pidfd (`PIDFD_SIGNAL_PROCESS_GROUP`), so it cannot reach a group whose leader was replaced; before
  /// that, `killpg` right after the identity check.
  pub fn signal_group(&self, sig: Stop) -> bool {
    #[cfg(target_os = "linux")]
    {
      const PIDFD_SIGNAL_PROCESS_GROUP: libc::c_uint = 1 << 2;
      if let Some(sent) = self.pidfd_signal(sig, PIDFD_SIGNAL_PROCESS_GROUP) {
        return sent;
      }
    }
    signal_group(self.pid, sig)
  }

  /// `Some(sent)`, or `None` when the kernel does not know the flags (or there is no pidfd).
  #[cfg(target_os = "linux")]
  fn pidfd_signal(&self, sig: Stop, flags: libc::c_uint) -> Option<bool> {
    use std::os::fd::AsRawFd;
    let fd = self.pidfd.as_ref()?;
    let signo = match sig {
      Stop::Polite => libc::SIGTERM,
      Stop::Force => libc::SIGKILL,
    };
    // SAFETY: the fd is a valid pidfd we own; a null siginfo is allowed.
    let rc = unsafe {
      libc::syscall(
        libc::SYS_pidfd_send_signal,
        fd.as_raw_fd(),
        signo,
        std::ptr::null::<libc::siginfo_t>(),
        flags,
      )
    };
    if rc == 0 {
      Some(true)
    } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
      None
    } else {
      Some(false)
    }
  }

  /// Waits up to `timeout` for the process to exit; true when it has.
  pub fn wait_exit(&self, timeout: std::time::Duration) -> bool {
    #[cfg(target_os = "linux")]
    if let Some(fd) = &self.pidfd {
      use std::os::fd::AsRawFd;
      let deadline = std::time::Instant::now() + timeout;
      loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut pfd = libc::pollfd {
          fd: fd.as_raw_fd(),
          events: libc::POLLIN,
          revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n > 0 {
          return true;
        }
        if n == 0 || left.is_zero() {
          return !crate::identity::is_alive(self.pid);
        }
        // EINTR: poll again
      }
    }
    let deadline = std::time::Instant::now() + timeout;
    while crate::identity::is_alive(self.pid) {
      if std::time::Instant::now() >= deadline {
        return false;
      }
      std::thread::sleep(std::time::Duration::from_millis(5));
    }
    true
  }
}
