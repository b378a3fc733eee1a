//! The restart policy's bookkeeping: how long to wait before the next restart, and when there have been
//! too many. Pure: time is passed in, so the rules are tested without waiting.

use crate::options::RestartPolicy;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What to do after an unexpected end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
  /// Start again after this delay; `attempt` counts the restarts of this run so far, this one included.
  Restart { attempt: u32, delay: Duration },
  /// More than `maxRestarts` restarts within `windowMs`: stay down.
  GiveUp { restarts: u32 },
}

#[derive(Debug)]
pub struct RestartBook {
  policy: RestartPolicy,
  /// When each restart of the window was scheduled.
  recent: VecDeque<Instant>,
  next_delay: Duration,
  total: u32,
}

impl RestartBook {
  pub fn new(policy: RestartPolicy) -> RestartBook {
    RestartBook {
      next_delay: policy.initial_delay,
      policy,
      recent: VecDeque::new(),
      total: 0,
    }
  }

  pub fn total(&self) -> u32 {
    self.total
  }

  /// An instance ended without being asked to, at `now`; it had been healthy since `healthy_since` (if
  /// it ever was). Long enough healthy, and the delay starts over.
  pub fn decide(&mut self, now: Instant, healthy_since: Option<Instant>) -> Decision {
    if healthy_since
      .is_some_and(|since| now.saturating_duration_since(since) >= self.policy.reset_after)
    {
      self.next_delay = self.policy.initial_delay;
    }
    while self
      .recent
      .front()
      .is_some_and(|t| now.saturating_duration_since(*t) >= self.policy.window)
    {
      self.recent.pop_front();
    }
    if self.recent.len() as u32 >= self.policy.max_restarts {
      return Decision::GiveUp {
        restarts: self.total,
      };
    }
    self.recent.push_back(now);
    self.total += 1;
    let delay = self.next_delay;
    self.next_delay = (self.next_delay * 2).min(self.policy.max_delay);
    Decision::Restart {
      attempt: self.total,
      delay,
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn policy() -> RestartPolicy {
    RestartPolicy {
      max_restarts: 3,
      window: Duration::from_secs(60),
      initial_delay: Duration::from_millis(100),
      max_delay: Duration::from_millis(300),
      reset_after: Duration::from_secs(30),
    }
  }

  #[test]
  fn delays_double_up_to_the_cap_and_too_many_restarts_give_up() {
    let mut book = RestartBook::new(policy());
    let t = Instant::now();
    let delays: Vec<Decision> = (0..4)
      .map(|i| book.decide(t + Duration::from_secs(i), None))
      .collect();
    assert_eq!(
      delays,
      vec![
        Decision::Restart {
          attempt: 1,
          delay: Duration::from_millis(100)
        },
        Decision::Restart {
          attempt: 2,
          delay: Duration::from_millis(200)
        },
        Decision::Restart {
          attempt: 3,
          delay: Duration::from_millis(300)
        },
        Decision::GiveUp { restarts: 3 },
      ]
    );
  }

  #[test]
  fn restarts_older_than_the_window_do_not_count() {
    let mut book = RestartBook::new(policy());
    let t = Instant::now();
    for i in 0..3 {
      assert!(matches!(
        book.decide(t + Duration::from_secs(i), None),
        Decision::Restart { .. }
      ));
    }
    let later = t + Duration::from_secs(61);
    assert!(matches!(book.decide(later, None), Decision::Restart { .. }));
  }

  #[test]
  fn a_long_healthy_run_starts_the_delay_over() {
    let mut book = RestartBook::new(policy());
    let t = Instant::now();
    book.decide(t, None);
    book.decide(t, None);
    let healthy_since = t + Duration::from_secs(1);
    let after = healthy_since + Duration::from_secs(31);
    assert_eq!(
      book.decide(after, Some(healthy_since)),
      Decision::Restart {
        attempt: 3,
        delay: Duration::from_millis(100)
      }
    );
  }

  #[test]
  fn no_restarts_allowed_gives_up_at_once() {
    let mut book = RestartBook::new(RestartPolicy {
      max_restarts: 0,
      ..policy()
    });
    assert_eq!(
      book.decide(Instant::now(), None),
      Decision::GiveUp { restarts: 0 }
    );
  }
}
