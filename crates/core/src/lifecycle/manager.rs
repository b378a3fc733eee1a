//! The public operations on one named backend. Each sends a command to the backend's owner (`task`) and
//! awaits its answer; the reads that do not wait (`backend`, `active`, `stats`) read the `View` the owner
//! published last. The services below the owner (log, events, ports, ends) are the `Context`, which a
//! `Manager` derefs to.

use super::context::Context;
use super::deadlines::Deadlines;
use super::launch::Runtime;
use super::mailbox::{Command, Message, Reply};
use super::owner;
use super::run::Run;
use super::task;
use super::view::View;
use super::{BackendInfo, Events, Stats, StopResult};
use crate::error::{PmError, Result};
use crate::net::health::{self, Secret};
use crate::net::port::{self, Search};
use crate::options::{Options, StartArgs};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

pub struct Manager {
  ctx: Arc<Context>,
  /// The owner's mailbox.
  mailbox: mpsc::UnboundedSender<Message>,
  /// The mailbox's receiving end, and the end the owner publishes its view on, until the owner task
  /// starts (with the first command).
  unowned: Mutex<Option<(mpsc::UnboundedReceiver<Message>, watch::Sender<View>)>>,
  /// What the owner published last.
  view: watch::Receiver<View>,
}

impl std::ops::Deref for Manager {
  type Target = Context;
  fn deref(&self) -> &Context {
    &self.ctx
  }
}

impl Manager {
  pub fn new(options: Options, events: Arc<dyn Events>) -> Arc<Manager> {
    let (mailbox, messages) = mpsc::unbounded_channel();
    let (publish, view) = View::channel();
    Arc::new(Manager {
      ctx: Arc::new(Context::new(options, events)),
      mailbox,
      unowned: Mutex::new(Some((messages, publish))),
      view,
    })
  }

