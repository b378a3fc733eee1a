//! A start, below the owner: this name's orphans cleaned up, the processes placed (one on its port, or
//! replicas behind the front) and waited for until healthy. It returns what happened (`Outcome`); the
//! owner (`task`) decides what that means for the backend's state.

use super::context::Context;
use crate::blocking;
use crate::error::{PmError, Result};
use crate::lifecycle::attempt::{self, Attempt, Where};
use crate::lifecycle::instance::Instance;
use crate::lifecycle::launch::{Launch, Runtime};
use crate::lifecycle::run::Front;
use crate::lifecycle::{Level, StopResult};
use crate::net::balancer::{Balancer, Strategy};
use crate::net::port::{self, Search};
use crate::net::reservation::{self, Reservation};
use crate::options::{Balance, Listen, StartArgs};
use crate::state::dir::ensure_state_dir;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How many more ports are tried when the backend reports `EADDRINUSE` before it is healthy.
pub const ADDRESS_IN_USE_RETRIES: usize = 3;

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
pub async fn end_started(ctx: &Context, started: Started, request_stop: bool) -> Option<StopResult> {
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
      let (reserved, instance, latency) = match start_one(ctx, &mut launch, Spot::Public, None, &mut cancel)
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
    let spot = match front.shared_socket() {
      Some(socket) => Spot::Shared(public_port, socket),
      None => Spot::Internal,
    };
    let replicated = o.replicas > 1;
    let mut starting = JoinSet::new();
    for index in 0..usize::from(o.replicas) {
      let (ctx, mut launch, spot) = (ctx.clone(), launch.clone(), spot.clone());
      let mut cancel = cancel.clone();
      let replica = replicated.then_some((public_port, index));
      starting.spawn(async move {
        let one = start_one(&ctx, &mut launch, spot, replica, &mut cancel).await;
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

  /// Starts one process (the backend, or one replica) at `spot`: healthy, or an error; a port lost to
  /// another program before the process could bind it is retried on another — for a backend on its own
  /// (whose token nobody has yet) with a new token, as that program may have been sent the old one.
async fn start_one(
    ctx: &Arc<Context>,
    launch: &mut Launch,
    spot: Spot,
    replica: Option<(u16, usize)>,
    cancel: &mut watch::Receiver<bool>,
  ) -> Result<One> {
    let o = &ctx.options;
    let mut exclude = Vec::new();
    for attempt in 0..=ADDRESS_IN_USE_RETRIES {
      let (reserved, place) = match &spot {
        Spot::Public => {
          let reserved = reserve_port(ctx, &exclude).await?;
          let chosen = reserved.port();
          if chosen != o.port && attempt == 0 {
            ctx.log(
              Level::Info,
              format!("port {} is in use, using port {chosen}", o.port),
            );
          }
          (Some(reserved), Where::own(chosen))
        }
        Spot::Internal => {
          let reserved = reserve_internal_port(ctx, &exclude).await?;
          let port = reserved.port();
          (Some(reserved), Where::own(port))
        }
        Spot::Shared(port, socket) => (None, Where::shared(*port, socket.clone())),
      };
      let place = match replica {
        Some((public_port, index)) => place.replica(public_port, index),
        None => place,
      };
      match attempt::run(ctx, launch, place, cancel, 0).await? {
        Attempt::Ready(instance, latency) => return Ok(One::Up(reserved, instance, latency)),
        Attempt::Cancelled {
          stopped,
          stderr_tail,
        } => {
          return Ok(One::Cancelled {
            stopped,
            stderr_tail,
          })
        }
        Attempt::PortTaken { port, .. }
          if attempt < ADDRESS_IN_USE_RETRIES && reserved.is_some() =>
        {
          ctx.log(
            Level::Warn,
            format!(
              "another program took port {port} before the backend could; trying the next port"
            ),
          );
          exclude.push(port);
          // Replicas share one token: theirs is kept (a request with it is only ever written to a
          // listener found to be theirs).
          if matches!(spot, Spot::Public) {
            launch.renew_token()?;
            ctx.learn_secrets(launch, true);
          }
        }
        Attempt::PortTaken { port, exited } => return Err(port_lost(port, exited)),
        Attempt::Failed { error, .. } => return Err(error),
      }
    }
    unreachable!("the loop returns on its last attempt")
  }

  /// The public port of a backend with a front: reserved in this manager's range, and bound and
  /// listening at once (by the balancer, or handed to the processes), so it can't be lost afterwards.
async fn bind_public(ctx: &Context) -> Result<(Reservation, std::net::TcpListener)> {
    let mut exclude = Vec::new();
    loop {
      let reserved = reserve_port(ctx, &exclude).await?;
      let port = reserved.port();
      match std::net::TcpListener::bind(std::net::SocketAddr::new(ctx.options.host, port)) {
        Ok(listener) => return Ok((reserved, listener)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => exclude.push(port),
        Err(e) => {
          return Err(PmError::Internal(format!(
            "could not listen on {}:{port}: {e}",
            ctx.options.host
          )))
        }
      }
    }
  }

  /// A free port for a replica behind the balancer: one the OS hands out (outside the public range, which
  /// the app's other backends use), checked on every address family and reserved like any other.
pub async fn reserve_internal_port(
    ctx: &Context,
    exclude: &[u16],
  ) -> Result<Reservation> {
    let owner = ctx.owner;
    let exclude = exclude.to_vec();
    blocking::run(move || {
      for _ in 0..64 {
        let Ok(probe) = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)) else {
          break;
        };
        let Ok(port) = probe.local_addr().map(|a| a.port()) else {
          break;
        };
        drop(probe);
        if exclude.contains(&port) {
          continue;
        }
        if let Some(reserved) = reservation::reserve(port, owner) {
          if port::is_port_available(port, None) {
            return Ok(reserved);
          }
        }
      }
      Err(PmError::NoFreePort {
        start_port: 1,
        end_port: u16::MAX,
      })
    })
    .await?
  }

  /// The first free port of this manager's range, not in `exclude`. Off the async workers: it binds
  /// sockets and takes file locks.
pub async fn reserve_port(ctx: &Context, exclude: &[u16]) -> Result<Reservation> {
    let o = &ctx.options;
    let search = Search {
      start_port: exclude
        .last()
        .map_or(o.port, |p| p.saturating_add(1).min(o.last_port())),
      end_port: o.last_port(),
      exclude: exclude.to_vec(),
      host: None,
      owner: ctx.owner,
      handout: false,
    };
    let found = blocking::run(move || port::find_available_port(&search)).await?;
    found.map_err(|e| match e {
      PmError::NoFreePort { .. } => PmError::NoFreePort {
        start_port: o.port,
        end_port: o.last_port(),
      },
      other => other,
    })
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

/// The error after the last port was lost to other programs too.
pub fn port_lost(port: u16, exited: PmError) -> PmError {
  match exited {
    PmError::BackendExited {
      exit_code,
      signal,
      stderr_tail,
      ..
    } => PmError::BackendExited {
      message: format!(
        "the backend could not listen: port {port} and the {ADDRESS_IN_USE_RETRIES} ports tried before it were taken by other programs first (EADDRINUSE). See stderrTail for its last output"
      ),
      exit_code,
      signal,
      stderr_tail,
    },
    other => other,
  }
}

fn exited_after_ready(instance: &Instance) -> PmError {
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
  fn first_dead(&self) -> Option<Arc<Instance>> {
    self
      .replicas
      .iter()
      .find(|(_, instance, _)| instance.child.exit_info().is_some())
      .map(|(_, instance, _)| instance.clone())
  }
}

/// Where one process of a start listens.
#[derive(Clone)]
enum Spot {
  /// On the public port (a port of this manager's range): one process, no front.
  Public,
  /// On a port of its own behind the balancer.
  Internal,
  /// On the manager's socket (the public port).
  Shared(u16, Arc<std::net::TcpListener>),
}

enum One {
  Up(Option<Reservation>, Arc<Instance>, Duration),
  Cancelled {
    stopped: Option<StopResult>,
    stderr_tail: Vec<String>,
  },
}
