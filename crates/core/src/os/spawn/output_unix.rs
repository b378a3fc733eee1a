//! Unix: each pipe is read by a task on the runtime (its descriptor in the runtime's poll set), not by a
//! thread.

use super::{deliver, expecting, LineSink, Output, Stream, MAX_LINE_BYTES, READ_BUFFER};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
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

async fn read_lines(stream: Stream, pipe: Receiver, output: Arc<Output>, sink: LineSink) {
  let mut reader = BufReader::with_capacity(READ_BUFFER, pipe);
  let mut buf = Vec::with_capacity(256);
  loop {
    buf.clear();
    let n = match (&mut reader)
      .take(MAX_LINE_BYTES as u64)
      .read_until(b'\n', &mut buf)
      .await
    {
      Ok(n) => n,
      Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
      Err(_) => 0,
    };
    if n == 0 {
      break;
    }
    deliver(stream, &mut buf, &output, &sink);
  }
  output.stream_closed();
}
