//! The state folder: where PID records live. It must be the user's own, and no one else may write to it:
//! records decide what gets signalled, so a folder others can write to (or a shared temp folder) is refused
//! rather than trusted (docs/design.md §13).

use crate::error::{PmError, Result};
use std::fs;
use std::path::{Path, PathBuf};

const APP: &str = "backend-process-manager";

/// What a private folder holds: its messages name it, and the option that chooses another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
  /// PID records (`stateDir`).
  Records,
  /// Log files (`logs.dir`).
  Logs,
}

impl Holds {
  fn folder(self) -> &'static str {
    match self {
      Holds::Records => "state folder",
      Holds::Logs => "log folder",
    }
  }

  fn option(self) -> &'static str {
    match self {
      Holds::Records => "`stateDir`",
      Holds::Logs => "`logs.dir`",
    }
  }

  fn contents(self) -> &'static str {
    match self {
      Holds::Records => "its records",
      Holds::Logs => "its log files",
    }
  }

  fn error(self, dir: &Path, reason: impl Into<String>) -> PmError {
    PmError::folder(self.folder(), dir, reason)
  }

  fn error_io(self, dir: &Path, doing: &str, err: std::io::Error) -> PmError {
    PmError::folder_io(self.folder(), dir, doing, err)
  }
}

/// The per-user folder for records: `$XDG_RUNTIME_DIR` (cleared at logout) or `$XDG_STATE_HOME` on Linux,
/// Application Support on macOS, `%LOCALAPPDATA%` on Windows — never a world-writable temp path.
pub fn default_state_dir() -> PathBuf {
  per_user_base().join(APP)
}

/// The per-user folder shared by every app of this user, whatever `stateDir` each uses: where port
/// reservations are locked (docs/design.md §11). Beside the default state folder, not in it, so that a state
/// folder holds records only.
pub fn port_locks_dir() -> PathBuf {
  per_user_base().join(format!("{APP}-ports"))
}

fn per_user_base() -> PathBuf {
  dirs::runtime_dir()
    .or_else(dirs::state_dir)
    .or_else(dirs::data_local_dir)
    .or_else(|| dirs::home_dir().map(|h| h.join(".local").join("state")))
    .unwrap_or_else(std::env::temp_dir)
}

/// Creates the folder (mode 0700) if needed; checks that it is a folder this user owns, can write and no
/// one else can write. A symbolic link to such a folder is fine.
pub fn ensure_state_dir(dir: &Path) -> Result<()> {
  ensure_private_dir(dir, Holds::Records)
}

/// As `ensure_state_dir`, for a folder that holds `holds`.
pub fn ensure_private_dir(dir: &Path, holds: Holds) -> Result<()> {
  if check_private_dir(dir, holds)? {
    return Ok(());
  }
  let mut builder = fs::DirBuilder::new();
  builder.recursive(true);
  imp::create_private(&mut builder);
  builder
    .create(dir)
    .map_err(|e| holds.error_io(dir, "it cannot be created", e))?;
  imp::make_private(dir).map_err(|e| holds.error_io(dir, "it cannot be made private", e))?;
  match check_private_dir(dir, holds)? {
    true => Ok(()),
    false => Err(holds.error(dir, "it vanished right after it was created")),
  }
}

/// For reading and cleaning records: `false` when the folder does not exist (it has no records), `true` when
/// it passes the checks of `ensure_state_dir`; refused otherwise. Nothing is created.
pub fn check_state_dir(dir: &Path) -> Result<bool> {
  check_private_dir(dir, Holds::Records)
}

/// As `check_state_dir`, for a folder that holds `holds`.
pub fn check_private_dir(dir: &Path, holds: Holds) -> Result<bool> {
  let meta = match fs::metadata(dir) {
    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
    other => other.map_err(|e| holds.error_io(dir, "it cannot be read", e))?,
  };
  if !meta.is_dir() {
    return Err(holds.error(
      dir,
      format!("it is not a folder. Pass a folder as {}", holds.option()),
    ));
  }
  imp::check_private(dir, &meta, holds).map(|()| true)
}

/// Unix: mode 0700 at creation; a folder is private when this user owns it and no one else can write it.
#[cfg(unix)]
mod imp {
  use super::Holds;
  use crate::error::Result;
  use std::fs;
  use std::path::Path;

  pub fn create_private(builder: &mut fs::DirBuilder) {
    std::os::unix::fs::DirBuilderExt::mode(builder, 0o700);
  }

  /// Nothing more to do: `create_private` made it so.
  pub fn make_private(_dir: &Path) -> std::io::Result<()> {
    Ok(())
  }

