//! The arguments of the functions other than the constructor.

use super::*;

/// A state folder argument, or the per-user default.
pub fn state_dir(value: Option<&Value>) -> Result<PathBuf> {
  match value {
    None | Some(Value::Undefined) => Ok(crate::state::dir::default_state_dir()),
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
  pub fn parse(project_root: &Value, is_packaged: &Value) -> Result<StartArgs> {
    Ok(StartArgs {
      project_root: PathBuf::from(non_empty(project_root, "projectRoot")?),
      is_packaged: match is_packaged {
        Value::Undefined | Value::Null => false,
        v => boolean(v, "isPackaged")?,
      },
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

impl FindArgs {
  pub fn parse(start: &Value, options: &Value) -> Result<FindArgs> {
    let start_port = port(start, "startPort")?;
    let mut f = Fields::of(options, "the findAvailablePort options")?;
    let end_port = f
      .take("endPort")
      .map(|v| port(v, "endPort"))
      .transpose()?
      .unwrap_or_else(|| start_port.saturating_add(DEFAULT_PORT_RANGE));
    let exclude = match f.take("exclude") {
      None => Vec::new(),
      Some(Value::Array(items)) => items
        .iter()
        .map(|p| port(p, "every exclude entry"))
        .collect::<Result<_>>()?,
      Some(other) => return Err(bad("exclude", "an array of ports", other)),
    };
    let host = f.take("host").map(|v| host(v, "host")).transpose()?;
    f.finish()?;
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

impl CleanupArgs {
  pub fn parse(dir: &Value, options: &Value) -> Result<CleanupArgs> {
    let state_dir = state_dir(Some(dir))?;
    let mut f = Fields::of(options, "the cleanupRecords options")?;
    let name = f.take("name").map(name).transpose()?;
    let stop_timeout = f
      .take("stopTimeoutMs")
      .map(|v| millis(v, "stopTimeoutMs", 0.0))
      .transpose()?
      .unwrap_or(DEFAULT_STOP_TIMEOUT);
    f.finish()?;
    Ok(CleanupArgs {
      state_dir,
      name,
      stop_timeout,
    })
  }
}

pub fn pids(value: &Value) -> Result<Vec<u32>> {
  match value {
    Value::Array(items) => items
      .iter()
      .map(|p| integer(p, "every pid", 1.0, u32::MAX as f64).map(|n| n as u32))
      .collect(),
    other => Err(bad("pids", "an array of process ids", other)),
  }
}

pub fn ports(value: &Value, what: &str) -> Result<Vec<u16>> {
  match value {
    Value::Array(items) => items
      .iter()
      .map(|p| port(p, &format!("every {what} entry")))
      .collect(),
    other => Err(bad(what, "an array of ports", other)),
  }
}

/// The synchronous stop's default bound (`stopSync`, `stopAllSync`).
pub const DEFAULT_SYNC_STOP_TIMEOUT: Duration = Duration::from_millis(1000);

/// `stopSync({ timeoutMs })` and `stopAllSync({ timeoutMs })`: how long the polite stop may take before the
/// force kill. At most a minute: the calling thread is blocked meanwhile.
pub fn sync_stop_timeout(options: &Value, what: &str) -> Result<Duration> {
  let mut f = Fields::of(options, what)?;
  let timeout = f
    .take("timeoutMs")
    .map(|v| integer(v, "timeoutMs", 0.0, 60_000.0).map(|n| Duration::from_millis(n as u64)))
    .transpose()?
    .unwrap_or(DEFAULT_SYNC_STOP_TIMEOUT);
  f.finish()?;
  Ok(timeout)
}

/// `pm.logs({ lines, stream })`: how many of the last lines, of which stream.
#[derive(Debug, Clone)]
pub struct LogsArgs {
  pub lines: usize,
  pub stream: Option<crate::logs::LogStream>,
}

pub const DEFAULT_LOG_LINES: usize = 200;

impl LogsArgs {
  pub fn parse(options: &Value) -> Result<LogsArgs> {
    let mut f = Fields::of(options, "the logs options")?;
    let lines = f
      .take("lines")
      .map(|v| integer(v, "lines", 0.0, 1_000_000.0).map(|n| n as usize))
      .transpose()?
      .unwrap_or(DEFAULT_LOG_LINES);
    let stream = match f.take("stream") {
      None => None,
      Some(v) => {
        let text = string(v, "stream")?;
        Some(crate::logs::LogStream::parse(&text).ok_or_else(|| {
          PmError::invalid(format!("stream must be 'out', 'err' or 'pm', got {text:?}"))
        })?)
      }
    };
    f.finish()?;
    Ok(LogsArgs { lines, stream })
  }
}

/// A path argument: a non-empty string.
pub fn non_empty_path(value: &Value, what: &str) -> Result<PathBuf> {
  non_empty(value, what).map(PathBuf::from)
}
