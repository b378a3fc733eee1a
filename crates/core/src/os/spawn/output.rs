//! The backend's stdout and stderr, turned into lines for the caller; the last lines of stderr are kept for
//! error reports. Unix reads the pipes on the runtime (docs/design.md §23); Windows has no async anonymous
//! pipes, so a thread per pipe reads there (as tokio's own `process` does on Windows).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[cfg(unix)]
#[path = "output_unix.rs"]
mod imp;
#[cfg(windows)]
#[path = "output_windows.rs"]
mod imp;

pub use imp::{start_readers, Pipe};

/// Lines of stderr kept for error reports.
pub const STDERR_TAIL_LINES: usize = 20;
/// Bytes read from a pipe at once.
const READ_BUFFER: usize = 16 * 1024;
/// A longer line is cut into pieces of this size, so one endless line cannot grow memory without bound.
const MAX_LINE_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
  Stdout,
  Stderr,
}

/// Receives every line the backend writes, without its newline.
pub type LineSink = Arc<dyn Fn(Stream, &str) + Send + Sync>;

/// What the readers have seen, shared with the owner of the child.
#[derive(Default)]
pub struct Output {
  stderr_tail: Mutex<VecDeque<String>>,
  open_streams: Mutex<usize>,
  closed: tokio::sync::Notify,
}

impl Output {
  pub fn stderr_tail(&self) -> Vec<String> {
    lock(&self.stderr_tail).iter().cloned().collect()
  }

  /// Waits (at most `limit`) until both pipes reached end of file, so that an error report holds the
  /// backend's last words. A grandchild may keep the pipes open, hence the limit.
  pub async fn wait_closed(&self, limit: Duration) {
    let closed = self.closed.notified();
    tokio::pin!(closed);
    closed.as_mut().enable();
    if *lock(&self.open_streams) == 0 {
      return;
    }
    let _ = tokio::time::timeout(limit, closed).await;
  }

  fn stream_closed(&self) {
    let mut open = lock(&self.open_streams);
    *open = open.saturating_sub(1);
    if *open == 0 {
      self.closed.notify_waiters();
    }
  }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
  m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts the pipes being read, before their readers start.
fn expecting(pipes: usize) -> Arc<Output> {
  let output = Arc::new(Output::default());
  *lock(&output.open_streams) = pipes;
  output
}

/// Hands one line (as read, with its newline if it had one) to the sink, and keeps it if it is stderr.
fn deliver(stream: Stream, buf: &mut Vec<u8>, output: &Output, sink: &LineSink) {
  while matches!(buf.last(), Some(b'\n' | b'\r')) {
    buf.pop();
  }
  let line = String::from_utf8_lossy(buf);
  if stream == Stream::Stderr {
    let mut tail = lock(&output.stderr_tail);
    if tail.len() == STDERR_TAIL_LINES {
      tail.pop_front();
    }
    tail.push_back(line.to_string());
  }
  sink(stream, &line);
}
