//! Which TCP ports are listened on, and by which process — asked of the OS natively, never by spawning
//! `ss`, `lsof` or `netstat`. Also the question readiness rests on: is the listener of a port one of these
//! processes (docs/design.md §11)?

use std::collections::HashSet;
use std::net::SocketAddr;

/// The process holding a port, where the OS tells (on Linux a user sees the holders it owns, or all as root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHolder {
  pub port: u16,
  pub pid: Option<u32>,
  pub name: Option<String>,
}

/// Ports that some socket listens on, in one read of the kernel's table; `None` where the OS has no such
/// table (the caller then binds every candidate).
pub fn listening_ports() -> Option<HashSet<u16>> {
  imp::listening().map(|s| s.into_iter().map(|l| l.port).collect())
}

/// Whether a connect to `addr` would find a listener (one on the wildcard address or a dual-stack one
/// included), asked of the kernel without connecting: `None` where the OS cannot say cheaply.
pub fn listener_at(addr: SocketAddr) -> Option<bool> {
  imp::listener_at(addr).map(|found| found.is_some())
}

/// Whether the listener that a connect to `addr` reaches belongs to one of `pids` (a backend's process
/// tree): the very socket a probe of `addr` talked to. Where the OS has no exact lookup, any listener on
/// the port counts.
pub fn listened_at_by(addr: SocketAddr, pids: &[u32]) -> Holder {
  match imp::listener_at(addr) {
    Some(None) => Holder::Nobody,
    Some(Some(listener)) => holder_among(&[&listener], pids),
    None => listened_by(addr.port(), pids),
  }
}

/// Whether the socket that took our connection from `local` to `peer` belongs to one of `pids`: asked
/// before a request that carries a secret is written (docs/design.md §26). Linux names that very socket
/// (the accepted one, or the listener whose queue still holds the connection), so a listener that accepted
/// it and closed before the backend bound the port is still found out; elsewhere the listener that a
/// connect to `peer` reaches answers for it. `Nobody`: the connection is gone.
pub fn connection_held_by(local: SocketAddr, peer: SocketAddr, pids: &[u32]) -> Holder {
  match imp::server_end(local, peer) {
    Some(None) => Holder::Nobody,
    Some(Some(end)) => holder_among(&[&end], pids),
    None => listened_at_by(peer, pids),
  }
}

/// For each busy port of `ports`, the process listening on it, if the OS tells. `likely` are processes
/// to look at first (a record's backend usually holds its own port).
pub fn port_holders(ports: &[u16], likely: &[u32]) -> Vec<PortHolder> {
  let Some(listening) = imp::listening() else {
    return Vec::new();
  };
  let wanted: Vec<&Listener> = listening
    .iter()
    .filter(|l| ports.contains(&l.port))
    .collect();
  let owners = imp::owners(&wanted, likely);
  let busy: HashSet<u16> = wanted.iter().map(|l| l.port).collect();
  ports
    .iter()
    .filter(|p| busy.contains(p))
    .map(|&port| {
      let pid = owners.get(&port).copied();
      PortHolder {
        port,
        pid,
        name: pid.and_then(crate::os::process::process_name),
      }
    })
    .collect()
}

/// Who listens on a port, as far as a set of processes is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
  Nobody,
  /// One of the processes asked about.
  Ours,
  Others,
  /// The OS cannot tell.
  Unknown,
}

/// Whether a socket listening on `port` belongs to one of `pids` (a backend's process tree).
pub fn listened_by(port: u16, pids: &[u32]) -> Holder {
  let Some(listening) = imp::listening() else {
    return Holder::Unknown;
  };
  let wanted: Vec<&Listener> = listening.iter().filter(|l| l.port == port).collect();
  holder_among(&wanted, pids)
}

fn holder_among(wanted: &[&Listener], pids: &[u32]) -> Holder {
  if wanted.is_empty() {
    Holder::Nobody
  } else if imp::any_held_by(wanted, pids) {
    Holder::Ours
  } else if imp::owner_unknown(wanted) {
    Holder::Unknown
  } else {
    Holder::Others
  }
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
  pub port: u16,
  /// Linux: the socket's inode, which names it among a process's descriptors. Elsewhere: the owner's pid,
  /// 0 where the OS table does not give it (Wine).
  pub key: u64,
}

