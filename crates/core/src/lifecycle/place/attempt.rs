//! One try at starting the backend on one reserved port: spawn → record → wait until healthy, or until it
//! exits, or until a stop cancels the start. Readiness counts only when the port's listener is one of the
//! backend's own processes (docs/design.md §11): a 2xx from a stranger on the same port is not our backend.

use super::notify::{self, Notices};
use super::Place;
use crate::blocking;
use crate::error::{PmError, Result};
use crate::lifecycle::context::{url_for, Context};
use crate::lifecycle::instance::Instance;
use crate::lifecycle::launch::Launch;
use crate::lifecycle::owner;
use crate::lifecycle::ready;
use crate::lifecycle::{BackendInfo, Level, StopResult};
use crate::net::health;
use crate::net::listeners::{self, Holder};
use crate::options::ReadySignal;
use crate::os::spawn::{self, ExitInfo, LineSink, Lines, Stream};
use crate::os::stop::Polite;
use crate::os::tree;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// Once the backend answers but is not healthy yet, probes back off up to this.
const ANSWERED_DELAY_CAP: Duration = Duration::from_millis(500);
/// While the backend does not listen yet, a look for its listener this often — and at once whenever it
/// writes a line (most servers announce that they listen), which is what finds most backends.
const QUIET_LOOK_EVERY: Duration = Duration::from_millis(25);

pub enum Attempt {
  /// Healthy; the last probe took `latency`.
  Ready(Arc<Instance>, Duration),
  /// The backend lost the race for its port (it said so, then exited); try the next one. `exited` is the
  /// error to report if no try is left.
  PortTaken { port: u16, exited: PmError },
  /// It did not come up, and another port would not help.
  NotUp(NotUp),
}

/// Why a process did not come up.
pub enum NotUp {
  /// A stop came first; what it stopped (nothing, if it came before the spawn).
  Cancelled {
    stopped: Option<StopResult>,
    stderr_tail: Vec<String>,
  },
  /// The process ended before it was healthy (by itself, or stopped at the start deadline).
  Failed {
    pid: u32,
    exit: ExitInfo,
    error: PmError,
  },
}

