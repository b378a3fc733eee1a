//! Port reservations: a port handed out is withheld from other callers until its backend is gone (or, for
//! `findAvailablePort`, for a while). Within this process a table does it; between processes of the same
//! user, an advisory lock on a per-port file in one per-user folder (docs/design.md §11). The lock dies with its
//! process, so a crash leaves no stale reservation; lock files are never deleted (deleting a lock file
//! invites races), and they are a few hundred empty files at most.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Instant;

/// Who holds a reservation: a manager (its own reservations never block it) or nobody in particular.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner(u64);

impl Owner {
  /// The free `findAvailablePort`: its reservations block every caller.
  pub const ANYONE: Owner = Owner(0);

  /// A new caller's own name: its reservations do not block it.
  #[allow(clippy::new_without_default)] // each call names another caller: not a default value
  pub fn new() -> Owner {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    Owner(NEXT.fetch_add(1, Ordering::Relaxed))
  }
}

struct Entry {
  id: u64,
  owner: Owner,
  /// `None`: held until the `Reservation` is dropped.
  until: Option<Instant>,
  _lock: Option<File>,
}

struct Table {
  entries: Mutex<HashMap<u16, Entry>>,
  /// Wakes the sweeper that ends timed reservations.
  changed: Condvar,
}

fn table() -> &'static Table {
  static TABLE: OnceLock<Table> = OnceLock::new();
  TABLE.get_or_init(|| Table {
    entries: Mutex::new(HashMap::new()),
    changed: Condvar::new(),
  })
}

fn entries() -> std::sync::MutexGuard<'static, HashMap<u16, Entry>> {
  table().entries.lock().unwrap_or_else(|e| e.into_inner())
}

fn purge(entries: &mut HashMap<u16, Entry>, now: Instant) {
  entries.retain(|_, e| e.until.is_none_or(|until| until > now));
}

/// A port held for one holder; dropping it gives the port back.
#[derive(Debug)]
pub struct Reservation {
  port: u16,
  id: u64,
}

impl Reservation {
  pub fn port(&self) -> u16 {
    self.port
  }

  /// Keeps the port reserved until `until` (or `release`) instead of until this value is dropped.
  pub fn hold_until(self, until: Instant) {
    if let Some(entry) = entries().get_mut(&self.port).filter(|e| e.id == self.id) {
      entry.until = Some(until);
    }
    std::mem::forget(self);
    start_sweeper();
  }
}

impl Drop for Reservation {
  fn drop(&mut self) {
    let mut entries = entries();
    if entries.get(&self.port).is_some_and(|e| e.id == self.id) {
      entries.remove(&self.port);
    }
  }
}

/// Reserves `port` for `owner` unless someone else holds it, in this process or in another one of this
/// user's. A port `owner` itself reserved earlier (with `hold_until`) is taken over.
pub fn reserve(port: u16, owner: Owner) -> Option<Reservation> {
  claim(port, owner, true)
}

/// Reserves `port` for `owner` unless anyone holds it, `owner` included: a port handed out by a manager's
/// `findAvailablePort` goes to one caller only, yet stays its manager's own for a start.
pub fn reserve_fresh(port: u16, owner: Owner) -> Option<Reservation> {
  claim(port, owner, false)
}

/// Whether `existing` gives way to a new claim by `owner`.
fn takes_over(existing: &Entry, owner: Owner, take_own: bool) -> bool {
  take_own && existing.owner == owner && owner != Owner::ANYONE
}

fn claim(port: u16, owner: Owner, take_own: bool) -> Option<Reservation> {
  static IDS: AtomicU64 = AtomicU64::new(1);
  let mut entries = entries();
  purge(&mut entries, Instant::now());
  let lock = match entries.remove(&port) {
    Some(existing) if takes_over(&existing, owner, take_own) => existing._lock,
    Some(existing) => {
      entries.insert(port, existing);
      return None;
    }
    None => match lock_file(port) {
      Locked::Held(file) => Some(file),
      Locked::Busy => return None,
      // No usable shared folder (an unwritable home, say): reserve in this process only.
      Locked::Unavailable => None,
    },
  };
  let id = IDS.fetch_add(1, Ordering::Relaxed);
  entries.insert(
    port,
    Entry {
      id,
      owner,
      until: None,
      _lock: lock,
    },
  );
  Some(Reservation { port, id })
}

/// True when someone other than `owner` holds `port` in this process.
pub fn held_by_other(port: u16, owner: Owner, take_own: bool) -> bool {
  let mut entries = entries();
  purge(&mut entries, Instant::now());
  entries
    .get(&port)
    .is_some_and(|e| !takes_over(e, owner, take_own))
}

