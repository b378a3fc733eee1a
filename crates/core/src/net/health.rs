//! Readiness: one HTTP GET of the health path, and the polling loop around it (docs/api.md,
//! `waitForBackendReady`). The probe is a minimal HTTP/1.1 client on a plain TCP connection to the literal
//! host address: it can never be routed to a proxy (docs/design.md §5) and never resolves `localhost`. It sends
//! `Connection: close`, so no idle keep-alive connection delays the backend's own shutdown later.
//!
//! A request that carries the backend's token is written only after the socket that took the connection is
//! found to be the backend's own (docs/design.md §26): a listener that another user put on the port between
//! the port check and the backend's bind gets a connection and not one byte.
//!
//! Why not reqwest (measured, see docs/performance.md, "The health probe"): a probe through reqwest costs more per
//! request than this client on loopback, which readiness pays at every poll, and it cannot set the socket
//! options a fast refused connect needs on Windows (`TCP_MAXRT`). The status line is parsed by httparse.

use crate::net::listeners::Holder;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{sleep, timeout, Instant};

/// Between two looks at a port nobody tells us about. The lag from listen to "ready" is half of it on
/// average plus one probe and its hand-overs (~0.7 ms on the 2-core VM of `npm run bench`), so a median
/// lag under 1.5 ms needs a look at least every ~1.5 ms. The CPU time of a wait is mostly one thread
/// wake-up per look: on that VM 1 ms looks cost ~100 ms per 2 s wait, where a thread that does nothing
/// but sleep 1 ms at a time costs ~75 ms (measured).
const POLL_EVERY: Duration = Duration::from_millis(1);
/// Once the backend answers but is not healthy yet, back off from here towards the caller's cap.
const ANSWERED_DELAY_START: Duration = Duration::from_millis(25);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
  Healthy(u16),
  /// Nothing listens on the port (yet).
  Refused,
  /// It answered, but not with 2xx.
  Unhealthy(u16),
  TimedOut,
  Failed(String),
  /// A listener that is not the backend's (another program on the same port): its 2xx answer (`Some`), or
  /// no request at all (`None`: the request carried the token, and the owner check came first).
  Stranger(Option<u16>),
}

impl ProbeOutcome {
  pub fn is_healthy(&self) -> bool {
    matches!(self, ProbeOutcome::Healthy(_))
  }

  pub fn describe(&self) -> String {
    match self {
      ProbeOutcome::Healthy(status) => format!("HTTP {status}"),
      ProbeOutcome::Refused => "connection refused".into(),
      ProbeOutcome::Unhealthy(status) => format!("HTTP {status}"),
      ProbeOutcome::TimedOut => "timed out".into(),
      ProbeOutcome::Failed(reason) => reason.clone(),
      ProbeOutcome::Stranger(Some(status)) => {
        format!("HTTP {status}, but from another program listening on the port, not the backend")
      }
      ProbeOutcome::Stranger(None) => {
        "another program listens on the port, not the backend (it was sent nothing)".into()
      }
    }
  }
}

#[derive(Debug, Clone)]
pub struct Target {
  pub host: IpAddr,
  pub port: u16,
  pub path: String,
  /// The token, sent as `Authorization: Bearer <token>` to the backend's own listener only.
  pub secret: Option<Secret>,
}

/// Our end and the far end of a probe's connection, which name the socket that took it.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
  pub local: SocketAddr,
  pub peer: SocketAddr,
}

/// Who holds the socket at the far end of a connection, as far as the backend is concerned.
pub type Owner =
  Arc<dyn Fn(Connection) -> Pin<Box<dyn Future<Output = Holder> + Send>> + Send + Sync>;

/// The token and the check that decides who may receive it.
#[derive(Clone)]
pub struct Secret {
  pub token: String,
  /// Asked after the connect, before a byte is written. `Ours` and `Unknown` (the OS cannot tell, as
  /// under Wine) get the request; anyone else gets nothing.
  pub owner: Owner,
}

impl std::fmt::Debug for Secret {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str("Secret { .. }")
  }
}

impl Target {
  fn host_header(&self) -> String {
    match self.host {
      IpAddr::V4(ip) => format!("{ip}:{}", self.port),
      IpAddr::V6(ip) => format!("[{ip}]:{}", self.port),
    }
  }
}

/// One GET of `http://host:port/path`; healthy on any 2xx status, within `probe_timeout` overall.
pub async fn probe(target: &Target, probe_timeout: Duration) -> ProbeOutcome {
  request(target, "GET", &target.path, probe_timeout).await
}

