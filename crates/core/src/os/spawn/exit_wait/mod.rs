//! Awaiting a backend's exit without a thread per backend (docs/design.md §1, §23). Each system has its own
//! way, chosen here as tokio's `process` chooses its `imp`:
//! - Linux: a pidfd, polled by the runtime (`AsyncFd`); a kernel without pidfds (before 5.3) gets a thread
//!   per child, as before;
//! - macOS: one kqueue (`EVFILT_PROC`/`NOTE_EXIT`) for every child, read by one thread;
//! - other Unix: a thread per child;
//! - Windows: the system's wait pool (`RegisterWaitForSingleObject`), no thread of ours.
//!
//! None of them uses SIGCHLD (libuv owns it inside Node) and none reaps: on Unix the exit is read with
//! `WNOWAIT`, so the pid and the group id stay ours until the owner released the child.

#[cfg(unix)]
mod status;
#[cfg(unix)]
mod thread;

#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod imp;
#[cfg(target_os = "macos")]
#[path = "macos.rs"]
mod imp;
#[cfg(all(unix, not(any(target_os = "linux", target_os = "macos"))))]
use thread as imp;
#[cfg(windows)]
#[path = "windows.rs"]
mod imp;

pub use imp::exited;
