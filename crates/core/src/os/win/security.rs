//! Who may change a folder or file (docs/design.md §13): its owner must be this user, and its DACL may let
//! only an allow-list write — this user, SYSTEM, Administrators, CREATOR OWNER. Anyone else with a write
//! right (Everyone, Users, Authenticated Users, another user) could plant records. An allow-list is sounder
//! than looking for the known wide groups. Also: is a path a reparse point (symbolic link, junction)?

use super::{check, wide};
use std::io;
use std::path::Path;
use windows_sys::Win32::Foundation::{LocalFree, HANDLE};
use windows_sys::Win32::Security::Authorization::{
  GetNamedSecurityInfoW, GetSecurityInfo, SE_FILE_OBJECT,
};
use windows_sys::Win32::Security::{
  AclSizeInformation, CreateWellKnownSid, EqualSid, GetAce, GetAclInformation,
  WinBuiltinAdministratorsSid, WinCreatorOwnerSid, WinLocalSystemSid, ACCESS_ALLOWED_ACE,
  ACE_HEADER, ACL, ACL_SIZE_INFORMATION, DACL_SECURITY_INFORMATION, INHERIT_ONLY_ACE,
  OWNER_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID, WELL_KNOWN_SID_TYPE,
};

/// Rights that let someone add, change, remove or re-permission entries.
const WRITE_RIGHTS: u32 = 0x2 // FILE_WRITE_DATA / FILE_ADD_FILE
  | 0x4 // FILE_APPEND_DATA / FILE_ADD_SUBDIRECTORY
  | 0x10 // FILE_WRITE_EA
  | 0x40 // FILE_DELETE_CHILD
  | 0x100 // FILE_WRITE_ATTRIBUTES
  | 0x1_0000 // DELETE
  | 0x4_0000 // WRITE_DAC
  | 0x8_0000 // WRITE_OWNER
  | 0x1000_0000 // GENERIC_ALL
  | 0x4000_0000; // GENERIC_WRITE

const ACCESS_ALLOWED_ACE_TYPE: u8 = 0;

/// What the security descriptor says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
  /// Only this user and the allow-list can write.
  Private,
  /// Another user (or a group) owns it.
  OtherOwner,
  /// Others can write: how many allow-entries let them (0 for a missing DACL, which lets everyone).
  OthersCanWrite(usize),
}

/// The access of the folder or file at `path` (a link is followed, as opening it would).
pub fn access_of_path(path: &Path) -> io::Result<Access> {
  let name = wide(path.as_os_str());
  read(|owner, dacl, sd| {
    // SAFETY: a NUL-terminated name; the out-pointers are valid; `sd` is freed by `read`.
    unsafe {
      GetNamedSecurityInfoW(
        name.as_ptr(),
        SE_FILE_OBJECT,
        OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION,
        owner,
        std::ptr::null_mut(),
        dacl,
        std::ptr::null_mut(),
        sd,
      )
    }
  })
}

/// The access of an open file (it needs READ_CONTROL, which a read handle has).
pub fn access_of_handle(handle: HANDLE) -> io::Result<Access> {
  read(|owner, dacl, sd| {
    // SAFETY: a valid handle; the out-pointers are valid; `sd` is freed by `read`.
    unsafe {
      GetSecurityInfo(
        handle,
        SE_FILE_OBJECT,
        OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION,
        owner,
        std::ptr::null_mut(),
        dacl,
        std::ptr::null_mut(),
        sd,
      )
    }
  })
}

fn read(
  get: impl FnOnce(*mut PSID, *mut *mut ACL, *mut PSECURITY_DESCRIPTOR) -> u32,
) -> io::Result<Access> {
  let mut owner: PSID = std::ptr::null_mut();
  let mut dacl: *mut ACL = std::ptr::null_mut();
  let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
  let rc = get(&mut owner, &mut dacl, &mut sd);
  if rc != 0 {
    return Err(io::Error::from_raw_os_error(rc as i32));
  }
  let result = judge(owner, dacl);
  // SAFETY: `sd` was allocated by the system for us (owner and dacl point into it; not used after).
  unsafe { LocalFree(sd) };
  result
}