/// One request of `method path` to the target (with its token), within `limit` overall: how it was
/// answered. Also the `shutdown.http` stop request.
pub async fn request(target: &Target, method: &str, path: &str, limit: Duration) -> ProbeOutcome {
  match timeout(limit, exchange(target, method, path)).await {
    Ok(outcome) => outcome,
    Err(_) => ProbeOutcome::TimedOut,
  }
}

async fn exchange(target: &Target, method: &str, path: &str) -> ProbeOutcome {
  let addr = SocketAddr::new(target.host, target.port);
  let stream = match imp::connect(addr).await {
    Ok(s) => s,
    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return ProbeOutcome::Refused,
    Err(e) => return ProbeOutcome::Failed(e.to_string()),
  };
  let _ = stream.set_nodelay(true);
  if let Some(secret) = &target.secret {
    let connection = match (stream.local_addr(), stream.peer_addr()) {
      (Ok(local), Ok(peer)) => Connection { local, peer },
      (Err(e), _) | (_, Err(e)) => return ProbeOutcome::Failed(e.to_string()),
    };
    match (secret.owner)(connection).await {
      Holder::Ours | Holder::Unknown => {}
      Holder::Others => return ProbeOutcome::Stranger(None),
      // The far end is gone (the listener closed with the connection in its queue).
      Holder::Nobody => {
        return ProbeOutcome::Failed("the connection closed before the request was sent".into())
      }
    }
  }
  converse(stream, target, method, path).await
}

/// Writes `method path` (with the token) on a connection made, and reads how it is answered.
async fn converse(
  mut stream: TcpStream,
  target: &Target,
  method: &str,
  path: &str,
) -> ProbeOutcome {
  let authorization = target
    .secret
    .as_ref()
    .map(|s| format!("Authorization: Bearer {}\r\n", s.token))
    .unwrap_or_default();
  let body = if method == "GET" || method == "HEAD" {
    ""
  } else {
    "Content-Length: 0\r\n"
  };
  let request = format!(
    "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: backend-process-manager\r\nAccept: */*\r\n{authorization}{body}Connection: close\r\n\r\n",
    target.host_header()
  );
  if let Err(e) = stream.write_all(request.as_bytes()).await {
    return ProbeOutcome::Failed(e.to_string());
  }
  // Only the status line matters; read until it is complete (it is in the first packet in practice).
  let mut head = Vec::with_capacity(256);
  let mut buf = [0u8; 256];
  loop {
    match stream.read(&mut buf).await {
      Ok(0) => break,
      Ok(n) => {
        head.extend_from_slice(&buf[..n]);
        if head.contains(&b'\n') || head.len() > 4096 {
          break;
        }
      }
      Err(e) => return ProbeOutcome::Failed(e.to_string()),
    }
  }
  match parse_status(&head) {
    Some(status) if (200..300).contains(&status) => ProbeOutcome::Healthy(status),
    Some(status) => ProbeOutcome::Unhealthy(status),
    None if head.is_empty() => {
      ProbeOutcome::Failed("the connection closed without an HTTP answer".into())
    }
    None => ProbeOutcome::Failed("the answer is not HTTP".into()),
  }
}

/// The status code of an HTTP/1.x response head (which may be cut short after the status line).
fn parse_status(head: &[u8]) -> Option<u16> {
  let mut headers = [httparse::EMPTY_HEADER; 32];
  let mut response = httparse::Response::new(&mut headers);
  match response.parse(head) {
    Ok(_) | Err(httparse::Error::TooManyHeaders) => response.code,
    Err(_) => None,
  }
}

