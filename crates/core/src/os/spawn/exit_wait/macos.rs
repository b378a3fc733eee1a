//! macOS: one kqueue holds an `EVFILT_PROC`/`NOTE_EXIT` filter for every running child, and one thread (for
//! all of them) waits on it and wakes the child's task. The exit is then read with `waitid(WNOWAIT)`,
//! leaving the child unreaped.

use super::status::exit_now;
use crate::os::spawn::ExitInfo;
use rustix::buffer::spare_capacity;
use rustix::event::kqueue::{kevent, kqueue, Event, EventFilter, EventFlags, ProcessEvents};
use rustix::process::Pid;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// How often the exit is looked for once the kqueue said "ended" but `waitid` does not see it yet.
const SETTLING: Duration = Duration::from_millis(10);

struct Watcher {
  queue: OwnedFd,
  waiting: Mutex<HashMap<u32, oneshot::Sender<()>>>,
}

/// The one kqueue and its thread, made with the first child; `None` when either could not be made.
fn watcher() -> Option<&'static Watcher> {
  static WATCHER: OnceLock<Option<Watcher>> = OnceLock::new();
  WATCHER
    .get_or_init(|| {
      let watcher = Watcher {
        queue: kqueue().ok()?,
        waiting: Mutex::new(HashMap::new()),
      };
      Some(watcher)
    })
    .as_ref()
    .filter(|&w| started(w))
}

/// Starts the thread that reads the kqueue, once. It lives as long as the process.
fn started(watcher: &'static Watcher) -> bool {
  static STARTED: OnceLock<bool> = OnceLock::new();
  *STARTED.get_or_init(|| {
    std::thread::Builder::new()
      .name("bpm-exits".into())
      .stack_size(crate::blocking::THREAD_STACK)
      .spawn(move || read_exits(watcher))
      .is_ok()
  })
}

fn read_exits(watcher: &Watcher) {
  let mut events = Vec::with_capacity(64);
  loop {
    events.clear();
    // SAFETY: the kqueue holds only EVFILT_PROC filters, whose udata is null and never dereferenced.
    if unsafe { kevent(&watcher.queue, &[], spare_capacity(&mut events), None) }.is_err() {
      continue;
    }
    let mut waiting = watcher.waiting.lock().unwrap_or_else(|e| e.into_inner());
    for event in &events {
      if let EventFilter::Proc { pid, .. } = event.filter() {
        if let Some(tx) = waiting.remove(&(pid.as_raw_nonzero().get() as u32)) {
          let _ = tx.send(());
        }
      }
    }
  }
}

/// Adds the filter for `pid`; `None` when it could not be added (the child may already have exited).
fn watch(watcher: &Watcher, pid: Pid) -> Option<oneshot::Receiver<()>> {
  let (tx, rx) = oneshot::channel();
  let key = pid.as_raw_nonzero().get() as u32;
  watcher
    .waiting
    .lock()
    .unwrap_or_else(|e| e.into_inner())
    .insert(key, tx);
  let filter = Event::new(
    EventFilter::Proc {
      pid,
      flags: ProcessEvents::EXIT,
    },
    EventFlags::ADD | EventFlags::ONESHOT,
    std::ptr::null_mut(),
  );
  let mut none: [Event; 0] = [];
  // SAFETY: as above: a null udata, never dereferenced.
  match unsafe { kevent(&watcher.queue, &[filter], &mut none, Some(Duration::ZERO)) } {
    Ok(_) => Some(rx),
    Err(_) => {
      watcher
        .waiting
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&key);
      None
    }
  }
}

/// Resolves with the exit of our (unreaped) child `pid`.
pub async fn exited(pid: u32) -> ExitInfo {
  let Some(target) = Pid::from_raw(pid as i32) else {
    return ExitInfo::default();
  };
  let Some(watcher) = watcher() else {
    return super::thread::exited(pid).await;
  };
  match watch(watcher, target) {
    Some(ended) => {
      let _ = ended.await;
    }
    // Already ended (a zombie cannot be watched), or the kqueue refused it.
    None if exit_now(pid, false).is_some() => {}
    None => return super::thread::exited(pid).await,
  }
  loop {
    if let Some(info) = exit_now(pid, false) {
      return info;
    }
    tokio::time::sleep(SETTLING).await;
  }
}
