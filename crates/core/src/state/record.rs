//! PID records (docs/api.md, "PID records"): one JSON file per running backend, `<stateDir>/<name>-<pid>.json`,
//! written atomically (temporary file + rename) with mode 0600 in a folder only the user can write. A record
//! is only a hint: before anything is signalled, the live process must match its pid, start time and
//! executable (see `os::process`). Every record carries a marker field: a file without it is not ours and
//! is never deleted, whatever its name (docs/design.md §13).

use crate::error::{PmError, Result};
use crate::os::process::{self, Identity};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Who may have written a file, and how to open one without following a link: per platform, same names.
#[cfg(unix)]
#[path = "record/unix.rs"]
mod imp;
#[cfg(windows)]
#[path = "record/windows.rs"]
mod imp;

pub const RECORD_VERSION: u32 = 1;
/// The marker field's value: `"manager": "backend-process-manager"`.
pub const MARKER: &str = "backend-process-manager";
/// A record is a few hundred bytes; anything much larger is not one of ours.
const MAX_RECORD_BYTES: u64 = 64 * 1024;
/// File names stay well under the 255-byte limit of common file systems, whatever the name's script.
const MAX_NAME_BYTES_IN_FILE_NAME: usize = 180;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
  /// Always `MARKER`.
  pub manager: String,
  pub version: u32,
  pub name: String,
  pub pid: u32,
  pub port: u16,
  pub host: String,
  /// Epoch milliseconds.
  pub started_at: u64,
  pub exe: Option<String>,
  pub start_time: u64,
  pub owner_pid: u32,
  pub owner_start_time: u64,
  /// How many times the backend was restarted before this process.
  #[serde(default)]
  pub restarts: u32,
  /// The path its health is probed at.
  #[serde(default)]
  pub health_path: Option<String>,
  /// As its watchdog last found it (`None`: no verdict yet, or no watchdog).
  #[serde(default)]
  pub healthy: Option<bool>,
  /// A replica's: the public port of its backend (the balancer's, or the shared socket's).
  #[serde(default, skip_serializing_if = "Option::is_none")]
  pub replica_of: Option<u16>,
  /// The boot the record was written in (`process::boot_id`); missing in records of earlier versions and
  /// where the OS has none, and then the start time alone is checked.
  #[serde(default, skip_serializing_if = "Option::is_none")]
  pub boot_id: Option<String>,
}

impl Record {
  pub fn identity(&self) -> Identity {
    Identity {
      start_time: self.start_time,
      exe: self.exe.clone(),
    }
  }

  /// The owner (the app process that started the backend) is gone, or its pid now names another process.
  pub fn is_orphaned(&self) -> bool {
    let owner = Identity {
      start_time: self.owner_start_time,
      exe: None,
    };
    !process::matches(self.owner_pid, &owner)
  }

  /// Written in another boot of the machine: its start times name nothing now.
  pub fn of_another_boot(&self) -> bool {
    match (&self.boot_id, process::boot_id()) {
      (Some(recorded), Some(now)) => *recorded != now,
      _ => false,
    }
  }

  /// What is at the backend's pid now: the backend, its exit, or a stranger.
  pub fn backend(&self) -> process::AtPid {
    process::at_pid(self.pid, &self.identity())
  }

  fn validate(&self) -> std::result::Result<(), String> {
    if self.version != RECORD_VERSION {
      return Err(format!("unsupported record version {}", self.version));
    }
    if self.pid <= 1 {
      return Err(format!("pid {} cannot be a backend", self.pid));
    }
    if self.owner_pid == 0 {
      return Err("ownerPid 0 cannot be the app that started a backend".into());
    }
    if self.port == 0 {
      return Err("port 0".into());
    }
    crate::options::validate_name(&self.name).map_err(|e| e.to_string())
  }
}

