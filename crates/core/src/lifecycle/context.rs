//! What every step of a backend's life uses, below its owner (`task`): the options, the events and the
//! log, where the backend is reached, and how one process is ended. It holds no state of the lifecycle:
//! that is the owner's alone.

use super::deadlines::Deadlines;
use super::instance::{EndReport, Instance};
use super::owner;
use super::platform;
use super::{Event, Events, Level, Reason, StopResult};
use crate::blocking;
use crate::error::{PmError, Result};
use crate::logs::{Log, LogStream, LogWarning, Redactor};
use crate::net::health::{self, Secret, Target};
use crate::net::reservation::Owner;
use crate::options::Options;
use crate::os::spawn::{Lines, Stream};
use crate::os::stop::Polite;
use crate::state::orphans::{self, CleanupAction};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Context {
  pub options: Options,
  /// Every time limit, from the options.
  pub deadlines: Deadlines,
  /// Reservations made by this manager (its `findAvailablePort` included) never block its own start.
  pub owner: Owner,
  events: Arc<dyn Events>,
  /// The grace of a stop whose caller bounds it (`stopSync`), instead of `stopTimeoutMs`.
  stop_grace: Mutex<Option<Duration>>,
  /// The log file (`logs` option), and the secrets its lines are cleaned of: the current start's.
  log_file: Option<Arc<Log>>,
  redactor: Mutex<Arc<Redactor>>,
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

impl Context {
  pub fn new(options: Options, events: Arc<dyn Events>) -> Context {
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
    Context {
      log_file,
      redactor: Mutex::new(Arc::new(Redactor::default())),
      deadlines: Deadlines::new(&options),
      options,
      owner: Owner::new(),
      events,
      stop_grace: Mutex::new(None),
    }
  }

  /// A line of the manager's own about the backend (its log file's `pm 0` line, and a `log` event).
  pub fn log(&self, level: Level, message: impl Into<String>) {
    self.log_for(None, level, message);
  }

  /// A line of the manager's own about replica `replica` (`pm <index>` in the log file), or about the
  /// backend (`None`: `pm 0`).
  pub fn log_for(&self, replica: Option<usize>, level: Level, message: impl Into<String>) {
    let message = message.into();
    if let Some(file) = &self.log_file {
      file.line(
        LogStream::Manager,
        replica.unwrap_or(0),
        &message,
        &self.redactor(),
      );
    }
    self.events.emit(Event::Log { level, message });
  }

  /// What the log's lines are cleaned of: the secrets of the start under way or running.
  pub fn redactor(&self) -> Arc<Redactor> {
    self
      .redactor
      .lock()
      .unwrap_or_else(|e| e.into_inner())
      .clone()
  }

  /// The secrets the log is cleaned of: a new start's (its token, its secret-looking environment); within
  /// a start, a renewed token joins the one it replaced (which may still show up in a line).
  pub fn learn_secrets(&self, launch: &super::launch::Launch, same_start: bool) {
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
  pub fn record_not_updated(&self, instance: &Instance, error: &PmError) {
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

  pub fn emit(&self, event: Event) {
    self.events.emit(event);
  }

  /// Emits an event about one replica (`Some(index)`) or about the backend.
  pub fn emit_for(&self, replica: Option<usize>, event: Event) {
    match replica {
      Some(index) => self.emit(Event::Replica(index, Box::new(event))),
      None => self.emit(event),
    }
  }

  /// Lines of the backend's output (of replica `replica`, 0 for a single process), those of one read.
  pub fn lines(&self, stream: Stream, replica: usize, lines: &Lines<'_>, redactor: &Redactor) {
    if let Some(file) = &self.log_file {
      let stream = match stream {
        Stream::Stdout => LogStream::Out,
        Stream::Stderr => LogStream::Err,
      };
      match lines.as_read() {
        Some(text) => file.text(stream, replica, text, redactor),
        None => file.lines(stream, replica, &lines.iter().collect::<Vec<_>>(), redactor),
      }
    }
    self.events.lines(stream, lines);
  }

  pub fn target(&self, port: u16, secret: Option<Secret>) -> Target {
    Target {
      host: reachable(self.options.host),
      port,
      path: self.options.health_path.clone(),
      secret,
    }
  }

  /// Terminates orphaned backends of this name; deletes stale and broken records. True when one was
  /// terminated.
  pub async fn kill_existing(&self) -> Result<bool> {
    let dir = self.options.state_dir.clone();
    let name = self.options.name.clone();
    let grace = self.deadlines.stop;
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
  pub fn stop_timeout(&self) -> Duration {
    self
      .stop_grace
      .lock()
      .unwrap_or_else(|e| e.into_inner())
      .unwrap_or(self.deadlines.stop)
  }

  /// Sets (`Some`) or clears the grace of a bounded stop (`stopSync`).
  pub fn set_stop_grace(&self, grace: Option<Duration>) {
    *self.stop_grace.lock().unwrap_or_else(|e| e.into_inner()) = grace;
  }

  /// The polite stop requests of the `shutdown` option, for one instance.
  fn polite(&self, instance: &Instance) -> Polite {
    let request = self.options.shutdown.http.clone().map(|(method, path)| {
      let pid = instance.info.pid;
      let secret = owner::secret(instance.info.token.clone(), move || vec![pid]);
      let target = self.target(instance.info.port, secret);
      let limit = Deadlines::polite_step(self.stop_timeout());
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
  pub async fn end(
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
      self.log_for(replica, Level::Info, format!("stopping backend pid {pid}"));
    }
    let stop_timeout = self.stop_timeout();
    let ended = instance.end(stop_timeout, self.polite(instance)).await;
    // Its last lines (a flooded pipe holds up to 1 MiB written before it ended) are read before the stop
    // is reported, so they reach the log before the stop's own line and its flush; a grandchild that
    // keeps the pipes open is not waited for longer than this.
    instance
      .child
      .output
      .wait_closed(self.deadlines.output_drain)
      .await;
    let result = ended.result;
    // Reported once, by the call that ended it, before that call returns.
    if let Some(EndReport {
      asked,
      delete_error,
    }) = ended.report
    {
      if let Some(problem) = delete_error {
        self.log_for(replica, Level::Warn, problem);
      }
      if result.forced {
        self.log_for(
          replica,
          Level::Warn,
          format!(
            "backend pid {pid} did not stop within {} ms; force-killed its process group",
            stop_timeout.as_millis()
          ),
        );
      }
      if !result.survivors.is_empty() {
        self.log_for(replica,
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
        (true, _) => self.log_for(
          replica,
          Level::Info,
          format!("backend pid {pid} stopped ({describe})"),
        ),
        (false, Some(r)) => self.log_for(
          replica,
          Level::Warn,
          format!(
            "backend pid {pid} stopped because it was {} ({describe})",
            match r {
              Reason::Memory => "over its memory limit",
              _ => "unhealthy",
            }
          ),
        ),
        (false, None) => self.log_for(
          replica,
          Level::Warn,
          format!("backend pid {pid} exited unexpectedly ({describe})"),
        ),
      }
      self.emit_for(
        replica,
        Event::Exit {
          pid,
          exit: result.exit.clone(),
          expected,
          reason,
        },
      );
    }
    result
  }

  /// Waits until every log line queued so far is written (or dropped). Off the async workers.
  pub async fn flush_log(&self) {
    if let Some(log) = self.log_file.clone() {
      let _ = blocking::run(move || log.flush()).await;
    }
  }

  /// After each spawn: logs what the spawn could not do (Windows: no job object), and warns when the
  /// priority or limits asked for could not be applied (raising either needs a privilege the app may not
  /// have).
  pub fn check_spawn_settings(&self, child: &crate::os::spawn::Child) {
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
    if !platform::LIMITS_APPLY && (o.limits.open_files.is_some() || o.limits.core_dumps.is_some()) {
      self.log(Level::Warn, "limits are not applied on Windows");
    }
  }
}
