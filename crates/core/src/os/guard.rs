//! The death guard (docs/api.md, "Death guard"; docs/design.md decision 28): for systems without a
//! parent-death signal (macOS), or when asked for (`deathGuard: 'guard'`), one small process per app process
//! outlives the app and ends its backends when it dies, however it dies (even SIGKILL).
//!
//! The guard is `/bin/sh` running a short script: it reads `+PGID GRACE_MS` and `-PGID` lines from a pipe
//! whose write end only the app holds. End of file means the app is gone: every group it was told about and
//! not told to forget gets the polite signal, up to the largest grace to end, then the force kill. It knows
//! only what the app wrote; the app writes a group when its leader is spawned and forgets it before the
//! leader is reaped (after which the group id could be reused), so it never signals a stranger's group.
//! About 1 MiB of memory, no CPU while the app lives (it blocks in `read`).

#[cfg(unix)]
mod imp {
  use std::io::Write;
  use std::process::{Child, ChildStdin, Command, Stdio};
  use std::sync::Mutex;
  use std::time::Duration;
  use tokio::sync::OnceCell;

  /// The script: POSIX sh (dash, bash, macOS's sh), with `kill` and `sleep` as every Unix has them.
  const SCRIPT: &str = r#"
trap '' HUP INT TERM QUIT PIPE
cd /
groups=""
grace=0
while IFS=' ' read -r op ms; do
  case "$op" in
    +*) groups="$groups ${op#+}"; [ "$ms" -gt "$grace" ] 2>/dev/null && grace=$ms ;;
    -*) left=""; for g in $groups; do [ "$g" = "${op#-}" ] || left="$left $g"; done; groups=$left ;;
  esac
done
[ -n "$groups" ] || exit 0
for g in $groups; do kill -TERM -"$g" 2>/dev/null; done
ticks=$(( (grace + 99) / 100 ))
while [ "$ticks" -gt 0 ]; do
  alive=""
  for g in $groups; do kill -0 -"$g" 2>/dev/null && alive="$alive $g"; done
  [ -n "$alive" ] || exit 0
  groups=$alive
  sleep 0.1
  ticks=$((ticks - 1))
done
for g in $groups; do kill -KILL -"$g" 2>/dev/null; done
exit 0
"#;

  /// The guard of this app process: the write end of its pipe, and the process (reaped when it exits,
  /// which it only does after the app is gone, or when told nothing).
  pub struct Guard {
    pipe: Mutex<Option<ChildStdin>>,
    /// Never waited for: it exits only once the app is gone (or, in tests, its pipe closed).
    _process: Mutex<Child>,
  }

  impl Guard {
    /// Starts a guard process. Its own process group, so a signal to the app's group (Ctrl-C in a terminal)
    /// does not reach it; it ignores hang-ups too.
    ///
    /// No `pre_exec` step (it had one for `setsid`): with one, the standard library forks and then waits
    /// for the child's `exec` to close a channel that any process forked meanwhile also holds, and a
    /// backend forked then waits at its gate for a record write that the blocked start never made
    /// (seen: two backends started at once, both starts hung). Without one it uses `posix_spawn`, which
    /// returns once the child has exec'd, whatever else was forked. The script leaves the app's folder
    /// itself (`cd /`): asked for here, a folder makes the standard library fork where the C library has
    /// no `posix_spawn_file_actions_addchdir_np` (glibc before 2.29). Starts also start the guard before
    /// they fork their backend, so neither way can a start wait on a backend held for it.
    pub fn start() -> std::io::Result<Guard> {
      use std::os::unix::process::CommandExt;
      let mut command = Command::new("/bin/sh");
      command
        .arg("-c")
        .arg(SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
      let mut process = command.spawn()?;
      let pipe = process.stdin.take();
      Ok(Guard {
        pipe: Mutex::new(pipe),
        _process: Mutex::new(process),
      })
    }

    fn say(&self, line: &str) -> bool {
      let mut pipe = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
      match pipe.as_mut() {
        // A line of a few bytes is written whole: below PIPE_BUF, a pipe write is atomic.
        Some(p) => p.write_all(line.as_bytes()).is_ok(),
        None => false,
      }
    }

    /// The group `pgid` (led by a backend just spawned) is ended with the app; `grace` after the polite
    /// signal before the force kill.
    pub fn watch(&self, pgid: u32, grace: Duration) -> bool {
      self.say(&format!("+{pgid} {}\n", grace.as_millis()))
    }

    /// The group ended (its leader is about to be reaped): never signal it again.
    pub fn forget(&self, pgid: u32) -> bool {
      self.say(&format!("-{pgid} 0\n"))
    }

    /// Closes the pipe as if the app had died: for tests.
    #[cfg(test)]
    pub fn close(&self) {
      self.pipe.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    #[cfg(test)]
    pub fn pid(&self) -> u32 {
      self._process.lock().unwrap_or_else(|e| e.into_inner()).id()
    }
  }

  static GUARD: OnceCell<Option<Guard>> = OnceCell::const_new();

  /// Starts the app's one guard if it is not started yet (on a thread of its own: a spawn waits for the
  /// `exec`), while other starts that need it meanwhile wait without holding an async worker. Where it
  /// cannot be started (no /bin/sh) `started()` stays `None`.
  pub async fn start_shared() {
    GUARD
      .get_or_init(|| async {
        crate::blocking::run(|| Guard::start().ok())
          .await
          .ok()
          .flatten()
      })
      .await;
  }

  /// The guard, if one was started (a group is told or forgotten only where it could have been).
  pub fn started() -> Option<&'static Guard> {
    GUARD.get().and_then(Option::as_ref)
  }
}

