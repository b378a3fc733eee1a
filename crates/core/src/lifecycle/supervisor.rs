//! The supervisors of a started backend: one task per slot (the one process, or each replica) that carries
//! out what happens to it and reports it to the owner — its exit (`Input::Down`), the watchdog's probes and
//! memory samples (`Input::Probe`/`Input::Sample`), `stats` events, a new process up (`Input::Up`) — and
//! does what the owner answers: a restart once the owner's backoff is over (the owner decides on its
//! restart book whether there is one, and when), the end of a process it found unhealthy. One task for the
//! run waits for them all, puts replicas the balancer found refusing back once they answer, and closes the
//! front at the end. Every end of a running process goes through its slot's task, including the one a
//! stop asks for, so nothing is started once a stop has been asked for (docs/design.md §16).

use super::context::Context;
use super::instance::Instance;
use super::mailbox::{self, Gone, Input, Mailbox};
use super::owner;
use super::place::{self, NotUp, Place, Placed, Ports};
use super::run::Reload;
use super::run::{Front, Run, Slot};
use super::verdict;
use super::view::View;
use super::{Event, Level, Reason, StopResult};
use crate::error::{PmError, Result};
use crate::net::health;
use crate::os::spawn::ExitInfo;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// Starts the supervisors of `run`, which is up with its first processes. `view`: what the owner
/// publishes, for the `stats` events.
pub fn start(manager: Arc<Context>, run: Arc<Run>, owner: Mailbox, view: watch::Receiver<View>) {
  tokio::spawn(async move {
    let mut slots = JoinSet::new();
    for slot in &run.slots {
      let (manager, run, slot, owner) = (manager.clone(), run.clone(), slot.clone(), owner.clone());
      let view = view.clone();
      slots.spawn(async move {
        let result = supervise(&manager, &run, &slot, &owner, &view).await;
        slot.release_port();
        (slot.index, result)
      });
    }
    let put_back = tokio::spawn(put_back_taken_out(
      manager.clone(),
      run.clone(),
      owner.clone(),
    ));
    let mut results: Vec<(usize, Option<StopResult>)> = Vec::new();
    while let Some(joined) = slots.join_next().await {
      match joined {
        Ok(result) => results.push(result),
        Err(e) => manager.log(Level::Warn, format!("a supervisor ended abnormally: {e}")),
      }
    }
    put_back.abort();
    close_front(&run).await;
    results.sort_by_key(|(index, _)| *index);
    let result = StopResult::combine(
      results.into_iter().filter_map(|(_, r)| r).collect(),
      run.replicated(),
    );
    mailbox::report(&owner, Input::RunEnded(run.clone(), result));
  });
}

/// Reloads every slot of `run` in turn (`reason`: a watchdog verdict, for replicas on one socket). A slot
/// with no process now (down between restarts, or for good) is left to its supervisor.
pub async fn reload_all(
  manager: Arc<Context>,
  run: Arc<Run>,
  reason: Option<Reason>,
) -> Result<()> {
  let _one_at_a_time = run.reloading.lock().await;
  for slot in &run.slots {
    if run.stop_requested() {
      break;
    }
    if let Err(e) = slot.reload(reason).await {
      manager.log_for(
        run.replicated().then_some(slot.index),
        Level::Warn,
        format!("reload failed: {e}"),
      );
      return Err(e);
    }
  }
  Ok(())
}

/// The front stops taking connections once no replica is left (a stop has already stopped accepting).
async fn close_front(run: &Run) {
  run.front.close(Instant::now()).await;
}

enum Ended {
  Stop,
  Exit,
  Verdict(Reason),
  Reload(Reload),
}

async fn stop_asked(stop: &mut watch::Receiver<bool>) {
  let _ = stop.wait_for(|s| *s).await;
}

