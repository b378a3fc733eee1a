use super::*;
use crate::net::listeners;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Whether the tests run under Wine, whose sockets differ from Windows' in the ways the tests below name.
#[cfg(windows)]
fn under_wine() -> bool {
  crate::os::win::is_wine()
}

#[cfg(not(windows))]
fn under_wine() -> bool {
  false
}

/// Generous bound on anything that should happen at once, for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(10);

/// What a test can read about one upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamStatus {
  pub id: usize,
  pub addr: SocketAddr,
  pub healthy: bool,
  pub draining: bool,
  pub active_connections: usize,
}

/// Readings of the balancer's table, for the tests only.
impl Balancer {
  /// Adds an upstream that gets no connections until `set_healthy(id, true)` (e.g. after its first probe).
  fn add_unhealthy(&self, id: usize, addr: SocketAddr) {
    self.insert(id, addr, false);
  }

  /// Open connections to `id`, counting those still connecting (0 for an unknown id).
  fn active_connections(&self, id: usize) -> usize {
    let mut table = self.shared.table();
    table.get_mut(id).map_or(0, |u| u.load.active())
  }

  /// Every client connection the balancer holds now (connecting, waiting for an upstream, or relayed).
  fn open_connections(&self) -> usize {
    self.shared.connections.active()
  }

  /// Every known upstream as the table holds it.
  fn upstreams(&self) -> Vec<UpstreamStatus> {
    let table = self.shared.table();
    let statuses = table.upstreams.iter().map(|u| UpstreamStatus {
      id: u.id,
      addr: u.addr,
      healthy: u.healthy,
      draining: u.draining,
      active_connections: u.load.active(),
    });
    statuses.collect()
  }
}

/// A started balancer with the address it listens on (the balancer itself does not keep it).
#[derive(Clone)]
struct Started {
  balancer: Arc<Balancer>,
  addr: SocketAddr,
}

impl Started {
  fn local_addr(&self) -> SocketAddr {
    self.addr
  }
}

impl std::ops::Deref for Started {
  type Target = Arc<Balancer>;
  fn deref(&self) -> &Arc<Balancer> {
    &self.balancer
  }
}

/// Starts a balancer on a fresh loopback port.
fn start_on_loopback(strategy: Strategy, limits: Limits) -> Started {
  let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
  let addr = listener.local_addr().unwrap();
  let balancer = Balancer::start(listener, strategy, limits).unwrap();
  Started { balancer, addr }
}

#[derive(Clone, Copy)]
enum Mode {
  /// Reads the request to its end (the client's half-close), then answers `<id>:<request>` and closes.
  Reply,
  /// Greets with `<id>\n`, then echoes every byte until the client's half-close, then closes.
  Echo,
}

/// An upstream server on 127.0.0.1 that tags its answers with its id. Dropping it closes its listener.
struct TestUpstream {
  addr: SocketAddr,
  server: JoinHandle<()>,
}

impl TestUpstream {
  async fn start(id: usize, mode: Mode) -> TestUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
      while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(answer(id, mode, stream));
      }
    });
    TestUpstream { addr, server }
  }

  /// Closes the listening socket and waits until it is closed.
  async fn stop(mut self) {
    self.server.abort();
    let _ = (&mut self.server).await;
  }
}

impl Drop for TestUpstream {
  fn drop(&mut self) {
    self.server.abort();
  }
}

async fn answer(id: usize, mode: Mode, mut stream: TcpStream) -> io::Result<()> {
  match mode {
    Mode::Reply => {
      let mut request = Vec::new();
      stream.read_to_end(&mut request).await?;
      stream.write_all(format!("{id}:").as_bytes()).await?;
      stream.write_all(&request).await?;
    }
    Mode::Echo => {
      stream.write_all(format!("{id}\n").as_bytes()).await?;
      let (mut reader, mut writer) = stream.split();
      tokio::io::copy(&mut reader, &mut writer).await?;
    }
  }
  stream.shutdown().await
}

fn start_balancer(strategy: Strategy) -> Started {
  start_limited(strategy, Limits::default())
}

fn start_limited(strategy: Strategy, limits: Limits) -> Started {
  start_on_loopback(strategy, limits)
}

/// A balancer in front of upstreams 0..count, all answering in `mode`. Keep the upstreams: dropping
/// them closes their listeners.
async fn balancing(strategy: Strategy, mode: Mode, count: usize) -> (Vec<TestUpstream>, Started) {
  let balancer = start_balancer(strategy);
  let mut upstreams = Vec::new();
  for id in 0..count {
    let upstream = TestUpstream::start(id, mode).await;
    balancer.add(id, upstream.addr);
    upstreams.push(upstream);
  }
  (upstreams, balancer)
}

/// One request on a fresh connection to a `Reply` upstream: sends `body`, half-closes, reads the answer.
async fn request(addr: SocketAddr, body: &[u8]) -> io::Result<Vec<u8>> {
  let exchange = async {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(body).await?;
    stream.shutdown().await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(answer)
  };
  timeout(WAIT, exchange).await.expect("the request hung")
}

/// Which upstream answered a `Reply` request.
fn answered_by(answer: &[u8]) -> usize {
  let text = String::from_utf8_lossy(answer);
  let (id, _) = text
    .split_once(':')
    .unwrap_or_else(|| panic!("not an upstream answer: {text:?}"));
  id.parse().unwrap()
}

/// Opens a connection to an `Echo` upstream and reads its greeting: which upstream it reached.
async fn open_echo(addr: SocketAddr) -> (TcpStream, usize) {
  let mut stream = timeout(WAIT, TcpStream::connect(addr))
    .await
    .unwrap()
    .unwrap();
  let mut greeting = Vec::new();
  while !greeting.ends_with(b"\n") {
    let mut byte = [0u8; 1];
    let read = timeout(WAIT, stream.read(&mut byte))
      .await
      .expect("no greeting")
      .unwrap();
    assert_eq!(
      read, 1,
      "connection ended before the greeting: {greeting:?}"
    );
    greeting.push(byte[0]);
  }
  let id = String::from_utf8_lossy(&greeting).trim().parse().unwrap();
  (stream, id)
}

async fn echo_round_trip(stream: &mut TcpStream, message: &[u8]) {
  stream.write_all(message).await.unwrap();
  let mut back = vec![0u8; message.len()];
  timeout(WAIT, stream.read_exact(&mut back))
    .await
    .expect("no echo")
    .unwrap();
  assert_eq!(back, message);
}