/// The part of a record's file name that stands for its backend's name: the name itself, or for a very
/// long one (100 characters of a 3- or 4-byte script) its start and a hash of the rest.
pub fn file_stem(name: &str) -> String {
  if name.len() <= MAX_NAME_BYTES_IN_FILE_NAME {
    return name.to_string();
  }
  let mut cut = MAX_NAME_BYTES_IN_FILE_NAME - 10;
  while !name.is_char_boundary(cut) {
    cut -= 1;
  }
  // FNV-1a: stable across versions and platforms, unlike std's hasher.
  let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
    (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
  });
  format!("{}~{:08x}", &name[..cut], hash as u32)
}

pub fn record_path(dir: &Path, name: &str, pid: u32) -> PathBuf {
  dir.join(format!("{}-{pid}.json", file_stem(name)))
}

/// Writes the record atomically: a 0600 temporary file in the same folder, renamed over the final name, so a
/// reader never sees half a record. Not fsynced: a record is read after the *app* died, and the kernel's page
/// cache outlives any process; only a crash of the machine loses it, and that ends every backend too (a
/// record of another boot is stale anyway, decision 24). The fsync cost 2–3 ms on the way to `ready` (the
/// record is rewritten there) and held a spawner thread while a child waited at its gate.
pub fn write_record(dir: &Path, record: &Record) -> Result<PathBuf> {
  let written = rewrite_record(dir, record, false, None)?;
  if let Some(leftover) = written.leftover {
    let _ = fs::remove_file(leftover);
  }
  Ok(written.path)
}

/// What a write left: the record's path, and (after an exchange) the file that now holds the previous
/// record, under the temporary name, for the caller to delete when it has the time.
pub struct Written {
  pub path: PathBuf,
  pub leftover: Option<PathBuf>,
}

/// An empty temporary record file made ahead of the write that will fill it (the rewrite at `ready`),
/// which then skips the create: 0.05 ms of ext4 here. Named like any temporary record file: a cleanup
/// removes it once its writer is gone.
pub struct Spare {
  file: fs::File,
  path: PathBuf,
}

impl Spare {
  /// The temporary file of the record of `name` at `pid`; `None` when it cannot be made (then the write
  /// makes its own).
  pub fn make(dir: &Path, name: &str, pid: u32) -> Option<Spare> {
    let path = temp_path(dir, name, pid);
    let file = create_temp(&path).ok()?;
    Some(Spare { file, path })
  }

  /// Deletes it, unused.
  pub fn discard(self) {
    drop(self.file);
    let _ = fs::remove_file(&self.path);
  }
}

fn create_temp(path: &Path) -> std::io::Result<fs::File> {
  let mut options = fs::OpenOptions::new();
  options.write(true).create_new(true);
  no_follow(&mut options, 0o600);
  options.open(path)
}

/// Like `write_record`, into `spare` when there is one. With `over_existing` (the record was written
/// before) the new file takes the final name by an exchange where the OS offers one (see
/// `imp::exchange`): as atomic for a reader as the rename, without what ext4 and btrfs do on a rename
/// over a file (start writing its data out: 0.15–0.9 ms here, on the way to `ready`). The previous record
/// is then left under the temporary name.
pub fn rewrite_record(
  dir: &Path,
  record: &Record,
  over_existing: bool,
  spare: Option<Spare>,
) -> Result<Written> {
  crate::state::dir::ensure_state_dir(dir)?;
  let path = record_path(dir, &record.name, record.pid);
  let tmp = temp_path(dir, &record.name, record.pid);
  let body = serde_json::to_vec_pretty(record)
    .map_err(|e| PmError::Internal(format!("a record did not serialize: {e}")))?;
  let spare = match spare {
    Some(spare) if spare.path == tmp => Some(spare.file),
    other => {
      if let Some(other) = other {
        other.discard();
      }
      None
    }
  };
  let from_spare = spare.is_some();
  let write = |file: Option<fs::File>| -> std::io::Result<bool> {
    let mut file = match file {
      Some(file) => file,
      None => create_temp(&tmp)?,
    };
    file.write_all(&body)?;
    drop(file);
    if over_existing && imp::exchange(&tmp, &path)? {
      return Ok(true);
    }
    imp::replace(&tmp, &path).map(|()| false)
  };
  // A spare deleted meanwhile (by hand) fails the rename: the write is made again without it.
  let written = match write(spare) {
    Err(e) if from_spare && e.kind() == std::io::ErrorKind::NotFound => write(None),
    other => other,
  };
  match written {
    Ok(exchanged) => Ok(Written {
      path,
      leftover: exchanged.then_some(tmp),
    }),
    Err(e) => {
      let _ = fs::remove_file(&tmp);
      Err(PmError::state_dir_io(
        dir,
        "a PID record cannot be written",
        e,
      ))
    }
  }
}

