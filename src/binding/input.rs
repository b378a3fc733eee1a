//! JS arguments in: each options object is a `#[napi(object)]` struct (so `binding.d.ts` types it) declared
//! with `js_object!`, which also gives it its key set and its reading from JS. Reading refuses, with
//! `ERR_INVALID_ARG` naming the key path (`restart.maxRestarts`), what napi's own conversion would let
//! through or blur: a key the struct does not have, and a value of the wrong JS type (napi ignores the
//! first, and reports the second without the key, or not at all inside an `Either`). Numbers stay `f64`, so
//! the core refuses 1.5 instead of seeing 1. What is read is moved, field for field, into the core's input
//! type, whose one `TryFrom` (or check function) judges the values (docs/design.md §22).

use bpm::error::{PmError, Result};
use bpm::options::{self, EnvValue};
use napi::bindgen_prelude::{Array, Either, FromNapiValue, Object, TypeName, ValidateNapiValue};
use napi::{sys, JsValue, Unknown, ValueType};
use napi_derive::napi;

/// The JS type of a value, as the messages speak of it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
  Undefined,
  Null,
  Bool,
  Number,
  String,
  Array,
  Object,
  Function,
  Symbol,
  Other,
}

fn read_failed(at: &str) -> impl FnOnce(napi::Error) -> PmError + '_ {
  move |e| PmError::invalid(format!("{at} could not be read: {}", e.reason))
}

fn kind_of(value: &Unknown, at: &str) -> Result<Kind> {
  Ok(match value.get_type().map_err(read_failed(at))? {
    ValueType::Undefined => Kind::Undefined,
    ValueType::Null => Kind::Null,
    ValueType::Boolean => Kind::Bool,
    ValueType::Number => Kind::Number,
    ValueType::String => Kind::String,
    ValueType::Object if value.is_array().map_err(read_failed(at))? => Kind::Array,
    ValueType::Object => Kind::Object,
    ValueType::Function => Kind::Function,
    ValueType::Symbol => Kind::Symbol,
    _ => Kind::Other,
  })
}

/// A value as a message shows it: scalars as JS prints them, strings quoted, the rest by their type.
fn describe(value: Unknown, kind: Kind) -> String {
  let scalar = match kind {
    Kind::Undefined => Some("undefined".into()),
    Kind::Null => Some("null".into()),
    Kind::Bool => bool::from_unknown(value).ok().map(|b| b.to_string()),
    Kind::Number => f64::from_unknown(value).ok().map(options::js_number),
    Kind::String => String::from_unknown(value).ok().map(|s| format!("{s:?}")),
    _ => None,
  };
  scalar.unwrap_or_else(|| {
    match kind {
      Kind::Array => "an array",
      Kind::Object => "an object",
      Kind::Function => "a function",
      Kind::Symbol => "a symbol",
      _ => "a bigint or other value",
    }
    .into()
  })
}

/// `a`, `a or b`, `a, b or c`.
fn either_of(words: &[&str]) -> String {
  match words.split_last() {
    None => String::new(),
    Some((last, [])) => (*last).into(),
    Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
  }
}

/// The key path of `key` inside the object at `at` (`""`: an argument's own options object).
fn child(at: &str, key: &str) -> String {
  if at.is_empty() {
    key.into()
  } else {
    format!("{at}.{key}")
  }
}

/// napi's JS name of a Rust field: `health_timeout_ms` → `healthTimeoutMs`.
fn camel(field: &str) -> String {
  let mut out = String::with_capacity(field.len());
  let mut upper = false;
  for c in field.chars() {
    match c {
      '_' => upper = true,
      c if upper => {
        out.push(c.to_ascii_uppercase());
        upper = false;
      }
      c => out.push(c),
    }
  }
  out
}

