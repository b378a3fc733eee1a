//! Free ports: a port is available only when it binds on every loopback and wildcard address of both
//! families (docs/design.md §6), and a port handed out is reserved (see `reservation`) so that parallel callers,
//! in this process or another of this user's, get different ports. The race with other programs cannot
//! be closed from outside; the manager detects `EADDRINUSE` from the backend and moves on to the next port.

use super::reservation::{self, Owner, Reservation};
use crate::error::{PmError, Result};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// How long a port handed out by `findAvailablePort` is withheld from other callers.
pub const RESERVATION: Duration = Duration::from_secs(15);

/// The addresses a port must bind on to count as free.
const ALL_FAMILIES: [IpAddr; 4] = [
  IpAddr::V4(Ipv4Addr::LOCALHOST),
  IpAddr::V6(Ipv6Addr::LOCALHOST),
  IpAddr::V4(Ipv4Addr::UNSPECIFIED),
  IpAddr::V6(Ipv6Addr::UNSPECIFIED),
];

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
  imp::ignore_time_wait(&socket);
  match socket.bind(&SocketAddr::new(addr, port).into()) {
    Ok(()) => true,
    Err(e) => {
      let no_such_address = matches!(
        e.kind(),
        ErrorKind::AddrNotAvailable | ErrorKind::Unsupported
      ) || is_family_unsupported(&e);
      addr.is_ipv6() && no_such_address
    }
  }
}

fn is_family_unsupported(e: &std::io::Error) -> bool {
  e.raw_os_error() == Some(imp::FAMILY_UNSUPPORTED)
}

#[cfg(unix)]
mod imp {
  use socket2::Socket;

  /// Like Node and std: a port in TIME_WAIT is free for a new listener, so it does not count as busy.
  pub fn ignore_time_wait(socket: &Socket) {
    let _ = socket.set_reuse_address(true);
  }

  pub const FAMILY_UNSUPPORTED: i32 = rustix::io::Errno::AFNOSUPPORT.raw_os_error();
}

#[cfg(windows)]
mod imp {
  use socket2::Socket;

  /// A port in TIME_WAIT already binds here; SO_REUSEADDR would let a bind share a port that is in use.
  pub fn ignore_time_wait(_socket: &Socket) {}

  /// WSAEAFNOSUPPORT.
  pub const FAMILY_UNSUPPORTED: i32 = 10047;
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

/// What to look for.
#[derive(Debug, Clone)]
pub struct Search {
  pub start_port: u16,
  pub end_port: u16,
  pub exclude: Vec<u16>,
  pub host: Option<IpAddr>,
  pub owner: Owner,
  /// A port for a caller to take away (`findAvailablePort`): one that `owner` reserved earlier is
  /// skipped too, so parallel calls get different ports. Otherwise (a start) it is taken over.
  pub handout: bool,
}

/// The first port of the range that is not excluded, not reserved by anyone but `owner`, and available;
/// it comes back reserved.
pub fn find_available_port(search: &Search) -> Result<Reservation> {
  let (start, end) = (search.start_port, search.end_port);
  if start == 0 || end < start {
    return Err(PmError::invalid(format!(
      "port range {start}..{end} is empty: the start port must be 1-65535 and not above the end port"
    )));
  }
  // One read of the kernel's listening-socket table skips held ports without a bind each; the chosen
  // candidate is still confirmed by binding it on every family.
  let listening = match search.host {
    None => super::listeners::listening_ports(),
    Some(_) => None,
  };
  for port in start..=end {
    if search.exclude.contains(&port)
      || listening.as_ref().is_some_and(|l| l.contains(&port))
      || reservation::held_by_other(port, search.owner, !search.handout)
    {
      continue;
    }
    let reserved = match search.handout {
      true => reservation::reserve_fresh(port, search.owner),
      false => reservation::reserve(port, search.owner),
    };
    let Some(reserved) = reserved else {
      continue;
    };
    if is_port_available(port, search.host) {
      return Ok(reserved);
    }
  }
  Err(PmError::NoFreePort {
    start_port: start,
    end_port: end,
  })
}

/// A port that was free a moment ago (the OS handed it out), released again: for tests.
#[cfg(test)]
pub fn unused_port() -> u16 {
  std::net::TcpListener::bind("127.0.0.1:0")
    .unwrap()
    .local_addr()
    .unwrap()
    .port()
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::net::TcpListener;

  fn search(start_port: u16, end_port: u16) -> Search {
    Search {
      start_port,
      end_port,
      exclude: Vec::new(),
      host: None,
      owner: Owner::new(),
      handout: false,
    }
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
    assert!(is_port_available(unused_port(), None));
  }

  #[test]
  fn skips_held_ports_and_reserves_what_it_returns() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let start = held.local_addr().unwrap().port();
    let end = start.saturating_add(20);
    let first = find_available_port(&search(start, end)).unwrap();
    assert_ne!(first.port(), start);
    let second = find_available_port(&search(start, end)).unwrap();
    assert_ne!(
      first.port(),
      second.port(),
      "a reserved port is not handed out twice"
    );
  }

  #[test]
  fn an_owner_is_not_blocked_by_its_own_reservation() {
    let port = unused_port();
    let mut mine = search(port, port);
    find_available_port(&mine)
      .unwrap()
      .hold_until(std::time::Instant::now() + RESERVATION);
    assert!(
      find_available_port(&search(port, port)).is_err(),
      "others are"
    );
    let again = find_available_port(&mine).unwrap();
    assert_eq!(again.port(), port);
    drop(again);
    mine.handout = true;
    let handed = find_available_port(&mine).unwrap();
    assert_eq!(handed.port(), port);
    handed.hold_until(std::time::Instant::now() + RESERVATION);
    assert!(
      find_available_port(&mine).is_err(),
      "a port handed out is not handed out again, even to its owner"
    );
    mine.handout = false;
    assert_eq!(
      find_available_port(&mine).unwrap().port(),
      port,
      "but its owner's start takes it"
    );
    mine.exclude.push(port);
    assert!(
      find_available_port(&mine).is_err(),
      "excluded ports are skipped"
    );
  }

  #[test]
  fn an_exhausted_range_is_an_error_naming_the_range() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    match find_available_port(&search(port, port)) {
      Err(PmError::NoFreePort {
        start_port,
        end_port,
      }) => assert_eq!((start_port, end_port), (port, port)),
      other => panic!("expected NoFreePort, got {other:?}"),
    }
  }

  /// Twenty threads at once (real concurrency, not one after another) get twenty different ports.
  #[test]
  fn parallel_callers_get_different_ports() {
    let start = unused_port().clamp(20_000, 60_000);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(20));
    let found: Vec<Reservation> = std::thread::scope(|s| {
      let handles: Vec<_> = (0..20)
        .map(|_| {
          let barrier = barrier.clone();
          s.spawn(move || {
            barrier.wait();
            find_available_port(&search(start, start + 200)).unwrap()
          })
        })
        .collect();
      handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ports: std::collections::HashSet<u16> = found.iter().map(|r| r.port()).collect();
    assert_eq!(ports.len(), 20);
  }
}