/// One try at `place`, on `port`. `restarts`: how many restarts came before it, for its record.
pub async fn run(
  manager: &Arc<Context>,
  launch: &Launch,
  place: &Place,
  port: u16,
  cancel: &mut watch::Receiver<bool>,
  restarts: u32,
) -> Result<Attempt> {
  let cancelled = *cancel.borrow_and_update();
  if cancelled {
    return Ok(Attempt::NotUp(NotUp::Cancelled {
      stopped: None,
      stderr_tail: Vec::new(),
    }));
  }
  let o = &manager.options;
  let mut spec = launch.on_port(port, o.host, &o.port_env, place.socket());
  // `ready: 'notify'`: the backend says READY=1 on a socket of this start's own.
  let notices = Notices::open(&o.ready, &mut spec)?;
  manager.log_for(
    place.index(),
    Level::Info,
    format!("starting backend: {} {}", spec.program, spec.args.join(" ")),
  );
  let port_taken = Arc::new(AtomicBool::new(false));
  let nudge = Arc::new(Notify::new());
  let line_seen = Arc::new(ready::LineSeen::default());
  // Lines are looked at for "address in use" only while that can still fail the start.
  let starting = Arc::new(AtomicBool::new(true));
  let sink: LineSink = {
    let manager = Arc::downgrade(manager);
    let port_taken = port_taken.clone();
    let starting = starting.clone();
    let nudge = nudge.clone();
    let redactor = Arc::new(launch.redactor());
    let replica = place.index().unwrap_or(0);
    let ready_line = match &o.ready {
      ReadySignal::Stdout(pattern) => Some((pattern.clone(), line_seen.clone())),
      _ => None,
    };
    Arc::new(move |stream: Stream, lines: &Lines<'_>| {
      nudge.notify_one();
      if starting.load(Ordering::Relaxed) && lines.iter().any(|line| says_port_taken(line, port)) {
        port_taken.store(true, Ordering::SeqCst);
      }
      if let Some(manager) = manager.upgrade() {
        manager.lines(stream, replica, lines, &redactor);
      }
      // After the line is queued for the log and the app: it is in `pm.logs()` once the start resolves.
      if let Some((pattern, seen)) = &ready_line {
        if !seen.is_seen() && lines.iter().any(|line| pattern.is_match(line)) {
          seen.saw();
        }
      }
    })
  };
  // Held before its program until its record is on disk (docs/design.md §25).
  spec.no_parent_death_signal = !o.death_guard.parent_death_signal();
  notify::start_guard(manager).await;
  let child = spawn::spawn_held(spec, sink).await?;
  // Held at its gate: the guard knows its group before its program can run.
  notify::tell_guard(manager, child.pid);
  let info = BackendInfo {
    pid: child.pid,
    port,
    host: o.host.to_string(),
    url: url_for(o.host, port),
    started_at: now_ms(),
    token: launch.token.clone(),
    replicas: None,
  };
  let instance = Instance::new(
    info,
    child.clone(),
    &o.name,
    o.state_dir.clone(),
    &o.health_path,
    restarts,
    place.replica.map(|(public_port, _)| public_port),
  );
  let record_written = instance.write_record().await;
  let ran = match record_written {
    Ok(()) => child.run_program().await,
    Err(e) => {
      child.stop_at_gate();
      Err(e)
    }
  };
  if let Err(e) = ran {
    // Its program never ran: nothing to report as an exit, only the process to see gone (and a record
    // written for it to delete).
    let ended = instance
      .end(manager.deadlines.stop, Polite::default())
      .await;
    if let Some(problem) = ended.report.and_then(|r| r.delete_error) {
      manager.log_for(place.index(), Level::Warn, problem);
    }
    return Err(e);
  }
  // Its record names no executable until it is ready: the program may be a launcher that execs the server
  // (a shell, a version manager's shim, an `env` shebang), and a record naming the launcher would make the
  // server a stranger at its own pid. Its start time identifies it meanwhile.
  manager.log_for(
    place.index(),
    Level::Info,
    format!("backend started with pid {} on port {port}", child.pid),
  );
  manager.check_spawn_settings(&child);

  let waiting_since = Instant::now();
  let deadline = waiting_since + manager.deadlines.start;
  let pid = child.pid;
  let target = manager.target(port, owner::secret(launch.token.clone(), move || vec![pid]));
  let host = target.host;
  let own_listener = move || async move {
    // The tree's own descriptors are a few /proc reads, done here (a thread for them would cost more
    // than the reads, on the path that decides how fast the app sees its backend); the rare look through
    // every process for a listener that left the tree runs off the async worker.
    match listener_in_tree(SocketAddr::new(host, port), pid) {
      Some(own) => own,
      None => blocking::run(move || listener_in_group(port, pid))
        .await
        .unwrap_or(false),
    }
  };
  tokio::select! {
    biased;
    _ = async { cancel.wait_for(|c| *c).await.map(|_| ()) } => {
      let stopped = manager.end(&instance, true, None, place.index()).await;
      Ok(Attempt::NotUp(NotUp::Cancelled { stopped: Some(stopped), stderr_tail: child.output.stderr_tail() }))
    }
    exit = child.exited() => {
      child.output.wait_closed(manager.deadlines.output_drain).await;
      manager.end(&instance, false, None, place.index()).await;
      let tail = child.output.stderr_tail();
      let hint = tail.last().map(|l| format!(": {l}")).unwrap_or_default();
      let exited = PmError::BackendExited {
        message: format!(
          "the backend exited with {} before it became healthy{hint}. See stderrTail for its last output",
          exit.describe()
        ),
        exit_code: exit.exit_code,
        signal: exit.signal.clone(),
        stderr_tail: tail,
      };
      if port_taken.load(Ordering::SeqCst) {
        return Ok(Attempt::PortTaken { port, exited });
      }
      Ok(Attempt::NotUp(NotUp::Failed { pid, exit, error: exited }))
    }
    ready = async {
      match &o.ready {
        // `listen: 'fd'`: one probe waits in the backlog of the socket this process holds.
        ReadySignal::Http if place.socket().is_some() => health::wait_in_backlog(
          &target,
          o.health_timeout,
          deadline,
          ANSWERED_DELAY_CAP,
          health::Watch { refused_delay: QUIET_LOOK_EVERY, nudge: Some(nudge.clone()), own_thread: false },
          own_listener,
        ).await,
        ReadySignal::Http => health::wait_until_healthy(
          &target,
          manager.deadlines.probe,
          deadline,
          ANSWERED_DELAY_CAP,
          health::Watch {
            refused_delay: QUIET_LOOK_EVERY,
            nudge: Some(nudge.clone()),
            own_thread: false,
          },
          own_listener,
        ).await,
        // `listen: 'fd'`: the socket this process holds queues a connect at once; the accept is waited for.
        ReadySignal::Port => match place.socket() {
          Some(socket) => ready::wait_for_accept(
            &socket, SocketAddr::new(host, port), deadline, QUIET_LOOK_EVERY, &nudge,
          ).await,
          None => ready::wait_for_port(
            SocketAddr::new(host, port), manager.deadlines.probe, deadline, QUIET_LOOK_EVERY, &nudge, own_listener,
          ).await,
        },
        ReadySignal::Stdout(pattern) => line_seen.wait(deadline, &format!("{:?}", pattern.as_str())).await,
        ReadySignal::Notify => notices.wait_ready(manager, deadline, place.index()).await,
      }
    } => {
      match ready {
        Ok(ready) => {
          starting.store(false, Ordering::Relaxed);
          // A launcher (a shell, a version manager's shim, an `env` shebang) may have exec'd the real
          // server since the last write: the record names it before the start resolves, or a status or
          // cleanup reading it then would find a stranger at the pid and call the live backend stale.
          // The write is queued first (`biased`), and what else is to be done here runs while the
          // writer thread writes.
          let (written, ()) = tokio::join!(biased; instance.write_record(), async {
            notices.keep_reading(manager, child.clone(), place.index());
            manager.log_for(place.index(), Level::Info, format!(
              "backend is ready at {} ({} health checks in {} ms)",
              instance.info.url, ready.probes, waiting_since.elapsed().as_millis()
            ));
          });
          if let Err(e) = written {
            manager.record_not_updated(&instance, &e);
          }
          Ok(Attempt::Ready(instance, ready.latency))
        }
        Err(not_ready) => {
          let last = not_ready.last.describe();
          manager.log_for(place.index(), Level::Warn, format!(
            "backend not healthy after {} ms and {} health checks (last: {last}); stopping it",
            manager.deadlines.start.as_millis(), not_ready.probes
          ));
          let stopped = manager.end(&instance, true, None, place.index()).await;
          Ok(Attempt::NotUp(NotUp::Failed {
            pid,
            exit: stopped.exit,
            error: PmError::StartTimeout {
              port,
              timeout_ms: manager.deadlines.start.as_millis() as u64,
              last_health_error: last,
            },
          }))
        }
      }
    }
  }
}