/// `listen: 'fd'`: readiness on the listening socket that this process holds and handed to the backend.
/// A connection to it is queued in its backlog until a backend process accepts it, so one probe, its
/// request written at once, waits there for its answer until `deadline`: nothing is polled, the backend
/// gets one connection, and the answer comes as soon as it accepts and answers. Only the processes that
/// hold that socket (this one and those it handed it to) can accept from it, so the request goes without
/// an owner check first, and its 2xx is the backend's. An answer that is not a 2xx (or a connection closed
/// without one) hands the rest of the wait to `wait_until_healthy`, whose probes back off as usual. The
/// backend exiting meanwhile is the caller's to notice (it drops this future).
pub async fn wait_in_backlog<F, Fut>(
  target: &Target,
  probe_timeout: Duration,
  deadline: Instant,
  answered_delay_cap: Duration,
  watch: Watch,
  is_own: F,
) -> Result<Ready, NotReady>
where
  F: FnMut() -> Fut,
  Fut: std::future::Future<Output = bool>,
{
  let began = Instant::now();
  let queued = async {
    match imp::connect(SocketAddr::new(target.host, target.port)).await {
      Ok(stream) => {
        let _ = stream.set_nodelay(true);
        converse(stream, target, "GET", &target.path).await
      }
      Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => ProbeOutcome::Refused,
      Err(e) => ProbeOutcome::Failed(e.to_string()),
    }
  };
  let outcome = match tokio::time::timeout_at(deadline, queued).await {
    Ok(outcome) => outcome,
    Err(_) => {
      return Err(NotReady {
        last: ProbeOutcome::Failed(format!(
          "no answer: the backend did not accept from the socket it was handed (one probe waited {} ms in its backlog)",
          began.elapsed().as_millis()
        )),
        probes: 1,
      })
    }
  };
  if let ProbeOutcome::Healthy(_) = outcome {
    return Ok(Ready {
      probes: 1,
      latency: began.elapsed(),
    });
  }
  match wait_until_healthy(
    target,
    probe_timeout,
    deadline,
    answered_delay_cap,
    watch,
    is_own,
  )
  .await
  {
    Ok(ready) => Ok(Ready {
      probes: ready.probes + 1,
      ..ready
    }),
    Err(not_ready) => Err(NotReady {
      probes: not_ready.probes + 1,
      ..not_ready
    }),
  }
}

/// A readiness wait that ended healthy, after `probes` health checks; the last one took `latency`.
#[derive(Debug, Clone)]
pub struct Ready {
  pub probes: u32,
  pub latency: Duration,
}

/// The result of a readiness wait that did not end healthy.
#[derive(Debug, Clone)]
pub struct NotReady {
  pub last: ProbeOutcome,
  pub probes: u32,
}

/// How a readiness wait looks for a backend that does not listen yet.
#[derive(Clone, Default)]
pub struct Watch {
  /// Between two looks while nothing listens. Each look is one exact lookup in the kernel's listening
  /// sockets (Linux; the table of them on Windows, a refused connect on macOS), far cheaper than a probe.
  pub refused_delay: Duration,
  /// Woken when the backend writes a line: most servers say so when they start listening, so the wait
  /// looks at once instead of at its next tick.
  pub nudge: Option<Arc<Notify>>,
  /// The wait runs alone on a thread of its own (a runtime of its own driven by `block_on`), so it may
  /// sleep there between looks (Linux, see `look_until_listening`).
  pub own_thread: bool,
}

impl Watch {
  /// A port nobody tells us about (`waitForBackendReady`), waited for on a thread of its own: look every
  /// `POLL_EVERY` (Linux: sleeping on that thread; elsewhere on its runtime's timer, whose 1 ms ticks round
  /// it up).
  pub fn polling_on_own_thread() -> Watch {
    Watch {
      refused_delay: POLL_EVERY,
      nudge: None,
      own_thread: true,
    }
  }
}

/// Whether a connect to the target would find a listener, without connecting: `None` where the OS cannot
/// say cheaply (then the probe connects to find out; a refused loopback connect is cheap except on
/// Windows). Linux: one exact lookup in the kernel's listening hash (~4 us, measured, where a dump of
/// every listening socket walks all of that hash, ~70 us, and a refused connect costs ~40 us). Windows:
/// its table of listening sockets. macOS: the probe, as listing sockets there means every process's.
fn listening(target: &Target) -> Option<bool> {
  let addr = SocketAddr::new(target.host, target.port);
  super::listeners::listener_at(addr).or_else(|| imp::listening_in_table(target.port))
}

