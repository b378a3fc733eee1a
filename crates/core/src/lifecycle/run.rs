//! One started backend, from a successful `startBackend()` to its stop or final failure: its processes (one,
//! or several replicas, each in a slot of its own), and what stands on the public port in front of them —
//! the backend itself, the load balancer, or the manager's own socket handed to every replica.

use super::instance::Instance;
use super::launch::Launch;
use super::{BackendInfo, Reason, ReplicaInfo, Stats};
use crate::error::Result;
use crate::net::balancer::Balancer;
use crate::net::reservation::Reservation;
use crate::options::Options;
use crate::os::tree;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
  m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What stands on the public port.
pub enum Front {
  /// One process that listens on the public port itself (its slot holds the port).
  Direct,
  /// The balancer listens on the public port; each replica on a port of its own.
  Balanced {
    balancer: Arc<Balancer>,
    /// Until the front closes.
    public: Mutex<Option<Reservation>>,
  },
  /// The manager's listening socket on the public port, handed to every replica as descriptor 3; until
  /// the front closes.
  Socket {
    socket: Mutex<Option<(Arc<std::net::TcpListener>, Reservation)>>,
  },
}

impl Front {
  pub fn balanced(balancer: Arc<Balancer>, public: Reservation) -> Front {
    Front::Balanced {
      balancer,
      public: Mutex::new(Some(public)),
    }
  }

  pub fn socket(socket: std::net::TcpListener, public: Reservation) -> Front {
    Front::Socket {
      socket: Mutex::new(Some((Arc::new(socket), public))),
    }
  }

  /// The socket to hand to a process, with `listen: 'fd'` (until the front closes).
  pub fn shared_socket(&self) -> Option<Arc<std::net::TcpListener>> {
    match self {
      Front::Socket { socket } => lock(socket).as_ref().map(|(s, _)| s.clone()),
      _ => None,
    }
  }

  /// Frees the public port once no process is left: the balancer stops (its open connections get until
  /// `deadline`), or the manager's socket closes; the port's reservation ends. Nothing else holds the socket
  /// by then, so the port is free when this returns.
  pub async fn close(&self, deadline: Instant) {
    match self {
      Front::Direct => {}
      Front::Balanced { balancer, public } => {
        balancer.close(deadline).await;
        lock(public).take();
      }
      Front::Socket { socket } => {
        lock(socket).take();
      }
    }
  }
}

/// What the owner publishes of one slot (its `View`): the verdict on its process and its restarts so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct SlotView {
  pub healthy: bool,
  /// Of the last watchdog or readiness probe.
  pub latency: Option<Duration>,
  pub restarts: u32,
}

/// A reload of one slot, for its supervisor; the reply says whether the new process is in.
pub struct Reload {
  /// Why: `None` for `reload()`, a watchdog verdict for replicas on one socket.
  pub reason: Option<Reason>,
  pub reply: oneshot::Sender<Result<()>>,
}

/// The previous CPU sample of a slot, for the rate since then.
struct CpuSample {
  pid: u32,
  at: Instant,
  cpu: Duration,
}

/// One replica (or the one process): the process running in it now, restarted by its own supervisor.
pub struct Slot {
  pub index: usize,
  /// Its own port, held across restarts: the public port for a direct backend, an internal one behind the
  /// balancer; none with a shared socket.
  port: Mutex<Option<Reservation>>,
  current: Mutex<Option<Arc<Instance>>>,
  /// Reloads asked for, for the slot's supervisor (which takes the receiver).
  reloads: mpsc::UnboundedSender<Reload>,
  reloads_rx: Mutex<Option<mpsc::UnboundedReceiver<Reload>>>,
  /// The previous CPU sample of the current process (`stats`): a cache of whoever samples (the app's
  /// `stats()`, the `stats` events), not the owner's state.
  cpu: Mutex<Option<CpuSample>>,
  /// The balancer's id for the current process: a new one per process, so an old one can drain while
  /// the new one already takes connections.
  upstream: AtomicUsize,
}

impl Slot {
  pub fn current(&self) -> Option<Arc<Instance>> {
    lock(&self.current).clone()
  }

