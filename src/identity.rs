//! Facts about a process by pid: is it alive, its start time and executable (its identity, so that a
//! reused pid is told apart), and its CPU and memory use. Linux reads `/proc` directly (one small file per
//! fact, ~20 µs); other systems ask `sysinfo` for just that pid.

/// What tells one process apart from a later one that got the same pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
  /// The start time as the OS reports it: clock ticks since boot on Linux, seconds since the epoch elsewhere.
  pub start_time: u64,
  /// The executable's path; `None` when the OS does not say (another user's process, for one).
  pub exe: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Usage {
  /// Average CPU use over the process's life, in percent of one core.
  pub cpu_percent: f64,
  /// Resident memory in bytes.
  pub memory_bytes: u64,
  pub uptime_ms: u64,
  pub name: String,
}

pub fn own_pid() -> u32 {
  std::process::id()
}

#[cfg(target_os = "linux")]
mod linux {
  use super::{Identity, Usage};
  use std::fs;

  /// The fields of `/proc/PID/stat` after the command name, which may itself hold spaces and `)`.
  pub(crate) fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &text[text.rfind(')')? + 1..];
    Some(after_name.split_whitespace().map(str::to_owned).collect())
  }

  // Field numbers of proc_pid_stat(5), minus 3 (pid and comm come before the split).
  const STATE: usize = 0;
  const PGRP: usize = 2;
  const UTIME: usize = 11;
  const STIME: usize = 12;
  const START_TIME: usize = 19;
  const RSS_PAGES: usize = 21;

  fn live_stat(pid: u32) -> Option<Vec<String>> {
    let fields = stat_fields(pid)?;
    // A zombie (Z) or dead (X) process has exited; only its entry is left for its parent to reap.
    match fields.get(STATE).map(String::as_str) {
      Some("Z") | Some("X") | None => None,
      Some(_) => Some(fields),
    }
  }

  pub fn is_alive(pid: u32) -> bool {
    pid > 0 && live_stat(pid).is_some()
  }

  pub fn identity(pid: u32) -> Option<Identity> {
    let fields = live_stat(pid)?;
    let start_time = fields.get(START_TIME)?.parse().ok()?;
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
      .ok()
      .map(|p| p.to_string_lossy().into_owned());
    Some(Identity { start_time, exe })
  }

  pub fn process_group(pid: u32) -> Option<u32> {
    live_stat(pid)?.get(PGRP)?.parse().ok()
  }

  /// A `sysconf` value, or `fallback` where the system does not say.
  fn sysconf_or(name: libc::c_int, fallback: u64) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let value = unsafe { libc::sysconf(name) };
    u64::try_from(value)
      .ok()
      .filter(|v| *v > 0)
      .unwrap_or(fallback)
  }

  fn uptime_seconds() -> Option<f64> {
    let text = fs::read_to_string("/proc/uptime").ok()?;
    text.split_whitespace().next()?.parse().ok()
  }

  pub fn usage(pid: u32) -> Option<Usage> {
    let fields = live_stat(pid)?;
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let hz = sysconf_or(libc::_SC_CLK_TCK, 100) as f64;
    let cpu_seconds = (num(UTIME)? + num(STIME)?) as f64 / hz;
    let started = num(START_TIME)? as f64 / hz;
    let alive_seconds = (uptime_seconds()? - started).max(0.0);
    let cpu_percent = if alive_seconds > 0.0 {
      (cpu_seconds / alive_seconds * 100.0 * 10.0).round() / 10.0
    } else {
      0.0
    };
    let name = process_name(pid).unwrap_or_default();
    Some(Usage {
      cpu_percent,
      memory_bytes: num(RSS_PAGES)? * sysconf_or(libc::_SC_PAGESIZE, 4096),
      uptime_ms: (alive_seconds * 1000.0) as u64,
      name,
    })
  }

  /// The executable's file name; the kernel's short `comm` name where the executable cannot be read (another
  /// user's process). Not `comm` first: a runtime may rename its main thread (Node 24 calls it
  /// "MainThread").
  pub fn process_name(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/exe"))
      .ok()
      .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
      .or_else(|| {
        fs::read_to_string(format!("/proc/{pid}/comm"))
          .ok()
          .map(|s| s.trim_end().to_owned())
      })
  }

  /// Live members of process group `pgid`, other than `except`. Scans `/proc` (a few ms with hundreds of
  /// processes); only used while stopping.
  pub fn group_members(pgid: u32, except: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
      return Vec::new();
    };
    entries
      .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
      .filter(|&pid| pid != except)
      .filter(|&pid| {
        live_stat(pid)
          .and_then(|f| f.get(PGRP)?.parse::<u32>().ok())
          .is_some_and(|g| g == pgid)
      })
      .collect()
  }
}