/// `Some(true)` when the listener at `addr` is in the backend's tree (or the OS cannot tell), `Some(false)`
/// when nothing listens; `None` when another process listens, and the group is to be looked at.
fn listener_in_tree(addr: SocketAddr, pid: u32) -> Option<bool> {
  match listeners::listened_at_by(addr, &tree::with_descendants(pid)) {
    Holder::Ours | Holder::Unknown => Some(true),
    Holder::Nobody => Some(false),
    Holder::Others => None,
  }
}

/// The port's listener is in what the backend's group holds (a server that a wrapper started and that
/// left the tree).
fn listener_in_group(port: u16, pid: u32) -> bool {
  let group: Vec<u32> = tree::group_members(pid)
    .into_iter()
    .map(|m| m.pid)
    .collect();
  listeners::listened_by(port, &group) != Holder::Others
}

fn now_ms() -> u64 {
  std::time::SystemTime::now()
    .duration_since(std::time::UNIX_EPOCH)
    .map_or(0, |d| d.as_millis() as u64)
}

/// The line says the backend could not listen because the address is in use — on `port`, or on no port it
/// names. A metrics endpoint or a second server failing on another port is not a port conflict of ours.
pub fn says_port_taken(line: &str, port: u16) -> bool {
  // Every phrase below has "us" in it ("in use", "usage"): most lines are passed over without a
  // lower-cased copy.
  if !line
    .as_bytes()
    .windows(2)
    .any(|w| w.eq_ignore_ascii_case(b"us"))
  {
    return false;
  }
  let lower = line.to_ascii_lowercase();
  let in_use = [
    "eaddrinuse",
    "address already in use",
    "address in use",
    "connection in use",
    "only one usage of each socket address",
  ]
  .iter()
  .any(|m| lower.contains(m));
  if !in_use {
    return false;
  }
  let named = ports_named(&lower);
  named.is_empty() || named.contains(&port)
}