async fn supervise(
  manager: &Arc<Context>,
  run: &Arc<Run>,
  slot: &Arc<Slot>,
  owner: &Mailbox,
  view: &watch::Receiver<View>,
) -> Option<StopResult> {
  let mut stop = run.stop.subscribe();
  let mut reloads = slot.take_reloads()?;
  // The slot's restarts so far, as the owner numbered them, for the records of its new processes.
  let mut restarts = 0;
  loop {
    let instance = slot.current()?;
    let ended = tokio::select! {
      biased;
      _ = stop_asked(&mut stop) => Ended::Stop,
      _ = instance.child.exited() => Ended::Exit,
      Some(request) = reloads.recv() => Ended::Reload(request),
      reason = watchdog(manager, run, slot, &instance, owner, view) => Ended::Verdict(reason),
    };
    let replica = run.replica(slot);
    let gone = match ended {
      Ended::Stop => {
        let result = manager.end(&instance, true, None, replica).await;
        run.went_down(slot);
        return Some(result);
      }
      Ended::Exit => {
        let result = manager.end(&instance, false, None, replica).await;
        run.went_down(slot);
        Gone::Exited {
          pid: instance.info.pid,
          exit: result.exit,
          reason: Reason::Exit,
        }
      }
      Ended::Verdict(reason) => {
        let result = manager.end(&instance, true, Some(reason), replica).await;
        run.went_down(slot);
        Gone::Exited {
          pid: instance.info.pid,
          exit: result.exit,
          reason,
        }
      }
      Ended::Reload(request) => {
        let replaced = replace(
          manager,
          run,
          slot,
          &instance,
          &mut stop,
          (request.reason, restarts),
          owner,
        )
        .await;
        match replaced {
          Replaced::Done => {
            let _ = request.reply.send(Ok(()));
            continue;
          }
          Replaced::Kept(error) => {
            let _ = request.reply.send(Err(error));
            continue;
          }
          Replaced::Stopped(result) => {
            let _ = request.reply.send(Err(stopped_during_reload()));
            return result;
          }
          Replaced::Down(gone, error) => {
            let _ = request.reply.send(Err(error));
            gone
          }
        }
      }
    };
    if let Some(result) = recover(manager, run, slot, gone, &mut stop, owner, &mut restarts).await {
      return result;
    }
  }
}

fn stopped_during_reload() -> PmError {
  PmError::BackendExited {
    message: "stopBackend() was called during reload(); the backend has been stopped".into(),
    exit_code: None,
    signal: None,
    stderr_tail: Vec::new(),
  }
}

/// After a process went down without a stop: tells the owner, and restarts when it says so, until one is
/// up (`None`), or ends the slot (`Some`: what a stop meanwhile stopped, if one came) when the owner
/// restarts it no more (no policy, too many restarts, a stop first). Each backoff is waited out by the
/// owner; `restarts` is the owner's count, for the records.
async fn recover(
  manager: &Arc<Context>,
  run: &Arc<Run>,
  slot: &Arc<Slot>,
  gone: Gone,
  stop: &mut watch::Receiver<bool>,
  owner: &Mailbox,
  restarts: &mut u32,
) -> Option<Option<StopResult>> {
  let mut gone = gone;
  loop {
    let (next, told) = oneshot::channel();
    mailbox::report(
      owner,
      Input::Down {
        run: run.clone(),
        slot: slot.index,
        gone,
        next,
      },
    );
    let attempt = tokio::select! {
      biased;
      _ = stop_asked(stop) => return Some(None),
      told = told => match told {
        Ok(attempt) => attempt,
        Err(_) => return Some(None),
      },
    };
    *restarts = attempt;
    gone = match restart_once(manager, run, slot, attempt, stop, owner).await {
      Restarted::Up => return None,
      Restarted::Stopped(result) => return Some(result),
      Restarted::Exited { pid, exit } => Gone::Exited {
        pid,
        exit,
        reason: Reason::Exit,
      },
      Restarted::Fatal(error) => Gone::Unstartable(error),
    };
  }
}

