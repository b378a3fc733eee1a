//! The options of `new ProcessManager(options)`: v1's (what to run, where, how long to wait) and v2's
//! supervision (restarts, watchdog, stats, priority, limits) and isolation (environment, token, shutdown).

use super::*;

/// What each system can do, for the checks and defaults below: platform facts at the module's edge, not
/// inside function bodies.
mod platform {
  use crate::error::{PmError, Result};

  /// `deathGuard: 'auto'` is the guard process where there is neither a parent-death signal nor a job object.
  #[cfg(unix)]
  pub const GUARD_BY_DEFAULT: bool = cfg!(target_os = "macos");
  /// `deathGuard: 'auto'` is the kernel's parent-death signal.
  pub const PARENT_DEATH_SIGNAL: bool = cfg!(target_os = "linux");

  /// Options this system cannot honour, each with what to use instead (`None`: it can).
  #[cfg(windows)]
  pub const NO_NOTIFY: Option<&str> = Some(
    "ready: 'notify' uses a Unix datagram socket (NOTIFY_SOCKET); on Windows use 'http', 'port' or { stdout }",
  );
  #[cfg(windows)]
  pub const NO_GUARD: Option<&str> = Some(
    "deathGuard: 'guard' is a Unix guard process; on Windows the job object ends the backends with the app (deathGuard: 'auto')",
  );
  #[cfg(windows)]
  pub const NO_LISTEN_FD: Option<&str> = Some(
    "listen: 'fd' hands a socket over as file descriptor 3, which Windows programs cannot take; use listen: 'port'",
  );
  #[cfg(not(windows))]
  pub const NO_NOTIFY: Option<&str> = None;
  #[cfg(not(windows))]
  pub const NO_GUARD: Option<&str> = None;
  #[cfg(not(windows))]
  pub const NO_LISTEN_FD: Option<&str> = None;

  pub fn supported(refusal: Option<&'static str>) -> Result<()> {
    refusal.map_or(Ok(()), |why| Err(PmError::invalid(why)))
  }
}

/// The options of `new ProcessManager(options)`, checked, with the defaults applied. `logger` is the JS
/// layer's own and never reaches here.
#[derive(Debug, Clone)]
pub struct Options {
  pub name: String,
  pub entry: String,
  pub command: Option<String>,
  pub args: Vec<String>,
  pub cwd: Option<String>,
  pub env: Vec<(String, String)>,
  pub host: IpAddr,
  pub port: u16,
  pub port_range: u16,
  pub port_env: String,
  pub health_path: String,
  pub health_timeout: Duration,
  pub start_timeout: Duration,
  pub stop_timeout: Duration,
  pub state_dir: PathBuf,
  /// Where the backend's output and the manager's lines are kept; `None`: no files (`logs: false`).
  pub logs: Option<crate::logs::LogConfig>,
  /// What ends the backends when the app dies without stopping them.
  pub death_guard: DeathGuard,
  /// What tells that a started backend is ready.
  pub ready: ReadySignal,
  /// `None`: a backend that exits is not started again.
  pub restart: Option<RestartPolicy>,
  /// The watchdog's probe interval; `None`: no watchdog.
  pub health_interval: Option<Duration>,
  pub unhealthy_threshold: u32,
  /// Tree memory above which the backend counts as failed; `None`: no limit.
  pub max_memory_bytes: Option<u64>,
  /// `stats` events this often; `None`: none.
  pub stats_interval: Option<Duration>,
  pub priority: Priority,
  pub limits: Limits,
  pub inherit_env: InheritEnv,
  /// A fresh secret per `startBackend()` in `BACKEND_TOKEN`, sent by every probe.
  pub token: bool,
  pub shutdown: Shutdown,
  /// How many processes of the backend run behind the public port (1: the backend itself listens there).
  pub replicas: u16,
  pub balance: Balance,
  pub listen: Listen,
  /// What the balancer lets clients hold (`balancer`).
  pub balancer: crate::net::balancer::Limits,
}

