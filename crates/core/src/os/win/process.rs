//! One process through one handle: while the handle is open the pid cannot be given to another process,
//! so the identity read through it (creation time, image path) and the termination sent through it reach
//! the same process (docs/design.md §4). Also the system's process list (parents, names).

use super::{check, filetime, Handle};
use std::io;
use std::time::Duration;
use windows_sys::Win32::Foundation::{FILETIME, WAIT_OBJECT_0, WAIT_TIMEOUT};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
  CreateToolhelp32Snapshot, Process32FirstW, Process32NextW, PROCESSENTRY32W, TH32CS_SNAPPROCESS,
};
use windows_sys::Win32::System::ProcessStatus::{K32GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS};
use windows_sys::Win32::System::Threading::{
  GetCurrentProcess, GetPriorityClass, GetProcessTimes, OpenProcess, OpenProcessToken,
  QueryFullProcessImageNameW, TerminateProcess, WaitForSingleObject, ABOVE_NORMAL_PRIORITY_CLASS,
  BELOW_NORMAL_PRIORITY_CLASS, HIGH_PRIORITY_CLASS, IDLE_PRIORITY_CLASS, NORMAL_PRIORITY_CLASS,
  PROCESS_NAME_WIN32, PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_SYNCHRONIZE, PROCESS_TERMINATE,
  PROCESS_VM_READ, REALTIME_PRIORITY_CLASS,
};

/// An open process.
#[derive(Debug)]
pub struct Pinned {
  pub pid: u32,
  handle: Handle,
}

/// Times of a process, in 100 ns units.
#[derive(Debug, Clone, Copy)]
pub struct Times {
  /// Since 1601-01-01 (a FILETIME): exact, so compared for equality.
  pub created: u64,
  /// User plus kernel time.
  pub cpu: u64,
}

impl Pinned {
  /// Opens `pid` to read and wait on it; `terminate` adds the right to end it. Fails for a gone pid
  /// (error 87) and for processes we may not open.
  pub fn open(pid: u32, terminate: bool) -> io::Result<Pinned> {
    if pid == 0 {
      return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut access = PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_SYNCHRONIZE;
    if terminate {
      access |= PROCESS_TERMINATE;
    }
    // SAFETY: plain call; the handle is checked and owned.
    let handle = Handle::or_last_error(unsafe { OpenProcess(access, 0, pid) })?;
    Ok(Pinned { pid, handle })
  }

  /// Opens `pid` only while it runs.
  pub fn running(pid: u32, terminate: bool) -> Option<Pinned> {
    Pinned::open(pid, terminate)
      .ok()
      .filter(|p| !p.has_exited())
  }

  /// An exited process can still be opened while anyone holds a handle to it (its waiter does).
  pub fn has_exited(&self) -> bool {
    self.wait(Duration::ZERO).unwrap_or(true)
  }

  pub fn times(&self) -> io::Result<Times> {
    let zero = FILETIME {
      dwLowDateTime: 0,
      dwHighDateTime: 0,
    };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    // SAFETY: four writable FILETIMEs and a handle with query rights.
    check(unsafe {
      GetProcessTimes(
        self.handle.raw(),
        &mut created,
        &mut exited,
        &mut kernel,
        &mut user,
      )
    })?;
    Ok(Times {
      created: filetime(created),
      cpu: filetime(kernel) + filetime(user),
    })
  }

  /// The executable's full path.
  pub fn image(&self) -> io::Result<String> {
    let mut buf = vec![0u16; 32 * 1024];
    let mut len = buf.len() as u32;
    // SAFETY: the buffer holds `len` UTF-16 units; the call writes at most that many and updates `len`.
    check(unsafe {
      QueryFullProcessImageNameW(
        self.handle.raw(),
        PROCESS_NAME_WIN32,
        buf.as_mut_ptr(),
        &mut len,
      )
    })?;
    Ok(String::from_utf16_lossy(&buf[..len as usize]))
  }

  /// Waits up to `timeout`; true once the process has exited.
  pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
    let ms = timeout.as_millis().min(u128::from(u32::MAX - 1)) as u32;
    // SAFETY: a handle with SYNCHRONIZE.
    match unsafe { WaitForSingleObject(self.handle.raw(), ms) } {
      WAIT_OBJECT_0 => Ok(true),
      WAIT_TIMEOUT => Ok(false),
      _ => Err(io::Error::last_os_error()),
    }
  }

  pub fn terminate(&self, code: u32) -> bool {
    // SAFETY: a handle opened with PROCESS_TERMINATE (or the call fails).
    unsafe { TerminateProcess(self.handle.raw(), code) != 0 }
  }

  /// Working set (resident memory) in bytes.
  pub fn memory(&self) -> Option<u64> {
    memory_of(&self.handle)
  }

  /// The nice value that matches the priority class (the inverse of the mapping used at spawn).
  pub fn nice(&self) -> Option<i32> {
    // SAFETY: a handle with query rights.
    let class = unsafe { GetPriorityClass(self.handle.raw()) };
    Some(match class {
      IDLE_PRIORITY_CLASS => 10,
      BELOW_NORMAL_PRIORITY_CLASS => 5,
      NORMAL_PRIORITY_CLASS => 0,
      ABOVE_NORMAL_PRIORITY_CLASS => -5,
      HIGH_PRIORITY_CLASS => -10,
      REALTIME_PRIORITY_CLASS => -20,
      _ => return None,
    })
  }