fn judge(owner: PSID, dacl: *mut ACL) -> io::Result<Access> {
  // SAFETY: the current process's pseudo handle.
  let me = super::process::token_user(unsafe {
    windows_sys::Win32::System::Threading::GetCurrentProcess()
  })?;
  let me_sid = me.as_ptr() as PSID;
  // SAFETY: both SIDs are valid (the owner from the descriptor, ours from the token).
  if owner.is_null() || unsafe { EqualSid(owner, me_sid) } == 0 {
    return Ok(Access::OtherOwner);
  }
  if dacl.is_null() {
    return Ok(Access::OthersCanWrite(0));
  }
  let trusted: Vec<Vec<u8>> = [
    WinLocalSystemSid,
    WinBuiltinAdministratorsSid,
    WinCreatorOwnerSid,
  ]
  .into_iter()
  .map(well_known)
  .collect();
  let mut others = 0;
  // SAFETY: `dacl` is a valid ACL from the descriptor; GetAce hands out pointers into it; an allowed ACE
  // starts with ACE_HEADER and has the ACCESS_ALLOWED_ACE layout, its SID starting at SidStart.
  unsafe {
    let mut size: ACL_SIZE_INFORMATION = std::mem::zeroed();
    check(GetAclInformation(
      dacl,
      (&raw mut size).cast(),
      std::mem::size_of_val(&size) as u32,
      AclSizeInformation,
    ))?;
    for i in 0..size.AceCount {
      let mut ace = std::ptr::null_mut();
      if GetAce(dacl, i, &mut ace) == 0 {
        continue;
      }
      let header = &*ace.cast::<ACE_HEADER>();
      // Deny entries only take rights away; only allow entries can let others in.
      if header.AceType != ACCESS_ALLOWED_ACE_TYPE
        || u32::from(header.AceFlags) & INHERIT_ONLY_ACE != 0
      {
        continue;
      }
      let allowed = &*ace.cast::<ACCESS_ALLOWED_ACE>();
      if allowed.Mask & WRITE_RIGHTS == 0 {
        continue;
      }
      let sid = (&raw const allowed.SidStart) as PSID;
      let is_trusted = EqualSid(sid, me_sid) != 0
        || trusted
          .iter()
          .any(|t| EqualSid(sid, t.as_ptr() as PSID) != 0);
      if !is_trusted {
        others += 1;
      }
    }
  }
  Ok(if others == 0 {
    Access::Private
  } else {
    Access::OthersCanWrite(others)
  })
}

fn well_known(kind: WELL_KNOWN_SID_TYPE) -> Vec<u8> {
  let mut buf = vec![0u8; 68]; // SECURITY_MAX_SID_SIZE
  let mut size = buf.len() as u32;
  // SAFETY: the buffer holds `size` bytes; no domain SID is needed for these kinds.
  let ok = unsafe {
    CreateWellKnownSid(
      kind,
      std::ptr::null_mut(),
      buf.as_mut_ptr().cast(),
      &mut size,
    )
  };
  if ok == 0 {
    // An empty (invalid) SID matches nothing, so nothing extra is trusted.
    buf.clear();
    buf.resize(68, 0);
  }
  buf
}

/// FILE_ATTRIBUTE_REPARSE_POINT: a symbolic link, a junction, or another kind of redirection.
pub const REPARSE_POINT: u32 =
  windows_sys::Win32::Storage::FileSystem::FILE_ATTRIBUTE_REPARSE_POINT;
/// Opens the link itself rather than what it points to.
pub const OPEN_REPARSE_POINT: u32 =
  windows_sys::Win32::Storage::FileSystem::FILE_FLAG_OPEN_REPARSE_POINT;

/// Makes `dir` private, as mode 0700 does on Unix: a protected DACL (nothing inherited from the parent)
/// that lets only this user, SYSTEM and Administrators in. For a folder just created.
pub fn make_private(dir: &Path) -> io::Result<()> {
  use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
  };
  use windows_sys::Win32::Security::{SetFileSecurityW, PROTECTED_DACL_SECURITY_INFORMATION};
  // SAFETY: the current process's pseudo handle.
  let me = super::process::token_user(unsafe {
    windows_sys::Win32::System::Threading::GetCurrentProcess()
  })?;
  // SAFETY: `me` is a valid SID; the string the system allocates is read up to its NUL and freed once;
  // the descriptor it allocates from the SDDL text is used for one call and freed.
  unsafe {
    let mut text = std::ptr::null_mut();
    check(ConvertSidToStringSidW(me.as_ptr() as PSID, &mut text))?;
    let len = (0..).take_while(|&i| *text.add(i) != 0).count();
    let sid = String::from_utf16_lossy(std::slice::from_raw_parts(text, len));
    LocalFree(text.cast());
    // Full access, inherited by files and folders inside, for SYSTEM, Administrators and this user.
    let sddl = format!("D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FA;;;{sid})");
    let sddl = wide(std::ffi::OsStr::new(&sddl));
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    check(ConvertStringSecurityDescriptorToSecurityDescriptorW(
      sddl.as_ptr(),
      SDDL_REVISION_1,
      &mut sd,
      std::ptr::null_mut(),
    ))?;
    let name = wide(dir.as_os_str());
    let set = check(SetFileSecurityW(
      name.as_ptr(),
      DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
      sd,
    ));
    LocalFree(sd);
    set
  }
}
