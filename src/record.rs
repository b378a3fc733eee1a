//! PID records (API.md "PID records"): one JSON file per running backend, `<stateDir>/<name>-<pid>.json`,
//! written atomically (temporary file + rename) with mode 0600 in a folder only the user can enter. A record
//! is only a hint: before anything is signalled, the live process must match its pid, start time and
//! executable (see `identity`).

use crate::error::{PmError, Result};
use crate::identity::{self, Identity};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const RECORD_VERSION: u32 = 1;
/// A record is a few hundred bytes; anything much larger is not one of ours.
const MAX_RECORD_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
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
    !identity::matches(self.owner_pid, &owner)
  }

  /// The backend named by the record is still that process.
  pub fn backend_is_alive(&self) -> bool {
    self.pid > 1 && identity::matches(self.pid, &self.identity())
  }

  fn validate(&self) -> std::result::Result<(), String> {
    if self.version != RECORD_VERSION {
      return Err(format!("unsupported record version {}", self.version));
    }
    if self.pid <= 1 || self.owner_pid == 0 {
      return Err(format!("pid {} cannot be a backend", self.pid));
    }
    if self.port == 0 {
      return Err("port 0".into());
    }
    validate_name(&self.name).map_err(|e| e.to_string())
  }
}

/// A backend name is used in file names: no path separators, nothing empty or hidden.
pub fn validate_name(name: &str) -> Result<()> {
  let bad = name.is_empty()
    || name.len() > 100
    || name.starts_with('.')
    || name
      .chars()
      .any(|c| matches!(c, '/' | '\\' | '\0') || c.is_control());
  if bad {
    return Err(PmError::InvalidArg(format!(
      "name {name:?} is not usable: it must be 1-100 characters with no path separators"
    )));
  }
  Ok(())
}

/// The per-user folder for records: `$XDG_RUNTIME_DIR` (cleared at logout) or `$XDG_STATE_HOME` on Linux,
/// Application Support on macOS, `%LOCALAPPDATA%` on Windows — not a world-writable `/tmp` path.
pub fn default_state_dir() -> PathBuf {
  const APP: &str = "backend-process-manager";
  let env_dir = |var: &str| {
    std::env::var_os(var)
      .filter(|v| !v.is_empty())
      .map(PathBuf::from)
  };
  let home = || env_dir("HOME").or_else(|| env_dir("USERPROFILE"));
  let base = if cfg!(windows) {
    env_dir("LOCALAPPDATA").or_else(|| home().map(|h| h.join("AppData").join("Local")))
  } else if cfg!(target_os = "macos") {
    home().map(|h| h.join("Library").join("Application Support"))
  } else {
    env_dir("XDG_RUNTIME_DIR")
      .or_else(|| env_dir("XDG_STATE_HOME"))
      .or_else(|| home().map(|h| h.join(".local").join("state")))
  };
  base.unwrap_or_else(std::env::temp_dir).join(APP)
}

/// Creates the folder (0700) if needed and checks that it is a folder this user owns and can write.
pub fn ensure_state_dir(dir: &Path) -> Result<()> {
  let mut builder = fs::DirBuilder::new();
  builder.recursive(true);
  #[cfg(unix)]
  std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
  builder
    .create(dir)
    .map_err(|e| PmError::state_dir(dir, e))?;
  let meta = fs::symlink_metadata(dir).map_err(|e| PmError::state_dir(dir, e))?;
  if !meta.is_dir() {
    return Err(PmError::state_dir(dir, "it is not a folder"));
  }
  #[cfg(unix)]
  {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
      return Err(PmError::state_dir(dir, "it belongs to another user"));
    }
    // SAFETY: the path is a valid NUL-terminated string for the duration of the call.
    let c_path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
      .map_err(|e| PmError::state_dir(dir, e))?;
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
      return Err(PmError::state_dir(dir, std::io::Error::last_os_error()));
    }
  }
  Ok(())
}

pub fn record_path(dir: &Path, name: &str, pid: u32) -> PathBuf {
  dir.join(format!("{name}-{pid}.json"))
}

/// Writes the record atomically: a 0600 temporary file in the same folder, flushed, then renamed over the
/// final name, so a reader never sees half a record.
pub fn write_record(dir: &Path, record: &Record) -> Result<PathBuf> {
  ensure_state_dir(dir)?;
  let path = record_path(dir, &record.name, record.pid);
  let tmp = dir.join(format!(
    ".{}-{}.{}.tmp",
    record.name,
    record.pid,
    identity::own_pid()
  ));
  let body = serde_json::to_vec_pretty(record).expect("a record always serializes");
  let write = || -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
      use std::os::unix::fs::OpenOptionsExt;
      options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(&body)?;
    file.sync_all()?;
    fs::rename(&tmp, &path)
  };
  write().map_err(|e| {
    let _ = fs::remove_file(&tmp);
    PmError::state_dir(dir, e)
  })?;
  Ok(path)
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
  /// The file is not safe to act on (a symlink, another user's file, writable by others): it is left alone.
  Untrusted(String),
  /// The file is ours but not a record (garbage, another version): it may be deleted.
  Invalid(String),
}

impl Problem {
  pub fn reason(&self) -> &str {
    match self {
      Problem::Untrusted(r) | Problem::Invalid(r) => r,
    }
  }
}

/// One file of the state folder, parsed or with the reason it cannot be used.
#[derive(Debug)]
pub struct Entry {
  pub path: PathBuf,
  pub record: std::result::Result<Record, Problem>,
}