/// Ends any reservation of `port` in this process.
pub fn release(port: u16) {
  entries().remove(&port);
}

enum Locked {
  Held(File),
  Busy,
  Unavailable,
}

#[cfg(unix)]
mod imp {
  use std::os::unix::fs::OpenOptionsExt;

  /// A lock file only this user can open, and never through a symbolic link.
  pub fn private_no_follow(options: &mut std::fs::OpenOptions) {
    options
      .mode(0o600)
      .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
  }
}

#[cfg(windows)]
mod imp {
  /// The lock file inherits the private folder's access (`ensure_state_dir`).
  pub fn private_no_follow(_options: &mut std::fs::OpenOptions) {}
}

fn lock_dir() -> PathBuf {
  crate::state::dir::port_locks_dir()
}

fn lock_file(port: u16) -> Locked {
  let dir = lock_dir();
  let path = dir.join(format!("{port}.lock"));
  let mut options = std::fs::OpenOptions::new();
  options.create(true).truncate(false).write(true);
  imp::private_no_follow(&mut options);
  let opened = match options.open(&path) {
    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
      // The folder is created (and checked to be private) once, the first time it is missing.
      if crate::state::dir::ensure_state_dir(&dir).is_err() {
        return Locked::Unavailable;
      }
      options.open(&path)
    }
    other => other,
  };
  let Ok(file) = opened else {
    return Locked::Unavailable;
  };
  match file.try_lock() {
    Ok(()) => Locked::Held(file),
    Err(std::fs::TryLockError::WouldBlock) => Locked::Busy,
    Err(std::fs::TryLockError::Error(_)) => Locked::Unavailable,
  }
}

/// Ends timed reservations when they expire, so their locks do not outlive them in a process that makes
/// no further calls. One thread, only while timed reservations exist.
fn start_sweeper() {
  static RUNNING: Mutex<bool> = Mutex::new(false);
  let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
  table().changed.notify_all();
  if *running {
    return;
  }
  let started = std::thread::Builder::new()
    .name("bpm-reservations".into())
    .stack_size(crate::blocking::THREAD_STACK)
    .spawn(|| loop {
      let mut entries = entries();
      let now = Instant::now();
      purge(&mut entries, now);
      let next = entries.values().filter_map(|e| e.until).min();
      let Some(next) = next else {
        *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = false;
        return;
      };
      let _ = table()
        .changed
        .wait_timeout(entries, next.saturating_duration_since(now))
        .map(drop);
    });
  *running = started.is_ok();
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::net::port::unused_port;
  use std::time::Duration;

  #[test]
  fn a_reservation_blocks_others_until_dropped() {
    let port = unused_port();
    let (a, b) = (Owner::new(), Owner::new());
    let held = reserve(port, a).unwrap();
    assert!(reserve(port, b).is_none());
    assert!(held_by_other(port, b, true));
    assert!(!held_by_other(port, a, true));
    drop(held);
    assert!(reserve(port, b).is_some());
  }

  #[test]
  fn an_owner_takes_over_its_own_timed_reservation() {
    let port = unused_port();
    let me = Owner::new();
    reserve(port, me)
      .unwrap()
      .hold_until(Instant::now() + Duration::from_secs(15));
    assert!(
      reserve(port, Owner::new()).is_none(),
      "others are still blocked"
    );
    assert!(reserve(port, Owner::ANYONE).is_none());
    let mine = reserve(port, me).expect("my own reservation does not block me");
    drop(mine);
    assert!(reserve(port, Owner::new()).is_some());
  }

  #[test]
  fn a_timed_reservation_ends_by_itself() {
    let port = unused_port();
    reserve(port, Owner::ANYONE)
      .unwrap()
      .hold_until(Instant::now() + Duration::from_millis(30));
    let deadline = Instant::now() + Duration::from_secs(5);
    while held_by_other(port, Owner::new(), true) && Instant::now() < deadline {
      std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!held_by_other(port, Owner::new(), true));
  }

  /// Another process of this user holding the lock (here: another open file description) blocks it.
  #[test]
  fn a_lock_held_elsewhere_blocks_the_port() {
    let port = unused_port();
    let Locked::Held(elsewhere) = lock_file(port) else {
      panic!("the shared lock folder is usable here");
    };
    assert!(reserve(port, Owner::new()).is_none());
    drop(elsewhere);
    assert!(reserve(port, Owner::new()).is_some());
  }
}
