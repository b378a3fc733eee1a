//! The one writer thread of the process: it takes framed lines from a bounded queue, appends them to their
//! log files in batches, and rotates a file by renaming before a line would take it past its size. Writes
//! are whole lines: a write that fails (a full disk) is cut back to where the file ended, so no half line is
//! left for the next one to continue.

use super::{file_of, Log};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, OnceLock};

/// Bytes of framed lines waiting for the writer, over every backend of the process; beyond it lines are
/// dropped. (Counted in lines, 16 Ki lines, it was ~2 MB of 100-byte lines: a backend writing as fast as it
/// could filled it while the writer waited for the CPU.)
const QUEUE_BYTES: usize = 16 * 1024 * 1024;
/// Bytes taken from the queue at most before they are written.
const BATCH_BYTES: usize = 1024 * 1024;
/// When the writer is ahead (its last batch was not full), it lets the next batch gather this long after
/// its first line. Woken per line, it cost the pipe reader a futex wake per line and itself a folder
/// check, an open and a write per line: a backend writing as fast as it could was slowed to 17 MB/s
/// (bench/logs.js; 84 MB/s with `logs: false`). A line reaches its file at most this much later.
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

enum Job {
  /// Framed lines of one log (each ends with its newline), and how many.
  Lines(Arc<Log>, Vec<u8>, usize),
  Flush(mpsc::Sender<()>),
}

/// Bytes queued and not yet taken by the writer.
static QUEUED: AtomicUsize = AtomicUsize::new(0);

fn sender() -> Option<&'static Sender<Job>> {
  static QUEUE: OnceLock<Option<Sender<Job>>> = OnceLock::new();
  QUEUE
    .get_or_init(|| {
      let (tx, rx) = mpsc::channel();
      std::thread::Builder::new()
        .name("bpm-logs".into())
        .stack_size(crate::blocking::THREAD_STACK)
        .spawn(move || run(rx))
        .ok()
        .map(|_| tx)
    })
    .as_ref()
}

fn send(job: Job) -> bool {
  sender().is_some_and(|tx| tx.send(job).is_ok())
}

/// Queues framed lines (`count` of them); false when they had to be dropped (the queue is full, or there
/// is no writer).
pub fn queue(log: Arc<Log>, lines: Vec<u8>, count: usize) -> bool {
  let len = lines.len();
  if QUEUED.fetch_add(len, Ordering::SeqCst) + len > QUEUE_BYTES {
    QUEUED.fetch_sub(len, Ordering::SeqCst);
    return false;
  }
  if send(Job::Lines(log, lines, count)) {
    true
  } else {
    QUEUED.fetch_sub(len, Ordering::SeqCst);
    false
  }
}

/// Returns once every line queued before the call is written or dropped. Blocking.
pub fn flush() {
  let (done, wait) = mpsc::channel();
  if send(Job::Flush(done)) {
    let _ = wait.recv();
  }
}

fn run(rx: Receiver<Job>) {
  let mut ahead = true;
  // Kept between batches: a fresh megabyte each time cost its page faults again.
  let mut pending: Vec<u8> = Vec::new();
  while let Ok(first) = rx.recv() {
    if ahead && matches!(first, Job::Lines(..)) {
      std::thread::sleep(LINGER);
    }
    let mut jobs = vec![first];
    let mut bytes = 0;
    loop {
      if let Some(Job::Lines(_, lines, _)) = jobs.last() {
        bytes += lines.len();
        QUEUED.fetch_sub(lines.len(), Ordering::SeqCst);
      }
      if bytes >= BATCH_BYTES {
        break;
      }
      match rx.try_recv() {
        Ok(job) => jobs.push(job),
        Err(_) => break,
      }
    }
    ahead = bytes < BATCH_BYTES;
    let mut batches: Vec<(Arc<Log>, Vec<Vec<u8>>, usize)> = Vec::new();
    let mut flushes = Vec::new();
    for job in jobs {
      match job {
        Job::Lines(log, lines, count) => {
          match batches.iter_mut().find(|(l, _, _)| Arc::ptr_eq(l, &log)) {
            Some((_, all, n)) => {
              all.push(lines);
              *n += count;
            }
            None => batches.push((log, vec![lines], count)),
          }
        }
        Job::Flush(done) => flushes.push(done),
      }
    }
    for (log, chunks, count) in batches {
      if let Err(e) = append(&log, chunks, &mut pending) {
        log.drop_lines(count as u64, &e);
      }
    }
    if pending.capacity() > 4 * BATCH_BYTES {
      pending = Vec::new();
    }
    for done in flushes {
      let _ = done.send(());
    }
  }
}

/// Appends the chunks of framed lines (after a note of lines dropped before, if any), rotating as needed:
/// a chunk that fits in the file goes whole, one that does not line by line.
fn append(log: &Log, chunks: Vec<Vec<u8>>, pending: &mut Vec<u8>) -> Result<(), String> {
  pending.clear();
  let dir = &log.config.dir;
  make_folder(log).map_err(|e| e.to_string())?;
  let path = log.path();
  let shown = |e: std::io::Error| format!("{}: {e}", path.display());
  let mut file = open(&path).map_err(shown)?;
  let mut size = file.metadata().map_err(shown)?.len();
  let mut first_write = true;
  for chunk in &chunks {
    if !first_write && size + chunk.len() as u64 <= log.config.max_bytes {
      pending.extend_from_slice(chunk);
      size += chunk.len() as u64;
      continue;
    }
    for line in chunk.split_inclusive(|&b| b == b'\n') {
      let len = line.len() as u64;
      if size > 0 && size + len > log.config.max_bytes {
        commit(&mut file, pending, size).map_err(shown)?;
        drop(file);
        rotate(dir, &log.name, log.config.keep).map_err(shown)?;
        file = open(&path).map_err(shown)?;
        size = 0;
      }
      pending.extend_from_slice(line);
      size += len;
      if first_write {
        first_write = false;
        commit(&mut file, pending, size).map_err(shown)?;
        // The first line went through: if lines were dropped before, say so in the file and to the manager.
        if let Some(note) = log.recovered() {
          size += note.len() as u64;
          pending.extend_from_slice(&note);
        }
      }
    }
  }
  commit(&mut file, pending, size).map_err(shown)
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
