//! Linux: the child's pidfd becomes readable when it exits; the runtime's epoll watches it (`AsyncFd`), as
//! tokio's own pidfd reaper does. The exit is then read with `waitid(WNOWAIT)`, leaving the child unreaped.

use super::status::exit_now;
use crate::os::spawn::ExitInfo;
use rustix::process::{pidfd_open, Pid, PidfdFlags};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// How often the exit is looked for once the pidfd said "ended" but `waitid` does not see it yet (older
/// kernels wake a pidfd when the leader thread ends, before the last thread of the process has).
const SETTLING: Duration = Duration::from_millis(10);

/// Resolves with the exit of our (unreaped) child `pid`.
pub async fn exited(pid: u32) -> ExitInfo {
  let Some(target) = Pid::from_raw(pid as i32) else {
    return ExitInfo::default();
  };
  // The child is ours and unreaped, so `pid` cannot name another process meanwhile.
  let pidfd = pidfd_open(target, PidfdFlags::NONBLOCK)
    .ok()
    .and_then(|fd| {
      // SAFETY: the AsyncFd owns the pidfd (an OwnedFd), which stays open and the same until it is dropped.
      unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
    });
  let Some(pidfd) = pidfd else {
    // A kernel before 5.3, or no room in the runtime's poll set.
    return super::thread::exited(pid).await;
  };
  loop {
    let ready = pidfd.readable().await;
    if let Some(info) = exit_now(pid, false) {
      return info;
    }
    match ready {
      Ok(_) => tokio::time::sleep(SETTLING).await,
      // The runtime cannot poll it (shutting down): a thread waits instead.
      Err(_) => return super::thread::exited(pid).await,
    }
  }
}
