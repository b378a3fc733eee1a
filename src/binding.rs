//! The Node-API surface: converts JS values to core types and back, and core errors to JS errors. No
//! process logic lives here. The public API is the hand-written `index.js` on top of these exports.

use crate::error::PmError;
use crate::manager::{self, Config, Events, Launch, Level, Manager};
use crate::orphans::{self, CleanupAction};
use crate::port::{self, FindOptions};
use crate::spawn::{ExitInfo, Stream};
use crate::{health, record, sockets};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use napi_derive::napi;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Every core error reaches JS as an Error whose message is a JSON object with the API.md `code`, the
/// message and the code's extra fields; `index.js` rebuilds the public error from it (one place, like
/// node-rs's `map_error`).
fn to_js(err: PmError) -> napi::Error {
  napi::Error::new(Status::GenericFailure, err.to_js_payload().to_string())
}

fn invalid(message: String) -> napi::Error {
  to_js(PmError::InvalidArg(message))
}

fn port_arg(port: u32, what: &str) -> napi::Result<u16> {
  u16::try_from(port).ok().filter(|p| *p > 0).ok_or_else(|| {
    invalid(format!(
      "{what} must be an integer from 1 to 65535, got {port}"
    ))
  })
}

fn host_arg(host: &str) -> napi::Result<IpAddr> {
  host.trim_start_matches('[').trim_end_matches(']').parse().map_err(|_| {
    invalid(format!(
      "host {host:?} is not an IP address; use a literal address such as 127.0.0.1 or ::1 (not a name like localhost, which may resolve to another family)"
    ))
  })
}

fn ms(value: f64, what: &str) -> napi::Result<Duration> {
  if !value.is_finite() || value < 0.0 {
    return Err(invalid(format!(
      "{what} must be a non-negative number of milliseconds, got {value}"
    )));
  }
  // A property test found that a huge value (1e300) made `from_secs_f64` panic: reject it instead.
  Duration::try_from_secs_f64(value / 1000.0)
    .map_err(|_| invalid(format!("{what} is too large: {value} ms")))
}

// ---- ports -------------------------------------------------------------------------------------------

/// True when `port` can be bound on 127.0.0.1, ::1 (where IPv6 exists), 0.0.0.0 and :: — or only on
/// `host` when given. Synchronous: a few binds take microseconds, less than a hop to another thread
/// (`index.js` still returns a promise).
#[napi]
pub fn is_port_available(port: u32, host: Option<String>) -> napi::Result<bool> {
  let port = port_arg(port, "port")?;
  let host = host.as_deref().map(host_arg).transpose()?;
  Ok(port::is_port_available(port, host))
}

/// The first available port in `[startPort, endPort]`, skipping `exclude` and ports reserved in this
/// process; the port returned is reserved for 15 s. Synchronous for the same reason as `isPortAvailable`:
/// one netlink query and a few binds.
#[napi]
pub fn find_available_port(
  start_port: u32,
  end_port: u32,
  exclude: Option<Vec<u32>>,
  host: Option<String>,
) -> napi::Result<u32> {
  let options = FindOptions {
    start_port: port_arg(start_port, "startPort")?,
    end_port: port_arg(end_port, "endPort")?,
    exclude: exclude
      .unwrap_or_default()
      .into_iter()
      .filter_map(|p| u16::try_from(p).ok())
      .collect(),
    host: host.as_deref().map(host_arg).transpose()?,
  };
  port::find_available_port(&options)
    .map(u32::from)
    .map_err(to_js)
}

/// Gives a port reserved by `findAvailablePort` back before its reservation ends.
#[napi]
pub fn release_port(port: u32) {
  if let Ok(port) = u16::try_from(port) {
    port::release_port(port);
  }
}

#[napi(object)]
pub struct PortHolder {
  pub port: u32,
  /// The process listening on the port, or null when the OS does not tell (another user's process).
  pub pid: Option<u32>,
  pub name: Option<String>,
}

/// The processes listening on the given ports (only busy ports are listed). Linux reads /proc; other
/// systems return an empty list for now.
#[napi]
pub async fn port_holders(ports: Vec<u32>) -> Vec<PortHolder> {
  let ports: Vec<u16> = ports
    .into_iter()
    .filter_map(|p| u16::try_from(p).ok())
    .collect();
  manager::off_thread(move || sockets::port_holders(&ports))
    .await
    .into_iter()
    .map(|h| PortHolder {
      port: h.port.into(),
      pid: h.pid,
      name: h.name,
    })
    .collect()
}

// ---- health ------------------------------------------------------------------------------------------

