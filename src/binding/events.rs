//! Events from the core to the JS layer, in order, through one weak thread-safe function (it never keeps
//! Node's event loop alive, docs/design.md §10). Nothing here ever blocks the caller: the queue is
//! unbounded, and output lines — the one kind that can flood — are capped by a count of those not yet
//! delivered. Each event reaches JS as `{ kind, data }`, `data` in the API's names (docs/api.md, "Events").

use super::value::JsPlain;
use crate::lifecycle::{BackendInfo, Event, Events, Level, Reason, Stats};
use crate::options::Value;
use crate::os::spawn::{ExitInfo, Stream};
use napi::bindgen_prelude::Function;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Output lines waiting for the JS thread beyond this many are dropped (and counted), so a backend that
/// floods its output can neither block nor grow the app's memory without bound.
const MAX_PENDING_LINES: usize = 4096;

/// An event on its way to the JS thread.
pub struct Emitted {
  kind: &'static str,
  data: Value,
}

type Callback = ThreadsafeFunction<Emitted, (), JsPlain, Status, false, true, 0>;

pub struct JsEvents {
  callback: Callback,
  pending_lines: Arc<AtomicUsize>,
  dropped_lines: AtomicU64,
}

fn ms(d: Duration) -> Value {
  Value::Number((d.as_secs_f64() * 10_000.0).round() / 10.0)
}

fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
  v.map_or(Value::Null, f)
}

fn num(n: impl Into<f64>) -> Value {
  Value::Number(n.into())
}

fn text(s: impl Into<String>) -> Value {
  Value::String(s.into())
}

pub fn info_value(b: &BackendInfo) -> Value {
  Value::object(vec![
    ("pid", num(b.pid)),
    ("port", num(b.port)),
    ("host", text(&b.host)),
    ("url", text(&b.url)),
    ("startedAt", Value::Number(b.started_at as f64)),
    ("token", b.token.clone().map_or(Value::Undefined, text)),
    (
      "replicas",
      b.replicas.as_ref().map_or(Value::Undefined, |replicas| {
        Value::Array(
          replicas
            .iter()
            .map(|r| {
              Value::object(vec![
                ("pid", num(r.pid)),
                ("port", opt(r.port, num)),
                ("healthy", Value::Bool(r.healthy)),
              ])
            })
            .collect(),
        )
      }),
    ),
  ])
}

pub fn stats_value(s: &Stats) -> Value {
  Value::object(vec![
    ("pid", num(s.pid)),
    ("cpuPercent", Value::Number(s.cpu_percent)),
    ("memoryBytes", Value::Number(s.memory_bytes as f64)),
    ("processCount", num(s.process_count)),
    ("uptimeMs", Value::Number(s.uptime.as_millis() as f64)),
    ("restarts", num(s.restarts)),
    ("healthy", Value::Bool(s.healthy)),
    ("healthLatencyMs", opt(s.health_latency, ms)),
    (
      "replicas",
      match s.replicas.is_empty() {
        true => Value::Undefined,
        false => Value::Array(s.replicas.iter().map(stats_value).collect()),
      },
    ),
  ])
}

