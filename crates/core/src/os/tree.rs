//! The processes that make up a backend: its descendants, the members of its process group (which outlive
//! a wrapper that exits, docs/design.md §12), and the resources they use together.

use super::process::{self, Stat};
use std::collections::HashSet;
use std::time::Duration;

/// `pid` and every live descendant of it, parents before children. Windows: for a backend of ours, its
/// job's processes (the whole tree, whoever their parents were).
pub fn with_descendants(pid: u32) -> Vec<u32> {
  if let Some(tree) = imp::job_tree(pid) {
    return tree;
  }
  if !process::is_alive(pid) {
    return Vec::new();
  }
  let mut tree = vec![pid];
  let mut at = 0;
  while at < tree.len() {
    let children = imp::children(tree[at]);
    for child in children {
      // A pid is listed once even if the table changed under us.
      if !tree.contains(&child) {
        tree.push(child);
      }
    }
    at += 1;
  }
  tree
}

/// Every process of the machine (that this user can see).
pub fn all_pids() -> Vec<u32> {
  imp::all_pids()
}

/// A live member of a process group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
  pub pid: u32,
  pub start_time: u64,
  pub uid: Option<u32>,
}

/// The live members of process group `pgid`. macOS lists them in one call; Linux scans every process.
/// Windows keeps no group ids it can be asked about: a backend of ours has its job, another process its
/// tree while it runs, and a gone leader nothing (its pid may name a stranger's process by now; the job
/// ended its tree with the app anyway).
pub fn group_members(pgid: u32) -> Vec<Member> {
  if pgid <= 1 {
    return Vec::new();
  }
  imp::group_pids(pgid)
    .unwrap_or_else(all_pids)
    .into_iter()
    .filter_map(|pid| {
      let stat = process::stat(pid)?;
      (cfg!(windows) || stat.group == pgid).then(|| Member {
        pid,
        start_time: stat.start_time,
        uid: process::owner_uid(pid),
      })
    })
    .collect()
}

/// `pid`, its parent, its parent's parent … up to the first process; a cleanup never signals these.
pub fn ancestry(pid: u32) -> HashSet<u32> {
  let mut seen = HashSet::new();
  let mut at = pid;
  while at > 0 && seen.insert(at) {
    match process::parent(at) {
      Some(parent) => at = parent,
      None => break,
    }
  }
  seen
}

/// What a set of processes uses together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
  pub cpu_time: Duration,
  pub memory_bytes: u64,
  pub process_count: u32,
}

/// What one process uses, with its age.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessUsage {
  pub pid: u32,
  pub cpu_time: Duration,
  pub memory_bytes: u64,
  /// Since the process started.
  pub elapsed: Duration,
}

/// CPU time, memory and age of each live process of `pids` (the gone ones are left out). Linux: one read
/// of `/proc/PID/stat` each, and one of `/proc/uptime`.
pub fn per_process(pids: &[u32]) -> Vec<ProcessUsage> {
  let now = imp::clock_now();
  pids
    .iter()
    .filter_map(|&pid| {
      let stat = process::stat(pid)?;
      Some(ProcessUsage {
        pid,
        cpu_time: stat.cpu_time,
        memory_bytes: stat.memory_bytes,
        elapsed: now.map_or(Duration::ZERO, |now| {
          imp::elapsed_since(now, stat.start_time)
        }),
      })
    })
    .collect()
}

pub fn usage(pids: &[u32]) -> Usage {
  pids.iter().filter_map(|&pid| process::stat(pid)).fold(
    Usage::default(),
    |total,
     Stat {
       cpu_time,
       memory_bytes,
       ..
     }| Usage {
      cpu_time: total.cpu_time + cpu_time,
      memory_bytes: total.memory_bytes + memory_bytes,
      process_count: total.process_count + 1,
    },
  )
}

#[cfg(target_os = "linux")]
mod imp {
  use std::fs;
  use std::time::Duration;

  /// Seconds since boot: the clock of the start times in `/proc/PID/stat`.
  pub fn clock_now() -> Option<f64> {
    super::process::imp::seconds_since_boot()
  }

  pub fn elapsed_since(now: f64, start_ticks: u64) -> Duration {
    let started = start_ticks as f64 / super::process::imp::clock_ticks() as f64;
    Duration::from_secs_f64((now - started).max(0.0))
  }

