//! The Node-API surface: reads JS arguments into the core's input types (`input`), hands them to the core
//! (which checks them), and core results and errors back as JS values. No process logic lives here. The
//! public API is the hand-written `index.js` on top.

mod error;
mod events;
mod input;
mod js_options;

use bpm::diagnostics;
use bpm::lifecycle::launch::Runtime;
use bpm::lifecycle::{self, Manager};
use bpm::logs;
use bpm::net::{listeners, port, reservation};
use bpm::options::{self, CleanupArgs, FindArgs, Options, StartArgs};
use bpm::state;
use bpm::state::orphans::{self, RecordState};
use error::{checked_blocking_promise, promise, promise_on_own_thread, sync};
use events::{JsEvents, NativeEvent, Stats};
use input::{core_options, nullable, optional, FromJs};
use js_options::OptionsInForce;
use napi::bindgen_prelude::{Function, Object, PromiseRaw};
use napi::{Env, Unknown};
use napi_derive::napi;
use std::collections::HashMap;
use std::sync::Arc;

// ---- ports -------------------------------------------------------------------------------------------

/// True when `port` can be bound on 127.0.0.1, ::1 (where IPv6 exists), 0.0.0.0 and :: — or only on
/// `host` when given. Synchronous: a few binds take microseconds, less than a hop to another thread.
#[napi(ts_args_type = "port: number, host?: string | null")]
pub fn is_port_available(env: &Env, port: Unknown, host: Unknown) -> napi::Result<bool> {
  sync(env, || {
    let port = port_arg(port, "port")?;
    let host = nullable(host, "host")?
      .map(|h| options::host(h, "host"))
      .transpose()?;
    Ok(port::is_port_available(port, host))
  })
}

/// A port argument.
fn port_arg(value: Unknown, at: &str) -> bpm::Result<u16> {
  options::port(f64::from_js(value, at)?, at)
}

/// The first available port from `startPort` (to `endPort`, default `startPort + 100`), skipping
/// `exclude` and reserved ports; the port returned is reserved for 15 s for this process and the
/// user's other processes. Synchronous for the same reason as `isPortAvailable`.
#[napi(ts_args_type = "startPort: number, options?: FindPortOptions | null")]
pub fn find_available_port(env: &Env, start_port: Unknown, options: Unknown) -> napi::Result<u32> {
  sync(env, || {
    let args = FindArgs::new(
      f64::from_js(start_port, "startPort")?,
      core_options::<input::FindPortOptions>(options, "")?,
    )?;
    let reserved = port::find_available_port(&port::Search {
      start_port: args.start_port,
      end_port: args.end_port,
      exclude: args.exclude,
      host: args.host,
      owner: reservation::Owner::ANYONE,
      handout: true,
    })?;
    let port = reserved.port();
    reserved.hold_until(std::time::Instant::now() + port::RESERVATION);
    Ok(port.into())
  })
}

// ---- logs ---------------------------------------------------------------------------------------------

/// One line of a log file.
#[napi(object)]
pub struct LogLine {
  /// ISO time in UTC with milliseconds.
  pub time: String,
  /// `out`, `err`, or `pm` for the manager's own lines.
  #[napi(ts_type = "'out' | 'err' | 'pm'")]
  pub stream: String,
  /// The replica's index (0 for a single process).
  pub replica: u32,
  pub line: String,
}

impl From<logs::LogLine> for LogLine {
  fn from(l: logs::LogLine) -> Self {
    LogLine {
      time: l.time,
      stream: l.stream.as_str().into(),
      replica: l.replica,
      line: l.line,
    }
  }
}

/// The per-user log folder (`logs.dir`'s default without a `stateDir`).
#[napi]
pub fn default_log_dir() -> String {
  logs::default_log_dir().display().to_string()
}