enum Replaced {
  /// The new process is in, the old one stopped.
  Done,
  /// The new process could not be started; the old one runs on.
  Kept(PmError),
  /// A stop came meanwhile: what it stopped.
  Stopped(Option<StopResult>),
  /// The old process was stopped first (one process on its own port) and the new one did not come up.
  Down(Gone, PmError),
}

/// A reload of one slot (`why`: its reason, and the slot's restarts so far, for the record). Behind the
/// balancer or on the shared socket, the new process starts beside the old one, which is put out (drained,
/// with the balancer) and stopped once the new one is in; a process on its own port is stopped first, then
/// started again on that port.
async fn replace(
  manager: &Arc<Context>,
  run: &Arc<Run>,
  slot: &Arc<Slot>,
  old: &Arc<Instance>,
  stop: &mut watch::Receiver<bool>,
  (reason, restarts): (Option<Reason>, u32),
  owner: &Mailbox,
) -> Replaced {
  let replica = run.replica(slot);
  if let Front::Direct = run.front {
    let result = manager.end(old, true, reason, replica).await;
    run.went_down(slot);
    return match restart_once(manager, run, slot, restarts, stop, owner).await {
      Restarted::Up => Replaced::Done,
      Restarted::Stopped(stopped) => Replaced::Stopped(stopped.or(Some(result))),
      Restarted::Exited { pid, exit } => {
        let error = PmError::BackendExited {
          message: format!(
            "the reloaded backend exited with {} before it became healthy",
            exit.describe()
          ),
          exit_code: exit.exit_code,
          signal: exit.signal.clone(),
          stderr_tail: Vec::new(),
        };
        let gone = Gone::Exited {
          pid,
          exit,
          reason: Reason::Exit,
        };
        Replaced::Down(gone, error)
      }
      Restarted::Fatal(error) => {
        let gone = Gone::Exited {
          pid: old.info.pid,
          exit: result.exit,
          reason: Reason::Exit,
        };
        Replaced::Down(gone, error)
      }
    };
  }
  let mut launch = run.launch.clone();
  let placed = place::place(
    manager,
    &mut launch,
    &place_of(run, slot, false),
    stop,
    restarts,
    false,
  )
  .await;
  let (instance, latency, reservation) = match placed {
    Ok(Placed::Up(instance, latency, reserved)) => (instance, latency, reserved),
    Ok(Placed::NotUp(NotUp::Cancelled { .. })) => {
      let result = manager.end(old, true, None, replica).await;
      run.went_down(slot);
      return Replaced::Stopped(Some(result));
    }
    Ok(Placed::NotUp(NotUp::Failed { error, .. })) | Err(error) => return Replaced::Kept(error),
  };
  let old_upstream = slot.upstream();
  if let Some(reserved) = reservation {
    slot.set_port(reserved);
  }
  run.went_up(slot, instance.clone(), true);
  manager.emit_for(replica, Event::Ready(ready_info(run, &instance)));
  report_up(owner, run, slot, &instance, latency);
  if let Front::Balanced { balancer, .. } = &run.front {
    let open = balancer
      .drain(old_upstream, Instant::now() + manager.deadlines.stop)
      .await;
    balancer.remove(old_upstream);
    if open > 0 {
      manager.log_for(
        replica,
        Level::Warn,
        format!(
          "{open} connections to backend pid {} were still open after stopTimeoutMs; it is stopped anyway",
          old.info.pid
        ),
      );
    }
  }
  manager.end(old, true, reason, replica).await;
  Replaced::Done
}

/// What `ready` carries for a process of the run: the backend as the app sees it, or the replica.
fn ready_info(run: &Run, instance: &Instance) -> super::BackendInfo {
  match run.replicated() {
    true => instance.info.clone(),
    // One process: no replicas, so no health in it.
    false => run.info(&[]).unwrap_or_else(|| instance.info.clone()),
  }
}

/// Tells the owner that `instance` is the slot's process now, ready after a probe of `latency`.
fn report_up(owner: &Mailbox, run: &Arc<Run>, slot: &Slot, instance: &Instance, latency: Duration) {
  mailbox::report(
    owner,
    Input::Up {
      run: run.clone(),
      slot: slot.index,
      pid: instance.info.pid,
      latency,
    },
  );
}

