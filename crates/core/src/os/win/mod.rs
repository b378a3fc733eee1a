//! Windows through windows-sys: job objects (the backend's tree), console control events (its polite
//! stop), process handles (identity that pins the pid), the TCP owner table and folder security. The rest
//! of `os` and `net` calls these behind the same function names it uses on Unix.

pub mod console;
pub mod job;
pub mod net;
pub mod process;
pub mod security;

#[cfg(test)]
mod tests;

use std::io;
use windows_sys::Win32::Foundation::{CloseHandle, FILETIME, HANDLE, INVALID_HANDLE_VALUE};

/// An owned Win32 handle, closed on drop.
#[derive(Debug)]
pub struct Handle(HANDLE);

// SAFETY: a kernel handle is a process-wide value; the calls made on it here are thread-safe.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

impl Handle {
  /// `None` for the two values Win32 calls return on failure (null, INVALID_HANDLE_VALUE).
  pub fn new(raw: HANDLE) -> Option<Handle> {
    (!raw.is_null() && raw != INVALID_HANDLE_VALUE).then_some(Handle(raw))
  }

  /// Like `new`, with the thread's last OS error on failure.
  pub fn or_last_error(raw: HANDLE) -> io::Result<Handle> {
    Handle::new(raw).ok_or_else(io::Error::last_os_error)
  }

  pub fn raw(&self) -> HANDLE {
    self.0
  }
}

impl Drop for Handle {
  fn drop(&mut self) {
    // SAFETY: the handle is ours and valid (checked at construction); it is closed once.
    unsafe {
      CloseHandle(self.0);
    }
  }
}

/// A Win32 BOOL result as an io::Result.
pub fn check(ok: windows_sys::core::BOOL) -> io::Result<()> {
  if ok == 0 {
    Err(io::Error::last_os_error())
  } else {
    Ok(())
  }
}

/// A NUL-terminated UTF-16 copy of a path or name, for the W functions.
pub fn wide(s: &std::ffi::OsStr) -> Vec<u16> {
  use std::os::windows::ffi::OsStrExt;
  s.encode_wide().chain(Some(0)).collect()
}

/// A FILETIME as one number: 100 ns units (since 1601 for a point in time).
pub fn filetime(ft: FILETIME) -> u64 {
  (u64::from(ft.dwHighDateTime) << 32) | u64::from(ft.dwLowDateTime)
}

/// True when running under Wine (its ntdll exports `wine_get_version`). Only tests ask: where Wine lacks a
/// feature (CTRL_BREAK, owner pids in the TCP table), they check the fallback instead.
#[cfg(test)]
pub fn is_wine() -> bool {
  use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};
  let ntdll = wide(std::ffi::OsStr::new("ntdll.dll"));
  // SAFETY: ntdll is always loaded; both calls only read the NUL-terminated names given.
  unsafe {
    let module = GetModuleHandleW(ntdll.as_ptr());
    !module.is_null() && GetProcAddress(module, c"wine_get_version".as_ptr().cast()).is_some()
  }
}
