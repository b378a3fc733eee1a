//! Events from the core to the JS layer, in order, through one weak thread-safe function (it never keeps
//! Node's event loop alive, docs/design.md §10). Nothing here ever blocks the caller: the queue is unbounded,
//! and output lines — the one kind that can flood — are capped by a count of those not yet delivered.

use crate::lifecycle::{Event, Events, Level};
use crate::os::spawn::Stream;
use napi::bindgen_prelude::Function;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use napi_derive::napi;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Output lines waiting for the JS thread beyond this many are dropped (and counted), so a backend that
/// floods its output can neither block nor grow the app's memory without bound.
const MAX_PENDING_LINES: usize = 4096;

/// One thing that happened to the managed backend.
#[napi(object, use_nullable = true)]
#[derive(Clone, Default)]
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

type Callback = ThreadsafeFunction<ManagerEvent, (), ManagerEvent, Status, false, true, 0>;

pub struct JsEvents {
  callback: Callback,
  pending_lines: Arc<AtomicUsize>,
  dropped_lines: AtomicU64,
}

impl JsEvents {
  pub fn new(on_event: Function<'_, ManagerEvent, ()>) -> napi::Result<JsEvents> {
    let pending_lines = Arc::new(AtomicUsize::new(0));
    let delivered = pending_lines.clone();
    let callback = on_event
      .build_threadsafe_function::<ManagerEvent>()
      .weak::<true>()
      .max_queue_size::<0>()
      .build_callback(move |ctx| {
        if matches!(ctx.value.kind.as_str(), "stdout" | "stderr") {
          delivered.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(ctx.value)
      })?;
    Ok(JsEvents {
      callback,
      pending_lines,
      dropped_lines: AtomicU64::new(0),
    })
  }

  fn send(&self, event: ManagerEvent) {
    self
      .callback
      .call(event, ThreadsafeFunctionCallMode::NonBlocking);
  }

  fn log(&self, level: Level, message: String) {
    self.send(ManagerEvent {
      kind: "log".into(),
      level: Some(
        match level {
          Level::Info => "info",
          Level::Warn => "warn",
        }
        .into(),
      ),
      text: Some(message),
      ..Default::default()
    });
  }
}

impl Events for JsEvents {
  fn line(&self, stream: Stream, text: &str) {
    if self.pending_lines.fetch_add(1, Ordering::Relaxed) >= MAX_PENDING_LINES {
      self.pending_lines.fetch_sub(1, Ordering::Relaxed);
      self.dropped_lines.fetch_add(1, Ordering::Relaxed);
      return;
    }
    self.send(ManagerEvent {
      kind: match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
      }
      .into(),
      text: Some(text.to_string()),
      ..Default::default()
    });
  }

  fn emit(&self, event: Event) {
    match event {
      Event::Log { level, message } => self.log(level, message),
      Event::Exit {
        pid,
        exit,
        expected,
      } => {
        let dropped = self.dropped_lines.swap(0, Ordering::Relaxed);
        if dropped > 0 {
          self.log(
            Level::Warn,
            format!("{dropped} output lines were dropped because the app did not keep up"),
          );
        }
        self.send(ManagerEvent {
          kind: "exit".into(),
          pid: Some(pid),
          exit_code: exit.exit_code,
          signal: exit.signal,
          expected: Some(expected),
          ..Default::default()
        });
      }
    }
  }
}
