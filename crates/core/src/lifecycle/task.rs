//! The owner of one backend: one task that holds its state and takes one message at a time from its
//! mailbox (`mailbox`) — the app's commands, each answered on its own channel, and the inputs the steps
//! below it send (a start's outcome, a process up or down, a watchdog probe or memory sample to take the
//! verdict on, a reload done, the run's end, a stop done), and the end of the one deadline its state
//! armed (a stop's force kill, a restart's backoff). Nothing else changes the state, so calls keep the
//! order the app made them in, and a race between a call and what the backend does is decided by which
//! message came first (docs/design.md §21). What it keeps of each process of the run (the restart
//! policy's book, the health counters: `verdict::Care`) is its own too, in plain fields: it decides whether
//! a process that went down is restarted, after which backoff, or given up on. The work itself (a start,
//! a stop's wait, a reload, a restart once decided) runs in tasks of its own, so the owner always answers
//! at once; each reports back through the mailbox. What the app reads without waiting (`backend`,
//! `active`, `stats`) is the `View` the owner publishes (`view`) before it answers anyone.

use super::context::Context;
use super::deadlines::Deadlines;
use super::launch::Runtime;
use super::mailbox::{self, Command, Deadline, Gone, Input, Mailbox, Message, Reply, Verdict};
use super::run::{Front, Run};
use super::start::{self, Outcome};
use super::supervisor;
use super::verdict::{self, Care, Health};
use super::view::{Phase, View};
use super::{BackendInfo, Event, StopResult};
use super::{Level, Reason};
use crate::error::{PmError, Result};
use crate::options::StartArgs;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// A `startBackend()` call, until it is answered.
struct StartCall {
  args: StartArgs,
  runtime: Runtime,
  reply: Reply<Result<(BackendInfo, bool)>>,
}

/// A backend's state: one of these at a time, changed only by the owner.
enum State {
  /// Nothing runs, and nothing ran since the last stop (or ever).
  Idle,
  /// A start is under way.
  Starting(Starting),
  /// Started and supervised, with a process up.
  Running(Up),
  /// Started, with no process up: a restart's backoff is armed (`Deadline::Restart`), or a restart the
  /// owner ordered is starting a process again.
  Backoff(Up),
  /// A stop is under way.
  Stopping(Stopping),
  /// It ended without a stop (it exited and was not restarted, or its restarts failed).
  Failed,
}

struct Starting {
  id: u64,
  cancel: watch::Sender<bool>,
  /// Who asked for it; the first started it.
  callers: Vec<StartCall>,
  /// `reload()` calls meanwhile: taken up once it is up.
  reloads: Vec<Reply<Result<Option<BackendInfo>>>>,
}

struct Up {
  run: Arc<Run>,
  /// What the owner keeps of each slot of the run (its restart book, its process's health), by index.
  care: Vec<Care>,
  /// Start calls while no process is up: answered when one is up again, or started afresh if the run
  /// ends by itself.
  waiting: Vec<StartCall>,
  /// Processes waiting out a restart's backoff (each replica has its own): the earliest end is the
  /// state's `Restart` deadline.
  restarts: Vec<Restart>,
}

impl Up {
  fn new(run: Arc<Run>, care: Vec<Care>) -> Up {
    Up {
      run,
      care,
      waiting: Vec::new(),
      restarts: Vec::new(),
    }
  }

  /// The backend as the app sees it, with the health the owner keeps of each replica.
  fn info(&self) -> Option<BackendInfo> {
    self.run.info(&self.views())
  }

  fn views(&self) -> Vec<super::run::SlotView> {
    self.care.iter().map(Care::view).collect()
  }

  /// Running while a process is up, else between restarts.
  fn into_state(self) -> State {
    match self.run.any_running() {
      true => State::Running(self),
      false => State::Backoff(self),
    }
  }
}

/// One process's backoff before its restart `attempt`: over at `at` (and `rest` after it, for a wait
/// longer than the clock holds); then its supervisor is told to `go`.
struct Restart {
  at: Instant,
  rest: std::time::Duration,
  attempt: u32,
  go: Reply<u32>,
}

