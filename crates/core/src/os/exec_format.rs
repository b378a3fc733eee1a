//! Unix: whether a program file is one the system will refuse to run, told from its first bytes before
//! anything is forked (docs/api.md, "Spawn errors").
//!
//! The kernel refuses a file it has no loader for with ENOEXEC, but `execvp` (glibc, macOS; the spawn goes
//! through it) then runs that file with `/bin/sh` as a script without a `#!` line: a program built for
//! another CPU, or any binary file, ends as a shell syntax error (`Syntax error: "(" unexpected`, exit code
//! 2 or 127) instead of a spawn error. Bash, given the same ENOEXEC, refuses to read the file as a script
//! when the first line of its first 80 bytes holds a NUL byte ("cannot execute binary file": GNU Bash,
//! general.c `check_binary_file`, used by execute_cmd.c `shell_execve`). The same rule is applied here,
//! before the spawn, with an ELF of this system checked for its CPU:
//! - `#!` script: runs as it does;
//! - ELF (not macOS): its byte order and machine must be this process's own (or one it runs too: 32-bit x86
//!   on x86-64, 32-bit ARM on AArch64), and it must be a program or shared object, not an object file;
//! - macOS: a Mach-O file is left to the system (a wrong architecture there is its ENOEXEC or EBADARCH);
//! - anything else: a NUL byte in its first line (within 80 bytes) is a binary file that is not a program.
//!
//! A file a `binfmt_misc` handler takes (Linux: QEMU for other CPUs, Wine, Java) runs through it: not refused.

use std::io::Read;
use std::path::Path;

/// What the kernel reads of a program to find its loader (Linux's `BINPRM_BUF_SIZE`); `binfmt_misc`
/// matches its magic within these bytes.
const HEAD: usize = 256;
/// Bash's sample of a file it is asked to run as a script.
const FIRST_LINE: usize = 80;

const ELF_MAGIC: &[u8] = b"\x7fELF";
/// The fields read of an ELF header: class and byte order (4, 5), type (16-17), machine (18-19).
const ELF_HEAD: usize = 20;

/// Why a file would be refused as a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
  /// An ELF program for another CPU: its machine, and this process's.
  OtherCpu { file: String, this: String },
  /// A binary file that is not a program of this system (another system's program, data, a damaged
  /// download, an object file).
  NotAProgram,
}

impl Refusal {
  /// What it is and what to do, for the error's message.
  pub fn advice(&self, shown: &str) -> String {
    match self {
      Refusal::OtherCpu { file, this } => format!(
        "{shown} is a program built for another CPU architecture ({file}); this machine is {this}: use the build of the program made for {this}"
      ),
      Refusal::NotAProgram => format!(
        "{shown} is a binary file but not a program this system can run (a program for another operating system, a damaged download, or data): check that `command` names the program built for this system"
      ),
    }
  }
}

/// Whether the program file at `path` (resolved as the spawn will find it) would be refused. `None` when it
/// would run, when it is no regular executable file (the spawn's own error says why), or cannot be read.
pub fn refusal(path: &Path) -> Option<Refusal> {
  use std::os::unix::fs::PermissionsExt;
  let meta = std::fs::metadata(path).ok()?;
  if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
    return None;
  }
  let mut head = Vec::with_capacity(HEAD);
  std::fs::File::open(path)
    .ok()?
    .take(HEAD as u64)
    .read_to_end(&mut head)
    .ok()?;
  let refusal = judge(&head, own_elf_head())?;
  (!handled_by_binfmt_misc(Path::new(BINFMT_MISC), path, &head)).then_some(refusal)
}

/// The verdict on a file's first bytes; `own` is the ELF header of this process's executable, when known.
fn judge(head: &[u8], own: Option<&[u8; ELF_HEAD]>) -> Option<Refusal> {
  if head.starts_with(b"#!") {
    return None;
  }
  if head.starts_with(ELF_MAGIC) && !cfg!(target_os = "macos") {
    return judge_elf(head, own?);
  }
  if cfg!(target_os = "macos") && is_mach_o(head) {
    return None;
  }
  let sample = &head[..head.len().min(FIRST_LINE)];
  let first_line = sample.split(|&b| b == b'\n').next().unwrap_or_default();
  first_line.contains(&0).then_some(Refusal::NotAProgram)
}

fn judge_elf(head: &[u8], own: &[u8; ELF_HEAD]) -> Option<Refusal> {
  if head.len() < ELF_HEAD {
    return Some(Refusal::NotAProgram);
  }
  let (order, own_order) = (head[5], own[5]);
  let machine = read_u16(&head[18..20], order);
  let own_machine = read_u16(&own[18..20], own_order);
  if order != own_order || (machine != own_machine && !runs_on(machine, own_machine)) {
    // The byte order is named only where it is what differs.
    let name = |m: u16, o: u8| match order == own_order {
      true => machine_name(m),
      false => format!("{}, {}", machine_name(m), byte_order_name(o)),
    };
    return Some(Refusal::OtherCpu {
      file: name(machine, order),
      this: name(own_machine, own_order),
    });
  }
  // ET_EXEC, ET_DYN (programs built as position-independent, and shared objects); not ET_REL or ET_CORE.
  let kind = read_u16(&head[16..18], order);
  (!matches!(kind, 2 | 3)).then_some(Refusal::NotAProgram)
}

