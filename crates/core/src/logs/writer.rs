//! The one writer thread of the process: it takes framed lines from a bounded queue, appends them to their
//! log files in batches, and rotates a file by renaming before a line would take it past its size. The
//! queued pieces are written where they are, with vectored writes (no copy into a batch buffer). Writes
//! are whole lines: a write that fails (a full disk) is cut back to where the file ended, so no half line is
//! left for the next one to continue.

use super::{file_of, Log};
use std::fs;
use std::io::{IoSlice, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};

/// Bytes of framed lines waiting for the writer, over every backend of the process; beyond it lines are
/// dropped. (Counted in lines, 16 Ki lines, it was ~2 MB of 100-byte lines: a backend writing as fast as it
/// could filled it while the writer waited for the CPU.) 16 MiB still overflowed in one 200 MB run of five
/// at load ~2 (bench/logs.js, a backend writing 770 MB/s); the peaks seen otherwise were 1.4-9.6 MB. The
/// memory is taken only while the writer is behind, and given back as it catches up (but for the spare
/// buffers' 4 MiB, let go after 1 s idle): docs/performance.md, "Log throughput, third pass".
const QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Bytes taken from the queue at most before they are written.
const BATCH_BYTES: usize = 1024 * 1024;
/// When the writer is ahead (its last batch was smaller than `TRICKLE_BYTES`), it lets the next batch
/// gather this long after its first line. Woken per line, it cost the pipe reader a futex wake per line and itself a folder
/// check, an open and a write per line: a backend writing as fast as it could was slowed to 17 MB/s
/// (bench/logs.js; 84 MB/s with `logs: false`). A line reaches its file at most this much later.
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);
/// A batch smaller than this is a trickle, worth gathering for `LINGER`. A larger one means output comes in
/// full pipe reads (~85 KB framed each): then the writer goes on at once. Lingering after every batch
/// that was not full (1 MiB) left it asleep while a backend writing 600 MB/s filled the queue, and lines
/// were dropped (bench/logs.js).
const TRICKLE_BYTES: usize = 64 * 1024;

enum Job {
  /// Framed lines of one log (each ends with its newline), and how many.
  Lines(Arc<Log>, Vec<u8>, usize),
  Flush(mpsc::Sender<()>),
}

/// Bytes queued and not yet taken by the writer.
static QUEUED: AtomicUsize = AtomicUsize::new(0);

/// Buffers of written pieces, at most this many bytes of them, kept for the next reads to be framed into:
/// a fresh buffer per read (~85 KB for a full pipe) cost its page faults every time, a quarter of the pipe
/// reader's time with a backend writing as fast as it could (freed buffers went back to the system).
const SPARE_BYTES: usize = 4 * 1024 * 1024;
/// Spare buffers are let go once the writer had nothing to do for this long.
const SPARE_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn spare() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
  SPARE.lock().unwrap_or_else(|e| e.into_inner())
}

/// An empty buffer to frame lines into: a spare one (of the most recently written pieces), or a new one.
pub fn buffer(size: usize) -> Vec<u8> {
  let mut buf = spare().pop().unwrap_or_default();
  buf.reserve(size);
  buf
}

/// Keeps written pieces' buffers for `buffer`, up to `SPARE_BYTES` in all.
fn give_back(pieces: Vec<Vec<u8>>) {
  let mut spare = spare();
  let mut kept: usize = spare.iter().map(Vec::capacity).sum();
  for mut piece in pieces {
    if kept + piece.capacity() > SPARE_BYTES {
      break;
    }
    kept += piece.capacity();
    piece.clear();
    spare.push(piece);
  }
}

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
  loop {
    // Idle with spare buffers: they go after a while (the memory of a burst is not kept for good).
    let first = if spare().is_empty() {
      rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
    } else {
      rx.recv_timeout(SPARE_IDLE)
    };
    let first = match first {
      Ok(job) => job,
      Err(RecvTimeoutError::Timeout) => {
        *spare() = Vec::new();
        continue;
      }
      Err(RecvTimeoutError::Disconnected) => return,
    };
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
    ahead = bytes < TRICKLE_BYTES;
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
      if let Err(e) = append(&log, &chunks) {
        log.drop_lines(count as u64, &e);
      }
      give_back(chunks);
    }
    for done in flushes {
      let _ = done.send(());
    }
  }
}

