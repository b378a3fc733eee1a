//! Log files a user can attach to a support ticket (docs/api.md, "Logs and diagnostics"; docs/design.md
//! decision 29): the backend's stdout and stderr and the manager's own lifecycle lines, framed one per line
//! (`2026-12-02T11:07:23.456Z out 0 text`), secrets redacted, rotated by size with rename.
//!
//! Writing never slows the backend: the pipe readers only frame a line and hand it to one writer thread
//! for the whole process (not one per backend) through a bounded queue; when the queue is full, or the disk
//! is full or the folder not writable, the line is dropped and counted, and the manager is told once.

mod redact;
mod time;
mod writer;

pub use redact::Redactor;
pub use time::iso as iso_time;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// A line longer than this is cut, with a mark saying how much was left out (`…[truncated N bytes]`): the
/// pipe reader cuts the backend's lines (os::spawn::output), the log any other line.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// The longest a cut line is: `MAX_LINE_BYTES` and the longest mark. The log cuts only lines longer than
/// this, so that a line the pipe reader has cut is written as it is, not cut again.
const MAX_CUT_LINE: usize = MAX_LINE_BYTES + "…[truncated  bytes]".len() + 20;

/// Appends the mark saying that `dropped` bytes of a line were left out.
pub fn push_truncation_mark(text: &mut String, dropped: usize) {
  use std::fmt::Write;
  let _ = write!(text, "…[truncated {dropped} bytes]");
}
const APP: &str = "backend-process-manager";

/// Where and how much (the `logs` option).
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
  pub dir: PathBuf,
  /// `<name>.log` is rotated before it would pass this size.
  pub max_bytes: u64,
  /// How many rotated files (`<name>.1.log` … `<name>.<keep>.log`) are kept besides `<name>.log`.
  pub keep: u32,
}

pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
pub const DEFAULT_KEEP: u32 = 5;

/// The per-user log folder, which survives logout and reboot (unlike the records' runtime folder).
pub fn default_log_dir() -> PathBuf {
  platform::log_dir().unwrap_or_else(|| std::env::temp_dir().join(APP).join("logs"))
}

/// Where each system keeps a user's logs.
#[cfg(target_os = "macos")]
mod platform {
  use super::APP;
  use std::path::PathBuf;

  /// `~/Library/Logs/<app>`, where Console.app looks.
  pub fn log_dir() -> Option<PathBuf> {
    dirs::home_dir().map(|h| h.join("Library").join("Logs").join(APP))
  }
}

#[cfg(windows)]
mod platform {
  use super::APP;
  use std::path::PathBuf;

  /// `%LOCALAPPDATA%\<app>\logs`: per user, not roamed.
  pub fn log_dir() -> Option<PathBuf> {
    dirs::data_local_dir().map(|d| d.join(APP).join("logs"))
  }
}

#[cfg(not(any(target_os = "macos", windows)))]
mod platform {
  use super::APP;
  use std::path::PathBuf;

  /// `$XDG_STATE_HOME/<app>/logs` (`~/.local/state` without it): kept across logout and reboot.
  pub fn log_dir() -> Option<PathBuf> {
    dirs::state_dir()
      .or_else(|| dirs::home_dir().map(|h| h.join(".local").join("state")))
      .map(|d| d.join(APP).join("logs"))
  }
}

/// The stream of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
  Out,
  Err,
  /// The manager's own lines: spawn, ready, exit, restart, stop.
  Manager,
}

impl LogStream {
  pub fn as_str(self) -> &'static str {
    match self {
      LogStream::Out => "out",
      LogStream::Err => "err",
      LogStream::Manager => "pm",
    }
  }

  pub fn parse(text: &str) -> Option<LogStream> {
    match text {
      "out" => Some(LogStream::Out),
      "err" => Some(LogStream::Err),
      "pm" => Some(LogStream::Manager),
      _ => None,
    }
  }
}

/// Writing stopped working, or works again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogWarning {
  pub dropped: u64,
  pub message: String,
}

/// What a log reports to its manager (the `warning` event).
pub type OnWarning = Arc<dyn Fn(LogWarning) + Send + Sync>;