/// Waits until healthy or `deadline`. While nothing listens on the port, it looks every
/// `watch.refused_delay` (and whenever the backend writes a line) without sending anything; once a listener
/// exists it probes at once, and if the backend answers unhealthy or times out, the delay doubles up to
/// `answered_delay_cap`. A 2xx counts only when `is_own` agrees that the listener is the backend's (with a
/// secret, the probe itself asked its owner before it wrote anything). A probe never runs past the deadline.
pub async fn wait_until_healthy<F, Fut>(
  target: &Target,
  probe_timeout: Duration,
  deadline: Instant,
  answered_delay_cap: Duration,
  watch: Watch,
  mut is_own: F,
) -> Result<Ready, NotReady>
where
  F: FnMut() -> Fut,
  Fut: std::future::Future<Output = bool>,
{
  let mut probes = 0;
  let mut answered_delay = ANSWERED_DELAY_START.min(answered_delay_cap);
  let mut last_look = false;
  let mut last_telling: Option<ProbeOutcome> = None;
  // The backend just wrote a line: probe at once, without a look first (it most likely listens now).
  let mut nudged = false;
  let own_thread = own_thread::OwnThread::new(target, watch.own_thread);
  loop {
    let look = !last_look && !nudged;
    nudged = false;
    // A probe the deadline cut short: its time-out says nothing about the backend.
    let mut cut_short = false;
    let outcome = if look && listening(target) == Some(false) {
      ProbeOutcome::Refused
    } else {
      let remaining = deadline.saturating_duration_since(Instant::now());
      let limit = if last_look {
        probe_timeout.min(Duration::from_millis(50))
      } else {
        probe_timeout.min(remaining.max(Duration::from_millis(1)))
      };
      cut_short = limit < probe_timeout;
      // The probe runs as a task of its own while the listener's owner is looked up here: the two
      // overlap, on the path that decides how soon the app sees its backend.
      let probed_at = Instant::now();
      let probing = tokio::spawn({
        let target = target.clone();
        async move {
          let outcome = probe(&target, limit).await;
          (outcome, probed_at.elapsed())
        }
      });
      // The probe's connect goes out first (the spawned task runs when this one yields), so the backend
      // answers while the owner is looked up here.
      tokio::task::yield_now().await;
      let checked_before_writing = target.secret.is_some();
      let own = checked_before_writing || is_own().await;
      let (mut outcome, latency) = probing
        .await
        .unwrap_or_else(|e| (ProbeOutcome::Failed(e.to_string()), probed_at.elapsed()));
      probes += 1;
      if let ProbeOutcome::Healthy(status) = outcome {
        if own || is_own().await {
          return Ok(Ready { probes, latency });
        }
        outcome = ProbeOutcome::Stranger(Some(status));
      }
      outcome
    };
    if !(cut_short && outcome == ProbeOutcome::TimedOut) {
      last_telling = Some(outcome.clone());
    }
    let now = Instant::now();
    if last_look || now >= deadline {
      // The last answer that tells something (a 503, a refusal), not a probe the deadline cut short.
      return Err(NotReady {
        last: last_telling.unwrap_or(outcome),
        probes,
      });
    }
    let delay = if outcome == ProbeOutcome::Refused {
      watch.refused_delay
    } else {
      let d = answered_delay;
      answered_delay = (answered_delay * 2).min(answered_delay_cap.max(ANSWERED_DELAY_START));
      d
    };
    if outcome == ProbeOutcome::Refused {
      // A listener found is probed at once, without another look, on this thread (no hand-over between
      // threads on the path to "ready"); none by the deadline: one last probe.
      if let Some(found) = own_thread.look_until_listening(delay, deadline) {
        nudged = found;
        last_look = !nudged;
        continue;
      }
    }
    let pause = sleep(delay.min(deadline - now));
    match (&watch.nudge, outcome == ProbeOutcome::Refused) {
      (Some(nudge), true) => {
        tokio::select! {
          _ = pause => {}
          _ = nudge.notified() => nudged = true,
        }
      }
      _ => pause.await,
    }
    // At the deadline itself, one last look, so a backend that became healthy during the wait counts.
    last_look = Instant::now() >= deadline;
  }
}

/// Windows: a refused connect is slow, so the probe's is told to give up at once; the table of listening
/// sockets answers whether anything listens.
#[cfg(windows)]
mod imp {
  use std::net::SocketAddr;
  use tokio::net::TcpStream;

  /// Windows retries a refused connect for ~2 s, even on loopback (libuv#2896): the probe's socket is told
  /// not to (best effort: a system that refuses the options keeps its default).
  pub async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    let _ = crate::os::win::net::set_fast_fail(&socket, 1);
    socket.set_nonblocking(true)?;
    tokio::net::TcpSocket::from_std_stream(socket.into())
      .connect(addr)
      .await
  }

  /// Its table of listening sockets.
  pub fn listening_in_table(port: u16) -> Option<bool> {
    crate::net::listeners::listening_ports().map(|ports| ports.contains(&port))
  }
}