fn open_no_follow(path: &Path) -> std::io::Result<fs::File> {
  let mut options = fs::OpenOptions::new();
  options.read(true);
  #[cfg(unix)]
  {
    use std::os::unix::fs::OpenOptionsExt;
    options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
  }
  options.open(path)
}

/// Reads a record without following a symlink, and only from a regular file that this user owns and that
/// no one else can write.
pub fn read_record(path: &Path) -> std::result::Result<Record, Problem> {
  let file = open_no_follow(path).map_err(|e| match e.raw_os_error() {
    #[cfg(unix)]
    Some(libc::ELOOP) => Problem::Untrusted("it is a symbolic link".into()),
    _ => Problem::Invalid(e.to_string()),
  })?;
  let meta = file
    .metadata()
    .map_err(|e| Problem::Invalid(e.to_string()))?;
  if !meta.is_file() {
    return Err(Problem::Untrusted("it is not a regular file".into()));
  }
  #[cfg(unix)]
  {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if meta.uid() != unsafe { libc::geteuid() } {
      return Err(Problem::Untrusted("it belongs to another user".into()));
    }
    if meta.mode() & 0o022 != 0 {
      return Err(Problem::Untrusted("other users can write it".into()));
    }
  }
  if meta.len() > MAX_RECORD_BYTES {
    return Err(Problem::Invalid("it is too large to be a record".into()));
  }
  let mut text = String::new();
  file
    .take(MAX_RECORD_BYTES)
    .read_to_string(&mut text)
    .map_err(|e| Problem::Invalid(e.to_string()))?;
  parse_record(&text).map_err(Problem::Invalid)
}

/// Locks a record file against other cleaners (another app instance, the CLI) while its orphan is being
/// terminated, so exactly one of them signals it. `None` when another process holds the lock or the file
/// is gone.
pub fn lock_record(path: &Path) -> Option<fs::File> {
  let file = open_no_follow(path).ok()?;
  file.try_lock().ok()?;
  Some(file)
}

pub fn parse_record(text: &str) -> std::result::Result<Record, String> {
  let record: Record =
    serde_json::from_str(text).map_err(|e| format!("it is not a valid record: {e}"))?;
  record.validate()?;
  Ok(record)
}

/// Every record file of `dir` (optionally only those of backend `name`), in file-name order. A missing
/// folder has no records.
pub fn list_records(dir: &Path, name: Option<&str>) -> Vec<Entry> {
  let Ok(read) = fs::read_dir(dir) else {
    return Vec::new();
  };
  let mut paths: Vec<PathBuf> = read
    .flatten()
    .map(|e| e.path())
    .filter(|p| is_record_file_name(p, name))
    .collect();
  paths.sort();
  paths
    .into_iter()
    .map(|path| {
      let record = read_record(&path).and_then(|r| match name {
        Some(n) if r.name != n => Err(Problem::Invalid(format!(
          "it names backend {:?}, not {n:?}",
          r.name
        ))),
        _ => Ok(r),
      });
      Entry { path, record }
    })
    .collect()
}

/// `<name>-<pid>.json`, where the pid part is digits; temporary and hidden files are not records.
fn is_record_file_name(path: &Path, name: Option<&str>) -> bool {
  let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
    return false;
  };
  let Some(stem) = file.strip_suffix(".json") else {
    return false;
  };
  if stem.starts_with('.') {
    return false;
  }
  let Some((record_name, pid)) = stem.rsplit_once('-') else {
    return false;
  };
  !pid.is_empty()
    && pid.bytes().all(|b| b.is_ascii_digit())
    && name.is_none_or(|n| n == record_name)
}

#[cfg(test)]
mod tests {
  use super::*;

  fn sample(name: &str, pid: u32) -> Record {
    let me = identity::identity(identity::own_pid()).unwrap();
    Record {
      version: RECORD_VERSION,
      name: name.into(),
      pid,
      port: 8000,
      host: "127.0.0.1".into(),
      started_at: 1,
      exe: me.exe.clone(),
      start_time: me.start_time,
      owner_pid: identity::own_pid(),
      owner_start_time: me.start_time,
    }
  }

  #[test]
  fn a_record_round_trips_and_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let record = sample("api", 4242);
    let path = write_record(dir.path(), &record).unwrap();
    assert_eq!(path, dir.path().join("api-4242.json"));
    assert_eq!(read_record(&path).unwrap(), record);
    #[cfg(unix)]
    {
      use std::os::unix::fs::PermissionsExt;
      assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
      );
    }
    let listed = list_records(dir.path(), Some("api"));
    assert_eq!(listed.len(), 1);
    assert!(list_records(dir.path(), Some("other")).is_empty());
    delete_record(&path).unwrap();
    delete_record(&path).unwrap();
    assert!(list_records(dir.path(), None).is_empty());
  }

  #[test]
  fn names_with_separators_are_rejected() {
    for bad in ["", "a/b", "a\\b", "..", ".hidden", "a\nb"] {
      assert!(validate_name(bad).is_err(), "{bad:?}");
    }
    assert!(validate_name("myfinance-backend").is_ok());
  }

  #[test]
  fn a_live_owner_means_not_orphaned() {
    let record = sample("api", 4242);
    assert!(!record.is_orphaned());
    let mut gone_owner = record.clone();
    gone_owner.owner_start_time += 1;
    assert!(gone_owner.is_orphaned());
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

  #[test]
  fn garbage_is_rejected() {
    for text in ["", "{", "null", "{\"version\":1}", "[1,2]"] {
      assert!(parse_record(text).is_err(), "{text:?}");
    }
  }
}