/// A connection waits in `listener`'s accept queue (the socket is readable): no process that holds it has
/// accepted it yet.
#[cfg(unix)]
pub fn has_queued_connection(listener: &std::net::TcpListener) -> bool {
  use rustix::event::{PollFd, PollFlags, Timespec};
  let mut fds = [PollFd::new(listener, PollFlags::IN)];
  let now = Timespec {
    tv_sec: 0,
    tv_nsec: 0,
  };
  rustix::event::poll(&mut fds, Some(&now)).is_ok_and(|ready| ready == 1)
}

/// A connection waits in `listener`'s accept queue (the socket is readable): no process that holds it has
/// accepted it yet.
#[cfg(windows)]
pub fn has_queued_connection(listener: &std::net::TcpListener) -> bool {
  use std::os::windows::io::AsRawSocket;
  use windows_sys::Win32::Networking::WinSock::{WSAPoll, POLLRDNORM, WSAPOLLFD};
  let mut fds = [WSAPOLLFD {
    fd: listener.as_raw_socket() as _,
    events: POLLRDNORM,
    revents: 0,
  }];
  // SAFETY: `fds` is one valid WSAPOLLFD for a socket `listener` keeps open; a zero timeout returns at once.
  unsafe { WSAPoll(fds.as_mut_ptr(), 1, 0) == 1 }
}

