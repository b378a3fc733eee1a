//! Placement: where one process of a backend listens, and the one way it gets there — pick a port,
//! reserve it, try the process on it, and when another program took the port first (`EADDRINUSE`),
//! try the next one, up to `ADDRESS_IN_USE_RETRIES` times. A first start, a restart and a reload's
//! replacement all come through `place`; `attempt` is one try.

mod attempt;
mod notify;

use super::context::Context;
use super::instance::Instance;
use super::launch::Launch;
use super::{Event, Level};
use crate::blocking;
use crate::error::{PmError, Result};
use crate::net::port::{self, Search};
use crate::net::reservation::{self, Reservation};
use attempt::Attempt;
pub use attempt::NotUp;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How many more ports are tried when the backend reports `EADDRINUSE` before it is healthy.
pub const ADDRESS_IN_USE_RETRIES: usize = 3;

/// Where one process of a backend listens.
#[derive(Clone)]
pub struct Place {
  pub ports: Ports,
  /// A replica's: the public port of its backend (for its record) and its index (for its events).
  pub replica: Option<(u16, usize)>,
}

/// Which port a process gets.
#[derive(Clone)]
pub enum Ports {
  /// A port of this manager's range (a backend on its own, on the public port). `keep`: the port it had,
  /// taken again while it is free (a restart); another one is `port-changed`.
  Range { keep: Option<u16> },
  /// A port of its own from the OS, behind the balancer; `keep` likewise.
  Internal { keep: Option<u16> },
  /// The manager's listening socket on the public port, handed over as descriptor 3 (`listen: 'fd'`).
  Shared(u16, Arc<std::net::TcpListener>),
}

impl Place {
  pub fn new(ports: Ports, replica: Option<(u16, usize)>) -> Place {
    Place { ports, replica }
  }

  /// The socket to hand over, with `listen: 'fd'`.
  pub fn socket(&self) -> Option<Arc<std::net::TcpListener>> {
    match &self.ports {
      Ports::Shared(_, socket) => Some(socket.clone()),
      _ => None,
    }
  }

  /// The replica's index, for its events.
  pub fn index(&self) -> Option<usize> {
    self.replica.map(|(_, index)| index)
  }
}

/// What placing one process came to.
pub enum Placed {
  /// Healthy: the process, its last probe's latency, and the reservation of a port newly taken for it
  /// (`None`: the port it kept, or the shared socket).
  Up(Arc<Instance>, Duration, Option<Reservation>),
  NotUp(NotUp),
}

/// Places one process: healthy, or why not. `renew_token`: a port lost to another program is retried
/// with a new token (a backend on its own, whose token nobody has yet: that program may have been sent
/// the old one). `restarts`: how many came before, for its record.
pub async fn place(
  ctx: &Arc<Context>,
  launch: &mut Launch,
  place: &Place,
  cancel: &mut watch::Receiver<bool>,
  restarts: u32,
  renew_token: bool,
) -> Result<Placed> {
  let mut exclude = Vec::new();
  for try_index in 0..=ADDRESS_IN_USE_RETRIES {
    let (port, reserved) = pick(ctx, &place.ports, &exclude, try_index == 0).await?;
    match attempt::run(ctx, launch, place, port, cancel, restarts).await? {
      Attempt::Ready(instance, latency) => return Ok(Placed::Up(instance, latency, reserved)),
      Attempt::PortTaken { port, exited } => {
        let shared = matches!(place.ports, Ports::Shared(..));
        if shared || try_index == ADDRESS_IN_USE_RETRIES {
          return Err(port_lost(port, exited));
        }
        ctx.log_for(
          place.index(),
          Level::Warn,
          format!(
            "another program took port {port} before the backend could; trying the next port"
          ),
        );
        exclude.push(port);
        // Replicas share one token: theirs is kept (a request with it is only ever written to a
        // listener found to be theirs).
        if renew_token {
          launch.renew_token()?;
          ctx.learn_secrets(launch, true);
        }
      }
      Attempt::NotUp(not_up) => return Ok(Placed::NotUp(not_up)),
    }
  }
  unreachable!("the loop returns on its last try")
}

