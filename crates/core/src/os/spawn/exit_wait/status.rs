//! Reading a child's exit on Unix without reaping it.

use crate::os::spawn::ExitInfo;
use rustix::process::{waitid, Pid, WaitId, WaitIdOptions};

/// The exit of our child `pid`, left unreaped (`WNOWAIT`); `None` while it runs. With `block`, waits for
/// it. A stop or continue (Ctrl-Z, a debugger) is not an exit: some systems report those too.
pub fn exit_now(pid: u32, block: bool) -> Option<ExitInfo> {
  let pid = Pid::from_raw(pid as i32)?;
  let mut options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
  if !block {
    options |= WaitIdOptions::NOHANG;
  }
  loop {
    match waitid(WaitId::Pid(pid), options) {
      Ok(Some(status)) if status.exited() => {
        return Some(ExitInfo {
          exit_code: status.exit_status(),
          signal: None,
        })
      }
      Ok(Some(status)) if status.killed() || status.dumped() => {
        return Some(ExitInfo {
          exit_code: None,
          signal: status.terminating_signal().map(crate::os::signal::name),
        })
      }
      Ok(_) if !block => return None,
      Ok(_) | Err(rustix::io::Errno::INTR) => continue,
      // Someone else reaped it (only possible if the host calls waitpid(-1)): nothing more can be known.
      Err(_) => return Some(ExitInfo::default()),
    }
  }
}
