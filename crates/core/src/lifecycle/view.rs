//! What a backend's owner (`task`) publishes for the reads that do not wait — the app's `backend`,
//! `active` and `stats()`, a replica's `stats` events: its state's name, the run it holds, and what it
//! keeps of each slot (health, restarts). One watch channel: the owner replaces the whole view each time
//! something in it changes, so a reader sees one consistent copy and never waits for the owner.

use super::run::{Run, SlotView};
use std::sync::Arc;
use tokio::sync::watch;

/// The state's name, as the app's synchronous reads see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
  Idle,
  Starting,
  Running,
  Backoff,
  Stopping,
  Failed,
}

#[derive(Clone)]
pub struct View {
  pub phase: Phase,
  pub run: Option<Arc<Run>>,
  /// Of each slot of `run` while it is up.
  pub slots: Vec<SlotView>,
}

impl View {
  pub fn channel() -> (watch::Sender<View>, watch::Receiver<View>) {
    watch::channel(View {
      phase: Phase::Idle,
      run: None,
      slots: Vec::new(),
    })
  }

  /// Something is under way: a start, a running or restarting backend, or a stop.
  pub fn active(&self) -> bool {
    !matches!(self.phase, Phase::Idle | Phase::Failed)
  }

  /// The run that is up (running, or between an exit and a restart).
  pub fn up(&self) -> Option<Arc<Run>> {
    match self.phase {
      Phase::Running | Phase::Backoff => self.run.clone(),
      _ => None,
    }
  }

  /// The run that is up, and what the owner keeps of its slots (cloned: a reader looks at the processes
  /// after it let the view go).
  pub fn up_with_slots(&self) -> Option<(Arc<Run>, Vec<SlotView>)> {
    Some((self.up()?, self.slots.clone()))
  }

  /// The slots of `run`, while it is the run that is up.
  pub fn slots_of(&self, run: &Arc<Run>) -> Option<Vec<SlotView>> {
    let up = self.up()?;
    Arc::ptr_eq(&up, run).then(|| self.slots.clone())
  }
}