/// Appends the chunks of framed lines (after a note of lines dropped before, if any), rotating as needed:
/// the whole lines that fit in the file go in one piece, the next line starts a new file.
fn append(log: &Log, chunks: &[Vec<u8>]) -> Result<(), String> {
  let Some((first, later)) = chunks.split_first() else {
    return Ok(());
  };
  make_folder(log).map_err(|e| e.to_string())?;
  let path = log.path();
  let shown = |e: std::io::Error| format!("{}: {e}", path.display());
  let flood = chunks.iter().map(Vec::len).sum::<usize>() >= TRICKLE_BYTES;
  let mut file = LogFile::open(log, &path, flood).map_err(shown)?;
  // The first line goes alone: once it went through, lines dropped before (if any) are told of in the file
  // and to the manager.
  let first_end = memchr::memchr(b'\n', first).map_or(first.len(), |i| i + 1);
  file.put(&first[..first_end]).map_err(shown)?;
  file.commit().map_err(shown)?;
  // Lines dropped because the queue was full: told of once the writer caught up, so that a flood longer
  // than the queue is one warning (and one note in the file), not one per batch written between drops.
  let note = if QUEUED.load(Ordering::SeqCst) <= QUEUE_BYTES / 4 {
    log.recovered()
  } else {
    None
  };
  if let Some(note) = &note {
    file.put_as_is(note);
  }
  file.put(&first[first_end..]).map_err(shown)?;
  for chunk in later {
    file.put(chunk).map_err(shown)?;
  }
  file.commit().map_err(shown)
}

/// A log file being appended to: the pieces of framed lines waiting to be written, and its size with them.
struct LogFile<'a, 'p> {
  log: &'a Log,
  path: &'p Path,
  file: fs::File,
  size: u64,
  pieces: Vec<&'a [u8]>,
  /// The file's size before the pieces.
  written: u64,
  /// Lines come in a flood: each file's blocks are reserved at once.
  flood: bool,
}

impl<'a, 'p> LogFile<'a, 'p> {
  fn open(log: &'a Log, path: &'p Path, flood: bool) -> std::io::Result<LogFile<'a, 'p>> {
    let file = open(path)?;
    let meta = file.metadata()?;
    if flood {
      reserve(&file, &meta, log.config.max_bytes);
    }
    let size = meta.len();
    Ok(LogFile {
      log,
      path,
      file,
      size,
      pieces: Vec::new(),
      written: size,
      flood,
    })
  }

  /// Queues whole framed lines, rotating first whenever the next line would take the file past its size
  /// (a line longer than that goes alone into a file of its own).
  fn put(&mut self, mut lines: &'a [u8]) -> std::io::Result<()> {
    let max = self.log.config.max_bytes;
    while !lines.is_empty() {
      let room = max.saturating_sub(self.size);
      if lines.len() as u64 <= room {
        self.put_as_is(lines);
        return Ok(());
      }
      // `room` < `lines.len()` here, so it fits a usize.
      let fit = memchr::memrchr(b'\n', &lines[..room as usize]).map_or(0, |i| i + 1);
      if fit > 0 {
        self.put_as_is(&lines[..fit]);
        lines = &lines[fit..];
      }
      if self.size > 0 {
        self.commit()?;
        rotate(&self.log.config.dir, &self.log.name, self.log.config.keep)?;
        self.file = open(self.path)?;
        if self.flood {
          reserve(
            &self.file,
            &self.file.metadata()?,
            self.log.config.max_bytes,
          );
        }
        self.size = 0;
        self.written = 0;
        continue;
      }
      let end = memchr::memchr(b'\n', lines).map_or(lines.len(), |i| i + 1);
      self.put_as_is(&lines[..end]);
      lines = &lines[end..];
    }
    Ok(())
  }

  fn put_as_is(&mut self, bytes: &'a [u8]) {
    self.pieces.push(bytes);
    self.size += bytes.len() as u64;
  }

  /// Writes the pieces whole or not at all (the file is cut back to its old end when a write fails).
  fn commit(&mut self) -> std::io::Result<()> {
    if self.pieces.is_empty() {
      return Ok(());
    }
    let result = write_all(&mut self.file, &self.pieces);
    self.pieces.clear();
    match result {
      Ok(()) => {
        self.written = self.size;
        Ok(())
      }
      Err(e) => {
        let _ = self.file.set_len(self.written);
        self.size = self.written;
        Err(e)
      }
    }
  }
}

/// One vectored write after another until every piece is written (the system takes at most `IOV_MAX`
/// pieces at once, and may take fewer bytes than offered).
fn write_all(file: &mut fs::File, pieces: &[&[u8]]) -> std::io::Result<()> {
  let mut slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
  let mut left = &mut slices[..];
  while !left.is_empty() {
    match file.write_vectored(left) {
      Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
      Ok(n) => IoSlice::advance_slices(&mut left, n),
      Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
      Err(e) => return Err(e),
    }
  }
  Ok(())
}

