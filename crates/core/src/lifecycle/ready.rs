//! Readiness signals besides the HTTP probe (docs/api.md, "Readiness signals"): the backend's own listener
//! taking a connection (`'port'`), a line of its output (`{ stdout }`), or systemd's notify protocol
//! (`'notify'`: `READY=1` on a private datagram socket). The last two are waited for, not polled: the start
//! costs nothing until the signal comes.

use crate::net::health::{NotReady, ProbeOutcome, Ready};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A matching output line was seen (set from the pipe readers).
#[derive(Default)]
pub struct LineSeen {
  seen: AtomicBool,
  notify: Notify,
}

impl LineSeen {
  pub fn saw(&self) {
    if !self.seen.swap(true, Ordering::SeqCst) {
      self.notify.notify_one();
    }
  }

  pub fn is_seen(&self) -> bool {
    self.seen.load(Ordering::SeqCst)
  }

  /// Ready once a matching line came; `NotReady` at the deadline.
  pub async fn wait(&self, deadline: Instant, what: &str) -> Result<Ready, NotReady> {
    let began = Instant::now();
    let notified = self.notify.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    if !self.is_seen() {
      tokio::select! {
        _ = &mut notified => {}
        _ = tokio::time::sleep_until(deadline) => {
          return Err(NotReady { last: ProbeOutcome::Failed(format!("no output line matched {what}")), probes: 0 });
        }
      }
    }
    Ok(Ready {
      probes: 0,
      latency: began.elapsed(),
    })
  }
}

/// Ready once the backend's own listener accepts a connection: a connect, then the listener's owner checked
/// (`is_own`). Between tries: its next output line (most servers say when they listen) or `every`.
pub async fn wait_for_port<F, Fut>(
  addr: SocketAddr,
  connect_timeout: Duration,
  deadline: Instant,
  every: Duration,
  nudge: &Notify,
  mut is_own: F,
) -> Result<Ready, NotReady>
where
  F: FnMut() -> Fut,
  Fut: std::future::Future<Output = bool>,
{
  let mut probes = 0;
  loop {
    probes += 1;
    let began = Instant::now();
    let last =
      match tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_connection)) if is_own().await => {
          return Ok(Ready {
            probes,
            latency: began.elapsed(),
          })
        }
        Ok(Ok(_)) => ProbeOutcome::Stranger(None),
        Ok(Err(_)) => ProbeOutcome::Refused,
        Err(_) => ProbeOutcome::TimedOut,
      };
    if Instant::now() >= deadline {
      return Err(NotReady { last, probes });
    }
    tokio::select! {
      _ = nudge.notified() => {}
      _ = tokio::time::sleep(every) => {}
      _ = tokio::time::sleep_until(deadline) => {}
    }
  }
}

/// `listen: 'fd'` + `'port'`: a connect to the socket this process holds completes at once whether the
/// backend accepts or not (the kernel queues it in the backlog), so what is waited for is the accept. One
/// probe is queued, and the backend is ready when the socket's queue is empty again: a process that holds
/// it took the probe (any of them, as with `'http'` over a held socket). An empty queue has no event of
/// its own: it is looked at after each output line of the backend and every `every`. A queue never seen
/// holding the probe is looked at once more after `GRACE` (the kernel may still be queueing it when the
/// connect returns) before the probe counts as accepted. Nothing is written to the probe.
pub async fn wait_for_accept(
  listener: &std::net::TcpListener,
  addr: SocketAddr,
  deadline: Instant,
  every: Duration,
  nudge: &Notify,
) -> Result<Ready, NotReady> {
  const GRACE: Duration = Duration::from_millis(5);
  let began = Instant::now();
  let not_ready = |last| NotReady { last, probes: 1 };
  let _probe = match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(addr)).await {
    Ok(Ok(probe)) => probe,
    Ok(Err(e)) => return Err(not_ready(ProbeOutcome::Failed(e.to_string()))),
    Err(_) => return Err(not_ready(ProbeOutcome::TimedOut)),
  };
  let mut seen_queued = false;
  let mut looked_again = false;
  loop {
    match (
      crate::net::listeners::has_queued_connection(listener),
      seen_queued,
    ) {
      (true, _) => seen_queued = true,
      (false, true) => break,
      (false, false) if looked_again => break,
      (false, false) => {
        looked_again = true;
        tokio::time::sleep(GRACE).await;
        continue;
      }
    }
    if Instant::now() >= deadline {
      return Err(not_ready(ProbeOutcome::Failed(format!(
        "the backend did not accept from the socket it was handed (one connection waited {} ms in its backlog)",
        began.elapsed().as_millis()
      ))));
    }
    tokio::select! {
      _ = nudge.notified() => {}
      _ = tokio::time::sleep(every) => {}
      _ = tokio::time::sleep_until(deadline) => {}
    }
  }
  Ok(Ready {
    probes: 1,
    latency: began.elapsed(),
  })
}