/// What tells that a started backend is ready (`ready`).
#[derive(Debug, Clone)]
pub enum ReadySignal {
  /// A 2xx answer from `healthPath`.
  Http,
  /// Its own listener accepts a TCP connection (non-HTTP backends).
  Port,
  /// `READY=1` on the `NOTIFY_SOCKET` the manager sets (systemd's protocol; Unix).
  Notify,
  /// The first stdout or stderr line that matches.
  Stdout(regex_lite::Regex),
}

impl ReadySignal {
  fn parse(value: &Value) -> Result<ReadySignal> {
    if let Value::Object(_) = value {
      let mut f = Fields::of(value, "ready")?;
      let pattern = f
        .take("stdout")
        .map(|v| non_empty(v, "ready.stdout"))
        .transpose()?;
      f.finish()?;
      let pattern = pattern.ok_or_else(|| {
        PmError::invalid(
          "ready as an object needs stdout: a pattern of the line that says the backend is ready",
        )
      })?;
      let regex = regex_lite::Regex::new(&pattern).map_err(|e| {
        PmError::invalid(format!(
          "ready.stdout {pattern:?} is not a pattern this library can match: {e}"
        ))
      })?;
      return Ok(ReadySignal::Stdout(regex));
    }
    match string(value, "ready")?.as_str() {
      "http" => Ok(ReadySignal::Http),
      "port" => Ok(ReadySignal::Port),
      "notify" => platform::supported(platform::NO_NOTIFY).map(|()| ReadySignal::Notify),
      other => Err(PmError::invalid(format!(
        "ready must be 'http', 'port', 'notify' or {{ stdout: pattern }}, got {other:?}"
      ))),
    }
  }
}

/// What ends the backends of an app that dies without stopping them (`deathGuard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathGuard {
  /// Linux: the parent-death signal; Windows: the job object; macOS: the guard.
  Auto,
  /// One guard process per app (every Unix).
  Guard,
  /// Nothing (the next start's orphan cleanup remains).
  None,
}

impl DeathGuard {
  /// The backends are watched by the guard process (Unix).
  #[cfg(unix)]
  pub fn uses_guard(self) -> bool {
    self == DeathGuard::Guard || (self == DeathGuard::Auto && platform::GUARD_BY_DEFAULT)
  }

  /// The backend gets SIGTERM from the kernel when the app dies (Linux).
  pub fn parent_death_signal(self) -> bool {
    self == DeathGuard::Auto && platform::PARENT_DEATH_SIGNAL
  }

  pub fn name(self) -> &'static str {
    match self {
      DeathGuard::Auto => "auto",
      DeathGuard::Guard => "guard",
      DeathGuard::None => "none",
    }
  }
}

/// How the balancer picks a replica for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
  /// The healthy replica with the fewest open connections; ties go round-robin.
  LeastConnections,
  RoundRobin,
}

/// How the backend gets its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
  /// It binds the port it finds in `PORT`.
  Port,
  /// The manager binds it and hands it over as file descriptor 3 (`LISTEN_FDS`, `LISTEN_PID`).
  Fd,
}

/// When and how often a backend that exits (or is found unhealthy) is started again.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
  /// More restarts than this within `window` and the backend stays down (`failed`).
  pub max_restarts: u32,
  pub window: Duration,
  /// The delay before the first restart; it doubles each time, up to `max_delay`.
  pub initial_delay: Duration,
  pub max_delay: Duration,
  /// Once healthy this long, the delay starts over from `initial_delay`.
  pub reset_after: Duration,
}

impl Default for RestartPolicy {
  fn default() -> Self {
    RestartPolicy {
      max_restarts: 5,
      window: Duration::from_secs(60),
      initial_delay: Duration::from_millis(100),
      max_delay: Duration::from_secs(10),
      reset_after: Duration::from_secs(30),
    }
  }
}

/// Scheduling priority of the backend tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
  Low,
  BelowNormal,
  Normal,
  AboveNormal,
  High,
}

