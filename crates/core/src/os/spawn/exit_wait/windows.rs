//! Windows: the system's wait pool (`RegisterWaitForSingleObject`, as tokio and libuv do) watches the
//! process handle; its callback wakes the child's task. No thread of ours waits.

use std::ffi::c_void;
use std::os::windows::io::{AsRawHandle, OwnedHandle};
use tokio::sync::oneshot;
use windows_sys::Win32::Foundation::{HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::System::Threading::{
  RegisterWaitForSingleObject, UnregisterWaitEx, INFINITE, WT_EXECUTEINWAITTHREAD,
  WT_EXECUTEONLYONCE,
};

/// A registered wait; dropping it unregisters it (after a callback under way has returned).
struct Registration {
  wait: HANDLE,
  tx: *mut Option<oneshot::Sender<()>>,
}

// SAFETY: the wait handle and the boxed sender are used from one task at a time; the callback reaches the
// sender only until `UnregisterWaitEx` (which waits for it) returns.
unsafe impl Send for Registration {}

impl Drop for Registration {
  fn drop(&mut self) {
    // SAFETY: `wait` came from RegisterWaitForSingleObject and is unregistered once; INVALID_HANDLE_VALUE
    // makes the call wait for a running callback, after which nothing uses `tx` and it is freed once.
    unsafe {
      UnregisterWaitEx(self.wait, INVALID_HANDLE_VALUE);
      drop(Box::from_raw(self.tx));
    }
  }
}

unsafe extern "system" fn signalled(context: *mut c_void, _timed_out: bool) {
  // SAFETY: `context` is the registration's boxed sender, alive until the registration is dropped, which
  // waits for this callback; WT_EXECUTEONLYONCE runs it at most once.
  let tx = unsafe { &mut *(context as *mut Option<oneshot::Sender<()>>) };
  if let Some(tx) = tx.take() {
    let _ = tx.send(());
  }
}

/// Resolves once the process has ended. An error when the wait could not be registered.
pub async fn exited(process: &OwnedHandle) -> std::io::Result<()> {
  let (registration, ended) = register(process)?;
  let _ = ended.await;
  drop(registration);
  Ok(())
}

fn register(process: &OwnedHandle) -> std::io::Result<(Registration, oneshot::Receiver<()>)> {
  let (tx, rx) = oneshot::channel();
  let tx = Box::into_raw(Box::new(Some(tx)));
  let mut wait: HANDLE = std::ptr::null_mut();
  // SAFETY: `process` is a valid handle, open until the registration is dropped (it borrows the handle's
  // owner for the whole wait); `tx` lives until then; the callback only sends on it.
  let registered = unsafe {
    RegisterWaitForSingleObject(
      &mut wait,
      process.as_raw_handle() as HANDLE,
      Some(signalled),
      tx as *const c_void,
      INFINITE,
      WT_EXECUTEINWAITTHREAD | WT_EXECUTEONLYONCE,
    )
  };
  if registered == 0 {
    let e = std::io::Error::last_os_error();
    // SAFETY: never registered: nothing else has the box.
    drop(unsafe { Box::from_raw(tx) });
    return Err(e);
  }
  Ok((Registration { wait, tx }, rx))
}
