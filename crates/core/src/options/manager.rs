//! The options of `new ProcessManager(options)`: v1's (what to run, where, how long to wait) and v2's
//! supervision (restarts, watchdog, stats, priority, limits) and isolation (environment, token, shutdown):
//! `OptionsInput` as JS gives them, checked into `Options` by one `TryFrom`.

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
  fn parse(value: Either<String, ReadyStdoutInput>) -> Result<ReadySignal> {
    let text = match value {
      Either::A(text) => text,
      Either::B(ReadyStdoutInput { stdout }) => {
        let pattern = stdout.map(|p| non_empty(p, "ready.stdout")).transpose()?;
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
    };
    match string(text, "ready")?.as_str() {
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
  const NAMES: [(&'static str, DeathGuard); 3] = [
    ("auto", DeathGuard::Auto),
    ("guard", DeathGuard::Guard),
    ("none", DeathGuard::None),
  ];

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
    Self::NAMES
      .iter()
      .find(|(_, g)| *g == self)
      .map_or("auto", |(n, _)| n)
  }
}

/// How the balancer picks a replica for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
  /// The healthy replica with the fewest open connections; ties go round-robin.
  LeastConnections,
  RoundRobin,
}

impl Balance {
  const NAMES: [(&'static str, Balance); 2] = [
    ("least-connections", Balance::LeastConnections),
    ("round-robin", Balance::RoundRobin),
  ];
}

/// How the backend gets its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
  /// It binds the port it finds in `PORT`.
  Port,
  /// The manager binds it and hands it over as file descriptor 3 (`LISTEN_FDS`, `LISTEN_PID`).
  Fd,
}

impl Listen {
  const NAMES: [(&'static str, Listen); 2] = [("port", Listen::Port), ("fd", Listen::Fd)];
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
  value: Either<bool, LogsInput>,
  state_dir: Option<&std::path::Path>,
) -> Result<Option<crate::logs::LogConfig>> {
  use crate::logs::{default_log_dir, LogConfig, DEFAULT_KEEP, DEFAULT_MAX_BYTES};
  let default_dir = || state_dir.map_or_else(default_log_dir, |d| d.join("logs"));
  let given = match value {
    Either::A(false) => return Ok(None),
    Either::A(true) => LogsInput::default(),
    Either::B(given) => given,
  };
  Ok(Some(LogConfig {
    dir: match given.dir {
      Some(d) => PathBuf::from(non_empty(d, "logs.dir")?),
      None => default_dir(),
    },
    max_bytes: given.max_bytes.map_or(Ok(DEFAULT_MAX_BYTES), |n| {
      integer(n, "logs.maxBytes", 4096.0, 2f64.powi(53)).map(|n| n as u64)
    })?,
    keep: given.keep.map_or(Ok(DEFAULT_KEEP), |n| {
      integer(n, "logs.keep", 0.0, 100.0).map(|n| n as u32)
    })?,
  }))
}

/// `0` means off for the interval options.
fn interval(n: f64, what: &str) -> Result<Option<Duration>> {
  let d = millis(n, what, 0.0)?;
  Ok((!d.is_zero()).then_some(d))
}

fn restart(value: Either<bool, RestartInput>) -> Result<Option<RestartPolicy>> {
  let given = match value {
    Either::A(false) => return Ok(None),
    Either::A(true) => return Ok(Some(RestartPolicy::default())),
    Either::B(given) => given,
  };
  let defaults = RestartPolicy::default();
  let ms = |n: Option<f64>, key: &str, default: Duration| {
    n.map_or(Ok(default), |n| millis(n, &format!("restart.{key}"), 0.0))
  };
  let policy = RestartPolicy {
    max_restarts: given.max_restarts.map_or(Ok(defaults.max_restarts), |n| {
      integer(n, "restart.maxRestarts", 0.0, 1e6).map(|n| n as u32)
    })?,
    window: ms(given.window_ms, "windowMs", defaults.window)?,
    initial_delay: ms(
      given.initial_delay_ms,
      "initialDelayMs",
      defaults.initial_delay,
    )?,
    max_delay: ms(given.max_delay_ms, "maxDelayMs", defaults.max_delay)?,
    reset_after: ms(given.reset_after_ms, "resetAfterMs", defaults.reset_after)?,
  };
  if policy.max_delay < policy.initial_delay {
    return Err(PmError::invalid(
      "restart.maxDelayMs must not be below restart.initialDelayMs",
    ));
  }
  Ok(Some(policy))
}

/// One of a closed set of names, or a message that lists them.
fn one_of<T: Copy>(text: String, what: &str, names: &[(&str, T)]) -> Result<T> {
  let text = string(text, what)?;
  names
    .iter()
    .find(|(n, _)| *n == text)
    .map(|(_, v)| *v)
    .ok_or_else(|| {
      let quoted: Vec<String> = names.iter().map(|(n, _)| format!("'{n}'")).collect();
      let (last, rest) = quoted.split_last().expect("a set of names is not empty");
      let list = if names.len() > 3 {
        format!("one of {}, {last}", rest.join(", "))
      } else {
        format!("{} or {last}", rest.join(", "))
      };
      PmError::invalid(format!("{what} must be {list}, got {text:?}"))
    })
}

fn limits(given: LimitsInput) -> Result<Limits> {
  Ok(Limits {
    open_files: given
      .open_files
      .map(|n| integer(n, "limits.openFiles", 1.0, 1_048_576.0).map(|n| n as u64))
      .transpose()?,
    core_dumps: given.core_dumps,
  })
}

fn inherit_env(value: Either<bool, Vec<String>>) -> Result<InheritEnv> {
  match value {
    Either::A(true) => Ok(InheritEnv::All),
    Either::A(false) => Ok(InheritEnv::Only(Vec::new())),
    Either::B(names) => {
      let names = strings(names, "inheritEnv")?;
      for n in &names {
        env_name(n, "inheritEnv entry")?;
      }
      Ok(InheritEnv::Only(names))
    }
  }
}

/// `{ maxConnections, idleTimeoutMs, firstByteTimeoutMs }`; missing keys take the defaults.
fn balancer(given: BalancerInput) -> Result<crate::net::balancer::Limits> {
  let defaults = crate::net::balancer::Limits::default();
  Ok(crate::net::balancer::Limits {
    max_connections: given
      .max_connections
      .map_or(Ok(defaults.max_connections), |n| {
        integer(n, "balancer.maxConnections", 1.0, 1_048_576.0).map(|n| n as usize)
      })?,
    idle_timeout: match given.idle_timeout_ms {
      None => defaults.idle_timeout,
      Some(n) => interval(n, "balancer.idleTimeoutMs")?,
    },
    first_byte_timeout: given
      .first_byte_timeout_ms
      .map_or(Ok(None), |n| interval(n, "balancer.firstByteTimeoutMs"))?,
  })
}

/// `{ http: 'POST /shutdown', stdin: true }`.
fn shutdown(given: ShutdownInput) -> Result<Shutdown> {
  let http = match given.http {
    None => None,
    Some(text) => {
      let text = non_empty(text, "shutdown.http")?;
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
  Ok(Shutdown {
    http,
    stdin: given.stdin.unwrap_or(false),
  })
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

/// The options of `new ProcessManager(options)` as JS gives them: every field optional (absent: the
/// default), numbers as JS numbers, unions as `Either`. The binding fills it from the JS object (after
/// refusing unknown keys and values of the wrong JS type); `Options::try_from` checks every value.
#[derive(Debug, Clone, Default)]
pub struct OptionsInput {
  pub name: Option<String>,
  pub entry: Option<String>,
  pub command: Option<String>,
  pub args: Option<Vec<String>>,
  pub cwd: Option<String>,
  pub env: Option<Vec<(String, EnvValue)>>,
  pub host: Option<String>,
  pub port: Option<f64>,
  pub port_range: Option<f64>,
  pub port_env: Option<String>,
  pub health_path: Option<String>,
  pub health_timeout_ms: Option<f64>,
  pub start_timeout_ms: Option<f64>,
  pub stop_timeout_ms: Option<f64>,
  pub state_dir: Option<String>,
  pub logs: Option<Either<bool, LogsInput>>,
  pub ready: Option<Either<String, ReadyStdoutInput>>,
  pub death_guard: Option<String>,
  pub restart: Option<Either<bool, RestartInput>>,
  pub health_interval_ms: Option<f64>,
  pub unhealthy_threshold: Option<f64>,
  pub max_memory_bytes: Option<f64>,
  pub stats_interval_ms: Option<f64>,
  pub priority: Option<String>,
  pub limits: Option<LimitsInput>,
  pub inherit_env: Option<Either<bool, Vec<String>>>,
  pub token: Option<bool>,
  pub shutdown: Option<ShutdownInput>,
  pub replicas: Option<f64>,
  pub balance: Option<String>,
  pub listen: Option<String>,
  pub balancer: Option<BalancerInput>,
}

/// `logs: { dir, maxBytes, keep }`.
#[derive(Debug, Clone, Default)]
pub struct LogsInput {
  pub dir: Option<String>,
  pub max_bytes: Option<f64>,
  pub keep: Option<f64>,
}

/// `ready: { stdout }`.
#[derive(Debug, Clone, Default)]
pub struct ReadyStdoutInput {
  pub stdout: Option<String>,
}

/// `restart: { maxRestarts, windowMs, initialDelayMs, maxDelayMs, resetAfterMs }`.
#[derive(Debug, Clone, Default)]
pub struct RestartInput {
  pub max_restarts: Option<f64>,
  pub window_ms: Option<f64>,
  pub initial_delay_ms: Option<f64>,
  pub max_delay_ms: Option<f64>,
  pub reset_after_ms: Option<f64>,
}

/// `limits: { openFiles, coreDumps }`.
#[derive(Debug, Clone, Default)]
pub struct LimitsInput {
  pub open_files: Option<f64>,
  pub core_dumps: Option<bool>,
}

/// `shutdown: { http, stdin }`.
#[derive(Debug, Clone, Default)]
pub struct ShutdownInput {
  pub http: Option<String>,
  pub stdin: Option<bool>,
}

/// `balancer: { maxConnections, idleTimeoutMs, firstByteTimeoutMs }`.
#[derive(Debug, Clone, Default)]
pub struct BalancerInput {
  pub max_connections: Option<f64>,
  pub idle_timeout_ms: Option<f64>,
  pub first_byte_timeout_ms: Option<f64>,
}

impl TryFrom<OptionsInput> for Options {
  type Error = PmError;

  fn try_from(given: OptionsInput) -> Result<Options> {
    let d = Options::default();
    let state_dir_given = given
      .state_dir
      .map(|dir| state_dir(Some(dir)))
      .transpose()?;
    let restart_given = given.restart.is_some();
    let mut options = Options {
      name: given.name.map_or(Ok(d.name), name)?,
      entry: given.entry.map_or(Ok(d.entry), |v| non_empty(v, "entry"))?,
      command: given.command.map(|v| non_empty(v, "command")).transpose()?,
      args: given
        .args
        .map_or(Ok(Default::default()), |v| strings(v, "args"))?,
      cwd: given.cwd.map(|v| non_empty(v, "cwd")).transpose()?,
      env: given
        .env
        .map_or(Ok(Default::default()), |v| env(v, "env"))?,
      host: given.host.map_or(Ok(d.host), |v| host(v, "host"))?,
      port: given.port.map_or(Ok(d.port), |v| port(v, "port"))?,
      port_range: given.port_range.map_or(Ok(d.port_range), port_range)?,
      port_env: given.port_env.map_or(Ok(d.port_env), |v| {
        let key = non_empty(v, "portEnv")?;
        port_env(&key)?;
        Ok::<_, PmError>(key)
      })?,
      health_path: given.health_path.map_or(Ok(d.health_path), health_path)?,
      health_timeout: given
        .health_timeout_ms
        .map_or(Ok(d.health_timeout), |v| millis(v, "healthTimeoutMs", 1.0))?,
      start_timeout: given
        .start_timeout_ms
        .map_or(Ok(d.start_timeout), |v| millis(v, "startTimeoutMs", 0.0))?,
      stop_timeout: given
        .stop_timeout_ms
        .map_or(Ok(d.stop_timeout), |v| millis(v, "stopTimeoutMs", 0.0))?,
      logs: logs(
        given.logs.unwrap_or(Either::A(true)),
        state_dir_given.as_deref(),
      )?,
      state_dir: state_dir_given.unwrap_or(d.state_dir),
      ready: given.ready.map_or(Ok(d.ready), ReadySignal::parse)?,
      death_guard: match given.death_guard {
        None => d.death_guard,
        Some(v) => match one_of(v, "deathGuard", &DeathGuard::NAMES)? {
          DeathGuard::Guard => {
            platform::supported(platform::NO_GUARD).map(|()| DeathGuard::Guard)?
          }
          other => other,
        },
      },
      restart: given.restart.map_or(Ok(None), restart)?,
      health_interval: given
        .health_interval_ms
        .map_or(Ok(None), |v| interval(v, "healthIntervalMs"))?,
      unhealthy_threshold: given
        .unhealthy_threshold
        .map_or(Ok(d.unhealthy_threshold), |v| {
          count(v, "unhealthyThreshold")
        })?,
      max_memory_bytes: given
        .max_memory_bytes
        .map(|v| integer(v, "maxMemoryBytes", 0.0, 2f64.powi(53)).map(|n| n as u64))
        .transpose()?
        .filter(|n| *n > 0),
      stats_interval: given
        .stats_interval_ms
        .map_or(Ok(None), |v| interval(v, "statsIntervalMs"))?,
      priority: given
        .priority
        .map_or(Ok(d.priority), |v| one_of(v, "priority", &Priority::NAMES))?,
      limits: given.limits.map_or(Ok(Default::default()), limits)?,
      inherit_env: given.inherit_env.map_or(Ok(d.inherit_env), inherit_env)?,
      token: given.token.unwrap_or(d.token),
      shutdown: given.shutdown.map_or(Ok(Default::default()), shutdown)?,
      replicas: given.replicas.map_or(Ok(d.replicas), |v| {
        integer(v, "replicas", 1.0, MAX_REPLICAS).map(|n| n as u16)
      })?,
      balance: given
        .balance
        .map_or(Ok(d.balance), |v| one_of(v, "balance", &Balance::NAMES))?,
      listen: match given.listen {
        None => d.listen,
        Some(v) => match one_of(v, "listen", &Listen::NAMES)? {
          Listen::Fd => platform::supported(platform::NO_LISTEN_FD).map(|()| Listen::Fd)?,
          other => other,
        },
      },
      balancer: given.balancer.map_or(Ok(Default::default()), balancer)?,
    };
    if options.replicas > 1 && !restart_given {
      // Replicas are restarted by default: a replica that dies would otherwise stay out for good.
      options.restart = Some(RestartPolicy::default());
    }
    if options.replicas > 1 && options.listen == Listen::Fd && options.shutdown.http.is_some() {
      return Err(PmError::invalid(
        "shutdown.http cannot address one replica when replicas share one socket (listen: 'fd'); use shutdown.stdin or the signal",
      ));
    }
    Ok(options)
  }
}

impl Options {
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

  fn opts(given: OptionsInput) -> Result<Options> {
    Options::try_from(given)
  }

  #[test]
  fn supervision_is_off_by_default_and_true_takes_the_documented_defaults() {
    let o = opts(OptionsInput::default()).unwrap();
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
    let restart = |r| {
      opts(OptionsInput {
        restart: Some(r),
        ..Default::default()
      })
      .unwrap()
      .restart
      .unwrap()
    };
    assert_eq!(restart(Either::A(true)), RestartPolicy::default());
    let partial = restart(Either::B(RestartInput {
      max_restarts: Some(2.0),
      ..Default::default()
    }));
    assert_eq!(
      (partial.max_restarts, partial.window),
      (2, Duration::from_secs(60))
    );
  }

  #[test]
  fn bad_v2_options_are_invalid_args() {
    type Case = (fn(&mut OptionsInput), &'static str);
    let cases: Vec<Case> = vec![
      (
        |o| {
          o.restart = Some(Either::B(RestartInput {
            initial_delay_ms: Some(500.0),
            max_delay_ms: Some(100.0),
            ..Default::default()
          }))
        },
        "maxDelayMs",
      ),
      (
        |o| o.priority = Some("urgent".into()),
        "priority must be one of 'low', 'below-normal', 'normal', 'above-normal', 'high', got \"urgent\"",
      ),
      (
        |o| o.death_guard = Some("never".into()),
        "deathGuard must be 'auto', 'guard' or 'none', got \"never\"",
      ),
      (
        |o| o.balance = Some("random".into()),
        "balance must be 'least-connections' or 'round-robin', got \"random\"",
      ),
      (
        |o| {
          o.limits = Some(LimitsInput {
            open_files: Some(0.0),
            ..Default::default()
          })
        },
        "limits.openFiles",
      ),
      (
        |o| o.inherit_env = Some(Either::B(vec!["A=B".into()])),
        "inheritEnv entry",
      ),
      (
        |o| {
          o.shutdown = Some(ShutdownInput {
            http: Some("/shutdown".into()),
            ..Default::default()
          })
        },
        "shutdown.http",
      ),
      (|o| o.unhealthy_threshold = Some(0.0), "unhealthyThreshold"),
      (|o| o.health_interval_ms = Some(-1.0), "healthIntervalMs"),
      (
        |o| o.ready = Some(Either::B(ReadyStdoutInput::default())),
        "needs stdout",
      ),
      (
        |o| o.ready = Some(Either::A("tcp".into())),
        "ready must be 'http', 'port', 'notify' or { stdout: pattern }",
      ),
      (
        |o| {
          o.logs = Some(Either::B(LogsInput {
            max_bytes: Some(10.0),
            ..Default::default()
          }))
        },
        "logs.maxBytes",
      ),
    ];
    for (set, expected) in cases {
      let mut given = OptionsInput::default();
      set(&mut given);
      let err = opts(given.clone()).unwrap_err();
      assert!(err.to_string().contains(expected), "{given:?}: {err}");
    }
  }

  #[test]
  fn replicas_restart_by_default_unless_restart_is_given() {
    let o = opts(OptionsInput {
      replicas: Some(2.0),
      ..Default::default()
    })
    .unwrap();
    assert_eq!(o.restart, Some(RestartPolicy::default()));
    let off = opts(OptionsInput {
      replicas: Some(2.0),
      restart: Some(Either::A(false)),
      ..Default::default()
    })
    .unwrap();
    assert_eq!(off.restart, None);
  }

  #[test]
  fn the_defaults_are_the_options_of_an_empty_object() {
    let (parsed, default) = (opts(OptionsInput::default()).unwrap(), Options::default());
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