/// Half-closes and reads until the peer's end: the clean end of an `Echo` connection.
async fn finish_echo(mut stream: TcpStream) {
  stream.shutdown().await.unwrap();
  let mut rest = Vec::new();
  timeout(WAIT, stream.read_to_end(&mut rest))
    .await
    .expect("no end")
    .unwrap();
  assert!(rest.is_empty());
}

/// Waits for a condition that an event elsewhere makes true (here: the balancer accepting a connection).
async fn until(mut condition: impl FnMut() -> bool) {
  let polled = async {
    while !condition() {
      sleep(Duration::from_millis(5)).await;
    }
  };
  timeout(WAIT, polled)
    .await
    .expect("condition never became true");
}

async fn spread_counts(strategy: Strategy) -> Vec<usize> {
  let (_upstreams, balancer) = balancing(strategy, Mode::Reply, 3).await;
  let mut counts = vec![0; 3];
  for n in 0..60 {
    let body = format!("request {n}");
    let answer = request(balancer.local_addr(), body.as_bytes())
      .await
      .unwrap();
    assert!(answer.ends_with(body.as_bytes()), "{answer:?}");
    counts[answered_by(&answer)] += 1;
  }
  assert_eq!(balancer.close(Instant::now() + WAIT).await, 0);
  counts
}

#[tokio::test]
async fn least_connections_spreads_sequential_fresh_connections_over_every_upstream() {
  let counts = spread_counts(Strategy::LeastConnections).await;
  assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
  assert_eq!(counts.iter().sum::<usize>(), 60);
}

#[tokio::test]
async fn round_robin_spreads_fresh_connections_evenly() {
  assert_eq!(spread_counts(Strategy::RoundRobin).await, vec![20, 20, 20]);
}

#[tokio::test]
async fn least_connections_avoids_the_busy_upstream() {
  let (_upstreams, balancer) = balancing(Strategy::LeastConnections, Mode::Echo, 2).await;
  let (first, busy) = open_echo(balancer.local_addr()).await;
  // While `busy` holds one connection, every new one goes to the other, which has none once each ends.
  for _ in 0..5 {
    let (stream, id) = open_echo(balancer.local_addr()).await;
    assert_ne!(id, busy);
    finish_echo(stream).await;
    until(|| balancer.active_connections(1 - busy) == 0).await;
  }
  assert_eq!(balancer.active_connections(busy), 1);
  finish_echo(first).await;
  assert_eq!(balancer.close(Instant::now() + WAIT).await, 0);
}

#[tokio::test]
async fn a_down_upstream_is_skipped_without_client_errors_and_reported_once() {
  let live = [
    TestUpstream::start(0, Mode::Reply).await,
    TestUpstream::start(2, Mode::Reply).await,
  ];
  let down = TestUpstream::start(1, Mode::Reply).await;
  let down_addr = down.addr;
  down.stop().await;
  // Hold the port without listening, so it refuses connects and no other test can take it meanwhile.
  let holder = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
  holder.set_reuse_address(true).unwrap();
  holder.bind(&down_addr.into()).unwrap();

  let balancer = start_balancer(Strategy::LeastConnections);
  let mut failures = balancer.take_failures().unwrap();
  assert!(balancer.take_failures().is_none());
  balancer.add(0, live[0].addr);
  balancer.add(1, down_addr);
  balancer.add(2, live[1].addr);
  for n in 0..30 {
    let answer = request(balancer.local_addr(), format!("request {n}").as_bytes()).await;
    let answer = answer.unwrap_or_else(|e| panic!("request {n} failed: {e}"));
    assert_ne!(answered_by(&answer), 1);
  }
  assert_eq!(
    timeout(WAIT, failures.recv()).await.unwrap(),
    Some((1, TakenOut::Refused))
  );
  assert!(failures.try_recv().is_err(), "reported more than once");
  let status = balancer.upstreams();
  assert!(!status.iter().find(|u| u.id == 1).unwrap().healthy);
  assert_eq!(balancer.active_connections(1), 0);
  assert_eq!(balancer.close(Instant::now() + WAIT).await, 0);
}

/// Sends `body` through a balancer whose only upstream never accepts; once the connection waits in that
/// upstream's accept queue, adds a live upstream (id 1) and closes the first one's listener, which resets
/// the queued connection, as when a replica is killed with connections queued. Returns the client's
/// result and the balancer (with its failure reports).
async fn reset_while_queued(
  body: Vec<u8>,
) -> (
  io::Result<Vec<u8>>,
  Started,
  mpsc::UnboundedReceiver<(usize, TakenOut)>,
) {
  let dying = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
  let live = TestUpstream::start(1, Mode::Reply).await;
  let balancer = start_balancer(Strategy::LeastConnections);
  let failures = balancer.take_failures().unwrap();
  balancer.add(0, dying.local_addr().unwrap());
  let addr = balancer.local_addr();
  let exchange = tokio::spawn(async move { request(addr, &body).await });
  // The balancer counts a connection for an upstream before its connect completes: the reset waits until
  // it is in the accept queue too (under valgrind the connect came after the listener closed: refused).
  until(|| balancer.active_connections(0) == 1 && listeners::has_queued_connection(&dying)).await;
  balancer.add(1, live.addr);
  drop(dying);
  (exchange.await.unwrap(), balancer, failures)
}

const GET: &[u8] = b"GET /items HTTP/1.1\r\nHost: a\r\n\r\n";
const POST: &[u8] = b"POST /items HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nitem";

#[tokio::test]
async fn a_get_reset_before_the_first_byte_is_replayed_on_another_upstream() {
  let (answer, balancer, mut failures) = reset_while_queued(GET.to_vec()).await;
  assert_eq!(answer.expect("the request failed"), [b"1:", GET].concat());
  // Under Wine a reset can read as a clean end (see `a_reset_reads_as_an_error_on_windows_and_as_an_end_
  // under_wine`): a GET is replayed all the same, but a clean close does not take the upstream out.
  if under_wine() {
    return;
  }
  assert_eq!(
    timeout(WAIT, failures.recv()).await.unwrap(),
    Some((0, TakenOut::Reset))
  );
  assert_eq!(balancer.close(Instant::now() + WAIT).await, 0);
}