  /// The current process, unless it has exited (its supervisor may not have taken it out yet).
  pub fn running(&self) -> Option<Arc<Instance>> {
    self.current().filter(|i| i.child.exit_info().is_none())
  }

  pub fn port(&self) -> Option<u16> {
    lock(&self.port).as_ref().map(Reservation::port)
  }

  pub fn set_port(&self, port: Reservation) {
    *lock(&self.port) = Some(port);
  }

  pub fn release_port(&self) {
    lock(&self.port).take();
  }

  pub fn upstream(&self) -> usize {
    self.upstream.load(Ordering::SeqCst)
  }

  pub fn take_reloads(&self) -> Option<mpsc::UnboundedReceiver<Reload>> {
    lock(&self.reloads_rx).take()
  }

  /// Has the slot's supervisor put a new process in (see `supervisor::replace`); false when the slot has
  /// no process now, or its supervisor is gone (the slot is down for good).
  pub async fn reload(&self, reason: Option<Reason>) -> Result<bool> {
    if self.current().is_none() {
      return Ok(false);
    }
    let (reply, replied) = oneshot::channel();
    if self.reloads.send(Reload { reason, reply }).is_err() {
      return Ok(false);
    }
    match replied.await {
      Ok(outcome) => outcome.map(|()| true),
      Err(_) => Ok(false),
    }
  }
}

/// One started backend.
pub struct Run {
  pub launch: Launch,
  pub host: IpAddr,
  pub public_port: u16,
  pub front: Front,
  pub slots: Vec<Arc<Slot>>,
  /// Set by a stop: the supervisors end their processes and start nothing more.
  pub stop: watch::Sender<bool>,
  /// One reload at a time.
  pub reloading: tokio::sync::Mutex<()>,
}

/// Upstream ids are unique per manager run: slot index in the low bits, a generation above.
const UPSTREAM_GENERATION: usize = 1 << 16;

impl Run {
  pub fn new(
    options: &Options,
    launch: Launch,
    public_port: u16,
    front: Front,
    replicas: Vec<(Option<Reservation>, Arc<Instance>)>,
  ) -> Arc<Run> {
    let slots = replicas
      .into_iter()
      .enumerate()
      .map(|(index, (port, instance))| {
        let (reloads, reloads_rx) = mpsc::unbounded_channel();
        let slot = Arc::new(Slot {
          index,
          port: Mutex::new(port),
          current: Mutex::new(None),
          reloads,
          reloads_rx: Mutex::new(Some(reloads_rx)),
          cpu: Mutex::new(None),
          upstream: AtomicUsize::new(index),
        });
        (slot, instance)
      })
      .collect::<Vec<_>>();
    let run = Arc::new(Run {
      launch,
      host: options.host,
      public_port,
      front,
      slots: slots.iter().map(|(s, _)| s.clone()).collect(),
      stop: watch::channel(false).0,
      reloading: tokio::sync::Mutex::new(()),
    });
    for (slot, instance) in slots {
      run.went_up(&slot, instance, false);
    }
    run
  }

  pub fn replicated(&self) -> bool {
    self.slots.len() > 1
  }

  /// The event context of a slot: its index when there are replicas.
  pub fn replica(&self, slot: &Slot) -> Option<usize> {
    self.replicated().then_some(slot.index)
  }

  /// A process of the run is running.
  pub fn any_running(&self) -> bool {
    self.slots.iter().any(|s| s.running().is_some())
  }

  /// The backend as the app sees it: the public port, the first running replica's pid, every replica
  /// (healthy as `views`, the owner's, say); `None` while no process is up.
  pub fn info(&self, views: &[SlotView]) -> Option<BackendInfo> {
    let up: Vec<Arc<Instance>> = self.slots.iter().filter_map(|s| s.running()).collect();
    let first = up.first()?;
    let replicas = self.replicated().then(|| {
      self
        .slots
        .iter()
        .filter_map(|s| {
          let instance = s.running()?;
          Some(ReplicaInfo {
            pid: instance.info.pid,
            port: match self.front {
              Front::Socket { .. } => None,
              _ => Some(instance.info.port),
            },
            healthy: views.get(s.index).is_some_and(|v| v.healthy),
          })
        })
        .collect()
    });
    // One process on its own port is where the app reaches it: a restart that found its port taken by
    // another program moved it (`port-changed`), and the app's URL follows.
    let port = match self.front {
      Front::Direct => first.info.port,
      _ => self.public_port,
    };
    Some(BackendInfo {
      pid: first.info.pid,
      port,
      host: first.info.host.clone(),
      url: super::context::url_for(self.host, port),
      started_at: first.info.started_at,
      token: self.launch.token.clone(),
      replicas,
    })
  }

