//! The TCP load balancer in front of the replicas of one backend (API.md "Several backends, replicas, load
//! balancing, failover" and "Limits of the balancer"; DESIGN.md §17, §27). It relays bytes and reads no more
//! of HTTP than a request's first line: keep-alive, WebSocket and SSE pass through unchanged. Each accepted
//! connection goes to one routable upstream (healthy and not draining); a connect that fails takes that
//! upstream out, reports it to the owner, and the same client connection is tried on another.
//!
//! A connection already sent to an upstream is moved to another only while no byte of it can run twice:
//! when nothing of the client's reached the lost upstream, or when its start is one request of an idempotent
//! HTTP method (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) and the upstream closed or reset it before the first
//! byte of an answer. Anything else (POST, PATCH, unknown protocols) is never replayed: the client sees the
//! connection close, as with nginx's `proxy_next_upstream` default. A replica that read the start of a POST,
//! did its work and died must not see the POST run again on another.
//!
//! Bounded (API.md "Limits of the balancer"): at most `max_connections` client connections at once (the rest
//! wait in the kernel's accept queue; a splice pipe counts as a connection, so descriptors stay under
//! `2 × max_connections`), a connection idle both ways for `idle_timeout` is closed, and an upstream that
//! sends no first byte within `first_byte_timeout` of a request is taken out as frozen.
//!
//! Costs, measured by the ignored bench at the end of this file and bench/replicas.js (2-core VM, Node
//! `http` replicas, wrk): ~13 ms of CPU time per 1000 keep-alive requests on its own thread, as much as
//! HAProxy and nginx's stream module in the same run (bench/RESULTS.md) and nearly all of it kernel time
//! for the four send/recv calls per request; ~140 ms per 1000 with a connection per request (the second
//! TCP handshake and teardown), and 0.05-0.13 ms added to a keep-alive round trip.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, timeout_at, Instant};

/// Loopback refuses a closed port at once; this bounds the connect to an upstream that does not answer at all
/// (a stopped process, or Windows, where a loopback connect to a closed port retries SYNs for ~2 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a client connection waits for an upstream when none is routable. Longer than the owner's 1 s
/// re-probe of a replica taken out after a refused connect, so a moment where every replica restarts (or
/// refused once) costs clients a delay instead of an error.
pub const NO_UPSTREAM_HOLD: Duration = Duration::from_secs(2);
/// After an accept error that a retry cannot fix at once (out of descriptors or memory), pause before the
/// next accept: the pending connection stays queued, so retrying at once would spin a core.
const ACCEPT_PAUSE_START: Duration = Duration::from_millis(5);
const ACCEPT_PAUSE_CAP: Duration = Duration::from_millis(500);
/// Bounds the wait for cut relays to close their sockets (each does at its next poll).
const CUT_WAIT: Duration = Duration::from_secs(1);
/// The cap of the default `max_connections`: past it the balancer's own memory and the replicas, not
/// descriptors, are what a flood exhausts.
pub const MAX_CONNECTIONS_CAP: usize = 10_000;
/// The default `idle_timeout` (API.md): nginx's `proxy_timeout` is 10 min, HAProxy's examples 1-5 min; long
/// enough for a quiet WebSocket, short enough that abandoned connections do not pile up.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// What one client can make the balancer hold (API.md "Limits of the balancer").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
  /// Client connections at once; more wait in the kernel's accept queue, not in memory.
  pub max_connections: usize,
  /// A connection with no byte either way this long is closed; `None`: never.
  pub idle_timeout: Option<Duration>,
  /// An upstream that sends no byte this long after a request is taken out as frozen; `None`: off.
  pub first_byte_timeout: Option<Duration>,
}

impl Default for Limits {
  fn default() -> Self {
    Limits {
      max_connections: default_max_connections(),
      idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
      first_byte_timeout: None,
    }
  }
}

/// A quarter of the app's open-file limit (`RLIMIT_NOFILE`, soft), at most `MAX_CONNECTIONS_CAP`: each
/// connection costs two descriptors, so whatever clients do, half of the app's descriptors stay free for
/// its own files and sockets.
pub fn default_max_connections() -> usize {
  imp::open_file_limit().map_or(MAX_CONNECTIONS_CAP, |n| {
    usize::try_from(n / 4).map_or(MAX_CONNECTIONS_CAP, |n| n.clamp(1, MAX_CONNECTIONS_CAP))
  })
}

