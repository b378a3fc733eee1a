//! Records on Unix: ownership and mode bits say who may have written a file; `O_NOFOLLOW` refuses a link.
use super::Problem;
use rustix::fs::OFlags;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Whether this user owns the file.
pub fn is_own(meta: &fs::Metadata) -> bool {
  meta.uid() == rustix::process::geteuid().as_raw()
}

/// Renames `from` over `to`: atomic, even over a file another process has open.
pub fn replace(from: &Path, to: &Path) -> io::Result<()> {
  fs::rename(from, to)
}

/// Swaps `from` and `to` in one step (Linux `renameat2(RENAME_EXCHANGE)`): a reader of `to` finds the old
/// file or the new one, never neither. `Ok(false)` where it cannot be done (a file system or kernel
/// without it, or `to` gone), for the caller to rename instead.
#[cfg(target_os = "linux")]
pub fn exchange(from: &Path, to: &Path) -> io::Result<bool> {
  use rustix::fs::{renameat_with, RenameFlags, CWD};
  use rustix::io::Errno;
  match renameat_with(CWD, from, CWD, to, RenameFlags::EXCHANGE) {
    Ok(()) => Ok(true),
    Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP | Errno::NOENT) => Ok(false),
    Err(e) => Err(e.into()),
  }
}

/// Elsewhere a rename over the file costs no flush that an exchange would save.
#[cfg(not(target_os = "linux"))]
pub fn exchange(_from: &Path, _to: &Path) -> io::Result<bool> {
  Ok(false)
}

/// Opens a symbolic link as an error (ELOOP), never what it points to, and never blocks on a FIFO; a
/// created file gets `mode`.
pub fn no_follow(options: &mut fs::OpenOptions, mode: u32) {
  options
    .mode(mode)
    .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32);
}

/// The open was refused because the path is a symbolic link (`no_follow`).
pub fn is_link_refused(error: &io::Error) -> bool {
  error.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
}

/// What was opened is a link itself: never here, `no_follow` refuses links.
pub fn opened_a_link(_meta: &fs::Metadata) -> bool {
  false
}

/// The opened file is this user's and no one else can write it.
pub fn check_private(_file: &fs::File, meta: &fs::Metadata) -> Result<(), Problem> {
  if !is_own(meta) {
    return Err(Problem::Untrusted("it belongs to another user".into()));
  }
  if meta.mode() & 0o022 != 0 {
    return Err(Problem::Untrusted("other users can write it".into()));
  }
  Ok(())
}