/// `.<stem>-<pid>.<writer pid>.<writer start time>.tmp`: the writer is named, so that a cleanup can tell
/// the temporary file of an app killed mid-write (writer gone, or its pid reused) from one being written.
fn temp_path(dir: &Path, name: &str, pid: u32) -> PathBuf {
  let (writer, start_time) = (process::own_pid(), process::own_start_time());
  dir.join(format!(
    ".{}-{pid}.{writer}.{start_time}.tmp",
    file_stem(name)
  ))
}

/// Deletes the temporary record files (of backend `name`, or of every name) whose writer is gone: an app
/// killed while it wrote a record leaves one, which nothing else would ever remove. A file whose writer
/// pid now names a process started at another time is a dead writer's too. Files named otherwise (and
/// symlinks, other users' files) are left alone. Blocking.
pub fn remove_dead_temp_files(dir: &Path, name: Option<&str>) {
  let Ok(read) = fs::read_dir(dir) else {
    return;
  };
  let stem = name.map(file_stem);
  for entry in read.flatten() {
    let file = entry.file_name();
    let Some((record_stem, writer, start_time)) = file.to_str().and_then(parse_temp_name) else {
      continue;
    };
    if stem.as_deref().is_some_and(|s| s != record_stem) {
      continue;
    }
    let writer_alive = process::matches(
      writer,
      &Identity {
        start_time,
        exe: None,
      },
    );
    if writer_alive || !is_own_plain_file(&entry.path()) {
      continue;
    }
    let _ = fs::remove_file(entry.path());
  }
}

/// The record's stem, the writer's pid and start time of a temporary record file's name.
fn parse_temp_name(file: &str) -> Option<(&str, u32, u64)> {
  let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
  let mut parts = file
    .strip_prefix('.')?
    .strip_suffix(".tmp")?
    .rsplitn(3, '.');
  let (start_time, writer, record) = (parts.next()?, parts.next()?, parts.next()?);
  let (stem, pid) = record.rsplit_once('-')?;
  if !(digits(start_time) && digits(writer) && digits(pid)) {
    return None;
  }
  Some((stem, writer.parse().ok()?, start_time.parse().ok()?))
}

/// A regular file (not a symlink) of this user.
fn is_own_plain_file(path: &Path) -> bool {
  let Ok(meta) = fs::symlink_metadata(path) else {
    return false;
  };
  imp::is_own(&meta) && meta.file_type().is_file()
}

/// Removes a record file; one already gone is fine.
pub fn delete_record(path: &Path) -> std::io::Result<()> {
  match fs::remove_file(path) {
    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
    _ => Ok(()),
  }
}

/// Why a file of the state folder is not a usable record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
  /// Not one of ours (no marker, not JSON): reported, never touched.
  Foreign(String),
  /// The file is not safe to act on (a symlink, another user's file, writable by others): left alone.
  Untrusted(String),
  /// One of ours, but broken (another version, a bad field): it may be deleted.
  Invalid(String),
}

impl Problem {
  pub fn reason(&self) -> &str {
    match self {
      Problem::Foreign(r) | Problem::Untrusted(r) | Problem::Invalid(r) => r,
    }
  }
}

/// One file of the state folder, parsed or with the reason it cannot be used.
#[derive(Debug)]
pub struct Entry {
  pub path: PathBuf,
  pub record: std::result::Result<Record, Problem>,
}