/// How a new connection chooses among the routable upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
  /// The upstream with the fewest open connections; ties go round-robin (as nginx's `least_conn`), so
  /// sequential short requests still spread over every upstream.
  #[default]
  LeastConnections,
  RoundRobin,
}

/// The balancer's listening side: open, closing (no accepts, relays go on), or cut (every relay ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
  Open,
  Closing,
  Cut,
}

/// A count of open connections that can be awaited down to zero (one per upstream, one for the balancer).
#[derive(Default)]
struct Load {
  active: AtomicUsize,
  idle: Notify,
}

impl Load {
  fn enter(self: &Arc<Self>) -> LoadGuard {
    self.active.fetch_add(1, Ordering::AcqRel);
    LoadGuard(self.clone())
  }

  fn active(&self) -> usize {
    self.active.load(Ordering::Acquire)
  }

  /// Resolves when the count is 0 or at `deadline`; returns the count then.
  async fn wait_idle(&self, deadline: Instant) -> usize {
    loop {
      // Registered before the check, so a drop to 0 between the check and the await is not missed.
      let idle = self.idle.notified();
      tokio::pin!(idle);
      idle.as_mut().enable();
      if self.active() == 0 {
        return 0;
      }
      if timeout_at(deadline, idle).await.is_err() {
        return self.active();
      }
    }
  }
}

struct LoadGuard(Arc<Load>);

impl Drop for LoadGuard {
  fn drop(&mut self) {
    if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
      self.0.idle.notify_waiters();
    }
  }
}

struct Upstream {
  id: usize,
  addr: SocketAddr,
  healthy: bool,
  draining: bool,
  /// Bumped each time the upstream is (re)put in, so a connect that failed before that cannot take the
  /// restored upstream out again.
  epoch: u64,
  load: Arc<Load>,
}

impl Upstream {
  fn routable(&self) -> bool {
    self.healthy && !self.draining
  }
}

#[derive(Default)]
struct Table {
  /// A handful of replicas: a linear scan under the lock is cheaper than any index.
  upstreams: Vec<Upstream>,
  /// Where the next scan starts: the round-robin position, and the tie-breaker of least-connections.
  cursor: usize,
}

impl Table {
  fn get_mut(&mut self, id: usize) -> Option<&mut Upstream> {
    self.upstreams.iter_mut().find(|u| u.id == id)
  }
}

/// The upstream chosen for one connection; its guard counts the connection until dropped.
struct Pick {
  id: usize,
  addr: SocketAddr,
  epoch: u64,
  load: LoadGuard,
}

/// Why the balancer took an upstream out of rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakenOut {
  /// A connect to it was refused or timed out.
  Refused,
  /// It reset a connection before its first answer byte.
  Reset,
  /// It sent no byte of an answer within `first_byte_timeout` of a request.
  Frozen,
}

struct Shared {
  strategy: Strategy,
  limits: Limits,
  /// One permit per client connection (`limits.max_connections`), and one per splice pipe, which costs
  /// the same two descriptors.
  slots: Arc<Semaphore>,
  table: Mutex<Table>,
  /// Signalled whenever an upstream may have become routable, for connections held while none was.
  routable: Notify,
  failures: mpsc::UnboundedSender<(usize, TakenOut)>,
  phase: watch::Sender<Phase>,
  /// Every client connection the balancer holds, from accept until both sockets are closed.
  connections: Arc<Load>,
}

