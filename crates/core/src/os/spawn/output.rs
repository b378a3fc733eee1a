//! The backend's stdout and stderr, turned into lines for the caller; the last lines of stderr are kept for
//! error reports. Unix reads the pipes on the runtime (docs/design.md §23); Windows has no async anonymous
//! pipes, so a thread per pipe reads there (as tokio's own `process` does on Windows).

use std::borrow::Cow;
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
/// Bytes read from a pipe at once: a pipe's whole default capacity (64 KiB on Linux), so that a backend
/// writing fast is drained in one read and its lines go to the sink in one call (docs/performance.md).
const READ_BUFFER: usize = 64 * 1024;
/// What a pipe found full is grown to, and then read at once (Linux): a backend writing as fast as it can
/// is drained in a sixteenth of the reads and wake-ups (docs/performance.md, "Log throughput, third pass").
#[cfg(any(target_os = "linux", target_os = "android"))]
const FLOOD_READ: usize = 1024 * 1024;
/// A longer line is cut into pieces of this size, so one endless line cannot grow memory without bound.
const MAX_LINE_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
  Stdout,
  Stderr,
}

/// Receives every line the backend writes, in order: the complete lines of one read at once (never none),
/// so that what is done per read is not done per line.
pub type LineSink = Arc<dyn Fn(Stream, &Lines<'_>) + Send + Sync>;

/// The complete lines of one read.
pub struct Lines<'a>(Kind<'a>);

enum Kind<'a> {
  /// As read, which is what most output is: UTF-8 lines each ending with its newline, none holding a
  /// carriage return or longer than `MAX_LINE_BYTES`. Borrowed whole, they are split only where someone
  /// looks at each (a log frames them in one pass: docs/performance.md, "Log throughput, third pass").
  Plain(&'a str),
  /// Each line without its newline: lines cut in pieces, decoded with replacement characters, or that had
  /// a carriage return.
  Each(Vec<Cow<'a, str>>),
}

impl<'a> Lines<'a> {
  /// Lines each given without its newline.
  pub fn of(lines: Vec<Cow<'a, str>>) -> Lines<'a> {
    Lines(Kind::Each(lines))
  }

  /// The lines as read, each ending with its newline, when that is what they are: UTF-8, no carriage
  /// return, none longer than `MAX_LINE_BYTES`.
  pub fn as_read(&self) -> Option<&'a str> {
    match self.0 {
      Kind::Plain(text) => Some(text),
      Kind::Each(_) => None,
    }
  }

  /// Each line, without its newline.
  pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
    let (plain, each) = match &self.0 {
      Kind::Plain(text) => (Some(text.split_terminator('\n')), [].iter()),
      Kind::Each(lines) => (None, lines.iter()),
    };
    plain.into_iter().flatten().chain(each.map(|l| l.as_ref()))
  }

  pub fn len(&self) -> usize {
    match &self.0 {
      Kind::Plain(text) => memchr::memchr_iter(b'\n', text.as_bytes()).count(),
      Kind::Each(lines) => lines.len(),
    }
  }

  pub fn is_empty(&self) -> bool {
    match &self.0 {
      Kind::Plain(text) => text.is_empty(),
      Kind::Each(lines) => lines.is_empty(),
    }
  }
}

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

/// The bytes read from one pipe that do not yet end a line. Each read is appended after them; every
/// complete line is then handed on, and what is left (the start of the next line) moves to the front.
struct LineBuffer {
  buf: Vec<u8>,
  filled: usize,
}

impl LineBuffer {
  fn new() -> LineBuffer {
    LineBuffer {
      buf: vec![0; READ_BUFFER],
      filled: 0,
    }
  }

  /// Reads of up to `size` bytes from now on; the bytes waiting are kept.
  #[cfg(any(target_os = "linux", target_os = "android"))]
  fn grow(&mut self, size: usize) {
    if self.buf.len() < size {
      self.buf.resize(size, 0);
    }
  }