#[tokio::test]
async fn a_post_or_an_unknown_protocol_reset_before_the_first_byte_is_not_replayed() {
  for body in [POST, b"\x16\x03\x01 a TLS hello, or any protocol" as &[u8]] {
    let (answer, balancer, _failures) = reset_while_queued(body.to_vec()).await;
    // Under Wine the upstream's reset comes before the request could be written to it: nothing reached
    // the replica, so moving it is allowed (seen: the POST answered by the second upstream). On Linux it
    // is written into the queued connection first, and then never replayed.
    if under_wine() {
      drop(balancer);
      continue;
    }
    match answer {
      Ok(answer) => assert!(
        answer.is_empty(),
        "replayed: {:?}",
        String::from_utf8_lossy(&answer)
      ),
      Err(error) => assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}"),
    }
    assert_eq!(balancer.close(Instant::now() + WAIT).await, 0);
  }
}

/// Sends `request` through a balancer whose first upstream reads it whole and closes without answering
/// (a replica that ran it and died before answering); a live upstream (id 1) is there by then. Returns
/// the client's result.
async fn closed_after_reading(request_bytes: &'static [u8]) -> io::Result<Vec<u8>> {
  let closing = TcpListener::bind("127.0.0.1:0").await.unwrap();
  let live = TestUpstream::start(1, Mode::Reply).await;
  let balancer = start_balancer(Strategy::LeastConnections);
  balancer.add(0, closing.local_addr().unwrap());
  let addr = balancer.local_addr();
  let exchange = tokio::spawn(async move { request(addr, request_bytes).await });
  let (mut stream, _) = timeout(WAIT, closing.accept()).await.unwrap().unwrap();
  balancer.add(1, live.addr);
  let mut read = Vec::new();
  timeout(WAIT, stream.read_to_end(&mut read))
    .await
    .unwrap()
    .unwrap();
  assert_eq!(read, request_bytes);
  drop(stream);
  let answer = exchange.await.unwrap();
  assert_eq!(balancer.close(Instant::now() + WAIT).await, 0);
  answer
}

#[tokio::test]
async fn an_upstream_that_closes_after_reading_gets_its_get_replayed_but_never_its_post() {
  let answer = closed_after_reading(GET).await.expect("the GET failed");
  assert_eq!(answer, [b"1:", GET].concat());
  match closed_after_reading(POST).await {
    Ok(answer) => assert!(
      answer.is_empty(),
      "replayed: {:?}",
      String::from_utf8_lossy(&answer)
    ),
    Err(error) => assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}"),
  }
}

#[test]
fn only_one_request_of_an_idempotent_method_is_replayable() {
  for start in [
    GET,
    b"HEAD / HTTP/1.1\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\n",
    b"TRACE / HTTP/1.1\r\n",
  ] {
    assert_eq!(
      replayable(start),
      Some(true),
      "{:?}",
      String::from_utf8_lossy(start)
    );
  }
  for start in [
    b"PUT /a HTTP/1.1\r\n\r\nbody" as &[u8],
    b"DELETE /a HTTP/1.1\n\n",
  ] {
    assert_eq!(
      replayable(start),
      Some(true),
      "{:?}",
      String::from_utf8_lossy(start)
    );
  }
  let pipelined = [GET, POST].concat();
  for start in [
    POST,
    b"PATCH /a HTTP/1.1\r\n",
    b"get / HTTP/1.1\r\n",
    b"GETS /",
    b"\x16\x03\x01",
    b"PRI * HTTP/2.0",
    &pipelined,
  ] {
    assert_eq!(
      replayable(start),
      Some(false),
      "{:?}",
      String::from_utf8_lossy(start)
    );
  }
  for start in [b"" as &[u8], b"G", b"GE", b"GET", b"DELET", b"OPTIONS"] {
    assert_eq!(
      replayable(start),
      None,
      "{:?}",
      String::from_utf8_lossy(start)
    );
  }
}

#[tokio::test]
async fn a_start_larger_than_the_replay_limit_is_not_replayed() {
  // An upstream that reads the whole request (so the balancer has relayed all of it, past the limit),
  // then resets without answering; a live upstream is there by then, for a replay that must not happen.
  let resetting = TcpListener::bind("127.0.0.1:0").await.unwrap();
  let resetting_addr = resetting.local_addr().unwrap();
  let live = TestUpstream::start(1, Mode::Reply).await;
  let balancer = start_balancer(Strategy::LeastConnections);
  let mut failures = balancer.take_failures().unwrap();
  balancer.add(0, resetting_addr);
  // A PUT may be replayed, but not one larger than what is kept.
  let body = [
    b"PUT /file HTTP/1.1\r\n\r\n" as &[u8],
    &vec![b'x'; REPLAY_LIMIT],
  ]
  .concat();
  let body_len = body.len();
  let addr = balancer.local_addr();
  let exchange = tokio::spawn(async move { request(addr, &body).await });
  let (mut stream, _) = timeout(WAIT, resetting.accept()).await.unwrap().unwrap();
  balancer.add(1, live.addr);
  let mut request_read = Vec::new();
  timeout(WAIT, stream.read_to_end(&mut request_read))
    .await
    .unwrap()
    .unwrap();
  assert_eq!(request_read.len(), body_len);
  stream.set_zero_linger().unwrap();
  drop(stream);
  // Not replayed: the client sees the connection end without an answer.
  match exchange.await.unwrap() {
    Ok(answer) => assert!(answer.is_empty(), "replayed anyway: {} bytes", answer.len()),
    Err(error) => assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}"),
  }
  assert_eq!(balancer.active_connections(1), 0);
  assert!(failures.try_recv().is_err(), "taken out without a replay");
  assert_eq!(balancer.close(Instant::now() + WAIT).await, 0);
}

#[tokio::test]
async fn set_healthy_false_excludes_and_true_restores_and_remove_forgets() {
  let (_upstreams, balancer) = balancing(Strategy::LeastConnections, Mode::Reply, 2).await;
  let answered = |n| {
    let balancer = balancer.clone();
    async move {
      let mut ids = Vec::new();
      for _ in 0..n {
        ids.push(answered_by(
          &request(balancer.local_addr(), b"x").await.unwrap(),
        ));
      }
      ids
    }
  };

  balancer.set_healthy(1, false);
  assert!(answered(10).await.iter().all(|&id| id == 0));
  balancer.set_healthy(1, true);
  assert!(answered(10).await.contains(&1));
  balancer.remove(0);
  assert!(answered(10).await.iter().all(|&id| id == 1));
  assert_eq!(balancer.upstreams().len(), 1);
  assert_eq!(balancer.close(Instant::now() + WAIT).await, 0);
}