#[cfg(target_os = "linux")]
mod imp {
  use super::Listener;
  use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
  };
  use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
  use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
  use netlink_packet_sock_diag::SockDiagMessage;
  use rustix::net::netlink::{SocketAddrNetlink, SOCK_DIAG};
  use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
  use std::collections::HashMap;
  use std::os::fd::OwnedFd;

  /// Every TCP socket in the LISTEN state, asked of the kernel over netlink (sock_diag), which walks only
  /// the listening-socket table. Reading `/proc/net/tcp` instead walks the whole established-connection
  /// hash (262,144 buckets on this project's 24 GiB test machine: ~4 ms a read) — 50× slower in the
  /// port benchmark — so it is only the fallback where netlink is refused (some sandboxes).
  pub fn listening() -> Option<Vec<Listener>> {
    from_netlink().or_else(from_proc)
  }

  /// A netlink socket and its receive buffer, kept per thread: readiness looks every few milliseconds, and
  /// a socket and 64 KiB zeroed per look cost more than the kernel's walk of the listening table. A socket
  /// whose dump failed midway is dropped (it may hold the rest of that answer), never reused.
  struct Diag {
    socket: OwnedFd,
    buf: Vec<u8>,
  }

  thread_local! {
    static DIAG: std::cell::RefCell<Option<Diag>> = const { std::cell::RefCell::new(None) };
  }

  /// Runs `ask` with this thread's netlink socket (made on first use); a socket whose answer failed
  /// midway is dropped, never reused.
  fn with_diag<T>(ask: impl FnOnce(&mut Diag) -> Option<T>) -> Option<T> {
    let cached = DIAG.with(|d| d.borrow_mut().take());
    let mut diag = match cached {
      Some(diag) => diag,
      None => Diag {
        socket: rustix::net::socket_with(
          AddressFamily::NETLINK,
          SocketType::DGRAM,
          SocketFlags::CLOEXEC,
          Some(SOCK_DIAG),
        )
        .ok()?,
        buf: vec![0; 64 * 1024],
      },
    };
    let answer = ask(&mut diag)?;
    DIAG.with(|d| *d.borrow_mut() = Some(diag));
    Some(answer)
  }

  fn from_netlink() -> Option<Vec<Listener>> {
    with_diag(|diag| {
      let mut found = Vec::new();
      for (family, id) in [
        (AF_INET, SocketId::new_v4()),
        (AF_INET6, SocketId::new_v6()),
      ] {
        let listen = StateFlags::LISTEN;
        match query(
          &diag.socket,
          &mut diag.buf,
          family,
          id,
          listen,
          true,
          &mut found,
        )? {
          Ended::Done => {}
          // Refused (a sandbox): the caller reads /proc instead.
          Ended::Error(_) => return None,
        }
      }
      Some(found)
    })
  }

  /// One exact lookup instead of a dump: the kernel finds the listener that a connect to `addr` would
  /// reach in its hash of listening sockets by port and address (as for an incoming SYN), where a dump
  /// walks every bucket of that hash. No answer (ENOENT): nothing listens there.
  pub fn listener_at(addr: std::net::SocketAddr) -> Option<Option<Listener>> {
    let (family, mut id) = match addr {
      std::net::SocketAddr::V4(_) => (AF_INET, SocketId::new_v4()),
      std::net::SocketAddr::V6(_) => (AF_INET6, SocketId::new_v6()),
    };
    id.source_address = addr.ip();
    id.source_port = addr.port();
    // No cookie: any socket found by the lookup.
    id.cookie = [0xff; 8];
    with_diag(|diag| exact(diag, family, id, StateFlags::LISTEN))
  }

  /// One exact lookup: the socket found (`Some(None)`: none, ENOENT), or `None` if the kernel did not say.
  fn exact(
    diag: &mut Diag,
    family: u8,
    id: SocketId,
    states: StateFlags,
  ) -> Option<Option<Listener>> {
    let mut found = Vec::new();
    match query(
      &diag.socket,
      &mut diag.buf,
      family,
      id,
      states,
      false,
      &mut found,
    )? {
      Ended::Done => Some(found.pop()),
      Ended::Error(code) if code == -rustix::io::Errno::NOENT.raw_os_error() => Some(None),
      Ended::Error(_) => None,
    }
  }

  /// The socket at the far end of our connection from `local` to `peer`, found by its addresses in the
  /// kernel's hash of connections (as an incoming segment finds it): the accepted socket, named by its
  /// inode; or, while it waits to be accepted (no inode yet), the listener at `peer` whose queue holds it —
  /// a listener that closes resets its queue, so the connection cannot pass to another listener.
  /// `Some(None)`: the connection is gone.
  pub fn server_end(
    local: std::net::SocketAddr,
    peer: std::net::SocketAddr,
  ) -> Option<Option<Listener>> {
    let (family, mut id) = match peer {
      std::net::SocketAddr::V4(_) => (AF_INET, SocketId::new_v4()),
      std::net::SocketAddr::V6(_) => (AF_INET6, SocketId::new_v6()),
    };
    id.source_address = peer.ip();
    id.source_port = peer.port();
    id.destination_address = local.ip();
    id.destination_port = local.port();
    id.cookie = [0xff; 8];
    match with_diag(|diag| exact(diag, family, id, StateFlags::all()))? {
      Some(end) if end.key != 0 => Some(Some(end)),
      Some(_) => listener_at(peer),
      None => Some(None),
    }
  }

  /// How a netlink request was answered to its end.
  enum Ended {
    /// All of it (a dump's end, or an exact lookup's one answer).
    Done,
    /// An error message with this (negative) code; for an exact lookup, -ENOENT is "no such socket".
    Error(i32),
  }

  /// Sends one sock_diag request, collecting the sockets in its answer. `None`: the socket failed (the
  /// rest of an answer may still be queued on it, so it must not be reused).
  fn query(
    socket: &OwnedFd,
    buf: &mut [u8],
    family: u8,
    socket_id: SocketId,
    states: StateFlags,
    dump: bool,
    found: &mut Vec<Listener>,
  ) -> Option<Ended> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    let mut request = NetlinkMessage::new(
      header,
      SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states,
        socket_id,
      })
      .into(),
    );
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    rustix::net::sendto(
      socket,
      &bytes,
      SendFlags::empty(),
      &SocketAddrNetlink::new(0, 0),
    )
    .ok()?;

    loop {
      let (n, _) = match rustix::net::recv(socket, &mut *buf, RecvFlags::empty()) {
        Ok(got) => got,
        Err(rustix::io::Errno::INTR) => continue,
        Err(_) => return None,
      };
      if n == 0 {
        return None;
      }
      let mut at = 0;
      while at < n {
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[at..n]).ok()?;
        let len = message.header.length as usize;
        match message.payload {
          NetlinkPayload::Done(_) => return Some(Ended::Done),
          NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
            found.push(Listener {
              port: response.header.socket_id.source_port,
              key: response.header.inode.into(),
            });
            // An exact lookup answers with one message and no end marker.
            if !dump {
              return Some(Ended::Done);
            }
          }
          NetlinkPayload::Error(error) => return Some(Ended::Error(error.raw_code())),
          _ => {}
        }
        if len == 0 {
          return None;
        }
        at += (len + 3) & !3;
      }
    }
  }

  fn from_proc() -> Option<Vec<Listener>> {
    let mut found = Vec::new();
    let mut any_table = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
      let Ok(text) = std::fs::read_to_string(table) else {
        continue;
      };
      any_table = true;
      found.extend(text.lines().skip(1).filter_map(parse_listen_line));
    }
    any_table.then_some(found)
  }

  /// One line of `/proc/net/tcp*`: `sl local_address rem_address st … uid timeout inode`, with the address
  /// as `HEXIP:HEXPORT` and the state `0A` for LISTEN.
  pub(super) fn parse_listen_line(line: &str) -> Option<Listener> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.get(3)? != &"0A" {
      return None;
    }
    let port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
    let key = fields.get(9)?.parse().ok()?;
    Some(Listener { port, key })
  }

  /// The socket inodes among one process's descriptors (`/proc/PID/fd/*` → `socket:[INODE]`).
  fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
      return Vec::new();
    };
    fds
      .flatten()
      .filter_map(|fd| {
        let target = std::fs::read_link(fd.path()).ok()?;
        target
          .to_str()?
          .strip_prefix("socket:[")?
          .strip_suffix(']')?
          .parse()
          .ok()
      })
      .collect()
  }

  /// The kernel names every socket's inode: an owner that is not found is someone else.
  pub fn owner_unknown(_wanted: &[&Listener]) -> bool {
    false
  }

  pub fn any_held_by(wanted: &[&Listener], pids: &[u32]) -> bool {
    pids.iter().any(|&pid| {
      socket_inodes(pid)
        .iter()
        .any(|inode| wanted.iter().any(|l| l.key == *inode && *inode != 0))
    })
  }

  /// port → pid of its listener: `likely` first, then every process until all are found.
  pub fn owners(wanted: &[&Listener], likely: &[u32]) -> HashMap<u16, u32> {
    let inode_port: HashMap<u64, u16> = wanted
      .iter()
      .filter(|l| l.key != 0)
      .map(|l| (l.key, l.port))
      .collect();
    let ports_wanted = inode_port
      .values()
      .collect::<std::collections::HashSet<_>>()
      .len();
    let mut owners = HashMap::new();
    let rest = crate::os::tree::all_pids()
      .into_iter()
      .filter(|p| !likely.contains(p));
    for pid in likely.iter().copied().chain(rest) {
      if owners.len() == ports_wanted {
        break;
      }
      for inode in socket_inodes(pid) {
        if let Some(&port) = inode_port.get(&inode) {
          owners.entry(port).or_insert(pid);
        }
      }
    }
    owners
  }
}