impl Restart {
  fn new(delay: std::time::Duration, attempt: u32, go: Reply<u32>) -> Restart {
    let (at, rest) = Deadlines::part_of(delay);
    Restart {
      at,
      rest,
      attempt,
      go,
    }
  }
}

struct Stopping {
  /// The run being stopped, or `None` for a start being cancelled (`start`: its id).
  run: Option<Arc<Run>>,
  start: Option<u64>,
  stops: Vec<Reply<Option<StopResult>>>,
  /// Callers of the start this stop cancels: rejected when it is done.
  cancelled: Vec<StartCall>,
  /// Start calls that waited for a process to come up again: the stop wins over them.
  overruled: Vec<StartCall>,
  /// Start calls after the stop: a new start once it is done.
  next: Vec<StartCall>,
  reloads: Vec<Reply<Result<Option<BackendInfo>>>>,
}

impl State {
  fn name(&self) -> Phase {
    match self {
      State::Idle => Phase::Idle,
      State::Starting(_) => Phase::Starting,
      State::Running(_) => Phase::Running,
      State::Backoff(_) => Phase::Backoff,
      State::Stopping(_) => Phase::Stopping,
      State::Failed => Phase::Failed,
    }
  }

  /// The run `run` while it is this state's (running, or between restarts).
  fn up_of(&mut self, run: &Arc<Run>) -> Option<&mut Up> {
    match self {
      State::Running(up) | State::Backoff(up) if Arc::ptr_eq(&up.run, run) => Some(up),
      _ => None,
    }
  }

  fn run(&self) -> Option<Arc<Run>> {
    match self {
      State::Running(up) | State::Backoff(up) => Some(up.run.clone()),
      State::Stopping(s) => s.run.clone(),
      _ => None,
    }
  }
}

struct Owner {
  ctx: Arc<Context>,
  /// The owner's own address, for the tasks it starts: weak, so that the mailbox closes (and the owner
  /// ends) once the manager and every task that reports to it are gone.
  mailbox: mpsc::WeakUnboundedSender<Message>,
  /// Where the view is published.
  view: watch::Sender<View>,
  state: State,
  /// The one deadline the state armed, if any.
  armed: Option<(Instant, Deadline)>,
  starts: u64,
}

/// Runs the owner of one backend until its mailbox closes.
pub async fn own(
  ctx: Arc<Context>,
  mailbox: mpsc::WeakUnboundedSender<Message>,
  mut messages: mpsc::UnboundedReceiver<Message>,
  view: watch::Sender<View>,
) {
  let mut owner = Owner {
    ctx,
    mailbox,
    view,
    state: State::Idle,
    armed: None,
    starts: 0,
  };
  loop {
    let message = match owner.armed {
      Some((at, deadline)) => tokio::select! {
        message = messages.recv() => message,
        () = tokio::time::sleep_until(at) => Some(Message::Input(Input::Deadline(deadline))),
      },
      None => messages.recv().await,
    };
    match message {
      Some(Message::Command(command)) => owner.command(command),
      Some(Message::Input(input)) => owner.input(input),
      None => return,
    }
  }
}

fn stopped_while_down() -> PmError {
  PmError::BackendExited {
    message: "stopBackend() was called while the backend was down; it is not started again".into(),
    exit_code: None,
    signal: None,
    stderr_tail: Vec::new(),
  }
}

impl Owner {
  fn mailbox(&self) -> Option<Mailbox> {
    self.mailbox.upgrade()
  }

  /// The one place the state changes: it is published, and `Idle` reported when nothing is under way
  /// any more, before anyone is answered.
  fn set(&mut self, state: State) {
    self.state = state;
    let (was_active, active) = self.publish();
    self.armed = self.deadline();
    if was_active && !active {
      self.ctx.emit(Event::Idle);
    }
  }

  /// Publishes the view of the state (also when only what it keeps of a slot changed); whether something
  /// was under way before, and now.
  fn publish(&self) -> (bool, bool) {
    let view = View {
      phase: self.state.name(),
      run: self.state.run(),
      slots: match &self.state {
        State::Running(up) | State::Backoff(up) => up.views(),
        _ => Vec::new(),
      },
    };
    let active = view.active();
    // What was published before, not `self.state`: a handler takes the state out while it works on it.
    let was_active = self.view.send_replace(view).active();
    (was_active, active)
  }