impl Priority {
  const NAMES: [(&'static str, Priority); 5] = [
    ("low", Priority::Low),
    ("below-normal", Priority::BelowNormal),
    ("normal", Priority::Normal),
    ("above-normal", Priority::AboveNormal),
    ("high", Priority::High),
  ];

  /// The Unix nice value.
  pub fn nice(self) -> i32 {
    match self {
      Priority::Low => 10,
      Priority::BelowNormal => 5,
      Priority::Normal => 0,
      Priority::AboveNormal => -5,
      Priority::High => -10,
    }
  }

  pub fn name(self) -> &'static str {
    Self::NAMES
      .iter()
      .find(|(_, p)| *p == self)
      .map_or("normal", |(n, _)| n)
  }
}

/// Hard OS limits applied to the backend when it starts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
  /// `RLIMIT_NOFILE`.
  pub open_files: Option<u64>,
  /// `Some(false)`: `RLIMIT_CORE` 0.
  pub core_dumps: Option<bool>,
}

/// What the backend inherits of the app's environment.
#[derive(Debug, Clone, PartialEq)]
pub enum InheritEnv {
  All,
  /// The minimal set (`PATH`, `HOME`, …) plus these names.
  Only(Vec<String>),
}

/// Polite stop requests tried before the signal (and on Windows, before the console break).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shutdown {
  /// `(method, path)` of an HTTP request that asks the backend to stop.
  pub http: Option<(String, String)>,
  /// Close the backend's stdin.
  pub stdin: bool,
}

pub const MAX_REPLICAS: f64 = 64.0;

/// `logs`: `false` (no files), `true` or an object `{ dir, maxBytes, keep }` (missing keys take their
/// defaults). Without `dir`, an explicit `stateDir` puts them in `<stateDir>/logs`, else the per-user log
/// folder.
fn logs(
  value: &Value,
  state_dir: Option<&std::path::Path>,
) -> Result<Option<crate::logs::LogConfig>> {
  use crate::logs::{default_log_dir, LogConfig, DEFAULT_KEEP, DEFAULT_MAX_BYTES};
  let default_dir =
    || -> Result<PathBuf> { Ok(state_dir.map_or_else(default_log_dir, |d| d.join("logs"))) };
  match value {
    Value::Bool(false) => Ok(None),
    Value::Bool(true) => Ok(Some(LogConfig {
      dir: default_dir()?,
      max_bytes: DEFAULT_MAX_BYTES,
      keep: DEFAULT_KEEP,
    })),
    Value::Object(_) => {
      let mut f = Fields::of(value, "logs")?;
      let dir = f
        .take("dir")
        .map(|v| non_empty(v, "logs.dir"))
        .transpose()?;
      let max_bytes = f
        .take("maxBytes")
        .map(|v| integer(v, "logs.maxBytes", 4096.0, 2f64.powi(53)).map(|n| n as u64))
        .transpose()?
        .unwrap_or(DEFAULT_MAX_BYTES);
      let keep = f
        .take("keep")
        .map(|v| integer(v, "logs.keep", 0.0, 100.0).map(|n| n as u32))
        .transpose()?
        .unwrap_or(DEFAULT_KEEP);
      f.finish()?;
      Ok(Some(LogConfig {
        dir: match dir {
          Some(d) => PathBuf::from(d),
          None => default_dir()?,
        },
        max_bytes,
        keep,
      }))
    }
    other => Err(bad(
      "logs",
      "false, true or an object { dir, maxBytes, keep }",
      other,
    )),
  }
}

/// `0` means off for the interval options.
fn interval(value: &Value, what: &str) -> Result<Option<Duration>> {
  let d = millis(value, what, 0.0)?;
  Ok((!d.is_zero()).then_some(d))
}