/// One backend's log: `<dir>/<name>.log` and its rotated files.
pub struct Log {
  pub config: LogConfig,
  pub name: String,
  /// Lines dropped so far (queue full, or the file could not be written).
  dropped: AtomicU64,
  /// Dropping now: the next line written says how many were lost, and the manager is told again.
  failing: AtomicBool,
  /// The folder was made (with its parents) for the first line.
  folder_made: AtomicBool,
  on_warning: OnWarning,
}

impl Log {
  pub fn new(config: LogConfig, name: &str, on_warning: OnWarning) -> Arc<Log> {
    Arc::new(Log {
      config,
      name: name.to_string(),
      dropped: AtomicU64::new(0),
      failing: AtomicBool::new(false),
      folder_made: AtomicBool::new(false),
      on_warning,
    })
  }

  pub fn path(&self) -> PathBuf {
    file_of(&self.config.dir, &self.name, 0)
  }

  /// Frames a line and queues it for the writer; never blocks. `text` is redacted by `redactor`.
  pub fn line(
    self: &Arc<Self>,
    stream: LogStream,
    replica: usize,
    text: &str,
    redactor: &Redactor,
  ) {
    self.lines(stream, replica, &[text], redactor);
  }

  /// Frames lines read together (they share a time: the time they were read) and queues them for the
  /// writer as one piece; never blocks. Each is redacted by `redactor`. Per line, only what must be done
  /// per line is: the redaction's search, and copying the text after the frame (docs/performance.md).
  pub fn lines(
    self: &Arc<Self>,
    stream: LogStream,
    replica: usize,
    lines: &[&str],
    redactor: &Redactor,
  ) {
    if lines.is_empty() {
      return;
    }
    let prefix = format!("{} {} {replica} ", time::now_iso(), stream.as_str());
    let framed = match frame_plain(&prefix, lines, redactor) {
      Some(framed) => framed,
      None => {
        let size: usize = lines.iter().map(|l| prefix.len() + l.len() + 1).sum();
        let mut framed = Vec::with_capacity(size + 64);
        for text in lines {
          frame_into(&mut framed, &prefix, &redactor.redact(text));
        }
        framed
      }
    };
    if !writer::queue(self.clone(), framed, lines.len()) {
      self.drop_lines(
        lines.len() as u64,
        "the log writer cannot keep up with the backend's output",
      );
    }
  }

  /// Frames whole lines as they were read (`text`: each ends with its newline) and queues them as one
  /// piece; never blocks. In one pass over `text`, each line is copied after its frame: what most output
  /// is (no secret, no carriage return, no line too long) needs nothing more (docs/performance.md, "Log
  /// throughput, third pass"). Other text goes line by line through `lines`.
  pub fn text(
    self: &Arc<Self>,
    stream: LogStream,
    replica: usize,
    text: &str,
    redactor: &Redactor,
  ) {
    if text.is_empty() {
      return;
    }
    let prefix = format!("{} {} {replica} ", time::now_iso(), stream.as_str());
    match frame_text(&prefix, text, redactor) {
      Some((framed, count)) => {
        if !writer::queue(self.clone(), framed, count) {
          self.drop_lines(
            count as u64,
            "the log writer cannot keep up with the backend's output",
          );
        }
      }
      None => {
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        self.lines(stream, replica, &lines, redactor);
      }
    }
  }

  /// Waits until every line queued before this call has been written (or dropped). Blocking.
  pub fn flush(&self) {
    writer::flush();
  }

  /// The last `lines` lines (of `stream` only, when given) across the rotated files, oldest first.
  /// Blocking: it reads files.
  pub fn tail(&self, lines: usize, stream: Option<LogStream>) -> Vec<LogLine> {
    read_tail(
      &self.config.dir,
      &self.name,
      self.config.keep,
      lines,
      stream,
    )
  }

  fn drop_lines(&self, count: u64, why: &str) {
    let dropped = self.dropped.fetch_add(count, Ordering::SeqCst) + count;
    if !self.failing.swap(true, Ordering::SeqCst) {
      (self.on_warning)(LogWarning {
        dropped,
        message: format!(
          "log lines of {} are being dropped: {why}; the backend keeps running",
          self.path().display()
        ),
      });
    }
  }

