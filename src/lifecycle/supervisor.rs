//! The supervisor of a started backend: one task per run (from a successful `startBackend()` to its stop
//! or final failure) that owns what happens to it — its exit, the watchdog's and the memory limit's
//! verdicts, `stats` events, and the restarts of the restart policy with their backoff. Every end of the
//! running process goes through this task, including the one a stop asks for, so nothing is started once a
//! stop has been asked for (docs/design.md §16).

use super::attempt::{self, Attempt};
use super::instance::Instance;
use super::launch::Launch;
use super::manager::{port_lost, Manager, ADDRESS_IN_USE_RETRIES};
use super::restart::{Decision, RestartBook};
use super::{BackendInfo, Event, Level, Reason, Stats, StopResult};
use crate::error::{PmError, Result};
use crate::net::health::{self, ProbeOutcome};
use crate::net::reservation::Reservation;
use crate::options::Options;
use crate::os::spawn::ExitInfo;
use crate::os::tree;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// How the backend is doing, as the watchdog and the memory sampler see it.
#[derive(Default)]
struct Health {
  healthy: bool,
  /// Watchdog probes failed in a row.
  failures: u32,
  /// Of the last watchdog or readiness probe.
  latency: Option<Duration>,
  /// `unhealthy` was reported for failed probes, and not yet `healthy`.
  reported_probes: bool,
  /// `unhealthy` was reported for memory, and not yet `healthy`.
  reported_memory: bool,
  /// Since when the current process has been healthy.
  healthy_since: Option<Instant>,
}

/// The previous CPU sample, for the rate since then.
struct CpuSample {
  pid: u32,
  at: Instant,
  cpu: Duration,
}