fn restart(value: &Value) -> Result<Option<RestartPolicy>> {
  match value {
    Value::Bool(false) => Ok(None),
    Value::Bool(true) => Ok(Some(RestartPolicy::default())),
    Value::Object(_) => {
      let defaults = RestartPolicy::default();
      let mut f = Fields::of(value, "restart")?;
      let mut ms = |key: &'static str, default: Duration| {
        f.take(key)
          .map(|v| millis(v, &format!("restart.{key}"), 0.0))
          .transpose()
          .map(|d| d.unwrap_or(default))
      };
      let window = ms("windowMs", defaults.window)?;
      let initial_delay = ms("initialDelayMs", defaults.initial_delay)?;
      let max_delay = ms("maxDelayMs", defaults.max_delay)?;
      let reset_after = ms("resetAfterMs", defaults.reset_after)?;
      let max_restarts = f
        .take("maxRestarts")
        .map(|v| integer(v, "restart.maxRestarts", 0.0, 1e6).map(|n| n as u32))
        .transpose()?
        .unwrap_or(defaults.max_restarts);
      f.finish()?;
      if max_delay < initial_delay {
        return Err(PmError::invalid(
          "restart.maxDelayMs must not be below restart.initialDelayMs",
        ));
      }
      Ok(Some(RestartPolicy {
        max_restarts,
        window,
        initial_delay,
        max_delay,
        reset_after,
      }))
    }
    other => Err(bad("restart", "true, false or an object", other)),
  }
}

fn priority(value: &Value) -> Result<Priority> {
  let text = string(value, "priority")?;
  Priority::NAMES
    .iter()
    .find(|(n, _)| *n == text)
    .map(|(_, p)| *p)
    .ok_or_else(|| {
      PmError::invalid(format!(
        "priority must be one of 'low', 'below-normal', 'normal', 'above-normal', 'high', got {text:?}"
      ))
    })
}

fn limits(value: &Value) -> Result<Limits> {
  let mut f = Fields::of(value, "limits")?;
  let limits = Limits {
    open_files: f
      .take("openFiles")
      .map(|v| integer(v, "limits.openFiles", 1.0, 1_048_576.0).map(|n| n as u64))
      .transpose()?,
    core_dumps: f
      .take("coreDumps")
      .map(|v| boolean(v, "limits.coreDumps"))
      .transpose()?,
  };
  f.finish()?;
  Ok(limits)
}

fn inherit_env(value: &Value) -> Result<InheritEnv> {
  match value {
    Value::Bool(true) => Ok(InheritEnv::All),
    Value::Bool(false) => Ok(InheritEnv::Only(Vec::new())),
    Value::Array(_) => {
      let names = strings(value, "inheritEnv")?;
      for n in &names {
        env_name(n, "inheritEnv entry")?;
      }
      Ok(InheritEnv::Only(names))
    }
    other => Err(bad(
      "inheritEnv",
      "true, false or an array of variable names",
      other,
    )),
  }
}

/// `{ maxConnections, idleTimeoutMs, firstByteTimeoutMs }`; missing keys take the defaults.
fn balancer(value: &Value) -> Result<crate::net::balancer::Limits> {
  let defaults = crate::net::balancer::Limits::default();
  let mut f = Fields::of(value, "balancer")?;
  let max_connections = f
    .take("maxConnections")
    .map(|v| integer(v, "balancer.maxConnections", 1.0, 1_048_576.0).map(|n| n as usize))
    .transpose()?
    .unwrap_or(defaults.max_connections);
  let idle_timeout = match f.take("idleTimeoutMs") {
    None => defaults.idle_timeout,
    Some(v) => interval(v, "balancer.idleTimeoutMs")?,
  };
  let first_byte_timeout = f
    .take("firstByteTimeoutMs")
    .map(|v| interval(v, "balancer.firstByteTimeoutMs"))
    .transpose()?
    .flatten();
  f.finish()?;
  Ok(crate::net::balancer::Limits {
    max_connections,
    idle_timeout,
    first_byte_timeout,
  })
}

/// `{ http: 'POST /shutdown', stdin: true }`.
fn shutdown(value: &Value) -> Result<Shutdown> {
  let mut f = Fields::of(value, "shutdown")?;
  let http = match f.take("http") {
    None => None,
    Some(v) => {
      let text = non_empty(v, "shutdown.http")?;
      let parsed = text.split_once(' ').filter(|(method, path)| {
        !method.is_empty()
          && method.bytes().all(|b| b.is_ascii_uppercase())
          && path.starts_with('/')
          && !path.chars().any(|c| c.is_whitespace() || c.is_control())
      });
      let Some((method, path)) = parsed else {
        return Err(PmError::invalid(format!(
          "shutdown.http must be a method and a path such as 'POST /shutdown', got {text:?}"
        )));
      };
      Some((method.to_string(), path.to_string()))
    }
  };
  let stdin = f
    .take("stdin")
    .map(|v| boolean(v, "shutdown.stdin"))
    .transpose()?
    .unwrap_or(false);
  f.finish()?;
  Ok(Shutdown { http, stdin })
}

