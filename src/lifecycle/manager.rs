//! The phases of one named backend — idle, starting, up (running or between restarts), stopping — and the
//! public operations. Every operation takes its phase transition at call time, under one lock, before any
//! waiting: so calls keep the order the app made them in (a `startBackend()` after `stopBackend()` waits
//! for that stop and starts afresh; a stop during a start cancels it), and concurrent callers share one
//! outcome. Once up, the backend belongs to its supervisor (`supervisor`), which a stop asks to end it.
//! The start itself (cleanup, ports, the processes and their front) is in `start`.

mod start;

use super::instance::Instance;
use super::owner;
use super::run::{Front, Run};
use super::{BackendInfo, Event, Events, Level, Reason, Stats, StopResult};
use crate::blocking;
use crate::error::{PmError, Result};
use crate::logs::{Log, LogStream, LogWarning, Redactor};
use crate::net::health::{self, Secret, Target};
use crate::net::port::{self, Search};
use crate::net::reservation::Owner;
use crate::options::Options;
use crate::os::spawn::Stream;
use crate::os::stop::Polite;
use crate::state::orphans::{self, CleanupAction};
pub(super) use start::port_lost;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
  /// The grace of a stop whose caller bounds it (`stopSync`), instead of `stopTimeoutMs`.
  stop_grace: Mutex<Option<Duration>>,
  /// The log file (`logs` option), and the secrets its lines are cleaned of: the current start's.
  log_file: Option<Arc<Log>>,
  redactor: Mutex<Arc<Redactor>>,
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
    /// The run being stopped, so that a bounded stop can force what is still ending.
    run: Option<Arc<Run>>,
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
    let log_file = options.logs.clone().map(|config| {
      let events = events.clone();
      Log::new(
        config,
        &options.name,
        Arc::new(move |warning: LogWarning| {
          events.emit(Event::Warning {
            code: "ERR_LOG_WRITE",
            message: warning.message,
            dropped: Some(warning.dropped),
          })
        }),
      )
    });
    Arc::new(Manager {
      log_file,
      redactor: Mutex::new(Arc::new(Redactor::default())),
      options,
      owner: Owner::new(),
      events,
      phase: Mutex::new(Phase::Idle),
      stop_grace: Mutex::new(None),
    })
  }

  pub(super) fn log(&self, level: Level, message: impl Into<String>) {
    let message = message.into();
    if let Some(file) = &self.log_file {
      file.line(LogStream::Manager, 0, &message, &self.redactor());
    }
    self.events.emit(Event::Log { level, message });
  }

  /// What the log's lines are cleaned of: the secrets of the start under way or running.
  pub(super) fn redactor(&self) -> Arc<Redactor> {
    self
      .redactor
      .lock()
      .unwrap_or_else(|e| e.into_inner())
      .clone()
  }

  /// The secrets the log is cleaned of: a new start's (its token, its secret-looking environment); within
  /// a start, a renewed token joins the one it replaced (which may still show up in a line).
  pub(super) fn learn_secrets(&self, launch: &super::launch::Launch, same_start: bool) {
    let mut known = self.redactor.lock().unwrap_or_else(|e| e.into_inner());
    *known = Arc::new(match same_start {
      true => known.with(&launch.redactor()),
      false => launch.redactor(),
    });
  }

  /// Every secret the manager knows of: the current start's, and the secret-looking values of `env`
  /// (before any start). What a diagnostics archive is cleaned of.
  pub fn known_secrets(&self) -> Redactor {
    let configured = Redactor::new(
      None,
      self
        .options
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    self.redactor().with(&configured)
  }

  /// The log file, when the `logs` option keeps one.
  pub fn log_file(&self) -> Option<&Arc<Log>> {
    self.log_file.as_ref()
  }

  /// A running backend's record could not be rewritten (a full or read-only disk): it runs on, with the
  /// last record written. Logged each time; the app gets one `warning` per run of failures.
  pub(super) fn record_not_updated(&self, instance: &Instance, error: &PmError) {
    let message = format!(
      "could not update the PID record of backend pid {}: {error}",
      instance.info.pid
    );
    self.log(Level::Warn, message.clone());
    if instance.first_record_failure() {
      self.emit(Event::Warning {
        code: error.code(),
        message,
        dropped: None,
      });
    }
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

  /// A line of the backend's output (of replica `replica`, 0 for a single process).
  pub(super) fn line(&self, stream: Stream, replica: usize, text: &str, redactor: &Redactor) {
    if let Some(file) = &self.log_file {
      let stream = match stream {
        Stream::Stdout => LogStream::Out,
        Stream::Stderr => LogStream::Err,
      };
      file.line(stream, replica, text, redactor);
    }
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

  pub fn target(&self, port: u16, secret: Option<Secret>) -> Target {
    Target {
      host: reachable(self.options.host),
      port,
      path: self.options.health_path.clone(),
      secret,
    }
  }

  /// The token of the running start, so that `checkBackendHealth` and `waitForBackendReady` are let in —
  /// by the running processes' listeners only.
  fn current_secret(&self) -> Option<Secret> {
    let run = match &*self.phase() {
      Phase::Up(run) => run.clone(),
      _ => return None,
    };
    let token = run.launch.token.clone();
    owner::secret(token, move || {
      run
        .slots
        .iter()
        .filter_map(|s| s.current())
        .map(|i| i.info.pid)
        .collect()
    })
  }

  pub async fn check_health(&self, port: u16) -> bool {
    health::probe(
      &self.target(port, self.current_secret()),
      self.options.health_timeout,
    )
    .await
    .is_healthy()
  }

  /// One probe of `port` for the dashboard: how it was answered and how long that took. The token goes
  /// only to the running backend's own listener.
  pub async fn probe_health(&self, port: u16) -> (health::ProbeOutcome, Duration) {
    let started = Instant::now();
    let limit = self.options.health_timeout.min(Duration::from_secs(1));
    let outcome = health::probe(&self.target(port, self.current_secret()), limit).await;
    (outcome, started.elapsed())
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
      &self.target(port, self.current_secret()),
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
      handout: true,
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
    let items = blocking::run(move || orphans::cleanup(&dir, Some(&name), grace)).await??;
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

  /// How long a stop waits after its polite requests before the force kill.
  pub(super) fn stop_timeout(&self) -> Duration {
    self
      .stop_grace
      .lock()
      .unwrap_or_else(|e| e.into_inner())
      .unwrap_or(self.options.stop_timeout)
  }

  /// The polite stop requests of the `shutdown` option, for one instance.
  fn polite(&self, instance: &Instance) -> Polite {
    let request = self.options.shutdown.http.clone().map(|(method, path)| {
      let pid = instance.info.pid;
      let secret = owner::secret(instance.info.token.clone(), move || vec![pid]);
      let target = self.target(instance.info.port, secret);
      let limit = (self.stop_timeout() / 4).min(Duration::from_secs(1));
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
    let stop_timeout = self.stop_timeout();
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
        let run = match &plan {
          Plan::Supervised(run) => Some(run.clone()),
          _ => None,
        };
        *phase = Phase::Stopping { id, done, run };
      }
      (plan, id, done_tx)
    };
    let manager = self.clone();
    async move {
      let result = match plan {
        Plan::Nothing => {
          // Lines of an end nobody asked for (an exit without restart) are written by the time it returns.
          manager.flush_log().await;
          return None;
        }
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
      // Once a stop has resolved, nothing more of it is written: the app may remove the folders.
      manager.flush_log().await;
      done_tx.send_replace(Some(result.clone()));
      result
    }
  }

  /// Waits until every log line queued so far is written (or dropped). Off the async workers.
  pub(super) async fn flush_log(&self) {
    if let Some(log) = self.log_file.clone() {
      let _ = blocking::run(move || log.flush()).await;
    }
  }

  /// A stop whose polite part lasts `grace` instead of `stopTimeoutMs` (`stopSync`, for an app that is
  /// quitting). Ends that began earlier keep their own grace; `force_now` ends them.
  pub fn stop_within(
    self: &Arc<Self>,
    grace: Duration,
  ) -> impl Future<Output = Option<StopResult>> + Send + 'static {
    *self.stop_grace.lock().unwrap_or_else(|e| e.into_inner()) = Some(grace);
    let stopping = self.stop();
    let manager = self.clone();
    async move {
      let result = stopping.await;
      *manager.stop_grace.lock().unwrap_or_else(|e| e.into_inner()) = None;
      result
    }
  }

  /// Force-kills the whole tree of every process of the run that is up or being stopped, now: the end of
  /// a bounded stop's grace, for ends that began with a longer one.
  pub fn force_now(&self) {
    let run = match &*self.phase() {
      Phase::Up(run) => Some(run.clone()),
      Phase::Stopping { run, .. } => run.clone(),
      _ => None,
    };
    for slot in run.iter().flat_map(|r| r.slots.iter()) {
      if let Some(instance) = slot.current() {
        instance.child.force_now();
      }
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
