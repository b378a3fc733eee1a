//! What to run: the program, its arguments, folder and environment, resolved from the options and
//! `startBackend(projectRoot, isPackaged)`; and, per attempt, the port and host filled in.

use super::platform::same_variable;
use crate::error::{PmError, Result};
use crate::options::{InheritEnv, Options, StartArgs};
use crate::os::spawn::SpawnSpec;
use crate::os::spawn_problem::{Kind, SpawnProblem};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the JS layer knows of the runtime it lives in.
#[derive(Debug, Clone, Default)]
pub struct Runtime {
  /// `process.execPath`: the Node runtime (inside Electron, the Electron binary).
  pub node_path: String,
  /// Running inside Electron: the Node runtime is started with `ELECTRON_RUN_AS_NODE=1`.
  pub electron: bool,
  /// `process.env` at the time of the start.
  pub env: Vec<(String, String)>,
}

impl Runtime {
  /// This process's environment, for a Rust program: JavaScript entries (`entry`) run on the `node` found
  /// on `PATH`; a `command` runs as it is.
  pub fn current() -> Runtime {
    Runtime {
      node_path: "node".into(),
      electron: false,
      env: std::env::vars().collect(),
    }
  }
}

/// A resolved launch; `{port}` and `{host}` in the arguments are still to be replaced.
#[derive(Debug, Clone)]
pub struct Launch {
  pub program: String,
  pub args: Vec<String>,
  pub cwd: PathBuf,
  pub env: Vec<(String, String)>,
  /// This start's secret (`token: true`), in the environment as `BACKEND_TOKEN`.
  pub token: Option<String>,
  nice: i32,
  open_files: Option<u64>,
  core_dumps: Option<bool>,
  stdin_pipe: bool,
}

impl Launch {
  /// What never goes into a log: the token and the secret-looking values of the backend's environment.
  pub fn redactor(&self) -> crate::logs::Redactor {
    crate::logs::Redactor::new(
      self.token.as_deref(),
      self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )
  }
}

/// What a backend gets of the app's environment when it inherits nothing else (`inheritEnv: false`): what
/// programs need to run and find their files, and nothing that could be a secret.
const MINIMAL_ENV: [&str; 8] = [
  "PATH",
  "HOME",
  "USERPROFILE",
  "TMPDIR",
  "TEMP",
  "TMP",
  "LANG",
  "SystemRoot",
];

fn inherited(env: &[(String, String)], inherit: &InheritEnv) -> Vec<(String, String)> {
  match inherit {
    InheritEnv::All => env.to_vec(),
    InheritEnv::Only(names) => env
      .iter()
      .filter(|(k, _)| {
        MINIMAL_ENV
          .iter()
          .copied()
          .chain(names.iter().map(String::as_str))
          .any(|n| same_variable(k, n))
      })
      .cloned()
      .collect(),
  }
}