/// One GET of `http://host:port/path`; true on a 2xx answer within `timeoutMs`. Never uses a proxy.
#[napi]
pub async fn check_health(
  host: String,
  port: u32,
  path: String,
  timeout_ms: f64,
) -> napi::Result<bool> {
  let target = health::Target {
    host: host_arg(&host)?,
    port: port_arg(port, "port")?,
    path,
  };
  Ok(
    health::probe(&target, ms(timeout_ms, "timeoutMs")?)
      .await
      .is_healthy(),
  )
}

// ---- records -----------------------------------------------------------------------------------------

/// The per-user folder where PID records are kept by default.
#[napi]
pub fn default_state_dir() -> String {
  record::default_state_dir().to_string_lossy().into_owned()
}

/// One PID record of the state folder and what is known of its backend now.
#[napi(object, use_nullable = true)]
pub struct RecordStatus {
  pub file: String,
  /// `running`: alive, its app too; `orphaned`: alive, its app gone; `stale`: the process is gone or is
  /// another program now; `invalid`: the file cannot be trusted or parsed (see `problem`).
  #[napi(ts_type = "'running' | 'orphaned' | 'stale' | 'invalid'")]
  pub state: String,
  pub name: Option<String>,
  pub pid: Option<u32>,
  pub port: Option<u32>,
  pub host: Option<String>,
  pub started_at: Option<f64>,
  pub owner_pid: Option<u32>,
  pub alive: bool,
  pub orphaned: bool,
  pub uptime_ms: Option<f64>,
  /// Average CPU use over the backend's life, in percent of one core.
  pub cpu_percent: Option<f64>,
  /// Resident memory.
  pub memory_bytes: Option<f64>,
  pub process_name: Option<String>,
  /// The process listening on the record's port, where the OS tells.
  pub listener_pid: Option<u32>,
  pub listener_name: Option<String>,
  /// Why an `invalid` record cannot be used.
  pub problem: Option<String>,
}

/// Every record of `stateDir` with its state, CPU, memory and the listener of its port.
#[napi]
pub async fn record_statuses(state_dir: String) -> Vec<RecordStatus> {
  manager::off_thread(move || orphans::statuses(&PathBuf::from(state_dir)))
    .await
    .into_iter()
    .map(|s| {
      let r = s.record.as_ref();
      let alive = matches!(
        s.state,
        orphans::RecordState::Running | orphans::RecordState::Orphaned
      );
      RecordStatus {
        file: s.file.to_string_lossy().into_owned(),
        state: s.state.as_str().into(),
        name: r.map(|r| r.name.clone()),
        pid: r.map(|r| r.pid),
        port: r.map(|r| r.port.into()),
        host: r.map(|r| r.host.clone()),
        started_at: r.map(|r| r.started_at as f64),
        owner_pid: r.map(|r| r.owner_pid),
        alive,
        orphaned: s.state == orphans::RecordState::Orphaned,
        uptime_ms: s.usage.as_ref().map(|u| u.uptime_ms as f64),
        cpu_percent: s.usage.as_ref().map(|u| u.cpu_percent),
        memory_bytes: s.usage.as_ref().map(|u| u.memory_bytes as f64),
        process_name: s.usage.as_ref().map(|u| u.name.clone()),
        listener_pid: s.listener.as_ref().and_then(|l| l.pid),
        listener_name: s.listener.as_ref().and_then(|l| l.name.clone()),
        problem: s.problem,
      }
    })
    .collect()
}

/// What a cleanup did with one file of the state folder.
#[napi(object, use_nullable = true)]
pub struct CleanupItem {
  pub file: String,
  #[napi(
    ts_type = "'terminated' | 'stale-removed' | 'invalid-removed' | 'failed' | 'not-deleted'"
  )]
  pub action: String,
  pub name: Option<String>,
  pub pid: Option<u32>,
  pub port: Option<u32>,
  pub detail: String,
}

/// Terminates orphaned backends (of `name`, or all) that still match their records, and deletes stale and
/// unreadable records. Backends whose app is alive are never touched.
#[napi]
pub async fn cleanup_records(
  state_dir: String,
  name: Option<String>,
  stop_timeout_ms: f64,
) -> napi::Result<Vec<CleanupItem>> {
  let grace = ms(stop_timeout_ms, "stopTimeoutMs")?;
  let items = manager::off_thread(move || {
    orphans::cleanup(&PathBuf::from(state_dir), name.as_deref(), grace)
  })
  .await;
  Ok(
    items
      .into_iter()
      .map(|i| CleanupItem {
        file: i.file.to_string_lossy().into_owned(),
        action: match i.action {
          CleanupAction::Terminated => "terminated",
          CleanupAction::StaleRemoved => "stale-removed",
          CleanupAction::InvalidRemoved => "invalid-removed",
          CleanupAction::Failed => "failed",
          CleanupAction::NotDeleted => "not-deleted",
          CleanupAction::Untrusted => "untrusted",
          CleanupAction::Busy => "busy",
        }
        .into(),
        name: i.name,
        pid: i.pid,
        port: i.port.map(u32::from),
        detail: i.detail,
      })
      .collect(),
  )
}

