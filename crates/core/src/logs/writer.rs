//! The one writer thread of the process: it takes framed lines from a bounded queue, appends them to their
//! log files in batches, and rotates a file by renaming before a line would take it past its size. Writes
//! are whole lines: a write that fails (a full disk) is cut back to where the file ended, so no half line is
//! left for the next one to continue.

use super::{file_of, Log};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};

/// Lines waiting for the writer, over every backend of the process; beyond it lines are dropped.
const QUEUE_LINES: usize = 16 * 1024;
/// Lines taken from the queue at most before they are written.
const BATCH_LINES: usize = 1024;
/// When the writer is ahead (its last batch was not full), it lets the next batch gather this long after
/// its first line. Woken per line, it cost the pipe reader a futex wake per line and itself a folder
/// check, an open and a write per line: a backend writing as fast as it could was slowed to 17 MB/s
/// (bench/logs.js; 84 MB/s with `logs: false`). A line reaches its file at most this much later.
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

enum Job {
  Line(Arc<Log>, Vec<u8>),
  Flush(mpsc::Sender<()>),
}

fn sender() -> Option<&'static SyncSender<Job>> {
  static QUEUE: OnceLock<Option<SyncSender<Job>>> = OnceLock::new();
  QUEUE
    .get_or_init(|| {
      let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
      std::thread::Builder::new()
        .name("bpm-logs".into())
        .stack_size(crate::blocking::THREAD_STACK)
        .spawn(move || run(rx))
        .ok()
        .map(|_| tx)
    })
    .as_ref()
}

/// Queues a line; false when it had to be dropped (the queue is full, or there is no writer).
pub fn queue(log: Arc<Log>, line: Vec<u8>) -> bool {
  match sender() {
    Some(tx) => !matches!(
      tx.try_send(Job::Line(log, line)),
      Err(TrySendError::Full(_) | TrySendError::Disconnected(_))
    ),
    None => false,
  }
}

/// Returns once every line queued before the call is written or dropped. Blocking.
pub fn flush() {
  let (done, wait) = mpsc::channel();
  if sender().is_some_and(|tx| tx.send(Job::Flush(done)).is_ok()) {
    let _ = wait.recv();
  }
}

fn run(rx: Receiver<Job>) {
  let mut ahead = true;
  while let Ok(first) = rx.recv() {
    if ahead && matches!(first, Job::Line(..)) {
      std::thread::sleep(LINGER);
    }
    let mut jobs = vec![first];
    while jobs.len() < BATCH_LINES {
      match rx.try_recv() {
        Ok(job) => jobs.push(job),
        Err(_) => break,
      }
    }
    ahead = jobs.len() < BATCH_LINES;
    let mut batches: Vec<(Arc<Log>, Vec<Vec<u8>>)> = Vec::new();
    let mut flushes = Vec::new();
    for job in jobs {
      match job {
        Job::Line(log, line) => match batches.iter_mut().find(|(l, _)| Arc::ptr_eq(l, &log)) {
          Some((_, lines)) => lines.push(line),
          None => batches.push((log, vec![line])),
        },
        Job::Flush(done) => flushes.push(done),
      }
    }
    for (log, lines) in batches {
      write_lines(&log, lines);
    }
    for done in flushes {
      let _ = done.send(());
    }
  }
}

fn write_lines(log: &Log, mut lines: Vec<Vec<u8>>) {
  let count = lines.len();
  if let Err(e) = append(log, &mut lines) {
    for _ in 0..count {
      log.drop_line(&e);
    }
  }
}

/// Appends the lines (after a note of lines dropped before, if any), rotating as needed.
fn append(log: &Log, lines: &mut Vec<Vec<u8>>) -> Result<(), String> {
  let dir = &log.config.dir;
  make_folder(log).map_err(|e| e.to_string())?;
  let path = log.path();
  let shown = |e: std::io::Error| format!("{}: {e}", path.display());
  let mut file = open(&path).map_err(shown)?;
  let mut size = file.metadata().map_err(shown)?.len();
  let mut pending: Vec<u8> = Vec::new();
  let mut first_write = true;
  for line in lines.drain(..) {
    let len = line.len() as u64;
    if size > 0 && size + len > log.config.max_bytes {
      commit(&mut file, &mut pending, size).map_err(shown)?;
      drop(file);
      rotate(dir, &log.name, log.config.keep).map_err(shown)?;
      file = open(&path).map_err(shown)?;
      size = 0;
    }
    pending.extend_from_slice(&line);
    size += len;
    if first_write {
      first_write = false;
      commit(&mut file, &mut pending, size).map_err(shown)?;
      // The first line went through: if lines were dropped before, say so in the file and to the manager.
      if let Some(note) = log.recovered() {
        size += note.len() as u64;
        pending.extend_from_slice(&note);
      }
    }
  }
  commit(&mut file, &mut pending, size).map_err(shown)
}

/// The log folder, checked like a state folder. It is made with its parents for the first line only: a
/// folder removed while the app runs (a test's temporary folder, a user's cleanup) is made again only if
/// its parent is still there, so a late line cannot bring back a tree someone deleted.
fn make_folder(log: &Log) -> crate::error::Result<()> {
  let dir = &log.config.dir;
  if !log
    .folder_made
    .swap(true, std::sync::atomic::Ordering::SeqCst)
  {
    return crate::state::dir::ensure_state_dir(dir);
  }
  if crate::state::dir::check_state_dir(dir)? {
    return Ok(());
  }
  match dir.parent() {
    Some(parent) if parent.is_dir() => crate::state::dir::ensure_state_dir(dir),
    _ => Err(crate::error::PmError::state_dir(
      dir,
      "it was removed with its parent folder while the app ran",
    )),
  }
}

/// Writes `pending` whole or not at all (the file is cut back to its old end when a write fails).
fn commit(file: &mut fs::File, pending: &mut Vec<u8>, size_after: u64) -> std::io::Result<()> {
  if pending.is_empty() {
    return Ok(());
  }
  let before = size_after - pending.len() as u64;
  let result = file.write_all(pending);
  pending.clear();
  if result.is_err() {
    let _ = file.set_len(before);
  }
  result
}

fn open(path: &Path) -> std::io::Result<fs::File> {
  let mut options = fs::OpenOptions::new();
  options.append(true).create(true);
  crate::state::record::no_follow(&mut options, 0o600);
  options.open(path)
}

/// `<name>.log` → `<name>.1.log` → … → `<name>.<keep>.log`, the oldest deleted (with `keep` 0, the log
/// itself starts over).
fn rotate(dir: &Path, name: &str, keep: u32) -> std::io::Result<()> {
  let gone_is_fine = |r: std::io::Result<()>| match r {
    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
    other => other,
  };
  if keep == 0 {
    return gone_is_fine(fs::remove_file(file_of(dir, name, 0)));
  }
  gone_is_fine(fs::remove_file(file_of(dir, name, keep)))?;
  for n in (1..keep).rev() {
    gone_is_fine(fs::rename(file_of(dir, name, n), file_of(dir, name, n + 1)))?;
  }
  gone_is_fine(fs::rename(file_of(dir, name, 0), file_of(dir, name, 1)))
}
