//! The arguments of the functions other than the constructor, each options object as JS gives it (an
//! `…Input`, every field optional) and checked here.

use super::*;

/// A state folder argument, or the per-user default.
pub fn state_dir(value: Option<String>) -> Result<PathBuf> {
  match value {
    None => Ok(crate::state::dir::default_state_dir()),
    Some(v) => non_empty(v, "stateDir").map(PathBuf::from),
  }
}

/// The arguments of `startBackend(projectRoot, isPackaged)` plus what the JS layer knows of its runtime.
#[derive(Debug, Clone)]
pub struct StartArgs {
  pub project_root: PathBuf,
  pub is_packaged: bool,
}

impl StartArgs {
  /// `isPackaged` absent (or null) is false.
  pub fn new(project_root: String, is_packaged: Option<bool>) -> Result<StartArgs> {
    Ok(StartArgs {
      project_root: PathBuf::from(non_empty(project_root, "projectRoot")?),
      is_packaged: is_packaged.unwrap_or(false),
    })
  }
}

/// `findAvailablePort(startPort, { endPort, exclude, host })`.
#[derive(Debug, Clone)]
pub struct FindArgs {
  pub start_port: u16,
  pub end_port: u16,
  pub exclude: Vec<u16>,
  pub host: Option<IpAddr>,
}

/// The options of `findAvailablePort`.
#[derive(Debug, Clone, Default)]
pub struct FindInput {
  pub end_port: Option<f64>,
  pub exclude: Option<Vec<f64>>,
  pub host: Option<String>,
}

impl FindArgs {
  pub fn new(start: f64, given: FindInput) -> Result<FindArgs> {
    let start_port = port(start, "startPort")?;
    let end_port = given
      .end_port
      .map(|v| port(v, "endPort"))
      .transpose()?
      .unwrap_or_else(|| start_port.saturating_add(DEFAULT_PORT_RANGE));
    let exclude = given
      .exclude
      .map_or(Ok(Default::default()), |v| ports(v, "exclude"))?;
    let host = given.host.map(|v| host(v, "host")).transpose()?;
    if end_port < start_port {
      return Err(PmError::invalid(format!(
        "endPort {end_port} is below startPort {start_port}"
      )));
    }
    Ok(FindArgs {
      start_port,
      end_port,
      exclude,
      host,
    })
  }
}

/// `cleanupRecords(stateDir?, { name, stopTimeoutMs })`.
#[derive(Debug, Clone)]
pub struct CleanupArgs {
  pub state_dir: PathBuf,
  pub name: Option<String>,
  pub stop_timeout: Duration,
}

/// The options of `cleanupRecords`.
#[derive(Debug, Clone, Default)]
pub struct CleanupInput {
  pub name: Option<String>,
  pub stop_timeout_ms: Option<f64>,
}

impl CleanupArgs {
  pub fn new(dir: Option<String>, given: CleanupInput) -> Result<CleanupArgs> {
    Ok(CleanupArgs {
      state_dir: state_dir(dir)?,
      name: given.name.map(name).transpose()?,
      stop_timeout: stop_timeout(given.stop_timeout_ms)?,
    })
  }
}

/// `stopTimeoutMs` of the functions that stop a backend of a record, or its default.
pub fn stop_timeout(ms: Option<f64>) -> Result<Duration> {
  ms.map_or(Ok(DEFAULT_STOP_TIMEOUT), |v| {
    millis(v, "stopTimeoutMs", 0.0)
  })
}

/// The options of `stopRecord(file, { stopTimeoutMs })`.
#[derive(Debug, Clone, Default)]
pub struct StopRecordInput {
  pub stop_timeout_ms: Option<f64>,
}

pub fn pids(items: Vec<f64>) -> Result<Vec<u32>> {
  items
    .into_iter()
    .map(|p| integer(p, "every pid", 1.0, u32::MAX as f64).map(|n| n as u32))
    .collect()
}

pub fn ports(items: Vec<f64>, what: &str) -> Result<Vec<u16>> {
  items
    .into_iter()
    .map(|p| port(p, &format!("every {what} entry")))
    .collect()
}

/// The synchronous stop's default bound (`stopSync`, `stopAllSync`).
pub const DEFAULT_SYNC_STOP_TIMEOUT: Duration = Duration::from_millis(1000);

/// The options of `stopSync({ timeoutMs })` and `stopAllSync({ timeoutMs })`.
#[derive(Debug, Clone, Default)]
pub struct SyncStopInput {
  pub timeout_ms: Option<f64>,
}

/// How long the polite stop may take before the force kill. At most a minute: the calling thread is
/// blocked meanwhile.
pub fn sync_stop_timeout(given: SyncStopInput) -> Result<Duration> {
  given.timeout_ms.map_or(Ok(DEFAULT_SYNC_STOP_TIMEOUT), |v| {
    integer(v, "timeoutMs", 0.0, 60_000.0).map(|n| Duration::from_millis(n as u64))
  })
}

/// `pm.logs({ lines, stream })`: how many of the last lines, of which stream.
#[derive(Debug, Clone)]
pub struct LogsArgs {
  pub lines: usize,
  pub stream: Option<crate::logs::LogStream>,
}

/// The options of `pm.logs` and `readLogs`.
#[derive(Debug, Clone, Default)]
pub struct LogsArgsInput {
  pub lines: Option<f64>,
  pub stream: Option<String>,
}

pub const DEFAULT_LOG_LINES: usize = 200;

impl TryFrom<LogsArgsInput> for LogsArgs {
  type Error = PmError;

  fn try_from(given: LogsArgsInput) -> Result<LogsArgs> {
    let lines = given.lines.map_or(Ok(DEFAULT_LOG_LINES), |v| {
      integer(v, "lines", 0.0, 1_000_000.0).map(|n| n as usize)
    })?;
    let stream = match given.stream {
      None => None,
      Some(v) => {
        let text = string(v, "stream")?;
        Some(crate::logs::LogStream::parse(&text).ok_or_else(|| {
          PmError::invalid(format!("stream must be 'out', 'err' or 'pm', got {text:?}"))
        })?)
      }
    };
    Ok(LogsArgs { lines, stream })
  }
}

/// The folders of `exportDiagnostics(file, { stateDir, logDir })`.
#[derive(Debug, Clone, Default)]
pub struct FoldersInput {
  pub state_dir: Option<String>,
  pub log_dir: Option<String>,
}

/// `(stateDir, logDir)`, each only when given.
pub fn folders(given: FoldersInput) -> Result<(Option<PathBuf>, Option<PathBuf>)> {
  Ok((
    given
      .state_dir
      .map(|v| non_empty_path(v, "stateDir"))
      .transpose()?,
    given
      .log_dir
      .map(|v| non_empty_path(v, "logDir"))
      .transpose()?,
  ))
}

/// A path argument: a non-empty string.
pub fn non_empty_path(value: String, what: &str) -> Result<PathBuf> {
  non_empty(value, what).map(PathBuf::from)
}
