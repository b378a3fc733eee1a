//! Every option and argument the API takes is checked here, once, for every entry point (the constructor,
//! the free functions, the CLI through them). The binding hands over what JS gave as plain Rust input
//! types (`OptionsInput` and the other `…Input`s: every field optional, numbers as `f64`, unions as
//! `Either`), already sorted by JS type and with unknown keys refused; this module applies the defaults of
//! the API reference (docs/api.md) and turns a bad value into `ERR_INVALID_ARG` with a message that says
//! what is wrong. Here: the checks of single values; `manager` holds the constructor's options (one
//! `TryFrom<OptionsInput> for Options`), `calls` the arguments of the other functions.
mod calls;
pub mod group;
mod manager;

pub use calls::*;
pub use manager::*;

use crate::error::{PmError, Result};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

/// One of two shapes an option may take (`restart: true | { … }`, `ready: 'http' | { stdout }`).
#[derive(Debug, Clone, PartialEq)]
pub enum Either<A, B> {
  A(A),
  B(B),
}

/// A value of `env` as JS gives it: numbers and booleans become strings, `null` and `undefined` leave the
/// variable out.
#[derive(Debug, Clone, PartialEq)]
pub enum EnvValue {
  Text(String),
  Number(f64),
  Bool(bool),
  Unset,
}

/// A number as JS prints it.
pub fn js_number(n: f64) -> String {
  if n.is_nan() {
    "NaN".into()
  } else if n.is_infinite() {
    if n > 0.0 { "Infinity" } else { "-Infinity" }.into()
  } else {
    format!("{n}")
  }
}

/// `what must be expected, got got`: the one shape of a wrong value's message (the binding uses it for a
/// value of the wrong JS type, with `got` described as JS would).
pub fn wrong(what: &str, expected: &str, got: &str) -> PmError {
  PmError::invalid(format!("{what} must be {expected}, got {got}"))
}

/// Like JS timers, a duration may not exceed 2^31 - 1 ms (about 24.8 days).
pub const MAX_MS: f64 = 2_147_483_647.0;

pub const DEFAULT_NAME: &str = "backend";
pub const DEFAULT_ENTRY: &str = "backend-nodejs/server.js";
pub const DEFAULT_HOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const DEFAULT_PORT: u16 = 8000;
pub const DEFAULT_PORT_RANGE: u16 = 100;
pub const DEFAULT_PORT_ENV: &str = "PORT";
pub const DEFAULT_HEALTH_PATH: &str = "/health";
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_millis(1000);
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_millis(10_000);
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_millis(5000);
/// `waitForBackendReady(port, maxRetries = 10, retryDelayMs = 1000)`.
pub const DEFAULT_READY_RETRIES: u32 = 10;
pub const DEFAULT_READY_RETRY_DELAY: Duration = Duration::from_millis(1000);
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;

// ---- single values -------------------------------------------------------------------------------

/// A string with no NUL (which no OS call can carry).
pub fn string(s: String, what: &str) -> Result<String> {
  if s.contains('\0') {
    return Err(PmError::invalid(format!(
      "{what} must not contain a NUL character"
    )));
  }
  Ok(s)
}

pub fn non_empty(s: String, what: &str) -> Result<String> {
  let s = string(s, what)?;
  if s.is_empty() {
    return Err(PmError::invalid(format!("{what} must not be empty")));
  }
  Ok(s)
}

fn integer(n: f64, what: &str, min: f64, max: f64) -> Result<f64> {
  if n.fract() == 0.0 && n >= min && n <= max {
    return Ok(n);
  }
  Err(wrong(
    what,
    &format!("an integer from {} to {}", js_number(min), js_number(max)),
    &js_number(n),
  ))
}

pub fn port(n: f64, what: &str) -> Result<u16> {
  integer(n, what, 1.0, 65535.0).map(|n| n as u16)
}

pub fn port_range(n: f64) -> Result<u16> {
  integer(n, "portRange", 0.0, 65534.0).map(|n| n as u16)
}

pub fn count(n: f64, what: &str) -> Result<u32> {
  integer(n, what, 1.0, u32::MAX as f64).map(|n| n as u32)
}

/// A number of milliseconds from `min_ms` to `MAX_MS`.
pub fn millis(n: f64, what: &str, min_ms: f64) -> Result<Duration> {
  if n.is_finite() && n >= min_ms && n <= MAX_MS {
    return Ok(Duration::from_secs_f64(n / 1000.0));
  }
  Err(wrong(
    what,
    &format!(
      "a number of milliseconds from {} to {}",
      js_number(min_ms),
      js_number(MAX_MS)
    ),
    &js_number(n),
  ))
}