/// The last lines of the log of `name` in `dir` (rotated files included), oldest first. With no name, the
/// names of the logs in `dir` are listed instead (as lines of stream 'pm').
#[napi(
  ts_args_type = "dir: string, name: string, options?: LogsOptions | null",
  ts_return_type = "Promise<LogLine[]>"
)]
pub fn read_logs<'env>(
  env: &'env Env,
  dir: Unknown,
  name: Unknown,
  options: Unknown,
) -> napi::Result<PromiseRaw<'env, Vec<LogLine>>> {
  checked_blocking_promise(
    env,
    || {
      Ok((
        dir_arg(dir)?,
        name_arg(name)?,
        options::LogsArgs::try_from(core_options::<input::LogsOptions>(options, "")?)?,
      ))
    },
    move |(dir, name, args)| {
      // A folder others can write may hold planted lines: refused like a state folder.
      if !state::dir::check_state_dir(&dir)? {
        return Ok(Vec::new());
      }
      Ok(logs::read_tail(&dir, &name, 0, args.lines, args.stream))
    },
    |lines| lines.into_iter().map(LogLine::from).collect(),
  )
}

/// The file `<dir>/<name>.log` (`backend-pm logs --follow` reads what is appended to it).
#[napi(ts_args_type = "dir: string, name: string")]
pub fn log_file_path(env: &Env, dir: Unknown, name: Unknown) -> napi::Result<String> {
  sync(env, || {
    let dir = dir_arg(dir)?;
    Ok(
      logs::file_of(&dir, &name_arg(name)?, 0)
        .display()
        .to_string(),
    )
  })
}

/// A state or log folder argument; absent, the per-user state folder.
fn dir_arg(value: Unknown) -> bpm::Result<std::path::PathBuf> {
  options::state_dir(optional(value, "stateDir")?)
}

/// A backend name argument.
fn name_arg(value: Unknown) -> bpm::Result<String> {
  options::name(String::from_js(value, "name")?)
}

/// A file argument: a non-empty path.
fn file_arg(value: Unknown) -> bpm::Result<std::path::PathBuf> {
  options::non_empty_path(String::from_js(value, "file")?, "file")
}

/// Where a diagnostics archive was written, and its size.
#[napi(object)]
pub struct DiagnosticsFile {
  /// The archive written (absolute).
  pub path: String,
  pub bytes: f64,
}

impl From<(std::path::PathBuf, u64)> for DiagnosticsFile {
  fn from((path, bytes): (std::path::PathBuf, u64)) -> Self {
    DiagnosticsFile {
      path: path.display().to_string(),
      bytes: bytes as f64,
    }
  }
}

/// Entries in name order, so archives of the same things list the same way.
fn sorted(entries: HashMap<String, String>) -> Vec<(String, String)> {
  let mut entries: Vec<(String, String)> = entries.into_iter().collect();
  entries.sort();
  entries
}

/// `backend-pm diagnostics OUT.zip`: `entries` (status, versions), the records of `stateDir` and the last
/// lines of every log of `logDir` (already redacted when written).
#[napi(
  ts_args_type = "file: string, folders: DiagnosticsFolders, entries: Record<string, string>",
  ts_return_type = "Promise<DiagnosticsFile>"
)]
pub fn export_diagnostics<'env>(
  env: &'env Env,
  file: Unknown,
  folders: Unknown,
  entries: HashMap<String, String>,
) -> napi::Result<PromiseRaw<'env, DiagnosticsFile>> {
  checked_blocking_promise(
    env,
    || {
      let folders = options::folders(core_options::<input::DiagnosticsFolders>(folders, "")?)?;
      Ok((file_arg(file)?, folders))
    },
    move |(file, (state_dir, log_dir))| {
      diagnostics::export(
        &file,
        sorted(entries),
        diagnostics::Sources {
          state_dir: state_dir.as_deref(),
          log_dir: log_dir.as_deref(),
        },
        &logs::Redactor::default(),
      )
    },
    DiagnosticsFile::from,
  )
}

/// The names of the logs in `dir`.
#[napi(ts_args_type = "dir: string", ts_return_type = "Promise<string[]>")]
pub fn log_names<'env>(
  env: &'env Env,
  dir: Unknown,
) -> napi::Result<PromiseRaw<'env, Vec<String>>> {
  checked_blocking_promise(
    env,
    || dir_arg(dir),
    move |dir| Ok(logs::names_in(&dir)),
    |names| names,
  )
}

// ---- groups -------------------------------------------------------------------------------------------

/// One member of a group, in start order, with the indices of the members it depends on.
#[napi(object)]
pub struct GroupMember {
  pub index: u32,
  pub depends_on: Vec<u32>,
}