impl Shared {
  fn table(&self) -> MutexGuard<'_, Table> {
    // The table stays consistent at every await-free step, so a panic elsewhere cannot leave it half-edited.
    self
      .table
      .lock()
      .unwrap_or_else(|poisoned| poisoned.into_inner())
  }

  /// Chooses a routable upstream not in `tried` and counts the connection on it (under the lock, so
  /// concurrent picks see each other).
  fn pick(&self, tried: &[usize]) -> Option<Pick> {
    let mut table = self.table();
    let count = table.upstreams.len();
    let start = table.cursor % count.max(1);
    let mut best: Option<(usize, usize)> = None;
    for step in 0..count {
      let position = (start + step) % count;
      let upstream = &table.upstreams[position];
      if !upstream.routable() || tried.contains(&upstream.id) {
        continue;
      }
      let active = match self.strategy {
        Strategy::RoundRobin => 0,
        Strategy::LeastConnections => upstream.load.active(),
      };
      // Strictly fewer: among equals the first one after the cursor wins, which is the round-robin tie-break.
      if best.is_none_or(|(_, fewest)| active < fewest) {
        best = Some((position, active));
        if active == 0 {
          break;
        }
      }
    }
    let (position, _) = best?;
    table.cursor = position + 1;
    let upstream = &table.upstreams[position];
    Some(Pick {
      id: upstream.id,
      addr: upstream.addr,
      epoch: upstream.epoch,
      load: upstream.load.enter(),
    })
  }

  /// `id` failed a connection (see `take_failures`): take it out and tell the owner why, once per time it
  /// was put in.
  fn mark_failed(&self, id: usize, epoch: u64, why: TakenOut) {
    let mut table = self.table();
    if let Some(upstream) = table.get_mut(id) {
      if upstream.epoch == epoch && upstream.healthy {
        upstream.healthy = false;
        let _ = self.failures.send((id, why));
      }
    }
  }

  /// Connects to a routable upstream not in `tried`, trying the others when one fails (adding it to
  /// `tried`), and waiting up to `NO_UPSTREAM_HOLD` while none is routable. `None`: no upstream could take
  /// the connection.
  async fn connect_upstream(&self, tried: &mut Vec<usize>) -> Option<(TcpStream, Pick)> {
    let hold_until = Instant::now() + NO_UPSTREAM_HOLD;
    let mut phase = self.phase.subscribe();
    loop {
      let routable = self.routable.notified();
      tokio::pin!(routable);
      routable.as_mut().enable();
      if let Some(pick) = self.pick(tried) {
        match timeout(CONNECT_TIMEOUT, TcpStream::connect(pick.addr)).await {
          Ok(Ok(stream)) => return Some((stream, pick)),
          // Our own descriptors or ports ran out: no fault of the upstream, and no other would do better.
          Ok(Err(error)) if is_local_exhaustion(&error) => return None,
          failed => {
            // A reset: the handshake completed and the upstream reset the connection before the connect's
            // result was read (its listener closed with the connection queued: the replica was killed), as
            // when the result is read first.
            let why = match failed {
              Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => TakenOut::Reset,
              _ => TakenOut::Refused,
            };
            drop(pick.load);
            self.mark_failed(pick.id, pick.epoch, why);
            tried.push(pick.id);
          }
        }
        continue;
      }
      if *phase.borrow_and_update() != Phase::Open {
        return None;
      }
      tokio::select! {
        _ = routable => tried.clear(),
        _ = phase.changed() => return None,
        _ = sleep(hold_until.saturating_duration_since(Instant::now())) => return None,
      }
    }
  }
}

/// The load balancer. Dropping it stops accepting and cuts its relayed connections; `close` does so politely.
pub struct Balancer {
  shared: Arc<Shared>,
  accept_loop: Mutex<Option<JoinHandle<()>>>,
  failures: Mutex<Option<mpsc::UnboundedReceiver<(usize, TakenOut)>>>,
}

