//! The polite stop on Windows (docs/design.md §19): a CTRL_BREAK_EVENT to the backend's console process
//! group (it is started with CREATE_NEW_PROCESS_GROUP, so the group id is its pid). Node sees it as
//! `SIGBREAK`, Python as `signal.SIGBREAK`. The event reaches a group only from a process attached to the
//! same console: an app with no console (Electron) attaches to the backend's for the call.

use super::check;
use std::io;
use std::sync::Mutex;
use windows_sys::Win32::System::Console::{
  AttachConsole, FreeConsole, GenerateConsoleCtrlEvent, GetConsoleProcessList, GetConsoleWindow,
  GetStdHandle, SetStdHandle, CTRL_BREAK_EVENT, STD_ERROR_HANDLE, STD_HANDLE, STD_INPUT_HANDLE,
  STD_OUTPUT_HANDLE,
};

/// A process is attached to one console at a time: attach, send and free happen under this lock.
static CONSOLE: Mutex<()> = Mutex::new(());

const ERROR_ACCESS_DENIED: i32 = 5;

/// Held while a backend is created: it must not get the console of another backend that a stop is
/// attached to at that moment (it would lose it when that backend's job ends).
pub fn lock() -> std::sync::MutexGuard<'static, ()> {
  CONSOLE.lock().unwrap_or_else(|e| e.into_inner())
}

/// This process has a console (a command line in a terminal; not a GUI app). Its backends then share
/// it, and the event is sent without attaching anywhere.
pub fn has_console() -> bool {
  let mut pids = [0u32; 1];
  // SAFETY: GetConsoleWindow takes nothing; GetConsoleProcessList writes at most the one slot passed.
  unsafe { !GetConsoleWindow().is_null() || GetConsoleProcessList(pids.as_mut_ptr(), 1) > 0 }
}

/// Sends CTRL_BREAK_EVENT to console process group `group`, whose leader must be running (a group id
/// that names no group may reach every process on the console). `member` is a live process on that
/// group's console: the leader. Fails under Wine 8, which implements only CTRL_C_EVENT.
pub fn send_break(group: u32, member: u32) -> io::Result<()> {
  if group <= 4 || member <= 4 {
    // 0 would be every process on the console (this one too); 4 is the System process.
    return Err(io::Error::from(io::ErrorKind::InvalidInput));
  }
  let _console = lock();
  if has_console() {
    // The backend was started on our console. Never leave ours: it could not be re-attached.
    // SAFETY: plain call with a group id.
    return check(unsafe { GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, group) });
  }
  // Attaching and freeing replace this process's standard handles (seen under Wine): an app that logs to
  // a file or pipe would lose its output to the backend's console. Keep them and put them back.
  let saved = StdHandles::save();
  // SAFETY: plain calls; this process has no console (checked above, under the lock), so there is none
  // to lose, and the one attached is freed before the lock is released.
  let sent = unsafe {
    let mut attached = check(AttachConsole(member));
    if attached
      .as_ref()
      .is_err_and(|e| e.raw_os_error() == Some(ERROR_ACCESS_DENIED))
    {
      // "Already attached" to a console that lists no process (seen under Wine without a terminal):
      // nothing usable is lost by leaving it.
      FreeConsole();
      attached = check(AttachConsole(member));
    }
    attached
      .map_err(|e| io::Error::new(e.kind(), format!("AttachConsole({member}): {e}")))
      .and_then(|()| {
        // This process is not in the backend's group: the event does not reach it.
        let sent = check(GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, group))
          .map_err(|e| io::Error::new(e.kind(), format!("GenerateConsoleCtrlEvent: {e}")));
        FreeConsole();
        sent
      })
  };
  saved.restore();
  sent
}

struct StdHandles([(STD_HANDLE, usize); 3]);

impl StdHandles {
  fn save() -> StdHandles {
    // SAFETY: GetStdHandle only reads the process's handle table.
    let get = |id| (id, unsafe { GetStdHandle(id) } as usize);
    StdHandles([
      get(STD_INPUT_HANDLE),
      get(STD_OUTPUT_HANDLE),
      get(STD_ERROR_HANDLE),
    ])
  }

  fn restore(&self) {
    for &(id, handle) in &self.0 {
      // SAFETY: as in `save`.
      if unsafe { GetStdHandle(id) } as usize != handle {
        // SAFETY: puts back the value this process had a moment ago.
        unsafe { SetStdHandle(id, handle as _) };
      }
    }
  }
}