/// Checks a group's members (unique names, known dependencies, no cycle) and orders them so that every
/// dependency comes first.
#[napi(ts_args_type = "entries: Array<GroupEntry | unknown>")]
pub fn group_order(env: &Env, entries: Vec<Unknown>) -> napi::Result<Vec<GroupMember>> {
  sync(env, || {
    let members = entries
      .into_iter()
      .map(|entry| input::options_object::<input::GroupEntry>(entry, ""))
      .collect::<bpm::Result<_>>()?;
    let ordered = options::group::order(members)?;
    Ok(
      ordered
        .into_iter()
        .map(|(index, deps)| GroupMember {
          index: index as u32,
          depends_on: deps.into_iter().map(|d| d as u32).collect(),
        })
        .collect(),
    )
  })
}

/// Gives a port reserved by `findAvailablePort` back before its reservation ends.
#[napi]
pub fn release_port(port: u32) {
  if let Ok(port) = u16::try_from(port) {
    reservation::release(port);
  }
}

#[napi(object)]
pub struct PortHolder {
  pub port: u32,
  /// The process listening on the port, or null when the OS does not tell (another user's process).
  pub pid: Option<u32>,
  pub name: Option<String>,
}

/// The processes listening on the given ports (only busy ports are listed).
#[napi(
  ts_args_type = "ports: number[]",
  ts_return_type = "Promise<PortHolder[]>"
)]
pub fn port_holders<'env>(
  env: &'env Env,
  ports: Unknown,
) -> napi::Result<PromiseRaw<'env, Vec<PortHolder>>> {
  checked_blocking_promise(
    env,
    || options::ports(Vec::from_js(ports, "ports")?, "ports"),
    move |ports| Ok(listeners::port_holders(&ports, &[])),
    |holders| {
      holders
        .into_iter()
        .map(|h| PortHolder {
          port: h.port.into(),
          pid: h.pid,
          name: h.name,
        })
        .collect()
    },
  )
}

// ---- processes -----------------------------------------------------------------------------------------

/// What one process uses.
#[napi(object)]
pub struct ProcessUsage {
  pub pid: u32,
  /// User plus system CPU time so far.
  pub cpu_time_ms: f64,
  /// Average CPU use since the process started, in percent of one core.
  pub cpu_percent: f64,
  /// Resident memory.
  pub memory_bytes: f64,
  /// Since the process started.
  pub elapsed_ms: f64,
}

/// CPU and memory of each live process of `pids` (gone ones are left out). Synchronous: one small read per
/// process.
#[napi(ts_args_type = "pids: number[]")]
pub fn process_usage(env: &Env, pids: Unknown) -> napi::Result<Vec<ProcessUsage>> {
  sync(env, || {
    let pids = options::pids(Vec::from_js(pids, "pids")?)?;
    Ok(
      bpm::os::tree::per_process(&pids)
        .into_iter()
        .map(|u| {
          let cpu_ms = u.cpu_time.as_secs_f64() * 1000.0;
          let elapsed_ms = u.elapsed.as_secs_f64() * 1000.0;
          ProcessUsage {
            pid: u.pid,
            cpu_time_ms: cpu_ms,
            cpu_percent: if elapsed_ms > 0.0 {
              cpu_ms / elapsed_ms * 100.0
            } else {
              0.0
            },
            memory_bytes: u.memory_bytes as f64,
            elapsed_ms,
          }
        })
        .collect(),
    )
  })
}

// ---- records -----------------------------------------------------------------------------------------

/// The per-user folder where PID records are kept by default.
#[napi]
pub fn default_state_dir() -> String {
  state::dir::default_state_dir()
    .to_string_lossy()
    .into_owned()
}

