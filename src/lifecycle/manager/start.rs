//! Starting: this name's orphans cleaned up, the processes of a start placed (one on its port, or replicas
//! behind the front) and waited for, and the phase a start leaves behind. Part of `manager`, with its
//! access to the manager's state.

use super::{settled, Manager, Phase, StartState, StopDone, ADDRESS_IN_USE_RETRIES};
use crate::blocking;
use crate::error::{PmError, Result};
use crate::lifecycle::attempt::{self, Attempt, Where};
use crate::lifecycle::instance::Instance;
use crate::lifecycle::launch::{Launch, Runtime};
use crate::lifecycle::run::{Front, Run};
use crate::lifecycle::supervisor;
use crate::lifecycle::{BackendInfo, Level, StopResult};
use crate::net::balancer::{Balancer, Strategy};
use crate::net::port::{self, Search};
use crate::net::reservation::{self, Reservation};
use crate::options::{Balance, Listen, StartArgs};
use crate::state::dir::ensure_state_dir;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What a call to `start` does.
enum StartPlan {
  /// The backend runs: this is it.
  Done(BackendInfo),
  /// A start is under way: its outcome.
  Join(watch::Receiver<Option<Result<BackendInfo>>>),
  /// The run is down between an exit and what its supervisor decides.
  Rejoin(Arc<Run>),
  /// This call starts it, after the stop under way if any.
  Run {
    start: Arc<StartState>,
    after: Option<StopDone>,
  },
}

/// The backend once a process of `run` is up again; `None` once the run has ended instead.
async fn up_again(run: &Run) -> Option<BackendInfo> {
  // Subscribed before looking, so a change between the look and the wait is not missed.
  let mut up = run.up.subscribe();
  let mut done = run.done.subscribe();
  loop {
    if let Some(info) = run.info() {
      return Some(info);
    }
    if done.borrow_and_update().is_some() {
      return None;
    }
    tokio::select! {
      changed = up.changed() => changed.ok()?,
      changed = done.changed() => changed.ok()?,
    }
  }
}

fn stopped_while_down() -> PmError {
  PmError::BackendExited {
    message: "stopBackend() was called while the backend was down; it is not started again".into(),
    exit_code: None,
    signal: None,
    stderr_tail: Vec::new(),
  }
}