// ---- the manager -------------------------------------------------------------------------------------

/// Options with the defaults of API.md already applied by `index.js`.
#[napi(object, object_to_js = false)]
pub struct ManagerConfig {
  pub name: String,
  pub host: String,
  pub port: u32,
  pub port_range: u32,
  pub port_env: String,
  pub health_path: String,
  pub health_timeout_ms: f64,
  pub start_timeout_ms: f64,
  pub stop_timeout_ms: f64,
  pub state_dir: String,
}

#[napi(object, object_to_js = false)]
pub struct LaunchSpec {
  pub program: String,
  pub args: Vec<String>,
  pub cwd: String,
  pub env: HashMap<String, String>,
  pub entry_file: Option<String>,
}

/// The running backend.
#[napi(object)]
pub struct BackendInfo {
  pub pid: u32,
  pub port: u32,
  pub host: String,
  pub url: String,
  /// Epoch milliseconds.
  pub started_at: f64,
}

impl From<manager::BackendInfo> for BackendInfo {
  fn from(b: manager::BackendInfo) -> Self {
    BackendInfo {
      pid: b.pid,
      port: b.port.into(),
      host: b.host,
      url: b.url,
      started_at: b.started_at as f64,
    }
  }
}

/// How a stop went.
#[napi(object, use_nullable = true)]
pub struct StopResult {
  pub pid: u32,
  pub exit_code: Option<i32>,
  /// The signal that ended the backend, such as `'SIGKILL'`.
  pub signal: Option<String>,
  /// The force kill was needed: the backend did not exit within `stopTimeoutMs`.
  pub forced: bool,
  /// From the stop request until the whole process group was gone.
  pub duration_ms: f64,
}

/// One thing that happened to the managed backend, delivered to the JS layer in order.
#[napi(object, use_nullable = true)]
#[derive(Clone)]
pub struct ManagerEvent {
  #[napi(ts_type = "'stdout' | 'stderr' | 'exit' | 'log'")]
  pub kind: String,
  pub text: Option<String>,
  #[napi(ts_type = "'info' | 'warn' | null")]
  pub level: Option<String>,
  pub pid: Option<u32>,
  pub exit_code: Option<i32>,
  pub signal: Option<String>,
  pub expected: Option<bool>,
}

impl ManagerEvent {
  fn new(kind: &str) -> Self {
    ManagerEvent {
      kind: kind.into(),
      text: None,
      level: None,
      pid: None,
      exit_code: None,
      signal: None,
      expected: None,
    }
  }
}

/// Output lines waiting for the JS thread beyond this many are dropped (and counted), so a backend that
/// floods its output can neither block nor grow the app's memory without bound.
const EVENT_QUEUE: usize = 4096;

/// Weak: a callback held by Rust never keeps Node's event loop alive (DESIGN.md §10).
type EventCallback =
  ThreadsafeFunction<ManagerEvent, (), ManagerEvent, Status, false, true, EVENT_QUEUE>;

struct JsEvents {
  callback: EventCallback,
  dropped_lines: std::sync::atomic::AtomicU64,
}

impl JsEvents {
  fn send(&self, event: ManagerEvent, mode: ThreadsafeFunctionCallMode) -> Status {
    self.callback.call(event, mode)
  }
}