/// One file of the state folder and what is known of its backend now.
#[napi(object, use_nullable = true)]
pub struct RecordStatus {
  pub file: String,
  /// `running`: alive, its app too; `orphaned`: alive (or its group is), its app gone; `stale`: the process
  /// is gone or is another program now; `invalid`: a record of ours that cannot be read; `foreign`: not a
  /// record of this library, or not safe to act on (see `problem`).
  #[napi(ts_type = "'running' | 'orphaned' | 'stale' | 'invalid' | 'foreign'")]
  pub state: String,
  pub name: Option<String>,
  pub pid: Option<u32>,
  pub port: Option<u32>,
  pub host: Option<String>,
  pub started_at: Option<f64>,
  pub owner_pid: Option<u32>,
  pub restarts: Option<u32>,
  /// As its app's watchdog last found it; null without a watchdog verdict.
  pub healthy: Option<bool>,
  pub health_path: Option<String>,
  /// A replica's: the public port of its backend.
  pub replica_of: Option<u32>,
  pub alive: bool,
  pub orphaned: bool,
  pub uptime_ms: Option<f64>,
  /// Average CPU use of the backend's whole process tree over its life, in percent of one core.
  pub cpu_percent: Option<f64>,
  /// CPU time the tree has used so far (for a sampled rate: the difference of two readings).
  pub cpu_time_ms: Option<f64>,
  /// Resident memory of the whole tree.
  pub memory_bytes: Option<f64>,
  /// Processes in the tree.
  pub process_count: Option<u32>,
  pub process_name: Option<String>,
  /// The process listening on the record's port, where the OS tells.
  pub listener_pid: Option<u32>,
  pub listener_name: Option<String>,
  /// Why an `invalid` or `foreign` file cannot be used.
  pub problem: Option<String>,
}

fn record_status(s: orphans::RecordStatus) -> RecordStatus {
  let r = s.record.as_ref();
  let u = s.usage.as_ref();
  let alive = matches!(
    s.state,
    RecordState::Running | RecordState::Orphaned | RecordState::OrphanedGroup
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
    restarts: r.map(|r| r.restarts),
    healthy: r.and_then(|r| r.healthy),
    health_path: r.and_then(|r| r.health_path.clone()),
    replica_of: r.and_then(|r| r.replica_of.map(u32::from)),
    alive,
    orphaned: matches!(s.state, RecordState::Orphaned | RecordState::OrphanedGroup),
    uptime_ms: u.map(|u| u.uptime_ms as f64),
    cpu_percent: u.map(|u| u.cpu_percent),
    cpu_time_ms: u.map(|u| u.cpu_time_ms as f64),
    memory_bytes: u.map(|u| u.memory_bytes as f64),
    process_count: u.map(|u| u.process_count),
    process_name: u.map(|u| u.name.clone()),
    listener_pid: s.listener.as_ref().and_then(|l| l.pid),
    listener_name: s.listener.as_ref().and_then(|l| l.name.clone()),
    problem: s.problem,
  }
}

/// Every record-like file of `stateDir` (default: the per-user folder) with its state, the CPU and memory
/// of its backend's tree, and the listener of its port.
#[napi(
  ts_args_type = "stateDir?: string | null",
  ts_return_type = "Promise<RecordStatus[]>"
)]
pub fn record_statuses<'env>(
  env: &'env Env,
  state_dir: Unknown,
) -> napi::Result<PromiseRaw<'env, Vec<RecordStatus>>> {
  checked_blocking_promise(
    env,
    || dir_arg(state_dir),
    move |dir| orphans::statuses(&dir),
    |statuses| statuses.into_iter().map(record_status).collect(),
  )
}

/// What a cleanup did with one file of the state folder.
#[napi(object, use_nullable = true)]
pub struct CleanupItem {
  pub file: String,
  #[napi(
    ts_type = "'terminated' | 'stale-removed' | 'invalid-removed' | 'failed' | 'not-deleted' | 'untrusted' | 'foreign' | 'busy' | 'protected'"
  )]
  pub action: String,
  pub name: Option<String>,
  pub pid: Option<u32>,
  pub port: Option<u32>,
  pub detail: String,
}

/// Terminates orphaned backends (of `name`, or all) that still match their records, and deletes stale
/// and broken records of this library. Backends whose app is alive, and files that are not ours, are never
/// touched.
#[napi(
  ts_args_type = "stateDir?: string | null, options?: CleanupOptions | null",
  ts_return_type = "Promise<CleanupItem[]>"
)]
pub fn cleanup_records<'env>(
  env: &'env Env,
  state_dir: Unknown,
  options: Unknown,
) -> napi::Result<PromiseRaw<'env, Vec<CleanupItem>>> {
  checked_blocking_promise(
    env,
    || {
      CleanupArgs::new(
        optional(state_dir, "stateDir")?,
        core_options::<input::CleanupOptions>(options, "")?,
      )
    },
    move |args| orphans::cleanup(&args.state_dir, args.name.as_deref(), args.stop_timeout),
    |items| items.into_iter().map(cleanup_item).collect(),
  )
}