  /// The children of every thread of `pid` (`/proc/PID/task/TID/children`); a full scan of `/proc` for
  /// parent pids where the kernel lacks that file (CONFIG_PROC_CHILDREN).
  pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
      return Vec::new();
    };
    let mut found = Vec::new();
    for task in tasks.flatten() {
      match fs::read_to_string(task.path().join("children")) {
        Ok(text) => found.extend(
          text
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok()),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
          return all_pids()
            .into_iter()
            .filter(|&p| super::process::parent(p) == Some(pid))
            .collect();
        }
        Err(_) => {}
      }
    }
    found
  }

  /// No list of a group's members: every process is looked at.
  pub fn group_pids(_pgid: u32) -> Option<Vec<u32>> {
    None
  }

  /// No job objects: a tree is found through parents.
  pub fn job_tree(_pid: u32) -> Option<Vec<u32>> {
    None
  }

  pub fn all_pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
      return Vec::new();
    };
    entries
      .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
      .collect()
  }
}

/// Windows: the job of our backends, the system's process list for anything else.
#[cfg(windows)]
mod imp {
  use crate::os::win::job::Job;
  use crate::os::win::process as win;
  use std::time::Duration;

  /// Now, as a FILETIME: the clock of the start times on Windows.
  pub fn clock_now() -> Option<f64> {
    Some(win::now() as f64)
  }

  pub fn elapsed_since(now: f64, created: u64) -> Duration {
    Duration::from_nanos(((now - created as f64).max(0.0) as u64).saturating_mul(100))
  }

  /// Our backend's tree: its job's processes (the leader first, while it runs).
  pub fn job_tree(pid: u32) -> Option<Vec<u32>> {
    let job = Job::of(pid)?;
    let mut tree: Vec<u32> = super::process::is_alive(pid)
      .then_some(pid)
      .into_iter()
      .collect();
    tree.extend(job.pids().ok()?.into_iter().filter(|&p| p != pid));
    Some(tree)
  }

  pub fn group_pids(pgid: u32) -> Option<Vec<u32>> {
    Some(match job_tree(pgid) {
      Some(tree) => tree,
      None => super::with_descendants(pgid),
    })
  }

  pub fn children(pid: u32) -> Vec<u32> {
    win::children(pid)
  }

  pub fn all_pids() -> Vec<u32> {
    win::snapshot().into_iter().map(|e| e.pid).collect()
  }
}

/// The console host (conhost.exe) that Windows adds to a backend's job when it gets a hidden console of
/// its own: part of what the backend costs, but not a process it started, and it exits by itself.
#[cfg(windows)]
pub fn is_console_host(pid: u32) -> bool {
  process::process_name(pid).is_some_and(|n| n.eq_ignore_ascii_case("conhost.exe"))
}

/// macOS (libproc, one call per question) and the other Unix systems (sysinfo).
#[cfg(not(any(target_os = "linux", windows)))]
mod imp {
  use std::time::Duration;

  /// No job objects: a tree is found through parents.
  pub fn job_tree(_pid: u32) -> Option<Vec<u32>> {
    None
  }

  /// Seconds since the epoch: the clock of sysinfo's start times.
  pub fn clock_now() -> Option<f64> {
    std::time::SystemTime::now()
      .duration_since(std::time::UNIX_EPOCH)
      .ok()
      .map(|d| d.as_secs_f64())
  }

  pub fn elapsed_since(now: f64, start_secs: u64) -> Duration {
    Duration::from_secs_f64((now - start_secs as f64).max(0.0))
  }

  #[cfg(target_os = "macos")]
  pub use libproc::{all_pids, children, group_pids};

  #[cfg(target_os = "macos")]
  mod libproc {
    // The filters of proc_listpids (sys/proc_info.h), which libc does not define.
    const PROC_ALL_PIDS: u32 = 1;
    const PROC_PGRP_ONLY: u32 = 2;
    const PROC_PPID_ONLY: u32 = 6;

    /// The pids `proc_listpids` gives for a filter, growing the buffer until they fit (it returns the
    /// bytes written).
    fn pids(filter: u32, arg: u32) -> Option<Vec<u32>> {
      let mut capacity = 256usize;
      loop {
        let mut buf = vec![0 as libc::pid_t; capacity];
        let size = std::mem::size_of_val(buf.as_slice()) as libc::c_int;
        // SAFETY: libproc writes at most `size` bytes into the buffer.
        let written = unsafe { libc::proc_listpids(filter, arg, buf.as_mut_ptr().cast(), size) };
        if written < 0 {
          return None;
        }
        let n = written as usize / std::mem::size_of::<libc::pid_t>();
        // A full buffer may have been cut short: ask again with room to spare.
        if n >= capacity && capacity < 1 << 20 {
          capacity *= 4;
          continue;
        }
        buf.truncate(n);
        return Some(
          buf
            .into_iter()
            .filter(|&p| p > 0)
            .map(|p| p as u32)
            .collect(),
        );
      }
    }

