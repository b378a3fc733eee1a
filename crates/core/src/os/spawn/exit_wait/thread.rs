//! A thread that blocks until one child exits: where the system offers nothing to await (Linux before 5.3,
//! Unix systems other than Linux and macOS).

use super::status::exit_now;
use crate::os::spawn::ExitInfo;

pub async fn exited(pid: u32) -> ExitInfo {
  let (tx, rx) = tokio::sync::oneshot::channel();
  let started = std::thread::Builder::new()
    .name(format!("bpm-waiter-{pid}"))
    .stack_size(crate::blocking::THREAD_STACK)
    .spawn(move || {
      let _ = tx.send(exit_now(pid, true).unwrap_or_default());
    });
  match started {
    Ok(_) => rx.await.unwrap_or_default(),
    // No thread: look now and then (a rare, degraded case).
    Err(_) => loop {
      if let Some(info) = exit_now(pid, false) {
        return info;
      }
      tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    },
  }
}
