//! A start, below the owner: this name's orphans cleaned up, the processes placed (one on its port, or
//! replicas behind the front) and waited for until healthy. It returns what happened (`Outcome`); the
//! owner (`task`) decides what that means for the backend's state.

use super::context::Context;
use super::instance::Instance;
use super::launch::{Launch, Runtime};
use super::place::{self, bind_public, NotUp, Place, Placed, Ports};
use super::run::Front;
use super::StopResult;
use crate::blocking;
use crate::error::{PmError, Result};
use crate::net::balancer::{Balancer, Strategy};
use crate::net::reservation::Reservation;
use crate::options::{Balance, Listen, StartArgs};
use crate::state::dir::ensure_state_dir;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What a start came to.
pub enum Outcome {
  /// Every process is healthy: they become the run.
  Up(Started),
  /// It failed (what it started is ended, and its lines are written).
  Failed(PmError),
  /// A stop cancelled it: what that stop stopped, and the backend's last stderr lines.
  Cancelled {
    stopped: Option<StopResult>,
    stderr_tail: Vec<String>,
  },
}

/// Why a start did not come up.
enum Halt {
  Cancelled {
    stopped: Option<StopResult>,
    stderr_tail: Vec<String>,
  },
  Error(PmError),
}

impl From<PmError> for Halt {
  fn from(e: PmError) -> Halt {
    Halt::Error(e)
  }
}

/// Runs a start to its outcome. `cancel` turns true when a stop asks for it to end.
pub async fn run(
  ctx: &Arc<Context>,
  args: &StartArgs,
  runtime: &Runtime,
  cancel: watch::Receiver<bool>,
) -> Outcome {
  let outcome = match start_processes(ctx, args, runtime, &cancel).await {
    Ok(started) => match started.first_dead() {
      // It died right after its health check.
      Some(dead) => {
        end_started(ctx, started, false).await;
        Outcome::Failed(exited_after_ready(&dead))
      }
      None => return Outcome::Up(started),
    },
    Err(Halt::Error(e)) => Outcome::Failed(e),
    Err(Halt::Cancelled {
      stopped,
      stderr_tail,
    }) => Outcome::Cancelled {
      stopped,
      stderr_tail,
    },
  };
  // A failed start's lines are written before the app hears of it (and may clean up).
  ctx.flush_log().await;
  outcome
}

/// Ends the processes of a start that does not become a run, and closes its front.
pub async fn end_started(
  ctx: &Context,
  started: Started,
  request_stop: bool,
) -> Option<StopResult> {
  let replicated = started.replicas.len() > 1;
  let mut results = Vec::new();
  for (index, (_, instance, _)) in started.replicas.iter().enumerate() {
    let replica = replicated.then_some(index);
    results.push(ctx.end(instance, request_stop, None, replica).await);
  }
  started.front.close(Instant::now()).await;
  StopResult::combine(results, replicated)
}

