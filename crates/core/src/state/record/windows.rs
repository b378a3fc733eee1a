//! Records on Windows: the file's security descriptor says who may have written it; a reparse point (a
//! symbolic link or junction) is opened as itself and refused.
use super::Problem;
use crate::os::win::security::{access_of_handle, Access, OPEN_REPARSE_POINT, REPARSE_POINT};
use std::fs;
use std::io;
use std::os::windows::fs::{MetadataExt, OpenOptionsExt};
use std::os::windows::io::AsRawHandle;
use std::path::Path;

/// Ownership is checked on the opened handle (`check_private`); a name alone says nothing here.
pub fn is_own(_meta: &fs::Metadata) -> bool {
  true
}

/// No exchange on Windows: the caller renames (`replace`).
pub fn exchange(_from: &Path, _to: &Path) -> io::Result<bool> {
  Ok(false)
}

/// Renames `from` over `to`. Windows refuses to replace a file that another process has open without
/// delete sharing (a reader of the state folder, an antivirus scan) with "access denied"; that lasts as
/// long as the other's read, so the rename is retried for up to ~1 s (as npm's graceful-fs does).
pub fn replace(from: &Path, to: &Path) -> io::Result<()> {
  for _ in 0..50 {
    match fs::rename(from, to) {
      Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
        std::thread::sleep(std::time::Duration::from_millis(20))
      }
      done => return done,
    }
  }
  fs::rename(from, to)
}

/// Opens a symbolic link or junction itself, never what it points to; a created file inherits the
/// (private) folder's permissions, so `mode` has no part here.
pub fn no_follow(options: &mut fs::OpenOptions, _mode: u32) {
  options.custom_flags(OPEN_REPARSE_POINT);
}

/// Links are opened, not refused, here (`opened_a_link` finds them).
pub fn is_link_refused(_error: &io::Error) -> bool {
  false
}

/// What was opened is the link itself (if it is one): this checks the handle that is read.
pub fn opened_a_link(meta: &fs::Metadata) -> bool {
  meta.file_attributes() & REPARSE_POINT != 0
}

/// The opened file is this user's and no one else can write it.
pub fn check_private(file: &fs::File, _meta: &fs::Metadata) -> Result<(), Problem> {
  match access_of_handle(file.as_raw_handle()) {
    Ok(Access::Private) => Ok(()),
    Ok(Access::OtherOwner) => Err(Problem::Untrusted("it belongs to another user".into())),
    Ok(Access::OthersCanWrite(_)) => Err(Problem::Untrusted("other users can write it".into())),
    Err(e) => Err(Problem::Untrusted(format!(
      "its permissions cannot be read: {e}"
    ))),
  }
}