/// A Rust value read from a JS one of the right type.
pub trait FromJs: Sized {
  /// What a value must be, in words (`"a string"`; `true` and `false` are two).
  fn expected(words: &mut Vec<&'static str>);
  /// What an array of these must be, in words.
  const ARRAY: &'static str = "an array";
  fn accepts(kind: Kind) -> bool;
  /// Reads a value of a kind `accepts` took.
  fn convert(value: Unknown, kind: Kind, at: &str) -> Result<Self>;
  /// How messages call the value at `at`.
  fn called(at: &str) -> String {
    at.into()
  }

  /// Reads the value at `at`, refusing a value of another JS type.
  fn from_js(value: Unknown, at: &str) -> Result<Self> {
    let kind = kind_of(&value, at)?;
    if !Self::accepts(kind) {
      let mut words = Vec::new();
      Self::expected(&mut words);
      return Err(options::wrong(
        &Self::called(at),
        &either_of(&words),
        &describe(value, kind),
      ));
    }
    Self::convert(value, kind, at)
  }
}

macro_rules! scalar {
  ($ty:ty, $kind:ident, [$($word:literal),+], $array:literal) => {
    impl FromJs for $ty {
      fn expected(words: &mut Vec<&'static str>) {
        words.extend([$($word),+]);
      }
      const ARRAY: &'static str = $array;
      fn accepts(kind: Kind) -> bool {
        kind == Kind::$kind
      }
      fn convert(value: Unknown, _: Kind, at: &str) -> Result<Self> {
        <$ty>::from_unknown(value).map_err(read_failed(at))
      }
    }
  };
}

scalar!(String, String, ["a string"], "an array of strings");
scalar!(f64, Number, ["a number"], "an array of numbers");
scalar!(bool, Bool, ["true", "false"], "an array of booleans");

impl<T: FromJs> FromJs for Vec<T> {
  fn expected(words: &mut Vec<&'static str>) {
    words.push(T::ARRAY);
  }
  fn accepts(kind: Kind) -> bool {
    kind == Kind::Array
  }
  fn convert(value: Unknown, _: Kind, at: &str) -> Result<Self> {
    let array = Array::from_unknown(value).map_err(read_failed(at))?;
    (0..array.len())
      .map(|i| {
        let item = array
          .get::<Unknown>(i)
          .map_err(read_failed(at))?
          .ok_or_else(|| PmError::invalid(format!("{at} changed while it was read")))?;
        T::from_js(item, &format!("{at}[{i}]"))
      })
      .collect()
  }
}

impl<A: FromJs, B: FromJs> FromJs for Either<A, B> {
  fn expected(words: &mut Vec<&'static str>) {
    A::expected(words);
    B::expected(words);
  }
  fn accepts(kind: Kind) -> bool {
    A::accepts(kind) || B::accepts(kind)
  }
  fn convert(value: Unknown, kind: Kind, at: &str) -> Result<Self> {
    if A::accepts(kind) {
      A::convert(value, kind, at).map(Either::A)
    } else {
      B::convert(value, kind, at).map(Either::B)
    }
  }
}

fn object<'env>(value: Unknown<'env>, at: &str) -> Result<Object<'env>> {
  Object::from_unknown(value).map_err(read_failed(at))
}

/// The value of `key` among the object's own `keys`, or `None` when it is absent or undefined (or null,
/// where `nullable`).
pub fn field<T: FromJs>(
  object: &Object,
  keys: &[String],
  key: &str,
  nullable: bool,
  at: &str,
) -> Result<Option<T>> {
  let path = child(at, key);
  if !keys.iter().any(|k| k == key) {
    return Ok(None);
  }
  let Some(value) = object.get::<Unknown>(key).map_err(read_failed(&path))? else {
    return Ok(None);
  };
  if nullable && kind_of(&value, &path)? == Kind::Null {
    return Ok(None);
  }
  T::from_js(value, &path).map(Some)
}

/// The object's own enumerable keys (what JS's `Object.keys` gives), after refusing the first of them,
/// with a value, that is not one of `fields` (Rust names) or `also` (keys the JS layer keeps for itself);
/// `what` names the object.
pub fn own_known_keys(
  object: &Object,
  fields: &[&str],
  also: &[&str],
  what: &str,
) -> Result<Vec<String>> {
  let known: Vec<String> = fields
    .iter()
    .map(|f| camel(f))
    .chain(also.iter().map(|k| k.to_string()))
    .collect();
  let keys = Object::keys(object).map_err(read_failed(what))?;
  for key in &keys {
    // Like an absent key, an undefined one (`{ ...rest }` of a key the JS layer took) is no option.
    if !known.contains(key)
      && object
        .get::<Unknown>(key)
        .map_err(read_failed(what))?
        .is_some()
    {
      return Err(PmError::invalid(format!(
        "unknown option {key:?} in {what}; known options: {}",
        known.join(", ")
      )));
    }
  }
  Ok(keys)
}