    pub fn group_pids(pgid: u32) -> Option<Vec<u32>> {
      pids(PROC_PGRP_ONLY, pgid)
    }

    pub fn children(pid: u32) -> Vec<u32> {
      pids(PROC_PPID_ONLY, pid).unwrap_or_default()
    }

    pub fn all_pids() -> Vec<u32> {
      pids(PROC_ALL_PIDS, 0).unwrap_or_default()
    }
  }

  #[cfg(not(target_os = "macos"))]
  pub use sysinfo_tree::{all_pids, children, group_pids};

  #[cfg(not(target_os = "macos"))]
  mod sysinfo_tree {
    use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};

    fn system() -> Option<System> {
      let mut system = System::new().ok()?;
      system.refresh_processes_specifics(
        ProcessesToUpdate::All,
        true,
        ProcessRefreshKind::nothing(),
      );
      Some(system)
    }

    pub fn group_pids(_pgid: u32) -> Option<Vec<u32>> {
      None
    }

    pub fn children(pid: u32) -> Vec<u32> {
      let Some(system) = system() else {
        return Vec::new();
      };
      system
        .processes()
        .iter()
        .filter(|(_, p)| p.parent().is_some_and(|parent| parent.as_u32() == pid))
        .map(|(child, _)| child.as_u32())
        .collect()
    }

    pub fn all_pids() -> Vec<u32> {
      system()
        .map(|s| s.processes().keys().map(|p| p.as_u32()).collect())
        .unwrap_or_default()
    }
  }
}

#[cfg(all(test, unix))]
mod tests {
  use super::*;
  use std::os::unix::process::CommandExt;

  fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !done() && std::time::Instant::now() < deadline {
      std::thread::sleep(Duration::from_millis(5));
    }
  }

  #[test]
  fn a_tree_lists_children_and_grandchildren_and_the_group_its_members() {
    let mut leader = std::process::Command::new("/bin/sh")
      .args(["-c", "sh -c 'sleep 30 & wait' & sleep 30 & wait"])
      .process_group(0)
      .spawn()
      .unwrap();
    let pid = leader.id();
    // sh, its two children, and the inner sh's sleep.
    wait_until(|| with_descendants(pid).len() >= 4);
    let tree = with_descendants(pid);
    assert_eq!(tree.len(), 4, "{tree:?}");
    assert_eq!(tree[0], pid);
    let members: HashSet<u32> = group_members(pid).into_iter().map(|m| m.pid).collect();
    assert_eq!(members, tree.iter().copied().collect());
    // The two reads happen at different instants, and a child that is still
    // exec'ing changes its resident size between them: read again until two
    // reads agree (the processes settle within milliseconds).
    let sample = || {
      let total = usage(&tree);
      let each = per_process(&tree);
      (total, each)
    };
    let (mut total, mut each) = sample();
    wait_until(|| {
      (total, each) = sample();
      each.iter().map(|u| u.memory_bytes).sum::<u64>() == total.memory_bytes
    });
    assert_eq!(total.process_count, 4);
    assert_eq!(each.len(), 4);
    assert_eq!(
      each.iter().map(|u| u.memory_bytes).sum::<u64>(),
      total.memory_bytes
    );
    assert!(each.iter().all(|u| u.elapsed < Duration::from_secs(60)));
    assert!(total.memory_bytes > 0);
    rustix::process::kill_process_group(
      rustix::process::Pid::from_raw(pid as i32).unwrap(),
      rustix::process::Signal::KILL,
    )
    .unwrap();
    leader.wait().unwrap();
    wait_until(|| group_members(pid).is_empty());
    assert!(group_members(pid).is_empty());
  }

  #[test]
  fn the_ancestry_holds_this_process_and_its_parent() {
    let me = process::own_pid();
    let ancestry = ancestry(me);
    assert!(ancestry.contains(&me));
    assert!(ancestry.contains(&process::parent(me).unwrap()));
  }
}
