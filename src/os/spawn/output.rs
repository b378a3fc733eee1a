//! The backend's stdout and stderr: one reader thread per pipe turns them into lines for the caller, and
//! keeps the last lines of stderr for error reports.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Lines of stderr kept for error reports.
pub const STDERR_TAIL_LINES: usize = 20;
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

/// Starts one reader thread per pipe.
pub fn start_readers(
  pid: u32,
  pipes: Vec<(Stream, Box<dyn Read + Send>)>,
  sink: LineSink,
) -> Arc<Output> {
  let output = Arc::new(Output::default());
  *lock(&output.open_streams) = pipes.len();
  for (stream, pipe) in pipes {
    let reader_output = output.clone();
    let sink = sink.clone();
    let name = match stream {
      Stream::Stdout => format!("bpm-out-{pid}"),
      Stream::Stderr => format!("bpm-err-{pid}"),
    };
    let started = std::thread::Builder::new()
      .name(name)
      .stack_size(crate::blocking::THREAD_STACK)
      .spawn(move || read_lines(stream, pipe, &reader_output, &sink));
    if started.is_err() {
      // Without a reader the pipe fills and blocks the backend; it gets no output events instead.
      output.stream_closed();
    }
  }
  output
}

fn read_lines(stream: Stream, pipe: Box<dyn Read + Send>, output: &Output, sink: &LineSink) {
  let mut reader = BufReader::with_capacity(16 * 1024, pipe);
  let mut buf = Vec::with_capacity(256);
  loop {
    buf.clear();
    let n = match (&mut reader)
      .take(MAX_LINE_BYTES as u64)
      .read_until(b'\n', &mut buf)
    {
      Ok(n) => n,
      Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
      Err(_) => 0,
    };
    if n == 0 {
      break;
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
      buf.pop();
    }
    let line = String::from_utf8_lossy(&buf);
    if stream == Stream::Stderr {
      let mut tail = lock(&output.stderr_tail);
      if tail.len() == STDERR_TAIL_LINES {
        tail.pop_front();
      }
      tail.push_back(line.to_string());
    }
    sink(stream, &line);
  }
  output.stream_closed();
}