  /// The process runs as this process's user. Its token cannot be opened for another user's process
  /// (unless we are an administrator, where the comparison answers).
  pub fn is_own_user(&self) -> bool {
    let theirs = token_user(self.handle.raw());
    // SAFETY: the pseudo handle of the current process needs no closing.
    let mine = token_user(unsafe { GetCurrentProcess() });
    matches!((theirs, mine), (Ok(a), Ok(b)) if a == b)
  }
}

fn memory_of(handle: &Handle) -> Option<u64> {
  // SAFETY: PROCESS_MEMORY_COUNTERS is plain data with its size in `cb`.
  unsafe {
    let mut counters: PROCESS_MEMORY_COUNTERS = std::mem::zeroed();
    counters.cb = std::mem::size_of_val(&counters) as u32;
    (K32GetProcessMemoryInfo(handle.raw(), &mut counters, counters.cb) != 0)
      .then_some(counters.WorkingSetSize as u64)
  }
}

/// The user SID of a process's token, as bytes.
pub fn token_user(process: windows_sys::Win32::Foundation::HANDLE) -> io::Result<Vec<u8>> {
  use windows_sys::Win32::Security::{
    GetLengthSid, GetTokenInformation, TokenUser, TOKEN_QUERY, TOKEN_USER,
  };
  // SAFETY: the token handle is checked and owned; the buffer is aligned (u64) and its size passed; the
  // SID read lies inside that buffer (GetTokenInformation put it there).
  unsafe {
    let mut raw = std::ptr::null_mut();
    check(OpenProcessToken(process, TOKEN_QUERY, &mut raw))?;
    let token = Handle::or_last_error(raw)?;
    let mut buf = vec![0u64; 64];
    let mut len = 0u32;
    check(GetTokenInformation(
      token.raw(),
      TokenUser,
      buf.as_mut_ptr().cast(),
      (buf.len() * 8) as u32,
      &mut len,
    ))?;
    let user = &*buf.as_ptr().cast::<TOKEN_USER>();
    let sid = user.User.Sid;
    let n = GetLengthSid(sid) as usize;
    Ok(std::slice::from_raw_parts(sid.cast::<u8>(), n).to_vec())
  }
}

/// What `os::process::stat` needs of a live process, from one handle.
#[derive(Debug, Clone, Copy)]
pub struct Live {
  pub times: Times,
  pub memory: u64,
}

pub fn live(pid: u32) -> Option<Live> {
  let pinned = Pinned::running(pid, false)?;
  let times = pinned.times().ok()?;
  // GetProcessMemoryInfo is documented to want PROCESS_VM_READ too (Windows 8.1+ accepts the limited
  // right alone); ask with it where we may, else without.
  // SAFETY: plain call; the handle is checked and owned.
  let memory = Handle::new(unsafe {
    OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_VM_READ, 0, pid)
  })
  .and_then(|h| memory_of(&h))
  .or_else(|| pinned.memory())
  .unwrap_or(0);
  Some(Live { times, memory })
}

/// One row of the system's process list.
#[derive(Debug, Clone)]
pub struct Entry {
  pub pid: u32,
  /// The pid of the process that created it. Windows does not re-parent: this pid may since have been
  /// given to another process, so a parent link holds only if the parent is older than the child.
  pub parent: u32,
  /// The executable's file name.
  pub name: String,
}

/// Every process of the machine, from one snapshot.
pub fn snapshot() -> Vec<Entry> {
  let mut found = Vec::new();
  // SAFETY: the snapshot handle is checked and owned; PROCESSENTRY32W is plain data with its size set as
  // Process32FirstW requires; szExeFile is NUL-terminated within its array.
  unsafe {
    let Some(snap) = Handle::new(CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0)) else {
      return found;
    };
    let mut entry: PROCESSENTRY32W = std::mem::zeroed();
    entry.dwSize = std::mem::size_of::<PROCESSENTRY32W>() as u32;
    let mut more = Process32FirstW(snap.raw(), &mut entry) != 0;
    while more {
      let len = entry
        .szExeFile
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(entry.szExeFile.len());
      found.push(Entry {
        pid: entry.th32ProcessID,
        parent: entry.th32ParentProcessID,
        name: String::from_utf16_lossy(&entry.szExeFile[..len]),
      });
      more = Process32NextW(snap.raw(), &mut entry) != 0;
    }
  }
  found
}

/// The creation time of a running process.
pub fn created(pid: u32) -> Option<u64> {
  Pinned::running(pid, false)?.times().ok().map(|t| t.created)
}

/// The live children of `pid`: processes that name it as parent and were created after it (an older one
/// names an earlier owner of the pid).
pub fn children(pid: u32) -> Vec<u32> {
  let Some(born) = created(pid) else {
    return Vec::new();
  };
  snapshot()
    .into_iter()
    .filter(|e| e.parent == pid && e.pid != pid)
    .filter(|e| created(e.pid).is_some_and(|c| c >= born))
    .map(|e| e.pid)
    .collect()
}

/// Now, as a FILETIME (the clock of `Times::created`).
pub fn now() -> u64 {
  let mut ft = FILETIME {
    dwLowDateTime: 0,
    dwHighDateTime: 0,
  };
  // SAFETY: writes the one FILETIME passed.
  unsafe { windows_sys::Win32::System::SystemInformation::GetSystemTimeAsFileTime(&mut ft) };
  filetime(ft)
}