  /// Where the next read goes (never empty: a full buffer always holds a line or a piece to hand on).
  fn space(&mut self) -> &mut [u8] {
    &mut self.buf[self.filled..]
  }

  /// `n` bytes were read into `space()`: hands every complete line (a longer one in pieces of
  /// `MAX_LINE_BYTES`, its newline included) to the sink in one call.
  fn read(&mut self, n: usize, stream: Stream, output: &Output, sink: &LineSink) {
    self.filled += n;
    let data = &self.buf[..self.filled];
    // Most output is UTF-8 in lines shorter than the limit, without carriage returns: checked once for
    // the whole read (SIMD searches), its lines go on as read.
    let plain = memchr::memrchr(b'\n', data)
      .map(|last| &data[..=last])
      .filter(|whole| memchr::memchr(b'\r', whole).is_none() && !has_long_line(whole))
      .and_then(|whole| std::str::from_utf8(whole).ok());
    let at = match plain {
      Some(text) => {
        deliver(stream, Lines(Kind::Plain(text)), output, sink);
        text.len()
      }
      None => {
        let (lines, at) = cut(data);
        deliver(stream, Lines::of(lines), output, sink);
        at
      }
    };
    self.consumed(at);
  }

  /// The first `at` bytes were handed on: what is left moves to the front.
  fn consumed(&mut self, at: usize) {
    self.buf.copy_within(at..self.filled, 0);
    self.filled -= at;
  }

  /// End of file: what is left is the last line, without its newline.
  fn finish(&mut self, stream: Stream, output: &Output, sink: &LineSink) {
    let rest = &self.buf[..self.filled];
    if !rest.is_empty() {
      deliver(stream, Lines::of(vec![lossy(rest)]), output, sink);
    }
    self.filled = 0;
  }
}

/// A line as read (with its newline if it had one) as text, without its newline.
fn lossy(line: &[u8]) -> std::borrow::Cow<'_, str> {
  let mut end = line.len();
  while end > 0 && matches!(line[end - 1], b'\n' | b'\r') {
    end -= 1;
  }
  String::from_utf8_lossy(&line[..end])
}

/// Whether a line of `text` (whole lines) is `MAX_LINE_BYTES` long or longer. When each stretch of half
/// that holds a line end, none can be: a few searches that stop at the stretch's first line end, rather
/// than one per line.
fn has_long_line(text: &[u8]) -> bool {
  if text
    .chunks(MAX_LINE_BYTES / 2)
    .all(|stretch| memchr::memchr(b'\n', stretch).is_some())
  {
    return false;
  }
  let mut at = 0;
  for end in memchr::memchr_iter(b'\n', text) {
    if end - at >= MAX_LINE_BYTES {
      return true;
    }
    at = end + 1;
  }
  false
}

/// The lines of `data` one by one, without their newlines (a longer one in pieces of `MAX_LINE_BYTES`, bytes
/// that are not UTF-8 replaced), and how many bytes they took; what is left is the start of a line.
fn cut(data: &[u8]) -> (Vec<Cow<'_, str>>, usize) {
  let mut lines = Vec::new();
  let mut at = 0;
  while at < data.len() {
    let rest = &data[at..];
    let window = &rest[..rest.len().min(MAX_LINE_BYTES)];
    let len = match memchr::memchr(b'\n', window) {
      Some(i) => i + 1,
      None if window.len() == MAX_LINE_BYTES => MAX_LINE_BYTES,
      None => break,
    };
    lines.push(lossy(&rest[..len]));
    at += len;
  }
  (lines, at)
}

/// Hands lines to the sink, and keeps the last of stderr.
fn deliver(stream: Stream, lines: Lines<'_>, output: &Output, sink: &LineSink) {
  if lines.is_empty() {
    return;
  }
  if stream == Stream::Stderr {
    let mut tail = lock(&output.stderr_tail);
    let count = lines.len();
    for line in lines.iter().skip(count.saturating_sub(STDERR_TAIL_LINES)) {
      if tail.len() == STDERR_TAIL_LINES {
        tail.pop_front();
      }
      tail.push_back(line.to_string());
    }
  }
  sink(stream, &lines);
}