impl Events for JsEvents {
  fn line(&self, stream: Stream, text: String) {
    let mut event = ManagerEvent::new(match stream {
      Stream::Stdout => "stdout",
      Stream::Stderr => "stderr",
    });
    event.text = Some(text);
    if self.send(event, ThreadsafeFunctionCallMode::NonBlocking) == Status::QueueFull {
      self
        .dropped_lines
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
  }

  fn exit(&self, pid: u32, exit: &ExitInfo, expected: bool) {
    let dropped = self
      .dropped_lines
      .swap(0, std::sync::atomic::Ordering::Relaxed);
    if dropped > 0 {
      self.log(
        Level::Warn,
        format!("{dropped} output lines were dropped because the app did not keep up"),
      );
    }
    let mut event = ManagerEvent::new("exit");
    event.pid = Some(pid);
    event.exit_code = exit.exit_code;
    event.signal = exit.signal.clone();
    event.expected = Some(expected);
    self.send(event, ThreadsafeFunctionCallMode::Blocking);
  }

  fn log(&self, level: Level, message: String) {
    let mut event = ManagerEvent::new("log");
    event.level = Some(
      match level {
        Level::Info => "info",
        Level::Warn => "warn",
      }
      .into(),
    );
    event.text = Some(message);
    self.send(event, ThreadsafeFunctionCallMode::Blocking);
  }
}

/// The native half of `ProcessManager`: one named backend's lifecycle.
#[napi]
pub struct NativeManager {
  inner: Arc<Manager>,
}

#[napi]
impl NativeManager {
  #[napi(
    constructor,
    ts_args_type = "config: ManagerConfig, onEvent: (event: ManagerEvent) => void"
  )]
  pub fn new(config: ManagerConfig, on_event: EventCallback) -> napi::Result<Self> {
    let port_range = u16::try_from(config.port_range).map_err(|_| {
      invalid(format!(
        "portRange must be 0-65534, got {}",
        config.port_range
      ))
    })?;
    let core = Config {
      port: port_arg(config.port, "port")?,
      host: host_arg(&config.host)?,
      port_range,
      port_env: config.port_env,
      health_path: config.health_path,
      health_timeout: ms(config.health_timeout_ms, "healthTimeoutMs")?,
      start_timeout: ms(config.start_timeout_ms, "startTimeoutMs")?,
      stop_timeout: ms(config.stop_timeout_ms, "stopTimeoutMs")?,
      state_dir: PathBuf::from(config.state_dir),
      name: config.name,
    };
    let events = Arc::new(JsEvents {
      callback: on_event,
      dropped_lines: Default::default(),
    });
    let inner = Manager::new(core, events).map_err(to_js)?;
    Ok(NativeManager {
      inner: Arc::new(inner),
    })
  }

  /// The running backend, or null.
  #[napi(getter)]
  pub fn backend(&self) -> Option<BackendInfo> {
    self.inner.backend().map(Into::into)
  }

  #[napi]
  pub async fn start(&self, launch: LaunchSpec) -> napi::Result<BackendInfo> {
    let launch = Launch {
      program: launch.program,
      args: launch.args,
      cwd: PathBuf::from(launch.cwd),
      env: launch.env.into_iter().collect(),
      entry_file: launch.entry_file.map(PathBuf::from),
    };
    self
      .inner
      .start(launch)
      .await
      .map(Into::into)
      .map_err(to_js)
  }

  #[napi]
  pub async fn stop(&self) -> Option<StopResult> {
    self.inner.stop().await.map(|r| StopResult {
      pid: r.pid,
      exit_code: r.exit.exit_code,
      signal: r.exit.signal,
      forced: r.forced,
      duration_ms: (r.duration.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
    })
  }

  #[napi]
  pub async fn kill_existing(&self) -> napi::Result<bool> {
    self.inner.kill_existing().await.map_err(to_js)
  }

  #[napi]
  pub async fn check_health(&self, port: u32) -> napi::Result<bool> {
    Ok(self.inner.check_health(port_arg(port, "port")?).await)
  }

  #[napi]
  pub async fn wait_for_ready(
    &self,
    port: u32,
    max_retries: u32,
    retry_delay_ms: f64,
  ) -> napi::Result<bool> {
    let port = port_arg(port, "port")?;
    let delay = ms(retry_delay_ms, "retryDelayMs")?;
    Ok(self.inner.wait_for_ready(port, max_retries, delay).await)
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use proptest::prelude::*;

  proptest! {
    #[test]
    fn ports_are_accepted_exactly_in_range(port in any::<u32>()) {
      prop_assert_eq!(port_arg(port, "port").is_ok(), (1..=65535).contains(&port));
    }

    #[test]
    fn durations_are_accepted_only_when_finite_and_not_negative(value in any::<f64>()) {
      let representable = Duration::try_from_secs_f64(value / 1000.0).is_ok();
      prop_assert_eq!(ms(value, "t").is_ok(), value.is_finite() && value >= 0.0 && representable);
    }

    #[test]
    fn hosts_are_ip_literals_or_rejected(host in ".{0,40}") {
      let parsed = host_arg(&host);
      let bare = host.trim_start_matches('[').trim_end_matches(']');
      prop_assert_eq!(parsed.is_ok(), bare.parse::<IpAddr>().is_ok());
    }
  }

  #[test]
  fn a_rejected_value_carries_the_invalid_arg_code() {
    let err = port_arg(0, "port").unwrap_err();
    let payload: serde_json::Value = serde_json::from_str(&err.reason).unwrap();
    assert_eq!(payload["code"], "ERR_INVALID_ARG");
  }
}