enum Restarted {
  Up,
  /// A stop came during the restart: what it stopped.
  Stopped(Option<StopResult>),
  /// The new process ended before it was healthy: another unexpected exit.
  Exited {
    pid: u32,
    exit: ExitInfo,
  },
  /// It cannot be started at all (spawn failed, state folder unusable): no point trying again.
  Fatal(PmError),
}

/// One restart of a slot: on its kept port if still free, else on another (`port-changed`); with a
/// shared socket, on that socket.
async fn restart_once(
  manager: &Arc<Context>,
  run: &Arc<Run>,
  slot: &Slot,
  attempt: u32,
  stop: &mut watch::Receiver<bool>,
  owner: &Mailbox,
) -> Restarted {
  let mut launch = run.launch.clone();
  let place = place_of(run, slot, true);
  match place::place(manager, &mut launch, &place, stop, attempt, false).await {
    Ok(Placed::Up(instance, latency, reserved)) => {
      if let Some(reserved) = reserved {
        slot.set_port(reserved);
      }
      run.went_up(slot, instance.clone(), false);
      manager.emit_for(run.replica(slot), Event::Ready(ready_info(run, &instance)));
      report_up(owner, run, slot, &instance, latency);
      Restarted::Up
    }
    Ok(Placed::NotUp(NotUp::Cancelled { stopped, .. })) => Restarted::Stopped(stopped),
    Ok(Placed::NotUp(NotUp::Failed { pid, exit, .. })) => Restarted::Exited { pid, exit },
    Err(e) => Restarted::Fatal(e),
  }
}

/// Where a new process of `slot` goes: on the manager's socket; or on a port of its own — the slot's
/// port again while it is free (`keep`: a restart), or a fresh one beside the old process (a reload).
fn place_of(run: &Run, slot: &Slot, keep: bool) -> Place {
  let keep = slot.port().filter(|_| keep);
  let ports = match (run.socket(), &run.front) {
    (Some(socket), _) => Ports::Shared(run.public_port, socket),
    (None, Front::Direct) => Ports::Range { keep },
    (None, _) => Ports::Internal { keep },
  };
  Place::new(
    ports,
    run.replicated().then_some((run.public_port, slot.index)),
  )
}

/// Replicas the balancer took out (a refused or reset connection, or frozen): the owner takes the verdict
/// (`unhealthy`), then each is probed every second (the watchdog does it too, when there is one) and
/// put back through the owner (`healthy`) once it answers.
async fn put_back_taken_out(manager: Arc<Context>, run: Arc<Run>, owner: Mailbox) {
  let Front::Balanced { balancer, .. } = &run.front else {
    return;
  };
  let Some(mut failures) = balancer.take_failures() else {
    return;
  };
  while let Some((id, why)) = failures.recv().await {
    let Some(slot) = run.slots.iter().find(|s| s.upstream() == id).cloned() else {
      continue;
    };
    let Some(instance) = slot.current() else {
      continue;
    };
    let (manager, run, owner) = (manager.clone(), run.clone(), owner.clone());
    let balancer = balancer.clone();
    tokio::spawn(async move {
      let pid = instance.info.pid;
      let (verdict, taken) = oneshot::channel();
      let (slot_index, watched) = (slot.index, run.clone());
      mailbox::report(
        &owner,
        Input::TakenOut {
          run: watched,
          slot: slot_index,
          pid,
          why,
          verdict,
        },
      );
      // No answer: a stop came first, or the owner does not hold the process yet (or any more).
      if let Ok(said) = taken.await {
        verdict::keep(&manager, &run, &slot, &instance, said.healthy).await;
      }
      let secret = owner::secret(instance.info.token.clone(), move || vec![pid]);
      let target = manager.target(instance.info.port, secret);
      loop {
        tokio::time::sleep(manager.deadlines.put_back).await;
        let still = slot.current().is_some_and(|i| i.info.pid == pid);
        if !still || slot.upstream() != id || run.stop_requested() {
          return;
        }
        let began = Instant::now();
        let outcome = health::probe(&target, manager.deadlines.probe).await;
        if !outcome.is_healthy() {
          continue;
        }
        let latency = began.elapsed();
        let (verdict, taken) = oneshot::channel();
        let watched = run.clone();
        mailbox::report(
          &owner,
          Input::Probe {
            run: watched,
            slot: slot_index,
            pid,
            outcome,
            latency,
            verdict,
          },
        );
        match taken.await {
          Ok(said) => verdict::keep(&manager, &run, &slot, &instance, said.healthy).await,
          Err(_) => balancer.set_healthy(id, true),
        }
        return;
      }
    });
  }
}

