//! The messages a backend's owner (`task`) takes, from one mailbox: the app's commands, each with the
//! channel its answer goes to, and the inputs the steps below the owner send when something happened.
//! One mailbox orders them all: a start asked for from an `exit` handler comes after the exit that caused
//! it, a stop during a restart's backoff comes before or after the backoff's end (the owner's `Restart`
//! deadline), never in between, and a process's `Up` before its `Down`.

use super::launch::Runtime;
use super::run::Run;
use super::start::Outcome;
use super::{BackendInfo, Reason, StopResult};
use crate::error::{PmError, Result};
use crate::net::balancer::TakenOut;
use crate::net::health::ProbeOutcome;
use crate::options::StartArgs;
use crate::os::spawn::ExitInfo;
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
  /// The process `pid` of slot `slot` of `run` is up (a restart's, or a reload's new one), its readiness
  /// probe answered after `latency`.
  Up {
    run: Arc<Run>,
    slot: usize,
    pid: u32,
    latency: Duration,
  },
  /// The process of slot `slot` of `run` went down without a stop (or its restart could not start at
  /// all): the owner decides on the restart policy's book. For a restart, it arms the backoff as its
  /// `Restart` deadline and answers `next` with the restart's attempt when it is over; when it gives up
  /// (or there is no policy, or a stop or the run's end came first) it drops `next`, and the slot ends.
  Down {
    run: Arc<Run>,
    slot: usize,
    gone: Gone,
    next: Reply<u32>,
  },
  /// Every slot of `run` was reloaded (`reload()`): the owner answers `reply` with the backend.
  Reloaded {
    run: Arc<Run>,
    result: Result<()>,
    reply: Reply<Result<Option<BackendInfo>>>,
  },
  /// A watchdog probe of the process `pid` in slot `slot` of `run` came back after `latency`: the owner
  /// takes the verdict and answers with it, or drops `verdict` when
  /// the process is no longer that slot's or the run is being stopped.
  Probe {
    run: Arc<Run>,
    slot: usize,
    pid: u32,
    outcome: ProbeOutcome,
    latency: Duration,
    verdict: Reply<Verdict>,
  },
  /// A memory sample of the process `pid` in slot `slot` of `run` (its whole tree): as `Probe`.
  Sample {
    run: Arc<Run>,
    slot: usize,
    pid: u32,
    memory_bytes: u64,
    verdict: Reply<Verdict>,
  },
  /// The balancer took the process `pid` in slot `slot` of `run` out (`why`): as `Probe`, but never a
  /// restart.
  TakenOut {
    run: Arc<Run>,
    slot: usize,
    pid: u32,
    why: TakenOut,
    verdict: Reply<Verdict>,
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

/// How a slot's process went down, as its supervisor reports it.
pub enum Gone {
  /// It ended (`reason`: by itself, or ended for a watchdog or memory verdict).
  Exited {
    pid: u32,
    exit: ExitInfo,
    reason: Reason,
  },
  /// A restart of it cannot be started at all (spawn failed, state folder unusable).
  Unstartable(PmError),
}

/// The owner's verdict on a probe or a memory sample: whether the process is healthy now (for the
/// balancer and the record), and the restart it calls for (`None`: none).
pub struct Verdict {
  pub healthy: bool,
  pub restart: Option<Reason>,
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