fn read_u16(bytes: &[u8], order: u8) -> u16 {
  let pair = [bytes[0], bytes[1]];
  match order {
    2 => u16::from_be_bytes(pair),
    _ => u16::from_le_bytes(pair),
  }
}

/// A machine that also runs programs of another: 32-bit x86 (EM_386) on x86-64, 32-bit ARM on AArch64.
fn runs_on(machine: u16, own: u16) -> bool {
  matches!((machine, own), (3, 62) | (40, 183))
}

fn machine_name(machine: u16) -> String {
  match machine {
    3 => "32-bit x86".into(),
    8 => "MIPS".into(),
    20 => "PowerPC".into(),
    21 => "PowerPC 64".into(),
    22 => "IBM Z (s390x)".into(),
    40 => "32-bit ARM".into(),
    62 => "x86-64".into(),
    183 => "ARM64 (AArch64)".into(),
    243 => "RISC-V".into(),
    258 => "LoongArch".into(),
    other => format!("ELF machine {other}"),
  }
}

fn byte_order_name(order: u8) -> &'static str {
  match order {
    2 => "big-endian",
    _ => "little-endian",
  }
}

/// Mach-O, 32 or 64 bits, either byte order, and universal ("fat") files.
fn is_mach_o(head: &[u8]) -> bool {
  const MAGICS: [[u8; 4]; 6] = [
    [0xfe, 0xed, 0xfa, 0xce],
    [0xce, 0xfa, 0xed, 0xfe],
    [0xfe, 0xed, 0xfa, 0xcf],
    [0xcf, 0xfa, 0xed, 0xfe],
    [0xca, 0xfe, 0xba, 0xbe],
    [0xbe, 0xba, 0xfe, 0xca],
  ];
  MAGICS.iter().any(|m| head.starts_with(m))
}

/// The ELF header of this process's executable (read once), to compare a program's CPU with.
fn own_elf_head() -> Option<&'static [u8; ELF_HEAD]> {
  static OWN: std::sync::OnceLock<Option<[u8; ELF_HEAD]>> = std::sync::OnceLock::new();
  OWN
    .get_or_init(|| {
      // /proc/self/exe opens the running executable even when its path was replaced since.
      let exe = match Path::new("/proc/self/exe").exists() {
        true => std::path::PathBuf::from("/proc/self/exe"),
        false => std::env::current_exe().ok()?,
      };
      let mut head = [0u8; ELF_HEAD];
      std::fs::File::open(exe).ok()?.read_exact(&mut head).ok()?;
      head.starts_with(ELF_MAGIC).then_some(head)
    })
    .as_ref()
}

const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

/// Linux: whether an enabled `binfmt_misc` entry of `dir` takes the file (by its magic bytes, or its
/// extension): the kernel then runs it through that entry's interpreter.
fn handled_by_binfmt_misc(dir: &Path, path: &Path, head: &[u8]) -> bool {
  if !cfg!(target_os = "linux") {
    return false;
  }
  let enabled = std::fs::read_to_string(dir.join("status")).is_ok_and(|s| s.trim() == "enabled");
  let Ok(entries) = std::fs::read_dir(dir).map(|d| d.flatten()) else {
    return false;
  };
  enabled
    && entries
      .filter(|e| !matches!(e.file_name().to_str(), Some("status" | "register")))
      .filter_map(|e| std::fs::read_to_string(e.path()).ok())
      .any(|entry| binfmt_entry_matches(&entry, path, head))
}

/// One entry as the kernel shows it: `enabled`, `interpreter …`, `flags: …`, then `offset N`, `magic HEX`
/// and maybe `mask HEX`, or `extension .EXT`.
fn binfmt_entry_matches(entry: &str, path: &Path, head: &[u8]) -> bool {
  let mut lines = entry.lines();
  if lines.next().map(str::trim) != Some("enabled") {
    return false;
  }
  let (mut offset, mut magic, mut mask, mut extension) = (0usize, None, None, None);
  for line in lines {
    match line.split_once(' ') {
      Some(("offset", n)) => offset = n.trim().parse().unwrap_or(0),
      Some(("magic", hex)) => magic = from_hex(hex.trim()),
      Some(("mask", hex)) => mask = from_hex(hex.trim()),
      Some(("extension", ext)) => extension = Some(ext.trim().trim_start_matches('.').to_string()),
      _ => {}
    }
  }
  if let Some(ext) = extension {
    return path.extension().and_then(|e| e.to_str()) == Some(ext.as_str());
  }
  let Some(magic) = magic else {
    return false;
  };
  // The kernel's buffer is zero past the end of a short file.
  let byte = |i: usize| head.get(offset + i).copied().unwrap_or(0);
  magic.iter().enumerate().all(|(i, m)| {
    let k = mask
      .as_ref()
      .map_or(0xff, |mask: &Vec<u8>| mask.get(i).copied().unwrap_or(0xff));
    (byte(i) ^ m) & k == 0
  })
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
  (0..hex.len())
    .step_by(2)
    .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
    .collect()
}