/// Windows: the system's TCP table, which names each listener's owner pid (Wine 8 gives 0 for every row:
/// unknown, never "someone else"). macOS: every process's socket descriptors, through the `listeners`
/// crate (libproc). Both keyed by pid.
#[cfg(not(target_os = "linux"))]
mod imp {
  use super::Listener;
  use std::collections::HashMap;

  #[cfg(windows)]
  pub fn listening() -> Option<Vec<Listener>> {
    let table = crate::os::win::net::listening().ok()?;
    Some(
      table
        .into_iter()
        .map(|l| Listener {
          port: l.port,
          key: u64::from(l.pid),
        })
        .collect(),
    )
  }

  #[cfg(target_os = "macos")]
  pub fn listening() -> Option<Vec<Listener>> {
    use listeners::{Protocol, SocketState};
    let all = listeners::get_all().ok()?;
    Some(
      all
        .into_iter()
        .filter(|l| l.protocol == Protocol::TCP && l.state == SocketState::Listen)
        .map(|l| Listener {
          port: l.socket.port(),
          key: u64::from(l.process.pid),
        })
        .collect(),
    )
  }

  /// Windows and macOS read whole tables (cheaply on Windows, by listing every process's sockets on
  /// macOS): no exact lookup.
  #[cfg(not(target_os = "linux"))]
  pub fn listener_at(_addr: std::net::SocketAddr) -> Option<Option<Listener>> {
    None
  }