fn exit_fields(exit: &ExitInfo) -> [(&'static str, Value); 2] {
  [
    ("exitCode", opt(exit.exit_code, num)),
    ("signal", opt(exit.signal.clone(), text)),
  ]
}

/// The kind and the payload of an event, as the API names them.
fn payload(event: Event) -> Emitted {
  let (kind, data) = match event {
    Event::Ready(info) => ("ready", info_value(&info)),
    Event::Exit {
      pid,
      exit,
      expected,
      reason,
    } => {
      let mut fields = vec![("pid", num(pid))];
      fields.extend(exit_fields(&exit));
      fields.push(("expected", Value::Bool(expected)));
      fields.push((
        "reason",
        reason.map_or(Value::Undefined, |r| text(r.as_str())),
      ));
      ("exit", Value::object(fields))
    }
    Event::Restart {
      attempt,
      delay,
      reason,
      pid,
      exit,
    } => {
      let mut fields = vec![
        ("attempt", num(attempt)),
        ("delayMs", ms(delay)),
        ("reason", text(reason.as_str())),
        ("pid", num(pid)),
      ];
      fields.extend(exit_fields(&exit));
      ("restart", Value::object(fields))
    }
    Event::Failed {
      reason,
      restarts,
      error,
    } => (
      "failed",
      Value::object(vec![
        ("reason", text(reason.as_str())),
        ("restarts", num(restarts)),
        ("error", text(error)),
      ]),
    ),
    Event::Unhealthy {
      reason,
      failures,
      error,
      memory_bytes,
    } => (
      "unhealthy",
      Value::object(vec![
        (
          "reason",
          text(if reason == Reason::Memory {
            "memory"
          } else {
            "health"
          }),
        ),
        ("failures", num(failures)),
        ("error", opt(error, text)),
        (
          "memoryBytes",
          opt(memory_bytes, |m| Value::Number(m as f64)),
        ),
      ]),
    ),
    Event::Healthy {
      latency,
      memory_bytes,
    } => (
      "healthy",
      Value::object(vec![
        ("latencyMs", opt(latency, ms)),
        (
          "memoryBytes",
          opt(memory_bytes, |m| Value::Number(m as f64)),
        ),
      ]),
    ),
    Event::PortChanged { previous, port } => (
      "port-changed",
      Value::object(vec![("previous", num(previous)), ("port", num(port))]),
    ),
    Event::Stats(stats) => ("stats", stats_value(&stats)),
    Event::Idle => ("idle", Value::Null),
    Event::Replica(index, event) => {
      let Emitted { kind, data } = payload(*event);
      let data = match data {
        Value::Object(mut fields) => {
          fields.push(("replica".into(), num(index as u32)));
          Value::Object(fields)
        }
        other => Value::object(vec![("replica", num(index as u32)), ("value", other)]),
      };
      (kind, data)
    }
    Event::Log { level, message } => (
      "log",
      Value::object(vec![
        (
          "level",
          text(match level {
            Level::Info => "info",
            Level::Warn => "warn",
          }),
        ),
        ("message", text(message)),
      ]),
    ),
    #[cfg(unix)]
    Event::Status { text: status } => ("status", Value::object(vec![("text", text(status))])),
    Event::Warning {
      code,
      message,
      dropped,
    } => (
      "warning",
      Value::object(vec![
        ("code", text(code)),
        ("message", text(message)),
        (
          "dropped",
          dropped.map_or(Value::Undefined, |d| Value::Number(d as f64)),
        ),
      ]),
    ),
  };
  Emitted { kind, data }
}

impl JsEvents {
  pub fn new(on_event: Function<'_, JsPlain, ()>) -> napi::Result<JsEvents> {
    let pending_lines = Arc::new(AtomicUsize::new(0));
    let delivered = pending_lines.clone();
    let callback = on_event
      .build_threadsafe_function::<Emitted>()
      .weak::<true>()
      .max_queue_size::<0>()
      .build_callback(move |ctx| {
        let Emitted { kind, data } = ctx.value;
        if matches!(kind, "stdout" | "stderr") {
          delivered.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(JsPlain(Value::object(vec![
          ("kind", text(kind)),
          ("data", data),
        ])))
      })?;
    Ok(JsEvents {
      callback,
      pending_lines,
      dropped_lines: AtomicU64::new(0),
    })
  }

  fn send(&self, emitted: Emitted) {
    self
      .callback
      .call(emitted, ThreadsafeFunctionCallMode::NonBlocking);
  }
}

impl Events for JsEvents {
  fn line(&self, stream: Stream, line: &str) {
    if self.pending_lines.fetch_add(1, Ordering::Relaxed) >= MAX_PENDING_LINES {
      self.pending_lines.fetch_sub(1, Ordering::Relaxed);
      self.dropped_lines.fetch_add(1, Ordering::Relaxed);
      return;
    }
    self.send(Emitted {
      kind: match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
      },
      data: text(line),
    });
  }

  fn emit(&self, event: Event) {
    if matches!(event, Event::Exit { .. }) {
      let dropped = self.dropped_lines.swap(0, Ordering::Relaxed);
      if dropped > 0 {
        self.send(payload(Event::Log {
          level: Level::Warn,
          message: format!("{dropped} output lines were dropped because the app did not keep up"),
        }));
      }
    }
    self.send(payload(event));
  }
}
