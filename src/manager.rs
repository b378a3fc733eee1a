//! The lifecycle of one named backend: clean up orphans → pick a port → spawn → record → wait until
//! healthy → run → stop. Ties the other modules together; holds no napi types.

use crate::error::{PmError, Result};
use crate::health::{self, Target};
use crate::identity;
use crate::orphans::{self, CleanupAction};
use crate::port::{self, FindOptions};
use crate::record::{self, Record, RECORD_VERSION};
use crate::spawn::{self, Child, ExitInfo, LineSink, SpawnSpec, Stream};
use crate::stop;
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, OnceCell};
use tokio::time::Instant;

/// How many more ports are tried when the backend reports `EADDRINUSE` before it is healthy.
pub const ADDRESS_IN_USE_RETRIES: usize = 3;
/// How long an error report waits for the backend's last stderr lines after it exited.
const OUTPUT_DRAIN: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct Config {
  pub name: String,
  pub host: IpAddr,
  pub port: u16,
  pub port_range: u16,
  pub port_env: String,
  pub health_path: String,
  pub health_timeout: Duration,
  pub start_timeout: Duration,
  pub stop_timeout: Duration,
  pub state_dir: PathBuf,
}

/// What to run; resolved by the JS layer from the options and `startBackend`'s arguments. `{port}` and
/// `{host}` in `args` are replaced here, once the port is known.
#[derive(Debug, Clone)]
pub struct Launch {
  pub program: String,
  pub args: Vec<String>,
  pub cwd: PathBuf,
  pub env: Vec<(String, String)>,
  /// The script the Node runtime runs, checked before spawning so a typo gives a clear error.
  pub entry_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendInfo {
  pub pid: u32,
  pub port: u16,
  pub host: String,
  pub url: String,
  pub started_at: u64,
}

#[derive(Debug, Clone)]
pub struct StopResult {
  pub pid: u32,
  pub exit: ExitInfo,
  pub forced: bool,
  pub duration: Duration,
}

#[derive(Debug, Clone, Copy)]
pub enum Level {
  Info,
  Warn,
}

/// Where the manager reports what happens (the binding forwards these to JS).
pub trait Events: Send + Sync {
  fn line(&self, stream: Stream, text: String);
  fn exit(&self, pid: u32, exit: &ExitInfo, expected: bool);
  fn log(&self, level: Level, message: String);
}

/// One spawned backend process and what the manager knows of it.
struct Backend {
  info: BackendInfo,
  child: Arc<Child>,
  record_path: Option<PathBuf>,
  stop_requested: AtomicBool,
  stop_requested_at: Mutex<Option<Instant>>,
  /// Set, under the phase lock, once the backend is gone and its record deleted.
  ended: AtomicBool,
  finished: OnceCell<StopResult>,
}

enum Phase {
  Idle,
  Starting {
    cancel: watch::Sender<bool>,
    backend: Option<Arc<Backend>>,
  },
  Running(Arc<Backend>),
}

pub struct Manager {
  config: Config,
  events: Arc<dyn Events>,
  phase: Mutex<Phase>,
  /// One start at a time; a second caller waits and then finds the backend running.
  start_lock: tokio::sync::Mutex<()>,
}

fn now_ms() -> u64 {
  SystemTime::now()
    .duration_since(UNIX_EPOCH)
    .map(|d| d.as_millis() as u64)
    .unwrap_or(0)
}

/// Where to reach a backend that listens on `host`: a wildcard address (0.0.0.0, ::) means "every
/// interface", which is reached through loopback — connecting to the wildcard itself fails on macOS and
/// Windows.
fn reachable(host: IpAddr) -> IpAddr {
  match host {
    IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    other => other,
  }
}

fn url_for(host: IpAddr, port: u16) -> String {
  match reachable(host) {
    IpAddr::V4(ip) => format!("http://{ip}:{port}"),
    IpAddr::V6(ip) => format!("http://[{ip}]:{port}"),
  }
}

/// Runs blocking work on a short-lived thread of its own, not on the async runtime's blocking pool (whose
/// idle threads can keep Node from exiting, napi-rs#2884).
pub async fn off_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
  let (tx, rx) = tokio::sync::oneshot::channel();
  std::thread::Builder::new()
    .name("bpm-blocking".into())
    .stack_size(spawn::THREAD_STACK)
    .spawn(move || {
      let _ = tx.send(work());
    })
    .expect("a thread for blocking work");
  rx.await.expect("blocking work panicked")
}