impl Balancer {
  /// Starts accepting on an already bound and listening socket (the owner binds it, so the public port is
  /// held before anything else happens). The accept loop and every relay run on the balancers' own thread.
  pub fn start(
    listener: std::net::TcpListener,
    strategy: Strategy,
    limits: Limits,
  ) -> io::Result<Arc<Balancer>> {
    let runtime = relay_runtime()?;
    let _inside = runtime.enter();
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let (failures_tx, failures_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
      strategy,
      limits,
      slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
      table: Mutex::new(Table::default()),
      routable: Notify::new(),
      failures: failures_tx,
      phase: watch::Sender::new(Phase::Open),
      connections: Arc::new(Load::default()),
    });
    let accept_loop = runtime.spawn(accept_loop(shared.clone(), listener));
    Ok(Arc::new(Balancer {
      shared,
      accept_loop: Mutex::new(Some(accept_loop)),
      failures: Mutex::new(Some(failures_rx)),
    }))
  }

  /// Adds a routable upstream under a caller-chosen id (the replica index). Adding an id that exists
  /// replaces its address and puts it back in (healthy, not draining); its open connections stay counted.
  pub fn add(&self, id: usize, addr: SocketAddr) {
    self.insert(id, addr, true);
  }

  fn insert(&self, id: usize, addr: SocketAddr, healthy: bool) {
    {
      let mut table = self.shared.table();
      match table.get_mut(id) {
        Some(upstream) => {
          upstream.addr = addr;
          upstream.healthy = healthy;
          upstream.draining = false;
          upstream.epoch += 1;
        }
        None => table.upstreams.push(Upstream {
          id,
          addr,
          healthy,
          draining: false,
          epoch: 0,
          load: Arc::new(Load::default()),
        }),
      }
    }
    if healthy {
      self.shared.routable.notify_waiters();
    }
  }

  /// Puts an upstream in or takes it out of routing (open connections are not touched). A draining upstream
  /// stays out until `add` puts it back.
  pub fn set_healthy(&self, id: usize, healthy: bool) {
    let restored = {
      let mut table = self.shared.table();
      match table.get_mut(id) {
        Some(upstream) if upstream.healthy != healthy => {
          upstream.healthy = healthy;
          if healthy {
            upstream.epoch += 1;
          }
          healthy
        }
        _ => false,
      }
    };
    if restored {
      self.shared.routable.notify_waiters();
    }
  }

  /// Forgets an upstream: no new connections; the open ones go on until they end (drain first to wait).
  pub fn remove(&self, id: usize) {
    self.shared.table().upstreams.retain(|u| u.id != id);
  }

  /// Stops routing new connections to `id` and resolves when its open connections are 0 or at `deadline`;
  /// returns how many were still open. The upstream stays known (and draining) until `remove` or `add`.
  pub async fn drain(&self, id: usize, deadline: Instant) -> usize {
    let load = {
      let mut table = self.shared.table();
      let Some(upstream) = table.get_mut(id) else {
        return 0;
      };
      upstream.draining = true;
      upstream.load.clone()
    };
    load.wait_idle(deadline).await
  }

  /// Reports, once per time an upstream was put in, each id the balancer took out and why. The owner
  /// probes it and calls `set_healthy(id, true)`. The receiver can be taken once; the queue grows by at
  /// most one entry per upstream between two restores.
  pub fn take_failures(&self) -> Option<mpsc::UnboundedReceiver<(usize, TakenOut)>> {
    self
      .failures
      .lock()
      .unwrap_or_else(|p| p.into_inner())
      .take()
  }

  /// Stops accepting and resolves once the listening socket is closed (the port is free). Relayed
  /// connections go on; a client connection waiting for an upstream is closed.
  pub async fn stop_accepting(&self) {
    self.shared.phase.send_if_modified(|phase| {
      let open = *phase == Phase::Open;
      if open {
        *phase = Phase::Closing;
      }
      open
    });
    let accept_loop = self
      .accept_loop
      .lock()
      .unwrap_or_else(|p| p.into_inner())
      .take();
    if let Some(accept_loop) = accept_loop {
      let _ = accept_loop.await;
    }
  }

  /// Stops accepting (the port is freed), lets open connections finish until `deadline`, then cuts the rest
  /// (their clients see a reset). Returns how many were cut.
  pub async fn close(&self, deadline: Instant) -> usize {
    self.stop_accepting().await;
    let open = self.shared.connections.wait_idle(deadline).await;
    if open > 0 {
      self.shared.phase.send_replace(Phase::Cut);
      // Each relay ends at its next poll once told; wait for them so the sockets are closed on return.
      self
        .shared
        .connections
        .wait_idle(Instant::now() + CUT_WAIT)
        .await;
    }
    open
  }
}

impl Drop for Balancer {
  fn drop(&mut self) {
    self.shared.phase.send_replace(Phase::Cut);
  }
}