#[tokio::test]
async fn drain_waits_for_the_open_connection_and_routes_nothing_new_meanwhile() {
  let (_upstreams, balancer) = balancing(Strategy::LeastConnections, Mode::Echo, 2).await;
  let (mut open, drained) = open_echo(balancer.local_addr()).await;
  assert_eq!(balancer.active_connections(drained), 1);

  let started = Instant::now();
  let drain = balancer.drain(drained, started + WAIT);
  tokio::pin!(drain);
  // Its first poll marks the upstream draining; the open connection keeps it pending.
  assert!(timeout(Duration::ZERO, &mut drain).await.is_err());
  for _ in 0..10 {
    let (stream, id) = open_echo(balancer.local_addr()).await;
    assert_ne!(id, drained, "a draining upstream got a new connection");
    finish_echo(stream).await;
  }
  assert!(
    timeout(Duration::ZERO, &mut drain).await.is_err(),
    "drained while a connection was open"
  );
  echo_round_trip(&mut open, b"still served while draining").await;
  finish_echo(open).await;
  assert_eq!(
    timeout(WAIT, drain).await.expect("drain did not resolve"),
    0
  );
  assert!(started.elapsed() < WAIT);
  assert!(
    balancer
      .upstreams()
      .iter()
      .find(|u| u.id == drained)
      .unwrap()
      .draining
  );
  assert_eq!(balancer.close(Instant::now() + WAIT).await, 0);
}

#[tokio::test]
async fn drain_returns_what_is_still_open_at_its_deadline() {
  let (_upstream, balancer) = balancing(Strategy::LeastConnections, Mode::Echo, 1).await;
  let (open, _) = open_echo(balancer.local_addr()).await;
  let started = Instant::now();
  assert_eq!(
    balancer
      .drain(0, started + Duration::from_millis(200))
      .await,
    1
  );
  assert!(started.elapsed() >= Duration::from_millis(200));
  assert_eq!(
    balancer.drain(7, Instant::now() + WAIT).await,
    0,
    "an unknown id has nothing open"
  );
  finish_echo(open).await;
  assert_eq!(balancer.close(Instant::now() + WAIT).await, 0);
}

#[tokio::test]
async fn stop_accepting_frees_the_port_relays_go_on_and_close_cuts_them_at_the_deadline() {
  let (_upstream, balancer) = balancing(Strategy::LeastConnections, Mode::Echo, 1).await;
  let public = balancer.local_addr();
  let (mut open, _) = open_echo(public).await;

  balancer.stop_accepting().await;
  let refused = TcpStream::connect(public).await;
  assert_eq!(
    refused.unwrap_err().kind(),
    io::ErrorKind::ConnectionRefused
  );
  drop(std::net::TcpListener::bind(public).expect("the port is still held"));
  echo_round_trip(&mut open, b"relayed after the listener closed").await;

  let started = Instant::now();
  let grace = Duration::from_millis(300);
  assert_eq!(balancer.close(started + grace).await, 1);
  assert!(started.elapsed() >= grace, "cut before the deadline");
  assert_eq!(balancer.open_connections(), 0);
  let mut rest = Vec::new();
  let end = timeout(WAIT, open.read_to_end(&mut rest))
    .await
    .expect("the cut connection hangs");
  assert!(end.is_err() || rest.is_empty(), "{end:?} {rest:?}");
}

#[tokio::test]
async fn close_waits_for_connections_that_end_before_the_deadline() {
  let (_upstream, balancer) = balancing(Strategy::RoundRobin, Mode::Echo, 1).await;
  let (open, _) = open_echo(balancer.local_addr()).await;
  let started = Instant::now();
  let closing = {
    let balancer = balancer.clone();
    tokio::spawn(async move { balancer.close(started + WAIT).await })
  };
  finish_echo(open).await;
  assert_eq!(timeout(WAIT, closing).await.unwrap().unwrap(), 0);
  assert!(started.elapsed() < WAIT);
}

#[tokio::test]
async fn dropping_the_balancer_frees_its_port() {
  let balancer = start_balancer(Strategy::LeastConnections);
  let public = balancer.local_addr();
  let accept_loop = balancer.accept_loop.lock().unwrap().take().unwrap();
  drop(balancer);
  timeout(WAIT, accept_loop).await.unwrap().unwrap();
  drop(std::net::TcpListener::bind(public).expect("the port is still held"));
}

#[tokio::test]
async fn half_close_the_client_still_receives_the_whole_answer() {
  let upstream = TestUpstream::start(4, Mode::Reply).await;
  let balancer = start_balancer(Strategy::LeastConnections);
  balancer.add(4, upstream.addr);
  // The upstream answers only after it saw the client's half-close, with more than any socket buffer.
  let body: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
  let answer = request(balancer.local_addr(), &body).await.unwrap();
  assert_eq!(&answer[..2], b"4:");
  assert!(answer[2..] == body[..], "the answer was not relayed intact");
  assert_eq!(balancer.close(Instant::now() + WAIT).await, 0);
}