  /// The deadline a state arms when it is entered: a run's stop its force kill, a run with processes
  /// waiting to be restarted the earliest end of their backoffs (the steps below the owner keep their
  /// own: a try's ready deadline, a stop's grace).
  fn deadline(&self) -> Option<(Instant, Deadline)> {
    match &self.state {
      State::Stopping(Stopping { run: Some(_), .. }) => Some((
        Instant::now() + Deadlines::force_kill_after(self.ctx.stop_timeout()),
        Deadline::ForceKill,
      )),
      State::Running(up) | State::Backoff(up) => up
        .restarts
        .iter()
        .map(|r| r.at)
        .min()
        .map(|at| (at, Deadline::Restart)),
      _ => None,
    }
  }

  fn take(&mut self) -> State {
    std::mem::replace(&mut self.state, State::Idle)
  }

  fn command(&mut self, command: Command) {
    match command {
      Command::Start {
        args,
        runtime,
        reply,
      } => self.start(StartCall {
        args,
        runtime,
        reply,
      }),
      Command::Stop { reply } => self.stop(reply),
      Command::Reload { reply } => self.reload(reply),
    }
  }

  fn start(&mut self, call: StartCall) {
    match &mut self.state {
      State::Idle | State::Failed => self.begin_start(vec![call]),
      State::Starting(starting) => starting.callers.push(call),
      State::Running(up) | State::Backoff(up) => match up.info() {
        Some(info) => {
          let _ = call.reply.send(Ok((info, false)));
        }
        // Down (it exited, maybe to be restarted): answered with its next process, or at its end.
        None => up.waiting.push(call),
      },
      State::Stopping(stopping) => stopping.next.push(call),
    }
  }

  /// A new start, for `callers` (the first one's arguments; it is the one that started it).
  fn begin_start(&mut self, callers: Vec<StartCall>) {
    let Some(first) = callers.first() else {
      return;
    };
    self.starts += 1;
    let id = self.starts;
    let (cancel, cancelled) = watch::channel(false);
    let (ctx, args, runtime) = (self.ctx.clone(), first.args.clone(), first.runtime.clone());
    if let Some(mailbox) = self.mailbox() {
      tokio::spawn(async move {
        let outcome = start::run(&ctx, &args, &runtime, cancelled).await;
        mailbox::report(&mailbox, Input::Started(id, outcome));
      });
    }
    self.set(State::Starting(Starting {
      id,
      cancel,
      callers,
      reloads: Vec::new(),
    }));
  }

