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
use crate::net::balancer::TakenOut;
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
  /// `unhealthy` was reported because the balancer took the process out, and not yet `healthy`.
  reported_traffic: bool,
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

/// Counts a watchdog probe of a process: the change of verdict it makes, if any (`healthy` or
/// `unhealthy`), for the owner to report once it has published the new state.
pub fn probe(
  manager: &Context,
  health: &mut Health,
  outcome: ProbeOutcome,
  latency: Duration,
) -> Option<Event> {
  if outcome.is_healthy() {
    health.failures = 0;
    health.latency = Some(latency);
    // An answer also puts back a process the balancer took out (its probes are the same request).
    let traffic = health.passed(Check::Traffic);
    (health.passed(Check::Probes) || traffic).then_some(Event::Healthy {
      latency: Some(latency),
      memory_bytes: None,
    })
  } else {
    health.failures += 1;
    let news =
      health.failures == manager.options.unhealthy_threshold && health.failed(Check::Probes);
    news.then(|| unhealthy(Reason::Unhealthy, health.failures, outcome.describe(), None))
  }
}

/// The balancer took the process out (`why`): unhealthy until a probe answers again. Never a restart by
/// itself: the watchdog's probes decide that.
pub fn taken_out(manager: &Context, health: &mut Health, why: TakenOut) -> Option<Event> {
  let error = match why {
    TakenOut::Refused => "the balancer took it out: a connection to it was refused or timed out".into(),
    TakenOut::Reset => {
      "the balancer took it out: it reset a connection before answering".into()
    }
    TakenOut::Frozen => format!(
      "the balancer took it out: it sent no byte of an answer within balancer.firstByteTimeoutMs ({} ms) of a request",
      manager
        .options
        .balancer
        .first_byte_timeout
        .map_or(0, |t| t.as_millis())
    ),
  };
  health
    .failed(Check::Traffic)
    .then(|| unhealthy(Reason::Unhealthy, 0, error, None))
}

/// Compares a memory sample with `maxMemoryBytes`: the change of verdict it makes, if any.
pub fn memory(manager: &Context, health: &mut Health, memory_bytes: u64) -> Option<Event> {
  let limit = manager.options.max_memory_bytes?;
  if memory_bytes <= limit {
    health.passed(Check::Memory).then_some(Event::Healthy {
      latency: health.latency,
      memory_bytes: Some(memory_bytes),
    })
  } else {
    let error = format!(
      "its processes use {memory_bytes} bytes of memory, more than maxMemoryBytes ({limit})"
    );
    health
      .failed(Check::Memory)
      .then(|| unhealthy(Reason::Memory, 0, error, Some(memory_bytes)))
  }
}

/// What a verdict comes from: each check reports a process unhealthy once, until it passes again; the
/// process is healthy while neither does.
#[derive(Clone, Copy)]
enum Check {
  Probes,
  Memory,
  Traffic,
}

impl Health {
  fn reported(&mut self, check: Check) -> &mut bool {
    match check {
      Check::Probes => &mut self.reported_probes,
      Check::Memory => &mut self.reported_memory,
      Check::Traffic => &mut self.reported_traffic,
    }
  }

  /// The check passed; true when it had reported the process unhealthy (`healthy` is then news).
  fn passed(&mut self, check: Check) -> bool {
    let was = std::mem::take(self.reported(check));
    self.healthy = !self.reported_probes && !self.reported_memory && !self.reported_traffic;
    was
  }

  /// The check failed; true when it had not reported the process unhealthy yet (`unhealthy` is news).
  fn failed(&mut self, check: Check) -> bool {
    self.healthy = false;
    !std::mem::replace(self.reported(check), true)
  }
}

fn unhealthy(reason: Reason, failures: u32, error: String, memory_bytes: Option<u64>) -> Event {
  Event::Unhealthy {
    reason,
    failures,
    error: Some(error),
    memory_bytes,
  }
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
  let held = care.pid.take();
  let health = std::mem::take(&mut care.health);
  let book = care.book.as_mut()?;
  let (pid, exit, reason) = match gone {
    Gone::Exited { pid, exit, reason } => (pid, exit, reason),
    Gone::Unstartable(error) => {
      let restarts = book.total();
      give_up(manager, replica, care.last, restarts, error.to_string());
      return None;
    }
  };
  // How long it was healthy counts for the process the owner kept the health of; one that ended before
  // it became the slot's (a restart's or a reload's that was never ready) never was.
  let healthy_since = health.healthy_since.filter(|_| held == Some(pid));
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
  manager.log_for(
    replica,
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
  manager.log_for(
    replica,
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