/// Stops the backend of one record file, whatever its app's state (the monitor's and the dashboard's
/// stop): its live process must still match the record; this process and its parents are never signalled.
#[napi(
  ts_args_type = "file: string, options?: StopRecordOptions | null",
  ts_return_type = "Promise<CleanupItem>"
)]
pub fn stop_record<'env>(
  env: &'env Env,
  file: Unknown,
  options: Unknown,
) -> napi::Result<PromiseRaw<'env, CleanupItem>> {
  checked_blocking_promise(
    env,
    || {
      let given = core_options::<input::StopRecordOptions>(options, "")?;
      Ok((
        file_arg(file)?,
        options::stop_timeout(given.stop_timeout_ms)?,
      ))
    },
    move |(file, grace)| orphans::stop_record(&file, grace),
    cleanup_item,
  )
}

fn cleanup_item(i: orphans::CleanupItem) -> CleanupItem {
  CleanupItem {
    file: i.file.to_string_lossy().into_owned(),
    action: i.action.as_str().into(),
    name: i.name,
    pid: i.pid,
    port: i.port.map(u32::from),
    detail: i.detail,
  }
}

// ---- the manager -------------------------------------------------------------------------------------

/// What the JS layer knows of its runtime.
#[napi(object, object_to_js = false)]
pub struct RuntimeInfo {
  /// `process.execPath`.
  pub node_path: String,
  /// Running inside Electron.
  pub electron: bool,
  /// `process.env`.
  pub env: HashMap<String, String>,
}

/// One health probe's result (the dashboard's).
#[napi(object)]
pub struct HealthProbe {
  /// The answer's HTTP status; null when there was none.
  pub status: Option<u32>,
  /// Until the status line, when there was one.
  pub latency_ms: Option<f64>,
  /// Why there is no status.
  pub error: Option<String>,
}

/// The outcome of `start`: the backend, and whether this call started it.
#[napi(object)]
pub struct Started {
  pub info: BackendInfo,
  /// This call started it (others joined a start in progress, or found it running).
  pub fresh: bool,
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
  /// This start's secret (`token: true`): hand it to the window so it can call the backend.
  pub token: Option<String>,
  /// With `replicas > 1`: each running replica.
  pub replicas: Option<Vec<ReplicaInfo>>,
  /// On a `ready` event about one replica: its index.
  pub replica: Option<u32>,
}

/// One running replica.
#[napi(object, use_nullable = true)]
pub struct ReplicaInfo {
  pub pid: u32,
  /// Its own port behind the balancer; null when the replicas share the manager's socket (`listen: 'fd'`).
  pub port: Option<u32>,
  pub healthy: bool,
}