enum Attempt {
  Ready(Arc<Backend>),
  /// The backend lost the race for its port (it said so, then exited); try the next one. `exited` is the
  /// error to report if no try is left.
  PortTaken {
    port: u16,
    exited: PmError,
  },
}

impl Manager {
  pub fn new(config: Config, events: Arc<dyn Events>) -> Result<Self> {
    record::validate_name(&config.name)?;
    Ok(Manager {
      config,
      events,
      phase: Mutex::new(Phase::Idle),
      start_lock: tokio::sync::Mutex::new(()),
    })
  }

  pub fn config(&self) -> &Config {
    &self.config
  }

  fn log(&self, level: Level, message: impl Into<String>) {
    self.events.log(level, message.into());
  }

  fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
    self.phase.lock().unwrap_or_else(|e| e.into_inner())
  }

  /// The running backend, if one is ready.
  pub fn backend(&self) -> Option<BackendInfo> {
    match &*self.phase() {
      Phase::Running(b) => Some(b.info.clone()),
      _ => None,
    }
  }

  fn target(&self, port: u16) -> Target {
    Target {
      host: reachable(self.config.host),
      port,
      path: self.config.health_path.clone(),
    }
  }

  pub async fn check_health(&self, port: u16) -> bool {
    health::probe(&self.target(port), self.config.health_timeout)
      .await
      .is_healthy()
  }

  pub async fn wait_for_ready(&self, port: u16, max_retries: u32, retry_delay: Duration) -> bool {
    let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
    let deadline = retry_delay
      .checked_mul(max_retries.max(1))
      .and_then(|total| Instant::now().checked_add(total))
      .unwrap_or(far_future);
    health::wait_until_healthy(
      &self.target(port),
      self.config.health_timeout,
      deadline,
      retry_delay,
    )
    .await
    .is_ok()
  }

  /// Terminates orphaned backends of this name; deletes stale and unreadable records. True when one was
  /// terminated.
  pub async fn kill_existing(&self) -> Result<bool> {
    let dir = self.config.state_dir.clone();
    let name = self.config.name.clone();
    let grace = self.config.stop_timeout;
    let items = off_thread(move || orphans::cleanup(&dir, Some(&name), grace)).await;
    let mut terminated = false;
    for item in items {
      let level = match item.action {
        CleanupAction::Terminated => {
          terminated = true;
          Level::Info
        }
        CleanupAction::StaleRemoved | CleanupAction::Busy => Level::Info,
        CleanupAction::InvalidRemoved
        | CleanupAction::Failed
        | CleanupAction::NotDeleted
        | CleanupAction::Untrusted => Level::Warn,
      };
      self.log(level, format!("{} ({})", item.detail, item.file.display()));
    }
    Ok(terminated)
  }

  pub async fn start(self: &Arc<Self>, launch: Launch) -> Result<BackendInfo> {
    let _one_start = self.start_lock.lock().await;
    if let Some(info) = self.backend() {
      return Ok(info);
    }
    let (cancel, cancel_rx) = watch::channel(false);
    *self.phase() = Phase::Starting {
      cancel,
      backend: None,
    };
    let result = self.start_inner(launch, cancel_rx).await;
    let mut phase = self.phase();
    match &result {
      // A backend that died right after its health check was already finished (and its `exit` emitted)
      // while the phase still said "starting": it must not be left looking like the running one.
      Ok(backend) if backend.ended.load(Ordering::SeqCst) => *phase = Phase::Idle,
      Ok(backend) => *phase = Phase::Running(backend.clone()),
      Err(_) => *phase = Phase::Idle,
    }
    drop(phase);
    result.map(|b| b.info.clone())
  }

  async fn start_inner(
    self: &Arc<Self>,
    launch: Launch,
    cancel: watch::Receiver<bool>,
  ) -> Result<Arc<Backend>> {
    let config = &self.config;
    let state_dir = config.state_dir.clone();
    off_thread(move || record::ensure_state_dir(&state_dir)).await?;
    if let Some(entry) = &launch.entry_file {
      if !entry.is_file() {
        return Err(PmError::SpawnFailed {
          command: launch.program.clone(),
          reason: format!(
            "the backend entry {} does not exist; check `entry` and the project root",
            entry.display()
          ),
        });
      }
    }
    if !launch.cwd.is_dir() {
      return Err(PmError::SpawnFailed {
        command: launch.program.clone(),
        reason: format!("the working folder {} does not exist", launch.cwd.display()),
      });
    }
    self.kill_existing().await?;

    let last_port = config.port.saturating_add(config.port_range);
    let mut exclude = HashSet::new();
    let mut start_from = config.port;
    for attempt in 0..=ADDRESS_IN_USE_RETRIES {
      let find = FindOptions {
        start_port: start_from,
        end_port: last_port,
        exclude: exclude.clone(),
        host: None,
      };
      let port = match port::find_available_port(&find) {
        Ok(p) => p,
        Err(PmError::NoFreePort { .. }) => {
          return Err(PmError::NoFreePort {
            start_port: config.port,
            end_port: last_port,
          })
        }
        Err(e) => return Err(e),
      };
      if port != config.port {
        self.log(
          Level::Info,
          format!("port {} is in use, using port {port}", config.port),
        );
      }
      match self.attempt(&launch, port, cancel.clone()).await {
        Ok(Attempt::Ready(backend)) => return Ok(backend),
        Ok(Attempt::PortTaken { port, .. }) if attempt < ADDRESS_IN_USE_RETRIES => {
          self.log(
            Level::Warn,
            format!(
              "another program took port {port} before the backend could; trying the next port"
            ),
          );
          exclude.insert(port);
          start_from = port.saturating_add(1).min(last_port);
        }
        Ok(Attempt::PortTaken { port, exited }) => {
          let PmError::BackendExited {
            exit_code,
            signal,
            stderr_tail,
            ..
          } = exited
          else {
            return Err(exited);
          };
          return Err(PmError::BackendExited {
            message: format!(
              "the backend could not listen: port {port} and the {ADDRESS_IN_USE_RETRIES} ports tried before it were taken by other programs first (EADDRINUSE). See stderrTail for its last output"
            ),
            exit_code,
            signal,
            stderr_tail,
          });
        }
        Err(e) => return Err(e),
      }
    }
    unreachable!("the loop returns on its last attempt")
  }

  fn substitute(&self, text: &str, port: u16) -> String {
    text
      .replace("{port}", &port.to_string())
      .replace("{host}", &self.config.host.to_string())
  }

  async fn attempt(
    self: &Arc<Self>,
    launch: &Launch,
    port: u16,
    mut cancel: watch::Receiver<bool>,
  ) -> Result<Attempt> {
    let config = &self.config;
    if *cancel.borrow() {
      return Err(stopped_during_start(None, Vec::new()));
    }
    let mut env = launch.env.clone();
    env.retain(|(k, _)| k != &config.port_env && k != "HOST");
    env.push((config.port_env.clone(), port.to_string()));
    env.push(("HOST".into(), config.host.to_string()));
    let spec = SpawnSpec {
      program: launch.program.clone(),
      args: launch
        .args
        .iter()
        .map(|a| self.substitute(a, port))
        .collect(),
      cwd: launch.cwd.clone(),
      env,
    };
    self.log(
      Level::Info,
      format!("starting backend: {} {}", spec.program, spec.args.join(" ")),
    );
    let events = self.events.clone();
    let sink: LineSink = Arc::new(move |stream, line| events.line(stream, line));
    let child = match spawn::spawn(spec, sink).await {
      Ok(c) => c,
      Err(e) => {
        port::release_port(port);
        return Err(e);
      }
    };
    let started_at = now_ms();
    let info = BackendInfo {
      pid: child.pid,
      port,
      host: config.host.to_string(),
      url: url_for(config.host, port),
      started_at,
    };
    self.log(
      Level::Info,
      format!("backend started with pid {} on port {port}", child.pid),
    );

    let record_path = match self.write_record(&info) {
      Ok(path) => Some(path),
      Err(e) => {
        stop::stop_child(&child, config.stop_timeout).await;
        port::release_port(port);
        return Err(e);
      }
    };
    let backend = Arc::new(Backend {
      info,
      child: child.clone(),
      record_path,
      stop_requested: AtomicBool::new(false),
      stop_requested_at: Mutex::new(None),
      ended: AtomicBool::new(false),
      finished: OnceCell::new(),
    });
    if let Phase::Starting { backend: slot, .. } = &mut *self.phase() {
      *slot = Some(backend.clone());
    }
    self.watch_exit(backend.clone());

    let waiting_since = Instant::now();
    let deadline = waiting_since + config.start_timeout;
    let target = self.target(port);
    let cancelled = async {
      while !*cancel.borrow_and_update() {
        if cancel.changed().await.is_err() {
          std::future::pending::<()>().await;
        }
      }
    };
    tokio::select! {
      biased;
      _ = cancelled => {
        let result = self.finish(&backend, true).await;
        Err(stopped_during_start(Some(result.exit), child.output.stderr_tail()))
      }
      exit = child.exited() => {
        child.output.wait_closed(OUTPUT_DRAIN).await;
        let port_taken = child.output.address_in_use.load(Ordering::SeqCst);
        self.finish(&backend, false).await;
        let tail = child.output.stderr_tail();
        let hint = tail.last().map(|l| format!(": {l}")).unwrap_or_default();
        let exited = PmError::BackendExited {
          message: format!(
            "the backend exited with {} before it became healthy{hint}. See stderrTail for its last output",
            exit.describe()
          ),
          exit_code: exit.exit_code,
          signal: exit.signal,
          stderr_tail: tail,
        };
        if port_taken {
          return Ok(Attempt::PortTaken { port, exited });
        }
        Err(exited)
      }
      ready = health::wait_until_healthy(&target, config.health_timeout, deadline, Duration::from_millis(500)) => {
        match ready {
          Ok(ready) => {
            self.refresh_record(&backend);
            self.log(Level::Info, format!(
              "backend is ready at {} ({} health checks in {} ms)",
              backend.info.url, ready.probes, waiting_since.elapsed().as_millis()
            ));
            Ok(Attempt::Ready(backend))
          }
          Err(not_ready) => {
            self.log(Level::Warn, format!(
              "backend not healthy after {} ms and {} health checks (last: {}); stopping it",
              config.start_timeout.as_millis(), not_ready.probes, not_ready.last.describe()
            ));
            self.finish(&backend, true).await;
            Err(PmError::StartTimeout {
              port,
              timeout_ms: config.start_timeout.as_millis() as u64,
              last_health_error: not_ready.last.describe(),
            })
          }
        }
      }
    }
  }

  fn write_record(&self, info: &BackendInfo) -> Result<PathBuf> {
    let me = identity::own_pid();
    let owner = identity::identity(me);
    let backend = identity::identity(info.pid);
    let record = Record {
      version: RECORD_VERSION,
      name: self.config.name.clone(),
      pid: info.pid,
      port: info.port,
      host: info.host.clone(),
      started_at: info.started_at,
      exe: backend.as_ref().and_then(|b| b.exe.clone()),
      start_time: backend.map(|b| b.start_time).unwrap_or(0),
      owner_pid: me,
      owner_start_time: owner.map(|o| o.start_time).unwrap_or(0),
    };
    record::write_record(&self.config.state_dir, &record)
  }

  /// A launcher may have exec'd the real server since the record was written: record what runs now.
  fn refresh_record(&self, backend: &Backend) {
    if let Err(e) = self.write_record(&backend.info) {
      self.log(Level::Warn, format!("could not update the PID record: {e}"));
    }
  }

  /// Handles an exit nobody asked for: the rest of the group is stopped, the record deleted, `exit` emitted.
  fn watch_exit(self: &Arc<Self>, backend: Arc<Backend>) {
    let manager = Arc::downgrade(self);
    tokio::spawn(async move {
      backend.child.exited().await;
      match manager.upgrade() {
        Some(manager) => {
          manager.finish(&backend, false).await;
        }
        None => {
          stop::stop_child(&backend.child, Duration::from_secs(1)).await;
        }
      }
    });
  }

  /// Ends a backend exactly once, whoever gets here first: stops it (when `request_stop`) or deals with its
  /// exit, stops what is left of its group, deletes its record, frees its port, and emits `exit`.
  async fn finish(&self, backend: &Arc<Backend>, request_stop: bool) -> StopResult {
    if request_stop && !backend.stop_requested.swap(true, Ordering::SeqCst) {
      *backend
        .stop_requested_at
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }
    backend
      .finished
      .get_or_init(|| async {
        let began = backend
          .stop_requested_at
          .lock()
          .unwrap_or_else(|e| e.into_inner())
          .unwrap_or_else(Instant::now);
        let expected = backend.stop_requested.load(Ordering::SeqCst);
        let pid = backend.info.pid;
        if expected && backend.child.exit_info().is_none() {
          self.log(Level::Info, format!("stopping backend pid {pid}"));
        }
        let outcome = stop::stop_child(&backend.child, self.config.stop_timeout).await;
        if outcome.forced {
          self.log(
            Level::Warn,
            format!(
              "backend pid {pid} did not stop within {} ms; force-killed its process group",
              self.config.stop_timeout.as_millis()
            ),
          );
        }
        if let Some(path) = &backend.record_path {
          if let Err(e) = record::delete_record(path) {
            self.log(
              Level::Warn,
              format!("could not delete {}: {e}", path.display()),
            );
          }
        }
        port::release_port(backend.info.port);
        {
          let mut phase = self.phase();
          backend.ended.store(true, Ordering::SeqCst);
          let is_current = match &*phase {
            Phase::Running(b) => Arc::ptr_eq(b, backend),
            _ => false,
          };
          if is_current {
            *phase = Phase::Idle;
          }
        }
        if expected {
          self.log(
            Level::Info,
            format!("backend pid {pid} stopped ({})", outcome.exit.describe()),
          );
        } else {
          self.log(
            Level::Warn,
            format!(
              "backend pid {pid} exited unexpectedly ({})",
              outcome.exit.describe()
            ),
          );
        }
        self.events.exit(pid, &outcome.exit, expected);
        StopResult {
          pid,
          exit: outcome.exit,
          forced: outcome.forced,
          duration: began.elapsed(),
        }
      })
      .await
      .clone()
  }

  /// Stops the backend (also one still starting). `None` when nothing runs.
  pub async fn stop(&self) -> Option<StopResult> {
    enum Found {
      Nothing,
      NotSpawnedYet,
      Backend(Arc<Backend>),
    }
    let found = match &*self.phase() {
      Phase::Idle => Found::Nothing,
      Phase::Running(b) => Found::Backend(b.clone()),
      Phase::Starting { cancel, backend } => {
        let _ = cancel.send(true);
        match backend {
          Some(b) => Found::Backend(b.clone()),
          None => Found::NotSpawnedYet,
        }
      }
    };
    match found {
      Found::Nothing => None,
      Found::NotSpawnedYet => {
        // The start sees the cancel before it spawns, or stops what it spawned; wait for it to settle.
        let _settled = self.start_lock.lock().await;
        None
      }
      Found::Backend(backend) => Some(self.finish(&backend, true).await),
    }
  }
}

