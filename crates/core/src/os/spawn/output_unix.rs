//! Unix: each pipe is read by a task on the runtime (its descriptor in the runtime's poll set), not by a
//! thread.

use super::{expecting, LineBuffer, LineSink, Output, Stream};
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe::Receiver;

/// The read end of one of the backend's output pipes.
pub type Pipe = std::io::PipeReader;

/// Starts one reading task per pipe, on the current runtime.
pub fn start_readers(_pid: u32, pipes: Vec<(Stream, Pipe)>, sink: LineSink) -> Arc<Output> {
  let output = expecting(pipes.len());
  for (stream, pipe) in pipes {
    match Receiver::from_owned_fd(pipe.into()) {
      Ok(pipe) => {
        tokio::spawn(read_lines(stream, pipe, output.clone(), sink.clone()));
      }
      // Not pollable (cannot happen for a pipe): the backend gets no output events, and its pipe fills.
      Err(_) => output.stream_closed(),
    }
  }
  output
}

async fn read_lines(stream: Stream, mut pipe: Receiver, output: Arc<Output>, sink: LineSink) {
  let mut lines = LineBuffer::new();
  let mut grown = false;
  loop {
    let room = lines.space().len();
    match pipe.read(lines.space()).await {
      Ok(0) => break,
      Ok(n) => {
        lines.read(n, stream, &output, &sink);
        // A read that filled the buffer: the backend writes faster than it was read.
        if n == room && !grown {
          grown = true;
          grow(&pipe, &mut lines);
        }
      }
      Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
      Err(_) => break,
    }
  }
  lines.finish(stream, &output, &sink);
  output.stream_closed();
}

/// The pipe holds `FLOOD_READ` bytes, and is read as much at once. Refused (over the user's limit of pipe
/// memory), both stay as they were.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn grow(pipe: &Receiver, lines: &mut LineBuffer) {
  if let Ok(size) = rustix::pipe::fcntl_setpipe_size(pipe, super::FLOOD_READ) {
    lines.grow(size);
  }
}

/// Elsewhere a pipe's size is the system's.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn grow(_pipe: &Receiver, _lines: &mut LineBuffer) {}