  fn stop(&mut self, reply: Reply<Option<StopResult>>) {
    match self.take() {
      state @ (State::Idle | State::Failed) => {
        self.state = state;
        // Lines of an end nobody asked for (an exit without restart) are written by the time it returns.
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
          ctx.flush_log().await;
          let _ = reply.send(None);
        });
      }
      State::Starting(starting) => {
        starting.cancel.send_replace(true);
        self.set(State::Stopping(Stopping {
          run: None,
          start: Some(starting.id),
          stops: vec![reply],
          cancelled: starting.callers,
          overruled: Vec::new(),
          next: Vec::new(),
          reloads: starting.reloads,
        }));
      }
      State::Running(up) | State::Backoff(up) => {
        up.run.stop.send_replace(true);
        // No new connection reaches a replica that is being stopped.
        if let Front::Balanced { balancer, .. } = &up.run.front {
          let balancer = balancer.clone();
          tokio::spawn(async move { balancer.stop_accepting().await });
        }
        self.set(State::Stopping(Stopping {
          run: Some(up.run),
          start: None,
          stops: vec![reply],
          cancelled: Vec::new(),
          overruled: up.waiting,
          next: Vec::new(),
          reloads: Vec::new(),
        }));
      }
      State::Stopping(mut stopping) => {
        stopping.stops.push(reply);
        self.state = State::Stopping(stopping);
        // A bounded stop (`stopSync`) during a longer one brings the force kill forward.
        if let Some((at, name)) = self.deadline() {
          self.armed = Some(self.armed.map_or((at, name), |armed| armed.min((at, name))));
        }
      }
    }
  }

  fn reload(&mut self, reply: Reply<Result<Option<BackendInfo>>>) {
    match &mut self.state {
      State::Running(up) | State::Backoff(up) => {
        let (ctx, run) = (self.ctx.clone(), up.run.clone());
        let Some(mailbox) = self.mailbox() else {
          return;
        };
        tokio::spawn(async move {
          let result = supervisor::reload_all(ctx, run.clone(), None).await;
          mailbox::report(&mailbox, Input::Reloaded { run, result, reply });
        });
      }
      // A start in progress is waited for first.
      State::Starting(starting) => starting.reloads.push(reply),
      State::Stopping(_) | State::Idle | State::Failed => {
        let _ = reply.send(Ok(None));
      }
    }
  }

  fn input(&mut self, input: Input) {
    match input {
      Input::Started(id, outcome) => self.started(id, outcome),
      Input::Up {
        run,
        slot,
        pid,
        latency,
      } => match self.take() {
        State::Running(mut up) | State::Backoff(mut up) if Arc::ptr_eq(&up.run, &run) => {
          if let Some(care) = up.care.get_mut(slot) {
            care.up(pid, latency);
          }
          let mut still = Vec::new();
          for call in std::mem::take(&mut up.waiting) {
            match up.info() {
              Some(info) => {
                let _ = call.reply.send(Ok((info, false)));
              }
              None => still.push(call),
            }
          }
          up.waiting = still;
          self.set(up.into_state());
        }
        other => self.state = other,
      },
      Input::Down {
        run,
        slot,
        gone,
        next,
      } => self.down(&run, slot, gone, next),
      Input::Reloaded { run, result, reply } => {
        let info = match &mut self.state {
          State::Running(up) | State::Backoff(up) if Arc::ptr_eq(&up.run, &run) => up.info(),
          _ => None,
        };
        let _ = reply.send(result.map(|()| info));
      }
      Input::Deadline(Deadline::Restart) => {
        self.armed = None;
        let (State::Running(up) | State::Backoff(up)) = &mut self.state else {
          return;
        };
        let now = Instant::now();
        for restart in std::mem::take(&mut up.restarts) {
          if restart.at > now {
            up.restarts.push(restart);
          } else if restart.rest.is_zero() {
            let _ = restart.go.send(restart.attempt);
          } else {
            up.restarts
              .push(Restart::new(restart.rest, restart.attempt, restart.go));
          }
        }
        let state = self.take();
        self.set(state);
      }
      Input::Probe {
        run,
        slot,
        pid,
        outcome,
        latency,
        verdict: answer,
      } => self.watched(
        &run,
        slot,
        pid,
        Some(Reason::Unhealthy),
        answer,
        |ctx, health| verdict::probe(ctx, health, outcome, latency),
      ),
      Input::Sample {
        run,
        slot,
        pid,
        memory_bytes,
        verdict: answer,
      } => self.watched(
        &run,
        slot,
        pid,
        Some(Reason::Memory),
        answer,
        |ctx, health| verdict::memory(ctx, health, memory_bytes),
      ),
      Input::TakenOut {
        run,
        slot,
        pid,
        why,
        verdict: answer,
      } => self.watched(&run, slot, pid, None, answer, |ctx, health| {
        verdict::taken_out(ctx, health, why)
      }),
      Input::RunEnded(run, result) => match self.take() {
        State::Running(up) | State::Backoff(up) if Arc::ptr_eq(&up.run, &run) => {
          if run.replicated() {
            self.ctx.emit(Event::Failed {
              reason: Reason::Exit,
              restarts: up.care.iter().map(Care::restarts).sum(),
              error: "no replica of the backend is left".into(),
            });
          }
          self.set(State::Failed);
          // It ended by itself (no restart, or its restarts failed): who waited for it starts it afresh.
          self.begin_start(up.waiting);
        }
        State::Stopping(stopping) if matches!(&stopping.run, Some(r) if Arc::ptr_eq(r, &run)) => {
          self.state = State::Stopping(stopping);
          self.stop_done_after_flush(result, Vec::new());
        }
        other => self.state = other,
      },
      Input::Deadline(Deadline::ForceKill) => {
        self.armed = None;
        if let State::Stopping(Stopping { run: Some(run), .. }) = &self.state {
          self.ctx.log(
            Level::Warn,
            format!(
              "the stop is not done {} ms after it began; force-killing what is left of the backend",
              Deadlines::force_kill_after(self.ctx.stop_timeout()).as_millis()
            ),
          );
          run.force_now();
        }
      }
      Input::Stopped {
        stopped,
        stderr_tail,
      } => match self.take() {
        State::Stopping(stopping) => self.finish_stop(stopping, stopped, stderr_tail, None),
        other => self.state = other,
      },
    }
  }

  /// A probe, sample or take-out of the process `pid` in slot `slot` of the run this state holds: `judge`
  /// takes the verdict on the slot's health, which is published, then reported; one that makes the process
  /// unhealthy calls for a restart with `reason` (if any) when the restart policy is on — for a probe of replicas on one socket, a
  /// reload of them all, started here. Anything else (a stop under way, a process that is no longer the
  /// slot's) gets no answer.
  fn watched(
    &mut self,
    run: &Arc<Run>,
    slot: usize,
    pid: u32,
    reason: Option<Reason>,
    answer: Reply<Verdict>,
    judge: impl FnOnce(&Context, &mut Health) -> Option<Event>,
  ) {
    let Some(up) = self.state.up_of(run) else {
      return;
    };
    let Some(care) = up.care.get_mut(slot).filter(|c| c.pid == Some(pid)) else {
      return;
    };
    let replica = run.replicated().then_some(slot);
    let change = judge(&self.ctx, &mut care.health);
    let healthy = care.health.healthy;
    // Published before it is told: an app that reads `stats()` on the event sees the new verdict.
    self.publish();
    let restart = reason.filter(|_| {
      matches!(change, Some(Event::Unhealthy { .. })) && self.ctx.options.restart.is_some()
    });
    if let Some(event) = change {
      self.ctx.emit_for(replica, event);
    }
    let shared = run.socket().is_some() && run.replicated();
    let restart = if restart == Some(Reason::Unhealthy) && shared {
      tokio::spawn(supervisor::reload_all(
        self.ctx.clone(),
        run.clone(),
        Some(Reason::Unhealthy),
      ));
      None
    } else {
      restart
    };
    let _ = answer.send(Verdict { healthy, restart });
  }

  /// The process of slot `slot` of the run this state holds went down without a stop: the restart
  /// policy's book decides (`verdict::down`) — a restart, whose backoff is armed as the `Restart` deadline
  /// and answered on `next` when it is over, or none (`next` is dropped: the slot ends). Down for a run
  /// that is being stopped or is not this state's: nothing is restarted.
  fn down(&mut self, run: &Arc<Run>, slot: usize, gone: Gone, next: Reply<u32>) {
    let Some(up) = self.state.up_of(run) else {
      return;
    };
    let replica = run.replicated().then_some(slot);
    let Some(care) = up.care.get_mut(slot) else {
      return;
    };
    if let Some((attempt, delay)) = verdict::down(&self.ctx, replica, care, gone) {
      up.restarts.push(Restart::new(delay, attempt, next));
    }
    let (State::Running(up) | State::Backoff(up)) = self.take() else {
      return;
    };
    self.set(up.into_state());
  }

  fn started(&mut self, id: u64, outcome: Outcome) {
    match self.take() {
      State::Starting(starting) if starting.id == id => match outcome {
        // It died after the start's own look and before the owner's: it ends as it would have there.
        Outcome::Up(started) if started.first_dead().is_some() => {
          self.state = State::Starting(starting);
          self.died_after_ready(id, started);
        }
        Outcome::Up(started) => {
          let care = started
            .replicas
            .iter()
            .map(|(_, instance, latency)| {
              Care::new(
                self.ctx.options.restart.clone(),
                instance.info.pid,
                *latency,
              )
            })
            .collect();
          let replicas = started
            .replicas
            .into_iter()
            .map(|(port, instance, _)| (port, instance))
            .collect();
          let run = Run::new(
            &self.ctx.options,
            started.launch,
            started.public_port,
            started.front,
            replicas,
          );
          let up = Up::new(run.clone(), care);
          let info = up
            .info()
            .ok_or_else(|| PmError::Internal("a run began without its backend".into()));
          self.set(State::Running(up));
          if let Some(mailbox) = self.mailbox() {
            supervisor::start(self.ctx.clone(), run, mailbox, self.view.subscribe());
          }
          for (index, call) in starting.callers.into_iter().enumerate() {
            let _ = call.reply.send(info.clone().map(|info| (info, index == 0)));
          }
          for reply in starting.reloads {
            self.reload(reply);
          }
        }
        Outcome::Failed(error) => {
          self.set(State::Idle);
          answer_failed(starting.callers, &error);
          for reply in starting.reloads {
            let _ = reply.send(Ok(None));
          }
        }
        Outcome::Cancelled {
          stopped,
          stderr_tail,
        } => {
          self.set(State::Idle);
          answer_failed(
            starting.callers,
            &start::cancelled(stopped.as_ref(), stderr_tail),
          );
          for reply in starting.reloads {
            let _ = reply.send(Ok(None));
          }
        }
      },
      State::Stopping(stopping) if stopping.start == Some(id) => match outcome {
        // A stop came as it became ready: that stop wins.
        Outcome::Up(started) => {
          let ctx = self.ctx.clone();
          let mailbox = self.mailbox();
          self.state = State::Stopping(stopping);
          tokio::spawn(async move {
            let stderr_tail = started.replicas[0].1.child.output.stderr_tail();
            let stopped = start::end_started(&ctx, started, true).await;
            ctx.flush_log().await;
            if let Some(mailbox) = mailbox {
              mailbox::report(
                &mailbox,
                Input::Stopped {
                  stopped,
                  stderr_tail,
                },
              );
            }
          });
        }
        Outcome::Cancelled {
          stopped,
          stderr_tail,
        } => {
          self.state = State::Stopping(stopping);
          self.stop_done_after_flush(stopped, stderr_tail);
        }
        // It failed on its own (its lines are written): its callers hear of that, the stop of nothing.
        Outcome::Failed(error) => self.finish_stop(stopping, None, Vec::new(), Some(error)),
      },
      other => self.state = other,
    }
  }

  /// A start whose process died right after its health check (`started.first_dead()`): its processes are
  /// ended and its lines written, then it comes back as failed.
  fn died_after_ready(&self, id: u64, started: start::Started) {
    let (ctx, Some(mailbox)) = (self.ctx.clone(), self.mailbox()) else {
      return;
    };
    let Some(dead) = started.first_dead() else {
      return;
    };
    tokio::spawn(async move {
      start::end_started(&ctx, started, false).await;
      ctx.flush_log().await;
      let error = start::exited_after_ready(&dead);
      mailbox::report(&mailbox, Input::Started(id, Outcome::Failed(error)));
    });
  }

  /// Once the stop's lines are written (nothing more of it is written after the stop resolves: the app
  /// may remove the folders), the stop is done.
  fn stop_done_after_flush(&self, stopped: Option<StopResult>, stderr_tail: Vec<String>) {
    let ctx = self.ctx.clone();
    let Some(mailbox) = self.mailbox() else {
      return;
    };
    tokio::spawn(async move {
      ctx.flush_log().await;
      mailbox::report(
        &mailbox,
        Input::Stopped {
          stopped,
          stderr_tail,
        },
      );
    });
  }

  /// The stop is done: idle, or the start asked for meanwhile; then everyone is answered.
  fn finish_stop(
    &mut self,
    stopping: Stopping,
    stopped: Option<StopResult>,
    stderr_tail: Vec<String>,
    start_error: Option<PmError>,
  ) {
    let Stopping {
      stops,
      cancelled,
      overruled,
      next,
      reloads,
      ..
    } = stopping;
    if next.is_empty() {
      self.set(State::Idle);
    } else {
      self.begin_start(next);
    }
    let start_error =
      start_error.unwrap_or_else(|| start::cancelled(stopped.as_ref(), stderr_tail));
    answer_failed(cancelled, &start_error);
    answer_failed(overruled, &stopped_while_down());
    for reply in reloads {
      let _ = reply.send(Ok(None));
    }
    for reply in stops {
      let _ = reply.send(stopped.clone());
    }
  }
}

fn answer_failed(calls: Vec<StartCall>, error: &PmError) {
  for call in calls {
    let _ = call.reply.send(Err(error.clone()));
  }
}
