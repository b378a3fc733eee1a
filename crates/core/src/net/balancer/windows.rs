//! The balancer's view of Windows: no descriptor limit, and the Winsock codes of exhaustion.

/// Windows has no per-process descriptor limit for sockets (handles run to millions).
pub fn open_file_limit() -> Option<u64> {
  None
}

/// Accept errors are told apart by their kind and by `connect_exhausted`.
pub fn accept_exhausted(_code: i32) -> Option<bool> {
  None
}

/// WSAEMFILE, WSAENOBUFS, WSAEADDRNOTAVAIL: our own resources ran out. Always decided here.
pub fn connect_exhausted(code: i32) -> Option<bool> {
  Some([10024, 10055, 10049].contains(&code))
}
