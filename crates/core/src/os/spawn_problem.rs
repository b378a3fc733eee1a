//! Why a backend's program could not be started, in terms a user can act on (docs/api.md, "Spawn errors
//! that say what to do"): not found (with the path tried, and for a bare name the `PATH` folders searched —
//! apps started from Finder or a desktop entry do not get the shell's `PATH`), not executable, refused by
//! the OS, or blocked by antivirus or Gatekeeper.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
  NotFound,
  NotExecutable,
  Permission,
  Blocked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnProblem {
  pub kind: Kind,
  /// The file tried (absolute), when there is one; for a bare name found nowhere, the name as given.
  pub path: Option<PathBuf>,
  /// For a bare command name: the `PATH` folders it was looked for in.
  pub searched: Option<Vec<String>>,
}

impl Kind {
  pub fn as_str(&self) -> &'static str {
    match self {
      Kind::NotFound => "not-found",
      Kind::NotExecutable => "not-executable",
      Kind::Permission => "permission",
      Kind::Blocked => "blocked",
    }
  }
}

fn is_bare(program: &str) -> bool {
  !program.contains('/') && !(cfg!(windows) && (program.contains('\\') || program.contains(':')))
}

/// Where a bare name would be found, as the OS's program search tries it (Windows: with `PATHEXT`): the
/// first candidate that is a runnable file (Unix: with an execute bit; `execvp` passes over the others),
/// else the first that exists (what the error is about).
fn find_in(dirs: &[PathBuf], program: &str) -> Option<PathBuf> {
  let names: Vec<String> = if cfg!(windows) && Path::new(program).extension().is_none() {
    let exts = std::env::var("PATHEXT").unwrap_or_else(|_| ".COM;.EXE;.BAT;.CMD".into());
    exts
      .split(';')
      .filter(|e| !e.is_empty())
      .map(|e| format!("{program}{e}"))
      .collect()
  } else {
    vec![program.to_string()]
  };
  let candidates: Vec<PathBuf> = dirs
    .iter()
    .flat_map(|d| names.iter().map(move |n| d.join(n)))
    .collect();
  let found = candidates.iter().find(|p| runnable(p));
  found
    .or_else(|| candidates.iter().find(|p| p.exists()))
    .cloned()
}

#[cfg(unix)]
fn runnable(path: &Path) -> bool {
  use std::os::unix::fs::PermissionsExt;
  std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(windows)]
fn runnable(path: &Path) -> bool {
  path.is_file()
}

/// The program file the spawn will run for `program` (run from `cwd`, with `path_env` as its `PATH`): a bare
/// name found in the `PATH` folders, any other path from `cwd`. `Err`: a bare name found in none of them,
/// with the folders searched.
pub fn locate(program: &str, cwd: &Path, path_env: Option<&str>) -> Result<PathBuf, Vec<String>> {
  if !is_bare(program) {
    let joined = cwd.join(program);
    return Ok(std::path::absolute(&joined).unwrap_or(joined));
  }
  let dirs: Vec<PathBuf> = path_env
    .map(|p| std::env::split_paths(p).collect())
    .unwrap_or_default();
  find_in(&dirs, program).ok_or_else(|| dirs.iter().map(|d| d.display().to_string()).collect())
}

/// What went wrong starting `program` (run from `cwd`, with `path_env` as its `PATH`), from the OS error and
/// a look at the file.
pub fn classify(
  program: &str,
  cwd: &Path,
  path_env: Option<&str>,
  error: &std::io::Error,
) -> SpawnProblem {
  let path = match locate(program, cwd, path_env) {
    Ok(path) => path,
    // The path tried is the name as given, looked for in each folder searched.
    Err(searched) => {
      return SpawnProblem {
        kind: Kind::NotFound,
        path: Some(PathBuf::from(program)),
        searched: Some(searched),
      }
    }
  };
  let kind = match std::fs::metadata(&path) {
    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Kind::NotFound,
    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Kind::Permission,
    Ok(meta) if meta.is_dir() => Kind::NotExecutable,
    Ok(meta) => by_error(&meta, error),
    Err(_) => by_error_alone(error),
  };
  SpawnProblem {
    kind,
    path: Some(path),
    searched: None,
  }
}

#[cfg(unix)]
fn by_error(meta: &std::fs::Metadata, error: &std::io::Error) -> Kind {
  use std::os::unix::fs::PermissionsExt;
  if meta.permissions().mode() & 0o111 == 0 {
    return Kind::NotExecutable;
  }
  match error.raw_os_error() {
    // macOS: a quarantined or unsigned binary is refused by Gatekeeper with EPERM.
    Some(libc::EPERM) if cfg!(target_os = "macos") => Kind::Blocked,
    Some(libc::ENOEXEC) => Kind::NotExecutable,
    // The file is there: a missing interpreter (`#!` line) or loader.
    Some(libc::ENOENT) => Kind::NotFound,
    Some(libc::EACCES | libc::EPERM) => Kind::Permission,
    _ => by_error_alone(error),
  }
}

