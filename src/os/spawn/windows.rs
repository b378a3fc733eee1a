//! The Windows half of spawning. The backend starts suspended, goes into a kill-on-close job object, and
//! only runs once its PID record is written: nothing it starts can be outside the job, and nothing runs
//! without a record (docs/design.md §3, §19, §25). It leads a console
//! process group of its own, the target of the polite stop (CTRL_BREAK_EVENT).

use super::{ExitInfo, SpawnSpec};
use crate::os::win::console;
pub use crate::os::win::job::Job;
use crate::os::win::job::{resume_threads, FORCED_EXIT_CODE};
use std::os::windows::io::AsRawHandle;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Sets the creation flags. A command line in a terminal has a console: the backend shares it, and its
/// break is sent there. An app without one (Electron) gives the backend a hidden console of its own
/// (CREATE_NO_WINDOW), reached by attaching to it (os/win/console.rs).
pub fn configure(cmd: &mut Command, spec: &SpawnSpec) {
  use std::os::windows::process::CommandExt;
  use windows_sys::Win32::System::Threading::{
    ABOVE_NORMAL_PRIORITY_CLASS, BELOW_NORMAL_PRIORITY_CLASS, CREATE_NEW_PROCESS_GROUP,
    CREATE_NO_WINDOW, CREATE_SUSPENDED, HIGH_PRIORITY_CLASS, IDLE_PRIORITY_CLASS,
    NORMAL_PRIORITY_CLASS,
  };
  // The priority classes that match the nice values of `Priority`.
  let class = match spec.nice {
    n if n >= 10 => IDLE_PRIORITY_CLASS,
    n if n > 0 => BELOW_NORMAL_PRIORITY_CLASS,
    0 => NORMAL_PRIORITY_CLASS,
    n if n > -10 => ABOVE_NORMAL_PRIORITY_CLASS,
    _ => HIGH_PRIORITY_CLASS,
  };
  // Resource limits are Unix-only; the manager warns when they are set on Windows.
  let _ = (spec.open_files, spec.core_dumps);
  // Never DETACHED_PROCESS: a backend without a console cannot receive the break at all.
  let window = if console::has_console() {
    0
  } else {
    CREATE_NO_WINDOW
  };
  cmd.creation_flags(CREATE_SUSPENDED | CREATE_NEW_PROCESS_GROUP | window | class);
}

/// Puts the just-spawned (suspended) backend in a new job; `resume` lets it run. A job that cannot be made
/// or joined is a warning (the backend then runs without one: its tree does not end with the app).
pub fn contain(
  process: &std::process::Child,
  terminated: &Arc<AtomicBool>,
) -> std::io::Result<(Option<Job>, Vec<String>)> {
  let pid = process.id();
  let joined = Job::kill_on_close(terminated.clone()).and_then(|job| {
    job.assign(process.as_raw_handle(), pid)?;
    Ok(job)
  });
  let mut warnings = Vec::new();
  let job = match joined {
    Ok(job) => Some(job),
    Err(e) => {
      warnings.push(format!(
        "backend pid {pid} could not be put in a job object ({e}): processes it starts may outlive a stop or the app"
      ));
      None
    }
  };
  Ok((job, warnings))
}

/// Lets the suspended backend run. An error means it never ran (the caller ends it).
pub fn resume(pid: u32) -> std::io::Result<()> {
  resume_threads(pid).map(|_| ())
}

/// The open process handle pins the pid until `process` is dropped, so a plain wait is safe here. An
/// exit with the job's termination code after we terminated it is reported as the force kill it was.
pub fn wait_exit(process: &mut std::process::Child, terminated: &AtomicBool) -> ExitInfo {
  match process.wait() {
    Ok(status)
      if terminated.load(Ordering::SeqCst) && status.code() == Some(FORCED_EXIT_CODE as i32) =>
    {
      ExitInfo {
        exit_code: None,
        signal: Some("SIGKILL".into()),
      }
    }
    Ok(status) => super::exit_info_from(status),
    Err(_) => ExitInfo::default(),
  }
}