/// The runtime every balancer of the process relays on: one thread, like HAProxy's `nbthread 1` and nginx's
/// single worker. Measured (bench/replicas.js, 2 cores shared with wrk and the replicas): on the addon's
/// multi-thread runtime the two workers woke each other for every few requests, and the balancer spent
/// ~14 ms of CPU per 1000 keep-alive requests against HAProxy's ~11; on one thread each epoll wake handles
/// every ready connection in turn, with no cross-thread wake-ups. Started once, it lives as long as the
/// process (like the spawner thread), and holds no handle of Node's event loop.
fn relay_runtime() -> io::Result<tokio::runtime::Handle> {
  static RUNTIME: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();
  static STARTING: Mutex<()> = Mutex::new(());
  if let Some(handle) = RUNTIME.get() {
    return Ok(handle.clone());
  }
  let _one_at_a_time = STARTING.lock().unwrap_or_else(|p| p.into_inner());
  if let Some(handle) = RUNTIME.get() {
    return Ok(handle.clone());
  }
  let runtime = tokio::runtime::Builder::new_current_thread()
    .enable_all()
    .build()?;
  let handle = runtime.handle().clone();
  std::thread::Builder::new()
    .name("bpm-balancer".into())
    .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
  let _ = RUNTIME.set(handle.clone());
  Ok(handle)
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
  let mut phase = shared.phase.subscribe();
  let mut pause = ACCEPT_PAUSE_START;
  loop {
    // Past `max_connections` nothing is accepted: further clients wait in the kernel's queue (and, once it
    // is full, their SYNs are retried), costing the app neither descriptors nor memory.
    let slot = tokio::select! {
      biased;
      _ = phase.wait_for(|p| *p != Phase::Open) => return,
      slot = shared.slots.clone().acquire_owned() => match slot {
        Ok(slot) => slot,
        Err(_) => return,
      },
    };
    let accepted = tokio::select! {
      biased;
      _ = phase.wait_for(|p| *p != Phase::Open) => return,
      accepted = listener.accept() => accepted,
    };
    match accepted {
      Ok((client, _)) => {
        pause = ACCEPT_PAUSE_START;
        let connection = shared.connections.enter();
        tokio::spawn(serve(shared.clone(), client, connection, slot));
      }
      Err(error) if accept_needs_pause(&error) => {
        tokio::select! {
          _ = phase.wait_for(|p| *p != Phase::Open) => return,
          _ = sleep(pause) => {}
        }
        pause = (pause * 2).min(ACCEPT_PAUSE_CAP);
      }
      // A connection reset before it was accepted, and the like: only that connection is lost.
      Err(_) => {}
    }
  }
}

/// Accept errors that come back at once until descriptors or memory are freed (EMFILE, ENFILE, ENOBUFS,
/// ENOMEM).
fn accept_needs_pause(error: &io::Error) -> bool {
  if let Some(exhausted) = error.raw_os_error().and_then(imp::accept_exhausted) {
    return exhausted;
  }
  matches!(error.kind(), io::ErrorKind::OutOfMemory) || is_local_exhaustion(error)
}

/// A connect that failed for want of our own resources, not because of the upstream.
fn is_local_exhaustion(error: &io::Error) -> bool {
  if let Some(exhausted) = error.raw_os_error().and_then(imp::connect_exhausted) {
    return exhausted;
  }
  matches!(
    error.kind(),
    io::ErrorKind::OutOfMemory | io::ErrorKind::AddrNotAvailable
  )
}

/// The client bytes kept for a replay until the upstream's first byte: a larger start is not replayed.
const REPLAY_LIMIT: usize = 64 * 1024;

/// The HTTP methods a server may receive twice with the effect of once (RFC 9110 §9.2.2), each with the
/// space that ends it in a request line.
const IDEMPOTENT_METHODS: [&[u8]; 6] = [
  b"GET ",
  b"HEAD ",
  b"OPTIONS ",
  b"TRACE ",
  b"PUT ",
  b"DELETE ",
];

/// Whether the start of a connection may be sent again to another upstream once the first one received it:
/// it must open with an idempotent method's request line and hold at most one request head (a second one,
/// pipelined, could be a POST the lost upstream already ran). `None`: too short to tell yet (the empty
/// start, or a prefix of such a method).
fn replayable(start: &[u8]) -> Option<bool> {
  if IDEMPOTENT_METHODS.iter().any(|m| start.starts_with(m)) {
    return Some(head_ends(start) <= 1);
  }
  if IDEMPOTENT_METHODS.iter().any(|m| m.starts_with(start)) {
    return None;
  }
  Some(false)
}

/// How many HTTP/1 heads end in `bytes` (an empty line: `\n\n` or `\n\r\n`). Counting too many only makes
/// the balancer more careful.
fn head_ends(bytes: &[u8]) -> usize {
  let newlines = bytes.iter().enumerate().filter(|(_, b)| **b == b'\n');
  let ends = newlines.filter(|(i, _)| {
    let rest = &bytes[i + 1..];
    rest.starts_with(b"\n") || rest.starts_with(b"\r\n")
  });
  ends.count()
}

/// The start of one client connection, kept until the upstream answers.
struct Opening {
  /// What the client sent so far, while it may still be replayed; `None` once it outgrew `REPLAY_LIMIT` or
  /// is a request that must not run twice.
  sent: Option<Vec<u8>>,
  /// The client half-closed.
  client_ended: bool,
}