#[cfg(windows)]
fn by_error(_meta: &std::fs::Metadata, error: &std::io::Error) -> Kind {
  by_error_alone(error)
}

/// What Windows' own error codes say about a program it would not start.
#[cfg(windows)]
fn windows_refusal(error: &std::io::Error) -> Option<Kind> {
  // ERROR_BAD_EXE_FORMAT, ERROR_EXE_MACHINE_TYPE_MISMATCH.
  if matches!(error.raw_os_error(), Some(193 | 216)) {
    return Some(Kind::NotExecutable);
  }
  // Access denied, ERROR_VIRUS_INFECTED, ERROR_VIRUS_DELETED, blocked by policy, or UNKNOWN: antivirus and
  // SmartScreen refuse this way.
  let blocked = error.kind() == std::io::ErrorKind::PermissionDenied
    || matches!(error.raw_os_error(), Some(225 | 226 | 1260));
  blocked.then_some(Kind::Blocked)
}

#[cfg(unix)]
fn windows_refusal(_error: &std::io::Error) -> Option<Kind> {
  None
}

fn by_error_alone(error: &std::io::Error) -> Kind {
  if let Some(kind) = windows_refusal(error) {
    return kind;
  }
  match error.kind() {
    std::io::ErrorKind::NotFound => Kind::NotFound,
    std::io::ErrorKind::PermissionDenied => Kind::Permission,
    _ => Kind::NotExecutable,
  }
}

impl SpawnProblem {
  /// What happened and what to do, for the error's message.
  pub fn advice(&self, program: &str, error: &std::io::Error) -> String {
    let shown = self
      .path
      .as_ref()
      .map_or_else(|| format!("`{program}`"), |p| p.display().to_string());
    match (&self.kind, &self.searched) {
      (Kind::NotFound, Some(dirs)) => format!(
        "`{program}` was not found in the folders of the backend's PATH ({}). An app started from Finder or a desktop entry does not get your shell's PATH: pass the full path of the program as `command`",
        if dirs.is_empty() { "PATH is empty".to_string() } else { dirs.join(", ") }
      ),
      (Kind::NotFound, None) => format!(
        "{shown} could not be found ({error}): check the path (relative paths start from the backend's working folder), and for a script its first line (#!): its interpreter must exist"
      ),
      (Kind::NotExecutable, _) => format!(
        "{shown} exists but cannot be run as a program ({error}): it may be a folder, lack the execute permission (chmod +x), or be built for another system; a script can be run through its interpreter (`command: 'python3', args: ['script.py']`)"
      ),
      (Kind::Permission, _) => format!(
        "the system refused to run {shown} ({error}): a folder on its path may not be searchable by you, or its file system is mounted without exec"
      ),
      (Kind::Blocked, _) if cfg!(windows) => format!(
        "Windows refused to run {shown} ({error}): antivirus or SmartScreen may have blocked it; allow it there, or sign the program"
      ),
      (Kind::Blocked, _) => format!(
        "macOS refused to run {shown} ({error}): Gatekeeper or quarantine may have blocked it; sign and notarize it, or remove the quarantine attribute (xattr -d com.apple.quarantine)"
      ),
    }
  }
}

#[cfg(all(test, unix))]
mod tests {
  use super::*;
  use std::os::unix::fs::PermissionsExt;

  fn enoent() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::ENOENT)
  }

  #[test]
  fn a_bare_name_not_on_the_path_names_the_folders_searched() {
    let dir = tempfile::tempdir().unwrap();
    let p = classify(
      "no-such-server",
      dir.path(),
      Some("/usr/local/bin:/usr/bin"),
      &enoent(),
    );
    assert_eq!(p.kind, Kind::NotFound);
    assert_eq!(p.path, Some(PathBuf::from("no-such-server")));
    assert_eq!(p.searched.unwrap(), vec!["/usr/local/bin", "/usr/bin"]);
  }

  #[test]
  fn files_are_told_apart_by_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("server.py");
    std::fs::write(&plain, "print(1)").unwrap();
    let eacces = std::io::Error::from_raw_os_error(libc::EACCES);
    assert_eq!(
      classify("./server.py", dir.path(), None, &eacces).kind,
      Kind::NotExecutable
    );
    assert_eq!(
      classify("./missing", dir.path(), None, &enoent()).path,
      Some(dir.path().join("missing"))
    );
    assert_eq!(
      classify(dir.path().to_str().unwrap(), dir.path(), None, &eacces).kind,
      Kind::NotExecutable
    );
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).unwrap();
    let enoexec = std::io::Error::from_raw_os_error(libc::ENOEXEC);
    assert_eq!(
      classify("./server.py", dir.path(), None, &enoexec).kind,
      Kind::NotExecutable
    );
    assert_eq!(
      classify("./server.py", dir.path(), None, &eacces).kind,
      Kind::Permission
    );
  }
}