impl From<lifecycle::BackendInfo> for BackendInfo {
  fn from(b: lifecycle::BackendInfo) -> Self {
    BackendInfo {
      pid: b.pid,
      port: b.port.into(),
      host: b.host,
      url: b.url,
      started_at: b.started_at as f64,
      token: b.token,
      replicas: b.replicas.map(|replicas| {
        replicas
          .into_iter()
          .map(|r| ReplicaInfo {
            pid: r.pid,
            port: r.port.map(u32::from),
            healthy: r.healthy,
          })
          .collect()
      }),
      replica: None,
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
  /// Processes of the backend still alive after the force kill (normally none); their record is kept.
  pub survivors: Vec<u32>,
  /// With `replicas > 1`: the stop of each replica (the fields above sum them up); empty otherwise.
  pub replicas: Vec<StopResult>,
}

impl From<lifecycle::StopResult> for StopResult {
  fn from(r: lifecycle::StopResult) -> Self {
    StopResult {
      pid: r.pid,
      exit_code: r.exit.exit_code,
      signal: r.exit.signal,
      forced: r.forced,
      duration_ms: (r.duration.as_secs_f64() * 10_000.0).round() / 10.0,
      survivors: r.survivors,
      replicas: r.replicas.into_iter().map(StopResult::from).collect(),
    }
  }
}

/// The native half of `ProcessManager`: one named backend's lifecycle.
#[napi]
pub struct NativeManager {
  inner: Arc<Manager>,
  events: Arc<JsEvents>,
  /// A synchronous stop begun and not yet waited for (`stopAllSync` begins every manager's first).
  sync_stop: std::sync::Mutex<Option<SyncStop>>,
}

/// A stop the JS thread will block on.
struct SyncStop {
  result: std::sync::mpsc::Receiver<Option<lifecycle::StopResult>>,
  /// The force kill of whatever is still ending.
  force_at: std::time::Instant,
  began: std::time::Instant,
  /// The backend's pid when the stop began (none while it was down or starting).
  pid: Option<u32>,
}

/// After the force kill, how long a synchronous stop waits to see the processes gone (docs/api.md).
const SYNC_STOP_SEE_GONE: std::time::Duration = std::time::Duration::from_millis(250);

#[napi]
impl NativeManager {
  /// Checks the options (every rule of the API lives in the core) and makes the manager.
  #[napi(
    constructor,
    ts_args_type = "options: ProcessManagerOptions | undefined | null, onEvent: (event: NativeEvent) => void"
  )]
  pub fn new(
    env: &Env,
    options: Unknown,
    on_event: Function<NativeEvent, ()>,
  ) -> napi::Result<Self> {
    let options = sync(env, || {
      Options::try_from(core_options::<input::ProcessManagerOptions>(options, "")?)
    })?;
    let events = Arc::new(JsEvents::new(on_event)?);
    Ok(NativeManager {
      inner: Manager::new(options, events.clone()),
      events,
      sync_stop: std::sync::Mutex::new(None),
    })
  }

  /// Whether the app listens to `stdout` and `stderr` events: lines are sent to JS only while it does.
  #[napi]
  pub fn listen_to_output(&self, stdout: bool, stderr: bool) {
    self.events.listen(stdout, stderr);
  }

  /// The options in force, defaults applied.
  #[napi(getter)]
  pub fn options(&self) -> OptionsInForce {
    OptionsInForce::from(&self.inner.options)
  }

  /// The running backend, or null (also while it is down between an exit and a restart).
  #[napi(getter)]
  pub fn backend(&self) -> Option<BackendInfo> {
    self.inner.backend().map(Into::into)
  }

  /// A start, a running or restarting backend, or a stop is under way (the JS layer keeps Node alive).
  #[napi(getter)]
  pub fn active(&self) -> bool {
    self.inner.is_active()
  }

  /// CPU (since the previous sample), memory and process count of the running backend's tree, with its
  /// uptime, restarts and health; null when it is not running.
  #[napi]
  pub fn stats(&self) -> Option<Stats> {
    self.inner.stats().map(Stats::from)
  }