pub(crate) fn no_follow(options: &mut fs::OpenOptions, mode: u32) {
  imp::no_follow(options, mode);
}

/// Opens `path` for reading without following a symbolic link (refused on Unix, opened as itself on
/// Windows) and without blocking on a FIFO in its place.
pub(crate) fn open_no_follow(path: &Path) -> std::io::Result<fs::File> {
  let mut options = fs::OpenOptions::new();
  options.read(true);
  no_follow(&mut options, 0);
  options.open(path)
}

/// Reads a record without following a symlink, and only from a regular file that this user owns and that
/// no one else can write.
pub fn read_record(path: &Path) -> std::result::Result<Record, Problem> {
  let file = open_no_follow(path).map_err(|e| {
    if imp::is_link_refused(&e) {
      return Problem::Untrusted("it is a symbolic link".into());
    }
    Problem::Foreign(e.to_string())
  })?;
  let meta = file
    .metadata()
    .map_err(|e| Problem::Foreign(e.to_string()))?;
  if imp::opened_a_link(&meta) {
    return Err(Problem::Untrusted(
      "it is a symbolic link or junction".into(),
    ));
  }
  if !meta.is_file() {
    return Err(Problem::Untrusted("it is not a regular file".into()));
  }
  imp::check_private(&file, &meta)?;
  if meta.len() > MAX_RECORD_BYTES {
    return Err(Problem::Foreign("it is too large to be a record".into()));
  }
  let mut text = String::new();
  file
    .take(MAX_RECORD_BYTES)
    .read_to_string(&mut text)
    .map_err(|e| Problem::Foreign(e.to_string()))?;
  parse_record(&text)
}

/// Locks a record file against other cleaners (another app instance, the CLI) while its orphan is being
/// terminated, so exactly one of them signals it. `None` when another process holds the lock or the file
/// is gone.
pub fn lock_record(path: &Path) -> Option<fs::File> {
  let file = open_no_follow(path).ok()?;
  file.try_lock().ok()?;
  Some(file)
}

/// A record of ours, a broken record of ours (`Invalid`), or someone else's file (`Foreign`).
pub fn parse_record(text: &str) -> std::result::Result<Record, Problem> {
  // Records are renamed into place whole, but not flushed (`write_record`): after a machine crash or a
  // power loss a record written in its last seconds can come back empty, or as zeros, under its name. No
  // writer leaves such a file otherwise, and deleting it loses nothing: it is ours to delete, where any
  // other file without the marker is left alone.
  if text.bytes().all(|b| b == 0) {
    return Err(Problem::Invalid(
      "it is empty (a write cut short by a machine crash or power loss)".into(),
    ));
  }
  let value: serde_json::Value = serde_json::from_str(text).map_err(|_| {
    if opens_with_marker(text) {
      Problem::Invalid(
        "it is not JSON, though it opens as a record of ours (cut short or damaged)".into(),
      )
    } else {
      Problem::Foreign("it is not JSON".into())
    }
  })?;
  if value.get("manager").and_then(|m| m.as_str()) != Some(MARKER) {
    return Err(Problem::Foreign(format!(
      "it has no \"manager\": \"{MARKER}\" field, so it is not a PID record of this library"
    )));
  }
  let record: Record = serde_json::from_value(value)
    .map_err(|e| Problem::Invalid(format!("it is not a valid record: {e}")))?;
  record.validate().map_err(Problem::Invalid)?;
  Ok(record)
}

/// Whether `text` opens the way every record this library writes does, `{ "manager": "<MARKER>"` (the
/// first field; any whitespace): a file that does so and is not JSON is one of ours, cut short or damaged,
/// and may be deleted (API: "a record that cannot be parsed is deleted with a warning"); any other file
/// that is not JSON is left alone.
fn opens_with_marker(text: &str) -> bool {
  let rest = text.trim_start().strip_prefix('{').map(str::trim_start);
  let rest = rest
    .and_then(|r| r.strip_prefix("\"manager\""))
    .map(str::trim_start);
  let rest = rest.and_then(|r| r.strip_prefix(':')).map(str::trim_start);
  rest.is_some_and(|r| {
    r.strip_prefix('"')
      .is_some_and(|r| r.starts_with(&format!("{MARKER}\"")))
  })
}