#[cfg(test)]
mod tests {
  use super::*;

  /// An ELF header: little-endian, 64-bit, a position-independent program for `machine`.
  fn elf(machine: u16) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(ELF_MAGIC);
    (h[4], h[5], h[6]) = (2, 1, 1);
    h[16..18].copy_from_slice(&3u16.to_le_bytes());
    h[18..20].copy_from_slice(&machine.to_le_bytes());
    h
  }

  fn own(machine: u16) -> [u8; ELF_HEAD] {
    elf(machine)[..ELF_HEAD].try_into().unwrap()
  }

  #[test]
  fn scripts_and_text_run_and_binary_files_are_refused_by_bash_s_rule() {
    let x86 = own(62);
    assert_eq!(judge(b"#!/bin/sh\n\0\0", Some(&x86)), None);
    assert_eq!(judge(b"exec node server.js\n", Some(&x86)), None);
    // A NUL past the first line, or past 80 bytes: still read as a script, as bash does.
    assert_eq!(judge(b"echo hi\n\0", Some(&x86)), None);
    let mut long = vec![b'a'; 90];
    long[85] = 0;
    assert_eq!(judge(&long, Some(&x86)), None);
    assert_eq!(
      judge(b"\xde\xad(\0)\xbe\xef", Some(&x86)),
      Some(Refusal::NotAProgram)
    );
    assert_eq!(judge(b"", Some(&x86)), None);
  }

  #[test]
  #[cfg(not(target_os = "macos"))]
  fn an_elf_program_must_be_for_this_cpu_or_one_it_also_runs() {
    let x86 = own(62);
    assert_eq!(judge(&elf(62), Some(&x86)), None);
    assert_eq!(
      judge(&elf(3), Some(&x86)),
      None,
      "32-bit x86 runs on x86-64"
    );
    assert_eq!(
      judge(&elf(40), Some(&own(183))),
      None,
      "32-bit ARM on AArch64"
    );
    let Some(Refusal::OtherCpu { file, this }) = judge(&elf(183), Some(&x86)) else {
      panic!("an AArch64 program on x86-64 is refused")
    };
    assert_eq!(
      (file.as_str(), this.as_str()),
      ("ARM64 (AArch64)", "x86-64")
    );
    let mut big = elf(62);
    big[5] = 2;
    big[18..20].copy_from_slice(&62u16.to_be_bytes());
    assert!(matches!(
      judge(&big, Some(&x86)),
      Some(Refusal::OtherCpu { .. })
    ));
    let mut object = elf(62);
    object[16] = 1;
    assert_eq!(judge(&object, Some(&x86)), Some(Refusal::NotAProgram));
    assert_eq!(
      judge(&elf(62)[..10], Some(&x86)),
      Some(Refusal::NotAProgram)
    );
    // Without this process's own header nothing is said about an ELF.
    assert_eq!(judge(&elf(183), None), None);
  }

  #[test]
  #[cfg(target_os = "linux")]
  fn this_process_s_own_executable_is_an_elf_it_runs() {
    let own = own_elf_head().expect("the test binary's header");
    let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    assert_eq!(judge(&exe[..HEAD], Some(own)), None);
  }

  #[test]
  #[cfg(target_os = "linux")]
  fn a_binfmt_misc_handler_takes_what_it_matches() {
    let dir = tempfile::tempdir().unwrap();
    let arm = elf(183);
    let program = dir.path().join("server");
    assert!(
      !handled_by_binfmt_misc(dir.path(), &program, &arm),
      "no entries"
    );
    std::fs::write(dir.path().join("status"), "enabled\n").unwrap();
    std::fs::write(dir.path().join("register"), "").unwrap();
    // As QEMU registers itself for AArch64 programs.
    std::fs::write(
      dir.path().join("qemu-aarch64"),
      "enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: OCF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n",
    )
    .unwrap();
    assert!(handled_by_binfmt_misc(dir.path(), &program, &arm));
    assert!(!handled_by_binfmt_misc(dir.path(), &program, &elf(243)));
    std::fs::write(
      dir.path().join("wine"),
      "enabled\ninterpreter /usr/bin/wine\nflags: \nextension .exe\n",
    )
    .unwrap();
    assert!(handled_by_binfmt_misc(
      dir.path(),
      &dir.path().join("server.exe"),
      b"MZ\0"
    ));
    std::fs::write(dir.path().join("status"), "disabled\n").unwrap();
    assert!(!handled_by_binfmt_misc(dir.path(), &program, &arm));
  }
}