  #[napi(
    ts_args_type = "projectRoot: string, isPackaged: boolean | undefined, runtime: RuntimeInfo",
    ts_return_type = "Promise<Started>"
  )]
  pub fn start<'env>(
    &self,
    env: &'env Env,
    project_root: Unknown,
    is_packaged: Unknown,
    runtime: RuntimeInfo,
  ) -> napi::Result<PromiseRaw<'env, Started>> {
    let args = sync(env, || {
      StartArgs::new(
        String::from_js(project_root, "projectRoot")?,
        nullable(is_packaged, "isPackaged")?,
      )
    })?;
    let runtime = Runtime {
      node_path: runtime.node_path,
      electron: runtime.electron,
      env: runtime.env.into_iter().collect(),
    };
    promise(env, self.inner.start(args, runtime), |(info, fresh)| {
      Started {
        info: info.into(),
        fresh,
      }
    })
  }

  #[napi(ts_return_type = "Promise<StopResult | null>")]
  pub fn stop<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, Option<StopResult>>> {
    let stopping = self.inner.stop();
    promise(env, async move { Ok(stopping.await) }, |r| {
      r.map(StopResult::from)
    })
  }

  /// Begins a stop that `finishStopSync` will block on: the polite stop, the force kill after
  /// `timeoutMs` (default 1000). Several managers' stops are begun first, then all waited for together.
  #[napi(ts_args_type = "options?: SyncStopOptions | null")]
  pub fn begin_stop_sync(&self, env: &Env, options: Unknown) -> napi::Result<()> {
    let grace = sync(env, || {
      options::sync_stop_timeout(core_options::<input::SyncStopOptions>(options, "")?)
    })?;
    // Read before the stop is asked for: the owner may take the stop at once, and a stopping backend is
    // no longer published as the running one.
    let pid = self.inner.backend().map(|b| b.pid);
    let began = std::time::Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let stopping = self.inner.stop_within(grace);
    napi::bindgen_prelude::spawn(async move {
      let _ = tx.send(stopping.await);
    });
    *self.sync_stop.lock().unwrap_or_else(|e| e.into_inner()) = Some(SyncStop {
      result: rx,
      force_at: began + grace,
      began,
      pid,
    });
    Ok(())
  }

  /// Blocks the calling (JS) thread until the stop begun by `beginStopSync` is done: at most its
  /// `timeoutMs`, then the force kill of the whole tree, then 250 ms to see it gone. Null when nothing ran;
  /// a stop still not done by then is reported forced, with the backend's pid among the survivors.
  #[napi]
  pub fn finish_stop_sync(&self) -> Option<StopResult> {
    use std::sync::mpsc::RecvTimeoutError;
    let pending = self
      .sync_stop
      .lock()
      .unwrap_or_else(|e| e.into_inner())
      .take()?;
    let wait = |until: std::time::Instant| {
      pending
        .result
        .recv_timeout(until.saturating_duration_since(std::time::Instant::now()))
    };
    let result = match wait(pending.force_at) {
      Err(RecvTimeoutError::Timeout) => {
        // An end begun earlier with a longer grace: it is forced now.
        self.inner.force_now();
        wait(std::time::Instant::now() + SYNC_STOP_SEE_GONE)
      }
      other => other,
    };
    // The stop's last lines reach the log before the process may exit.
    if let Some(log) = self.inner.log_file() {
      log.flush();
    }
    match result {
      Ok(stopped) => stopped.map(StopResult::from),
      Err(_) => Some(StopResult {
        pid: pending.pid.unwrap_or_default(),
        exit_code: None,
        signal: None,
        forced: true,
        duration_ms: pending.began.elapsed().as_secs_f64() * 1000.0,
        survivors: pending.pid.into_iter().collect(),
        replicas: Vec::new(),
      }),
    }
  }

  /// The last lines of this backend's log (`logs` option), oldest first; empty when it keeps no log.
  #[napi(
    ts_args_type = "options?: LogsOptions | null",
    ts_return_type = "Promise<LogLine[]>"
  )]
  pub fn logs<'env>(
    &self,
    env: &'env Env,
    options: Unknown,
  ) -> napi::Result<PromiseRaw<'env, Vec<LogLine>>> {
    let file = self.inner.log_file().cloned();
    checked_blocking_promise(
      env,
      || options::LogsArgs::try_from(core_options::<input::LogsOptions>(options, "")?),
      move |args| {
        Ok(file.map_or_else(Vec::new, |file| {
          file.flush();
          file.tail(args.lines, args.stream)
        }))
      },
      |lines| lines.into_iter().map(LogLine::from).collect(),
    )
  }

  /// Writes a diagnostics archive: `entries` (status, options, events, versions, made by the JS layer),
  /// this manager's PID records and the last lines of every log of its log folder, every file cleaned of
  /// the secrets the manager knows.
  #[napi(
    ts_args_type = "file: string, entries: Record<string, string>",
    ts_return_type = "Promise<DiagnosticsFile>"
  )]
  pub fn export_diagnostics<'env>(
    &self,
    env: &'env Env,
    file: Unknown,
    entries: HashMap<String, String>,
  ) -> napi::Result<PromiseRaw<'env, DiagnosticsFile>> {
    let manager = self.inner.clone();
    checked_blocking_promise(
      env,
      || file_arg(file),
      move |file| {
        if let Some(log) = manager.log_file() {
          log.flush();
        }
        let o = &manager.options;
        diagnostics::export(
          &file,
          sorted(entries),
          diagnostics::Sources {
            state_dir: Some(&o.state_dir),
            log_dir: o.logs.as_ref().map(|l| l.dir.as_path()),
          },
          &manager.known_secrets(),
        )
      },
      DiagnosticsFile::from,
    )
  }

  /// Replaces every process of the running backend, one at a time; resolves with the backend (null when
  /// nothing runs).
  #[napi(ts_return_type = "Promise<BackendInfo | null>")]
  pub fn reload<'env>(
    &self,
    env: &'env Env,
  ) -> napi::Result<PromiseRaw<'env, Option<BackendInfo>>> {
    promise(env, self.inner.reload(), |r| r.map(BackendInfo::from))
  }

  #[napi(ts_return_type = "Promise<boolean>")]
  pub fn kill_existing<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, bool>> {
    let manager = self.inner.clone();
    promise(env, async move { manager.kill_existing().await }, |b| b)
  }

  #[napi(ts_args_type = "port: number", ts_return_type = "Promise<boolean>")]
  pub fn check_health<'env>(
    &self,
    env: &'env Env,
    port: Unknown,
  ) -> napi::Result<PromiseRaw<'env, bool>> {
    self.on_port(
      env,
      port,
      |m, port| async move { m.check_health(port).await },
      |b| b,
    )
  }

  /// One health probe of `port` for the dashboard (at most 1 s): its status, or why there is none. The
  /// token is sent only to the running backend's own listener.
  #[napi(ts_args_type = "port: number", ts_return_type = "Promise<HealthProbe>")]
  pub fn probe_health<'env>(
    &self,
    env: &'env Env,
    port: Unknown,
  ) -> napi::Result<PromiseRaw<'env, HealthProbe>> {
    self.on_port(
      env,
      port,
      |m, port| async move { m.probe_health(port).await },
      |(outcome, took)| {
        use bpm::net::health::ProbeOutcome;
        let (status, error) = match outcome {
          ProbeOutcome::Healthy(s) | ProbeOutcome::Unhealthy(s) => (Some(u32::from(s)), None),
          ProbeOutcome::Refused => (None, Some("refused".to_string())),
          ProbeOutcome::TimedOut => (None, Some("timeout".to_string())),
          other => (None, Some(other.describe())),
        };
        HealthProbe {
          latency_ms: status.map(|_| took.as_secs_f64() * 1000.0),
          status,
          error,
        }
      },
    )
  }

  #[napi(
    ts_args_type = "port: number, maxRetries?: number, retryDelayMs?: number",
    ts_return_type = "Promise<boolean>"
  )]
  pub fn wait_for_ready<'env>(
    &self,
    env: &'env Env,
    port: Unknown,
    max_retries: Unknown,
    retry_delay_ms: Unknown,
  ) -> napi::Result<Object<'env>> {
    let (port, retries, delay) = sync(env, || {
      Ok((
        port_arg(port, "port")?,
        optional(max_retries, "maxRetries")?.map_or(Ok(options::DEFAULT_READY_RETRIES), |r| {
          options::count(r, "maxRetries")
        })?,
        optional(retry_delay_ms, "retryDelayMs")?
          .map_or(Ok(options::DEFAULT_READY_RETRY_DELAY), |d| {
            options::millis(d, "retryDelayMs", 0.0)
          })?,
      ))
    })?;
    let manager = self.inner.clone();
    promise_on_own_thread(
      env,
      move || async move { Ok(manager.wait_for_ready(port, retries, delay).await) },
      |b| b,
    )
  }

  /// `pm.findAvailablePort(startPort = port)`: in `[startPort, startPort + portRange]`, reserved for 15 s
  /// (a reservation that never blocks this manager's own start).
  #[napi(ts_args_type = "startPort?: number")]
  pub fn find_available_port(&self, env: &Env, start_port: Unknown) -> napi::Result<u32> {
    sync(env, || {
      let start = optional(start_port, "startPort")?
        .map(|s| options::port(s, "startPort"))
        .transpose()?;
      self.inner.find_available_port(start).map(u32::from)
    })
  }
}

impl NativeManager {
  /// A promise of `work` with this manager and a port argument (checked first: a bad one throws).
  fn on_port<'env, T, V, F>(
    &self,
    env: &'env Env,
    port: Unknown,
    work: impl FnOnce(Arc<Manager>, u16) -> F,
    convert: impl FnOnce(T) -> V + 'static,
  ) -> napi::Result<PromiseRaw<'env, V>>
  where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
    V: napi::bindgen_prelude::ToNapiValue + 'static,
  {
    let port = sync(env, || port_arg(port, "port"))?;
    let running = work(self.inner.clone(), port);
    promise(env, async move { Ok(running.await) }, convert)
  }
}