/// A value moved into the core's input type of the same shape.
pub trait IntoCore {
  type Core;
  fn into_core(self) -> Self::Core;
}

macro_rules! same_in_core {
  ($($ty:ty),+) => {
    $(impl IntoCore for $ty {
      type Core = $ty;
      fn into_core(self) -> $ty {
        self
      }
    })+
  };
}

same_in_core!(String, f64, bool);

impl<T: IntoCore> IntoCore for Option<T> {
  type Core = Option<T::Core>;
  fn into_core(self) -> Self::Core {
    self.map(T::into_core)
  }
}

impl<T: IntoCore> IntoCore for Vec<T> {
  type Core = Vec<T::Core>;
  fn into_core(self) -> Self::Core {
    self.into_iter().map(T::into_core).collect()
  }
}

impl<A: IntoCore, B: IntoCore> IntoCore for Either<A, B> {
  type Core = options::Either<A::Core, B::Core>;
  fn into_core(self) -> Self::Core {
    match self {
      Either::A(a) => options::Either::A(a.into_core()),
      Either::B(b) => options::Either::B(b.into_core()),
    }
  }
}

/// `env`: variable names and values in the order given; numbers, booleans, null and undefined are the
/// core's to turn into text or leave out.
pub struct EnvVars(Vec<(String, EnvValue)>);

impl FromJs for EnvVars {
  fn expected(words: &mut Vec<&'static str>) {
    words.push("an object of strings");
  }
  fn accepts(kind: Kind) -> bool {
    kind == Kind::Object
  }
  fn convert(value: Unknown, _: Kind, at: &str) -> Result<Self> {
    let object = object(value, at)?;
    let mut vars = Vec::new();
    for key in Object::keys(&object).map_err(read_failed(at))? {
      let path = child(at, &key);
      let value = match object.get::<Unknown>(&key).map_err(read_failed(&path))? {
        None => EnvValue::Unset,
        Some(v) => match kind_of(&v, &path)? {
          Kind::Null => EnvValue::Unset,
          Kind::Bool => EnvValue::Bool(bool::convert(v, Kind::Bool, &path)?),
          Kind::Number => EnvValue::Number(f64::convert(v, Kind::Number, &path)?),
          _ => EnvValue::Text(String::from_js(v, &path)?),
        },
      };
      vars.push((key, value));
    }
    Ok(EnvVars(vars))
  }
}

impl IntoCore for EnvVars {
  type Core = Vec<(String, EnvValue)>;
  fn into_core(self) -> Self::Core {
    self.0
  }
}

// napi's derive of the structs below wants these; the structs are read by `FromJs`, not by napi.
impl TypeName for EnvVars {
  fn type_name() -> &'static str {
    "Record<string, string | number | boolean | null | undefined>"
  }
  fn value_type() -> ValueType {
    ValueType::Object
  }
}

impl ValidateNapiValue for EnvVars {}

impl FromNapiValue for EnvVars {
  unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
    // SAFETY: `env` and `value` come from napi for this call, which is all `Unknown` holds.
    let value = unsafe { Unknown::from_napi_value(env, value)? };
    Self::from_js(value, "env").map_err(|e| napi::Error::from_reason(e.to_string()))
  }
}

/// An options argument: `undefined` and `null` are `{}` (every option takes its default).
pub fn options<T: FromJs + Default>(value: Unknown, at: &str) -> Result<T> {
  match kind_of(&value, at)? {
    Kind::Undefined | Kind::Null => Ok(T::default()),
    _ => T::from_js(value, at),
  }
}

/// An optional argument: `undefined` is `None`.
pub fn optional<T: FromJs>(value: Unknown, at: &str) -> Result<Option<T>> {
  match kind_of(&value, at)? {
    Kind::Undefined => Ok(None),
    _ => T::from_js(value, at).map(Some),
  }
}

