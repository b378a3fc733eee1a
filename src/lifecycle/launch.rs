//! What to run: the program, its arguments, folder and environment, resolved from the options and
//! `startBackend(projectRoot, isPackaged)`; and, per attempt, the port and host filled in.

use crate::error::{PmError, Result};
use crate::options::{Options, StartArgs};
use crate::os::spawn::SpawnSpec;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

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

/// A resolved launch; `{port}` and `{host}` in the arguments are still to be replaced.
#[derive(Debug, Clone)]
pub struct Launch {
  pub program: String,
  pub args: Vec<String>,
  pub cwd: PathBuf,
  pub env: Vec<(String, String)>,
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
    let failed = |reason: String| PmError::SpawnFailed {
      command: program.clone(),
      reason,
      source: None,
    };
    let mut args = options.args.clone();
    if options.command.is_none() {
      let entry = package(root.join(&options.entry));
      match std::fs::metadata(&entry) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
          return Err(failed(format!(
            "the backend entry {} is a folder, not a script; check `entry`",
            entry.display()
          )))
        }
        Err(_) => {
          return Err(failed(format!(
            "the backend entry {} does not exist; check `entry` and the project root",
            entry.display()
          )))
        }
      }
      args.insert(0, entry.to_string_lossy().into_owned());
    }
    let cwd = match &options.cwd {
      Some(cwd) => package(root.join(cwd)),
      None => root,
    };
    if !cwd.is_dir() {
      return Err(failed(format!(
        "the working folder {} does not exist",
        cwd.display()
      )));
    }
    let mut env = runtime.env.clone();
    for (key, value) in &options.env {
      env.retain(|(k, _)| k != key);
      env.push((key.clone(), value.clone()));
    }
    if options.command.is_none() && runtime.electron {
      // Inside Electron, process.execPath is the Electron binary: this makes it behave as plain Node.
      env.retain(|(k, _)| k != "ELECTRON_RUN_AS_NODE");
      env.push(("ELECTRON_RUN_AS_NODE".into(), "1".into()));
    }
    Ok(Launch {
      program,
      args,
      cwd,
      env,
    })
  }

  /// The spawn of one attempt: `{port}`/`{host}` replaced, the port and host in the environment.
  pub fn on_port(&self, port: u16, host: IpAddr, port_env: &str) -> SpawnSpec {
    let fill = |text: &str| {
      text
        .replace("{port}", &port.to_string())
        .replace("{host}", &host.to_string())
    };
    let mut env = self.env.clone();
    env.retain(|(k, _)| k != port_env && k != "HOST");
    env.push((port_env.to_string(), port.to_string()));
    env.push(("HOST".into(), host.to_string()));
    SpawnSpec {
      program: self.program.clone(),
      args: self.args.iter().map(|a| fill(a)).collect(),
      cwd: self.cwd.clone(),
      env,
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::options::Value;

  fn options(fields: Vec<(&str, Value)>) -> Options {
    Options::parse(&Value::object(fields)).unwrap()
  }

  #[test]
  fn a_packaged_app_runs_its_backend_from_app_asar_unpacked() {
    let dir = tempfile::tempdir().unwrap();
    let unpacked_server = dir.path().join("app.asar.unpacked/backend-nodejs");
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
    let launch = Launch::resolve(&options(vec![]), &start, &runtime).unwrap();
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
    let err = Launch::resolve(&options(vec![]), &start, &Runtime::default()).unwrap_err();
    assert!(err.to_string().contains("is a folder"), "{err}");
    let err = Launch::resolve(
      &options(vec![("entry", Value::String("nope.js".into()))]),
      &start,
      &Runtime::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
  }

  #[test]
  fn each_attempt_gets_its_port_in_the_arguments_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let o = options(vec![
      ("command", Value::String("python3".into())),
      (
        "args",
        Value::Array(vec![
          Value::String("--port={port}".into()),
          Value::String("{host}".into()),
        ]),
      ),
      (
        "env",
        Value::object(vec![("PORT", Value::String("1".into()))]),
      ),
    ]);
    let start = StartArgs {
      project_root: dir.path().into(),
      is_packaged: false,
    };
    let spec = Launch::resolve(&o, &start, &Runtime::default())
      .unwrap()
      .on_port(8123, "::1".parse().unwrap(), "PORT");
    assert_eq!(spec.args, vec!["--port=8123", "::1"]);
    assert_eq!(spec.env.iter().filter(|(k, _)| k == "PORT").count(), 1);
    assert!(spec.env.contains(&("PORT".into(), "8123".into())));
    assert!(spec.env.contains(&("HOST".into(), "::1".into())));
  }
}
