//! The phases of one named backend — idle, starting, running, stopping — and the public operations. Every
//! operation takes its phase transition at call time, under one lock, before any waiting: so calls keep
//! the order the app made them in (a `startBackend()` after `stopBackend()` waits for that stop and starts
//! afresh; a stop during a start cancels it), and concurrent callers share one outcome.

use super::attempt::{self, Attempt};
use super::instance::Instance;
use super::launch::{Launch, Runtime};
use super::{BackendInfo, Event, Events, Level, StopResult};
use crate::blocking;
use crate::error::{PmError, Result};
use crate::net::health::{self, Target};
use crate::net::port::{self, Search};
use crate::net::reservation::{Owner, Reservation};
use crate::options::{Options, StartArgs};
use crate::os::spawn::Stream;
use crate::state::dir::ensure_state_dir;
use crate::state::orphans::{self, CleanupAction};
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;
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
pub(super) struct StartState {
  outcome: watch::Sender<Option<Result<BackendInfo>>>,
  pub(super) cancel: watch::Sender<bool>,
  /// What a stop during this start stopped (the starting process), for that stop to report.
  stopped: Mutex<Option<StopResult>>,
}

enum Phase {
  Idle,
  Starting(Arc<StartState>),
  Running(Arc<Instance>),
  Stopping {
    id: u64,
    done: watch::Receiver<Option<Option<StopResult>>>,
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

  pub(super) fn line(&self, stream: Stream, text: &str) {
    self.events.line(stream, text);
  }

  fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
    self.phase.lock().unwrap_or_else(|e| e.into_inner())
  }

  /// The running backend, if one is ready.
  pub fn backend(&self) -> Option<BackendInfo> {
    match &*self.phase() {
      Phase::Running(instance) => Some(instance.info.clone()),
      _ => None,
    }
  }

  pub fn target(&self, port: u16) -> Target {
    Target {
      host: reachable(self.options.host),
      port,
      path: self.options.health_path.clone(),
      token: None,
    }
  }

  pub async fn check_health(&self, port: u16) -> bool {
    health::probe(&self.target(port), self.options.health_timeout)
      .await
      .is_healthy()
  }