  /// Force-kills the whole tree of every process of the run, now.
  pub fn force_now(&self) {
    for slot in &self.slots {
      if let Some(instance) = slot.current() {
        instance.child.force_now();
      }
    }
  }

  pub fn stop_requested(&self) -> bool {
    *self.stop.borrow()
  }

  /// A slot's process is up (started, or restarted, or a reload's new one): the front routes to it.
  pub fn went_up(&self, slot: &Slot, instance: Arc<Instance>, replacing: bool) {
    if let Front::Balanced { balancer, .. } = &self.front {
      let id = if replacing {
        slot
          .upstream
          .fetch_add(UPSTREAM_GENERATION, Ordering::SeqCst)
          + UPSTREAM_GENERATION
      } else {
        slot.upstream()
      };
      let addr =
        std::net::SocketAddr::new(super::context::reachable(self.host), instance.info.port);
      balancer.add(id, addr);
    }
    *lock(&slot.current) = Some(instance);
  }

  /// A slot's process is gone (the owner decides what comes next).
  pub fn went_down(&self, slot: &Slot) {
    if let Front::Balanced { balancer, .. } = &self.front {
      balancer.remove(slot.upstream());
    }
    *lock(&slot.current) = None;
  }

  /// The watchdog's verdict on a slot reaches the balancer: an unhealthy replica gets no connections.
  pub fn health_changed(&self, slot: &Slot, healthy: bool) {
    if let Front::Balanced { balancer, .. } = &self.front {
      balancer.set_healthy(slot.upstream(), healthy);
    }
  }

  /// The socket to hand to a replica, with `listen: 'fd'`.
  pub fn socket(&self) -> Option<Arc<std::net::TcpListener>> {
    self.front.shared_socket()
  }

  /// What the processes of every running replica use together now; CPU as a rate since each slot's
  /// previous sample (0 on the first); health and restarts as `views`, the owner's, say. A handful of
  /// `/proc` reads per process.
  pub fn stats(&self, views: &[SlotView]) -> Option<Stats> {
    let per_slot: Vec<(Arc<Instance>, Stats)> = self
      .slots
      .iter()
      .filter_map(|slot| {
        let view = views.get(slot.index).copied().unwrap_or_default();
        Some((slot.current()?, sample(slot, view)?))
      })
      .collect();
    let (first, _) = per_slot.first()?;
    let mut total = Stats {
      pid: first.info.pid,
      cpu_percent: 0.0,
      memory_bytes: 0,
      process_count: 0,
      uptime: first.spawned.elapsed(),
      restarts: 0,
      healthy: true,
      health_latency: None,
      replicas: Vec::new(),
    };
    for (_, s) in &per_slot {
      total.cpu_percent += s.cpu_percent;
      total.memory_bytes += s.memory_bytes;
      total.process_count += s.process_count;
      total.restarts += s.restarts;
      total.healthy &= s.healthy;
      total.health_latency = total.health_latency.or(s.health_latency);
    }
    total.cpu_percent = (total.cpu_percent * 10.0).round() / 10.0;
    if self.replicated() {
      total.replicas = per_slot.into_iter().map(|(_, s)| s).collect();
    }
    Some(total)
  }
}

/// What one slot's process tree uses now.
fn sample(slot: &Slot, view: SlotView) -> Option<Stats> {
  let instance = slot.current()?;
  let pid = instance.info.pid;
  let usage = tree::usage(&tree::with_descendants(pid));
  let now = Instant::now();
  let mut previous = lock(&slot.cpu);
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
  Some(Stats {
    pid,
    cpu_percent,
    memory_bytes: usage.memory_bytes,
    process_count: usage.process_count,
    uptime: instance.spawned.elapsed(),
    restarts: view.restarts,
    healthy: view.healthy,
    health_latency: view.latency,
    replicas: Vec::new(),
  })
}
