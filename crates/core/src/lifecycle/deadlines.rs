//! Every time limit of a backend's life, computed once from the options: one value that the owner and
//! each step below it read, so that a limit (the polite-stop step, say) is worked out in one place.

use crate::options::Options;
use crate::os::stop::FORCE_GRACE;
use std::time::Duration;
use tokio::time::Instant;

/// How long the backend's last stderr lines are waited for after it exited, for an error report.
const OUTPUT_DRAIN: Duration = Duration::from_millis(200);
/// How often a replica the balancer took out (it refused a connection) is probed, when no watchdog does.
const PUT_BACK_PROBE: Duration = Duration::from_secs(1);
/// How long past its grace a stop may take before the owner force-kills what is left: longer than the
/// stop's own wait to see a force-killed group gone (`os::stop::FORCE_GRACE`), so that a stop that
/// works as it should never meets it.
const STOP_OVERRUN: Duration = FORCE_GRACE.saturating_add(Duration::from_secs(1));
/// The longest a polite stop request (`shutdown.http`) may take.
const POLITE_STEP_CAP: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq)]
pub struct Deadlines {
  /// From a process's spawn until it must be healthy (`startTimeoutMs`), for each try.
  pub start: Duration,
  /// From the polite stop requests until the force kill (`stopTimeoutMs`); also how long the open
  /// connections to a replacing replica may drain.
  pub stop: Duration,
  /// One health probe (`healthTimeoutMs`).
  pub probe: Duration,
  /// Between the watchdog's probes (`healthIntervalMs`), when it watches.
  pub watchdog: Option<Duration>,
  /// Between memory samples and `stats` events, when anything needs them.
  pub samples: Option<Duration>,
  /// Between probes of a replica the balancer took out.
  pub put_back: Duration,
  /// For the last stderr lines of a process that exited before it was healthy.
  pub output_drain: Duration,
}

impl Deadlines {
  pub fn new(o: &Options) -> Deadlines {
    Deadlines {
      start: o.start_timeout,
      stop: o.stop_timeout,
      probe: o.health_timeout,
      watchdog: o.health_interval,
      samples: o.memory_interval(),
      put_back: PUT_BACK_PROBE,
      output_drain: OUTPUT_DRAIN,
    }
  }

  /// What a polite stop request may take when the force kill comes `grace` after it: `min(grace / 4,
  /// 1 s)`, so that the signal that follows still has most of the grace.
  pub fn polite_step(grace: Duration) -> Duration {
    (grace / 4).min(POLITE_STEP_CAP)
  }

  /// When a stop with `grace` that began now must be over: past it, the owner force-kills what is left
  /// (an end that began earlier with a longer grace, or a process that ignored the force kill's wait).
  pub fn force_kill_after(grace: Duration) -> Duration {
    grace + STOP_OVERRUN
  }

  /// A probe for a person waiting on it (the dashboard): at most a second.
  pub fn quick_probe(&self) -> Duration {
    self.probe.min(POLITE_STEP_CAP)
  }

  /// The deadline `total` from now, and what is left of `total` after it: a wait longer than the clock
  /// can represent (months of retries, on some systems) is waited for in parts.
  pub fn part_of(total: Duration) -> (Instant, Duration) {
    let now = Instant::now();
    let mut part = total;
    loop {
      if let Some(deadline) = now.checked_add(part) {
        return (deadline, total - part);
      }
      part /= 2;
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn the_polite_step_is_a_quarter_of_the_grace_up_to_a_second() {
    assert_eq!(
      Deadlines::polite_step(Duration::from_millis(400)),
      Duration::from_millis(100)
    );
    assert_eq!(
      Deadlines::polite_step(Duration::from_secs(10)),
      Duration::from_secs(1)
    );
  }

  #[test]
  fn a_wait_beyond_the_clock_is_cut_into_parts_that_add_up() {
    let (deadline, rest) = Deadlines::part_of(Duration::from_secs(5));
    assert!(deadline > Instant::now() && rest.is_zero());
    let huge = Duration::from_secs(u64::MAX);
    let (deadline, rest) = Deadlines::part_of(huge);
    let part = deadline.saturating_duration_since(Instant::now());
    assert!(part > Duration::from_secs(3600), "a part is long: {part:?}");
    assert!(rest < huge && rest > Duration::ZERO);
  }
}
