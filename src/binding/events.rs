//! Events from the core to the JS layer, in order, through one weak thread-safe function (it never keeps
//! Node's event loop alive, docs/design.md §10). Nothing here ever blocks the caller: the queue is
//! unbounded, and output lines — the one kind that can flood — are capped by a count of those not yet
//! delivered. Each event reaches JS as `{ kind, data }`: `NativeEvent`, whose generated type in
//! `binding.d.ts` is the contract `index.d.ts` builds the public events from (docs/api.md, "Events").

use super::BackendInfo;
use bpm::lifecycle::{self, Event, Events, Level};
use bpm::os::spawn::{ExitInfo, Lines, Stream};
use napi::bindgen_prelude::{Either, Function, Null};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use napi_derive::napi;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Output lines waiting for the JS thread beyond this many are dropped (and counted), so a backend that
/// floods its output can neither block nor grow the app's memory without bound. A line counts once per
/// `PENDING_LINE_BYTES` begun (a line is up to 64 KiB and a mark), which bounds the bytes waiting too.
const MAX_PENDING_LINES: usize = 4096;
const PENDING_LINE_BYTES: usize = 16 * 1024;

/// How many of `MAX_PENDING_LINES` a line of `len` bytes takes.
fn pending_weight(len: usize) -> usize {
  1 + len / PENDING_LINE_BYTES
}

/// Why a backend ended without anyone stopping it, and why it is restarted.
#[napi(string_enum = "lowercase")]
#[derive(Debug, PartialEq, Eq)]
pub enum Reason {
  /// It exited by itself.
  Exit,
  /// The watchdog's probes failed `unhealthyThreshold` times in a row.
  Unhealthy,
  /// Its tree used more memory than `maxMemoryBytes`.
  Memory,
}

impl From<lifecycle::Reason> for Reason {
  fn from(r: lifecycle::Reason) -> Self {
    match r {
      lifecycle::Reason::Exit => Reason::Exit,
      lifecycle::Reason::Unhealthy => Reason::Unhealthy,
      lifecycle::Reason::Memory => Reason::Memory,
    }
  }
}

/// What an `unhealthy` verdict is about: the watchdog's probes (or, for a replica, the balancer taking it
/// out), or the tree's memory. (docs/api.md names the
/// first `'health'` here and `'unhealthy'` as the reason of the `restart`, `failed` and `exit` it leads to.)
#[napi(string_enum = "lowercase")]
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
  Health,
  Memory,
}

#[napi(string_enum = "lowercase")]
#[derive(Debug, PartialEq, Eq)]
pub enum LogLevel {
  Info,
  Warn,
}

/// `T | null` in JS.
fn nullable<T>(value: Option<T>) -> Either<T, Null> {
  value.map_or(Either::B(Null), Either::A)
}

/// Milliseconds to a tenth.
pub fn ms(d: Duration) -> f64 {
  (d.as_secs_f64() * 10_000.0).round() / 10.0
}

#[napi(object)]
pub struct ExitEvent {
  pub pid: u32,
  pub exit_code: Either<i32, Null>,
  pub signal: Either<String, Null>,
  /// False when nobody asked the backend to stop (it crashed, was killed from outside, or a watchdog/memory
  /// verdict stopped it).
  pub expected: bool,
  /// Set when the manager stopped it because of a verdict.
  #[napi(ts_type = "Exclude<Reason, 'exit'>")]
  pub reason: Option<Reason>,
  /// Present on events about one replica: its index.
  pub replica: Option<u32>,
}

#[napi(object)]
pub struct RestartEvent {
  /// Restarts of this run so far, this one included.
  pub attempt: u32,
  pub delay_ms: f64,
  pub reason: Reason,
  /// The process that ended.
  pub pid: u32,
  pub exit_code: Either<i32, Null>,
  pub signal: Either<String, Null>,
  pub replica: Option<u32>,
}

#[napi(object)]
pub struct FailedEvent {
  pub reason: Reason,
  pub restarts: u32,
  pub error: String,
  pub replica: Option<u32>,
}

#[napi(object)]
pub struct UnhealthyEvent {
  pub reason: Verdict,
  pub failures: u32,
  pub error: Either<String, Null>,
  pub memory_bytes: Either<f64, Null>,
  pub replica: Option<u32>,
}

#[napi(object)]
pub struct HealthyEvent {
  pub latency_ms: Either<f64, Null>,
  pub memory_bytes: Either<f64, Null>,
  pub replica: Option<u32>,
}

#[napi(object)]
pub struct PortChangedEvent {
  pub previous: u32,
  pub port: u32,
}