#[cfg(test)]
mod tests {
  use super::*;

  fn collect() -> (LineSink, Arc<Mutex<Vec<Vec<String>>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let sink: LineSink = Arc::new(move |_, lines: &Lines<'_>| {
      seen
        .lock()
        .unwrap()
        .push(lines.iter().map(|l| l.to_string()).collect());
    });
    (sink, calls)
  }

  fn feed(buffer: &mut LineBuffer, bytes: &[u8], output: &Output, sink: &LineSink) {
    buffer.space()[..bytes.len()].copy_from_slice(bytes);
    buffer.read(bytes.len(), Stream::Stderr, output, sink);
  }

  #[test]
  fn the_complete_lines_of_a_read_go_together_and_a_started_line_waits_for_its_end() {
    let (sink, calls) = collect();
    let output = expecting(1);
    let mut buffer = LineBuffer::new();
    feed(&mut buffer, b"one\r\ntwo\nthr", &output, &sink);
    feed(&mut buffer, b"ee\n\nfour", &output, &sink);
    buffer.finish(Stream::Stderr, &output, &sink);
    assert_eq!(
      *calls.lock().unwrap(),
      vec![vec!["one", "two"], vec!["three", ""], vec!["four"]]
    );
    assert_eq!(output.stderr_tail(), ["one", "two", "three", "", "four"]);
  }

  /// Lines without carriage returns, in UTF-8 and short enough go on as they were read, whole.
  #[test]
  fn plain_lines_go_on_as_read_and_others_line_by_line() {
    let output = expecting(1);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let got = seen.clone();
    let sink: LineSink = Arc::new(move |_, lines: &Lines<'_>| {
      got.lock().unwrap().push((
        lines.as_read().map(str::to_string),
        lines.iter().map(str::to_string).collect::<Vec<_>>(),
        lines.len(),
      ));
    });
    let mut buffer = LineBuffer::new();
    feed(&mut buffer, b"one\n\ntwo\nthr", &output, &sink);
    feed(&mut buffer, b"ee\r\nfour\n", &output, &sink);
    let seen = seen.lock().unwrap();
    assert_eq!(
      seen[0],
      (
        Some("one\n\ntwo\n".to_string()),
        vec!["one".into(), "".into(), "two".into()],
        3
      )
    );
    assert_eq!(seen[1], (None, vec!["three".into(), "four".into()], 2));
  }

  #[test]
  fn bytes_that_are_not_utf8_spoil_only_their_own_line() {
    let (sink, calls) = collect();
    let output = expecting(1);
    let mut buffer = LineBuffer::new();
    feed(
      &mut buffer,
      b"caf\xc3\xa9\nbad \xff byte\nafter\n\xc3",
      &output,
      &sink,
    );
    feed(&mut buffer, b"\xa9t\xc3\xa9\n", &output, &sink);
    assert_eq!(
      *calls.lock().unwrap(),
      vec![vec!["café", "bad \u{fffd} byte", "after"], vec!["été"]]
    );
  }

  #[test]
  fn an_endless_line_is_handed_on_in_pieces() {
    let (sink, calls) = collect();
    let output = expecting(1);
    let mut buffer = LineBuffer::new();
    let long = vec![b'x'; MAX_LINE_BYTES * 2 + 10];
    feed(&mut buffer, &long, &output, &sink);
    buffer.finish(Stream::Stderr, &output, &sink);
    let calls = calls.lock().unwrap();
    let lengths: Vec<Vec<usize>> = calls
      .iter()
      .map(|c| c.iter().map(String::len).collect())
      .collect();
    assert_eq!(
      lengths,
      vec![vec![MAX_LINE_BYTES, MAX_LINE_BYTES], vec![10]]
    );
  }
}
