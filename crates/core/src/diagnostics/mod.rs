//! A diagnostics archive for a support ticket (docs/api.md, "Logs and diagnostics"): a ZIP any OS opens,
//! with what the app and the state folder know — status, PID records, the last lines of each log — and every
//! file cleaned of the secrets the manager knows (decision 29).

mod zip;

use crate::error::{PmError, Result};
use crate::logs::{self, Redactor};
use crate::state::record;
use std::path::{Path, PathBuf};

/// Lines of each backend's log that go into the archive.
pub const LOG_LINES: usize = 2000;

/// What goes in besides what the caller made (status, options, events, versions).
pub struct Sources<'a> {
  pub state_dir: Option<&'a Path>,
  pub log_dir: Option<&'a Path>,
}

/// Writes the archive to `file` (through a temporary file and a rename, 0600): `given` entries, the PID
/// records of the state folder, the last `LOG_LINES` lines of every log of the log folder, all redacted.
/// Returns the path written and its size. Blocking.
pub fn export(
  file: &Path,
  given: Vec<(String, String)>,
  sources: Sources,
  redactor: &Redactor,
) -> Result<(PathBuf, u64)> {
  let mut entries: Vec<(String, String)> = given;
  if let Some(dir) = sources.state_dir {
    if crate::state::dir::check_state_dir(dir)? {
      for entry in record::list_records(dir, None)? {
        if let Ok(r) = entry.record {
          let name = entry
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
          let text = serde_json::to_string_pretty(&r).unwrap_or_default();
          entries.push((format!("records/{}", name.unwrap_or_default()), text));
        }
      }
    }
  }
  if let Some(dir) = sources.log_dir {
    if crate::state::dir::check_private_dir(dir, crate::state::dir::Holds::Logs)? {
      for name in logs::names_in(dir) {
        let lines = logs::read_tail(dir, &name, 0, LOG_LINES, None);
        let text: String = lines
          .iter()
          .map(|l| {
            format!(
              "{} {} {} {}\n",
              l.time,
              l.stream.as_str(),
              l.replica,
              l.line
            )
          })
          .collect();
        entries.push((format!("logs/{name}.log"), text));
      }
    }
  }
  let entries: Vec<(String, Vec<u8>)> = entries
    .into_iter()
    .map(|(name, text)| (name, redactor.redact(&text).into_owned().into_bytes()))
    .collect();
  write_private(file, &entries)
}

fn write_private(file: &Path, entries: &[(String, Vec<u8>)]) -> Result<(PathBuf, u64)> {
  let fail = |what: &str, e: std::io::Error| PmError::FileWrite {
    path: file.display().to_string(),
    reason: format!("the diagnostics archive cannot be {what}: {e}"),
    source: Some(std::sync::Arc::new(e)),
  };
  let dir = file
    .parent()
    .filter(|d| !d.as_os_str().is_empty())
    .unwrap_or(Path::new("."));
  let temporary = dir.join(format!(
    ".{}.{}.tmp",
    file
      .file_name()
      .map(|n| n.to_string_lossy().into_owned())
      .unwrap_or_default(),
    std::process::id()
  ));
  let mut options = std::fs::OpenOptions::new();
  options.write(true).create_new(true);
  record::no_follow(&mut options, 0o600);
  let mut out = options.open(&temporary).map_err(|e| fail("written", e))?;
  let now = std::time::SystemTime::now()
    .duration_since(std::time::UNIX_EPOCH)
    .map_or(0, |d| d.as_secs());
  let written = zip::write(&mut out, entries, now)
    .and_then(|size| out.sync_all().map(|()| size))
    .and_then(|size| std::fs::rename(&temporary, file).map(|()| size));
  match written {
    Ok(size) => Ok((
      std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf()),
      size,
    )),
    Err(e) => {
      let _ = std::fs::remove_file(&temporary);
      Err(fail("written", e))
    }
  }
}