impl Opening {
  fn keep(&mut self, bytes: &[u8]) {
    if let Some(sent) = self.sent.as_mut() {
      if sent.len() + bytes.len() > REPLAY_LIMIT {
        self.sent = None;
      } else {
        sent.extend_from_slice(bytes);
      }
    }
  }

  /// After the kept bytes reached an upstream: may they still be replayed elsewhere? Drops them if not.
  fn still_replayable(&mut self) -> bool {
    if self.sent.as_deref().and_then(replayable) == Some(false) {
      self.sent = None;
    }
    self.sent.is_some()
  }

  /// May the connection move to another upstream after this one was lost before its first byte?
  /// `written`: some of the client's bytes reached the lost upstream's socket; `clean_end`: it closed
  /// (FIN) rather than reset.
  fn may_move(&self, written: bool, clean_end: bool) -> bool {
    match self.sent.as_deref() {
      None => false,
      // Nothing of the client's reached it, so nothing can run twice; but an upstream that closed an
      // exchange the client already ended (empty both ways) gave its whole answer.
      Some(_) if !written => !(clean_end && self.client_ended),
      Some(sent) => replayable(sent) == Some(true),
    }
  }
}

/// How the start of a connection ended.
enum Opened {
  /// The upstream sent its first byte (passed on), or the start can no longer be replayed: from here on,
  /// bytes are only relayed.
  Committed,
  /// The upstream closed (`clean_end`) or failed (reset, broken pipe) before its first byte; `written`:
  /// some of the client's bytes had reached its socket.
  Lost { written: bool, clean_end: bool },
  /// The client failed, or could not be written to.
  Failed,
}

/// When the last byte moved either way on one connection, for the idle timeout. A clock read per read is
/// a few tens of nanoseconds (vDSO), next to the microseconds of the read itself.
struct Activity {
  since: Instant,
  /// Milliseconds from `since` to the last byte.
  last: AtomicU64,
}

impl Activity {
  fn new() -> Activity {
    Activity {
      since: Instant::now(),
      last: AtomicU64::new(0),
    }
  }

  fn touch(&self) {
    let now = self.since.elapsed().as_millis() as u64;
    self.last.store(now, Ordering::Relaxed);
  }

  /// Resolves once nothing moved for `limit` (never with `None`).
  async fn idle_for(&self, limit: Option<Duration>) {
    let Some(limit) = limit else {
      return std::future::pending().await;
    };
    loop {
      let due = self.since + Duration::from_millis(self.last.load(Ordering::Relaxed)) + limit;
      if Instant::now() >= due {
        return;
      }
      sleep_until(due).await;
    }
  }
}

/// Writes all of `bytes`, noting in `written` once any of them reached the socket.
async fn write_noting(to: &mut TcpStream, bytes: &[u8], written: &mut bool) -> io::Result<()> {
  use tokio::io::AsyncWriteExt;
  let mut rest = bytes;
  while !rest.is_empty() {
    let n = to.write(rest).await?;
    if n == 0 {
      return Err(io::ErrorKind::WriteZero.into());
    }
    *written = true;
    rest = &rest[n..];
  }
  Ok(())
}

/// The upstream one connection is trying, and the balancer to report it to.
struct Trying<'a> {
  shared: &'a Shared,
  pick: &'a Pick,
  activity: &'a Activity,
}