  /// Sends a command at call time (so commands keep the order the app made them in), and answers with
  /// the owner's reply. The owner task starts with the first command, on the runtime that awaits it.
  fn ask<T: Send + 'static>(
    self: &Arc<Self>,
    command: impl FnOnce(Reply<T>) -> Command,
  ) -> impl Future<Output = Option<T>> + Send + 'static {
    let (reply, answer) = oneshot::channel();
    let sent = self.mailbox.send(Message::Command(command(reply))).is_ok();
    let manager = self.clone();
    async move {
      manager.wake_owner();
      match sent {
        true => answer.await.ok(),
        false => None,
      }
    }
  }

  fn wake_owner(&self) {
    let messages = self
      .unowned
      .lock()
      .unwrap_or_else(|e| e.into_inner())
      .take();
    if let Some((messages, publish)) = messages {
      tokio::spawn(task::own(
        self.ctx.clone(),
        self.mailbox.downgrade(),
        messages,
        publish,
      ));
    }
  }

  /// The run that is up (running, or down between an exit and a restart).
  fn up(&self) -> Option<Arc<Run>> {
    self.view.borrow().up()
  }

  /// The running backend, if one is ready (`None` while it is down between an exit and a restart).
  pub fn backend(&self) -> Option<BackendInfo> {
    let (run, slots) = self.view.borrow().up_with_slots()?;
    run.info(&slots)
  }

  /// Something is under way: a start, a running or restarting backend, or a stop.
  pub fn is_active(&self) -> bool {
    self.view.borrow().active()
  }

  /// What the running backend's tree uses now; `None` when it is not running. Health and restarts are
  /// what the owner published; nothing of the owner's is locked or waited for.
  pub fn stats(&self) -> Option<Stats> {
    let (run, slots) = self.view.borrow().up_with_slots()?;
    run.stats(&slots)
  }

  /// The token of the running start, so that `checkBackendHealth` and `waitForBackendReady` are let in —
  /// by the running processes' listeners only.
  fn current_secret(&self) -> Option<Secret> {
    let run = self.up()?;
    let token = run.launch.token.clone();
    owner::secret(token, move || {
      run
        .slots
        .iter()
        .filter_map(|s| s.current())
        .map(|i| i.info.pid)
        .collect()
    })
  }

  pub async fn check_health(&self, port: u16) -> bool {
    health::probe(
      &self.target(port, self.current_secret()),
      self.deadlines.probe,
    )
    .await
    .is_healthy()
  }

  /// One probe of `port` for the dashboard: how it was answered and how long that took. The token goes
  /// only to the running backend's own listener.
  pub async fn probe_health(&self, port: u16) -> (health::ProbeOutcome, Duration) {
    let started = Instant::now();
    let limit = self.deadlines.quick_probe();
    let outcome = health::probe(&self.target(port, self.current_secret()), limit).await;
    (outcome, started.elapsed())
  }

  /// `pm.waitForBackendReady`. Runs alone on a thread of its own (the binding's `promise_on_own_thread`):
  /// on Linux it sleeps on that thread between looks at the port.
  pub async fn wait_for_ready(&self, port: u16, max_retries: u32, retry_delay: Duration) -> bool {
    let mut left = retry_delay.saturating_mul(max_retries);
    loop {
      let (deadline, rest) = Deadlines::part_of(left);
      let ready = health::wait_until_healthy(
        &self.target(port, self.current_secret()),
        self.deadlines.probe,
        deadline,
        retry_delay,
        health::Watch::polling_on_own_thread(),
        || async { true },
      )
      .await
      .is_ok();
      if ready || rest.is_zero() {
        return ready;
      }
      left = rest;
    }
  }

  /// `pm.findAvailablePort(startPort)`: the range is this manager's, and the port stays reserved for it.
  pub fn find_available_port(&self, start_port: Option<u16>) -> Result<u16> {
    let start_port = start_port.unwrap_or(self.options.port);
    let reserved = port::find_available_port(&Search {
      start_port,
      end_port: start_port.saturating_add(self.options.port_range),
      exclude: Vec::new(),
      host: None,
      owner: self.owner,
      handout: true,
    })?;
    let port = reserved.port();
    reserved.hold_until(std::time::Instant::now() + port::RESERVATION);
    Ok(port)
  }

  /// Starts the backend, or joins the start in progress, or returns the running backend. A start asked
  /// for while a stop runs waits for that stop, then starts afresh. With the backend: whether this call
  /// started it (the JS layer emits `ready` for that one, before the call resolves; restarts emit their
  /// own).
  pub fn start(
    self: &Arc<Self>,
    args: StartArgs,
    runtime: Runtime,
  ) -> impl Future<Output = Result<(BackendInfo, bool)>> + Send + 'static {
    let asked = self.ask(|reply| Command::Start {
      args,
      runtime,
      reply,
    });
    async move { asked.await.unwrap_or_else(|| Err(owner_gone())) }
  }

  /// Stops the backend (also one still starting, or down between restarts: then nothing is started
  /// again). `None` when nothing runs.
  pub fn stop(self: &Arc<Self>) -> impl Future<Output = Option<StopResult>> + Send + 'static {
    let asked = self.ask(|reply| Command::Stop { reply });
    async move { asked.await.flatten() }
  }

  /// A stop whose polite part lasts `grace` instead of `stopTimeoutMs` (`stopSync`, for an app that is
  /// quitting). Ends that began earlier keep their own grace; `force_now` ends them.
  pub fn stop_within(
    self: &Arc<Self>,
    grace: Duration,
  ) -> impl Future<Output = Option<StopResult>> + Send + 'static {
    self.ctx.set_stop_grace(Some(grace));
    let stopping = self.stop();
    let ctx = self.ctx.clone();
    async move {
      let result = stopping.await;
      ctx.set_stop_grace(None);
      result
    }
  }

  /// Force-kills the whole tree of every process of the run that is up or being stopped, now: the end of
  /// a bounded stop's grace, for ends that began with a longer one.
  pub fn force_now(&self) {
    let run = self.view.borrow().run.clone();
    if let Some(run) = run {
      run.force_now();
    }
  }

  /// Replaces every process of the running backend with a new one, one at a time (see
  /// `supervisor::replace`): with a front, no request fails. A start in progress is waited for first.
  /// `None` when nothing runs.
  pub fn reload(
    self: &Arc<Self>,
  ) -> impl Future<Output = Result<Option<BackendInfo>>> + Send + 'static {
    let asked = self.ask(|reply| Command::Reload { reply });
    async move { asked.await.unwrap_or_else(|| Err(owner_gone())) }
  }
}

fn owner_gone() -> PmError {
  PmError::Internal("the backend's owner task ended before it answered".into())
}