#[cfg(all(test, unix))]
use imp::Guard;
#[cfg(unix)]
pub use imp::{start_shared, started};

#[cfg(all(test, unix))]
mod tests {
  use super::*;
  use std::os::fd::AsRawFd;
  use std::os::unix::process::CommandExt;
  use std::time::{Duration, Instant};

  fn group_leader(ignore_term: bool) -> std::process::Child {
    let script = if ignore_term {
      "trap '' TERM; sleep 30 & wait"
    } else {
      "sleep 30 & wait"
    };
    std::process::Command::new("/bin/sh")
      .args(["-c", script])
      .process_group(0)
      .spawn()
      .unwrap()
  }

  /// A live member (the leaders are this test's unreaped children: their zombies do not count).
  fn group_alive(pgid: u32) -> bool {
    !crate::os::tree::group_members(pgid).is_empty()
  }

  fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
      if done() {
        return true;
      }
      std::thread::sleep(Duration::from_millis(10));
    }
    done()
  }

  /// A guard starts while other threads fork (the spawner threads forking backends held at their gates):
  /// its start must not wait for a process forked meanwhile, which holds every descriptor open at its fork,
  /// to exec. Here the forked processes wait on a pipe until all the starts returned (or gave up).
  #[test]
  fn a_guard_starts_while_processes_forked_meanwhile_are_held() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    // Close-on-exec (as the standard library makes pipes): the guards started here must not hold it.
    let (release_read, release_write) = std::io::pipe().unwrap();
    let release_write_fd = release_write.as_raw_fd();
    let forking = Arc::new(AtomicBool::new(true));
    let (began_tx, began_rx) = std::sync::mpsc::channel();
    let forker = {
      let forking = forking.clone();
      std::thread::spawn(move || {
        let mut held = Vec::new();
        while forking.load(Ordering::SeqCst) && held.len() < 500 {
          // SAFETY: fork in a threaded process; the child below makes only async-signal-safe calls.
          match unsafe { libc::fork() } {
            // SAFETY: in the child: close, read and _exit, async-signal-safe, on descriptors open in it.
            0 => unsafe {
              // Its copy of the write end closed, the read ends when the test closes its own.
              libc::close(release_write_fd);
              let mut byte = 0u8;
              libc::read(release_read.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
              libc::_exit(0);
            },
            pid if pid > 0 => held.push(pid),
            _ => break,
          }
          if held.len() == 5 {
            let _ = began_tx.send(());
          }
        }
        held
      })
    };
    let began = began_rx.recv_timeout(Duration::from_secs(10));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
      for _ in 0..20 {
        let guard = Guard::start().unwrap();
        guard.close();
      }
      let _ = done_tx.send(());
    });
    let started = done_rx.recv_timeout(Duration::from_secs(10));
    forking.store(false, Ordering::SeqCst);
    drop(release_write);
    let held = forker.join().unwrap();
    for pid in &held {
      // SAFETY: each is a child of this process, reaped once.
      unsafe { libc::waitpid(*pid, std::ptr::null_mut(), 0) };
    }
    assert!(began.is_ok(), "no process was forked");
    assert!(
      started.is_ok(),
      "the guard's start waited for processes forked meanwhile ({} held)",
      held.len()
    );
  }

  /// End of file (the app died) ends the groups it was told about — politely, then by force after the
  /// grace for one that ignores SIGTERM — and never a group it was told to forget.
  #[test]
  fn at_end_of_file_the_guard_ends_told_groups_only() {
    let guard = Guard::start().unwrap();
    let mut polite = group_leader(false);
    let mut stubborn = group_leader(true);
    let mut forgotten = group_leader(false);
    let (a, b, c) = (polite.id(), stubborn.id(), forgotten.id());
    // Let the shells set their traps before anything is signalled.
    std::thread::sleep(Duration::from_millis(200));
    assert!(guard.watch(a, Duration::from_millis(300)));
    assert!(guard.watch(b, Duration::from_millis(300)));
    assert!(guard.watch(c, Duration::from_millis(300)));
    assert!(guard.forget(c));
    let closed = Instant::now();
    guard.close();
    assert!(wait_until(Duration::from_secs(5), || !group_alive(a)
      && !group_alive(b)));
    let took = closed.elapsed();
    assert!(
      took >= Duration::from_millis(250),
      "the stubborn group got its grace: {took:?}"
    );
    assert!(group_alive(c), "a forgotten group is never signalled");
    let _ = rustix::process::kill_process_group(
      rustix::process::Pid::from_raw(c as i32).unwrap(),
      rustix::process::Signal::KILL,
    );
    for child in [&mut polite, &mut stubborn, &mut forgotten] {
      let _ = child.wait();
    }
    // The guard exits once done.
    assert!(wait_until(Duration::from_secs(2), || {
      crate::os::process::stat(guard.pid()).is_none()
    }));
  }
}
