//! The one rule for blocking work: anything that can wait — a file write with fsync, a file lock, a scan of
//! every process, a wait for another process — runs on a short-lived thread of its own through `run`,
//! never on an async worker (where it would stall every other backend's events), and not on the runtime's
//! blocking pool either (its idle threads can keep Node from exiting, napi-rs#2884). Reads of single
//! `/proc/PID` files take microseconds and never wait on a device; they may run anywhere.

use crate::error::{PmError, Result};

/// Our threads only wait, fork or copy lines: a small stack keeps the memory of many backends (and of the C
/// library's cache of exited threads' stacks) small.
pub const THREAD_STACK: usize = 256 * 1024;

pub async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
  let (tx, rx) = tokio::sync::oneshot::channel();
  std::thread::Builder::new()
    .name("bpm-blocking".into())
    .stack_size(THREAD_STACK)
    .spawn(move || {
      let _ = tx.send(work());
    })
    .map_err(|e| PmError::Internal(format!("no thread for blocking work: {e}")))?;
  rx.await
    .map_err(|_| PmError::Internal("blocking work panicked".into()))
}
