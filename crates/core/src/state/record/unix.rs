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