/// Linux: once a direction is a bulk transfer it moves through a pipe (splice), which holds a connection
/// slot of its own while the transfer lasts; the answer arrives intact and the slot is given back.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_bulk_answer_moves_through_a_pipe_that_holds_a_connection_slot() {
  let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
  let upstream_addr = listener.local_addr().unwrap();
  let body: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
  let sent = body.clone();
  // Sends the body, then keeps the connection open until the client's end, so the splice stays busy.
  let upstream = tokio::spawn(async move {
    let (mut stream, _) = listener.accept().await.unwrap();
    stream.write_all(&sent).await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
  });
  let balancer = start_balancer(Strategy::LeastConnections);
  balancer.add(0, upstream_addr);
  // At rest the accept loop holds one slot, for the next connection it waits for.
  let permits = || balancer.shared.slots.available_permits();
  let at_rest = balancer.shared.limits.max_connections.max(1) - 1;
  until(|| permits() == at_rest).await;
  let mut client = TcpStream::connect(balancer.local_addr()).await.unwrap();
  // One slot more for the client's connection, one for the next the accept loop waits for, one for the pipe.
  until(|| permits() == at_rest - 2).await;
  let mut answer = vec![0u8; body.len()];
  timeout(WAIT, client.read_exact(&mut answer))
    .await
    .expect("the answer hung")
    .unwrap();
  assert!(answer == body, "the answer was not relayed intact");
  // The client's end reaches the upstream, which then ends too.
  finish_echo(client).await;
  timeout(WAIT, upstream).await.unwrap().unwrap();
  until(|| permits() == at_rest).await;
  assert_eq!(balancer.close(Instant::now() + WAIT).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_bidirectional_stream_is_relayed_both_ways_at_once() {
  let (_upstream, balancer) = balancing(Strategy::LeastConnections, Mode::Echo, 1).await;
  let (mut stream, _) = open_echo(balancer.local_addr()).await;
  for n in 1..=100usize {
    echo_round_trip(&mut stream, &vec![n as u8; n * 37]).await;
  }
  // Writing and reading 4 MiB at the same time: neither direction may wait for the other.
  let data: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
  let (mut reader, mut writer) = stream.into_split();
  let sent = data.clone();
  let writing = tokio::spawn(async move {
    writer.write_all(&sent).await.unwrap();
    writer
  });
  let mut back = vec![0u8; data.len()];
  timeout(WAIT, reader.read_exact(&mut back))
    .await
    .expect("echo stalled")
    .unwrap();
  assert!(back == data, "the stream was not relayed intact");
  let writer = writing.await.unwrap();
  finish_echo(reader.reunite(writer).unwrap()).await;
  assert_eq!(balancer.close(Instant::now() + WAIT).await, 0);
}

#[tokio::test]
async fn with_no_routable_upstream_the_client_is_closed_after_the_hold() {
  let balancer = start_balancer(Strategy::LeastConnections);
  let started = Instant::now();
  let mut stream = TcpStream::connect(balancer.local_addr()).await.unwrap();
  stream.write_all(b"anyone?").await.unwrap();
  let mut answer = Vec::new();
  let end = timeout(WAIT, stream.read_to_end(&mut answer))
    .await
    .expect("the client hangs");
  assert!(end.is_err() || answer.is_empty(), "{end:?} {answer:?}");
  assert!(started.elapsed() >= NO_UPSTREAM_HOLD - Duration::from_millis(50));
  assert_eq!(balancer.close(Instant::now() + WAIT).await, 0);
}

#[tokio::test]
async fn a_held_connection_is_served_once_an_upstream_becomes_healthy() {
  let upstream = TestUpstream::start(3, Mode::Reply).await;
  let balancer = start_balancer(Strategy::LeastConnections);
  balancer.add_unhealthy(3, upstream.addr);
  let started = Instant::now();
  let requesting = tokio::spawn(request(balancer.local_addr(), b"waiting"));
  until(|| balancer.open_connections() == 1).await;
  balancer.set_healthy(3, true);
  let answer = timeout(WAIT, requesting).await.unwrap().unwrap().unwrap();
  assert_eq!(answer, b"3:waiting");
  assert!(
    started.elapsed() < NO_UPSTREAM_HOLD,
    "waited for the whole hold"
  );
  assert_eq!(balancer.close(Instant::now() + WAIT).await, 0);
}

#[tokio::test]
async fn an_upstream_reset_ends_the_client_connection() {
  let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
  let upstream_addr = listener.local_addr().unwrap();
  let resetting = tokio::spawn(async move {
    let (stream, _) = listener.accept().await.unwrap();
    stream.set_zero_linger().unwrap();
  });
  let balancer = start_balancer(Strategy::LeastConnections);
  balancer.add(0, upstream_addr);
  let mut stream = TcpStream::connect(balancer.local_addr()).await.unwrap();
  let mut answer = Vec::new();
  let end = timeout(WAIT, stream.read_to_end(&mut answer))
    .await
    .expect("the client hangs");
  assert!(end.is_err() || answer.is_empty(), "{end:?} {answer:?}");
  resetting.await.unwrap();
  // Wine 8 hands a peer's reset to a readiness-based reader as a clean end (see the test below): the
  // balancer then passes a half-close on and waits for the client's end, as for any upstream FIN.
  if under_wine() {
    drop(stream);
  }
  until(|| balancer.open_connections() == 0).await;
  assert_eq!(balancer.close(Instant::now() + WAIT).await, 0);
}

/// What a reader sees after its peer's reset: an error on Windows (WSAECONNRESET), a clean end under Wine 8,
/// whose socket polling consumes the pending error (Node's completion-based reads there do see
/// ECONNRESET). The evidence for the Wine branch of the test above.
#[cfg(windows)]
#[tokio::test]
async fn a_reset_reads_as_an_error_on_windows_and_as_an_end_under_wine() {
  let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
  let mut client = TcpStream::connect(listener.local_addr().unwrap())
    .await
    .unwrap();
  let (server, _) = listener.accept().await.unwrap();
  server.set_zero_linger().unwrap();
  drop(server);
  let mut buffer = [0u8; 16];
  let read = timeout(WAIT, client.read(&mut buffer)).await.unwrap();
  if crate::os::win::is_wine() {
    assert_eq!(read.unwrap(), 0);
  } else {
    assert_eq!(read.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
  }
}

#[tokio::test]
async fn a_failure_from_before_a_restore_does_not_take_the_upstream_out_again() {
  let balancer = start_balancer(Strategy::LeastConnections);
  let mut failures = balancer.take_failures().unwrap();
  balancer.add(0, "127.0.0.1:9".parse().unwrap());
  let stale = balancer.shared.pick(&[]).unwrap();
  balancer.set_healthy(0, false);
  balancer.set_healthy(0, true);
  balancer
    .shared
    .mark_failed(stale.id, stale.epoch, TakenOut::Refused);
  assert!(balancer.upstreams()[0].healthy);
  assert!(failures.try_recv().is_err());
  let current = balancer.shared.pick(&[]).unwrap();
  balancer
    .shared
    .mark_failed(current.id, current.epoch, TakenOut::Refused);
  assert!(!balancer.upstreams()[0].healthy);
  assert_eq!(failures.try_recv().unwrap(), (0, TakenOut::Refused));
  drop((stale, current));
  assert_eq!(balancer.active_connections(0), 0);
}

#[tokio::test]
async fn past_max_connections_clients_wait_in_the_queue_until_one_ends() {
  let limits = Limits {
    max_connections: 2,
    ..Limits::default()
  };
  let upstream = TestUpstream::start(0, Mode::Echo).await;
  let balancer = start_limited(Strategy::LeastConnections, limits);
  balancer.add(0, upstream.addr);
  let (first, _) = open_echo(balancer.local_addr()).await;
  let (mut second, _) = open_echo(balancer.local_addr()).await;
  // The third connects (the kernel completes it in the queue) but is not accepted: no greeting, and the
  // balancer holds 2 connections while the two others are served.
  let mut third = TcpStream::connect(balancer.local_addr()).await.unwrap();
  echo_round_trip(&mut second, b"served meanwhile").await;
  assert_eq!(balancer.open_connections(), 2);
  let mut byte = [0u8; 1];
  assert!(timeout(Duration::from_millis(100), third.read(&mut byte))
    .await
    .is_err());
  finish_echo(first).await;
  let read = timeout(WAIT, third.read(&mut byte))
    .await
    .expect("the third was not let in");
  assert_eq!((read.unwrap(), byte[0]), (1, b'0'));
  finish_echo(second).await;
  third.shutdown().await.unwrap();
  let mut rest = Vec::new();
  timeout(WAIT, third.read_to_end(&mut rest))
    .await
    .unwrap()
    .unwrap();
  assert_eq!(rest, b"\n");
  assert_eq!(balancer.close(Instant::now() + WAIT).await, 0);
}

#[tokio::test]
async fn a_connection_idle_both_ways_is_closed_and_a_busy_one_is_not() {
  let idle = Duration::from_millis(300);
  let limits = Limits {
    idle_timeout: Some(idle),
    ..Limits::default()
  };
  let upstream = TestUpstream::start(0, Mode::Echo).await;
  let balancer = start_limited(Strategy::LeastConnections, limits);
  balancer.add(0, upstream.addr);
  let (mut quiet, _) = open_echo(balancer.local_addr()).await;
  let started = Instant::now();
  let (mut busy, _) = open_echo(balancer.local_addr()).await;
  // The busy one talks every 100 ms for 3 idle periods: never idle for one.
  for n in 0..9u8 {
    echo_round_trip(&mut busy, &[n]).await;
    sleep(Duration::from_millis(100)).await;
  }
  let mut rest = Vec::new();
  let end = timeout(WAIT, quiet.read_to_end(&mut rest))
    .await
    .expect("never closed");
  assert!(end.is_ok() && rest.is_empty(), "{end:?} {rest:?}");
  assert!(
    started.elapsed() >= idle,
    "closed after {:?}",
    started.elapsed()
  );
  echo_round_trip(&mut busy, b"still open").await;
  finish_echo(busy).await;
  until(|| balancer.open_connections() == 0).await;
  assert_eq!(balancer.close(Instant::now() + WAIT).await, 0);
}

#[tokio::test]
async fn an_upstream_silent_after_a_request_is_taken_out_as_frozen() {
  let limits = Limits {
    first_byte_timeout: Some(Duration::from_millis(200)),
    ..Limits::default()
  };
  // A listener that accepts (the kernel does) but never reads or answers: a stopped process.
  let frozen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
  let live = TestUpstream::start(1, Mode::Reply).await;
  let balancer = start_limited(Strategy::RoundRobin, limits);
  let mut failures = balancer.take_failures().unwrap();
  balancer.add(0, frozen.local_addr().unwrap());
  balancer.add(1, live.addr);
  let mut hanging = TcpStream::connect(balancer.local_addr()).await.unwrap();
  hanging.write_all(GET).await.unwrap();
  until(|| balancer.active_connections(0) == 1).await;
  assert_eq!(
    timeout(WAIT, failures.recv()).await.unwrap(),
    Some((0, TakenOut::Frozen))
  );
  assert!(!balancer.upstreams()[0].healthy);
  for n in 0..6 {
    let answer = request(balancer.local_addr(), format!("request {n}").as_bytes()).await;
    assert_eq!(answered_by(&answer.unwrap()), 1);
  }
  // The silent one's connection is not cut: a slow answer may still come.
  assert_eq!(balancer.active_connections(0), 1);
  drop(hanging);
  drop(frozen);
  assert!(balancer.close(Instant::now() + WAIT).await <= 1);
}

#[test]
fn the_default_max_connections_is_a_quarter_of_the_open_file_limit() {
  let n = default_max_connections();
  assert!((1..=MAX_CONNECTIONS_CAP).contains(&n));
  if let Some(limit) = imp::open_file_limit() {
    assert_eq!(n as u64, (limit / 4).clamp(1, MAX_CONNECTIONS_CAP as u64));
  }
}

#[test]
fn start_needs_no_runtime_of_the_caller_and_relays_on_its_own_thread() {
  let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
  let balancer = start_on_loopback(Strategy::RoundRobin, Limits::default());
  balancer.add(0, upstream.local_addr().unwrap());
  let mut client = std::net::TcpStream::connect(balancer.local_addr()).unwrap();
  std::io::Write::write_all(&mut client, b"hello").unwrap();
  let (mut accepted, _) = upstream.accept().unwrap();
  let mut read = [0u8; 5];
  std::io::Read::read_exact(&mut accepted, &mut read).unwrap();
  assert_eq!(&read, b"hello");
}

#[cfg(unix)]
#[test]
fn accept_pauses_only_on_resource_exhaustion() {
  use rustix::io::Errno;
  for code in [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM] {
    let error = io::Error::from_raw_os_error(code.raw_os_error());
    assert!(accept_needs_pause(&error), "{code:?}");
  }
  for code in [Errno::CONNABORTED, Errno::PERM, Errno::PROTO] {
    let error = io::Error::from_raw_os_error(code.raw_os_error());
    assert!(!accept_needs_pause(&error), "{code:?}");
  }
}

/// Throughput and latency against the replicas reached directly and through Node's `http-proxy`, with wrk:
/// `cargo test --release balancer -- --ignored --nocapture` (set `BENCH_HTTP_PROXY` to a folder where
/// `npm install http-proxy` was run to include it).
#[cfg(target_os = "linux")]
mod bench {
  use super::*;
  use std::io::{BufRead, BufReader};
  use std::process::{Child, Command, Stdio};

  const RUN: &str = "5s";
  const ROUNDS: usize = 3;
  const SERVER: &str = "const big = Buffer.alloc(1 << 20, 120); const s = require('http').createServer((q, r) => { r.setHeader('content-type', 'text/plain'); r.end(q.url === '/big' ? big : 'hello world\\n') }); s.keepAliveTimeout = 60000; s.listen(0, '127.0.0.1', () => console.log(s.address().port))";
  const HTTP_PROXY: &str = "const http = require('http'), proxy = require('http-proxy').createProxyServer({ agent: new http.Agent({ keepAlive: true, maxSockets: Infinity }) }); const targets = process.argv.slice(1); let i = 0; const s = http.createServer((q, r) => proxy.web(q, r, { target: targets[i++ % targets.length] }, () => { r.statusCode = 502; r.end() })); s.keepAliveTimeout = 60000; s.listen(0, '127.0.0.1', () => console.log(s.address().port))";

  /// A Node process printing its port; killed (by its pid) when dropped.
  struct Node {
    child: Child,
    port: u16,
  }

  impl Node {
    fn start(script: &str, args: &[String], node_path: Option<&str>) -> Node {
      let mut command = Command::new("node");
      command
        .arg("-e")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped());
      if let Some(path) = node_path {
        command.env("NODE_PATH", path);
      }
      let mut child = command.spawn().expect("node");
      let mut line = String::new();
      BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
      let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no port from node: {line:?}"));
      Node { child, port }
    }

    fn url(&self, path: &str) -> String {
      format!("http://127.0.0.1:{}/{path}", self.port)
    }

    fn cpu_seconds(&self) -> (f64, f64) {
      cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }
  }

  impl Drop for Node {
    fn drop(&mut self) {
      let _ = self.child.kill();
      let _ = self.child.wait();
    }
  }

  /// (user, system) CPU seconds of a process, from /proc/PID/stat (utime and stime, fields 14 and 15).
  fn cpu_seconds(stat: &str) -> (f64, f64) {
    let text = std::fs::read_to_string(stat).unwrap();
    let fields: Vec<&str> = text[text.rfind(')').unwrap() + 2..].split(' ').collect();
    let tick = rustix::param::clock_ticks_per_second() as f64;
    (
      fields[11].parse::<f64>().unwrap() / tick,
      fields[12].parse::<f64>().unwrap() / tick,
    )
  }

  /// "N ms CPU per 1000 requests (user U, system S)" between two readings.
  fn cpu_per_thousand(before: (f64, f64), after: (f64, f64), requests: f64) -> String {
    let per = |seconds: f64| seconds * 1e6 / requests;
    let (user, system) = (per(after.0 - before.0), per(after.1 - before.1));
    format!(
      "{:.1} ms CPU per 1000 requests (user {user:.1}, system {system:.1})",
      user + system
    )
  }

  #[derive(Debug, Default, Clone, Copy)]
  struct Wrk {
    requests: f64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
  }

  fn parse_wrk(output: &str) -> Wrk {
    let duration = |value: &str| {
      let (number, factor) = if let Some(n) = value.strip_suffix("us") {
        (n, 0.001)
      } else if let Some(n) = value.strip_suffix("ms") {
        (n, 1.0)
      } else if let Some(n) = value.strip_suffix('s') {
        (n, 1000.0)
      } else {
        (value, 1.0)
      };
      number.parse::<f64>().unwrap() * factor
    };
    let mut wrk = Wrk::default();
    for line in output.lines() {
      let words: Vec<&str> = line.split_whitespace().collect();
      match words.as_slice() {
        ["Requests/sec:", n] => wrk.per_second = n.parse().unwrap(),
        ["50%", d] => wrk.p50_ms = duration(d),
        ["99%", d] => wrk.p99_ms = duration(d),
        [n, "requests", "in", ..] => wrk.requests = n.parse().unwrap(),
        ["Socket", "errors:", rest @ ..] => {
          wrk.errors += rest
            .iter()
            .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
            .sum::<u64>()
        }
        ["Non-2xx", "or", "3xx", "responses:", n] => wrk.errors += n.parse::<u64>().unwrap(),
        _ => {}
      }
    }
    wrk
  }

  /// Runs wrk processes at the same time (one per url), off the runtime so the balancer keeps serving.
  async fn wrk(urls: Vec<String>, threads: u32, connections: u32, close: bool) -> Vec<Wrk> {
    tokio::task::spawn_blocking(move || {
      let children: Vec<Child> = urls
        .iter()
        .map(|url| {
          let mut command = Command::new("wrk");
          command.args([
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
            "-d",
            RUN,
            "--latency",
          ]);
          if close {
            command.args(["-H", "Connection: close"]);
          }
          command
            .arg(url)
            .stdout(Stdio::piped())
            .spawn()
            .expect("wrk (apt-get install wrk)")
        })
        .collect();
      let outputs = children.into_iter().map(|c| c.wait_with_output().unwrap());
      let parsed = outputs.map(|o| parse_wrk(&String::from_utf8_lossy(&o.stdout)));
      parsed.collect()
    })
    .await
    .unwrap()
  }

  fn own_cpu_seconds() -> (f64, f64) {
    cpu_seconds("/proc/self/stat")
  }

  fn replicas_cpu_seconds(replicas: &[Node]) -> (f64, f64) {
    let each = replicas.iter().map(Node::cpu_seconds);
    each.fold((0.0, 0.0), |(u, s), (user, system)| (u + user, s + system))
  }

  /// Runs wrk at both replicas at once, summed, with the replicas' CPU time per 1000 requests.
  async fn direct(replicas: &[Node], path: &str, close: bool) -> Wrk {
    let cpu = replicas_cpu_seconds(replicas);
    let urls = replicas.iter().map(|r| r.url(path)).collect();
    let run = sum(&wrk(urls, 1, 32, close).await);
    report("direct (one wrk per replica, summed)", &run);
    let used = cpu_per_thousand(cpu, replicas_cpu_seconds(replicas), run.requests);
    println!("{:<44} {used} in the replicas", "");
    run
  }

  async fn direct_big(replicas: &[Node]) -> Wrk {
    let run = sum(&wrk(replicas.iter().map(|r| r.url("big")).collect(), 1, 4, false).await);
    report("direct (one wrk per replica, summed)", &run);
    run
  }

  fn median(runs: &[Wrk]) -> f64 {
    let mut rates: Vec<f64> = runs.iter().map(|r| r.per_second).collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
  }

  /// A minimal relay with the same accept/connect/relay shape as the balancer, to compare
  /// copy_bidirectional with splice(2) on equal terms.
  async fn relay_with(listener: TcpListener, upstreams: [SocketAddr; 2], by_splice: bool) {
    let mut next = 0;
    while let Ok((client, _)) = listener.accept().await {
      let upstream = upstreams[next % 2];
      next += 1;
      tokio::spawn(async move {
        let mut client = client;
        let mut upstream = TcpStream::connect(upstream).await?;
        client.set_nodelay(true)?;
        upstream.set_nodelay(true)?;
        if by_splice {
          splice_both_ways(&client, &upstream).await
        } else {
          tokio::io::copy_bidirectional(&mut client, &mut upstream)
            .await
            .map(drop)
        }
      });
    }
  }

  async fn splice_both_ways(a: &TcpStream, b: &TcpStream) -> io::Result<()> {
    let pipes = (splice::Pipe::new()?, splice::Pipe::new()?);
    let activity = Activity::new();
    tokio::try_join!(
      splice::forward(a, b, &pipes.0, &activity),
      splice::forward(b, a, &pipes.1, &activity)
    )?;
    Ok(())
  }

  fn report(label: &str, run: &Wrk) {
    println!(
      "{label:<44} {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {}",
      run.per_second, run.p50_ms, run.p99_ms, run.errors
    );
  }

  fn sum(runs: &[Wrk]) -> Wrk {
    Wrk {
      requests: runs.iter().map(|r| r.requests).sum(),
      per_second: runs.iter().map(|r| r.per_second).sum(),
      p50_ms: runs.iter().map(|r| r.p50_ms).fold(0.0, f64::max),
      p99_ms: runs.iter().map(|r| r.p99_ms).fold(0.0, f64::max),
      errors: runs.iter().map(|r| r.errors).sum(),
    }
  }

  /// One wrk run through a relay living in this process, with this process's CPU time per 1000 requests.
  async fn through_self(
    label: &str,
    url: &str,
    threads: u32,
    connections: u32,
    close: bool,
  ) -> Wrk {
    let cpu = own_cpu_seconds();
    let run = wrk(vec![url.to_string()], threads, connections, close)
      .await
      .remove(0);
    report(label, &run);
    println!(
      "{:<44} {}",
      "",
      cpu_per_thousand(cpu, own_cpu_seconds(), run.requests)
    );
    run
  }

  #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
  #[ignore = "a measurement: needs node and wrk, takes about a minute"]
  async fn balancer_throughput_and_latency_against_direct_and_http_proxy() {
    let replicas = [
      Node::start(SERVER, &[], None),
      Node::start(SERVER, &[], None),
    ];
    let addrs = replicas
      .each_ref()
      .map(|r| SocketAddr::from(([127, 0, 0, 1], r.port)));
    let balancer = start_balancer(Strategy::LeastConnections);
    balancer.add(0, addrs[0]);
    balancer.add(1, addrs[1]);
    let through = format!("http://{}/", balancer.local_addr());
    let mut relays = Vec::new();
    let mut relay_url = |by_splice| {
      let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
      listener.set_nonblocking(true).unwrap();
      let url = format!("http://{}/", listener.local_addr().unwrap());
      let listener = TcpListener::from_std(listener).unwrap();
      relays.push(tokio::spawn(relay_with(listener, addrs, by_splice)));
      url
    };
    let copy_url = relay_url(false);
    let splice_url = relay_url(true);
    let proxy_dir = std::env::var("BENCH_HTTP_PROXY").ok();
    let proxy = proxy_dir.as_ref().map(|dir| {
      let targets: Vec<String> = replicas.iter().map(|r| r.url("")).collect();
      Node::start(HTTP_PROXY, &targets, Some(&format!("{dir}/node_modules")))
    });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("\n{cores} cores; 2 Node http replicas; wrk {RUN} per run; least-connections");

    println!(
      "\n-- keep-alive throughput, 64 connections in all, direct and balancer alternated --"
    );
    let mut direct_runs = Vec::new();
    let mut balanced_runs = Vec::new();
    for _ in 0..ROUNDS {
      direct_runs.push(direct(&replicas, "", false).await);
      balanced_runs.push(through_self("balancer", &through, 2, 64, false).await);
    }
    let (direct_median, balanced_median) = (median(&direct_runs), median(&balanced_runs));
    through_self("plain relay, copy_bidirectional", &copy_url, 2, 64, false).await;
    through_self("plain relay, splice(2)", &splice_url, 2, 64, false).await;
    let proxied = match &proxy {
      Some(proxy) => {
        let cpu = proxy.cpu_seconds();
        let run = wrk(vec![proxy.url("")], 2, 64, false).await.remove(0);
        report("http-proxy (keep-alive agent)", &run);
        println!(
          "{:<44} {}",
          "",
          cpu_per_thousand(cpu, proxy.cpu_seconds(), run.requests)
        );
        Some(run.per_second)
      }
      None => {
        println!("http-proxy: skipped (set BENCH_HTTP_PROXY)");
        None
      }
    };
    println!(
      "medians: direct {direct_median:.0} req/s, balancer {balanced_median:.0} req/s = {:.0} % of direct",
      balanced_median / direct_median * 100.0
    );
    if let Some(proxied) = proxied {
      println!("balancer / http-proxy: {:.1}x", balanced_median / proxied);
    }

    println!("\n-- connection per request throughput, 64 connections in all --");
    let direct_close = direct(&replicas, "", true).await;
    let balanced_close = through_self("balancer", &through, 2, 64, true).await;
    let ratio = balanced_close.per_second / direct_close.per_second;
    println!("balancer / direct: {:.0} %", ratio * 100.0);

    println!("\n-- keep-alive, 1 MiB answers, 8 connections in all --");
    let big = |url: &str| format!("{url}big");
    direct_big(&replicas).await;
    through_self("balancer", &big(&through), 2, 8, false).await;
    through_self(
      "plain relay, copy_bidirectional",
      &big(&copy_url),
      2,
      8,
      false,
    )
    .await;
    through_self("plain relay, splice(2)", &big(&splice_url), 2, 8, false).await;

    for (mode, close) in [("keep-alive", false), ("connection per request", true)] {
      println!("\n-- latency, one connection at a time, {mode} --");
      let direct = wrk(vec![replicas[0].url("")], 1, 1, close).await.remove(0);
      report("direct", &direct);
      let balanced = through_self("balancer", &through, 1, 1, close).await;
      if let Some(proxy) = &proxy {
        report(
          "http-proxy",
          &wrk(vec![proxy.url("")], 1, 1, close).await.remove(0),
        );
      }
      let (p50, p99) = (
        balanced.p50_ms - direct.p50_ms,
        balanced.p99_ms - direct.p99_ms,
      );
      println!("added by the balancer: p50 {p50:+.3} ms, p99 {p99:+.3} ms");
    }

    for relay in relays {
      relay.abort();
    }
    balancer
      .close(Instant::now() + Duration::from_secs(2))
      .await;
  }
}