/// The options of `new ProcessManager()` without arguments: the API's defaults (docs/api.md), each in one
/// place. Without a `stateDir`, logs go to the per-user log folder.
impl Default for Options {
  fn default() -> Self {
    Options {
      name: DEFAULT_NAME.into(),
      entry: DEFAULT_ENTRY.into(),
      command: None,
      args: Vec::new(),
      cwd: None,
      env: Vec::new(),
      host: DEFAULT_HOST,
      port: DEFAULT_PORT,
      port_range: DEFAULT_PORT_RANGE,
      port_env: DEFAULT_PORT_ENV.into(),
      health_path: DEFAULT_HEALTH_PATH.into(),
      health_timeout: DEFAULT_HEALTH_TIMEOUT,
      start_timeout: DEFAULT_START_TIMEOUT,
      stop_timeout: DEFAULT_STOP_TIMEOUT,
      state_dir: crate::state::dir::default_state_dir(),
      logs: Some(crate::logs::LogConfig {
        dir: crate::logs::default_log_dir(),
        max_bytes: crate::logs::DEFAULT_MAX_BYTES,
        keep: crate::logs::DEFAULT_KEEP,
      }),
      death_guard: DeathGuard::Auto,
      ready: ReadySignal::Http,
      restart: None,
      health_interval: None,
      unhealthy_threshold: DEFAULT_UNHEALTHY_THRESHOLD,
      max_memory_bytes: None,
      stats_interval: None,
      priority: Priority::Normal,
      limits: Limits::default(),
      inherit_env: InheritEnv::All,
      token: false,
      shutdown: Shutdown::default(),
      replicas: 1,
      balance: Balance::LeastConnections,
      listen: Listen::Port,
      balancer: crate::net::balancer::Limits::default(),
    }
  }
}