  pub async fn wait_for_ready(&self, port: u16, max_retries: u32, retry_delay: Duration) -> bool {
    let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
    let deadline = retry_delay
      .checked_mul(max_retries)
      .and_then(|total| Instant::now().checked_add(total))
      .unwrap_or(far_future);
    health::wait_until_healthy(
      &self.target(port),
      self.options.health_timeout,
      deadline,
      retry_delay,
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
  /// for while a stop runs waits for that stop, then starts afresh.
  pub fn start(
    self: &Arc<Self>,
    args: StartArgs,
    runtime: Runtime,
  ) -> impl Future<Output = Result<BackendInfo>> + Send + 'static {
    enum Plan {
      Done(BackendInfo),
      Join(watch::Receiver<Option<Result<BackendInfo>>>),
      Run {
        start: Arc<StartState>,
        after: Option<watch::Receiver<Option<Option<StopResult>>>>,
      },
    }
    let plan = {
      let mut phase = self.phase();
      match &*phase {
        Phase::Running(instance) => Plan::Done(instance.info.clone()),
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
        Plan::Done(info) => Ok(info),
        Plan::Join(outcome) => settled(outcome)
          .await
          .unwrap_or_else(|| Err(PmError::Internal("a start ended without an outcome".into()))),
        Plan::Run { start, after } => {
          if let Some(stop) = after {
            settled(stop).await;
          }
          let outcome = manager.run_start(&args, &runtime, &start).await;
          start.outcome.send_replace(Some(outcome.clone()));
          outcome
        }
      }
    }
  }

  /// The start itself, then the phase it leaves behind.
  async fn run_start(
    self: &Arc<Self>,
    args: &StartArgs,
    runtime: &Runtime,
    start: &Arc<StartState>,
  ) -> Result<BackendInfo> {
    let result = self.start_on_some_port(args, runtime, start).await;
    enum Next {
      Ready(BackendInfo),
      DiedAtOnce(Arc<Instance>),
      StopWins(Arc<Instance>),
      Failed(PmError),
    }
    let next = {
      let mut phase = self.phase();
      let still_ours = matches!(&*phase, Phase::Starting(s) if Arc::ptr_eq(s, start));
      let next = match result {
        Ok(instance) if still_ours && instance.child.exit_info().is_none() => {
          *phase = Phase::Running(instance.clone());
          Next::Ready(instance.info.clone())
        }
        // It died right after its health check; its exit was already reported.
        Ok(instance) if still_ours => Next::DiedAtOnce(instance),
        // A stop came as it became ready: that stop wins.
        Ok(instance) => Next::StopWins(instance),
        Err(e) => Next::Failed(e),
      };
      if still_ours && !matches!(next, Next::Ready(_)) {
        *phase = Phase::Idle;
      }
      next
    };
    match next {
      Next::Ready(info) => Ok(info),
      Next::DiedAtOnce(instance) => Err(exited_after_ready(&instance)),
      Next::StopWins(instance) => {
        let stopped = self.end(&instance, true).await;
        Err(self.cancelled(start, Some(stopped), instance.child.output.stderr_tail()))
      }
      Next::Failed(e) => Err(e),
    }
  }

  async fn start_on_some_port(
    self: &Arc<Self>,
    args: &StartArgs,
    runtime: &Runtime,
    start: &StartState,
  ) -> Result<Arc<Instance>> {
    let o = &self.options;
    let dir = o.state_dir.clone();
    blocking::run(move || ensure_state_dir(&dir)).await??;
    let launch = Launch::resolve(o, args, runtime)?;
    self.kill_existing().await?;
    let mut exclude = Vec::new();
    for attempt in 0..=ADDRESS_IN_USE_RETRIES {
      let port = self.reserve_port(&exclude).await?;
      let chosen = port.port();
      if chosen != o.port && attempt == 0 {
        self.log(
          Level::Info,
          format!("port {} is in use, using port {chosen}", o.port),
        );
      }
      match attempt::run(self, &launch, port, start).await? {
        Attempt::Ready(instance) => return Ok(instance),
        Attempt::PortTaken { port, exited } if attempt < ADDRESS_IN_USE_RETRIES => {
          self.log(
            Level::Warn,
            format!("another program took port {port} before the backend could; trying the next port"),
          );
          exclude.push(port);
          drop(exited);
        }
        Attempt::PortTaken { port, exited } => {
          return Err(match exited {
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
          })
        }
      }
    }
    unreachable!("the loop returns on its last attempt")
  }

  /// The first free port of this manager's range, not in `exclude`. Off the async workers: it binds
  /// sockets and takes file locks.
  async fn reserve_port(&self, exclude: &[u16]) -> Result<Reservation> {
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

  /// Reacts to an exit nobody asked for: ends the instance (its group, record, port) and reports it.
  pub(super) fn watch_exit(self: &Arc<Self>, instance: Arc<Instance>) {
    let manager: Weak<Manager> = Arc::downgrade(self);
    tokio::spawn(async move {
      instance.child.exited().await;
      match manager.upgrade() {
        Some(manager) => {
          manager.end(&instance, false).await;
        }
        // The app dropped its manager: still leave nothing behind.
        None => {
          crate::os::stop::stop_child(&instance.child, Duration::from_secs(1)).await;
        }
      }
    });
  }

  /// Ends an instance once (see `Instance::end`), reports it, and leaves the running phase if it was the
  /// running one.
  pub(super) async fn end(&self, instance: &Arc<Instance>, request_stop: bool) -> StopResult {
    if request_stop {
      instance.request_stop();
    }
    let pid = instance.info.pid;
    if request_stop && instance.child.exit_info().is_none() {
      self.log(Level::Info, format!("stopping backend pid {pid}"));
    }
    let stop_timeout = self.options.stop_timeout;
    instance
      .end(stop_timeout, |result, expected, delete_error| {
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
        {
          let mut phase = self.phase();
          if matches!(&*phase, Phase::Running(current) if Arc::ptr_eq(current, instance)) {
            *phase = Phase::Idle;
          }
        }
        let describe = result.exit.describe();
        if expected {
          self.log(Level::Info, format!("backend pid {pid} stopped ({describe})"));
        } else {
          self.log(Level::Warn, format!("backend pid {pid} exited unexpectedly ({describe})"));
        }
        self.events.emit(Event::Exit {
          pid,
          exit: result.exit.clone(),
          expected,
        });
      })
      .await
  }

  /// Stops the backend (also one still starting). `None` when nothing runs.
  pub fn stop(self: &Arc<Self>) -> impl Future<Output = Option<StopResult>> + Send + 'static {
    static STOPS: AtomicU64 = AtomicU64::new(1);
    enum Plan {
      Nothing,
      Join(watch::Receiver<Option<Option<StopResult>>>),
      Cancel(
        Arc<StartState>,
        u64,
        watch::Sender<Option<Option<StopResult>>>,
      ),
      Stop(
        Arc<Instance>,
        u64,
        watch::Sender<Option<Option<StopResult>>>,
      ),
    }
    let plan = {
      let mut phase = self.phase();
      let id = STOPS.fetch_add(1, Ordering::Relaxed);
      let (done_tx, done) = watch::channel(None);
      let plan = match &*phase {
        Phase::Idle => Plan::Nothing,
        Phase::Stopping { done, .. } => Plan::Join(done.clone()),
        Phase::Starting(start) => {
          start.cancel.send_replace(true);
          Plan::Cancel(start.clone(), id, done_tx)
        }
        Phase::Running(instance) => Plan::Stop(instance.clone(), id, done_tx),
      };
      if matches!(plan, Plan::Cancel(..) | Plan::Stop(..)) {
        *phase = Phase::Stopping { id, done };
      }
      plan
    };
    let manager = self.clone();
    async move {
      let (result, id, done) = match plan {
        Plan::Nothing => return None,
        Plan::Join(done) => return settled(done).await.flatten(),
        Plan::Cancel(start, id, done) => {
          settled(start.outcome.subscribe()).await;
          let stopped = start
            .stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
          (stopped, id, done)
        }
        Plan::Stop(instance, id, done) => (Some(manager.end(&instance, true).await), id, done),
      };
      {
        let mut phase = manager.phase();
        if matches!(&*phase, Phase::Stopping { id: current, .. } if *current == id) {
          *phase = Phase::Idle;
        }
      }
      done.send_replace(Some(result.clone()));
      result
    }
  }

  /// The error of a start that a stop cancelled; the stop's result is kept for that stop to report.
  pub(super) fn cancelled(
    &self,
    start: &StartState,
    stopped: Option<StopResult>,
    stderr_tail: Vec<String>,
  ) -> PmError {
    let exit = stopped.as_ref().map(|s| s.exit.clone()).unwrap_or_default();
    *start.stopped.lock().unwrap_or_else(|e| e.into_inner()) = stopped;
    PmError::BackendExited {
      message: "stopBackend() was called while the backend was starting; it has been stopped"
        .into(),
      exit_code: exit.exit_code,
      signal: exit.signal,
      stderr_tail,
    }
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