/// Cleans up, resolves what to run, and starts the processes: the one on its port, or the front (the
/// balancer, or the manager's socket) on the public port and every replica behind it.
async fn start_processes(
  ctx: &Arc<Context>,
  args: &StartArgs,
  runtime: &Runtime,
  cancel: &watch::Receiver<bool>,
) -> std::result::Result<Started, Halt> {
  let o = &ctx.options;
  let dir = o.state_dir.clone();
  blocking::run(move || ensure_state_dir(&dir)).await??;
  let mut launch = Launch::resolve(o, args, runtime)?;
  ctx.learn_secrets(&launch, false);
  ctx.kill_existing().await?;
  if o.replicas <= 1 && o.listen == Listen::Port {
    let mut cancel = cancel.clone();
    let (reserved, instance, latency) = match start_one(
      ctx,
      &mut launch,
      Place::new(Ports::Range { keep: None }, None),
      &mut cancel,
    )
    .await?
    {
      One::Up(Some(reserved), instance, latency) => (reserved, instance, latency),
      One::Up(None, ..) => {
        return Err(PmError::Internal("a port without its reservation".into()).into())
      }
      One::Cancelled {
        stopped,
        stderr_tail,
      } => {
        return Err(Halt::Cancelled {
          stopped,
          stderr_tail,
        })
      }
    };
    return Ok(Started {
      launch,
      public_port: reserved.port(),
      front: Front::Direct,
      replicas: vec![(Some(reserved), instance, latency)],
    });
  }
  let (public, listener) = bind_public(ctx).await?;
  let public_port = public.port();
  let front = match o.listen {
    Listen::Fd => Front::socket(listener, public),
    Listen::Port => {
      let strategy = match o.balance {
        Balance::LeastConnections => Strategy::LeastConnections,
        Balance::RoundRobin => Strategy::RoundRobin,
      };
      let balancer = Balancer::start(listener, strategy, o.balancer)
        .map_err(|e| PmError::Internal(format!("the load balancer could not start: {e}")))?;
      Front::balanced(balancer, public)
    }
  };
  let ports = match front.shared_socket() {
    Some(socket) => Ports::Shared(public_port, socket),
    None => Ports::Internal { keep: None },
  };
  let replicated = o.replicas > 1;
  let mut starting = JoinSet::new();
  for index in 0..usize::from(o.replicas) {
    let (ctx, mut launch, ports) = (ctx.clone(), launch.clone(), ports.clone());
    let mut cancel = cancel.clone();
    let replica = replicated.then_some((public_port, index));
    starting.spawn(async move {
      let one = start_one(&ctx, &mut launch, Place::new(ports, replica), &mut cancel).await;
      (index, one)
    });
  }
  let mut ones = Vec::new();
  while let Some(joined) = starting.join_next().await {
    ones.push(
      joined.map_err(|e| PmError::Internal(format!("a replica's start ended abnormally: {e}"))),
    );
  }
  let mut up = Vec::new();
  let mut stopped = Vec::new();
  let mut stderr_tail = Vec::new();
  let mut error = None;
  let mut was_cancelled = false;
  for one in ones {
    match one {
      Ok((index, Ok(One::Up(reserved, instance, latency)))) => {
        up.push((index, (reserved, instance, latency)))
      }
      Ok((
        _,
        Ok(One::Cancelled {
          stopped: s,
          stderr_tail: t,
        }),
      )) => {
        was_cancelled = true;
        stopped.extend(s);
        if stderr_tail.is_empty() {
          stderr_tail = t;
        }
      }
      Ok((_, Err(e))) | Err(e) => {
        error.get_or_insert(e);
      }
    }
  }
  up.sort_by_key(|(index, _)| *index);
  let started = Started {
    launch,
    public_port,
    front,
    replicas: up.into_iter().map(|(_, r)| r).collect(),
  };
  if error.is_none() && !was_cancelled {
    return Ok(started);
  }
  // All or nothing: a replica that failed (or a stop) ends the ones that came up.
  if !started.replicas.is_empty() {
    stopped.extend(end_started(ctx, started, true).await);
  } else {
    started.front.close(Instant::now()).await;
  }
  match error {
    Some(e) if !was_cancelled => Err(Halt::Error(e)),
    _ => Err(Halt::Cancelled {
      stopped: StopResult::combine(stopped, replicated),
      stderr_tail,
    }),
  }
}

/// Starts one process (the backend, or one replica) at `place`: healthy, or an error.
async fn start_one(
  ctx: &Arc<Context>,
  launch: &mut Launch,
  place: Place,
  cancel: &mut watch::Receiver<bool>,
) -> Result<One> {
  let renew_token = place.replica.is_none() && matches!(place.ports, Ports::Range { .. });
  match place::place(ctx, launch, &place, cancel, 0, renew_token).await? {
    Placed::Up(instance, latency, reserved) => Ok(One::Up(reserved, instance, latency)),
    Placed::NotUp(NotUp::Cancelled {
      stopped,
      stderr_tail,
    }) => Ok(One::Cancelled {
      stopped,
      stderr_tail,
    }),
    Placed::NotUp(NotUp::Failed { error, .. }) => Err(error),
  }
}

/// The error of a start that a stop cancelled (`stopped`: what that stop stopped).
pub fn cancelled(stopped: Option<&StopResult>, stderr_tail: Vec<String>) -> PmError {
  let exit = stopped.map(|s| s.exit.clone()).unwrap_or_default();
  PmError::BackendExited {
    message: "stopBackend() was called while the backend was starting; it has been stopped".into(),
    exit_code: exit.exit_code,
    signal: exit.signal,
    stderr_tail,
  }
}

pub fn exited_after_ready(instance: &Instance) -> PmError {
  let exit = instance.child.exit_info().unwrap_or_default();
  PmError::BackendExited {
    message: format!(
      "the backend exited with {} right after it answered its health check. See stderrTail for its last output",
      exit.describe()
    ),
    exit_code: exit.exit_code,
    signal: exit.signal,
    stderr_tail: instance.child.output.stderr_tail(),
  }
}

/// The processes of a start, healthy, before they become a run.
pub struct Started {
  pub launch: Launch,
  pub public_port: u16,
  pub front: Front,
  pub replicas: Vec<(Option<Reservation>, Arc<Instance>, Duration)>,
}

impl Started {
  /// A process of the start that has exited since it was ready.
  pub fn first_dead(&self) -> Option<Arc<Instance>> {
    self
      .replicas
      .iter()
      .find(|(_, instance, _)| instance.child.exit_info().is_some())
      .map(|(_, instance, _)| instance.clone())
  }
}

enum One {
  Up(Option<Reservation>, Arc<Instance>, Duration),
  Cancelled {
    stopped: Option<StopResult>,
    stderr_tail: Vec<String>,
  },
}