impl Options {
  pub fn parse(value: &Value) -> Result<Options> {
    let d = Options::default();
    let mut f = Fields::of(value, "the ProcessManager options")?;
    let state_dir_value = f.take("stateDir");
    let state_dir_given = state_dir_value.map(|v| state_dir(Some(v))).transpose()?;
    let logs = logs(
      f.take("logs").unwrap_or(&Value::Bool(true)),
      state_dir_given.as_deref(),
    )?;
    let options = Options {
      name: f.take("name").map(name).transpose()?.unwrap_or(d.name),
      entry: f
        .take("entry")
        .map(|v| non_empty(v, "entry"))
        .transpose()?
        .unwrap_or(d.entry),
      command: f
        .take("command")
        .map(|v| non_empty(v, "command"))
        .transpose()?,
      args: f
        .take("args")
        .map(|v| strings(v, "args"))
        .transpose()?
        .unwrap_or_default(),
      cwd: f.take("cwd").map(|v| non_empty(v, "cwd")).transpose()?,
      env: f
        .take("env")
        .map(|v| env(v, "env"))
        .transpose()?
        .unwrap_or_default(),
      host: f
        .take("host")
        .map(|v| host(v, "host"))
        .transpose()?
        .unwrap_or(d.host),
      port: f
        .take("port")
        .map(|v| port(v, "port"))
        .transpose()?
        .unwrap_or(d.port),
      port_range: f
        .take("portRange")
        .map(port_range)
        .transpose()?
        .unwrap_or(d.port_range),
      port_env: f
        .take("portEnv")
        .map(|v| {
          let key = non_empty(v, "portEnv")?;
          port_env(&key)?;
          Ok::<_, PmError>(key)
        })
        .transpose()?
        .unwrap_or(d.port_env),
      health_path: f
        .take("healthPath")
        .map(health_path)
        .transpose()?
        .unwrap_or(d.health_path),
      health_timeout: f
        .take("healthTimeoutMs")
        .map(|v| millis(v, "healthTimeoutMs", 1.0))
        .transpose()?
        .unwrap_or(d.health_timeout),
      start_timeout: f
        .take("startTimeoutMs")
        .map(|v| millis(v, "startTimeoutMs", 0.0))
        .transpose()?
        .unwrap_or(d.start_timeout),
      stop_timeout: f
        .take("stopTimeoutMs")
        .map(|v| millis(v, "stopTimeoutMs", 0.0))
        .transpose()?
        .unwrap_or(d.stop_timeout),
      state_dir: state_dir_given.unwrap_or(d.state_dir),
      logs,
      ready: f
        .take("ready")
        .map(ReadySignal::parse)
        .transpose()?
        .unwrap_or(d.ready),
      death_guard: match f.take("deathGuard") {
        None => d.death_guard,
        Some(v) => match string(v, "deathGuard")?.as_str() {
          "auto" => DeathGuard::Auto,
          "guard" => platform::supported(platform::NO_GUARD).map(|()| DeathGuard::Guard)?,
          "none" => DeathGuard::None,
          other => {
            return Err(PmError::invalid(format!(
              "deathGuard must be 'auto', 'guard' or 'none', got {other:?}"
            )))
          }
        },
      },
      restart: f.take("restart").map(restart).transpose()?.flatten(),
      health_interval: f
        .take("healthIntervalMs")
        .map(|v| interval(v, "healthIntervalMs"))
        .transpose()?
        .flatten(),
      unhealthy_threshold: f
        .take("unhealthyThreshold")
        .map(|v| count(v, "unhealthyThreshold"))
        .transpose()?
        .unwrap_or(d.unhealthy_threshold),
      max_memory_bytes: f
        .take("maxMemoryBytes")
        .map(|v| integer(v, "maxMemoryBytes", 0.0, 2f64.powi(53)).map(|n| n as u64))
        .transpose()?
        .filter(|n| *n > 0),
      stats_interval: f
        .take("statsIntervalMs")
        .map(|v| interval(v, "statsIntervalMs"))
        .transpose()?
        .flatten(),
      priority: f
        .take("priority")
        .map(priority)
        .transpose()?
        .unwrap_or(d.priority),
      limits: f
        .take("limits")
        .map(limits)
        .transpose()?
        .unwrap_or_default(),
      inherit_env: f
        .take("inheritEnv")
        .map(inherit_env)
        .transpose()?
        .unwrap_or(d.inherit_env),
      token: f
        .take("token")
        .map(|v| boolean(v, "token"))
        .transpose()?
        .unwrap_or(d.token),
      shutdown: f
        .take("shutdown")
        .map(shutdown)
        .transpose()?
        .unwrap_or_default(),
      replicas: f
        .take("replicas")
        .map(|v| integer(v, "replicas", 1.0, MAX_REPLICAS).map(|n| n as u16))
        .transpose()?
        .unwrap_or(d.replicas),
      balance: match f.take("balance") {
        None => d.balance,
        Some(v) => match string(v, "balance")?.as_str() {
          "least-connections" => Balance::LeastConnections,
          "round-robin" => Balance::RoundRobin,
          other => {
            return Err(PmError::invalid(format!(
              "balance must be 'least-connections' or 'round-robin', got {other:?}"
            )))
          }
        },
      },
      listen: match f.take("listen") {
        None => d.listen,
        Some(v) => match string(v, "listen")?.as_str() {
          "port" => Listen::Port,
          "fd" => platform::supported(platform::NO_LISTEN_FD).map(|()| Listen::Fd)?,
          other => {
            return Err(PmError::invalid(format!(
              "listen must be 'port' or 'fd', got {other:?}"
            )))
          }
        },
      },
      balancer: f
        .take("balancer")
        .map(balancer)
        .transpose()?
        .unwrap_or_default(),
    };
    let restart_given = matches!(value, Value::Object(fields) if fields.iter().any(|(k, v)| k == "restart" && !v.is_absent()));
    let mut options = options;
    if options.replicas > 1 && !restart_given {
      // Replicas are restarted by default: a replica that dies would otherwise stay out for good.
      options.restart = Some(RestartPolicy::default());
    }
    if options.replicas > 1 && options.listen == Listen::Fd && options.shutdown.http.is_some() {
      return Err(PmError::invalid(
        "shutdown.http cannot address one replica when replicas share one socket (listen: 'fd'); use shutdown.stdin or the signal",
      ));
    }
    // The JS layer keeps the logger; it may still be in the object it passes on.
    f.take("logger");
    f.finish()?;
    Ok(options)
  }