/// What the whole tree of the running backend uses, and how it is doing.
#[napi(object)]
pub struct Stats {
  pub pid: u32,
  /// Percent of one core since the previous sample (0 on the first).
  pub cpu_percent: f64,
  pub memory_bytes: f64,
  pub process_count: u32,
  pub uptime_ms: f64,
  pub restarts: u32,
  pub healthy: bool,
  /// Of the last watchdog or readiness probe.
  pub health_latency_ms: Either<f64, Null>,
  /// With `replicas > 1`: each replica's (the fields above add them up).
  pub replicas: Option<Vec<Stats>>,
}

impl From<lifecycle::Stats> for Stats {
  fn from(s: lifecycle::Stats) -> Self {
    Stats {
      pid: s.pid,
      cpu_percent: s.cpu_percent,
      memory_bytes: s.memory_bytes as f64,
      process_count: s.process_count,
      uptime_ms: s.uptime.as_millis() as f64,
      restarts: s.restarts,
      healthy: s.healthy,
      health_latency_ms: nullable(s.health_latency.map(ms)),
      replicas: (!s.replicas.is_empty()).then(|| s.replicas.into_iter().map(Stats::from).collect()),
    }
  }
}

/// A line for the app's logger.
#[napi(object)]
pub struct LogEvent {
  pub level: LogLevel,
  pub message: String,
}

/// `STATUS=text` on the notify socket (`ready: 'notify'`).
#[napi(object)]
pub struct StatusEvent {
  pub text: String,
  pub replica: Option<u32>,
}

/// Something failed while the backend runs on: `ERR_LOG_WRITE` (log lines dropped: a full disk, an
/// unwritable folder), `ERR_STATE_DIR` (its PID record could not be rewritten).
#[napi(object)]
pub struct WarningEvent {
  #[napi(ts_type = "'ERR_LOG_WRITE' | 'ERR_STATE_DIR'")]
  pub code: String,
  pub message: String,
  /// `ERR_LOG_WRITE`: log lines dropped so far.
  pub dropped: Option<f64>,
}

/// One notification from the core: `kind` names the event, `data` is its payload.
#[napi(
  discriminant = "kind",
  discriminant_case = "kebab-case",
  object_from_js = false
)]
pub enum NativeEvent {
  /// The backend (from a restart), or one replica (with `replica`, after its restart or reload).
  Ready {
    data: BackendInfo,
  },
  Exit {
    data: ExitEvent,
  },
  Stdout {
    data: String,
  },
  Stderr {
    data: String,
  },
  Restart {
    data: RestartEvent,
  },
  Failed {
    data: FailedEvent,
  },
  Unhealthy {
    data: UnhealthyEvent,
  },
  Healthy {
    data: HealthyEvent,
  },
  PortChanged {
    data: PortChangedEvent,
  },
  Stats {
    data: Stats,
  },
  Status {
    data: StatusEvent,
  },
  Warning {
    data: WarningEvent,
  },
  /// For the manager's logger, not emitted.
  Log {
    data: LogEvent,
  },
  /// Nothing is under way any more (the JS layer lets Node exit).
  Idle,
}

fn exit_code(exit: &ExitInfo) -> Either<i32, Null> {
  nullable(exit.exit_code)
}

fn signal(exit: &ExitInfo) -> Either<String, Null> {
  nullable(exit.signal.clone())
}

impl NativeEvent {
  /// The event as the API names it; `replica`: the index of the replica it is about.
  fn of(event: Event, replica: Option<u32>) -> NativeEvent {
    match event {
      Event::Ready(info) => NativeEvent::Ready {
        data: BackendInfo {
          replica,
          ..info.into()
        },
      },
      Event::Exit {
        pid,
        exit,
        expected,
        reason,
      } => NativeEvent::Exit {
        data: ExitEvent {
          pid,
          exit_code: exit_code(&exit),
          signal: signal(&exit),
          expected,
          reason: reason.map(Reason::from),
          replica,
        },
      },
      Event::Restart {
        attempt,
        delay,
        reason,
        pid,
        exit,
      } => NativeEvent::Restart {
        data: RestartEvent {
          attempt,
          delay_ms: ms(delay),
          reason: reason.into(),
          pid,
          exit_code: exit_code(&exit),
          signal: signal(&exit),
          replica,
        },
      },
      Event::Failed {
        reason,
        restarts,
        error,
      } => NativeEvent::Failed {
        data: FailedEvent {
          reason: reason.into(),
          restarts,
          error,
          replica,
        },
      },
      Event::Unhealthy {
        reason,
        failures,
        error,
        memory_bytes,
      } => NativeEvent::Unhealthy {
        data: UnhealthyEvent {
          reason: match reason {
            lifecycle::Reason::Memory => Verdict::Memory,
            lifecycle::Reason::Unhealthy | lifecycle::Reason::Exit => Verdict::Health,
          },
          failures,
          error: nullable(error),
          memory_bytes: nullable(memory_bytes.map(|m| m as f64)),
          replica,
        },
      },
      Event::Healthy {
        latency,
        memory_bytes,
      } => NativeEvent::Healthy {
        data: HealthyEvent {
          latency_ms: nullable(latency.map(ms)),
          memory_bytes: nullable(memory_bytes.map(|m| m as f64)),
          replica,
        },
      },
      Event::PortChanged { previous, port } => NativeEvent::PortChanged {
        data: PortChangedEvent {
          previous: previous.into(),
          port: port.into(),
        },
      },
      Event::Stats(stats) => NativeEvent::Stats { data: stats.into() },
      Event::Idle => NativeEvent::Idle,
      Event::Replica(index, event) => NativeEvent::of(*event, Some(index as u32)),
      Event::Log { level, message } => NativeEvent::Log {
        data: LogEvent {
          level: match level {
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
          },
          message,
        },
      },
      #[cfg(unix)]
      Event::Status { text } => NativeEvent::Status {
        data: StatusEvent { text, replica },
      },
      Event::Warning {
        code,
        message,
        dropped,
      } => NativeEvent::Warning {
        data: WarningEvent {
          code: code.into(),
          message,
          dropped: dropped.map(|d| d as f64),
        },
      },
    }
  }

