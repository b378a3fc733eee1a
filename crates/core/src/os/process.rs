//! Facts about one process by pid: alive or not, its identity (start time and executable, which tell it
//! apart from a later process that got the same pid), its group, parent, owner and name. Linux reads
//! `/proc/PID/stat` directly (one small file, ~20 µs); Windows asks through one process handle; other
//! systems ask `sysinfo` for just that pid.

use std::time::Duration;

/// What tells one process apart from a later one that got the same pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
  /// The start time as the OS reports it: clock ticks since boot on Linux, the creation FILETIME (100 ns
  /// since 1601, exact) on Windows, seconds since the epoch elsewhere.
  pub start_time: u64,
  /// The executable's path; `None` when the OS does not say (another user's process, for one).
  pub exe: Option<String>,
}

/// What `/proc/PID/stat` (or the OS's equivalent) says of a live process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
  /// Windows: 0 (reading it takes a snapshot of every process; `parent` does that).
  pub parent: u32,
  /// Windows: the pid itself (a backend leads its own console process group).
  pub group: u32,
  /// User plus system CPU time so far.
  pub cpu_time: Duration,
  pub start_time: u64,
  pub memory_bytes: u64,
}

pub fn own_pid() -> u32 {
  std::process::id()
}

/// This process's start time (read once: it never changes), 0 where the OS does not tell.
pub fn own_start_time() -> u64 {
  static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
  *START.get_or_init(|| identity(own_pid()).map_or(0, |i| i.start_time))
}

/// True when `pid` is alive and is still the process that `expected` describes (same start time, and the
/// same executable where both are known).
pub fn matches(pid: u32, expected: &Identity) -> bool {
  identity(pid).is_some_and(|live| same_process(&live, expected))
}

/// What is at a recorded pid now, against the identity recorded for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtPid {
  /// The recorded process runs.
  Recorded,
  /// The recorded process has exited: nothing is at the pid, or only its zombie (same start time), whose
  /// group may live on.
  Exited,
  /// Another process has the pid (live, or a zombie with another start time): it and its group are never
  /// the recorded backend's.
  Stranger,
}

/// Compares what lives at `pid` with the identity a record gives for it.
pub fn at_pid(pid: u32, expected: &Identity) -> AtPid {
  if let Some(live) = identity(pid) {
    return if same_process(&live, expected) {
      AtPid::Recorded
    } else {
      AtPid::Stranger
    };
  }
  match imp::exited_start_time(pid) {
    Some(start_time) if start_time != expected.start_time => AtPid::Stranger,
    _ => AtPid::Exited,
  }
}

fn same_process(live: &Identity, expected: &Identity) -> bool {
  live.start_time == expected.start_time
    && match (&live.exe, &expected.exe) {
      (Some(a), Some(b)) => a == b,
      _ => true,
    }
}

/// What tells this boot of the machine from another, for records: start times count from boot on Linux,
/// so a record of another boot can name a new process by accident. Linux: the kernel's random boot id;
/// macOS: the boot time (`kern.boottime`). `None` elsewhere: on Windows start times are absolute creation
/// times, which no process of a later boot can have.
pub fn boot_id() -> Option<String> {
  static BOOT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
  BOOT.get_or_init(imp::boot_id).clone()
}

pub fn is_alive(pid: u32) -> bool {
  pid > 0 && stat(pid).is_some()
}

#[cfg(not(windows))]
pub fn identity(pid: u32) -> Option<Identity> {
  let start_time = stat(pid)?.start_time;
  Some(Identity {
    start_time,
    exe: imp::exe(pid),
  })
}

/// Both read through one handle: they describe the same process.
#[cfg(windows)]
pub fn identity(pid: u32) -> Option<Identity> {
  let process = crate::os::win::process::Pinned::running(pid, false)?;
  Some(Identity {
    start_time: process.times().ok()?.created,
    exe: process.image().ok(),
  })
}

/// The executable of a live process (the part of its identity that an `exec` changes).
pub fn exe(pid: u32) -> Option<String> {
  imp::exe(pid)
}

pub fn process_group(pid: u32) -> Option<u32> {
  stat(pid).map(|s| s.group)
}

pub use imp::{nice, owner_uid, parent, process_name, stat};

#[cfg(target_os = "linux")]
pub(crate) mod imp {
  use super::Stat;
  use std::fs;
  use std::sync::OnceLock;
  use std::time::Duration;