/// Every file of `dir` named like a record (`<name>-<digits>.json`; optionally only those of backend
/// `name`), in file-name order. A missing folder has no records; a folder others can write to is refused
/// (`ERR_STATE_DIR`), as `startBackend` refuses it: anyone could have planted its records. Every read
/// and cleanup of a state folder passes here.
pub fn list_records(dir: &Path, name: Option<&str>) -> Result<Vec<Entry>> {
  if !crate::state::dir::check_state_dir(dir)? {
    return Ok(Vec::new());
  }
  let Ok(read) = fs::read_dir(dir) else {
    return Ok(Vec::new());
  };
  let stem = name.map(file_stem);
  let mut paths: Vec<PathBuf> = read
    .flatten()
    .map(|e| e.path())
    .filter(|p| is_record_file_name(p, stem.as_deref()))
    .collect();
  paths.sort();
  Ok(
    paths
      .into_iter()
      .map(|path| {
        let record = read_record(&path).and_then(|r| match name {
          Some(n) if r.name != n => Err(Problem::Foreign(format!(
            "it is the record of backend {:?}, not {n:?}",
            r.name
          ))),
          _ => Ok(r),
        });
        Entry { path, record }
      })
      .collect(),
  )
}

/// One record file, read only from a state folder that passes the same check as `list_records`.
pub fn read_record_in_state_dir(path: &Path) -> Result<std::result::Result<Record, Problem>> {
  let dir = match path.parent() {
    Some(dir) if !dir.as_os_str().is_empty() => dir,
    _ => Path::new("."),
  };
  crate::state::dir::check_state_dir(dir)?;
  Ok(read_record(path))
}

/// `<stem>-<pid>.json`, where the pid part is digits; temporary and hidden files are not records.
fn is_record_file_name(path: &Path, stem: Option<&str>) -> bool {
  let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
    return false;
  };
  let Some((record_stem, pid)) = file
    .strip_suffix(".json")
    .filter(|s| !s.starts_with('.'))
    .and_then(|s| s.rsplit_once('-'))
  else {
    return false;
  };
  !pid.is_empty()
    && pid.bytes().all(|b| b.is_ascii_digit())
    && stem.is_none_or(|n| n == record_stem)
}

#[cfg(test)]
pub(crate) mod tests {
  use super::*;

  pub(crate) fn sample(name: &str, pid: u32) -> Record {
    let me = process::identity(process::own_pid()).unwrap();
    Record {
      manager: MARKER.into(),
      version: RECORD_VERSION,
      name: name.into(),
      pid,
      port: 8000,
      host: "127.0.0.1".into(),
      started_at: 1,
      exe: me.exe.clone(),
      start_time: me.start_time,
      owner_pid: process::own_pid(),
      owner_start_time: me.start_time,
      restarts: 0,
      replica_of: None,
      health_path: Some("/health".into()),
      healthy: None,
      boot_id: process::boot_id(),
    }
  }