/// macOS, Windows and the rest, through `sysinfo`. Also compiled into Linux test builds, so that its use of
/// `sysinfo` is checked and exercised on the machine where the project is built.
#[cfg(any(not(target_os = "linux"), test))]
#[cfg_attr(target_os = "linux", allow(dead_code))]
mod portable {
  use super::{Identity, Usage};
  use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System, UpdateKind};

  fn with_process<T>(pid: u32, f: impl FnOnce(&sysinfo::Process) -> T) -> Option<T> {
    // sysinfo 0.40: System::new() returns a Result.
    let mut system = System::new().ok()?;
    let spid = Pid::from_u32(pid);
    let kind = ProcessRefreshKind::nothing()
      .with_exe(UpdateKind::Always)
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

  pub fn is_alive(pid: u32) -> bool {
    pid > 0 && with_process(pid, |_| ()).is_some()
  }

  pub fn identity(pid: u32) -> Option<Identity> {
    with_process(pid, |p| Identity {
      start_time: p.start_time(),
      exe: p.exe().map(|e| e.to_string_lossy().into_owned()),
    })
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

  pub fn process_group(pid: u32) -> Option<u32> {
    #[cfg(unix)]
    {
      // SAFETY: getpgid has no memory-safety preconditions.
      let pgid = unsafe { libc::getpgid(pid as libc::pid_t) };
      (pgid > 0).then_some(pgid as u32)
    }
    #[cfg(not(unix))]
    {
      let _ = pid;
      None
    }
  }

  pub fn usage(pid: u32) -> Option<Usage> {
    with_process(pid, |p| {
      let run_ms = p.run_time().saturating_mul(1000);
      let cpu_percent = if run_ms > 0 {
        (p.accumulated_cpu_time() as f64 / run_ms as f64 * 1000.0).round() / 10.0
      } else {
        0.0
      };
      Usage {
        cpu_percent,
        memory_bytes: p.memory(),
        uptime_ms: run_ms,
        name: p.name().to_string_lossy().into_owned(),
      }
    })
  }

  /// Without a cheap way to list a group's members, report none: the caller then force-kills the group
  /// right after its leader exits.
  pub fn group_members(_pgid: u32, _except: u32) -> Vec<u32> {
    Vec::new()
  }
}

#[cfg(target_os = "linux")]
pub use linux::{group_members, identity, is_alive, process_group, process_name, usage};
#[cfg(not(target_os = "linux"))]
pub use portable::{group_members, identity, is_alive, process_group, process_name, usage};

/// True when `pid` is alive and is still the process that `expected` describes (same start time, and the
/// same executable where both are known).
pub fn matches(pid: u32, expected: &Identity) -> bool {
  match identity(pid) {
    Some(live) => {
      live.start_time == expected.start_time
        && match (&live.exe, &expected.exe) {
          (Some(a), Some(b)) => a == b,
          _ => true,
        }
    }
    None => false,
  }
}

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

  #[test]
  fn a_reaped_child_is_not_alive() {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    assert!(!is_alive(pid));
    assert!(identity(pid).is_none());
  }

  /// The sysinfo-based code of the other systems agrees with /proc on what it can be compared on.
  #[test]
  fn the_portable_implementation_agrees_with_proc() {
    let me = own_pid();
    assert!(portable::is_alive(me));
    assert_eq!(
      portable::identity(me).unwrap().exe,
      identity(me).unwrap().exe
    );
    assert_eq!(portable::process_name(me), process_name(me));
    assert_eq!(portable::process_group(me), process_group(me));
    assert!(portable::usage(me).unwrap().memory_bytes > 1024 * 1024);
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    assert!(!portable::is_alive(pid));
  }

  #[test]
  fn usage_reports_memory() {
    let u = usage(own_pid()).unwrap();
    assert!(u.memory_bytes > 1024 * 1024);
  }
}
