//! The few facts of the lifecycle that differ by platform, decided at the module boundary (as tokio's
//! `process` does with its `imp` modules) so that no function body needs a `cfg`.

pub use imp::{same_variable, LIMITS_APPLY};

#[cfg(windows)]
mod imp {
  /// `limits` (open files, core dumps) are set with `setrlimit`, which Windows does not have.
  pub const LIMITS_APPLY: bool = false;

  /// Windows treats environment variable names without regard to case (`Path` is `PATH`).
  pub fn same_variable(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
  }
}

#[cfg(not(windows))]
mod imp {
  pub const LIMITS_APPLY: bool = true;

  pub fn same_variable(a: &str, b: &str) -> bool {
    a == b
  }
}