fn stopped_during_start(exit: Option<ExitInfo>, stderr_tail: Vec<String>) -> PmError {
  let exit = exit.unwrap_or(ExitInfo {
    exit_code: None,
    signal: None,
  });
  PmError::BackendExited {
    message: "stopBackend() was called while the backend was starting; it has been stopped".into(),
    exit_code: exit.exit_code,
    signal: exit.signal,
    stderr_tail,
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::sync::Mutex as StdMutex;

  #[derive(Default)]
  struct Recorded {
    exits: StdMutex<Vec<(u32, ExitInfo, bool)>>,
    exit_count: tokio::sync::watch::Sender<usize>,
  }

  impl Events for Recorded {
    fn line(&self, _stream: Stream, _text: String) {}
    fn exit(&self, pid: u32, exit: &ExitInfo, expected: bool) {
      let mut exits = self.exits.lock().unwrap();
      exits.push((pid, exit.clone(), expected));
      self.exit_count.send_replace(exits.len());
    }
    fn log(&self, _level: Level, _message: String) {}
  }

  #[test]
  fn a_wildcard_host_is_reached_through_loopback() {
    assert_eq!(
      url_for("0.0.0.0".parse().unwrap(), 80),
      "http://127.0.0.1:80"
    );
    assert_eq!(url_for("::".parse().unwrap(), 80), "http://[::1]:80");
    assert_eq!(url_for("::1".parse().unwrap(), 80), "http://[::1]:80");
    assert_eq!(
      url_for("127.0.0.2".parse().unwrap(), 80),
      "http://127.0.0.2:80"
    );
  }

  fn python_available() -> bool {
    std::process::Command::new("python3")
      .arg("--version")
      .output()
      .is_ok_and(|o| o.status.success())
  }

  fn manager(dir: &std::path::Path, port: u16) -> (Arc<Manager>, Arc<Recorded>) {
    let events = Arc::new(Recorded::default());
    let config = Config {
      name: "core-test".into(),
      host: "127.0.0.1".parse().unwrap(),
      port,
      port_range: 50,
      port_env: "PORT".into(),
      health_path: "/".into(),
      health_timeout: Duration::from_secs(1),
      start_timeout: Duration::from_secs(10),
      stop_timeout: Duration::from_secs(2),
      state_dir: dir.to_path_buf(),
    };
    (
      Arc::new(Manager::new(config, events.clone()).unwrap()),
      events,
    )
  }

  fn python_server(dir: &std::path::Path) -> Launch {
    Launch {
      program: "python3".into(),
      args: vec![
        "-m".into(),
        "http.server".into(),
        "{port}".into(),
        "--bind".into(),
        "{host}".into(),
      ],
      cwd: dir.to_path_buf(),
      env: std::env::vars().collect(),
      entry_file: None,
    }
  }

  /// The whole lifecycle without Node: start → healthy → stop; then a crash from outside.
  #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
  async fn start_stop_and_crash_without_node() {
    if !python_available() {
      eprintln!("python3 is not installed: skipped");
      return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
      .unwrap()
      .local_addr()
      .unwrap()
      .port();
    let (pm, events) = manager(dir.path(), port);
    let info = pm.start(python_server(dir.path())).await.unwrap();
    assert!(pm.check_health(info.port).await);
    assert_eq!(record::list_records(dir.path(), None).len(), 1);
    let stopped = pm.stop().await.unwrap();
    assert!(!stopped.forced);
    assert!(!identity::is_alive(info.pid));
    assert!(record::list_records(dir.path(), None).is_empty());
    assert!(pm.stop().await.is_none());

    let info = pm.start(python_server(dir.path())).await.unwrap();
    let mut exit_count = events.exit_count.subscribe();
    crate::signal::signal_pid(info.pid, crate::signal::Stop::Force);
    let second_exit = exit_count.wait_for(|n| *n >= 2);
    tokio::time::timeout(Duration::from_secs(5), second_exit)
      .await
      .expect("the crash is reported")
      .unwrap();
    let exits = events.exits.lock().unwrap().clone();
    assert_eq!(exits.len(), 2, "{exits:?}");
    assert!(exits[0].2, "the first exit was asked for");
    assert_eq!(
      (exits[1].0, exits[1].1.signal.as_deref(), exits[1].2),
      (info.pid, Some("SIGKILL"), false)
    );
    assert!(pm.backend().is_none());
    assert!(record::list_records(dir.path(), None).is_empty());
  }
}