/// What a backend says on its notify socket (Unix: `ready: 'notify'`).
#[cfg(unix)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
  Ready,
  Status(String),
  Stopping,
}

/// `KEY=VALUE` lines of one datagram, as systemd's `sd_notify` sends them; unknown keys are ignored.
#[cfg(unix)]
pub fn notices(datagram: &[u8]) -> Vec<Notice> {
  String::from_utf8_lossy(datagram)
    .lines()
    .filter_map(|line| match line.split_once('=') {
      Some(("READY", "1")) => Some(Notice::Ready),
      Some(("STOPPING", "1")) => Some(Notice::Stopping),
      Some(("STATUS", text)) => Some(Notice::Status(text.to_string())),
      _ => None,
    })
    .collect()
}

#[cfg(unix)]
pub use notify_socket::NotifySocket;

#[cfg(unix)]
mod notify_socket {
  use super::{notices, Notice};
  use std::path::{Path, PathBuf};

  /// A datagram socket (0600) in a folder of its own (0700) that only this user can reach; removed with
  /// this value.
  pub struct NotifySocket {
    dir: PathBuf,
    path: PathBuf,
    socket: tokio::net::UnixDatagram,
  }

  impl NotifySocket {
    /// In the temporary folder: a socket's path must stay under ~100 bytes, which a state folder may not.
    pub fn open() -> std::io::Result<NotifySocket> {
      use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
      let mut random = [0u8; 8];
      getrandom::fill(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
      let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
      let dir = std::env::temp_dir().join(format!("bpm-notify-{name}"));
      std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
      let path = dir.join("notify");
      let socket = tokio::net::UnixDatagram::bind(&path).inspect_err(|_| {
        let _ = std::fs::remove_dir(&dir);
      })?;
      std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
      Ok(NotifySocket { dir, path, socket })
    }

    pub fn path(&self) -> &Path {
      &self.path
    }

    /// The next notices the backend sends (`None` when the socket fails).
    pub async fn next(&self) -> Option<Vec<Notice>> {
      let mut buffer = vec![0u8; 4096];
      let n = self.socket.recv(&mut buffer).await.ok()?;
      Some(notices(&buffer[..n]))
    }
  }

  impl Drop for NotifySocket {
    fn drop(&mut self) {
      let _ = std::fs::remove_file(&self.path);
      let _ = std::fs::remove_dir(&self.dir);
    }
  }
}

#[cfg(all(test, unix))]
mod tests {
  use super::*;

  #[test]
  fn notify_datagrams_are_read_as_systemd_writes_them() {
    assert_eq!(
      notices(b"STATUS=loading models\nREADY=1\nMAINPID=42\n"),
      vec![Notice::Status("loading models".into()), Notice::Ready]
    );
    assert_eq!(notices(b"STOPPING=1"), vec![Notice::Stopping]);
    assert!(notices(b"READY=0\nWATCHDOG=1").is_empty());
  }

  /// With a held socket, a connect completes while nobody accepts: ready comes with the accept, not before,
  /// and a socket nobody accepts from is not ready at the deadline.
  #[tokio::test]
  async fn a_held_socket_is_ready_when_its_queued_probe_is_accepted() {
    let listener = std::sync::Arc::new(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let addr = listener.local_addr().unwrap();
    let nudge = Notify::new();
    let every = Duration::from_millis(5);

    let unaccepted = wait_for_accept(
      &listener,
      addr,
      Instant::now() + Duration::from_millis(300),
      every,
      &nudge,
    )
    .await;
    let last = unaccepted.expect_err("nobody accepted").last;
    assert!(
      matches!(&last, ProbeOutcome::Failed(why) if why.contains("did not accept")),
      "{last:?}"
    );
    // That probe is still queued: taken here, as a backend would have.
    listener.accept().unwrap();

    let accepted_at = std::sync::Arc::new(std::sync::Mutex::new(None));
    let accepter = {
      let (listener, accepted_at) = (listener.clone(), accepted_at.clone());
      std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let connection = listener.accept().unwrap();
        *accepted_at.lock().unwrap() = Some(std::time::Instant::now());
        connection
      })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    wait_for_accept(&listener, addr, deadline, every, &nudge)
      .await
      .expect("accepted");
    let ready_at = std::time::Instant::now();
    let (mut connection, _) = accepter.join().unwrap();
    let accepted_at = accepted_at
      .lock()
      .unwrap()
      .expect("the accepter took the probe");
    assert!(ready_at >= accepted_at, "ready before the accept");
    // Nothing was written to the probe: it reads as closed once ready dropped it.
    let mut read = Vec::new();
    std::io::Read::read_to_end(&mut connection, &mut read).unwrap();
    assert!(read.is_empty(), "{read:?}");
  }
}
