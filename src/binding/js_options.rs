//! The options of `new ProcessManager(options)` as JS sees them: `pm.options`, the options in force with the
//! defaults applied, typed so that the generated `binding.d.ts` says what each value can be.

use bpm::options::{self as opts, InheritEnv, Options, ReadySignal};
use napi::bindgen_prelude::Either;
use napi_derive::napi;
use std::collections::BTreeMap;
use std::time::Duration;

/// A napi string enum for a core enum without data, variant for variant, and its conversion from the core's
/// (an exhaustive match: a variant the core adds or drops fails to build here). Its doc is written as
/// `#[doc = "…"]`: napi's type generation reads a doc comment passed through a macro as a raw string.
macro_rules! string_enum_of {
  ($(#[$($attr:tt)*])* $core:path => $name:ident { $($variant:ident),+ $(,)? }) => {
    $(#[$($attr)*])*
    pub enum $name {
      $($variant),+
    }

    impl From<$core> for $name {
      fn from(value: $core) -> Self {
        use $core as Core;
        match value {
          $(Core::$variant => $name::$variant),+
        }
      }
    }
  };
}

string_enum_of! {
  #[doc = "Scheduling priority of the backend tree (nice 10/5/0/−5/−10; Windows priority classes)."]
  #[napi(string_enum = "kebab-case")]
  opts::Priority => Priority { Low, BelowNormal, Normal, AboveNormal, High }
}

string_enum_of! {
  #[doc = "How the load balancer picks a replica for a new connection."]
  #[napi(string_enum = "kebab-case")]
  opts::Balance => Balance { LeastConnections, RoundRobin }
}

string_enum_of! {
  #[doc = "How the backend gets its socket: it binds `port`, or the manager hands it over as descriptor 3 (`fd`)."]
  #[napi(string_enum = "lowercase")]
  opts::Listen => Listen { Port, Fd }
}

string_enum_of! {
  #[doc = "What ends the backends when the app dies without stopping them."]
  #[napi(string_enum = "lowercase")]
  opts::DeathGuard => DeathGuard { Auto, Guard, None }
}

/// What tells that the backend is ready, besides `{ stdout }`.
#[napi(string_enum = "lowercase")]
pub enum ReadyCheck {
  Http,
  Port,
  Notify,
}

/// Ready at the first stdout or stderr line that matches.
#[napi(object)]
pub struct ReadyStdout {
  pub stdout: String,
}

/// `logs` in force.
#[napi(object)]
pub struct LogsInForce {
  pub dir: String,
  pub max_bytes: f64,
  pub keep: u32,
}

/// `restart` in force.
#[napi(object)]
pub struct RestartInForce {
  pub max_restarts: u32,
  pub window_ms: f64,
  pub initial_delay_ms: f64,
  pub max_delay_ms: f64,
  pub reset_after_ms: f64,
}

/// Hard OS limits applied at spawn (Unix).
#[napi(object)]
pub struct Limits {
  pub open_files: Option<f64>,
  pub core_dumps: Option<bool>,
}

/// `shutdown` in force.
#[napi(object)]
pub struct ShutdownInForce {
  pub http: Option<String>,
  pub stdin: bool,
}

/// `balancer` in force.
#[napi(object)]
pub struct BalancerInForce {
  pub max_connections: u32,
  /// `0`: never.
  pub idle_timeout_ms: f64,
  /// `0`: off.
  pub first_byte_timeout_ms: f64,
}

/// The options in force, defaults applied (`pm.options`; the JS layer keeps the logger).
#[napi(object)]
pub struct OptionsInForce {
  pub name: String,
  pub entry: String,
  pub command: Option<String>,
  pub args: Vec<String>,
  pub cwd: Option<String>,
  pub env: BTreeMap<String, String>,
  pub host: String,
  pub port: u32,
  pub port_range: u32,
  pub port_env: String,
  pub health_path: String,
  pub health_timeout_ms: f64,
  pub start_timeout_ms: f64,
  pub stop_timeout_ms: f64,
  pub state_dir: String,
  pub death_guard: DeathGuard,
  pub ready: Either<ReadyCheck, ReadyStdout>,
  #[napi(ts_type = "false | LogsInForce")]
  pub logs: Either<bool, LogsInForce>,
  #[napi(ts_type = "false | RestartInForce")]
  pub restart: Either<bool, RestartInForce>,
  /// `0`: no watchdog.
  pub health_interval_ms: f64,
  pub unhealthy_threshold: u32,
  /// `0`: no limit.
  pub max_memory_bytes: f64,
  /// `0`: no `stats` events.
  pub stats_interval_ms: f64,
  pub priority: Priority,
  pub limits: Limits,
  pub inherit_env: Either<bool, Vec<String>>,
  pub token: bool,
  pub shutdown: ShutdownInForce,
  pub replicas: u32,
  pub balance: Balance,
  pub listen: Listen,
  pub balancer: BalancerInForce,
}

fn ms(d: Duration) -> f64 {
  d.as_secs_f64() * 1000.0
}

/// `0` for off.
fn ms_or_off(d: Option<Duration>) -> f64 {
  d.map_or(0.0, ms)
}

impl From<&Options> for OptionsInForce {
  fn from(o: &Options) -> Self {
    OptionsInForce {
      name: o.name.clone(),
      entry: o.entry.clone(),
      command: o.command.clone(),
      args: o.args.clone(),
      cwd: o.cwd.clone(),
      env: o.env.iter().cloned().collect(),
      host: o.host.to_string(),
      port: o.port.into(),
      port_range: o.port_range.into(),
      port_env: o.port_env.clone(),
      health_path: o.health_path.clone(),
      health_timeout_ms: ms(o.health_timeout),
      start_timeout_ms: ms(o.start_timeout),
      stop_timeout_ms: ms(o.stop_timeout),
      state_dir: o.state_dir.display().to_string(),
      death_guard: o.death_guard.into(),
      ready: match &o.ready {
        ReadySignal::Http => Either::A(ReadyCheck::Http),
        ReadySignal::Port => Either::A(ReadyCheck::Port),
        ReadySignal::Notify => Either::A(ReadyCheck::Notify),
        ReadySignal::Stdout(regex) => Either::B(ReadyStdout {
          stdout: regex.as_str().into(),
        }),
      },
      logs: o.logs.as_ref().map_or(Either::A(false), |l| {
        Either::B(LogsInForce {
          dir: l.dir.display().to_string(),
          max_bytes: l.max_bytes as f64,
          keep: l.keep,
        })
      }),
      restart: o.restart.as_ref().map_or(Either::A(false), |r| {
        Either::B(RestartInForce {
          max_restarts: r.max_restarts,
          window_ms: ms(r.window),
          initial_delay_ms: ms(r.initial_delay),
          max_delay_ms: ms(r.max_delay),
          reset_after_ms: ms(r.reset_after),
        })
      }),
      health_interval_ms: ms_or_off(o.health_interval),
      unhealthy_threshold: o.unhealthy_threshold,
      max_memory_bytes: o.max_memory_bytes.unwrap_or(0) as f64,
      stats_interval_ms: ms_or_off(o.stats_interval),
      priority: o.priority.into(),
      limits: Limits {
        open_files: o.limits.open_files.map(|n| n as f64),
        core_dumps: o.limits.core_dumps,
      },
      inherit_env: match &o.inherit_env {
        InheritEnv::All => Either::A(true),
        InheritEnv::Only(names) if names.is_empty() => Either::A(false),
        InheritEnv::Only(names) => Either::B(names.clone()),
      },
      token: o.token,
      shutdown: ShutdownInForce {
        http: o.shutdown.http.as_ref().map(|(m, p)| format!("{m} {p}")),
        stdin: o.shutdown.stdin,
      },
      replicas: o.replicas.into(),
      balance: o.balance.into(),
      listen: o.listen.into(),
      balancer: BalancerInForce {
        max_connections: o.balancer.max_connections as u32,
        idle_timeout_ms: ms_or_off(o.balancer.idle_timeout),
        first_byte_timeout_ms: ms_or_off(o.balancer.first_byte_timeout),
      },
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use bpm::options::{
    BalancerInput, Either as Union, OptionsInput, ReadyStdoutInput, ShutdownInput,
  };

  fn in_force(given: OptionsInput) -> OptionsInForce {
    OptionsInForce::from(&Options::try_from(given).unwrap())
  }

  #[test]
  fn the_options_in_force_say_what_was_given_in_the_api_s_words() {
    let o = in_force(OptionsInput {
      restart: Some(Union::A(true)),
      priority: Some("below-normal".into()),
      inherit_env: Some(Union::B(vec!["LANG".into()])),
      shutdown: Some(ShutdownInput {
        http: Some("POST /quit".into()),
        stdin: Some(true),
      }),
      max_memory_bytes: Some(1e9),
      ready: Some(Union::B(ReadyStdoutInput {
        stdout: Some("listening on".into()),
      })),
      logs: Some(Union::A(false)),
      balancer: Some(BalancerInput {
        max_connections: Some(8.0),
        idle_timeout_ms: Some(0.0),
        first_byte_timeout_ms: Some(500.0),
      }),
      ..Default::default()
    });
    let b = &o.balancer;
    assert_eq!(
      (
        b.max_connections,
        b.idle_timeout_ms,
        b.first_byte_timeout_ms
      ),
      (8, 0.0, 500.0)
    );
    let Either::B(r) = &o.restart else {
      panic!("restart is on")
    };
    assert_eq!(
      (r.max_restarts, r.window_ms, r.initial_delay_ms),
      (5, 60_000.0, 100.0)
    );
    assert!(matches!(o.priority, Priority::BelowNormal));
    assert!(matches!(&o.inherit_env, Either::B(names) if names == &["LANG"]));
    assert_eq!(o.shutdown.http.as_deref(), Some("POST /quit"));
    assert!(o.shutdown.stdin);
    assert_eq!((o.max_memory_bytes, o.stats_interval_ms), (1e9, 0.0));
    assert!(matches!(&o.ready, Either::B(r) if r.stdout == "listening on"));
    assert!(matches!(o.logs, Either::A(false)));
  }

  #[test]
  fn off_is_false_or_zero_and_absent_paths_stay_absent() {
    let o = in_force(OptionsInput {
      inherit_env: Some(Union::A(false)),
      ..Default::default()
    });
    assert!(matches!(o.inherit_env, Either::A(false)));
    assert!(matches!(o.restart, Either::A(false)));
    assert!(matches!(o.ready, Either::A(ReadyCheck::Http)));
    assert_eq!((o.command, o.cwd), (None, None));
    assert_eq!((o.health_interval_ms, o.max_memory_bytes), (0.0, 0.0));
    assert!(matches!(o.logs, Either::B(LogsInForce { keep: 5, .. })));
  }
}