/// Waits for the next tick of an optional timer (forever without one).
async fn tick(timer: &mut Option<Interval>) {
  match timer {
    Some(t) => {
      t.tick().await;
    }
    None => std::future::pending().await,
  }
}

fn every(period: Option<Duration>) -> Option<Interval> {
  period.map(|p| {
    let mut timer = tokio::time::interval_at(Instant::now() + p, p);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
  })
}

/// Watches one running process: health probes every `healthIntervalMs`, memory (and `stats` events)
/// every `statsIntervalMs` (or every second with only `maxMemoryBytes`). Each result goes to the owner
/// (`Input::Probe`, `Input::Sample`), which takes the verdict (and reports `unhealthy` and `healthy`);
/// this keeps it in the record and the balancer, and resolves only when the owner calls for a restart
/// (the restart policy is on), never otherwise.
async fn watchdog(
  manager: &Arc<Context>,
  run: &Arc<Run>,
  slot: &Slot,
  instance: &Instance,
  owner: &Mailbox,
  view: &watch::Receiver<View>,
) -> Reason {
  let o = &manager.options;
  let pid = instance.info.pid;
  let target = manager.target(
    instance.info.port,
    owner::secret(instance.info.token.clone(), move || vec![pid]),
  );
  // Replicas on one socket: a probe reaches whichever accepts, so one slot probes for them all, and its
  // verdict replaces them all one by one (as a reload, which the owner starts).
  let shared = run.socket().is_some() && run.replicated();
  let mut probes = every(
    manager
      .deadlines
      .watchdog
      .filter(|_| !shared || slot.index == 0),
  );
  let mut samples = every(manager.deadlines.samples);
  // With replicas, `stats` events are the run's: the first slot with a running process sends them.
  let sends_stats = || {
    o.stats_interval.is_some()
      && run
        .slots
        .iter()
        .find(|s| s.running().is_some())
        .map(|s| s.index)
        == Some(slot.index)
  };
  loop {
    let (verdict, taken) = oneshot::channel();
    let (watched, slot_index) = (run.clone(), slot.index);
    tokio::select! {
      _ = tick(&mut probes) => {
        let began = Instant::now();
        let outcome = health::probe(&target, manager.deadlines.probe).await;
        let latency = began.elapsed();
        mailbox::report(owner, Input::Probe { run: watched, slot: slot_index, pid, outcome, latency, verdict });
      }
      _ = tick(&mut samples) => {
        if sends_stats() {
          // Health and restarts as the owner published them.
          let slots = view.borrow().slots_of(run);
          if let Some(stats) = slots.and_then(|slots| run.stats(&slots)) {
            manager.emit(Event::Stats(stats));
          }
        }
        let memory_bytes = crate::os::tree::usage(&crate::os::tree::with_descendants(pid)).memory_bytes;
        mailbox::report(owner, Input::Sample { run: watched, slot: slot_index, pid, memory_bytes, verdict });
      }
    }
    // The owner answers unless a stop or the process's end came first (then this is dropped).
    let Ok(said) = taken.await else {
      return std::future::pending().await;
    };
    verdict::keep(manager, run, slot, instance, said.healthy).await;
    if let Some(reason) = said.restart {
      return reason;
    }
  }
}