/// One supervised run of the backend.
pub struct Run {
  pub launch: Launch,
  /// The port, held across restarts (docs/api.md: the app's URL stays valid).
  port: Mutex<Option<Reservation>>,
  /// The running process; `None` while down between an exit and a restart.
  current: Mutex<Option<Arc<Instance>>>,
  /// Set by a stop: the supervisor ends the process and starts nothing more.
  stop: watch::Sender<bool>,
  /// The supervisor's last word: what the stop stopped (`None`: nothing ran).
  done: watch::Sender<Option<Option<StopResult>>>,
  /// While down: the outcome of the restart (a start asked for meanwhile waits for it).
  ready: watch::Sender<Option<Result<BackendInfo>>>,
  book: Option<Mutex<RestartBook>>,
  health: Mutex<Health>,
  cpu: Mutex<Option<CpuSample>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
  m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Run {
  pub fn new(
    options: &Options,
    launch: Launch,
    port: Reservation,
    instance: Arc<Instance>,
    latency: Duration,
  ) -> Arc<Run> {
    let run = Arc::new(Run {
      launch,
      port: Mutex::new(Some(port)),
      current: Mutex::new(None),
      stop: watch::channel(false).0,
      done: watch::channel(None).0,
      ready: watch::channel(None).0,
      book: options
        .restart
        .clone()
        .map(|p| Mutex::new(RestartBook::new(p))),
      health: Mutex::new(Health::default()),
      cpu: Mutex::new(None),
    });
    run.went_up(instance, latency);
    run
  }

  pub fn current(&self) -> Option<Arc<Instance>> {
    lock(&self.current).clone()
  }

  pub fn restarts(&self) -> u32 {
    self.book.as_ref().map_or(0, |b| lock(b).total())
  }

  /// Resolves with the backend once it is up again (or the error that keeps it down).
  pub fn next_ready(&self) -> watch::Receiver<Option<Result<BackendInfo>>> {
    self.ready.subscribe()
  }

  pub fn request_stop(&self) {
    self.stop.send_replace(true);
  }

  /// Resolves once the supervisor has ended the run after a stop: what it stopped.
  pub async fn stopped(&self) -> Option<StopResult> {
    let mut done = self.done.subscribe();
    done
      .wait_for(Option::is_some)
      .await
      .ok()
      .and_then(|d| d.clone())
      .flatten()
  }

  fn went_up(&self, instance: Arc<Instance>, latency: Duration) {
    let info = instance.info.clone();
    *lock(&self.current) = Some(instance);
    *lock(&self.health) = Health {
      healthy: true,
      latency: Some(latency),
      healthy_since: Some(Instant::now()),
      ..Health::default()
    };
    self.ready.send_replace(Some(Ok(info)));
  }

  fn went_down(&self) {
    // First the outcome a start would wait for, then the backend: a start never sees "down" with an old
    // outcome.
    self.ready.send_replace(None);
    *lock(&self.current) = None;
    lock(&self.health).healthy = false;
  }

  fn port(&self) -> Option<u16> {
    lock(&self.port).as_ref().map(Reservation::port)
  }
}

/// Starts the supervisor of `run`, which is up with its first process.
pub fn start(manager: Arc<Manager>, run: Arc<Run>) {
  tokio::spawn(async move {
    let result = supervise(&manager, &run).await;
    manager.run_ended(&run);
    lock(&run.port).take();
    run.done.send_replace(Some(result));
  });
}

enum Ended {
  Stop,
  Exit,
  Verdict(Reason),
}

async fn stop_asked(stop: &mut watch::Receiver<bool>) {
  let _ = stop.wait_for(|s| *s).await;
}

async fn supervise(manager: &Arc<Manager>, run: &Arc<Run>) -> Option<StopResult> {
  let mut stop = run.stop.subscribe();
  loop {
    let instance = run.current()?;
    let ended = tokio::select! {
      biased;
      _ = stop_asked(&mut stop) => Ended::Stop,
      _ = instance.child.exited() => Ended::Exit,
      reason = watchdog(manager, run, &instance) => Ended::Verdict(reason),
    };
    let (result, reason) = match ended {
      Ended::Stop => {
        let result = manager.end(&instance, true, None).await;
        run.went_down();
        return Some(result);
      }
      Ended::Exit => (manager.end(&instance, false, None).await, Reason::Exit),
      Ended::Verdict(reason) => (manager.end(&instance, true, Some(reason)).await, reason),
    };
    let healthy_since = lock(&run.health).healthy_since;
    run.went_down();
    let book = run.book.as_ref()?;
    let mut last = (instance.info.pid, result.exit, reason, healthy_since);
    loop {
      let decision = lock(book).decide(std::time::Instant::now(), last.3.map(Instant::into_std));
      let (attempt, delay) = match decision {
        Decision::GiveUp { restarts } => {
          let error = format!(
            "the backend ended {} times within restart.windowMs; it stays down",
            restarts + 1
          );
          give_up(manager, run, last.2, restarts, error);
          return None;
        }
        Decision::Restart { attempt, delay } => (attempt, delay),
      };
      let (pid, exit, reason, _) = last.clone();
      manager.emit(Event::Restart {
        attempt,
        delay,
        reason,
        pid,
        exit,
      });
      manager.log(
        Level::Warn,
        format!(
          "restarting the backend in {} ms (restart {attempt}, after {})",
          delay.as_millis(),
          reason.as_str()
        ),
      );
      tokio::select! {
        biased;
        _ = stop_asked(&mut stop) => return None,
        _ = tokio::time::sleep(delay) => {}
      }
      match restart_once(manager, run, attempt, &mut stop).await {
        Restarted::Up => break,
        Restarted::Stopped(result) => return result,
        Restarted::Exited { pid, exit } => last = (pid, exit, Reason::Exit, None),
        Restarted::Fatal(error) => {
          give_up(manager, run, reason, attempt, error.to_string());
          return None;
        }
      }
    }
  }
}

fn give_up(manager: &Manager, run: &Run, reason: Reason, restarts: u32, error: String) {
  manager.log(
    Level::Warn,
    format!("the backend is down for good: {error}"),
  );
  run.ready.send_replace(Some(Err(PmError::BackendExited {
    message: format!("the backend failed and was not restarted again: {error}"),
    exit_code: None,
    signal: None,
    stderr_tail: Vec::new(),
  })));
  manager.emit(Event::Failed {
    reason,
    restarts,
    error,
  });
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

/// One restart: on the kept port if still free, else on another (`port-changed`).
async fn restart_once(
  manager: &Arc<Manager>,
  run: &Arc<Run>,
  attempt: u32,
  stop: &mut watch::Receiver<bool>,
) -> Restarted {
  let mut exclude = Vec::new();
  for _ in 0..=ADDRESS_IN_USE_RETRIES {
    let port = match keep_or_move_port(manager, run, &exclude).await {
      Ok(port) => port,
      Err(e) => return Restarted::Fatal(e),
    };
    match attempt::run(manager, &run.launch, port, stop, attempt).await {
      Ok(Attempt::Ready(instance, latency)) => {
        let info = instance.info.clone();
        run.went_up(instance, latency);
        manager.emit(Event::Ready(info));
        return Restarted::Up;
      }
      Ok(Attempt::Cancelled { stopped, .. }) => return Restarted::Stopped(stopped),
      Ok(Attempt::PortTaken { port, exited }) if exclude.len() < ADDRESS_IN_USE_RETRIES => {
        exclude.push(port);
        drop(exited);
      }
      Ok(Attempt::PortTaken { port, exited }) => return Restarted::Fatal(port_lost(port, exited)),
      Ok(Attempt::Failed { pid, exit, .. }) => return Restarted::Exited { pid, exit },
      Err(e) => return Restarted::Fatal(e),
    }
  }
  Restarted::Fatal(PmError::Internal("no port tried for the restart".into()))
}

/// The run's port if no other program took it meanwhile (and it is not in `exclude`); otherwise a new one
/// from the manager's range, which then becomes the run's (`port-changed`).
async fn keep_or_move_port(manager: &Arc<Manager>, run: &Run, exclude: &[u16]) -> Result<u16> {
  let kept = run.port();
  if let Some(port) = kept.filter(|p| !exclude.contains(p)) {
    let free =
      crate::blocking::run(move || crate::net::port::is_port_available(port, None)).await?;
    if free {
      return Ok(port);
    }
  }
  let mut avoid = exclude.to_vec();
  avoid.extend(kept);
  let reserved = manager.reserve_port(&avoid).await?;
  let port = reserved.port();
  *lock(&run.port) = Some(reserved);
  if let Some(previous) = kept {
    manager.log(
      Level::Warn,
      format!("port {previous} was taken by another program; the backend moves to port {port}"),
    );
    manager.emit(Event::PortChanged { previous, port });
  }
  Ok(port)
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

/// Watches the running process: health probes every `healthIntervalMs`, memory (and `stats` events) every
/// `statsIntervalMs` (or every second with only `maxMemoryBytes`). Reports `unhealthy` and `healthy`;
/// resolves only with a verdict that needs a restart (the restart policy is on), never otherwise.
async fn watchdog(manager: &Manager, run: &Run, instance: &Instance) -> Reason {
  let o = &manager.options;
  let restart = o.restart.is_some();
  let target = manager.target(instance.info.port, instance.info.token.clone());
  let mut probes = every(o.health_interval);
  let mut samples = every(o.memory_interval());
  loop {
    tokio::select! {
      _ = tick(&mut probes) => {
        let began = Instant::now();
        let outcome = health::probe(&target, o.health_timeout).await;
        let unhealthy = probe_verdict(manager, run, outcome, began.elapsed());
        keep_verdict(manager, run, instance).await;
        if unhealthy && restart {
          return Reason::Unhealthy;
        }
      }
      _ = tick(&mut samples) => {
        let Some(stats) = sample(run) else { continue };
        if o.stats_interval.is_some() {
          manager.emit(Event::Stats(stats.clone()));
        }
        let unhealthy = memory_verdict(manager, run, stats.memory_bytes);
        keep_verdict(manager, run, instance).await;
        if unhealthy && restart {
          return Reason::Memory;
        }
      }
    }
  }
}

/// Keeps the current verdict in the PID record (rewritten only when it changed), for `backend-pm status`.
async fn keep_verdict(manager: &Manager, run: &Run, instance: &Instance) {
  let healthy = lock(&run.health).healthy;
  if let Err(e) = instance.set_healthy(healthy).await {
    manager.log(Level::Warn, format!("could not update the PID record: {e}"));
  }
}

/// Counts a watchdog probe; true when it made the backend unhealthy (just now).
fn probe_verdict(manager: &Manager, run: &Run, outcome: ProbeOutcome, latency: Duration) -> bool {
  let threshold = manager.options.unhealthy_threshold;
  let mut health = lock(&run.health);
  if outcome.is_healthy() {
    health.failures = 0;
    health.latency = Some(latency);
    if std::mem::take(&mut health.reported_probes) {
      health.healthy = !health.reported_memory;
      drop(health);
      manager.emit(Event::Healthy {
        latency: Some(latency),
        memory_bytes: None,
      });
    }
    return false;
  }
  health.failures += 1;
  if health.failures != threshold {
    return false;
  }
  health.reported_probes = true;
  health.healthy = false;
  let failures = health.failures;
  drop(health);
  manager.emit(Event::Unhealthy {
    reason: Reason::Unhealthy,
    failures,
    error: Some(outcome.describe()),
    memory_bytes: None,
  });
  true
}

/// Compares a memory sample with `maxMemoryBytes`; true when it made the backend unhealthy (just now).
fn memory_verdict(manager: &Manager, run: &Run, memory_bytes: u64) -> bool {
  let Some(limit) = manager.options.max_memory_bytes else {
    return false;
  };
  let mut health = lock(&run.health);
  if memory_bytes <= limit {
    if std::mem::take(&mut health.reported_memory) {
      health.healthy = !health.reported_probes;
      let latency = health.latency;
      drop(health);
      manager.emit(Event::Healthy {
        latency,
        memory_bytes: Some(memory_bytes),
      });
    }
    return false;
  }
  if health.reported_memory {
    return false;
  }
  health.reported_memory = true;
  health.healthy = false;
  drop(health);
  manager.emit(Event::Unhealthy {
    reason: Reason::Memory,
    failures: 0,
    error: Some(format!(
      "its processes use {memory_bytes} bytes of memory, more than maxMemoryBytes ({limit})"
    )),
    memory_bytes: Some(memory_bytes),
  });
  true
}

/// What the running process's tree uses now; CPU as a rate since the previous sample (0 on the first).
/// A handful of `/proc` reads for a small tree.
pub fn sample(run: &Run) -> Option<Stats> {
  let instance = run.current()?;
  let pid = instance.info.pid;
  let tree = tree::with_descendants(pid);
  let usage = tree::usage(&tree);
  let now = Instant::now();
  let mut previous = lock(&run.cpu);
  let cpu_percent = match &*previous {
    Some(p) if p.pid == pid && now > p.at => {
      let used = usage.cpu_time.saturating_sub(p.cpu).as_secs_f64();
      (used / (now - p.at).as_secs_f64() * 1000.0).round() / 10.0
    }
    _ => 0.0,
  };
  *previous = Some(CpuSample {
    pid,
    at: now,
    cpu: usage.cpu_time,
  });
  drop(previous);
  let health = lock(&run.health);
  Some(Stats {
    pid,
    cpu_percent,
    memory_bytes: usage.memory_bytes,
    process_count: usage.process_count,
    uptime: instance.spawned.elapsed(),
    restarts: run.restarts(),
    healthy: health.healthy,
    health_latency: health.latency,
  })
}