  // Field numbers of proc_pid_stat(5), minus 3 (pid and comm come before the split).
  const STATE: usize = 0;
  const PPID: usize = 1;
  const PGRP: usize = 2;
  const UTIME: usize = 11;
  const STIME: usize = 12;
  const START_TIME: usize = 19;
  const RSS_PAGES: usize = 21;

  pub fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| rustix::param::clock_ticks_per_second().max(1))
  }

  fn page_size() -> u64 {
    rustix::param::page_size() as u64
  }

  /// A small `/proc` file in one read. The kernel makes the whole text on the first read, and reports a
  /// size of 0, so `fs::read_to_string` first asks for the size, then reads in growing steps: 7 system
  /// calls where open, read and close do (a scan of every process reads one file per process).
  pub fn read_proc(path: impl AsRef<std::path::Path>) -> Option<String> {
    use std::io::Read;
    let mut file = fs::File::open(path).ok()?;
    let mut buffer = [0u8; 1024];
    let read = file.read(&mut buffer).ok()?;
    if read < buffer.len() {
      return Some(String::from_utf8_lossy(&buffer[..read]).into_owned());
    }
    let mut whole = buffer.to_vec();
    file.read_to_end(&mut whole).ok()?;
    Some(String::from_utf8_lossy(&whole).into_owned())
  }

  /// `/proc/PID/stat` of a live process; `None` when it is gone or only a zombie is left (it has exited and
  /// released everything; its entry waits for its parent). A process whose main thread is a zombie while
  /// other threads still run is still exiting, and still holds its files and sockets: it counts as alive.
  pub fn stat(pid: u32) -> Option<Stat> {
    let text = read_proc(format!("/proc/{pid}/stat"))?;
    let (stat, exited) = parse_stat(&text)?;
    if exited && !threads_left(pid) {
      return None;
    }
    Some(stat)
  }

  /// The start time of the zombie at `pid` (it has exited; its parent has not reaped it yet).
  pub fn exited_start_time(pid: u32) -> Option<u64> {
    let text = read_proc(format!("/proc/{pid}/stat"))?;
    let (stat, exited) = parse_stat(&text)?;
    (exited && !threads_left(pid)).then_some(stat.start_time)
  }

  pub fn boot_id() -> Option<String> {
    let id = read_proc("/proc/sys/kernel/random/boot_id")?;
    Some(id.trim().to_owned()).filter(|id| !id.is_empty())
  }

  fn threads_left(pid: u32) -> bool {
    fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| tasks.count() > 1)
  }

  /// The fields after the command name (which may itself hold spaces and `)`), and whether the main
  /// thread has exited (state Z or X).
  pub fn parse_stat(text: &str) -> Option<(Stat, bool)> {
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let exited = matches!(fields.get(STATE)?, &"Z" | &"X");
    let num = |i: usize| fields.get(i)?.parse::<u64>().ok();
    let ticks = num(UTIME)? + num(STIME)?;
    let stat = Stat {
      parent: num(PPID)? as u32,
      group: num(PGRP)? as u32,
      cpu_time: Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64),
      start_time: num(START_TIME)?,
      memory_bytes: num(RSS_PAGES)? * page_size(),
    };
    Some((stat, exited))
  }

  pub fn parent(pid: u32) -> Option<u32> {
    stat(pid).map(|s| s.parent)
  }

  /// The nice value (`/proc/PID/stat` field 19).
  pub fn nice(pid: u32) -> Option<i32> {
    let text = read_proc(format!("/proc/{pid}/stat"))?;
    text[text.rfind(')')? + 1..]
      .split_whitespace()
      .nth(19 - 3)?
      .parse()
      .ok()
  }

  pub fn exe(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/exe"))
      .ok()
      .map(|p| p.to_string_lossy().into_owned())
  }

  pub fn owner_uid(pid: u32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid())
  }

  /// The executable's file name; the kernel's short `comm` name where the executable cannot be read
  /// (another user's process). Not `comm` first: a runtime may rename its main thread (Node 24 calls it
  /// "MainThread").
  pub fn process_name(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/exe"))
      .ok()
      .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
      .or_else(|| read_proc(format!("/proc/{pid}/comm")).map(|s| s.trim_end().to_owned()))
  }

  /// Seconds since boot, the clock of `Stat::start_time` (in ticks).
  pub fn seconds_since_boot() -> Option<f64> {
    let text = read_proc("/proc/uptime")?;
    text.split_whitespace().next()?.parse().ok()
  }
}

