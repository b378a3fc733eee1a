//! Windows: anonymous pipes cannot be read asynchronously, so one thread per pipe reads it (tokio's own
//! `process` does the same through its blocking pool).

use super::{expecting, LineBuffer, LineSink, Output, Stream};
use std::io::Read;
use std::sync::Arc;

/// The read end of one of the backend's output pipes.
pub type Pipe = Box<dyn Read + Send>;

/// Starts one reader thread per pipe.
pub fn start_readers(pid: u32, pipes: Vec<(Stream, Pipe)>, sink: LineSink) -> Arc<Output> {
  let output = expecting(pipes.len());
  for (stream, pipe) in pipes {
    let reader_output = output.clone();
    let sink = sink.clone();
    let name = match stream {
      Stream::Stdout => format!("bpm-out-{pid}"),
      Stream::Stderr => format!("bpm-err-{pid}"),
    };
    let started = std::thread::Builder::new()
      .name(name)
      .stack_size(crate::blocking::THREAD_STACK)
      .spawn(move || read_lines(stream, pipe, &reader_output, &sink));
    if started.is_err() {
      // Without a reader the pipe fills and blocks the backend; it gets no output events instead.
      output.stream_closed();
    }
  }
  output
}

fn read_lines(stream: Stream, mut pipe: Pipe, output: &Output, sink: &LineSink) {
  let mut lines = LineBuffer::new();
  loop {
    match pipe.read(lines.space()) {
      Ok(0) => break,
      Ok(n) => lines.read(n, stream, output, sink),
      Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
      Err(_) => break,
    }
  }
  lines.finish(stream, output, sink);
  output.stream_closed();
}
