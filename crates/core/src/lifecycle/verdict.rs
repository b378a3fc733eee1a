//! The owner's verdicts on a running process (docs/design.md §21): what a watchdog probe or a memory
//! sample, sent to the owner as `Input::Probe`/`Input::Sample`, means for the process — `unhealthy` after
//! `unhealthyThreshold` failed probes in a row or above `maxMemoryBytes`, `healthy` again — with the events
//! that say so. The slot's tick task only probes and samples; the owner decides, and the tick task then
//! keeps the verdict (`keep`) and ends the process when the owner calls for a restart.

use super::context::Context;
use super::instance::Instance;
use super::run::{lock, Run, Slot};
use super::{Event, Reason};
use crate::net::health::ProbeOutcome;
use std::time::Duration;

/// Keeps the current verdict in the PID record (rewritten only when it changed) for `backend-pm status`,
/// and tells the balancer.
pub async fn keep(manager: &Context, run: &Run, slot: &Slot, instance: &Instance) {
  let healthy = lock(&slot.health).healthy;
  run.health_changed(slot, healthy);
  if let Err(e) = instance.set_healthy(healthy).await {
    manager.record_not_updated(instance, &e);
  }
}

/// Counts a watchdog probe; true when it made the process unhealthy (just now).
pub fn probe(
  manager: &Context,
  run: &Run,
  slot: &Slot,
  outcome: ProbeOutcome,
  latency: Duration,
) -> bool {
  let threshold = manager.options.unhealthy_threshold;
  let mut health = lock(&slot.health);
  if outcome.is_healthy() {
    health.failures = 0;
    health.latency = Some(latency);
    if std::mem::take(&mut health.reported_probes) {
      health.healthy = !health.reported_memory;
      drop(health);
      manager.emit_for(
        run.replica(slot),
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
  let failures = health.failures;
  drop(health);
  manager.emit_for(
    run.replica(slot),
    Event::Unhealthy {
      reason: Reason::Unhealthy,
      failures,
      error: Some(outcome.describe()),
      memory_bytes: None,
    },
  );
  true
}

/// Compares a memory sample with `maxMemoryBytes`; true when it made the process unhealthy (just now).
pub fn memory(manager: &Context, run: &Run, slot: &Slot, memory_bytes: u64) -> bool {
  let Some(limit) = manager.options.max_memory_bytes else {
    return false;
  };
  let mut health = lock(&slot.health);
  if memory_bytes <= limit {
    if std::mem::take(&mut health.reported_memory) {
      health.healthy = !health.reported_probes;
      let latency = health.latency;
      drop(health);
      manager.emit_for(
        run.replica(slot),
        Event::Healthy {
          latency,
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
  drop(health);
  manager.emit_for(
    run.replica(slot),
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