/// Relays the client's bytes to a freshly connected upstream, keeping them while they may be replayed,
/// until the upstream's first byte or end; on a replay, first writes what the client sent to the upstream
/// that was lost. An upstream silent for `first_byte_timeout` after a request is taken out as frozen (the
/// connection still waits for it: the request may be slow, not lost).
async fn open(
  trying: Trying<'_>,
  client: &mut TcpStream,
  upstream: &mut TcpStream,
  opening: &mut Opening,
  buffer: &mut [u8],
) -> Opened {
  use tokio::io::{AsyncReadExt, AsyncWriteExt};
  let mut written = false;
  let sent = opening.sent.as_deref().unwrap_or_default();
  if !sent.is_empty() && write_noting(upstream, sent, &mut written).await.is_err() {
    return Opened::Lost {
      written,
      clean_end: false,
    };
  }
  if opening.client_ended && upstream.shutdown().await.is_err() {
    return Opened::Lost {
      written,
      clean_end: false,
    };
  }
  let first_byte_timeout = trying.shared.limits.first_byte_timeout;
  let mut answer_due = first_byte_timeout
    .filter(|_| written)
    .map(|t| Instant::now() + t);
  let mut frozen = false;
  loop {
    tokio::select! {
      read = client.read(buffer), if !opening.client_ended => match read {
        Ok(0) => {
          opening.client_ended = true;
          trying.activity.touch();
          if upstream.shutdown().await.is_err() {
            return Opened::Lost { written, clean_end: false };
          }
        }
        Ok(read) => {
          trying.activity.touch();
          opening.keep(&buffer[..read]);
          if write_noting(upstream, &buffer[..read], &mut written).await.is_err() {
            return Opened::Lost { written, clean_end: false };
          }
          if answer_due.is_none() {
            answer_due = first_byte_timeout.map(|t| Instant::now() + t);
          }
          if !opening.still_replayable() {
            // No replay is possible any more: the relay takes over (and a bulk upload gets splice).
            return Opened::Committed;
          }
        }
        Err(_) => return Opened::Failed,
      },
      _ = sleep_until(answer_due.unwrap_or_else(Instant::now)), if answer_due.is_some() && !frozen => {
        frozen = true;
        trying
          .shared
          .mark_failed(trying.pick.id, trying.pick.epoch, TakenOut::Frozen);
      }
      ready = upstream.readable() => {
        if ready.is_err() {
          return Opened::Lost { written, clean_end: false };
        }
        match upstream.try_read(buffer) {
          Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
          Err(_) => return Opened::Lost { written, clean_end: false },
          Ok(0) => return Opened::Lost { written, clean_end: true },
          Ok(read) => {
            trying.activity.touch();
            return match client.write_all(&buffer[..read]).await {
              Ok(()) => Opened::Committed,
              Err(_) => Opened::Failed,
            }
          }
        }
      }
    }
  }
}

/// One client connection: connect it to an upstream, then relay both ways until both sides are done, or
/// until nothing moved either way for the idle timeout. `_slot` is its place among `max_connections`.
async fn serve(
  shared: Arc<Shared>,
  client: TcpStream,
  _connection: LoadGuard,
  _slot: OwnedSemaphorePermit,
) {
  let activity = Activity::new();
  tokio::select! {
    _ = connect_and_relay(&shared, client, &activity) => {}
    // Dropping the relay closes both sockets: nothing is in flight to cut short.
    _ = activity.idle_for(shared.limits.idle_timeout) => {}
  }
}

/// Connects a client to an upstream, then relays. An upstream lost before its first byte is replaced by
/// another one, with the client's bytes replayed, where `Opening::may_move` allows it.
async fn connect_and_relay(shared: &Shared, mut client: TcpStream, activity: &Activity) {
  let mut phase = shared.phase.subscribe();
  let _ = client.set_nodelay(true);
  let mut tried = Vec::new();
  let mut opening = Opening {
    sent: Some(Vec::new()),
    client_ended: false,
  };
  let mut buffer = vec![0u8; RELAY_BUFFER];
  let (mut upstream, _upstream_load) = loop {
    let routed = tokio::select! {
      routed = shared.connect_upstream(&mut tried) => routed,
      _ = phase.wait_for(|p| *p == Phase::Cut) => None,
    };
    let Some((mut upstream, pick)) = routed else {
      // A reset, not a clean end: the client must not take the empty answer for a complete one.
      let _ = client.set_zero_linger();
      return;
    };
    let _ = upstream.set_nodelay(true);
    let trying = Trying {
      shared,
      pick: &pick,
      activity,
    };
    let opened = tokio::select! {
      opened = open(trying, &mut client, &mut upstream, &mut opening, &mut buffer) => Some(opened),
      _ = phase.wait_for(|p| *p == Phase::Cut) => None,
    };
    match opened {
      Some(Opened::Committed) => break (upstream, pick.load),
      Some(Opened::Lost { written, clean_end }) if opening.may_move(written, clean_end) => {
        // A reset is how a killed replica's queued connections end: take it out until a probe passes. A
        // clean close comes from a live process (or one exiting, which its owner sees anyway).
        if !clean_end {
          shared.mark_failed(pick.id, pick.epoch, TakenOut::Reset);
        }
        tried.push(pick.id);
      }
      // Closed without an answer, and not to be replayed: the client gets that same end.
      Some(Opened::Lost {
        clean_end: true, ..
      }) => break (upstream, pick.load),
      Some(Opened::Lost { .. } | Opened::Failed) | None => {
        let _ = client.set_zero_linger();
        let _ = upstream.set_zero_linger();
        return;
      }
    }
  };
  drop(buffer);
  let client_ended = opening.client_ended;
  drop(opening);
  let cut = tokio::select! {
    _ = relay(shared, &mut client, &mut upstream, client_ended, activity) => false,
    _ = phase.wait_for(|p| *p == Phase::Cut) => true,
  };
  if cut {
    // An abort is a reset: after a clean FIN a truncated close-delimited body would look complete.
    let _ = client.set_zero_linger();
    let _ = upstream.set_zero_linger();
  }
}