/// Unix: a plain connect. The exact lookup (Linux) answers wherever anything can; listing sockets on macOS
/// means every process's, so the probe finds out instead.
#[cfg(not(windows))]
mod imp {
  use std::net::SocketAddr;
  use tokio::net::TcpStream;

  pub async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    TcpStream::connect(addr).await
  }

  pub fn listening_in_table(_port: u16) -> Option<bool> {
    None
  }
}

/// Linux: the kernel answers exact listener lookups, so a wait on a thread of its own looks there, sleeping
/// between looks, instead of probing.
#[cfg(target_os = "linux")]
mod own_thread {
  use super::Target;
  use std::net::SocketAddr;
  use std::time::Duration;
  use tokio::time::Instant;

  /// A readiness wait alone on its thread (`Watch::own_thread`), where the kernel answers exact lookups
  /// (some sandboxes refuse netlink).
  pub struct OwnThread {
    addr: Option<SocketAddr>,
  }

  impl OwnThread {
    pub fn new(target: &Target, own_thread: bool) -> OwnThread {
      let addr = SocketAddr::new(target.host, target.port);
      let answers = own_thread && crate::net::listeners::listener_at(addr).is_some();
      OwnThread {
        addr: answers.then_some(addr),
      }
    }

    /// Looks every `every` until a listener is there (`Some(true)`) or `until` (`Some(false)`); `None`
    /// when this wait does not look on its own thread.
    pub fn look_until_listening(&self, every: Duration, until: Instant) -> Option<bool> {
      self
        .addr
        .map(|addr| look_until_listening(addr, every, until))
    }
  }

  /// Looks for a listener at `addr` every `every` until one is there (`true`) or `until` (`false`),
  /// sleeping on the kernel's precise timer between looks. It blocks the thread, which nothing else
  /// shares. On the shared runtime each look cost two thread wake-ups (the worker holding the timer hands
  /// the task to another) and the timer's 1 ms ticks made the looks 1-2 ms apart at random; on a VM each
  /// wake-up costs ~45 us of CPU, more than the look itself, so the wake-ups are the cost.
  fn look_until_listening(addr: SocketAddr, every: Duration, until: Instant) -> bool {
    let until = until.into_std();
    loop {
      let now = std::time::Instant::now();
      if crate::net::listeners::listener_at(addr) != Some(false) {
        return true;
      }
      if now >= until {
        return false;
      }
      std::thread::sleep(every.min(until - now));
    }
  }
}

/// Elsewhere a wait looks on its runtime's timer.
#[cfg(not(target_os = "linux"))]
mod own_thread {
  use super::Target;
  use std::time::Duration;
  use tokio::time::Instant;

  pub struct OwnThread;

  impl OwnThread {
    pub fn new(_target: &Target, _own_thread: bool) -> OwnThread {
      OwnThread
    }