  /// The last port of the range `startBackend` may use.
  pub fn last_port(&self) -> u16 {
    self.port.saturating_add(self.port_range)
  }

  /// How often memory is sampled: at the stats interval, or every second when only a limit is set.
  pub fn memory_interval(&self) -> Option<Duration> {
    self
      .stats_interval
      .or(self.max_memory_bytes.map(|_| Duration::from_secs(1)))
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn opts(fields: Vec<(&str, Value)>) -> Result<Options> {
    Options::parse(&Value::object(fields))
  }

  #[test]
  fn supervision_is_off_by_default_and_true_takes_the_documented_defaults() {
    let o = Options::parse(&Value::Undefined).unwrap();
    assert_eq!(o.restart, None);
    assert_eq!(
      (o.health_interval, o.max_memory_bytes, o.stats_interval),
      (None, None, None)
    );
    assert_eq!(o.unhealthy_threshold, 3);
    assert_eq!(o.priority, Priority::Normal);
    assert_eq!(o.inherit_env, InheritEnv::All);
    assert!(!o.token);
    assert_eq!(o.shutdown, Shutdown::default());
    let r = opts(vec![("restart", Value::Bool(true))])
      .unwrap()
      .restart
      .unwrap();
    assert_eq!(r, RestartPolicy::default());
    let partial = opts(vec![(
      "restart",
      Value::object(vec![("maxRestarts", Value::Number(2.0))]),
    )])
    .unwrap()
    .restart
    .unwrap();
    assert_eq!(
      (partial.max_restarts, partial.window),
      (2, Duration::from_secs(60))
    );
  }

  #[test]
  fn bad_v2_options_are_invalid_args() {
    let s = |x: &str| Value::String(x.into());
    let cases: Vec<(&str, Value, &str)> = vec![
      (
        "restart",
        s("yes"),
        "restart must be true, false or an object",
      ),
      (
        "restart",
        Value::object(vec![("maxRestart", Value::Number(1.0))]),
        "unknown option \"maxRestart\"",
      ),
      (
        "restart",
        Value::object(vec![
          ("initialDelayMs", Value::Number(500.0)),
          ("maxDelayMs", Value::Number(100.0)),
        ]),
        "maxDelayMs",
      ),
      ("priority", s("urgent"), "priority must be one of"),
      (
        "limits",
        Value::object(vec![("openFiles", Value::Number(0.0))]),
        "limits.openFiles",
      ),
      (
        "inheritEnv",
        Value::Array(vec![s("A=B")]),
        "inheritEnv entry",
      ),
      (
        "shutdown",
        Value::object(vec![("http", s("/shutdown"))]),
        "shutdown.http",
      ),
      (
        "unhealthyThreshold",
        Value::Number(0.0),
        "unhealthyThreshold",
      ),
      ("healthIntervalMs", Value::Number(-1.0), "healthIntervalMs"),
      ("token", s("true"), "token must be true or false"),
    ];
    for (key, value, expected) in cases {
      let err = opts(vec![(key, value.clone())]).unwrap_err();
      assert!(err.to_string().contains(expected), "{key}={value:?}: {err}");
    }
  }

  #[test]
  fn the_defaults_are_the_options_of_an_empty_object() {
    let (parsed, default) = (Options::parse(&Value::Null).unwrap(), Options::default());
    assert_eq!(
      (parsed.name, parsed.port, parsed.host, parsed.stop_timeout),
      (
        default.name,
        default.port,
        default.host,
        default.stop_timeout
      )
    );
    assert_eq!(parsed.logs, default.logs);
    assert_eq!(parsed.balancer, default.balancer);
    assert_eq!(
      (parsed.restart, parsed.replicas, parsed.listen),
      (default.restart, default.replicas, default.listen)
    );
  }
}
