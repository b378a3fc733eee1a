//! Every option and argument the API takes is checked here, once, for every entry point (the constructor,
//! the free functions, the CLI through them). The binding hands over JS values as they are (`Value`); this
//! module applies the defaults of the API reference (docs/api.md) and turns bad input into
//! `ERR_INVALID_ARG` with a message that says what is wrong. Here: JS values and the checks of single
//! values; `manager` holds the constructor's options, `calls` the arguments of the other functions.

mod calls;
pub mod group;
mod manager;

pub use calls::*;
pub use manager::*;

use crate::error::{PmError, Result};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

/// A JS value as the binding found it, before any judgement.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
  Undefined,
  Null,
  Bool(bool),
  Number(f64),
  String(String),
  Array(Vec<Value>),
  Object(Vec<(String, Value)>),
  /// A function, symbol, bigint or anything else no option takes; the name of its type.
  Other(&'static str),
}

impl Value {
  fn describe(&self) -> String {
    match self {
      Value::Undefined => "undefined".into(),
      Value::Null => "null".into(),
      Value::Bool(b) => b.to_string(),
      Value::Number(n) => js_number(*n),
      Value::String(s) => format!("{s:?}"),
      Value::Array(_) => "an array".into(),
      Value::Object(_) => "an object".into(),
      Value::Other(kind) => format!("a {kind}"),
    }
  }

  fn is_absent(&self) -> bool {
    matches!(self, Value::Undefined)
  }

  pub fn object(fields: Vec<(&str, Value)>) -> Value {
    Value::Object(
      fields
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    )
  }
}