/// An IP address literal (brackets allowed around IPv6); `localhost` is taken as 127.0.0.1, since the
/// backend and the probe must agree on one address and the name may resolve to either family.
pub fn host(text: String, what: &str) -> Result<IpAddr> {
  let text = non_empty(text, what)?;
  if text == "localhost" {
    return Ok(DEFAULT_HOST);
  }
  let bare = text
    .strip_prefix('[')
    .and_then(|t| t.strip_suffix(']'))
    .unwrap_or(&text);
  bare.parse().map_err(|_| {
    PmError::invalid(format!(
      "{what} must be an IP address such as 127.0.0.1 or ::1 (or \"localhost\"), got {text:?}"
    ))
  })
}

pub fn strings(items: Vec<String>, what: &str) -> Result<Vec<String>> {
  items
    .into_iter()
    .enumerate()
    .map(|(i, s)| string(s, &format!("{what}[{i}]")))
    .collect()
}

/// Characters a backend name may not hold: it names files on every system.
const NAME_FORBIDDEN: &[char] = &['/', '\\', ':', '*', '?', '"', '<', '>', '|'];
pub const MAX_NAME_CHARS: usize = 100;

pub fn validate_name(name: &str) -> Result<()> {
  let problem = if name.is_empty() {
    Some("it is empty".to_string())
  } else if name.chars().count() > MAX_NAME_CHARS {
    Some(format!(
      "it has {} characters, more than {MAX_NAME_CHARS}",
      name.chars().count()
    ))
  } else if name.starts_with('.') {
    Some("it starts with a dot".into())
  } else if name.trim() != name {
    // `" api"` or a name of spaces only would pass for another in `status` and the monitor.
    Some("it starts or ends with white space".into())
  } else if let Some(c) = name.chars().find(|&c| is_invisible(c)) {
    Some(format!(
      "it contains U+{:04X}, an invisible or text-direction character that would disguise it in status output",
      c as u32
    ))
  } else {
    name
      .chars()
      .find(|c| NAME_FORBIDDEN.contains(c) || c.is_control())
      .map(|c| format!("it contains {c:?}, which cannot be part of a file name"))
  };
  match problem {
    Some(p) => Err(PmError::invalid(format!(
      "name {name:?} cannot be used: {p}. Use up to {MAX_NAME_CHARS} characters without path separators"
    ))),
    None => Ok(()),
  }
}

/// Characters that print as nothing or reorder the text around them (bidi controls, zero-width and other
/// format characters): a name holding one can look like another backend's.
fn is_invisible(c: char) -> bool {
  matches!(c,
    '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}' | '\u{180E}'
    | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{3164}'
    | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF9}'..='\u{FFFB}'
    | '\u{E0000}'..='\u{E007F}')
}

/// Variables the manager sets itself, or that change what the backend's programs load and run: a port in
/// one would overwrite the token or the handed-over socket, or let a port number reach the loader.
const RESERVED_ENV: &[&str] = &[
  "BACKEND_TOKEN",
  "LISTEN_FDS",
  "LISTEN_PID",
  "LISTEN_FDNAMES",
  "NOTIFY_SOCKET",
  "HOST",
  "ELECTRON_RUN_AS_NODE",
  "NODE_OPTIONS",
  "PATH",
];
const RESERVED_ENV_PREFIXES: &[&str] = &["LD_", "DYLD_"];

/// The variable that carries the port: a plain name (letters, digits, `_`, not a digit first) that the
/// manager does not set itself and that no loader reads.
pub fn port_env(key: &str) -> Result<()> {
  env_name(key, "portEnv")?;
  let plain = key.chars().next().is_some_and(|c| !c.is_ascii_digit())
    && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
  if !plain {
    return Err(PmError::invalid(format!(
      "portEnv {key:?} is not a plain environment variable name: use letters, digits and '_', not starting with a digit"
    )));
  }
  // Windows compares variable names without case.
  let upper = key.to_ascii_uppercase();
  if RESERVED_ENV.contains(&upper.as_str())
    || RESERVED_ENV_PREFIXES.iter().any(|p| upper.starts_with(p))
  {
    return Err(PmError::invalid(format!(
      "portEnv {key:?} cannot be used: the manager sets it itself, or it changes what the backend loads and runs. Use a name such as PORT"
    )));
  }
  Ok(())
}