  /// A line's length, for any other event none.
  fn line_len(&self) -> Option<usize> {
    match self {
      NativeEvent::Stdout { data } | NativeEvent::Stderr { data } => Some(data.len()),
      _ => None,
    }
  }
}

type Callback = ThreadsafeFunction<NativeEvent, (), NativeEvent, Status, false, true, 0>;

pub struct JsEvents {
  callback: Callback,
  pending_lines: Arc<AtomicUsize>,
  dropped_lines: AtomicU64,
  /// Whether the app listens to `stdout` and to `stderr` (the JS layer says when that changes): a line
  /// nobody listens to is not sent to the JS thread, where each one cost a call, a string and an emit.
  listening: [AtomicBool; 2],
}

impl JsEvents {
  pub fn new(on_event: Function<'_, NativeEvent, ()>) -> napi::Result<JsEvents> {
    let pending_lines = Arc::new(AtomicUsize::new(0));
    let delivered = pending_lines.clone();
    let callback = on_event
      .build_threadsafe_function::<NativeEvent>()
      .weak::<true>()
      .max_queue_size::<0>()
      .build_callback(move |ctx| {
        if let Some(len) = ctx.value.line_len() {
          delivered.fetch_sub(pending_weight(len), Ordering::Relaxed);
        }
        Ok(ctx.value)
      })?;
    Ok(JsEvents {
      callback,
      pending_lines,
      dropped_lines: AtomicU64::new(0),
      listening: [AtomicBool::new(false), AtomicBool::new(false)],
    })
  }

  /// Whether the app listens to the lines of stdout, and of stderr.
  pub fn listen(&self, stdout: bool, stderr: bool) {
    self.listening[0].store(stdout, Ordering::SeqCst);
    self.listening[1].store(stderr, Ordering::SeqCst);
  }

  fn send(&self, event: NativeEvent) {
    self
      .callback
      .call(event, ThreadsafeFunctionCallMode::NonBlocking);
  }
}

impl Events for JsEvents {
  fn lines(&self, stream: Stream, lines: &Lines<'_>) {
    let at = match stream {
      Stream::Stdout => 0,
      Stream::Stderr => 1,
    };
    if self.listening[at].load(Ordering::SeqCst) {
      for line in lines.iter() {
        self.line(stream, line);
      }
    }
  }

  fn line(&self, stream: Stream, line: &str) {
    let weight = pending_weight(line.len());
    if self.pending_lines.fetch_add(weight, Ordering::Relaxed) >= MAX_PENDING_LINES {
      self.pending_lines.fetch_sub(weight, Ordering::Relaxed);
      self.dropped_lines.fetch_add(1, Ordering::Relaxed);
      return;
    }
    let data = line.to_string();
    self.send(match stream {
      Stream::Stdout => NativeEvent::Stdout { data },
      Stream::Stderr => NativeEvent::Stderr { data },
    });
  }

  fn emit(&self, event: Event) {
    if matches!(event, Event::Exit { .. }) {
      let dropped = self.dropped_lines.swap(0, Ordering::Relaxed);
      if dropped > 0 {
        self.send(NativeEvent::of(
          Event::Log {
            level: Level::Warn,
            message: format!("{dropped} output lines were dropped because the app did not keep up"),
          },
          None,
        ));
      }
    }
    self.send(NativeEvent::of(event, None));
  }
}