  /// No lookup of one connection: the listener at the far end answers for it.
  pub fn server_end(
    _local: std::net::SocketAddr,
    _peer: std::net::SocketAddr,
  ) -> Option<Option<Listener>> {
    None
  }

  /// No table on the other systems: the caller binds every candidate, and readiness goes without the
  /// listener check.
  #[cfg(not(any(windows, target_os = "macos")))]
  pub fn listening() -> Option<Vec<Listener>> {
    None
  }

  pub fn owner_unknown(wanted: &[&Listener]) -> bool {
    wanted.iter().any(|l| l.key == 0)
  }

  pub fn any_held_by(wanted: &[&Listener], pids: &[u32]) -> bool {
    wanted
      .iter()
      .any(|l| l.key != 0 && pids.iter().any(|&p| u64::from(p) == l.key))
  }

  /// port → pid of its listener, where known.
  pub fn owners(wanted: &[&Listener], _likely: &[u32]) -> HashMap<u16, u32> {
    let mut owners = HashMap::new();
    for l in wanted.iter().filter(|l| l.key != 0) {
      owners.entry(l.port).or_insert(l.key as u32);
    }
    owners
  }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
  use super::*;

  #[test]
  fn parses_a_listen_line_and_skips_others() {
    let listen = "   0: 0100007F:E7CD 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 23406 1 0000000000000000 100 0 0 10 0";
    assert_eq!(
      imp::parse_listen_line(listen),
      Some(Listener {
        port: 0xE7CD,
        key: 23406
      })
    );
    let established = listen.replace(" 0A ", " 01 ");
    assert_eq!(imp::parse_listen_line(&established), None);
    assert_eq!(imp::parse_listen_line("garbage"), None);
  }

