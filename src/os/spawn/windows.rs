//! The Windows half of spawning: the backend's tree lives in a job object that is killed when the app's
//! last handle to it closes (the app died) or when it is terminated.

use super::{ExitInfo, SpawnSpec};
use std::os::windows::io::AsRawHandle;
use std::process::Command;
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
use windows_sys::Win32::System::JobObjects::{
  AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation,
  SetInformationJobObject, TerminateJobObject, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
  JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
};

pub fn configure(cmd: &mut Command, spec: &SpawnSpec) {
  use std::os::windows::process::CommandExt;
  use windows_sys::Win32::System::Threading::{
    ABOVE_NORMAL_PRIORITY_CLASS, BELOW_NORMAL_PRIORITY_CLASS, CREATE_NEW_PROCESS_GROUP,
    CREATE_NO_WINDOW, HIGH_PRIORITY_CLASS, IDLE_PRIORITY_CLASS, NORMAL_PRIORITY_CLASS,
  };
  // The priority classes that match the nice values of `Priority`.
  let class = match spec.nice {
    n if n >= 10 => IDLE_PRIORITY_CLASS,
    n if n > 0 => BELOW_NORMAL_PRIORITY_CLASS,
    0 => NORMAL_PRIORITY_CLASS,
    n if n > -10 => ABOVE_NORMAL_PRIORITY_CLASS,
    _ => HIGH_PRIORITY_CLASS,
  };
  cmd.creation_flags(CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW | class);
}

/// The open process handle pins the pid until `process` is dropped, so a plain wait is safe here.
pub fn wait_exit(process: &mut std::process::Child) -> ExitInfo {
  match process.wait() {
    Ok(status) => super::exit_info_from(status),
    Err(_) => ExitInfo::default(),
  }
}

pub struct Job(HANDLE);
// SAFETY: a job handle may be used from any thread.
unsafe impl Send for Job {}
// SAFETY: as above; the job API is thread-safe.
unsafe impl Sync for Job {}

impl Job {
  pub fn adopt(process: &std::process::Child) -> Option<Job> {
    // SAFETY: Win32 calls on handles we own; the info struct is zero-initialised plain data.
    unsafe {
      let job = CreateJobObjectW(std::ptr::null(), std::ptr::null());
      if job.is_null() {
        return None;
      }
      let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = std::mem::zeroed();
      info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
      let size = std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32;
      let set = SetInformationJobObject(
        job,
        JobObjectExtendedLimitInformation,
        &info as *const _ as *const _,
        size,
      );
      if set == 0 || AssignProcessToJobObject(job, process.as_raw_handle() as HANDLE) == 0 {
        CloseHandle(job);
        return None;
      }
      Some(Job(job))
    }
  }

  pub fn terminate(&self) -> bool {
    // SAFETY: a valid job handle we own.
    unsafe { TerminateJobObject(self.0, 1) != 0 }
  }
}

impl Drop for Job {
  fn drop(&mut self) {
    // SAFETY: closing our own handle; with KILL_ON_JOB_CLOSE this ends what is left of the tree.
    unsafe {
      CloseHandle(self.0);
    }
  }
}