impl Manager {
  /// Starts the backend, or joins the start in progress, or returns the running backend. A start asked
  /// for while a stop runs waits for that stop, then starts afresh. With the backend: whether this call
  /// started it (the JS layer emits `ready` for that one, before the call resolves; restarts emit their
  /// own).
  pub fn start(
    self: &Arc<Self>,
    args: StartArgs,
    runtime: Runtime,
  ) -> impl Future<Output = Result<(BackendInfo, bool)>> + Send + 'static {
    // The plan is made at call time, so calls keep the order the app made them in.
    let mut plan = self.plan_start();
    let manager = self.clone();
    async move {
      loop {
        match plan {
          StartPlan::Done(info) => return Ok((info, false)),
          StartPlan::Join(outcome) => {
            return settled(outcome)
              .await
              .unwrap_or_else(|| Err(PmError::Internal("a start ended without an outcome".into())))
              .map(|info| (info, false))
          }
          StartPlan::Rejoin(run) => match up_again(&run).await {
            Some(info) => return Ok((info, false)),
            // A stop asked for after this call wins, as it does over a start in progress.
            None if run.stop_requested() => return Err(stopped_while_down()),
            // It ended by itself (no restart, or its restarts failed): this call starts it afresh.
            None => plan = manager.plan_start(),
          },
          StartPlan::Run { start, after } => {
            if let Some(stop) = after {
              settled(stop).await;
            }
            let outcome = manager.run_start(&args, &runtime, &start).await;
            if outcome.is_err() {
              // A failed start's lines are written before the app hears of it (and may clean up).
              manager.flush_log().await;
            }
            start.outcome.send_replace(Some(outcome.clone()));
            return outcome.map(|info| (info, true));
          }
        }
      }
    }
  }

  /// What a start asked for now does, given the phase; a new start takes the phase at once.
  fn plan_start(&self) -> StartPlan {
    let mut phase = self.phase();
    match &*phase {
      Phase::Up(run) => match run.info() {
        Some(info) => StartPlan::Done(info),
        // Down (it exited, maybe to be restarted): wait for its next process, or for its end.
        None => StartPlan::Rejoin(run.clone()),
      },
      Phase::Starting(start) => StartPlan::Join(start.outcome.subscribe()),
      Phase::Idle | Phase::Stopping { .. } => {
        let after = match &*phase {
          Phase::Stopping { done, .. } => Some(done.clone()),
          _ => None,
        };
        let start = Arc::new(StartState {
          outcome: watch::channel(None).0,
          cancel: watch::channel(false).0,
          stopped: Mutex::new(None),
        });
        *phase = Phase::Starting(start.clone());
        StartPlan::Run { start, after }
      }
    }
  }

  /// The start itself, then the phase it leaves behind: up and supervised, or idle.
  async fn run_start(
    self: &Arc<Self>,
    args: &StartArgs,
    runtime: &Runtime,
    start: &Arc<StartState>,
  ) -> Result<BackendInfo> {
    let result = self.start_processes(args, runtime, start).await;
    enum Next {
      Up(Arc<Run>),
      DiedAtOnce(Started, Arc<Instance>),
      StopWins(Started),
      Failed(PmError),
    }
    let next = {
      let mut phase = self.phase();
      let still_ours = matches!(&*phase, Phase::Starting(s) if Arc::ptr_eq(s, start));
      let next = match result {
        Ok(started) if still_ours => match started.first_dead() {
          // It died right after its health check.
          Some(dead) => Next::DiedAtOnce(started, dead),
          None => {
            let run = Run::new(
              &self.options,
              started.launch,
              started.public_port,
              started.front,
              started.replicas,
            );
            *phase = Phase::Up(run.clone());
            Next::Up(run)
          }
        },
        // A stop came as it became ready: that stop wins.
        Ok(started) => Next::StopWins(started),
        Err(e) => Next::Failed(e),
      };
      if still_ours && !matches!(next, Next::Up(_)) {
        self.become_idle(&mut phase);
      }
      next
    };
    match next {
      Next::Up(run) => {
        let info = run.info();
        supervisor::start(self.clone(), run);
        info.ok_or_else(|| PmError::Internal("a run began without its backend".into()))
      }
      Next::DiedAtOnce(started, dead) => {
        self.end_started(started, false).await;
        Err(exited_after_ready(&dead))
      }
      Next::StopWins(started) => {
        let tail = started.replicas[0].1.child.output.stderr_tail();
        let stopped = self.end_started(started, true).await;
        Err(cancelled(start, stopped, tail))
      }
      Next::Failed(e) => Err(e),
    }
  }

  /// Ends the processes of a start that does not become a run, and closes its front.
  async fn end_started(&self, started: Started, request_stop: bool) -> Option<StopResult> {
    let replicated = started.replicas.len() > 1;
    let mut results = Vec::new();
    for (index, (_, instance, _)) in started.replicas.iter().enumerate() {
      let replica = replicated.then_some(index);
      results.push(self.end(instance, request_stop, None, replica).await);
    }
    started.front.close(Instant::now()).await;
    supervisor::combine(results, replicated)
  }

  /// Cleans up, resolves what to run, and starts the processes: the one on its port, or the front (the
  /// balancer, or the manager's socket) on the public port and every replica behind it.
  async fn start_processes(
    self: &Arc<Self>,
    args: &StartArgs,
    runtime: &Runtime,
    start: &StartState,
  ) -> Result<Started> {
    let o = &self.options;
    let dir = o.state_dir.clone();
    blocking::run(move || ensure_state_dir(&dir)).await??;
    let mut launch = Launch::resolve(o, args, runtime)?;
    self.learn_secrets(&launch, false);
    self.kill_existing().await?;
    if o.replicas <= 1 && o.listen == Listen::Port {
      let mut cancel = start.cancel.subscribe();
      let (reserved, instance, latency) = match self
        .start_one(&mut launch, Spot::Public, None, &mut cancel)
        .await?
      {
        One::Up(Some(reserved), instance, latency) => (reserved, instance, latency),
        One::Up(None, ..) => {
          return Err(PmError::Internal("a port without its reservation".into()))
        }
        One::Cancelled {
          stopped,
          stderr_tail,
        } => return Err(cancelled(start, stopped, stderr_tail)),
      };
      return Ok(Started {
        launch,
        public_port: reserved.port(),
        front: Front::Direct,
        replicas: vec![(Some(reserved), instance, latency)],
      });
    }
    let (public, listener) = self.bind_public().await?;
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
      let (manager, mut launch, spot) = (self.clone(), launch.clone(), spot.clone());
      let mut cancel = start.cancel.subscribe();
      let replica = replicated.then_some((public_port, index));
      starting.spawn(async move {
        let one = manager
          .start_one(&mut launch, spot, replica, &mut cancel)
          .await;
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
      stopped.extend(self.end_started(started, true).await);
    } else {
      started.front.close(Instant::now()).await;
    }
    match error {
      Some(e) if !was_cancelled => Err(e),
      _ => Err(cancelled(
        start,
        supervisor::combine(stopped, replicated),
        stderr_tail,
      )),
    }
  }

  /// Starts one process (the backend, or one replica) at `spot`: healthy, or an error; a port lost to
  /// another program before the process could bind it is retried on another — for a backend on its own
  /// (whose token nobody has yet) with a new token, as that program may have been sent the old one.
  async fn start_one(
    self: &Arc<Self>,
    launch: &mut Launch,
    spot: Spot,
    replica: Option<(u16, usize)>,
    cancel: &mut watch::Receiver<bool>,
  ) -> Result<One> {
    let o = &self.options;
    let mut exclude = Vec::new();
    for attempt in 0..=ADDRESS_IN_USE_RETRIES {
      let (reserved, place) = match &spot {
        Spot::Public => {
          let reserved = self.reserve_port(&exclude).await?;
          let chosen = reserved.port();
          if chosen != o.port && attempt == 0 {
            self.log(
              Level::Info,
              format!("port {} is in use, using port {chosen}", o.port),
            );
          }
          (Some(reserved), Where::own(chosen))
        }
        Spot::Internal => {
          let reserved = self.reserve_internal_port(&exclude).await?;
          let port = reserved.port();
          (Some(reserved), Where::own(port))
        }
        Spot::Shared(port, socket) => (None, Where::shared(*port, socket.clone())),
      };
      let place = match replica {
        Some((public_port, index)) => place.replica(public_port, index),
        None => place,
      };
      match attempt::run(self, launch, place, cancel, 0).await? {
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
          self.log(
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
            self.learn_secrets(launch, true);
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
  async fn bind_public(&self) -> Result<(Reservation, std::net::TcpListener)> {
    let mut exclude = Vec::new();
    loop {
      let reserved = self.reserve_port(&exclude).await?;
      let port = reserved.port();
      match std::net::TcpListener::bind(std::net::SocketAddr::new(self.options.host, port)) {
        Ok(listener) => return Ok((reserved, listener)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => exclude.push(port),
        Err(e) => {
          return Err(PmError::Internal(format!(
            "could not listen on {}:{port}: {e}",
            self.options.host
          )))
        }
      }
    }
  }

  /// A free port for a replica behind the balancer: one the OS hands out (outside the public range, which
  /// the app's other backends use), checked on every address family and reserved like any other.
  pub(in crate::lifecycle) async fn reserve_internal_port(
    &self,
    exclude: &[u16],
  ) -> Result<Reservation> {
    let owner = self.owner;
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
  pub(in crate::lifecycle) async fn reserve_port(&self, exclude: &[u16]) -> Result<Reservation> {
    let o = &self.options;
    let search = Search {
      start_port: exclude
        .last()
        .map_or(o.port, |p| p.saturating_add(1).min(o.last_port())),
      end_port: o.last_port(),
      exclude: exclude.to_vec(),
      host: None,
      owner: self.owner,
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
}

/// The error of a start that a stop cancelled; the stop's result is kept for that stop to report.
fn cancelled(start: &StartState, stopped: Option<StopResult>, stderr_tail: Vec<String>) -> PmError {
  let exit = stopped.as_ref().map(|s| s.exit.clone()).unwrap_or_default();
  *start.stopped.lock().unwrap_or_else(|e| e.into_inner()) = stopped;
  PmError::BackendExited {
    message: "stopBackend() was called while the backend was starting; it has been stopped".into(),
    exit_code: exit.exit_code,
    signal: exit.signal,
    stderr_tail,
  }
}

/// The error after the last port was lost to other programs too.
pub(in crate::lifecycle) fn port_lost(port: u16, exited: PmError) -> PmError {
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
struct Started {
  launch: Launch,
  public_port: u16,
  front: Front,
  replicas: Vec<(Option<Reservation>, Arc<Instance>, Duration)>,
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