/// A fresh 32-byte secret, hex.
fn new_token() -> Result<String> {
  let mut bytes = [0u8; 32];
  getrandom::fill(&mut bytes)
    .map_err(|e| PmError::Internal(format!("no random bytes for the token: {e}")))?;
  Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `app.asar` cannot hold a running program: packaged apps run the backend from `app.asar.unpacked`.
fn unpacked(path: PathBuf) -> PathBuf {
  path
    .components()
    .map(|c| match c.as_os_str().to_str() {
      Some("app.asar") => std::ffi::OsString::from("app.asar.unpacked"),
      _ => c.as_os_str().to_os_string(),
    })
    .collect()
}

fn absolute(path: &Path) -> PathBuf {
  std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

impl Launch {
  pub fn resolve(options: &Options, start: &StartArgs, runtime: &Runtime) -> Result<Launch> {
    let package = |p: PathBuf| if start.is_packaged { unpacked(p) } else { p };
    let root = package(absolute(&start.project_root));
    let program = options
      .command
      .clone()
      .unwrap_or_else(|| runtime.node_path.clone());
    let failed = |reason: String, kind: Kind, path: &std::path::Path| PmError::SpawnFailed {
      command: program.clone(),
      reason,
      problem: Some(SpawnProblem {
        kind,
        path: Some(path.to_path_buf()),
        searched: None,
      }),
      source: None,
    };
    let mut args = options.args.clone();
    if options.command.is_none() {
      let entry = package(root.join(&options.entry));
      match std::fs::metadata(&entry) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
          return Err(failed(
            format!(
              "the backend entry {} is a folder, not a script; check `entry`",
              entry.display()
            ),
            Kind::NotExecutable,
            &entry,
          ))
        }
        Err(_) => {
          return Err(failed(
            format!(
              "the backend entry {} does not exist; check `entry` and the project root",
              entry.display()
            ),
            Kind::NotFound,
            &entry,
          ))
        }
      }
      args.insert(0, entry.to_string_lossy().into_owned());
    }
    let cwd = match &options.cwd {
      Some(cwd) => package(root.join(cwd)),
      None => root,
    };
    if !cwd.is_dir() {
      return Err(failed(
        format!("the working folder {} does not exist", cwd.display()),
        Kind::NotFound,
        &cwd,
      ));
    }
    let token = if options.token {
      Some(new_token()?)
    } else {
      None
    };
    let mut env = inherited(&runtime.env, &options.inherit_env);
    let mut set = |key: &str, value: &str| {
      env.retain(|(k, _)| !same_variable(k, key));
      env.push((key.to_string(), value.to_string()));
    };
    for (key, value) in &options.env {
      set(key, value);
    }
    if let Some(token) = &token {
      set("BACKEND_TOKEN", token);
    }
    if options.command.is_none() && runtime.electron {
      // Inside Electron, process.execPath is the Electron binary: this makes it behave as plain Node.
      set("ELECTRON_RUN_AS_NODE", "1");
    }
    Ok(Launch {
      program,
      args,
      cwd,
      env,
      token,
      nice: options.priority.nice(),
      open_files: options.limits.open_files,
      core_dumps: options.limits.core_dumps,
      stdin_pipe: options.shutdown.stdin,
    })
  }

  /// A new token in place of this one (in the environment too), for a start whose token may have
  /// reached another program (docs/design.md §26).
  pub fn renew_token(&mut self) -> Result<()> {
    if self.token.is_none() {
      return Ok(());
    }
    let token = new_token()?;
    for (key, value) in &mut self.env {
      if key == "BACKEND_TOKEN" {
        value.clone_from(&token);
      }
    }
    self.token = Some(token);
    Ok(())
  }

  /// The spawn of one attempt: `{port}`/`{host}` replaced, the port and host in the environment, and
  /// with `listen: 'fd'` the socket to hand over as descriptor 3.
  pub fn on_port(
    &self,
    port: u16,
    host: IpAddr,
    port_env: &str,
    socket: Option<Arc<std::net::TcpListener>>,
  ) -> SpawnSpec {
    let fill = |text: &str| {
      text
        .replace("{port}", &port.to_string())
        .replace("{host}", &host.to_string())
    };
    let mut env = self.env.clone();
    env.retain(|(k, _)| k != port_env && k != "HOST");
    env.push((port_env.to_string(), port.to_string()));
    env.push(("HOST".into(), host.to_string()));
    if socket.is_some() {
      env.retain(|(k, _)| k != "LISTEN_FDS" && k != "LISTEN_PID" && k != "LISTEN_FDNAMES");
      env.push(("LISTEN_FDS".into(), "1".into()));
    }
    SpawnSpec {
      program: self.program.clone(),
      args: self.args.iter().map(|a| fill(a)).collect(),
      cwd: self.cwd.clone(),
      env,
      nice: self.nice,
      open_files: self.open_files,
      core_dumps: self.core_dumps,
      stdin_pipe: self.stdin_pipe,
      listen_socket: socket,
      no_parent_death_signal: false,
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::options::InheritEnv;

  #[test]
  fn a_packaged_app_runs_its_backend_from_app_asar_unpacked() {
    let dir = tempfile::tempdir().unwrap();
    let unpacked_server = dir.path().join("app.asar.unpacked").join("backend-nodejs");
    std::fs::create_dir_all(&unpacked_server).unwrap();
    std::fs::write(unpacked_server.join("server.js"), "").unwrap();
    let start = StartArgs {
      project_root: dir.path().join("app.asar"),
      is_packaged: true,
    };
    let runtime = Runtime {
      node_path: "/electron".into(),
      electron: true,
      env: vec![("A".into(), "1".into())],
    };
    let launch = Launch::resolve(&Options::default(), &start, &runtime).unwrap();
    assert_eq!(launch.program, "/electron");
    assert_eq!(
      launch.args,
      vec![unpacked_server
        .join("server.js")
        .to_string_lossy()
        .into_owned()]
    );
    assert_eq!(launch.cwd, dir.path().join("app.asar.unpacked"));
    assert!(launch
      .env
      .contains(&("ELECTRON_RUN_AS_NODE".into(), "1".into())));
  }

  #[test]
  fn an_entry_that_is_a_folder_or_missing_is_a_spawn_error_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("backend-nodejs/server.js")).unwrap();
    let start = StartArgs {
      project_root: dir.path().into(),
      is_packaged: false,
    };
    let err = Launch::resolve(&Options::default(), &start, &Runtime::default()).unwrap_err();
    assert!(err.to_string().contains("is a folder"), "{err}");
    let err = Launch::resolve(
      &Options {
        entry: "nope.js".into(),
        ..Options::default()
      },
      &start,
      &Runtime::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
  }

  #[test]
  fn each_attempt_gets_its_port_in_the_arguments_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let o = Options {
      command: Some("python3".into()),
      args: vec!["--port={port}".into(), "{host}".into()],
      env: vec![("PORT".into(), "1".into())],
      ..Options::default()
    };
    let start = StartArgs {
      project_root: dir.path().into(),
      is_packaged: false,
    };
    let spec = Launch::resolve(&o, &start, &Runtime::default())
      .unwrap()
      .on_port(8123, "::1".parse().unwrap(), "PORT", None);
    assert_eq!(spec.args, vec!["--port=8123", "::1"]);
    assert_eq!(spec.env.iter().filter(|(k, _)| k == "PORT").count(), 1);
    assert!(spec.env.contains(&("PORT".into(), "8123".into())));
    assert!(spec.env.contains(&("HOST".into(), "::1".into())));
  }

  #[test]
  fn without_inherit_env_the_app_environment_stays_out_and_a_token_is_fresh_per_launch() {
    let dir = tempfile::tempdir().unwrap();
    let o = Options {
      command: Some("python3".into()),
      inherit_env: InheritEnv::Only(vec!["KEEP_ME".into()]),
      env: vec![("MINE".into(), "1".into())],
      token: true,
      ..Options::default()
    };
    let start = StartArgs {
      project_root: dir.path().into(),
      is_packaged: false,
    };
    let runtime = Runtime {
      env: ["PATH=/bin", "SECRET=s3", "KEEP_ME=k", "HOME=/h"]
        .iter()
        .map(|kv| {
          let (k, v) = kv.split_once('=').unwrap();
          (k.to_string(), v.to_string())
        })
        .collect(),
      ..Runtime::default()
    };
    let launch = Launch::resolve(&o, &start, &runtime).unwrap();
    let names: Vec<&str> = launch.env.iter().map(|(k, _)| k.as_str()).collect();
    assert!(!names.contains(&"SECRET"));
    for name in ["PATH", "HOME", "KEEP_ME", "MINE", "BACKEND_TOKEN"] {
      assert!(names.contains(&name), "{name} in {names:?}");
    }
    let token = launch.token.clone().unwrap();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    let again = Launch::resolve(&o, &start, &runtime).unwrap();
    assert_ne!(again.token.unwrap(), token, "a new token per start");
  }
}