/// The log folder, checked like a state folder. It is made with its parents for the first line only: a
/// folder removed while the app runs (a test's temporary folder, a user's cleanup) is made again only if
/// its parent is still there, so a late line cannot bring back a tree someone deleted.
fn make_folder(log: &Log) -> crate::error::Result<()> {
  use crate::state::dir::{check_private_dir, ensure_private_dir, Holds};
  let dir = &log.config.dir;
  if !log
    .folder_made
    .swap(true, std::sync::atomic::Ordering::SeqCst)
  {
    return ensure_private_dir(dir, Holds::Logs);
  }
  if check_private_dir(dir, Holds::Logs)? {
    return Ok(());
  }
  match dir.parent() {
    Some(parent) if parent.is_dir() => ensure_private_dir(dir, Holds::Logs),
    _ => Err(crate::error::PmError::folder(
      "log folder",
      dir,
      "it was removed with its parent folder while the app ran",
    )),
  }
}

/// Reserves the next blocks of a log file, up to `RESERVE_AHEAD` past its end and never past its rotation
/// size, keeping its size (Linux: `fallocate`), once fewer than half of those are: appended to in a flood,
/// the file system then allocates in large pieces rather than page by page, a tenth of the writer's time
/// (docs/performance.md, "Log throughput, third pass"). The space is what the file may take anyway. Where
/// it cannot be (another file system, a full disk), the file is written as it would have been.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn reserve(file: &fs::File, meta: &fs::Metadata, max_bytes: u64) {
  use std::os::unix::fs::MetadataExt;
  let held = meta.blocks().saturating_mul(512);
  let end = max_bytes.min(meta.len() + RESERVE_AHEAD);
  if held < max_bytes.min(meta.len() + RESERVE_AHEAD / 2) {
    let _ = rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, end);
  }
}

/// How far past its end a log file written in a flood has its blocks reserved.
#[cfg(any(target_os = "linux", target_os = "android"))]
const RESERVE_AHEAD: u64 = 16 * 1024 * 1024;

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn reserve(_file: &fs::File, _meta: &fs::Metadata, _max_bytes: u64) {}

/// Deletes a rotated file. On Unix its name goes at once and the file itself when another thread closes it:
/// freeing the pages of 10 MB not yet on the disk was a fifth of the writer's time in a flood
/// (docs/performance.md, "Log throughput, third pass"). On Windows a file open elsewhere keeps its name
/// until closed, and the rename after would fail: it is deleted here.
fn remove(path: &Path) -> std::io::Result<()> {
  #[cfg(unix)]
  let held = {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    crate::state::record::no_follow(&mut options, 0o600);
    options.open(path).ok()
  };
  gone_is_fine(fs::remove_file(path))?;
  #[cfg(unix)]
  if let Some(file) = held {
    // Without a thread, the file is closed here.
    let _ = std::thread::Builder::new()
      .name("bpm-logs-rm".into())
      .stack_size(crate::blocking::THREAD_STACK)
      .spawn(move || drop(file));
  }
  Ok(())
}

fn open(path: &Path) -> std::io::Result<fs::File> {
  let mut options = fs::OpenOptions::new();
  options.append(true).create(true);
  crate::state::record::no_follow(&mut options, 0o600);
  let file = options.open(path)?;
  own_file(&file)?;
  Ok(file)
}

/// A log file is written only when it is a regular file with no other name: a hard link to a file elsewhere
/// is refused, as a symbolic link is by the open (a FIFO with no reader fails the nonblocking open).
#[cfg(unix)]
fn own_file(file: &fs::File) -> std::io::Result<()> {
  use std::os::unix::fs::MetadataExt;
  let meta = file.metadata()?;
  if !meta.is_file() {
    return Err(std::io::Error::other(
      "it is not a regular file, so it is not written",
    ));
  }
  if meta.nlink() > 1 {
    return Err(std::io::Error::other(
      "it is a hard link to a file with another name, so it is not written",
    ));
  }
  Ok(())
}

#[cfg(not(unix))]
fn own_file(_file: &fs::File) -> std::io::Result<()> {
  Ok(())
}

fn gone_is_fine(result: std::io::Result<()>) -> std::io::Result<()> {
  match result {
    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
    other => other,
  }
}

/// `<name>.log` → `<name>.1.log` → … → `<name>.<keep>.log`, the oldest deleted (with `keep` 0, the log
/// itself starts over), and any past `<name>.<keep>.log`.
fn rotate(dir: &Path, name: &str, keep: u32) -> std::io::Result<()> {
  // Rotated files past `keep`, left by a run with a larger one, go too (up to the first one missing): at
  // most `keep` are left. One lstat per rotation when there are none.
  let mut n = keep.saturating_add(1);
  while fs::symlink_metadata(file_of(dir, name, n)).is_ok() {
    remove(&file_of(dir, name, n))?;
    n = n.saturating_add(1);
  }
  if keep == 0 {
    return remove(&file_of(dir, name, 0));
  }
  remove(&file_of(dir, name, keep))?;
  for n in (1..keep).rev() {
    gone_is_fine(fs::rename(file_of(dir, name, n), file_of(dir, name, n + 1)))?;
  }
  gone_is_fine(fs::rename(file_of(dir, name, 0), file_of(dir, name, 1)))
}