/// Windows, through one handle per question (`os::win::process`).
#[cfg(windows)]
pub(crate) mod imp {
  use super::Stat;
  use crate::os::win::process::{self as win, Pinned};
  use std::time::Duration;

  pub fn stat(pid: u32) -> Option<Stat> {
    let live = win::live(pid)?;
    Some(Stat {
      parent: 0,
      group: pid,
      cpu_time: Duration::from_nanos(live.times.cpu.saturating_mul(100)),
      start_time: live.times.created,
      memory_bytes: live.memory,
    })
  }

  /// The creating process, while it runs and is older than `pid` (else the link names an earlier owner of
  /// that pid).
  pub fn parent(pid: u32) -> Option<u32> {
    let born = win::created(pid)?;
    let parent = win::snapshot().into_iter().find(|e| e.pid == pid)?.parent;
    win::created(parent)
      .is_some_and(|p| p <= born)
      .then_some(parent)
  }

  pub fn exe(pid: u32) -> Option<String> {
    Pinned::running(pid, false)?.image().ok()
  }

  /// Windows keeps no zombies that hold a pid for a group: an exited process is just gone.
  pub fn exited_start_time(_pid: u32) -> Option<u64> {
    None
  }

  /// Not needed: creation times are absolute, so no process of a later boot matches a record's.
  pub fn boot_id() -> Option<String> {
    None
  }

  pub fn nice(pid: u32) -> Option<i32> {
    Pinned::running(pid, false)?.nice()
  }

  /// Windows has no uids; `PinnedProcess` checks the token's user instead.
  pub fn owner_uid(_pid: u32) -> Option<u32> {
    None
  }

  /// The executable's file name; the system's process list where the process cannot be opened.
  pub fn process_name(pid: u32) -> Option<String> {
    let from_image = exe(pid).and_then(|path| {
      std::path::Path::new(&path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
    });
    from_image.or_else(|| {
      win::snapshot()
        .into_iter()
        .find(|e| e.pid == pid && pid != 0)
        .map(|e| e.name)
    })
  }
}

/// macOS and the other Unix systems, through `sysinfo`. Also compiled into Linux test builds, so that its
/// use of `sysinfo` is checked and exercised on the machine where the project is built.
#[cfg(any(not(any(target_os = "linux", windows)), all(test, target_os = "linux")))]
#[cfg_attr(target_os = "linux", allow(dead_code))]
pub(crate) mod portable {
  use super::Stat;
  use std::time::Duration;
  use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System, UpdateKind};

  pub fn with_process<T>(pid: u32, f: impl FnOnce(&sysinfo::Process) -> T) -> Option<T> {
    // sysinfo 0.40: System::new() returns a Result.
    let mut system = System::new().ok()?;
    let spid = Pid::from_u32(pid);
    let kind = ProcessRefreshKind::nothing()
      .with_exe(UpdateKind::Always)
      .with_user(UpdateKind::Always)
      .with_memory()
      .with_cpu();
    system.refresh_processes_specifics(ProcessesToUpdate::Some(&[spid]), true, kind);
    let process = system.process(spid)?;
    if matches!(
      process.status(),
      ProcessStatus::Zombie | ProcessStatus::Dead
    ) {
      return None;
    }
    Some(f(process))
  }

  pub fn parent(pid: u32) -> Option<u32> {
    stat(pid).map(|s| s.parent)
  }

  /// The start time of the zombie at `pid`.
  pub fn exited_start_time(pid: u32) -> Option<u64> {
    let mut system = System::new().ok()?;
    let spid = Pid::from_u32(pid);
    system.refresh_processes_specifics(
      ProcessesToUpdate::Some(&[spid]),
      true,
      ProcessRefreshKind::nothing(),
    );
    let process = system.process(spid)?;
    (process.status() == ProcessStatus::Zombie).then(|| process.start_time())
  }

  /// macOS: the boot time, which tells this boot from another (its start times are absolute anyway).
  #[cfg(target_os = "macos")]
  pub fn boot_id() -> Option<String> {
    let mut boot = libc::timeval {
      tv_sec: 0,
      tv_usec: 0,
    };
    let mut size = std::mem::size_of::<libc::timeval>();
    // SAFETY: the name is a NUL-terminated string, and `boot` and `size` describe a buffer of the size
    // kern.boottime fills (a struct timeval).
    let rc = unsafe {
      libc::sysctlbyname(
        c"kern.boottime".as_ptr(),
        (&mut boot as *mut libc::timeval).cast(),
        &mut size,
        std::ptr::null_mut(),
        0,
      )
    };
    (rc == 0 && boot.tv_sec > 0).then(|| format!("{}.{:06}", boot.tv_sec, boot.tv_usec))
  }