/// The port for one try, not in `exclude`: the kept one while it is free, else a new one (reserved;
/// `first`: the first try, which says when the port is not the one asked for).
async fn pick(
  ctx: &Context,
  ports: &Ports,
  exclude: &[u16],
  first: bool,
) -> Result<(u16, Option<Reservation>)> {
  let keep = match ports {
    Ports::Shared(port, _) => return Ok((*port, None)),
    Ports::Range { keep } | Ports::Internal { keep } => *keep,
  };
  if let Some(port) = keep.filter(|p| !exclude.contains(p)) {
    if blocking::run(move || port::is_port_available(port, None)).await? {
      return Ok((port, None));
    }
  }
  let mut avoid = exclude.to_vec();
  avoid.extend(keep);
  let reserved = match ports {
    Ports::Range { .. } => reserve_port(ctx, &avoid).await?,
    _ => reserve_internal_port(ctx, &avoid).await?,
  };
  let port = reserved.port();
  match (ports, keep) {
    (Ports::Range { .. }, Some(previous)) => {
      ctx.log(
        Level::Warn,
        format!("port {previous} was taken by another program; the backend moves to port {port}"),
      );
      ctx.emit(Event::PortChanged { previous, port });
    }
    (Ports::Range { .. }, None) if first && port != ctx.options.port => ctx.log(
      Level::Info,
      format!("port {} is in use, using port {port}", ctx.options.port),
    ),
    _ => {}
  }
  Ok((port, Some(reserved)))
}

/// The public port of a backend with a front: reserved in this manager's range, and bound and
/// listening at once (by the balancer, or handed to the processes), so it can't be lost afterwards.
pub async fn bind_public(ctx: &Context) -> Result<(Reservation, std::net::TcpListener)> {
  let mut exclude = Vec::new();
  loop {
    let reserved = reserve_port(ctx, &exclude).await?;
    let port = reserved.port();
    match std::net::TcpListener::bind(std::net::SocketAddr::new(ctx.options.host, port)) {
      Ok(listener) => return Ok((reserved, listener)),
      Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => exclude.push(port),
      Err(e) => {
        return Err(PmError::Internal(format!(
          "could not listen on {}:{port}: {e}",
          ctx.options.host
        )))
      }
    }
  }
}

/// A free port for a replica behind the balancer: one the OS hands out (outside the public range, which
/// the app's other backends use), checked on every address family and reserved like any other.
pub async fn reserve_internal_port(ctx: &Context, exclude: &[u16]) -> Result<Reservation> {
  let owner = ctx.owner;
  let exclude = exclude.to_vec();
  blocking::run(move || {
    for _ in 0..64 {
      let Ok(probe) = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)) else {
        break;
      };
      let Ok(port) = probe.local_addr().map(|a| a.port()) else {
        break;
      };
      drop(probe);
      if exclude.contains(&port) {
        continue;
      }
      if let Some(reserved) = reservation::reserve(port, owner) {
        if port::is_port_available(port, None) {
          return Ok(reserved);
        }
      }
    }
    Err(PmError::NoFreePort {
      start_port: 1,
      end_port: u16::MAX,
    })
  })
  .await?
}

/// The first free port of this manager's range, not in `exclude`. Off the async workers: it binds
/// sockets and takes file locks.
pub async fn reserve_port(ctx: &Context, exclude: &[u16]) -> Result<Reservation> {
  let o = &ctx.options;
  let search = Search {
    start_port: exclude
      .last()
      .map_or(o.port, |p| p.saturating_add(1).min(o.last_port())),
    end_port: o.last_port(),
    exclude: exclude.to_vec(),
    host: None,
    owner: ctx.owner,
    handout: false,
  };
  let found = blocking::run(move || port::find_available_port(&search)).await?;
  found.map_err(|e| match e {
    PmError::NoFreePort { .. } => PmError::NoFreePort {
      start_port: o.port,
      end_port: o.last_port(),
    },
    other => other,
  })
}

/// The error after the last port was lost to other programs too.
pub fn port_lost(port: u16, exited: PmError) -> PmError {
  match exited {
    PmError::BackendExited {
      exit_code,
      signal,
      stderr_tail,
      ..
    } => PmError::BackendExited {
      message: format!(
        "the backend could not listen: port {port} and the {ADDRESS_IN_USE_RETRIES} ports tried before it were taken by other programs first (EADDRINUSE). See stderrTail for its last output"
      ),
      exit_code,
      signal,
      stderr_tail,
    },
    other => other,
  }
}
