//! Free ports: a port is available only when it binds on every loopback and wildcard address of both
//! families (DESIGN.md §6), and a port handed out is reserved in this process for a while so that parallel
//! callers get different ports. The race with other processes cannot be closed from outside; the manager
//! detects `EADDRINUSE` from the backend and moves on to the next port.

use crate::error::{PmError, Result};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a port handed out by `find_available_port` is withheld from other callers in this process.
pub const RESERVATION: Duration = Duration::from_secs(15);

/// The addresses a port must bind on to count as free.
const ALL_FAMILIES: [IpAddr; 4] = [
  IpAddr::V4(Ipv4Addr::LOCALHOST),
  IpAddr::V6(Ipv6Addr::LOCALHOST),
  IpAddr::V4(Ipv4Addr::UNSPECIFIED),
  IpAddr::V6(Ipv6Addr::UNSPECIFIED),
];

fn reservations() -> &'static Mutex<HashMap<u16, Instant>> {
  static RESERVED: OnceLock<Mutex<HashMap<u16, Instant>>> = OnceLock::new();
  RESERVED.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Binds `addr:port` (without listening) and reports whether that worked. An address family this machine
/// lacks (no IPv6) does not make the port busy.
fn binds(addr: IpAddr, port: u16) -> bool {
  let domain = if addr.is_ipv4() {
    Domain::IPV4
  } else {
    Domain::IPV6
  };
  let Ok(socket) = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)) else {
    // No socket of that family can exist here, so nothing can hold the port on it.
    return !addr.is_ipv4();
  };
  if addr.is_ipv6() {
    // Test the IPv6 address alone; the IPv4 addresses are tested on their own.
    let _ = socket.set_only_v6(true);
  }
  // Like Node and std: a port in TIME_WAIT is free for a new listener, so don't count it as busy.
  #[cfg(unix)]
  let _ = socket.set_reuse_address(true);
  match socket.bind(&SocketAddr::new(addr, port).into()) {
    Ok(()) => true,
    Err(e) => {
      let no_such_address = e.kind() == ErrorKind::AddrNotAvailable
        || e.raw_os_error() == Some(libc_eafnosupport())
        || e.kind() == ErrorKind::Unsupported;
      addr.is_ipv6() && no_such_address
    }
  }
}

fn libc_eafnosupport() -> i32 {
  #[cfg(unix)]
  {
    libc::EAFNOSUPPORT
  }
  #[cfg(windows)]
  {
    10047 // WSAEAFNOSUPPORT
  }
}

/// True when `port` binds on 127.0.0.1, ::1, 0.0.0.0 and :: (or only on `host` when one is given).
pub fn is_port_available(port: u16, host: Option<IpAddr>) -> bool {
  if port == 0 {
    return false;
  }
  match host {
    Some(addr) => binds(addr, port),
    None => ALL_FAMILIES.iter().all(|&addr| binds(addr, port)),
  }
}

pub struct FindOptions {
  pub start_port: u16,
  pub end_port: u16,
  pub exclude: HashSet<u16>,
  pub host: Option<IpAddr>,
}

/// The first port of `[start_port, end_port]` that is not excluded, not reserved in this process and
/// available; it is then reserved for `RESERVATION`.
pub fn find_available_port(options: &FindOptions) -> Result<u16> {
  let FindOptions {
    start_port,
    end_port,
    ..
  } = *options;
  if start_port == 0 || end_port < start_port {
    return Err(PmError::InvalidArg(format!(
      "port range {start_port}..{end_port} is empty: the start port must be 1-65535 and not above the end port"
    )));
  }
  // One read of the kernel's listening-socket table skips held ports without a bind each; the chosen
  // candidate is still confirmed by binding it on every family.
  let listening = if options.host.is_none() {
    crate::sockets::listening_ports()
  } else {
    None
  };
  let mut reserved = reservations().lock().unwrap_or_else(|e| e.into_inner());
  let now = Instant::now();
  reserved.retain(|_, until| *until > now);
  for port in start_port..=end_port {
    if options.exclude.contains(&port) || reserved.contains_key(&port) {
      continue;
    }
    if listening.as_ref().is_some_and(|l| l.contains(&port)) {
      continue;
    }
    if is_port_available(port, options.host) {
      reserved.insert(port, now + RESERVATION);
      return Ok(port);
    }
  }
  Err(PmError::NoFreePort {
    start_port,
    end_port,
  })
}

/// Gives a reserved port back early (the backend that was to use it failed or stopped).
pub fn release_port(port: u16) {
  reservations()
    .lock()
    .unwrap_or_else(|e| e.into_inner())
    .remove(&port);
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::net::TcpListener;

  fn options(start_port: u16, end_port: u16) -> FindOptions {
    FindOptions {
      start_port,
      end_port,
      exclude: HashSet::new(),
      host: None,
    }
  }

  /// A port that was free a moment ago (the OS handed it out), released again.
  fn fresh_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
      .unwrap()
      .local_addr()
      .unwrap()
      .port()
  }

  #[test]
  fn a_port_held_on_any_family_is_not_available() {
    for addr in ["127.0.0.1:0", "0.0.0.0:0"] {
      let held = TcpListener::bind(addr).unwrap();
      let port = held.local_addr().unwrap().port();
      assert!(!is_port_available(port, None), "held on {addr}");
    }
    if let Ok(held) = TcpListener::bind("[::1]:0") {
      let port = held.local_addr().unwrap().port();
      assert!(!is_port_available(port, None), "held on ::1 only");
      assert!(is_port_available(port, Some("127.0.0.1".parse().unwrap())));
    }
  }

  #[test]
  fn a_released_port_is_available() {
    let port = fresh_port();
    assert!(is_port_available(port, None));
  }

  #[test]
  fn skips_held_ports_and_reserves_what_it_returns() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let start = held.local_addr().unwrap().port();
    let end = start.saturating_add(20);
    let first = find_available_port(&options(start, end)).unwrap();
    assert_ne!(first, start);
    let second = find_available_port(&options(start, end)).unwrap();
    assert_ne!(first, second, "a reserved port is not handed out twice");
    release_port(first);
    release_port(second);
  }

  #[test]
  fn an_exhausted_range_is_an_error_naming_the_range() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    match find_available_port(&options(port, port)) {
      Err(PmError::NoFreePort {
        start_port,
        end_port,
      }) => assert_eq!((start_port, end_port), (port, port)),
      other => panic!("expected NoFreePort, got {other:?}"),
    }
  }

  #[test]
  fn excluded_ports_are_skipped() {
    let port = fresh_port();
    let mut opts = options(port, port);
    opts.exclude.insert(port);
    assert!(find_available_port(&opts).is_err());
  }
}
