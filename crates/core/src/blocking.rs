//! The one rule for blocking work: anything that can wait — a file write with fsync, a file lock, a scan of
//! every process, a wait for another process — runs on a short-lived thread of its own through `run`,
//! never on an async worker (where it would stall every other backend's events), and not on the runtime's
//! blocking pool either (its idle threads can keep Node from exiting, napi-rs#2884). Reads of single
//! `/proc/PID` files take microseconds and never wait on a device; they may run anywhere. The PID record's
//! writes, which a start waits on, go through `write_in_turn` instead: one thread that lives as long as the
//! addon takes them in order, since a thread made for each cost more than the write (0.3–1 ms against
//! tens of microseconds, on the path from the backend's readiness signal to `ready`).

use crate::error::{PmError, Result};
use std::sync::mpsc;
use std::sync::OnceLock;

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

/// Work for the writer thread.
pub type Job = Box<dyn FnOnce() + Send>;

/// Runs `work` (a small file write that can still wait on a slow disk) on the one thread of file writes,
/// after the writes queued before it. That thread is made at the first call; where it cannot be, the work
/// gets a thread of its own as with `run`.
pub async fn write_in_turn<T: Send + 'static>(
  work: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
  write_in_turn_then(move || (work(), None)).await
}

/// Like `write_in_turn`, for work that leaves something its caller need not wait for: `work` answers with
/// its result and that rest, which runs on the same thread after the answer and before any write queued
/// later (on a thread of its own, before the answer).
pub async fn write_in_turn_then<T: Send + 'static>(
  work: impl FnOnce() -> (T, Option<Job>) + Send + 'static,
) -> Result<T> {
  static WRITER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
  let writer = WRITER.get_or_init(|| {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
      .name("bpm-writes".into())
      .stack_size(THREAD_STACK)
      // A write that panics fails its own caller (its reply is dropped), not the writes after it.
      .spawn(move || {
        for job in rx {
          let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        }
      })
      .ok()
      .map(|_| tx)
  });
  let (tx, rx) = tokio::sync::oneshot::channel();
  let job: Job = Box::new(move || {
    let (value, rest) = work();
    let _ = tx.send(value);
    if let Some(rest) = rest {
      rest();
    }
  });
  let queued = match writer {
    Some(sender) => sender.send(job),
    None => Err(mpsc::SendError(job)),
  };
  if let Err(mpsc::SendError(job)) = queued {
    // The whole job, its rest included, is done before the answer is read.
    run(job).await?;
  }
  rx.await
    .map_err(|_| PmError::Internal("blocking work panicked".into()))
}

#[cfg(test)]
mod tests {
  use super::*;

  fn thread_name() -> Option<String> {
    std::thread::current().name().map(str::to_owned)
  }

  /// The writes a start waits on share one thread, in the order they were asked for, and a write that
  /// panicked neither loses the ones after it nor leaves its caller waiting.
  #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
  async fn writes_in_turn_share_one_thread_in_order_and_survive_a_panic() {
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for i in 0..20 {
      let order = order.clone();
      threads.push(
        write_in_turn(move || {
          order.lock().unwrap().push(i);
          (std::thread::current().id(), thread_name())
        })
        .await
        .unwrap(),
      );
    }
    assert_eq!(*order.lock().unwrap(), (0..20).collect::<Vec<_>>());
    assert!(threads.iter().all(|t| t == &threads[0]), "{threads:?}");
    assert_eq!(threads[0].1.as_deref(), Some("bpm-writes"));

    let panicked = write_in_turn(|| -> u32 { panic!("a write that panics") }).await;
    assert!(
      matches!(panicked, Err(PmError::Internal(_))),
      "{panicked:?}"
    );
    let after = write_in_turn(thread_name).await.unwrap();
    assert_eq!(after.as_deref(), Some("bpm-writes"));
  }
}