    pub fn look_until_listening(&self, _every: Duration, _until: Instant) -> Option<bool> {
      None
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use tokio::net::TcpListener;

  async fn serve_once(listener: TcpListener, answer: &'static str) {
    let (mut socket, _) = listener.accept().await.unwrap();
    let mut buf = [0u8; 1024];
    let _ = socket.read(&mut buf).await;
    socket.write_all(answer.as_bytes()).await.unwrap();
  }

  fn target(port: u16) -> Target {
    Target {
      host: "127.0.0.1".parse().unwrap(),
      port,
      path: "/health".into(),
      secret: None,
    }
  }

  #[test]
  fn status_lines_parse() {
    assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
    assert_eq!(parse_status(b"HTTP/1.0 503 Busy\r\nContent-Le"), Some(503));
    assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
    assert_eq!(parse_status(b""), None);
  }

  #[tokio::test]
  async fn a_2xx_answer_is_healthy_and_a_503_is_not() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(serve_once(
      listener,
      "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    ));
    assert_eq!(
      probe(&target(port), Duration::from_secs(1)).await,
      ProbeOutcome::Healthy(200)
    );
    server.await.unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(serve_once(listener, "HTTP/1.1 503 Busy\r\n\r\n"));
    assert_eq!(
      probe(&target(port), Duration::from_secs(1)).await,
      ProbeOutcome::Unhealthy(503)
    );
    server.await.unwrap();
  }

  #[tokio::test]
  async fn a_closed_port_is_refused_and_the_wait_ends_at_the_deadline() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
      .unwrap()
      .local_addr()
      .unwrap()
      .port();
    assert_eq!(
      probe(&target(port), Duration::from_secs(1)).await,
      ProbeOutcome::Refused
    );
    let started = Instant::now();
    let result = wait_until_healthy(
      &target(port),
      Duration::from_secs(1),
      started + Duration::from_millis(200),
      Duration::from_secs(1),
      Watch::polling_on_own_thread(),
      || async { true },
    )
    .await;
    assert_eq!(result.unwrap_err().last, ProbeOutcome::Refused);
    let waited = started.elapsed();
    assert!(
      waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
      "{waited:?}"
    );
  }

  /// A wait on a thread of its own (as `waitForBackendReady` runs) finds a listener that appears later,
  /// from another thread, and probes it at once: the wait ends well before its 1 s answered delay.
  #[test]
  fn a_wait_on_its_own_thread_probes_a_late_listener_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
      .unwrap()
      .local_addr()
      .unwrap()
      .port();
    let server = std::thread::spawn(move || {
      std::thread::sleep(Duration::from_millis(150));
      let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
      let listening = std::time::Instant::now();
      let (mut socket, _) = listener.accept().unwrap();
      let accepted = listening.elapsed();
      let mut buf = [0u8; 1024];
      let _ = std::io::Read::read(&mut socket, &mut buf);
      std::io::Write::write_all(&mut socket, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        .unwrap();
      accepted
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
      .enable_all()
      .build()
      .unwrap();
    let ready = runtime.block_on(async {
      wait_until_healthy(
        &target(port),
        Duration::from_secs(1),
        Instant::now() + Duration::from_secs(10),
        Duration::from_secs(1),
        Watch::polling_on_own_thread(),
        || async { true },
      )
      .await
    });
    assert!(ready.is_ok(), "{:?}", ready.err());
    let accepted = server.join().unwrap();
    assert!(
      accepted < Duration::from_millis(500),
      "probed {accepted:?} after the listen"
    );
  }

  /// A token that only the processes `pids` may be sent: the check the lifecycle makes, on fixed pids.
  #[cfg(unix)]
  fn secret_for(pids: Vec<u32>) -> Secret {
    Secret {
      token: "s3cret".into(),
      owner: Arc::new(move |c: Connection| {
        let pids = pids.clone();
        Box::pin(async move { crate::net::listeners::connection_held_by(c.local, c.peer, &pids) })
      }),
    }
  }

  /// Accepts one connection and keeps every byte it receives; answers 200 once a request head came.
  #[cfg(unix)]
  async fn record_one(listener: TcpListener) -> Vec<u8> {
    let (mut socket, _) = listener.accept().await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
      match socket.read(&mut buf).await {
        Ok(0) | Err(_) => return got,
        Ok(n) => got.extend_from_slice(&buf[..n]),
      }
      if got.windows(4).any(|w| w == b"\r\n\r\n") {
        let _ = socket
          .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
          .await;
        return got;
      }
    }
  }

  /// Wine's socket table names no owners, so there every listener is "unknown" and gets the request.
  #[cfg(unix)]
  #[tokio::test]
  async fn a_listener_outside_the_expected_processes_never_gets_a_byte_of_a_request_with_the_token()
  {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stranger = tokio::spawn(record_one(listener));
    let mut to_stranger = target(port);
    // This process holds the listener; pid 1 stands for the backend, which does not.
    to_stranger.secret = Some(secret_for(vec![1]));
    assert_eq!(
      probe(&to_stranger, Duration::from_secs(5)).await,
      ProbeOutcome::Stranger(None)
    );
    let received = stranger.await.unwrap();
    assert!(
      received.is_empty(),
      "{:?}",
      String::from_utf8_lossy(&received)
    );

    // The same listener, expected: the request and its token go out.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let own = tokio::spawn(record_one(listener));
    let mut to_own = target(port);
    to_own.secret = Some(secret_for(vec![std::process::id()]));
    assert_eq!(
      probe(&to_own, Duration::from_secs(5)).await,
      ProbeOutcome::Healthy(200)
    );
    let received = String::from_utf8(own.await.unwrap()).unwrap();
    assert!(
      received.contains("\r\nAuthorization: Bearer s3cret\r\n"),
      "{received}"
    );
  }

  #[tokio::test]
  async fn a_silent_server_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    assert_eq!(
      probe(&target(port), Duration::from_millis(100)).await,
      ProbeOutcome::TimedOut
    );
    drop(listener);
  }
}