  /// A write went through after lines were dropped: say so in the log and to the manager.
  fn recovered(&self) -> Option<Vec<u8>> {
    if !self.failing.swap(false, Ordering::SeqCst) {
      return None;
    }
    let dropped = self.dropped.load(Ordering::SeqCst);
    let message = format!(
      "writing {} works again; {dropped} log lines were dropped in all",
      self.path().display()
    );
    (self.on_warning)(LogWarning {
      dropped,
      message: message.clone(),
    });
    Some(frame(
      time::now_iso(),
      LogStream::Manager,
      0,
      &format!("{dropped} lines were dropped: the log could not be written"),
    ))
  }
}

/// `<name>.log` (`n` = 0) or the rotated `<name>.<n>.log`.
pub fn file_of(dir: &Path, name: &str, n: u32) -> PathBuf {
  let stem = crate::state::record::file_stem(name);
  match n {
    0 => dir.join(format!("{stem}.log")),
    n => dir.join(format!("{stem}.{n}.log")),
  }
}

/// `time stream replica text\n`, the text (when longer than `MAX_CUT_LINE`) cut at `MAX_LINE_BYTES` (on a
/// character boundary) and kept on one line: a carriage return or newline inside it cannot forge another
/// line.
fn frame(time: String, stream: LogStream, replica: usize, text: &str) -> Vec<u8> {
  let prefix = format!("{time} {} {replica} ", stream.as_str());
  let mut line = Vec::with_capacity(prefix.len() + text.len().min(MAX_CUT_LINE) + 32);
  frame_into(&mut line, &prefix, text);
  line
}

/// The lines framed as they are, when that is what `frame_into` would make of them: none is too long or
/// holds a line break, and no secret is in them (nor the start of one cut off with the rest of its line). Each check is one SIMD search over the whole batch rather
/// than one per line (a secret found across two lines only sends the batch the slow way).
fn frame_plain(prefix: &str, lines: &[&str], redactor: &Redactor) -> Option<Vec<u8>> {
  let size: usize = lines.iter().map(|l| prefix.len() + l.len() + 1).sum();
  if lines
    .iter()
    .any(|text| text.len() > MAX_CUT_LINE || redactor.cut_in(text))
  {
    return None;
  }
  let mut framed = writer::buffer(size);
  for text in lines {
    framed.extend_from_slice(prefix.as_bytes());
    framed.extend_from_slice(text.as_bytes());
    framed.push(b'\n');
  }
  let breaks = memchr::memchr_iter(b'\n', &framed).count();
  if breaks != lines.len() || memchr::memchr(b'\r', &framed).is_some() || redactor.finds_in(&framed)
  {
    return None;
  }
  Some(framed)
}

/// Whole lines (each ending with its newline) framed as they are, and how many, when that is what
/// `frame_into` would make of them: no carriage return (one SIMD search), no secret (one per secret), no
/// line too long (seen while framing).
fn frame_text(prefix: &str, text: &str, redactor: &Redactor) -> Option<(Vec<u8>, usize)> {
  let text = text.as_bytes();
  if text.last() != Some(&b'\n') || memchr::memchr(b'\r', text).is_some() || redactor.finds_in(text)
  {
    return None;
  }
  // Room for lines of 62 bytes or longer with their frames; shorter ones grow it.
  let mut framed = writer::buffer(text.len() + text.len() / 2 + prefix.len());
  let mut count = 0;
  let mut at = 0;
  for end in memchr::memchr_iter(b'\n', text) {
    if end - at > MAX_CUT_LINE {
      return None;
    }
    framed.extend_from_slice(prefix.as_bytes());
    framed.extend_from_slice(&text[at..=end]);
    at = end + 1;
    count += 1;
  }
  Some((framed, count))
}