/// Numbers in a line that can be ports: not part of a dotted address, not an error number; of 2-5 digits,
/// or of any length where they are named as a port (`host:9`, `('127.0.0.1', 9)`, `port 9`).
fn ports_named(lower: &str) -> Vec<u16> {
  let bytes = lower.as_bytes();
  let mut found = Vec::new();
  let mut at = 0;
  while at < bytes.len() {
    if !bytes[at].is_ascii_digit() {
      at += 1;
      continue;
    }
    let begin = at;
    while at < bytes.len() && bytes[at].is_ascii_digit() {
      at += 1;
    }
    let before = lower[..begin].trim_end();
    let dotted = (begin > 0 && bytes[begin - 1] == b'.') || bytes.get(at) == Some(&b'.');
    let error_number = ["errno", "error", "os error", "winerror", "code"]
      .iter()
      .any(|w| before.ends_with(w));
    let named_as_port =
      (begin > 0 && bytes[begin - 1] == b':') || before.ends_with("',") || before.ends_with("port");
    let digits = if named_as_port { 1..=5 } else { 2..=5 };
    if digits.contains(&(at - begin)) && !dotted && !error_number {
      if let Ok(n) = lower[begin..at].parse::<u16>() {
        found.push(n);
      }
    }
  }
  found
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn a_port_conflict_counts_only_for_the_chosen_port_or_none() {
    let ours = [
      "Error: listen EADDRINUSE: address already in use 127.0.0.1:8000",
      "OSError: [Errno 98] Address already in use",
      "ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 8000): address already in use",
      "listen tcp 127.0.0.1:8000: bind: address already in use",
      "[2025-01-01 10:00:00 +0000] [7] [ERROR] Connection in use: ('127.0.0.1', 8000)",
      "OSError: [WinError 10048] Only one usage of each socket address is normally permitted",
    ];
    for line in ours {
      assert!(says_port_taken(line, 8000), "{line}");
    }
    let elsewhere = [
      "Error: listen EADDRINUSE: address already in use 127.0.0.1:9464",
      "metrics: listen tcp [::1]:9090: bind: address already in use",
      // A port is a port whatever its digit count (issue 20 item 13).
      "Error: listen EADDRINUSE: address already in use 127.0.0.1:9",
      "listen tcp [::1]:7: bind: address already in use",
      "ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 9): address already in use",
      "EADDRINUSE on port 5",
    ];
    for line in elsewhere {
      assert!(!says_port_taken(line, 8000), "{line}");
    }
    assert!(!says_port_taken("listening on 8000", 8000));
  }
}