pub fn name(name: String) -> Result<String> {
  let name = string(name, "name")?;
  validate_name(&name)?;
  Ok(name)
}

fn env_name(key: &str, what: &str) -> Result<()> {
  if key.is_empty() || key.contains(['=', '\0']) {
    return Err(PmError::invalid(format!(
      "{what} {key:?} is not an environment variable name (it must be non-empty, without '=')"
    )));
  }
  Ok(())
}

/// `{ NAME: value }`; numbers and booleans become strings, null and undefined leave the variable out.
pub fn env(fields: Vec<(String, EnvValue)>, what: &str) -> Result<Vec<(String, String)>> {
  let mut out = Vec::with_capacity(fields.len());
  for (key, v) in fields {
    env_name(&key, &format!("{what} key"))?;
    let text = match v {
      EnvValue::Unset => continue,
      EnvValue::Text(s) => string(s, &format!("{what}.{key}"))?,
      EnvValue::Number(n) => js_number(n),
      EnvValue::Bool(b) => b.to_string(),
    };
    out.push((key, text));
  }
  Ok(out)
}

fn health_path(path: String) -> Result<String> {
  let path = non_empty(path, "healthPath")?;
  if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
    return Err(PmError::invalid(format!(
      "healthPath must start with \"/\" and hold no spaces or control characters, got {path:?}"
    )));
  }
  Ok(path)
}

#[cfg(test)]
mod tests {
  use super::*;

  fn opts(given: OptionsInput) -> Result<Options> {
    Options::try_from(given)
  }

  fn s(x: &str) -> Option<String> {
    Some(x.into())
  }

  #[test]
  fn defaults_reproduce_the_original_setup() {
    let o = opts(OptionsInput::default()).unwrap();
    assert_eq!(o.name, "backend");
    assert_eq!(o.entry, "backend-nodejs/server.js");
    assert_eq!((o.port, o.port_range), (8000, 100));
    assert_eq!(o.host.to_string(), "127.0.0.1");
    assert_eq!(o.stop_timeout, Duration::from_secs(5));
    assert_eq!(o.state_dir, crate::state::dir::default_state_dir());
  }