  /// A rewrite over the record takes its place in one step; the previous record is left under the
  /// temporary name (on Linux, where the exchange is made) for the caller to delete, and the folder then
  /// holds the new record alone.
  #[test]
  fn a_rewrite_replaces_the_record_and_says_what_it_left() {
    let dir = tempfile::tempdir().unwrap();
    let mut record = sample("api", 4244);
    record.exe = None;
    let first = rewrite_record(dir.path(), &record, false, None).unwrap();
    assert!(first.leftover.is_none());
    record.exe = Some("/usr/bin/server".into());
    let spare = Spare::make(dir.path(), &record.name, record.pid);
    assert!(spare.is_some());
    let second = rewrite_record(dir.path(), &record, true, spare).unwrap();
    assert_eq!(second.path, first.path);
    assert_eq!(read_record(&second.path).unwrap(), record);
    if let Some(leftover) = &second.leftover {
      assert_eq!(
        read_record(leftover).unwrap().exe,
        None,
        "the previous record"
      );
      fs::remove_file(leftover).unwrap();
    }
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    // `write_record` deletes what it left itself.
    record.port = 8001;
    write_record(dir.path(), &record).unwrap();
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    // The record gone (deleted by a cleanup meanwhile), a rewrite makes it again.
    fs::remove_file(&first.path).unwrap();
    let again = rewrite_record(dir.path(), &record, true, None).unwrap();
    assert!(again.leftover.is_none());
    assert_eq!(read_record(&again.path).unwrap(), record);
    // A spare deleted meanwhile: the write makes its own file.
    let spare = Spare::make(dir.path(), &record.name, record.pid).unwrap();
    fs::remove_file(&spare.path).unwrap();
    record.port = 8002;
    let without = rewrite_record(dir.path(), &record, true, Some(spare)).unwrap();
    if let Some(leftover) = without.leftover {
      fs::remove_file(leftover).unwrap();
    }
    assert_eq!(read_record(&without.path).unwrap(), record);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
  }