/// An optional argument that may also be `null`.
pub fn nullable<T: FromJs>(value: Unknown, at: &str) -> Result<Option<T>> {
  match kind_of(&value, at)? {
    Kind::Undefined | Kind::Null => Ok(None),
    _ => T::from_js(value, at).map(Some),
  }
}

/// Declares an options object: the `#[napi(object)]` struct (every field optional), its reading from JS
/// (one key-set check, then each field by its type) and its move into `$core`, the core's input type of
/// the same fields (the compiler keeps the two field lists equal). `what` names the object in messages
/// when it is an argument of its own; nested, its key path does. A field marked `| null` takes `null` as
/// absent. `also` lists keys the JS layer keeps for itself: accepted (and named among the known ones), not
/// read. Docs are written `#[doc = "…"]`: napi's type generation reads a `///` passed through a macro
/// as a raw string.
macro_rules! js_object {
  (
    $(#[$attr:meta])*
    $name:ident => $core:path, $what:literal $(, also [$($also:literal),+])? {
      $($(#[$field_attr:meta])* $field:ident: $ty:ty $(| $null:ident)?),+ $(,)?
    }
  ) => {
    $(#[$attr])*
    #[napi(object, object_to_js = false)]
    #[derive(Default)]
    pub struct $name {
      $($(#[$field_attr])* pub $field: Option<$ty>,)+
    }

    impl $name {
      const FIELDS: &'static [&'static str] = &[$(stringify!($field)),+];
      const ALSO: &'static [&'static str] = &[$($($also),+)?];
    }

    impl FromJs for $name {
      fn expected(words: &mut Vec<&'static str>) {
        words.push("an object");
      }
      fn accepts(kind: Kind) -> bool {
        kind == Kind::Object
      }
      fn called(at: &str) -> String {
        if at.is_empty() { $what.into() } else { at.into() }
      }
      fn convert(value: Unknown, _: Kind, at: &str) -> Result<Self> {
        let object = object(value, at)?;
        let keys = own_known_keys(&object, Self::FIELDS, Self::ALSO, &Self::called(at))?;
        Ok($name {
          $($field: field(
            &object,
            &keys,
            &camel(stringify!($field)),
            js_object!(@nullable $($null)?),
            at,
          )?,)+
        })
      }
    }

    impl IntoCore for $name {
      type Core = $core;
      fn into_core(self) -> $core {
        $core { $($field: self.$field.into_core(),)+ }
      }
    }
  };
  (@nullable null) => { true };
  (@nullable) => { false };
}

js_object! {
  #[doc = "The options of `new ProcessManager(options)` (docs/api.md); `logger` stays in the JS layer."]
  ProcessManagerOptions => options::OptionsInput, "the ProcessManager options", also ["logger"] {
    #[doc = "Names the PID records, the log prefix and the state folder entry. Default `'backend'`."]
    name: String,
    #[doc = "Script run by the Node runtime, relative to `projectRoot`. Default `'backend-nodejs/server.js'`."]
    entry: String,
    #[doc = "Executable to run instead of the Node runtime (Python, a Go binary, …); then `entry` is not used."]
    command: String,
    #[doc = "Arguments; every `{port}` and `{host}` is replaced by the chosen values. Default `[]`."]
    args: Vec<String>,
    #[doc = "Working directory of the backend. Default: `projectRoot`."]
    cwd: String,
    #[napi(ts_type = "Record<string, string | number | boolean | null | undefined>")]
    #[doc = "Extra environment, merged over `process.env`. Default `{}`."]
    env: EnvVars,
    #[doc = "Address the backend listens on and is probed at: an IP address, or `'localhost'` for 127.0.0.1. Default `'127.0.0.1'`."]
    host: String,
    #[doc = "Preferred port. Default `8000`."]
    port: f64,
    #[doc = "How many ports after `port` may be tried. Default `100`."]
    port_range: f64,
    #[doc = "Environment variable that carries the port (`HOST` carries the host). Default `'PORT'`."]
    port_env: String,
    #[doc = "HTTP path probed for readiness; any 2xx answer is healthy. Default `'/health'`."]
    health_path: String,
    #[doc = "Timeout of one health probe. Default `1000`."]
    health_timeout_ms: f64,
    #[doc = "Deadline for the backend to become healthy. Default `10000`."]
    start_timeout_ms: f64,
    #[doc = "Grace period after the polite stop request before the force kill. Default `5000`."]
    stop_timeout_ms: f64,
    #[doc = "Folder holding the PID records. Default: a per-user state folder (see `defaultStateDir()`)."]
    state_dir: String,
    #[doc = "The backend's stdout and stderr and the manager's own lines in `<dir>/<name>.log`, rotated by size, secrets redacted. `false`: no files. Default on: `{ dir: <stateDir>/logs with a stateDir, else defaultLogDir(), maxBytes: 10485760, keep: 5 }`. In Electron pass `app.getPath('logs')` as `dir`."]
    logs: Either<bool, LogOptions>,
    #[napi(ts_type = "ReadyCheck | ReadyStdout")]
    #[doc = "What tells that the backend is ready. Default `'http'`."]
    ready: Either<String, ReadyStdoutOptions>,
    #[napi(ts_type = "DeathGuard")]
    #[doc = "What ends the backends when the app dies without stopping them. Default `'auto'`."]
    death_guard: String,
    #[doc = "Start the backend again after an unexpected exit (or a watchdog/memory verdict), with a backoff. Default `false`."]
    restart: Either<bool, RestartPolicy>,
    #[doc = "While running, probe health this often (the watchdog). `0`: off (default)."]
    health_interval_ms: f64,
    #[doc = "Consecutive failed watchdog probes that make the backend unhealthy. Default `3`."]
    unhealthy_threshold: f64,
    #[doc = "Resident memory of the whole tree above which it counts as failed (reason `memory`). `0`: off (default)."]
    max_memory_bytes: f64,
    #[doc = "Emit `stats` this often. `0`: off (default)."]
    stats_interval_ms: f64,
    #[napi(ts_type = "Priority")]
    #[doc = "Scheduling priority of the backend tree (nice 10/5/0/−5/−10; Windows priority classes). Default `'normal'`."]
    priority: String,
    #[doc = "Hard OS limits applied at spawn (Unix)."]
    limits: LimitsOptions,
    #[doc = "`false`: only `env` plus PATH, HOME/USERPROFILE, TMPDIR/TEMP/TMP, LANG, SystemRoot; an array: those names too. Default `true`."]
    inherit_env: Either<bool, Vec<String>>,
    #[doc = "A fresh 32-byte secret per start in `BACKEND_TOKEN`, sent by every probe as a bearer token, returned as `BackendInfo.token`. Default `false`."]
    token: bool,
    #[doc = "Polite stop requests tried before the signal: an HTTP request (`'POST /shutdown'`), closing stdin."]
    shutdown: ShutdownOptions,
    #[doc = "Processes of the backend behind the public port (1–64). Default 1. With more, `restart` defaults to on."]
    replicas: f64,
    #[napi(ts_type = "Balance")]
    #[doc = "How the load balancer picks a replica for a new connection. Default `'least-connections'`."]
    balance: String,
    #[napi(ts_type = "Listen")]
    #[doc = "`'fd'`: the manager binds the public port and hands the socket over as descriptor 3 (`LISTEN_FDS=1`; Unix). Default `'port'`."]
    listen: String,
    #[doc = "What clients can make the load balancer hold; missing keys take their defaults."]
    balancer: BalancerLimits,
  }
}

js_object! {
  #[doc = "`logs`: where the log files go, how large one grows, how many rotated ones are kept."]
  LogOptions => options::LogsInput, "the logs option" {
    #[doc = "Folder of the log files (created 0700; must be this user's and not writable by others)."]
    dir: String,
    #[doc = "`<name>.log` is rotated before it would pass this size (at least 4096). @default 10485760"]
    max_bytes: f64,
    #[doc = "Rotated files kept besides `<name>.log` (0–100). @default 5"]
    keep: f64,
  }
}

js_object! {
  #[doc = "`ready: { stdout }`: ready at the first output line that matches the pattern."]
  ReadyStdoutOptions => options::ReadyStdoutInput, "the ready options" {
    stdout: String,
  }
}

js_object! {
  #[doc = "`restart`: how often and how soon a backend that exits is started again."]
  RestartPolicy => options::RestartInput, "the restart options" {
    #[doc = "More restarts than this within `windowMs` and the backend stays down (`failed`). Default 5."]
    max_restarts: f64,
    #[doc = "Default 60000."]
    window_ms: f64,
    #[doc = "The first delay; it doubles up to `maxDelayMs`. Default 100."]
    initial_delay_ms: f64,
    #[doc = "Default 10000."]
    max_delay_ms: f64,
    #[doc = "Once healthy this long, the delay starts over. Default 30000."]
    reset_after_ms: f64,
  }
}

js_object! {
  #[doc = "`limits`: hard OS limits applied at spawn (Unix)."]
  LimitsOptions => options::LimitsInput, "the limits options" {
    open_files: f64,
    core_dumps: bool,
  }
}

js_object! {
  #[doc = "`shutdown`: polite stop requests tried before the signal."]
  ShutdownOptions => options::ShutdownInput, "the shutdown options" {
    http: String,
    stdin: bool,
  }
}

js_object! {
  #[doc = "`balancer`: what the load balancer lets clients hold."]
  BalancerLimits => options::BalancerInput, "the balancer options" {
    #[doc = "Client connections at once (each costs the app two descriptors); more wait in the kernel's queue. Default: a quarter of the app's open-file limit, at most 10000."]
    max_connections: f64,
    #[doc = "A connection with no byte either way this long is closed. `0`: never. Default 300000."]
    idle_timeout_ms: f64,
    #[doc = "A replica that sends no byte of an answer this long after a request is taken out as frozen until a probe passes. `0`: off (default)."]
    first_byte_timeout_ms: f64,
  }
}

js_object! {
  #[doc = "The options of `findAvailablePort(startPort, options)`."]
  FindPortOptions => options::FindInput, "the findAvailablePort options" {
    #[doc = "Last port to try. Default `startPort + 100` (at most 65535)."]
    end_port: f64,
    #[doc = "Ports never to return."]
    exclude: Vec<f64>,
    #[doc = "Check only this address instead of all four (127.0.0.1, ::1, 0.0.0.0, ::)."]
    host: String,
  }
}

js_object! {
  #[doc = "The options of `cleanupRecords(stateDir, options)`."]
  CleanupOptions => options::CleanupInput, "the cleanupRecords options" {
    name: String,
    stop_timeout_ms: f64,
  }
}

js_object! {
  #[doc = "The options of `stopRecord(file, options)`."]
  StopRecordOptions => options::StopRecordInput, "the stopRecord options" {
    stop_timeout_ms: f64,
  }
}

js_object! {
  #[doc = "The options of `stopSync` and `stopAllSync`."]
  SyncStopOptions => options::SyncStopInput, "the stopSync options" {
    #[doc = "How long the polite stop may take before the force kill of the whole tree, 0–60000. @default 1000"]
    timeout_ms: f64,
  }
}

js_object! {
  #[doc = "The options of `pm.logs(options)` and `readLogs(dir, name, options)`."]
  LogsOptions => options::LogsArgsInput, "the logs options" {
    #[doc = "@default 200"]
    lines: f64,
    #[napi(ts_type = "'out' | 'err' | 'pm'")]
    stream: String,
  }
}

js_object! {
  #[doc = "The folders a diagnostics archive takes records and logs from."]
  DiagnosticsFolders => options::FoldersInput, "the diagnostics folders" {
    state_dir: String,
    log_dir: String,
  }
}

js_object! {
  #[doc = "What a group checks of each member."]
  GroupEntry => options::group::MemberInput, "a group member" {
    name: String,
    #[napi(ts_type = "string[] | null")]
    depends_on: Vec<String> | null,
  }
}

/// An options argument read and moved into the core's input type.
pub fn core_options<T: FromJs + Default + IntoCore>(value: Unknown, at: &str) -> Result<T::Core> {
  options::<T>(value, at).map(T::into_core)
}

/// An array item that should be an options object; `None` when it is not an object (the core says which).
pub fn options_object<T: FromJs + IntoCore>(value: Unknown, at: &str) -> Result<Option<T::Core>> {
  match kind_of(&value, at)? {
    Kind::Object => T::from_js(value, at).map(|t| Some(t.into_core())),
    _ => Ok(None),
  }
}