  #[test]
  fn bad_options_are_invalid_args_that_name_the_option() {
    type Case = (fn(&mut OptionsInput), &'static str);
    let cases: Vec<Case> = vec![
      (
        |o| o.port = Some(0.0),
        "port must be an integer from 1 to 65535, got 0",
      ),
      (|o| o.port = Some(1.5), "got 1.5"),
      (|o| o.port = Some(f64::NAN), "got NaN"),
      (|o| o.port_range = Some(-1.0), "portRange"),
      (|o| o.stop_timeout_ms = Some(1e300), "stopTimeoutMs"),
      (|o| o.health_timeout_ms = Some(0.0), "healthTimeoutMs"),
      (|o| o.name = s("a/b"), "'/'"),
      (|o| o.name = s(""), "empty"),
      (|o| o.command = s("no\0de"), "NUL"),
      (
        |o| o.args = Some(vec!["a\0".into()]),
        "args[0] must not contain a NUL",
      ),
      (|o| o.port_env = s("A=B"), "portEnv"),
      (
        |o| o.port_env = s("BACKEND_TOKEN"),
        "portEnv \"BACKEND_TOKEN\" cannot be used",
      ),
      (
        |o| o.port_env = s("ld_preload"),
        "portEnv \"ld_preload\" cannot be used",
      ),
      (|o| o.port_env = s("DYLD_INSERT_LIBRARIES"), "portEnv"),
      (|o| o.port_env = s("MY PORT"), "not a plain"),
      (|o| o.name = s("\u{202E}\u{202E}"), "U+202E"),
      (|o| o.name = s("api\u{200B}"), "U+200B"),
      (|o| o.name = s("   "), "white space"),
      (|o| o.name = s(" api"), "white space"),
      (|o| o.host = s("banana"), "IP address"),
      (|o| o.health_path = s("health"), "healthPath"),
      (
        |o| o.env = Some(vec![("A=B".into(), EnvValue::Text("1".into()))]),
        "env key \"A=B\"",
      ),
      (
        |o| o.env = Some(vec![("A".into(), EnvValue::Text("b\0".into()))]),
        "env.A must not contain a NUL",
      ),
    ];
    for (set, expected) in cases {
      let mut given = OptionsInput::default();
      set(&mut given);
      let err = opts(given.clone()).unwrap_err();
      assert_eq!(err.code(), "ERR_INVALID_ARG");
      assert!(err.to_string().contains(expected), "{given:?}: {err}");
    }
  }

  #[test]
  fn a_long_name_counts_characters_not_bytes() {
    let named = |n: String| {
      opts(OptionsInput {
        name: Some(n),
        ..Default::default()
      })
    };
    assert!(named("名".repeat(100)).is_ok());
    assert!(named("名".repeat(101)).is_err());
  }

  #[test]
  fn localhost_and_bracketed_ipv6_are_hosts_everywhere() {
    let hosted = |h: &str| {
      opts(OptionsInput {
        host: s(h),
        ..Default::default()
      })
    };
    assert_eq!(hosted("localhost").unwrap().host, DEFAULT_HOST);
    let find = FindArgs::new(
      9000.0,
      FindInput {
        host: s("localhost"),
        ..Default::default()
      },
    )
    .unwrap();
    assert_eq!(find.host, Some(DEFAULT_HOST));
    assert_eq!(hosted("[::1]").unwrap().host.to_string(), "::1");
    assert!(host(":::::".into(), "host").is_err());
  }

  #[test]
  fn env_values_become_strings_and_null_leaves_them_out() {
    let o = opts(OptionsInput {
      env: Some(vec![
        ("A".into(), EnvValue::Number(1.0)),
        ("B".into(), EnvValue::Bool(true)),
        ("C".into(), EnvValue::Unset),
      ]),
      ..Default::default()
    })
    .unwrap();
    assert_eq!(
      o.env,
      vec![("A".into(), "1".into()), ("B".into(), "true".into())]
    );
  }

  #[test]
  fn cleanup_arguments_are_checked_like_the_constructor_options() {
    for (given, expected) in [
      (
        CleanupInput {
          stop_timeout_ms: Some(-1.0),
          ..Default::default()
        },
        "stopTimeoutMs",
      ),
      (
        CleanupInput {
          name: s("a/b"),
          ..Default::default()
        },
        "name \"a/b\" cannot be used",
      ),
    ] {
      let err = CleanupArgs::new(None, given).unwrap_err();
      assert!(err.to_string().contains(expected), "{err}");
    }
    assert!(CleanupArgs::new(None, CleanupInput::default()).is_ok());
    assert!(CleanupArgs::new(s(""), CleanupInput::default()).is_err());
  }

  mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
      #[test]
      fn ports_are_accepted_exactly_in_range(p in any::<f64>()) {
        let expected = p.fract() == 0.0 && (1.0..=65535.0).contains(&p);
        prop_assert_eq!(port(p, "port").is_ok(), expected);
      }

      #[test]
      fn durations_are_accepted_only_when_finite_and_in_range(v in any::<f64>()) {
        let expected = v.is_finite() && (0.0..=MAX_MS).contains(&v);
        prop_assert_eq!(millis(v, "t", 0.0).is_ok(), expected);
      }

      #[test]
      fn hosts_are_ip_literals_or_localhost(text in ".{0,40}") {
        let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(&text);
        let expected = text == "localhost" || (!text.contains('\0') && bare.parse::<IpAddr>().is_ok());
        prop_assert_eq!(host(text.clone(), "host").is_ok(), expected);
      }

      /// Arbitrary option values either parse or fail with ERR_INVALID_ARG; nothing panics.
      #[test]
      fn arbitrary_options_parse_or_are_invalid_args(
        numbers in proptest::collection::vec(proptest::option::of(any::<f64>()), 6),
        texts in proptest::collection::vec(proptest::option::of(".{0,12}"), 5),
      ) {
        let given = OptionsInput {
          port: numbers[0],
          port_range: numbers[1],
          stop_timeout_ms: numbers[2],
          replicas: numbers[3],
          max_memory_bytes: numbers[4],
          health_interval_ms: numbers[5],
          name: texts[0].clone(),
          host: texts[1].clone(),
          health_path: texts[2].clone(),
          port_env: texts[3].clone(),
          args: texts[4].clone().map(|t| vec![t]),
          env: texts[4].clone().map(|t| vec![(t.clone(), EnvValue::Text(t))]),
          ..Default::default()
        };
        if let Err(e) = Options::try_from(given) {
          prop_assert_eq!(e.code(), "ERR_INVALID_ARG");
        }
      }
    }
  }
}
