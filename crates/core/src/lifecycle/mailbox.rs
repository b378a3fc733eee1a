//! The messages a backend's owner (`task`) takes, from one mailbox: the app's commands, each with the
//! channel its answer goes to, and the inputs the steps below the owner send when something happened.
//! One mailbox orders them all: a start asked for from an `exit` handler comes after the exit that caused
//! it, a stop during a restart's backoff comes before or after the backoff's end (the owner's `Restart`
//! deadline), never in between.

use super::launch::Runtime;
use super::run::Run;
use super::start::Outcome;
use super::{BackendInfo, Reason, StopResult};
use crate::error::Result;
use crate::net::health::ProbeOutcome;
use crate::options::StartArgs;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub type Reply<T> = oneshot::Sender<T>;

/// A call of the app's.
pub enum Command {
  /// `startBackend()`: the backend, and whether this call started it.
  Start {
    args: StartArgs,
    runtime: Runtime,
    reply: Reply<Result<(BackendInfo, bool)>>,
  },
  /// `stopBackend()`: what it stopped (`None`: nothing ran).
  Stop { reply: Reply<Option<StopResult>> },
  /// `reload()`: the backend once every process was replaced (`None`: nothing runs).
  Reload {
    reply: Reply<Result<Option<BackendInfo>>>,
  },
}

/// What happened below the owner.
pub enum Input {
  /// The start `id` came to its outcome.
  Started(u64, Outcome),
  /// A process of `run` is up (a restart's, or a reload's new one).
  Up(Arc<Run>),
  /// A process of `run` went down, and its supervisor decides whether to restart it.
  Down(Arc<Run>),
  /// A supervisor of `run` restarts its process after `delay` (the restart policy's backoff): the owner
  /// arms the wait as its `Restart` deadline and answers `go` when it is over, or drops `go` (nothing is
  /// restarted) when a stop or the run's end came first.
  Backoff {
    run: Arc<Run>,
    delay: Duration,
    go: Reply<()>,
  },
  /// A watchdog probe of the process `pid` in slot `slot` of `run` came back after `latency`: the owner
  /// takes the verdict and answers with the restart it calls for (`None`: none), or drops `verdict` when
  /// the process is no longer that slot's or the run is being stopped.
  Probe {
    run: Arc<Run>,
    slot: usize,
    pid: u32,
    outcome: ProbeOutcome,
    latency: Duration,
    verdict: Reply<Option<Reason>>,
  },
  /// A memory sample of the process `pid` in slot `slot` of `run` (its whole tree): as `Probe`.
  Sample {
    run: Arc<Run>,
    slot: usize,
    pid: u32,
    memory_bytes: u64,
    verdict: Reply<Option<Reason>>,
  },
  /// Every supervisor of `run` is done: what a stop stopped (`None`: it ended by itself).
  RunEnded(Arc<Run>, Option<StopResult>),
  /// What a stop ended is gone and its lines are written: the stop is done.
  Stopped {
    stopped: Option<StopResult>,
    stderr_tail: Vec<String>,
  },
  /// The deadline the current state armed has passed.
  Deadline(Deadline),
}

/// The named deadlines a state of the owner arms (at most one at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Deadline {
  /// Stopping a run: by then every process of it is force-killed, whatever grace its end began with.
  ForceKill,
  /// Running or between restarts: the earliest backoff of a process waiting to be restarted is over.
  Restart,
}

pub enum Message {
  Command(Command),
  Input(Input),
}

/// Where the steps below the owner send what happened.
pub type Mailbox = mpsc::UnboundedSender<Message>;

/// Sends an input to the owner (it is gone only when the manager is, and then nobody listens).
pub fn report(mailbox: &Mailbox, input: Input) {
  let _ = mailbox.send(Message::Input(input));
}