  /// Only its owner can read or write a record (Windows: the folder's private access is inherited).
  #[cfg(unix)]
  #[test]
  fn a_record_file_has_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = write_record(dir.path(), &sample("api", 4243)).unwrap();
    assert_eq!(
      fs::metadata(&path).unwrap().permissions().mode() & 0o777,
      0o600
    );
  }

  #[test]
  fn a_record_round_trips_and_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let record = sample("api", 4242);
    let path = write_record(dir.path(), &record).unwrap();
    assert_eq!(path, dir.path().join("api-4242.json"));
    assert_eq!(read_record(&path).unwrap(), record);
    assert_eq!(list_records(dir.path(), Some("api")).unwrap().len(), 1);
    assert!(list_records(dir.path(), Some("other")).unwrap().is_empty());
    delete_record(&path).unwrap();
    delete_record(&path).unwrap();
    assert!(list_records(dir.path(), None).unwrap().is_empty());
  }

  /// An app killed mid-write leaves a temporary file that only a cleanup removes: those of dead writers
  /// (gone, or their pid now another process) go; one being written, and files not named so, stay.
  // It spawns `true` for a pid that is surely dead (a Unix program).
  #[cfg(unix)]
  #[test]
  fn temporary_files_of_dead_writers_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let me = process::own_pid();
    let my_start = process::identity(me).unwrap().start_time;
    let mut exited = std::process::Command::new("true").spawn().unwrap();
    exited.wait().unwrap();
    let dead = exited.id();
    let touch = |name: &str| {
      let path = dir.path().join(name);
      fs::write(&path, "{").unwrap();
      path
    };
    let gone = touch(&format!(".api-4242.{dead}.1.tmp"));
    let reused = touch(&format!(".api-4242.{me}.{}.tmp", my_start + 1));
    let other_name = touch(&format!(".web-4242.{dead}.1.tmp"));
    let being_written = temp_path(dir.path(), "api", 4242);
    fs::write(&being_written, "{").unwrap();
    let not_ours = [
      touch(&format!(".api-4242.{dead}.tmp")),
      touch(&format!("api-4242.{dead}.1.tmp")),
      touch(".api.1.1.tmp"),
    ];
    remove_dead_temp_files(dir.path(), Some("api"));
    assert!(!gone.exists() && !reused.exists());
    assert!(being_written.exists() && other_name.exists());
    assert!(not_ours.iter().all(|p| p.exists()));
    remove_dead_temp_files(dir.path(), None);
    assert!(!other_name.exists() && being_written.exists());
  }

  #[test]
  fn a_name_of_100_characters_of_any_script_fits_in_a_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let name = "😀".repeat(100);
    let record = sample(&name, 4242);
    let path = write_record(dir.path(), &record).unwrap();
    assert!(path.file_name().unwrap().len() < 255);
    let listed = list_records(dir.path(), Some(&name)).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].record.as_ref().unwrap().name, name);
    assert_ne!(
      file_stem(&name),
      file_stem(&format!("{name}x")),
      "different names, different files"
    );
  }

  #[test]
  fn files_without_the_marker_are_foreign_and_broken_records_of_ours_invalid() {
    for text in [
      " ",
      "{",
      "null",
      "[1,2]",
      "{\"version\":1,\"pid\":5}",
      "invoice 2024",
    ] {
      assert!(
        matches!(parse_record(text), Err(Problem::Foreign(_))),
        "{text:?}"
      );
    }
    let ours_but_broken = format!("{{\"manager\":\"{MARKER}\",\"version\":7}}");
    assert!(matches!(
      parse_record(&ours_but_broken),
      Err(Problem::Invalid(_))
    ));
  }

  /// A record of ours cut short anywhere after its marker is not JSON, yet plainly ours: invalid (deleted by
  /// a cleanup). Text that names the marker elsewhere, another "manager", or is cut inside the marker itself
  /// (not yet known to be ours) stays foreign.
  #[test]
  fn a_record_of_ours_cut_short_is_invalid_and_other_text_foreign() {
    let whole =
      String::from_utf8(serde_json::to_vec_pretty(&sample("api", 4242)).unwrap()).unwrap();
    let marker_end = whole.find(MARKER).unwrap() + MARKER.len() + 1;
    for cut in [marker_end, marker_end + 1, whole.len() / 2, whole.len() - 1] {
      match parse_record(&whole[..cut]) {
        Err(Problem::Invalid(reason)) => assert!(reason.contains("cut short"), "{reason}"),
        other => panic!("cut at {cut}: {other:?}"),
      }
    }
    for text in [
      format!("{{\"note\": \"{MARKER}\", "),
      format!("{{\"manager\": \"{MARKER}-fork\", "),
      format!("{{ \"manager\" : \"{MARKER}"),
      format!("[\"manager\", \"{MARKER}\""),
    ] {
      assert!(
        matches!(parse_record(&text), Err(Problem::Foreign(_))),
        "{text:?}"
      );
    }
  }

  #[test]
  fn an_empty_or_zeroed_file_is_a_write_cut_short_and_may_be_deleted() {
    for text in ["", "\0", "\0\0\0\0\0\0\0\0"] {
      match parse_record(text) {
        Err(Problem::Invalid(reason)) => assert!(reason.contains("empty"), "{reason}"),
        other => panic!("{text:?}: {other:?}"),
      }
    }
    assert!(matches!(parse_record("\0{"), Err(Problem::Foreign(_))));
  }

  #[test]
  fn a_record_without_an_owner_is_invalid_and_the_message_names_the_owner() {
    let text = serde_json::json!({
      "manager": MARKER, "version": 1, "name": "api", "pid": 4242, "port": 8000, "host": "127.0.0.1",
      "startedAt": 0, "exe": null, "startTime": 1, "ownerPid": 0, "ownerStartTime": 1
    })
    .to_string();
    let Err(Problem::Invalid(reason)) = parse_record(&text) else {
      panic!("a record with ownerPid 0 was accepted");
    };
    assert!(reason.contains("ownerPid 0"), "{reason}");
    assert!(!reason.contains("pid 4242"), "{reason}");
  }

  #[cfg(unix)]
  #[test]
  fn symlinks_and_writable_files_are_not_trusted() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target.json");
    fs::write(&target, serde_json::to_string(&sample("api", 99)).unwrap()).unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.path().join("api-99.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert_eq!(
      read_record(&link),
      Err(Problem::Untrusted("it is a symbolic link".into()))
    );
    fs::set_permissions(&target, fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(
      read_record(&target),
      Err(Problem::Untrusted("other users can write it".into()))
    );
  }

  pub(crate) mod properties {
    use super::super::*;
    use proptest::prelude::*;

    /// JSON values of every kind, for record fields.
    fn any_json() -> impl Strategy<Value = serde_json::Value> {
      prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,20}".prop_map(serde_json::Value::from),
        (0u32..70000).prop_map(serde_json::Value::from),
      ]
    }

    const FIELDS: [&str; 11] = [
      "manager",
      "version",
      "name",
      "pid",
      "port",
      "host",
      "startedAt",
      "exe",
      "startTime",
      "ownerPid",
      "ownerStartTime",
    ];

    /// Record-like objects: each field missing or of any JSON type.
    pub fn record_like() -> impl Strategy<Value = String> {
      proptest::collection::vec(proptest::option::of(any_json()), FIELDS.len()).prop_map(|values| {
        let mut object = serde_json::Map::new();
        for (field, value) in FIELDS.iter().zip(values) {
          if let Some(v) = value {
            object.insert((*field).to_string(), v);
          }
        }
        serde_json::Value::Object(object).to_string()
      })
    }

    /// Every field present with the right JSON type but an arbitrary value.
    fn typed_record() -> impl Strategy<Value = String> {
      (
        (any::<u32>(), ".{0,12}", any::<u32>(), any::<u32>(), ".{0,8}"),
        (any::<u64>(), proptest::option::of(".{0,12}"), any::<u64>(), any::<u32>(), any::<u64>()),
      )
        .prop_map(|((version, name, pid, port, host), (started, exe, start, owner, owner_start))| {
          serde_json::json!({
            "manager": MARKER, "version": version % 3, "name": name, "pid": pid % 5, "port": port % 70000,
            "host": host, "startedAt": started, "exe": exe, "startTime": start, "ownerPid": owner,
            "ownerStartTime": owner_start
          })
          .to_string()
        })
    }

    proptest! {
      #![proptest_config(ProptestConfig::with_cases(512))]

      #[test]
      fn a_typed_record_is_accepted_only_when_plausible(text in typed_record()) {
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        let ok = parsed["version"] == 1
          && parsed["pid"].as_u64().unwrap() > 1
          && (1..=65535).contains(&parsed["port"].as_u64().unwrap())
          && parsed["ownerPid"].as_u64().unwrap() > 0
          && crate::options::validate_name(parsed["name"].as_str().unwrap()).is_ok();
        prop_assert_eq!(parse_record(&text).is_ok(), ok, "{}", text);
      }

      #[test]
      fn arbitrary_text_never_panics_the_parser(text in ".{0,400}") {
        let _ = parse_record(&text);
      }

      #[test]
      fn a_parsed_record_is_always_a_plausible_one(text in record_like()) {
        if let Ok(record) = parse_record(&text) {
          prop_assert_eq!(record.manager, MARKER);
          prop_assert_eq!(record.version, 1);
          prop_assert!(record.pid > 1);
          prop_assert!(record.port > 0);
          prop_assert!(!record.name.is_empty() && !record.name.contains('/'));
        }
      }

      /// Only a file carrying the marker can ever be one of ours to delete.
      #[test]
      fn only_a_file_with_the_marker_is_ours(text in record_like()) {
        let marked = serde_json::from_str::<serde_json::Value>(&text)
          .map_or_else(|_| opens_with_marker(&text), |v| v.get("manager").and_then(|m| m.as_str()) == Some(MARKER));
        if !marked && !text.bytes().all(|b| b == 0) {
          prop_assert!(matches!(parse_record(&text), Err(Problem::Foreign(_))));
        }
      }

      #[test]
      fn arbitrary_bytes_in_a_record_file_are_rejected_with_a_reason(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x-123.json");
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        no_follow(&mut options, 0o600);
        options.open(&path).unwrap().write_all(&bytes).unwrap();
        match read_record(&path) {
          Ok(record) => prop_assert!(record.pid > 1),
          Err(problem) => prop_assert!(!problem.reason().is_empty()),
        }
      }
    }
  }
}