fn js_number(n: f64) -> String {
  if n.is_nan() {
    "NaN".into()
  } else if n.is_infinite() {
    if n > 0.0 { "Infinity" } else { "-Infinity" }.into()
  } else {
    format!("{n}")
  }
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

fn bad(what: &str, expected: &str, got: &Value) -> PmError {
  PmError::invalid(format!("{what} must be {expected}, got {}", got.describe()))
}

/// A string with no NUL (which no OS call can carry).
pub fn string(value: &Value, what: &str) -> Result<String> {
  match value {
    Value::String(s) if s.contains('\0') => Err(PmError::invalid(format!(
      "{what} must not contain a NUL character"
    ))),
    Value::String(s) => Ok(s.clone()),
    other => Err(bad(what, "a string", other)),
  }
}

pub fn non_empty(value: &Value, what: &str) -> Result<String> {
  let s = string(value, what)?;
  if s.is_empty() {
    return Err(PmError::invalid(format!("{what} must not be empty")));
  }
  Ok(s)
}

fn integer(value: &Value, what: &str, min: f64, max: f64) -> Result<f64> {
  match value {
    Value::Number(n) if n.fract() == 0.0 && *n >= min && *n <= max => Ok(*n),
    other => Err(bad(
      what,
      &format!("an integer from {} to {}", js_number(min), js_number(max)),
      other,
    )),
  }
}

pub fn port(value: &Value, what: &str) -> Result<u16> {
  integer(value, what, 1.0, 65535.0).map(|n| n as u16)
}

pub fn port_range(value: &Value) -> Result<u16> {
  integer(value, "portRange", 0.0, 65534.0).map(|n| n as u16)
}

pub fn count(value: &Value, what: &str) -> Result<u32> {
  integer(value, what, 1.0, u32::MAX as f64).map(|n| n as u32)
}

/// A number of milliseconds from `min_ms` to `MAX_MS`.
pub fn millis(value: &Value, what: &str, min_ms: f64) -> Result<Duration> {
  match value {
    Value::Number(n) if n.is_finite() && *n >= min_ms && *n <= MAX_MS => {
      Ok(Duration::from_secs_f64(n / 1000.0))
    }
    other => Err(bad(
      what,
      &format!(
        "a number of milliseconds from {} to {}",
        js_number(min_ms),
        js_number(MAX_MS)
      ),
      other,
    )),
  }
}

/// An IP address literal (brackets allowed around IPv6); `localhost` is taken as 127.0.0.1, since the
/// backend and the probe must agree on one address and the name may resolve to either family.
pub fn host(value: &Value, what: &str) -> Result<IpAddr> {
  let text = non_empty(value, what)?;
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

pub fn boolean(value: &Value, what: &str) -> Result<bool> {
  match value {
    Value::Bool(b) => Ok(*b),
    other => Err(bad(what, "true or false", other)),
  }
}

pub fn strings(value: &Value, what: &str) -> Result<Vec<String>> {
  match value {
    Value::Array(items) => items
      .iter()
      .enumerate()
      .map(|(i, v)| string(v, &format!("{what}[{i}]")))
      .collect(),
    other => Err(bad(what, "an array of strings", other)),
  }
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

pub fn name(value: &Value) -> Result<String> {
  let name = string(value, "name")?;
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
pub fn env(value: &Value, what: &str) -> Result<Vec<(String, String)>> {
  let Value::Object(fields) = value else {
    return Err(bad(what, "an object of strings", value));
  };
  let mut out = Vec::with_capacity(fields.len());
  for (key, v) in fields {
    env_name(key, &format!("{what} key"))?;
    let text = match v {
      Value::Undefined | Value::Null => continue,
      Value::String(_) => string(v, &format!("{what}.{key}"))?,
      Value::Number(n) => js_number(*n),
      Value::Bool(b) => b.to_string(),
      other => return Err(bad(&format!("{what}.{key}"), "a string", other)),
    };
    out.push((key.clone(), text));
  }
  Ok(out)
}

fn health_path(value: &Value) -> Result<String> {
  let path = non_empty(value, "healthPath")?;
  if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
    return Err(PmError::invalid(format!(
      "healthPath must start with \"/\" and hold no spaces or control characters, got {path:?}"
    )));
  }
  Ok(path)
}

// ---- objects ---------------------------------------------------------------------------------------

/// The fields of an options object, taken one by one; whatever is left over is an unknown option. The keys
/// taken are the known ones: each parser names its options once, where it reads them.
pub struct Fields<'a> {
  what: &'a str,
  fields: Vec<(&'a str, &'a Value)>,
  known: Vec<&'static str>,
}

impl<'a> Fields<'a> {
  /// `undefined` and `null` are an empty object: every option takes its default.
  pub fn of(value: &'a Value, what: &'a str) -> Result<Self> {
    let fields = match value {
      Value::Undefined | Value::Null => Vec::new(),
      Value::Object(fields) => fields.iter().map(|(k, v)| (k.as_str(), v)).collect(),
      other => return Err(bad(what, "an object", other)),
    };
    Ok(Fields {
      what,
      fields,
      known: Vec::new(),
    })
  }

  /// The value of `key`, or `None` when it is missing or undefined.
  pub fn take(&mut self, key: &'static str) -> Option<&'a Value> {
    self.known.push(key);
    let at = self.fields.iter().position(|(k, _)| *k == key)?;
    let (_, value) = self.fields.remove(at);
    (!value.is_absent()).then_some(value)
  }

  /// Refuses the first key no `take` asked for.
  pub fn finish(self) -> Result<()> {
    match self.fields.first() {
      None => Ok(()),
      Some((key, _)) => Err(PmError::invalid(format!(
        "unknown option {key:?} in {}; known options: {}",
        self.what,
        self.known.join(", ")
      ))),
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn opts(fields: Vec<(&str, Value)>) -> Result<Options> {
    Options::parse(&Value::object(fields))
  }

  fn n(x: f64) -> Value {
    Value::Number(x)
  }
  fn s(x: &str) -> Value {
    Value::String(x.into())
  }

  #[test]
  fn defaults_reproduce_the_original_setup() {
    let o = Options::parse(&Value::Undefined).unwrap();
    assert_eq!(o.name, "backend");
    assert_eq!(o.entry, "backend-nodejs/server.js");
    assert_eq!((o.port, o.port_range), (8000, 100));
    assert_eq!(o.host.to_string(), "127.0.0.1");
    assert_eq!(o.stop_timeout, Duration::from_secs(5));
    assert_eq!(o.state_dir, crate::state::dir::default_state_dir());
  }

  #[test]
  fn bad_options_are_invalid_args_that_name_the_option() {
    let cases: Vec<(&str, Value, &str)> = vec![
      (
        "port",
        n(0.0),
        "port must be an integer from 1 to 65535, got 0",
      ),
      ("port", n(1.5), "got 1.5"),
      ("port", s("8000"), "got \"8000\""),
      ("port", n(f64::NAN), "got NaN"),
      ("portRange", n(-1.0), "portRange"),
      ("stopTimeoutMs", n(1e300), "stopTimeoutMs"),
      ("healthTimeoutMs", n(0.0), "healthTimeoutMs"),
      ("name", s("a/b"), "'/'"),
      ("name", s(""), "empty"),
      ("name", n(5.0), "name must be a string, got 5"),
      ("command", s("no\0de"), "NUL"),
      (
        "args",
        Value::Array(vec![s("a\0")]),
        "args[0] must not contain a NUL",
      ),
      ("portEnv", s("A=B"), "portEnv"),
      (
        "portEnv",
        s("BACKEND_TOKEN"),
        "portEnv \"BACKEND_TOKEN\" cannot be used",
      ),
      (
        "portEnv",
        s("ld_preload"),
        "portEnv \"ld_preload\" cannot be used",
      ),
      ("portEnv", s("DYLD_INSERT_LIBRARIES"), "portEnv"),
      ("portEnv", s("MY PORT"), "not a plain"),
      ("name", s("\u{202E}\u{202E}"), "U+202E"),
      ("name", s("api\u{200B}"), "U+200B"),
      ("name", s("   "), "white space"),
      ("name", s(" api"), "white space"),
      ("host", s("banana"), "IP address"),
      ("healthPath", s("health"), "healthPath"),
      (
        "env",
        Value::object(vec![("A", Value::Other("function"))]),
        "env.A must be a string, got a function",
      ),
      ("startTimeout", n(5.0), "unknown option \"startTimeout\""),
    ];
    for (key, value, expected) in cases {
      let err = opts(vec![(key, value.clone())]).unwrap_err();
      assert_eq!(err.code(), "ERR_INVALID_ARG");
      assert!(err.to_string().contains(expected), "{key}={value:?}: {err}");
    }
  }

  #[test]
  fn an_unknown_option_is_named_with_every_known_one() {
    let err = opts(vec![("startTimeout", n(5.0))])
      .unwrap_err()
      .to_string();
    assert!(
      err.starts_with(
        "unknown option \"startTimeout\" in the ProcessManager options; known options: "
      ),
      "{err}"
    );
    for key in [
      "name",
      "startTimeoutMs",
      "stateDir",
      "logs",
      "balancer",
      "logger",
    ] {
      assert!(err.contains(key), "{key}: {err}");
    }
    let nested = opts(vec![("logs", Value::object(vec![("size", n(1.0))]))])
      .unwrap_err()
      .to_string();
    assert!(
      nested.ends_with("in logs; known options: dir, maxBytes, keep"),
      "{nested}"
    );
  }

  #[test]
  fn a_long_name_counts_characters_not_bytes() {
    let cjk: String = "名".repeat(100);
    assert!(opts(vec![("name", s(&cjk))]).is_ok());
    assert!(opts(vec![("name", s(&"名".repeat(101)))]).is_err());
  }

  #[test]
  fn localhost_and_bracketed_ipv6_are_hosts_everywhere() {
    assert_eq!(
      opts(vec![("host", s("localhost"))]).unwrap().host,
      DEFAULT_HOST
    );
    let find = FindArgs::parse(&n(9000.0), &Value::object(vec![("host", s("localhost"))])).unwrap();
    assert_eq!(find.host, Some(DEFAULT_HOST));
    assert_eq!(
      opts(vec![("host", s("[::1]"))]).unwrap().host.to_string(),
      "::1"
    );
    assert!(host(&s(":::::"), "host").is_err());
  }

  #[test]
  fn env_values_become_strings_and_null_leaves_them_out() {
    let o = opts(vec![(
      "env",
      Value::object(vec![
        ("A", n(1.0)),
        ("B", Value::Bool(true)),
        ("C", Value::Null),
      ]),
    )])
    .unwrap();
    assert_eq!(
      o.env,
      vec![("A".into(), "1".into()), ("B".into(), "true".into())]
    );
  }

  #[test]
  fn cleanup_arguments_are_checked_like_the_constructor_options() {
    for (options, expected) in [
      (
        Value::object(vec![("stopTimeoutMs", s("x"))]),
        "stopTimeoutMs",
      ),
      (
        Value::object(vec![("name", n(5.0))]),
        "name must be a string",
      ),
      (s("x"), "must be an object"),
    ] {
      let err = CleanupArgs::parse(&Value::Undefined, &options).unwrap_err();
      assert!(err.to_string().contains(expected), "{err}");
    }
    assert!(CleanupArgs::parse(&Value::Undefined, &Value::Null).is_ok());
  }

  mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
      #[test]
      fn ports_are_accepted_exactly_in_range(p in any::<f64>()) {
        let expected = p.fract() == 0.0 && (1.0..=65535.0).contains(&p);
        prop_assert_eq!(port(&Value::Number(p), "port").is_ok(), expected);
      }

      #[test]
      fn durations_are_accepted_only_when_finite_and_in_range(v in any::<f64>()) {
        let expected = v.is_finite() && (0.0..=MAX_MS).contains(&v);
        prop_assert_eq!(millis(&Value::Number(v), "t", 0.0).is_ok(), expected);
      }

      #[test]
      fn hosts_are_ip_literals_or_localhost(text in ".{0,40}") {
        let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(&text);
        let expected = text == "localhost" || (!text.contains('\0') && bare.parse::<IpAddr>().is_ok());
        prop_assert_eq!(host(&Value::String(text.clone()), "host").is_ok(), expected);
      }

      /// Arbitrary option objects either parse or fail with ERR_INVALID_ARG; nothing panics.
      #[test]
      fn arbitrary_options_parse_or_are_invalid_args(
        keys in proptest::collection::vec(prop_oneof![
          Just("name"), Just("port"), Just("portRange"), Just("host"), Just("env"), Just("args"),
          Just("stopTimeoutMs"), Just("healthPath"), Just("portEnv"), Just("bogus"),
        ], 0..5),
        numbers in proptest::collection::vec(any::<f64>(), 5),
        texts in proptest::collection::vec(".{0,12}", 5),
      ) {
        let fields = keys.iter().enumerate().map(|(i, k)| {
          let v = if i % 2 == 0 { Value::Number(numbers[i]) } else { Value::String(texts[i].clone()) };
          (*k, v)
        }).collect();
        if let Err(e) = Options::parse(&Value::object(fields)) {
          prop_assert_eq!(e.code(), "ERR_INVALID_ARG");
        }
      }
    }
  }
}