/// Appends `prefix` (`time stream replica `) and `text` as one framed line to `out`.
fn frame_into(out: &mut Vec<u8>, prefix: &str, text: &str) {
  let (kept, cut) = if text.len() > MAX_CUT_LINE {
    let mut at = MAX_LINE_BYTES;
    while !text.is_char_boundary(at) {
      at -= 1;
    }
    (&text[..at], text.len() - at)
  } else {
    (text, 0)
  };
  out.extend_from_slice(prefix.as_bytes());
  let start = out.len();
  out.extend_from_slice(kept.as_bytes());
  // Bytewise: in UTF-8 neither byte is ever part of another character.
  for b in &mut out[start..] {
    if *b == b'\n' || *b == b'\r' {
      *b = b' ';
    }
  }
  if cut > 0 {
    let mut mark = String::new();
    push_truncation_mark(&mut mark, cut);
    out.extend_from_slice(mark.as_bytes());
  }
  out.push(b'\n');
}

/// One line read back.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
  /// As written: ISO time with milliseconds, UTC.
  pub time: String,
  pub stream: LogStream,
  pub replica: u32,
  pub line: String,
}

pub fn parse_line(text: &str) -> Option<LogLine> {
  let mut parts = text.splitn(4, ' ');
  let time = parts.next()?;
  let stream = LogStream::parse(parts.next()?)?;
  let replica = parts.next()?.parse().ok()?;
  Some(LogLine {
    time: time.to_string(),
    stream,
    replica,
    line: parts.next().unwrap_or("").to_string(),
  })
}

/// The last `want` lines of `name`'s log in `dir` (of `stream` only, when given), newest file first until
/// enough are found, returned oldest first. Blocking.
pub fn read_tail(
  dir: &Path,
  name: &str,
  keep: u32,
  want: usize,
  stream: Option<LogStream>,
) -> Vec<LogLine> {
  let mut found: Vec<LogLine> = Vec::new();
  for n in 0..=keep.max(rotated_count(dir, name)) {
    if found.len() >= want {
      break;
    }
    let Ok(text) = read_file(&file_of(dir, name, n)) else {
      continue;
    };
    let text = String::from_utf8_lossy(&text);
    let mut lines: Vec<LogLine> = text
      .lines()
      .filter_map(parse_line)
      .filter(|l| stream.is_none_or(|s| l.stream == s))
      .collect();
    let take = (want - found.len()).min(lines.len());
    let mut newest = lines.split_off(lines.len() - take);
    newest.append(&mut found);
    found = newest;
  }
  found
}

/// A log file's bytes, read without following a symbolic link and only from a regular file: a FIFO in its
/// place would block the read until something wrote to it.
fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
  use std::io::Read;
  let mut file = crate::state::record::open_no_follow(path)?;
  if !file.metadata()?.is_file() {
    return Err(std::io::ErrorKind::InvalidInput.into());
  }
  let mut text = Vec::new();
  file.read_to_end(&mut text)?;
  Ok(text)
}

/// The highest `n` of an existing `<name>.<n>.log` (a smaller `keep` than a previous run's leaves some).
fn rotated_count(dir: &Path, name: &str) -> u32 {
  let stem = crate::state::record::file_stem(name);
  let prefix = format!("{stem}.");
  std::fs::read_dir(dir)
    .map(|entries| {
      entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
          let file = e.file_name().to_string_lossy().into_owned();
          file
            .strip_prefix(&prefix)?
            .strip_suffix(".log")?
            .parse::<u32>()
            .ok()
        })
        .max()
        .unwrap_or(0)
    })
    .unwrap_or(0)
}

/// The names of the logs in `dir` (`<name>.log` files), sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
  let mut names: Vec<String> = std::fs::read_dir(dir)
    .map(|entries| {
      entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
          let file = e.file_name().to_string_lossy().into_owned();
          let stem = file.strip_suffix(".log")?;
          // `<name>.<n>.log` is a rotated file of `<name>`.
          let rotated = stem
            .rsplit_once('.')
            .is_some_and(|(_, n)| n.parse::<u32>().is_ok());
          (!rotated).then(|| stem.to_string())
        })
        .collect()
    })
    .unwrap_or_default();
  names.sort();
  names
}

#[cfg(test)]
mod tests;
