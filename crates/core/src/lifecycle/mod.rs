//! The lifecycle of one named backend: clean up orphans → pick a port → spawn → record → wait until
//! healthy → run, supervised → stop. `task` is the backend's owner: the one task that holds its state and
//! takes the messages of `mailbox`, and publishes the `view` that reads without waiting see; `manager` the
//! public operations, which send it commands. `verdict` is what the owner makes of a probe, a memory sample
//! or a process that went down, on what it keeps of each slot (health, the restart book of `restart`, the
//! restart policy's arithmetic). Below the owner, each step returns what happened: `start` a start,
//! `attempt` one try on one port, `instance` one spawned process and its record, `supervisor` what watches
//! a running backend and carries out what the owner decided (exits, restarts, watchdog ticks, stats),
//! `launch` what to run; `context` is what they all use (options, events, log, ends).

mod context;
mod deadlines;
mod instance;
pub mod launch;
mod mailbox;
pub mod manager;
mod owner;
mod place;
mod platform;
mod ready;
mod restart;
mod run;
mod start;
mod supervisor;
mod task;
mod verdict;
mod view;

pub use manager::Manager;

use crate::os::spawn::{ExitInfo, Lines, Stream};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct BackendInfo {
  pub pid: u32,
  pub port: u16,
  pub host: String,
  pub url: String,
  /// Epoch milliseconds.
  pub started_at: u64,
  /// This start's secret (`token: true`).
  pub token: Option<String>,
  /// With replicas: each running one (`None` for a single process).
  pub replicas: Option<Vec<ReplicaInfo>>,
}

/// One running replica.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaInfo {
  pub pid: u32,
  /// Its own port behind the balancer; `None` when the replicas share the manager's socket.
  pub port: Option<u16>,
  pub healthy: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StopResult {
  pub pid: u32,
  pub exit: ExitInfo,
  pub forced: bool,
  /// From the stop request until the whole process group was gone.
  pub duration: Duration,
  /// Processes of the backend still alive after the force kill (its record is then kept).
  pub survivors: Vec<u32>,
  /// With replicas: the stop of each (the fields above then sum them up).
  pub replicas: Vec<StopResult>,
}

impl StopResult {
  /// One result for a stop of several processes: the replicas' added up (`pid` of the first, forced if
  /// any was); a single process's own result.
  pub fn combine(mut results: Vec<StopResult>, replicated: bool) -> Option<StopResult> {
    if !replicated {
      return results.pop();
    }
    let first = results.first()?.clone();
    Some(StopResult {
      pid: first.pid,
      exit: first.exit.clone(),
      forced: results.iter().any(|r| r.forced),
      duration: results.iter().map(|r| r.duration).max().unwrap_or_default(),
      survivors: results.iter().flat_map(|r| r.survivors.clone()).collect(),
      replicas: results,
    })
  }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
  Info,
  Warn,
}

/// Why a backend ended without anyone stopping it (and why it is restarted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
  /// It exited by itself.
  Exit,
  /// The watchdog's probes failed `unhealthyThreshold` times in a row.
  Unhealthy,
  /// Its tree used more memory than `maxMemoryBytes`.
  Memory,
}

impl Reason {
  pub fn as_str(self) -> &'static str {
    match self {
      Reason::Exit => "exit",
      Reason::Unhealthy => "unhealthy",
      Reason::Memory => "memory",
    }
  }
}

/// What the whole tree of the running backend uses, and how it is doing.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
  pub pid: u32,
  /// Percent of one core since the previous sample (0 on the first).
  pub cpu_percent: f64,
  pub memory_bytes: u64,
  pub process_count: u32,
  pub uptime: Duration,
  pub restarts: u32,
  pub healthy: bool,
  /// Of the last watchdog or readiness probe.
  pub health_latency: Option<Duration>,
  /// With replicas: each one's (the fields above add them up).
  pub replicas: Vec<Stats>,
}

/// Something that happened, for the app (the binding forwards these to JS as events and log lines).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
  Ready(BackendInfo),
  Exit {
    pid: u32,
    exit: ExitInfo,
    expected: bool,
    /// Set when the manager stopped it because of a watchdog or memory verdict.
    reason: Option<Reason>,
  },
  Restart {
    attempt: u32,
    delay: Duration,
    reason: Reason,
    pid: u32,
    exit: ExitInfo,
  },
  Failed {
    reason: Reason,
    restarts: u32,
    error: String,
  },
  Unhealthy {
    reason: Reason,
    failures: u32,
    error: Option<String>,
    memory_bytes: Option<u64>,
  },
  Healthy {
    latency: Option<Duration>,
    memory_bytes: Option<u64>,
  },
  PortChanged {
    previous: u16,
    port: u16,
  },
  Stats(Stats),
  /// Nothing is under way any more (the JS layer lets Node exit).
  Idle,
  /// An event about one replica (its index), when there are several.
  Replica(usize, Box<Event>),
  Log {
    level: Level,
    message: String,
  },
  /// What the backend says of itself (`STATUS=` on its notify socket; Unix).
  #[cfg(unix)]
  Status {
    text: String,
  },
  /// Something went wrong that does not stop the backend (`code` names it, e.g. `ERR_LOG_WRITE`).
  Warning {
    code: &'static str,
    message: String,
    /// Log lines dropped so far, for `ERR_LOG_WRITE`.
    dropped: Option<u64>,
  },
}

/// Where a manager reports what happens. `line` is separate: it is the one that can flood.
pub trait Events: Send + Sync {
  fn line(&self, stream: Stream, text: &str);
  /// The lines of one read of the backend's output, in order (by default: `line` for each).
  fn lines(&self, stream: Stream, lines: &Lines<'_>) {
    for text in lines.iter() {
      self.line(stream, text);
    }
  }
  fn emit(&self, event: Event);
}

// They spawn Unix programs (python3, sleep); the Windows spawn has its own tests in os::win.
#[cfg(all(test, unix))]
mod tests;
