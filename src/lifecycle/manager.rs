//! The phases of one named backend — idle, starting, up (running or between restarts), stopping — and the
//! public operations. Every operation takes its phase transition at call time, under one lock, before any
//! waiting: so calls keep the order the app made them in (a `startBackend()` after `stopBackend()` waits
//! for that stop and starts afresh; a stop during a start cancels it), and concurrent callers share one
//! outcome. Once up, the backend belongs to its supervisor (`supervisor`), which a stop asks to end it.

use super::attempt::{self, Attempt, Where};
use super::instance::Instance;
use super::launch::{Launch, Runtime};
use super::run::{Front, Run};
use super::supervisor;
use super::{BackendInfo, Event, Events, Level, Reason, Stats, StopResult};
use crate::blocking;
use crate::error::{PmError, Result};
use crate::net::balancer::{Balancer, Strategy};
use crate::net::health::{self, Target};
use crate::net::port::{self, Search};
use crate::net::reservation::{self, Owner, Reservation};
use crate::options::{Balance, Listen, Options, StartArgs};
use crate::os::spawn::Stream;
use crate::os::stop::Polite;
use crate::state::dir::ensure_state_dir;
use crate::state::orphans::{self, CleanupAction};
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How many more ports are tried when the backend reports `EADDRINUSE` before it is healthy.
pub const ADDRESS_IN_USE_RETRIES: usize = 3;

pub struct Manager {
  pub options: Options,
  /// Reservations made by this manager (its `findAvailablePort` included) never block its own start.
  pub owner: Owner,
  events: Arc<dyn Events>,
  phase: Mutex<Phase>,
}

/// A start in progress, shared by every caller that asked for it.
struct StartState {
  outcome: watch::Sender<Option<Result<BackendInfo>>>,
  cancel: watch::Sender<bool>,
  /// What a stop during this start stopped (the starting process), for that stop to report.
  stopped: Mutex<Option<StopResult>>,
}

type StopDone = watch::Receiver<Option<Option<StopResult>>>;

enum Phase {
  Idle,
  Starting(Arc<StartState>),
  /// Started, and watched by its supervisor: running, or down between an exit and a restart.
  Up(Arc<Run>),
  Stopping {
    id: u64,
    done: StopDone,
  },
}

/// Resolves once a watch holds a value.
async fn settled<T: Clone>(mut rx: watch::Receiver<Option<T>>) -> Option<T> {
  rx.wait_for(Option::is_some)
    .await
    .ok()
    .and_then(|v| v.clone())
}

/// Where a backend listening on `host` is reached: a wildcard address (0.0.0.0, ::) means "every
/// interface", reached through loopback — connecting to the wildcard itself fails on macOS and Windows.
pub fn reachable(host: IpAddr) -> IpAddr {
  match host {
    IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    other => other,
  }
}

pub fn url_for(host: IpAddr, port: u16) -> String {
  match reachable(host) {
    IpAddr::V4(ip) => format!("http://{ip}:{port}"),
    IpAddr::V6(ip) => format!("http://[{ip}]:{port}"),
  }
}

impl Manager {
  pub fn new(options: Options, events: Arc<dyn Events>) -> Arc<Manager> {
    Arc::new(Manager {
      options,
      owner: Owner::new(),
      events,
      phase: Mutex::new(Phase::Idle),
    })
  }

  pub(super) fn log(&self, level: Level, message: impl Into<String>) {
    self.events.emit(Event::Log {
      level,
      message: message.into(),
    });
  }

  pub(super) fn emit(&self, event: Event) {
    self.events.emit(event);
  }

  /// Emits an event about one replica (`Some(index)`) or about the backend.
  pub(super) fn emit_for(&self, replica: Option<usize>, event: Event) {
    match replica {
      Some(index) => self.emit(Event::Replica(index, Box::new(event))),
      None => self.emit(event),
    }
  }

  pub(super) fn line(&self, stream: Stream, text: &str) {
    self.events.line(stream, text);
  }

  fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
    self.phase.lock().unwrap_or_else(|e| e.into_inner())
  }

  /// Ends whatever phase `phase` holds, and says so.
  fn become_idle(&self, phase: &mut Phase) {
    *phase = Phase::Idle;
    self.emit(Event::Idle);
  }

  /// The running backend, if one is ready (`None` while it is down between an exit and a restart).
  pub fn backend(&self) -> Option<BackendInfo> {
    match &*self.phase() {
      Phase::Up(run) => run.info(),
      _ => None,
    }
  }

  /// Something is under way: a start, a running or restarting backend, or a stop.
  pub fn is_active(&self) -> bool {
    !matches!(&*self.phase(), Phase::Idle)
  }

  /// What the running backend's tree uses now; `None` when it is not running.
  pub fn stats(&self) -> Option<Stats> {
    let run = match &*self.phase() {
      Phase::Up(run) => run.clone(),
      _ => return None,
    };
    run.stats()
  }

  pub fn target(&self, port: u16, token: Option<String>) -> Target {
    Target {
      host: reachable(self.options.host),
      port,
      path: self.options.health_path.clone(),
      token,
    }
  }

  /// The token of the running start, so that `checkBackendHealth` and `waitForBackendReady` are let in.
  fn current_token(&self) -> Option<String> {
    match &*self.phase() {
      Phase::Up(run) => run.launch.token.clone(),
      _ => None,
    }
  }

  pub async fn check_health(&self, port: u16) -> bool {
    health::probe(
      &self.target(port, self.current_token()),
      self.options.health_timeout,
    )
    .await
    .is_healthy()
  }

  /// `pm.waitForBackendReady`. Runs alone on a thread of its own (the binding's `promise_on_own_thread`):
  /// on Linux it sleeps on that thread between looks at the port.
  pub async fn wait_for_ready(&self, port: u16, max_retries: u32, retry_delay: Duration) -> bool {
    let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
    let deadline = retry_delay
      .checked_mul(max_retries)
      .and_then(|total| Instant::now().checked_add(total))
      .unwrap_or(far_future);
    health::wait_until_healthy(
      &self.target(port, self.current_token()),
      self.options.health_timeout,
      deadline,
      retry_delay,
      health::Watch::polling_on_own_thread(),
      || async { true },
    )
    .await
    .is_ok()
  }

  /// `pm.findAvailablePort(startPort)`: the range is this manager's, and the port stays reserved for it.
  pub fn find_available_port(&self, start_port: Option<u16>) -> Result<u16> {
    let start_port = start_port.unwrap_or(self.options.port);
    let reserved = port::find_available_port(&Search {
      start_port,
      end_port: start_port.saturating_add(self.options.port_range),
      exclude: Vec::new(),
      host: None,
      owner: self.owner,
    })?;
    let port = reserved.port();
    reserved.hold_until(std::time::Instant::now() + port::RESERVATION);
    Ok(port)
  }

  /// Terminates orphaned backends of this name; deletes stale and broken records. True when one was
  /// terminated.
  pub async fn kill_existing(&self) -> Result<bool> {
    let dir = self.options.state_dir.clone();
    let name = self.options.name.clone();
    let grace = self.options.stop_timeout;
    let items = blocking::run(move || orphans::cleanup(&dir, Some(&name), grace)).await?;
    let mut terminated = false;
    for item in items {
      let level = match item.action {
        CleanupAction::Terminated => {
          terminated = true;
          Level::Info
        }
        CleanupAction::StaleRemoved | CleanupAction::Busy => Level::Info,
        _ => Level::Warn,
      };
      self.log(level, format!("{} ({})", item.detail, item.file.display()));
    }
    Ok(terminated)
  }

  /// Starts the backend, or joins the start in progress, or returns the running backend. A start asked
  /// for while a stop runs waits for that stop, then starts afresh. With the backend: whether this call
  /// started it (the JS layer emits `ready` for that one, before the call resolves; restarts emit their
  /// own).
  pub fn start(
    self: &Arc<Self>,
    args: StartArgs,
    runtime: Runtime,
  ) -> impl Future<Output = Result<(BackendInfo, bool)>> + Send + 'static {
    enum Plan {
      Done(BackendInfo),
      Join(watch::Receiver<Option<Result<BackendInfo>>>),
      Run {
        start: Arc<StartState>,
        after: Option<StopDone>,
      },
    }
    let plan = {
      let mut phase = self.phase();
      match &*phase {
        Phase::Up(run) => match run.info() {
          Some(info) => Plan::Done(info),
          // Down between restarts: the supervisor brings it back; wait for that like for a start.
          None => Plan::Join(run.ready.subscribe()),
        },
        Phase::Starting(start) => Plan::Join(start.outcome.subscribe()),
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
          Plan::Run { start, after }
        }
      }
    };
    let manager = self.clone();
    async move {
      match plan {
        Plan::Done(info) => Ok((info, false)),
        Plan::Join(outcome) => settled(outcome)
          .await
          .unwrap_or_else(|| Err(PmError::Internal("a start ended without an outcome".into())))
          .map(|info| (info, false)),
        Plan::Run { start, after } => {
          if let Some(stop) = after {
            settled(stop).await;
          }
          let outcome = manager.run_start(&args, &runtime, &start).await;
          start.outcome.send_replace(Some(outcome.clone()));
          outcome.map(|info| (info, true))
        }
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
    let launch = Launch::resolve(o, args, runtime)?;
    self.kill_existing().await?;
    if o.replicas <= 1 && o.listen == Listen::Port {
      let mut cancel = start.cancel.subscribe();
      let (reserved, instance, latency) = match self
        .start_one(&launch, Spot::Public, None, &mut cancel)
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
        let balancer = Balancer::start(listener, strategy)
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
      let (manager, launch, spot) = (self.clone(), launch.clone(), spot.clone());
      let mut cancel = start.cancel.subscribe();
      let replica = replicated.then_some((public_port, index));
      starting.spawn(async move {
        let one = manager.start_one(&launch, spot, replica, &mut cancel).await;
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
  /// another program before the process could bind it is retried on another.
  async fn start_one(
    self: &Arc<Self>,
    launch: &Launch,
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
  pub(super) async fn reserve_internal_port(&self, exclude: &[u16]) -> Result<Reservation> {
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
  pub(super) async fn reserve_port(&self, exclude: &[u16]) -> Result<Reservation> {
    let o = &self.options;
    let search = Search {
      start_port: exclude
        .last()
        .map_or(o.port, |p| p.saturating_add(1).min(o.last_port())),
      end_port: o.last_port(),
      exclude: exclude.to_vec(),
      host: None,
      owner: self.owner,
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

  /// The polite stop requests of the `shutdown` option, for one instance.
  fn polite(&self, instance: &Instance) -> Polite {
    let request = self.options.shutdown.http.clone().map(|(method, path)| {
      let target = self.target(instance.info.port, instance.info.token.clone());
      let limit = (self.options.stop_timeout / 4).min(Duration::from_secs(1));
      Box::pin(async move {
        health::request(&target, &method, &path, limit).await;
      }) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
    });
    Polite {
      request,
      close_stdin: self.options.shutdown.stdin,
    }
  }

  /// Ends an instance once (see `Instance::end`) and reports it. `request_stop`: a polite stop first (a
  /// stop, or a watchdog verdict: `reason`); otherwise it exited by itself.
  pub(super) async fn end(
    &self,
    instance: &Arc<Instance>,
    request_stop: bool,
    reason: Option<Reason>,
    replica: Option<usize>,
  ) -> StopResult {
    if request_stop {
      instance.request_stop();
    }
    let pid = instance.info.pid;
    if request_stop && instance.child.exit_info().is_none() {
      self.log(Level::Info, format!("stopping backend pid {pid}"));
    }
    let stop_timeout = self.options.stop_timeout;
    instance
      .end(stop_timeout, self.polite(instance), |result, asked, delete_error| {
        if let Some(problem) = delete_error {
          self.log(Level::Warn, problem);
        }
        if result.forced {
          self.log(
            Level::Warn,
            format!(
              "backend pid {pid} did not stop within {} ms; force-killed its process group",
              stop_timeout.as_millis()
            ),
          );
        }
        if !result.survivors.is_empty() {
          self.log(
            Level::Warn,
            format!(
              "processes {:?} of backend pid {pid} are still alive after the force kill (uninterruptible?); their record is kept, and a later cleanup will end them",
              result.survivors
            ),
          );
        }
        // A watchdog verdict stops it, but nobody asked for that: not an expected exit.
        let expected = asked && reason.is_none();
        let describe = result.exit.describe();
        match (expected, reason) {
          (true, _) => self.log(Level::Info, format!("backend pid {pid} stopped ({describe})")),
          (false, Some(r)) => self.log(
            Level::Warn,
            format!("backend pid {pid} stopped because it was {} ({describe})", match r {
              Reason::Memory => "over its memory limit",
              _ => "unhealthy",
            }),
          ),
          (false, None) => {
            self.log(Level::Warn, format!("backend pid {pid} exited unexpectedly ({describe})"))
          }
        }
        self.emit_for(replica, Event::Exit {
          pid,
          exit: result.exit.clone(),
          expected,
          reason,
        });
      })
      .await
  }

  /// Leaves the up phase of `run` (its supervisor is done with it).
  pub(super) fn run_ended(&self, run: &Arc<Run>) {
    let mut phase = self.phase();
    if matches!(&*phase, Phase::Up(current) if Arc::ptr_eq(current, run)) {
      self.become_idle(&mut phase);
    }
  }

  /// Stops the backend (also one still starting, or down between restarts: then nothing is started
  /// again). `None` when nothing runs.
  pub fn stop(self: &Arc<Self>) -> impl Future<Output = Option<StopResult>> + Send + 'static {
    static STOPS: AtomicU64 = AtomicU64::new(1);
    enum Plan {
      Nothing,
      Join(StopDone),
      Cancel(Arc<StartState>),
      Supervised(Arc<Run>),
    }
    let (plan, id, done_tx) = {
      let mut phase = self.phase();
      let id = STOPS.fetch_add(1, Ordering::Relaxed);
      let (done_tx, done) = watch::channel(None);
      let plan = match &*phase {
        Phase::Idle => Plan::Nothing,
        Phase::Stopping { done, .. } => Plan::Join(done.clone()),
        Phase::Starting(start) => {
          start.cancel.send_replace(true);
          Plan::Cancel(start.clone())
        }
        Phase::Up(run) => {
          run.stop.send_replace(true);
          Plan::Supervised(run.clone())
        }
      };
      if matches!(plan, Plan::Cancel(..) | Plan::Supervised(..)) {
        *phase = Phase::Stopping { id, done };
      }
      (plan, id, done_tx)
    };
    let manager = self.clone();
    async move {
      let result = match plan {
        Plan::Nothing => return None,
        Plan::Join(done) => return settled(done).await.flatten(),
        Plan::Cancel(start) => {
          settled(start.outcome.subscribe()).await;
          let stopped = start
            .stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
          stopped
        }
        Plan::Supervised(run) => {
          // No new connection reaches a replica that is being stopped.
          if let Front::Balanced { balancer, .. } = &run.front {
            balancer.stop_accepting().await;
          }
          settled(run.done.subscribe()).await.flatten()
        }
      };
      {
        let mut phase = manager.phase();
        if matches!(&*phase, Phase::Stopping { id: current, .. } if *current == id) {
          manager.become_idle(&mut phase);
        }
      }
      done_tx.send_replace(Some(result.clone()));
      result
    }
  }

  /// Replaces every process of the running backend with a new one, one at a time (see
  /// `supervisor::replace`): with a front, no request fails. A start in progress is waited for first.
  /// `None` when nothing runs.
  pub fn reload(
    self: &Arc<Self>,
  ) -> impl Future<Output = Result<Option<BackendInfo>>> + Send + 'static {
    let manager = self.clone();
    async move {
      loop {
        let now = match &*manager.phase() {
          Phase::Up(run) => Ok(run.clone()),
          Phase::Starting(start) => Err(Some(start.outcome.subscribe())),
          Phase::Idle | Phase::Stopping { .. } => Err(None),
        };
        match now {
          Ok(run) => return reload_run(manager.clone(), run, None).await,
          Err(Some(starting)) => {
            settled(starting).await;
          }
          Err(None) => return Ok(None),
        }
      }
    }
  }

  /// After each spawn: logs what the spawn could not do (Windows: no job object), and warns when the
  /// priority or limits asked for could not be applied (raising either needs a privilege the app may not
  /// have).
  pub(super) fn check_spawn_settings(&self, child: &crate::os::spawn::Child) {
    for warning in child.warnings() {
      self.log(Level::Warn, warning);
    }
    let pid = child.pid;
    let o = &self.options;
    if o.priority.nice() != 0 {
      if let Some(nice) = crate::os::process::nice(pid) {
        if nice != o.priority.nice() {
          self.log(
            Level::Warn,
            format!(
              "priority {:?} could not be applied to backend pid {pid} (it runs at nice {nice}); raising it needs a privilege",
              o.priority.name()
            ),
          );
        }
      }
    }
    if cfg!(windows) && (o.limits.open_files.is_some() || o.limits.core_dumps.is_some()) {
      self.log(Level::Warn, "limits are not applied on Windows");
    }
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
pub(super) fn port_lost(port: u16, exited: PmError) -> PmError {
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

/// Reloads every slot of `run` in turn (`reason`: a watchdog verdict, for replicas on one socket). A slot
/// with no process now (down between restarts, or for good) is left to its supervisor.
pub(super) async fn reload_run(
  manager: Arc<Manager>,
  run: Arc<Run>,
  reason: Option<Reason>,
) -> Result<Option<BackendInfo>> {
  let _one_at_a_time = run.reloading.lock().await;
  for slot in &run.slots {
    if run.stop_requested() {
      break;
    }
    if let Err(e) = slot.reload(reason).await {
      manager.log(Level::Warn, format!("reload failed: {e}"));
      return Err(e);
    }
  }
  Ok(run.info())
}
