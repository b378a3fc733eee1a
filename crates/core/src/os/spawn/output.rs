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
/// A longer line is cut to this many bytes (on a character boundary) and a mark saying how many were left
/// out (docs/api.md, "Logs"): the rest of it is read and dropped, so an endless line cannot grow memory.
use crate::logs::MAX_LINE_BYTES;
/// The least a read asks for while the buffer holds the start of a line nearly `MAX_LINE_BYTES` long.
const MIN_READ: usize = 16 * 1024;

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
  /// carriage return or `MAX_LINE_BYTES` long or longer. Borrowed whole, they are split only where someone
  /// looks at each (a log frames them in one pass: docs/performance.md, "Log throughput, third pass").
  Plain(&'a str),
  /// Each line without its newline: lines cut with a mark, decoded with replacement characters, or that
  /// had a carriage return.
  Each(Vec<Cow<'a, str>>),
}

impl<'a> Lines<'a> {
  /// Lines each given without its newline.
  pub fn of(lines: Vec<Cow<'a, str>>) -> Lines<'a> {
    Lines(Kind::Each(lines))
  }

  /// The lines as read, each ending with its newline, when that is what they are: UTF-8, no carriage
  /// return, none as long as `MAX_LINE_BYTES`.
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
/// complete line is then handed on, and what is left (the start of the next line) moves to the front. A
/// line that grows past `MAX_LINE_BYTES` leaves the buffer: its first bytes are kept aside and the rest is
/// counted until its newline.
struct LineBuffer {
  buf: Vec<u8>,
  filled: usize,
  /// How much a read asks for (more only while the buffer holds the start of a long line).
  read_size: usize,
  /// A line longer than `MAX_LINE_BYTES` whose newline has not come yet.
  long: Option<LongLine>,
}

impl LineBuffer {
  fn new() -> LineBuffer {
    LineBuffer {
      buf: vec![0; READ_BUFFER],
      filled: 0,
      read_size: READ_BUFFER,
      long: None,
    }
  }

  /// Reads of up to `size` bytes from now on; the bytes waiting are kept.
  #[cfg(any(target_os = "linux", target_os = "android", test))]
  fn grow(&mut self, size: usize) {
    self.read_size = self.read_size.max(size);
    if self.buf.len() < size {
      self.buf.resize(size, 0);
    }
  }

  /// Where the next read goes: up to `read_size` bytes with the start of a line, and at least `MIN_READ`
  /// after it (the start of a line is at most `MAX_LINE_BYTES` and a carriage return, see `read`).
  fn space(&mut self) -> &mut [u8] {
    let end = self.read_size.max(self.filled + MIN_READ);
    if self.buf.len() < end {
      self.buf.resize(end, 0);
    }
    &mut self.buf[self.filled..end]
  }

  /// `n` bytes were read into `space()`: hands every complete line (a longer one cut, with a mark) to the
  /// sink in one call.
  fn read(&mut self, n: usize, stream: Stream, output: &Output, sink: &LineSink) {
    self.filled += n;
    // The end of a long line, when its newline is in this read: the lines after it go the slow way.
    let mut ended = None;
    let mut start = 0;
    if let Some(long) = &mut self.long {
      let data = &self.buf[..self.filled];
      match memchr::memchr(b'\n', data) {
        None => {
          long.skip(data);
          self.filled = 0;
          return;
        }
        Some(end) => {
          long.skip(&data[..end]);
          ended = self.long.take().map(LongLine::text);
          start = end + 1;
        }
      }
    }
    let data = &self.buf[start..self.filled];
    // Most output is UTF-8 in lines shorter than the limit, without carriage returns: checked once for
    // the whole read (SIMD searches), its lines go on as read.
    let plain = memchr::memrchr(b'\n', data)
      .filter(|_| ended.is_none())
      .map(|last| &data[..=last])
      .filter(|whole| memchr::memchr(b'\r', whole).is_none() && !has_long_line(whole))
      .and_then(|whole| std::str::from_utf8(whole).ok());
    let at = start
      + match plain {
        Some(text) => {
          deliver(stream, Lines(Kind::Plain(text)), output, sink);
          text.len()
        }
        None => {
          let (mut lines, at) = cut(data);
          if let Some(first) = ended {
            lines.insert(0, Cow::Owned(first));
          }
          deliver(stream, Lines::of(lines), output, sink);
          at
        }
      };
    // The start of a line waits for its end in the buffer while it may still be a whole line (and a
    // carriage return before its newline); longer, it is cut.
    if self.filled - at > MAX_LINE_BYTES + 1 {
      self.long = Some(LongLine::start(&self.buf[at..self.filled]));
      self.filled = 0;
    } else {
      self.consumed(at);
    }
  }

  /// The first `at` bytes were handed on: what is left moves to the front.
  fn consumed(&mut self, at: usize) {
    self.buf.copy_within(at..self.filled, 0);
    self.filled -= at;
  }

  /// End of file: what is left is the last line, without its newline.
  fn finish(&mut self, stream: Stream, output: &Output, sink: &LineSink) {
    let last = match self.long.take() {
      Some(long) => Some(Cow::Owned(long.text())),
      None => Some(text_of(&self.buf[..self.filled])).filter(|_| self.filled > 0),
    };
    if let Some(last) = last {
      deliver(stream, Lines::of(vec![last]), output, sink);
    }
    self.filled = 0;
  }
}

/// A line longer than `MAX_LINE_BYTES` being read: its first bytes, and how many came after them.
struct LongLine {
  kept: String,
  /// Bytes read after `kept`.
  dropped: usize,
  /// How many of the last of them are carriage returns (the line's end if its newline comes next).
  returns: usize,
}

impl LongLine {
  /// The line's start, longer than `MAX_LINE_BYTES`.
  fn start(bytes: &[u8]) -> LongLine {
    let (kept, used) = decode_prefix(bytes, MAX_LINE_BYTES);
    let mut line = LongLine {
      kept,
      dropped: 0,
      returns: 0,
    };
    line.skip(&bytes[used..]);
    line
  }

  /// More of the line, before its newline: counted, not kept.
  fn skip(&mut self, bytes: &[u8]) {
    self.dropped += bytes.len();
    let returns = bytes.iter().rev().take_while(|&&b| b == b'\r').count();
    self.returns = if returns == bytes.len() {
      self.returns + returns
    } else {
      returns
    };
  }

  /// The line as handed on: its first `MAX_LINE_BYTES` and the mark (none when all that was left out is
  /// the carriage returns of its end).
  fn text(self) -> String {
    let mut text = self.kept;
    match self.dropped - self.returns {
      0 => text.truncate(text.trim_end_matches('\r').len()),
      dropped => crate::logs::push_truncation_mark(&mut text, dropped),
    }
    text
  }
}

/// A line as read (with its newline if it had one) as text, without its newline; one longer than
/// `MAX_LINE_BYTES` (or decoded longer: replacement characters) cut, with a mark.
fn text_of(line: &[u8]) -> Cow<'_, str> {
  let mut end = line.len();
  while end > 0 && matches!(line[end - 1], b'\n' | b'\r') {
    end -= 1;
  }
  let line = &line[..end];
  if line.len() <= MAX_LINE_BYTES {
    let text = String::from_utf8_lossy(line);
    if text.len() <= MAX_LINE_BYTES {
      return text;
    }
  }
  let (mut text, used) = decode_prefix(line, MAX_LINE_BYTES);
  crate::logs::push_truncation_mark(&mut text, line.len() - used);
  Cow::Owned(text)
}

/// The longest start of `bytes` that decodes (bytes that are not UTF-8 replaced) to at most `limit` bytes
/// of text, never part of a character: that text, and how many bytes it took.
fn decode_prefix(bytes: &[u8], limit: usize) -> (String, usize) {
  let mut text = String::with_capacity(limit.min(bytes.len()));
  let mut used = 0;
  for chunk in bytes.utf8_chunks() {
    let valid = chunk.valid();
    if text.len() + valid.len() > limit {
      let mut at = limit - text.len();
      while !valid.is_char_boundary(at) {
        at -= 1;
      }
      text.push_str(&valid[..at]);
      return (text, used + at);
    }
    text.push_str(valid);
    used += valid.len();
    if !chunk.invalid().is_empty() {
      if text.len() + char::REPLACEMENT_CHARACTER.len_utf8() > limit {
        break;
      }
      text.push(char::REPLACEMENT_CHARACTER);
      used += chunk.invalid().len();
    }
  }
  (text, used)
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

/// The complete lines of `data` one by one, without their newlines (a longer one cut with a mark, bytes
/// that are not UTF-8 replaced), and how many bytes they took; what is left is the start of a line.
fn cut(data: &[u8]) -> (Vec<Cow<'_, str>>, usize) {
  let mut lines = Vec::new();
  let mut at = 0;
  for end in memchr::memchr_iter(b'\n', data) {
    lines.push(text_of(&data[at..=end]));
    at = end + 1;
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

  /// The lines every call handed on, one after the other.
  fn all_lines(calls: &Arc<Mutex<Vec<Vec<String>>>>) -> Vec<String> {
    calls.lock().unwrap().iter().flatten().cloned().collect()
  }

  /// Lines compared by their length and end first, so that a failure shows them short.
  fn assert_lines(got: &[String], expected: &[String]) {
    let short = |lines: &[String]| -> Vec<(usize, String)> {
      lines
        .iter()
        .map(|l| (l.len(), l.chars().rev().take(30).collect()))
        .collect()
    };
    assert_eq!(short(got), short(expected));
    assert!(got == expected, "same lengths and ends, other text");
  }

  /// `bytes` as the pipe would give them: in reads as large as the buffer asks for.
  fn feed_all(buffer: &mut LineBuffer, bytes: &[u8], output: &Output, sink: &LineSink) {
    let mut at = 0;
    while at < bytes.len() {
      let n = buffer.space().len().min(bytes.len() - at);
      feed(buffer, &bytes[at..at + n], output, sink);
      at += n;
    }
  }

  /// What a line of `text` is handed on as when it is longer than 64 KiB.
  fn cut_to(text: &str, kept: usize) -> String {
    format!("{}…[truncated {} bytes]", &text[..kept], text.len() - kept)
  }

  #[test]
  fn a_line_up_to_64_kib_arrives_whole() {
    let (sink, calls) = collect();
    let output = expecting(1);
    let mut buffer = LineBuffer::new();
    let line = "y".repeat(20_000);
    let longest = "z".repeat(64 * 1024);
    feed_all(
      &mut buffer,
      format!("{line}\n{longest}\r\n").as_bytes(),
      &output,
      &sink,
    );
    assert_lines(&all_lines(&calls), &[line, longest]);
  }

  /// Read in pieces (a pipe of 64 KiB) or in one read (a flood), the same: its first 64 KiB and a mark
  /// with the bytes left out, between the lines around it, in order.
  #[test]
  fn a_longer_line_is_cut_to_64_kib_with_a_mark_and_the_lines_around_it_are_intact() {
    let long = "x".repeat(70_000);
    let text = format!("before\n{long}\r\nafter\nlast\n");
    let expected = vec![
      "before".to_string(),
      cut_to(&long, 64 * 1024),
      "after".to_string(),
      "last".to_string(),
    ];
    assert_eq!(
      cut_to(&long, 64 * 1024).len(),
      65536 + "…[truncated 4464 bytes]".len()
    );
    for flood in [false, true] {
      let (sink, calls) = collect();
      let output = expecting(1);
      let mut buffer = LineBuffer::new();
      if flood {
        buffer.grow(1024 * 1024);
        feed(&mut buffer, text.as_bytes(), &output, &sink);
      } else {
        feed_all(&mut buffer, text.as_bytes(), &output, &sink);
      }
      assert_lines(&all_lines(&calls), &expected);
      assert_lines(&output.stderr_tail(), &expected);
    }
  }

  #[test]
  fn a_character_across_the_cut_is_left_out_whole() {
    let (sink, calls) = collect();
    let output = expecting(1);
    let mut buffer = LineBuffer::new();
    // "€" is 3 bytes: after "ab" the 64 KiB mark falls inside one.
    let long = format!("ab{}", "€".repeat(30_000));
    assert!(!long.is_char_boundary(64 * 1024));
    feed_all(&mut buffer, format!("{long}\n").as_bytes(), &output, &sink);
    assert_lines(&all_lines(&calls), &[cut_to(&long, 64 * 1024 - 2)]);
  }

  /// Bytes that are not UTF-8 become replacement characters (3 bytes each): a line that would decode
  /// longer than 64 KiB is cut too, the mark counting the bytes as read that were left out.
  #[test]
  fn a_line_that_decodes_longer_than_64_kib_is_cut() {
    let (sink, calls) = collect();
    let output = expecting(1);
    let mut buffer = LineBuffer::new();
    let mut bad = vec![0xff; 30_000];
    bad.push(b'\n');
    feed_all(&mut buffer, &bad, &output, &sink);
    let kept = (64 * 1024) / 3;
    let expected = format!(
      "{}…[truncated {} bytes]",
      "\u{fffd}".repeat(kept),
      30_000 - kept
    );
    assert_lines(&all_lines(&calls), &[expected]);
  }

  /// An endless line keeps its first 64 KiB only: the buffer does not grow with it, nothing is handed on
  /// until it ends, and then the mark counts every byte left out.
  #[test]
  fn an_endless_line_does_not_grow_memory() {
    let (sink, calls) = collect();
    let output = expecting(1);
    let mut buffer = LineBuffer::new();
    let chunk = vec![b'x'; 64 * 1024];
    let total = 200 * chunk.len();
    for _ in 0..200 {
      feed_all(&mut buffer, &chunk, &output, &sink);
      assert!(buffer.buf.len() <= 128 * 1024, "{}", buffer.buf.len());
    }
    assert!(all_lines(&calls).is_empty());
    feed_all(&mut buffer, b"\nnext\n", &output, &sink);
    let expected = format!(
      "{}…[truncated {} bytes]",
      "x".repeat(64 * 1024),
      total - 64 * 1024
    );
    assert_lines(&all_lines(&calls), &[expected, "next".to_string()]);
  }

  /// At end of file, a long last line without its newline is cut the same way.
  #[test]
  fn a_long_last_line_without_newline_is_cut_at_end_of_file() {
    let (sink, calls) = collect();
    let output = expecting(1);
    let mut buffer = LineBuffer::new();
    let long = "w".repeat(100_000);
    feed_all(&mut buffer, long.as_bytes(), &output, &sink);
    buffer.finish(Stream::Stderr, &output, &sink);
    assert_lines(&all_lines(&calls), &[cut_to(&long, 64 * 1024)]);
  }
}
