//! The processes that make up a backend: its descendants, the members of its process group (which outlive
//! a wrapper that exits, docs/design.md §12), and the resources they use together.

use super::process::{self, Stat};
use std::collections::HashSet;
use std::time::Duration;

/// `pid` and every live descendant of it, parents before children.
pub fn with_descendants(pid: u32) -> Vec<u32> {
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

/// The live members of process group `pgid` (Unix; Windows has none: its trees are jobs).
pub fn group_members(pgid: u32) -> Vec<Member> {
  if pgid <= 1 {
    return Vec::new();
  }
  all_pids()
    .into_iter()
    .filter_map(|pid| {
      let stat = process::stat(pid)?;
      (stat.group == pgid).then(|| Member {
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

  pub fn all_pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
      return Vec::new();
    };
    entries
      .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
      .collect()
  }
}

#[cfg(not(target_os = "linux"))]
mod imp {
  use std::time::Duration;
  use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};

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

  fn system() -> Option<System> {
    let mut system = System::new().ok()?;
    system.refresh_processes_specifics(ProcessesToUpdate::All, true, ProcessRefreshKind::nothing());
    Some(system)
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
    let total = usage(&tree);
    assert_eq!(total.process_count, 4);
    let each = per_process(&tree);
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
