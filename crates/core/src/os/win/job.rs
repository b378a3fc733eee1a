//! The job object that holds a backend's whole tree (docs/design.md §3): created before the backend runs
//! a single instruction (it starts suspended), killed when the app's last handle to it closes (the app
//! died) or when it is terminated (the force stop). A registry by leader pid lets the tree, group and
//! signal functions find the job of one of our backends from its pid alone.

use super::{check, Handle};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
  CreateToolhelp32Snapshot, Thread32First, Thread32Next, TH32CS_SNAPTHREAD, THREADENTRY32,
};
use windows_sys::Win32::System::JobObjects::{
  AssignProcessToJobObject, CreateJobObjectW, JobObjectBasicProcessIdList,
  JobObjectExtendedLimitInformation, QueryInformationJobObject, SetInformationJobObject,
  TerminateJobObject, JOBOBJECT_BASIC_PROCESS_ID_LIST, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
  JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
};
use windows_sys::Win32::System::Threading::{OpenThread, ResumeThread, THREAD_SUSPEND_RESUME};

/// The exit code every process of a terminated job gets. 128 + 9, what a shell reports for SIGKILL: a
/// forced stop, never mistaken for the backend's own exit code 0 or 1.
pub const FORCED_EXIT_CODE: u32 = 137;

struct Inner {
  handle: Handle,
  /// Set before the job is terminated, so the waiter can report the exit as forced.
  terminated: Arc<AtomicBool>,
}

/// A kill-on-close job. Dropping the last `Job` of a backend closes the handle, which ends whatever is
/// left of its tree.
#[derive(Clone)]
pub struct Job(Arc<Inner>);

static REGISTRY: Mutex<Option<HashMap<u32, Weak<Inner>>>> = Mutex::new(None);

fn registry<T>(f: impl FnOnce(&mut HashMap<u32, Weak<Inner>>) -> T) -> T {
  let mut guard = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
  f(guard.get_or_insert_with(HashMap::new))
}

impl Job {
  /// A new, unnamed job whose handle is not inherited (a child cannot keep it alive), and whose last
  /// handle closing kills every process in it.
  pub fn kill_on_close(terminated: Arc<AtomicBool>) -> io::Result<Job> {
    // SAFETY: both pointer arguments may be null (default security, no name).
    let handle =
      Handle::or_last_error(unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) })?;
    // SAFETY: a zeroed JOBOBJECT_EXTENDED_LIMIT_INFORMATION is valid plain data; the size passed is its own.
    unsafe {
      let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = std::mem::zeroed();
      info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
      check(SetInformationJobObject(
        handle.raw(),
        JobObjectExtendedLimitInformation,
        (&raw const info).cast(),
        std::mem::size_of_val(&info) as u32,
      ))?;
    }
    Ok(Job(Arc::new(Inner { handle, terminated })))
  }

  /// Puts a (suspended) process in the job, and files the job under the process's pid.
  pub fn assign(&self, process: HANDLE, pid: u32) -> io::Result<()> {
    // SAFETY: both handles are valid for the call (the process handle is the caller's).
    check(unsafe { AssignProcessToJobObject(self.0.handle.raw(), process) })?;
    registry(|r| {
      r.retain(|_, job| job.strong_count() > 0);
      r.insert(pid, Arc::downgrade(&self.0));
    });
    Ok(())
  }

  /// Forgets the job filed under `pid`: its process has been released, and the pid may be given to
  /// another process.
  pub fn forget(pid: u32) {
    registry(|r| r.remove(&pid));
  }

  /// The job of our backend whose leader is `pid`, while that backend is ours.
  pub fn of(pid: u32) -> Option<Job> {
    registry(|r| r.get(&pid).and_then(Weak::upgrade)).map(Job)
  }

  /// Ends every process in the job (and in jobs nested in it) with `FORCED_EXIT_CODE`.
  pub fn terminate(&self) -> bool {
    self.0.terminated.store(true, Ordering::SeqCst);
    // SAFETY: a valid job handle we own.
    unsafe { TerminateJobObject(self.0.handle.raw(), FORCED_EXIT_CODE) != 0 }
  }

  /// The pids in the job now: the whole tree, however deep, whoever its parents were.
  pub fn pids(&self) -> io::Result<Vec<u32>> {
    let mut capacity = 64usize;
    loop {
      // The header (two u32) then `capacity` usize slots; u64 storage keeps it aligned.
      let words = 1 + capacity;
      let mut buf = vec![0u64; words];
      // SAFETY: the buffer is writable for the size passed and aligned for the structure.
      let ok = unsafe {
        QueryInformationJobObject(
          self.0.handle.raw(),
          JobObjectBasicProcessIdList,
          buf.as_mut_ptr().cast(),
          (words * 8) as u32,
          std::ptr::null_mut(),
        )
      };
      // SAFETY: the buffer starts with the structure's header, written (or zeroed) above.
      let list = unsafe { &*buf.as_ptr().cast::<JOBOBJECT_BASIC_PROCESS_ID_LIST>() };
      let assigned = list.NumberOfAssignedProcesses as usize;
      if ok == 0 {
        let err = io::Error::last_os_error();
        const ERROR_MORE_DATA: i32 = 234;
        if err.raw_os_error() == Some(ERROR_MORE_DATA) && capacity < 65536 {
          capacity = assigned.max(capacity * 2);
          continue;
        }
        return Err(err);
      }
      if assigned > list.NumberOfProcessIdsInList as usize && capacity < 65536 {
        capacity = assigned + 16;
        continue;
      }
      let n = (list.NumberOfProcessIdsInList as usize).min(capacity);
      // SAFETY: the system wrote `n` ids into the slots that follow the header, within the buffer.
      let ids = unsafe { std::slice::from_raw_parts(list.ProcessIdList.as_ptr(), n) };
      return Ok(ids.iter().map(|&p| p as u32).collect());
    }
  }
}

impl Drop for Inner {
  fn drop(&mut self) {
    // The handle closes right after (kill on close); the registry entry is dead from now on.
    registry(|r| r.retain(|_, job| job.strong_count() > 0));
  }
}

/// Resumes every thread of a process created suspended (std keeps no thread handle): a walk of the
/// system's thread list, the documented route (`NtResumeProcess` is not). Returns how many were resumed.
pub fn resume_threads(pid: u32) -> io::Result<usize> {
  // SAFETY: the snapshot handle is checked and owned; THREADENTRY32 is plain data with its size set as
  // Thread32First requires; OpenThread's handle is checked and owned.
  unsafe {
    let snapshot = Handle::or_last_error(CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0))?;
    let mut entry: THREADENTRY32 = std::mem::zeroed();
    entry.dwSize = std::mem::size_of::<THREADENTRY32>() as u32;
    let mut resumed = 0;
    let mut more = Thread32First(snapshot.raw(), &mut entry) != 0;
    while more {
      if entry.th32OwnerProcessID == pid {
        let thread =
          Handle::or_last_error(OpenThread(THREAD_SUSPEND_RESUME, 0, entry.th32ThreadID))?;
        if ResumeThread(thread.raw()) == u32::MAX {
          return Err(io::Error::last_os_error());
        }
        resumed += 1;
      }
      more = Thread32Next(snapshot.raw(), &mut entry) != 0;
    }
    if resumed == 0 {
      return Err(io::Error::other("no thread of the new process was found"));
    }
    Ok(resumed)
  }
}
