//! The owner's verdicts on the processes of the run it holds (docs/design.md §21), on what it keeps of each
//! slot as plain fields (`Care`: the restart policy's book and the process's health). A watchdog probe or a
//! memory sample (`Input::Probe`/`Input::Sample`) makes a process `unhealthy` after `unhealthyThreshold`
//! failed probes in a row or above `maxMemoryBytes`, and `healthy` again, with the events that say so; a
//! process that went down (`Input::Down`) is restarted after the policy's backoff, or given up on. The
//! slot's task only probes, samples and reports; it keeps the verdict it is answered with (`keep`) and
//! starts a process again only when the owner tells it to.

use super::context::Context;
use super::instance::Instance;
use super::mailbox::Gone;
use super::restart::{Decision, RestartBook};
use super::run::{Run, Slot, SlotView};
use super::{Event, Level, Reason};
use crate::net::health::ProbeOutcome;
use crate::options::RestartPolicy;
use std::time::Duration;
use tokio::time::Instant;

/// How a process is doing, as the watchdog and the memory sampler see it.
#[derive(Default)]
pub struct Health {
  pub healthy: bool,
  /// Watchdog probes failed in a row.
  failures: u32,
  /// Of the last watchdog or readiness probe.
  pub latency: Option<Duration>,
  /// `unhealthy` was reported for failed probes, and not yet `healthy`.
  reported_probes: bool,
  /// `unhealthy` was reported for memory, and not yet `healthy`.
  reported_memory: bool,
  /// Since when the current process has been healthy.
  healthy_since: Option<Instant>,
}

/// What the owner keeps of one slot of the run it holds (the one process, or a replica).
pub struct Care {
  /// The restart policy's book (`None`: no restarts).
  book: Option<RestartBook>,
  pub health: Health,
  /// The slot's process now (`None`: it is down).
  pub pid: Option<u32>,
  /// Why the slot's process last went down without a stop: the reason of a give-up that follows.
  last: Reason,
}

impl Care {
  /// A slot whose process `pid` just became ready, its readiness probe answered after `latency`.
  pub fn new(policy: Option<RestartPolicy>, pid: u32, latency: Duration) -> Care {
    let mut care = Care {
      book: policy.map(RestartBook::new),
      health: Health::default(),
      pid: None,
      last: Reason::Exit,
    };
    care.up(pid, latency);
    care
  }

  /// A new process is up in the slot (a restart's, or a reload's).
  pub fn up(&mut self, pid: u32, latency: Duration) {
    self.pid = Some(pid);
    self.health = Health {
      healthy: true,
      latency: Some(latency),
      healthy_since: Some(Instant::now()),
      ..Health::default()
    };
  }

  pub fn restarts(&self) -> u32 {
    self.book.as_ref().map_or(0, RestartBook::total)
  }

  /// What readers that do not wait see of the slot.
  pub fn view(&self) -> SlotView {
    SlotView {
      healthy: self.health.healthy,
      latency: self.health.latency,
      restarts: self.restarts(),
    }
  }
}

/// Keeps the current verdict in the PID record (rewritten only when it changed) for `backend-pm status`,
/// and tells the balancer.
pub async fn keep(manager: &Context, run: &Run, slot: &Slot, instance: &Instance, healthy: bool) {
  run.health_changed(slot, healthy);
  if let Err(e) = instance.set_healthy(healthy).await {
    manager.record_not_updated(instance, &e);
  }
}

/// Counts a watchdog probe of the process of `replica`; true when it made the process unhealthy (just now).
pub fn probe(
  manager: &Context,
  replica: Option<usize>,
  health: &mut Health,
  outcome: ProbeOutcome,
  latency: Duration,
) -> bool {
  let threshold = manager.options.unhealthy_threshold;
  if outcome.is_healthy() {
    health.failures = 0;
    health.latency = Some(latency);
    if std::mem::take(&mut health.reported_probes) {
      health.healthy = !health.reported_memory;
      manager.emit_for(
        replica,
        Event::Healthy {
          latency: Some(latency),
          memory_bytes: None,
        },
      );
    }
    return false;
  }
  health.failures += 1;
  if health.failures != threshold {
    return false;
  }
  health.reported_probes = true;
  health.healthy = false;
  manager.emit_for(
    replica,
    Event::Unhealthy {
      reason: Reason::Unhealthy,
      failures: health.failures,
      error: Some(outcome.describe()),
      memory_bytes: None,
    },
  );
  true
}

/// Compares a memory sample with `maxMemoryBytes`; true when it made the process unhealthy (just now).
pub fn memory(
  manager: &Context,
  replica: Option<usize>,
  health: &mut Health,
  memory_bytes: u64,
) -> bool {
  let Some(limit) = manager.options.max_memory_bytes else {
    return false;
  };
  if memory_bytes <= limit {
    if std::mem::take(&mut health.reported_memory) {
      health.healthy = !health.reported_probes;
      manager.emit_for(
        replica,
        Event::Healthy {
          latency: health.latency,
          memory_bytes: Some(memory_bytes),
        },
      );
    }
    return false;
  }
  if health.reported_memory {
    return false;
  }
  health.reported_memory = true;
  health.healthy = false;
  manager.emit_for(
    replica,
    Event::Unhealthy {
      reason: Reason::Memory,
      failures: 0,
      error: Some(format!(
        "its processes use {memory_bytes} bytes of memory, more than maxMemoryBytes ({limit})"
      )),
      memory_bytes: Some(memory_bytes),
    },
  );
  true
}

/// The process of `replica` went down without a stop (or a restart of it could not start at all): the
/// restart it gets, as its attempt and backoff (`restart` reported), or none — no restart policy, or the
/// policy gives up (`failed` reported).
pub fn down(
  manager: &Context,
  replica: Option<usize>,
  care: &mut Care,
  gone: Gone,
) -> Option<(u32, Duration)> {
  let healthy_since = care.health.healthy_since;
  care.health = Health::default();
  care.pid = None;
  let book = care.book.as_mut()?;
  let (pid, exit, reason) = match gone {
    Gone::Exited { pid, exit, reason } => (pid, exit, reason),
    Gone::Unstartable(error) => {
      let restarts = book.total();
      give_up(manager, replica, care.last, restarts, error.to_string());
      return None;
    }
  };
  care.last = reason;
  let decision = book.decide(
    std::time::Instant::now(),
    healthy_since.map(Instant::into_std),
  );
  let (attempt, delay) = match decision {
    Decision::GiveUp { restarts } => {
      let error = format!(
        "the backend ended {} times within restart.windowMs; it stays down",
        restarts + 1
      );
      give_up(manager, replica, reason, restarts, error);
      return None;
    }
    Decision::Restart { attempt, delay } => (attempt, delay),
  };
  manager.emit_for(
    replica,
    Event::Restart {
      attempt,
      delay,
      reason,
      pid,
      exit,
    },
  );
  manager.log(
    Level::Warn,
    format!(
      "restarting the backend{} in {} ms (restart {attempt}, after {})",
      replica
        .map(|r| format!(" (replica {r})"))
        .unwrap_or_default(),
      delay.as_millis(),
      reason.as_str()
    ),
  );
  Some((attempt, delay))
}

fn give_up(
  manager: &Context,
  replica: Option<usize>,
  reason: Reason,
  restarts: u32,
  error: String,
) {
  manager.log(
    Level::Warn,
    format!("the backend is down for good: {error}"),
  );
  manager.emit_for(
    replica,
    Event::Failed {
      reason,
      restarts,
      error,
    },
  );
}
