//! splice(2) between two TCP sockets through a pipe (Linux only).
use rustix::io::Errno;
use rustix::pipe::{pipe_with, PipeFlags, SpliceFlags};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// A direction that has moved this much and still fills whole buffers is a bulk transfer.
pub const BULK_AFTER: u64 = 64 * 1024;

/// One direction's switch from copying to splice: tried once, when the direction turns out to be a bulk
/// transfer.
pub struct Bulk {
  /// Bytes copied so far, while splice may still be tried (None once it was tried).
  copied: Option<u64>,
}

impl Bulk {
  pub fn new() -> Bulk {
    Bulk { copied: Some(0) }
  }

  /// Called after each copied read of `read` bytes into a buffer of `buffer` bytes. Once the direction is a
  /// bulk transfer, moves the rest by splice; `true` when the direction ended that way. Without a free slot
  /// or descriptor for the pipe, or where splice is refused, the caller goes on copying.
  pub async fn after_copy(
    &mut self,
    slots: &Semaphore,
    from: &TcpStream,
    to: &TcpStream,
    read: usize,
    buffer: usize,
    activity: &super::Activity,
  ) -> io::Result<bool> {
    let Some(copied) = self.copied.as_mut() else {
      return Ok(false);
    };
    *copied += read as u64;
    if read < buffer || *copied < BULK_AFTER {
      return Ok(false);
    }
    self.copied = None;
    let slot = slots.try_acquire();
    if let (Ok(_slot), Ok(pipe)) = (slot, Pipe::new()) {
      if let Ended::Done = forward(from, to, &pipe, activity).await? {
        return Ok(true);
      }
    }
    Ok(false)
  }
}

/// A pipe's default capacity: one splice call moves at most this much.
const CHUNK: usize = 64 * 1024;

pub struct Pipe {
  read_end: OwnedFd,
  write_end: OwnedFd,
}

impl Pipe {
  pub fn new() -> io::Result<Pipe> {
    let (read_end, write_end) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
    Ok(Pipe {
      read_end,
      write_end,
    })
  }
}

pub enum Ended {
  /// The source ended and the end was passed on as a half-close.
  Done,
  /// The kernel refused splice on these descriptors before any byte moved: copy instead.
  Unsupported,
}

fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
  let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
  Ok(rustix::pipe::splice(from, None, to, None, len, flags)?)
}

/// Moves everything from `from` to `to` until `from` ends; the pipe is empty between rounds, so a
/// WouldBlock always comes from the socket whose readiness is awaited.
pub async fn forward(
  from: &TcpStream,
  to: &TcpStream,
  pipe: &Pipe,
  activity: &super::Activity,
) -> io::Result<Ended> {
  let mut first = true;
  loop {
    let filled = loop {
      from.readable().await?;
      let spliced = from.try_io(Interest::READABLE, || splice(from, &pipe.write_end, CHUNK));
      match spliced {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
        Err(e)
          if first
            && [Errno::INVAL, Errno::NOSYS, Errno::PERM]
              .iter()
              .any(|c| Some(c.raw_os_error()) == e.raw_os_error()) =>
        {
          return Ok(Ended::Unsupported)
        }
        other => break other?,
      }
    };
    first = false;
    activity.touch();
    if filled == 0 {
      socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write)?;
      return Ok(Ended::Done);
    }
    let mut left = filled;
    while left > 0 {
      to.writable().await?;
      let spliced = to.try_io(Interest::WRITABLE, || splice(&pipe.read_end, to, left));
      match spliced {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
        other => left -= other?,
      }
    }
  }
}