  #[test]
  fn finds_the_holder_of_a_listening_port_in_both_families() {
    let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = v4.local_addr().unwrap().port();
    assert!(listening_ports().unwrap().contains(&port));
    let holders = port_holders(&[port], &[]);
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].pid, Some(std::process::id()));
    assert_eq!(listened_by(port, &[std::process::id()]), Holder::Ours);
    assert_eq!(listened_by(port, &[1]), Holder::Others);
    if let Ok(v6) = std::net::TcpListener::bind("[::1]:0") {
      assert!(listening_ports()
        .unwrap()
        .contains(&v6.local_addr().unwrap().port()));
    }
    drop(v4);
    assert_eq!(listened_by(port, &[std::process::id()]), Holder::Nobody);
  }

  /// A socket bound (and listening, if `listen`) on `addr`, with `IPV6_V6ONLY` as given for IPv6.
  fn socket_on(addr: &str, v6_only: bool, listen: bool) -> (socket2::Socket, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let addr: SocketAddr = addr.parse().unwrap();
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
    if addr.is_ipv6() {
      socket.set_only_v6(v6_only).unwrap();
    }
    socket.bind(&addr.into()).unwrap();
    if listen {
      socket.listen(8).unwrap();
    }
    let bound = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, bound)
  }

  fn at(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
  }

  #[test]
  fn listener_at_finds_what_a_connect_would_reach() {
    // A listener on the address itself, then nothing once it is closed.
    let (exact, addr) = socket_on("127.0.0.1:0", false, true);
    assert_eq!(listener_at(addr), Some(true));
    drop(exact);
    assert_eq!(listener_at(addr), Some(false));
    // Bound without listening is not a listener.
    let (bound, addr) = socket_on("127.0.0.1:0", false, false);
    assert_eq!(listener_at(addr), Some(false));
    drop(bound);
    // The wildcard address takes connects to loopback.
    let (wildcard, addr) = socket_on("0.0.0.0:0", false, true);
    assert_eq!(listener_at(at("127.0.0.1", addr.port())), Some(true));
    drop(wildcard);
    if std::net::TcpListener::bind("[::1]:0").is_err() {
      return; // no IPv6 here
    }
    // A dual-stack wildcard takes IPv4 connects too; an IPv6-only one does not.
    let (dual, addr) = socket_on("[::]:0", false, true);
    assert_eq!(listener_at(at("127.0.0.1", addr.port())), Some(true));
    assert_eq!(listener_at(at("::1", addr.port())), Some(true));
    drop(dual);
    let (v6_only, addr) = socket_on("[::1]:0", true, true);
    assert_eq!(listener_at(at("::1", addr.port())), Some(true));
    assert_eq!(listener_at(at("127.0.0.1", addr.port())), Some(false));
    drop(v6_only);
  }

  /// The check before a secret is written names the socket that took the connection, not whatever listens
  /// on the port now: a listener that accepted and closed, and a process that then listens on the same
  /// port, do not make the accepted connection that process's.
  #[test]
  fn a_connection_belongs_to_whoever_took_it_not_to_the_next_listener_on_its_port() {
    let me = std::process::id();
    let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(first.local_addr().unwrap()).unwrap();
    let (local, peer) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
    // Waiting in the listener's queue: the listener's holder.
    assert_eq!(connection_held_by(local, peer, &[me]), Holder::Ours);
    assert_eq!(connection_held_by(local, peer, &[1]), Holder::Others);
    let (accepted, _) = first.accept().unwrap();
    drop(first);
    assert_eq!(connection_held_by(local, peer, &[me]), Holder::Ours);

    // Another process listens on the port now (a `sleep` that inherits the listener, closed here).
    let second = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // As servers do (and std's listeners): the port still has the accepted connection on it.
    second.set_reuse_address(true).unwrap();
    second.bind(&peer.into()).unwrap();
    second.listen(8).unwrap();
    second.set_cloexec(false).unwrap();
    let mut other = std::process::Command::new("sleep")
      .arg("30")
      .spawn()
      .unwrap();
    drop(second);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while listened_at_by(peer, &[other.id()]) != Holder::Ours {
      assert!(
        std::time::Instant::now() < deadline,
        "the listener never showed in the other process"
      );
      std::thread::yield_now();
    }
    assert_eq!(
      connection_held_by(local, peer, &[other.id()]),
      Holder::Others
    );
    assert_eq!(connection_held_by(local, peer, &[me]), Holder::Ours);
    other.kill().unwrap();
    other.wait().unwrap();

    // Once both ends are closed, the connection is gone.
    drop(accepted);
    drop(client);
    assert_eq!(connection_held_by(local, peer, &[me]), Holder::Nobody);
  }

  #[test]
  #[ignore = "a measurement: cargo test --release listener_at_costs -- --ignored --nocapture"]
  fn listener_at_costs_less_than_a_dump() {
    let (_closed, addr) = socket_on("127.0.0.1:0", false, false);
    let time = |look: &dyn Fn()| {
      let started = std::time::Instant::now();
      for _ in 0..5000 {
        look();
      }
      started.elapsed() / 5000
    };
    let exact = time(&|| assert_eq!(listener_at(addr), Some(false)));
    let dump = time(&|| assert!(!listening_ports().unwrap().contains(&addr.port())));
    let refused = time(&|| assert!(std::net::TcpStream::connect(addr).is_err()));
    eprintln!("per look: exact lookup {exact:?}, dump {dump:?}, refused connect {refused:?}");
    assert!(exact < dump);
  }
}