  pub fn check_private(dir: &Path, meta: &fs::Metadata, holds: Holds) -> Result<()> {
    use rustix::fs::{access, Access};
    use std::os::unix::fs::MetadataExt;
    if meta.uid() != rustix::process::geteuid().as_raw() {
      return Err(holds.error(
        dir,
        format!(
          "it belongs to another user. Use a folder of your own as {}",
          holds.option()
        ),
      ));
    }
    if meta.mode() & 0o022 != 0 {
      let shared_temp = meta.mode() & 0o1000 != 0;
      return Err(holds.error(
        dir,
        if shared_temp {
          format!("it is a shared temporary folder that every user can write to, where another user could plant files. Use a folder of your own as {} (the default one is)", holds.option())
        } else {
          format!(
            "other users can write to it (mode {:o}), so {} cannot be trusted. Run `chmod go-w {}` or choose another {}",
            meta.mode() & 0o777,
            holds.contents(),
            dir.display(),
            holds.option()
          )
        },
      ));
    }
    access(dir, Access::WRITE_OK | Access::EXEC_OK)
      .map_err(|e| holds.error_io(dir, "it is not writable", e.into()))
  }
}

#[cfg(windows)]
mod imp {
  use super::Holds;
  use crate::error::Result;
  use std::fs;
  use std::path::Path;

  /// A new folder inherits its parent's access: `make_private` replaces it after the creation.
  pub fn create_private(_builder: &mut fs::DirBuilder) {}

  /// What mode 0700 is on Unix.
  pub fn make_private(dir: &Path) -> std::io::Result<()> {
    crate::os::win::security::make_private(dir)
  }

  /// Windows: the folder's owner must be this user and its DACL may let only this user, SYSTEM and
  /// Administrators write (os/win/security.rs).
  pub fn check_private(dir: &Path, _meta: &fs::Metadata, holds: Holds) -> Result<()> {
    use crate::os::win::security::{access_of_path, Access};
    match access_of_path(dir) {
      Ok(Access::Private) => Ok(()),
      Ok(Access::OtherOwner) => Err(holds.error(
        dir,
        format!(
          "it belongs to another user. Use a folder of your own as {}",
          holds.option()
        ),
      )),
      Ok(Access::OthersCanWrite(_)) => Err(holds.error(
        dir,
        format!("other users can write to it, so {} cannot be trusted. Remove their write access (Properties, Security) or choose another {} (the default one is private)", holds.contents(), holds.option()),
      )),
      Err(e) => Err(holds.error_io(dir, "its permissions cannot be read", e)),
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn the_default_folder_is_per_user_and_named_after_the_project() {
    let dir = default_state_dir();
    assert!(dir.is_absolute());
    assert!(dir.ends_with(APP));
    assert_eq!(port_locks_dir().parent(), dir.parent());
  }

  #[cfg(unix)]
  #[test]
  fn folders_others_can_write_are_refused_and_a_link_to_an_own_folder_is_fine() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let created = root.path().join("a").join("b");
    ensure_state_dir(&created).unwrap();
    assert_eq!(
      fs::metadata(&created).unwrap().permissions().mode() & 0o777,
      0o700
    );
    let link = root.path().join("link");
    std::os::unix::fs::symlink(&created, &link).unwrap();
    ensure_state_dir(&link).unwrap();

    fs::set_permissions(&created, fs::Permissions::from_mode(0o775)).unwrap();
    let err = ensure_state_dir(&created).unwrap_err();
    assert_eq!(err.code(), "ERR_STATE_DIR");
    assert!(err.to_string().contains("chmod go-w"), "{err}");
    assert!(err.to_string().starts_with("state folder "), "{err}");
    // A log folder is checked the same way, and its messages name what it holds and its option.
    let err = ensure_private_dir(&created, Holds::Logs).unwrap_err();
    assert_eq!(err.code(), "ERR_STATE_DIR");
    let text = err.to_string();
    assert!(text.starts_with("log folder "), "{text}");
    assert!(
      text.contains("its log files") && text.contains("`logs.dir`"),
      "{text}"
    );
    assert!(
      !text.contains("stateDir") && !text.contains("records"),
      "{text}"
    );
    let err = ensure_state_dir(Path::new("/tmp")).unwrap_err();
    assert!(err.to_string().contains("shared temporary folder"), "{err}");

    // Reading and cleaning records check the same way, and create nothing.
    assert!(check_state_dir(&created).is_err());
    assert!(check_state_dir(Path::new("/tmp")).is_err());
    assert!(!check_state_dir(&root.path().join("missing")).unwrap());
    assert!(!root.path().join("missing").exists());

    let file = root.path().join("file");
    fs::write(&file, "").unwrap();
    assert!(ensure_state_dir(&file)
      .unwrap_err()
      .to_string()
      .contains("not a folder"));
  }
}