/// Per direction, in user space: enough for any HTTP head or WebSocket frame of an API backend.
const RELAY_BUFFER: usize = 8 * 1024;

/// Relays both ways until each direction has ended, passing each end on as a half-close (shutdown of the
/// other side's write half), so the other direction keeps going; an error on either side ends both (the
/// sockets are then closed by the caller without a reset, so bytes already written are still delivered).
/// `client_ended`: the client's end was already passed on.
async fn relay(
  shared: &Shared,
  client: &mut TcpStream,
  upstream: &mut TcpStream,
  client_ended: bool,
  activity: &Activity,
) -> io::Result<()> {
  let (client_reader, client_writer) = client.split();
  let (upstream_reader, upstream_writer) = upstream.split();
  let to_upstream = async {
    if client_ended {
      return Ok(());
    }
    forward(shared, client_reader, upstream_writer, activity).await
  };
  let to_client = forward(shared, upstream_reader, client_writer, activity);
  tokio::try_join!(to_upstream, to_client)?;
  Ok(())
}

/// One direction. Small exchanges are copied through a user-space buffer, as
/// `tokio::io::copy_bidirectional` does (and at the same cost, measured). On Linux a bulk transfer switches
/// to splice(2), which moves the data socket → pipe → socket inside the kernel: measured (bench in tests.rs,
/// 1 MiB answers) at half the CPU time and 1.4-1.9x the throughput of copying, while for small answers it
/// costs ~20 % more CPU time than copying in 5 of 6 runs (and a pipe per direction), hence only for bulk.
/// The pipe takes a connection slot (two descriptors), or is done without when none is free.
async fn forward(
  shared: &Shared,
  mut from: tokio::net::tcp::ReadHalf<'_>,
  mut to: tokio::net::tcp::WriteHalf<'_>,
  activity: &Activity,
) -> io::Result<()> {
  use tokio::io::{AsyncReadExt, AsyncWriteExt};
  let mut buffer = vec![0u8; RELAY_BUFFER];
  let mut bulk = Bulk::new();
  loop {
    let read = from.read(&mut buffer).await?;
    activity.touch();
    if read == 0 {
      return to.shutdown().await;
    }
    to.write_all(&buffer[..read]).await?;
    let (slots, reader, writer) = (&shared.slots, from.as_ref(), to.as_ref());
    if bulk
      .after_copy(slots, reader, writer, read, buffer.len(), activity)
      .await?
    {
      return Ok(());
    }
  }
}

/// What the OS says about descriptors and error codes, one module per platform with the same names.
#[cfg(unix)]
#[path = "balancer/unix.rs"]
mod imp;
#[cfg(windows)]
#[path = "balancer/windows.rs"]
mod imp;

/// On Linux a bulk transfer is moved on by splice(2); elsewhere every byte is copied.
#[cfg(target_os = "linux")]
mod splice;
#[cfg(target_os = "linux")]
use splice::Bulk;

#[cfg(not(target_os = "linux"))]
mod copy_only {
  use std::io;
  use tokio::net::TcpStream;
  use tokio::sync::Semaphore;

  /// No splice here: a bulk transfer is copied like any other.
  pub struct Bulk;

  impl Bulk {
    pub fn new() -> Bulk {
      Bulk
    }

    pub async fn after_copy(
      &mut self,
      _slots: &Semaphore,
      _from: &TcpStream,
      _to: &TcpStream,
      _read: usize,
      _buffer: usize,
      _activity: &super::Activity,
    ) -> io::Result<bool> {
      Ok(false)
    }
  }
}
#[cfg(not(target_os = "linux"))]
use copy_only::Bulk;

#[cfg(test)]
mod tests;