  #[cfg(not(target_os = "macos"))]
  pub fn boot_id() -> Option<String> {
    None
  }

  pub fn stat(pid: u32) -> Option<Stat> {
    if pid == 0 {
      return None;
    }
    with_process(pid, |p| Stat {
      parent: p.parent().map_or(0, |p| p.as_u32()),
      group: group_of(pid),
      cpu_time: Duration::from_millis(p.accumulated_cpu_time()),
      start_time: p.start_time(),
      memory_bytes: p.memory(),
    })
  }

  fn group_of(pid: u32) -> u32 {
    rustix::process::Pid::from_raw(pid as i32)
      .and_then(|p| rustix::process::getpgid(Some(p)).ok())
      .map_or(0, |g| g.as_raw_nonzero().get() as u32)
  }

  pub fn exe(pid: u32) -> Option<String> {
    with_process(pid, |p| p.exe().map(|e| e.to_string_lossy().into_owned())).flatten()
  }

  pub fn nice(pid: u32) -> Option<i32> {
    let pid = rustix::process::Pid::from_raw(pid as i32)?;
    rustix::process::getpriority_process(Some(pid)).ok()
  }

  pub fn owner_uid(pid: u32) -> Option<u32> {
    with_process(pid, |p| p.user_id().map(|u| **u)).flatten()
  }

  /// The executable's file name where known, else the name the OS reports.
  pub fn process_name(pid: u32) -> Option<String> {
    with_process(pid, |p| {
      p.exe()
        .and_then(|e| e.file_name())
        .unwrap_or(p.name())
        .to_string_lossy()
        .into_owned()
    })
  }
}

#[cfg(not(any(target_os = "linux", windows)))]
pub(crate) use portable as imp;

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn own_process_is_alive_and_has_a_stable_identity() {
    let me = own_pid();
    assert!(is_alive(me));
    let first = identity(me).expect("own identity");
    assert_eq!(identity(me), Some(first.clone()));
    assert!(matches(me, &first));
    let other_start = Identity {
      start_time: first.start_time + 1,
      exe: first.exe.clone(),
    };
    assert!(
      !matches(me, &other_start),
      "a different start time is another process"
    );
  }

  #[cfg(unix)]
  #[test]
  fn a_reaped_child_is_not_alive() {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    assert!(!is_alive(pid));
    assert!(identity(pid).is_none());
  }

  #[cfg(target_os = "linux")]
  #[test]
  fn a_command_name_with_spaces_and_parentheses_parses() {
    let line = "42 (a) b (c)) S 1 42 42 0 -1 4194304 0 0 0 0 250 50 0 0 20 0 1 0 999 1000 10 0";
    let (stat, exited) = imp::parse_stat(line).unwrap();
    assert_eq!((stat.parent, stat.group, stat.start_time), (1, 42, 999));
    assert_eq!(stat.cpu_time, Duration::from_secs(300 / imp::clock_ticks()));
    assert!(!exited);
    assert!(
      imp::parse_stat(&line.replace(" S ", " Z ")).unwrap().1,
      "a zombie has exited"
    );
  }

  /// The sysinfo-based code of the other systems agrees with /proc on everything identity rests on.
  #[cfg(target_os = "linux")]
  #[test]
  fn the_portable_implementation_agrees_with_proc() {
    let me = own_pid();
    let proc = stat(me).unwrap();
    let portable = portable::stat(me).unwrap();
    assert_eq!((portable.parent, portable.group), (proc.parent, proc.group));
    // sysinfo gives the start time in seconds since the epoch; /proc in ticks since boot.
    let boot = std::time::SystemTime::now()
      .duration_since(std::time::UNIX_EPOCH)
      .unwrap()
      .as_secs_f64()
      - imp::seconds_since_boot().unwrap();
    let started = boot + proc.start_time as f64 / imp::clock_ticks() as f64;
    assert!(
      (portable.start_time as f64 - started).abs() <= 2.0,
      "start times {} and {started}",
      portable.start_time
    );
    assert_eq!(portable::exe(me), imp::exe(me));
    assert_eq!(portable::process_name(me), process_name(me));
    assert_eq!(portable::owner_uid(me), owner_uid(me));
    assert!(portable.memory_bytes > 1024 * 1024);
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    assert!(portable::stat(pid).is_none());
  }
}
