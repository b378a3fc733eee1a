//! The balancer's view of a Unix system: the open-file limit and the errno values of exhaustion.
use rustix::io::Errno;

/// The app's open-file limit (`RLIMIT_NOFILE`, soft), if it has one.
pub fn open_file_limit() -> Option<u64> {
  rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Whether an accept error with this OS code comes back at once until descriptors or memory are freed
/// (EMFILE, ENFILE, ENOBUFS, ENOMEM). Always decided here.
pub fn accept_exhausted(code: i32) -> Option<bool> {
  Some(is_one_of(
    code,
    &[Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM],
  ))
}

/// Whether a connect error with this OS code means our own resources ran out (those of accept, and no
/// free local port: EADDRNOTAVAIL). Always decided here.
pub fn connect_exhausted(code: i32) -> Option<bool> {
  let exhausted = [
    Errno::MFILE,
    Errno::NFILE,
    Errno::NOBUFS,
    Errno::NOMEM,
    Errno::ADDRNOTAVAIL,
  ];
  Some(is_one_of(code, &exhausted))
}

fn is_one_of(code: i32, errors: &[Errno]) -> bool {
  errors.iter().any(|e| e.raw_os_error() == code)
}
