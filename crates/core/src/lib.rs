//! The core of backend-process-manager, with no Node in it. It runs a desktop app's local backend server:
//! a free port on every address family, PID records with process identity (so cleanup ends only true
//! orphans), readiness from the backend itself, supervision, and a graceful stop of the whole process tree.
//! The Node-API addon (the root crate of this repository) only converts values; a Rust program (a Tauri
//! app, a CLI) can use this crate directly. The contract is docs/api.md; the reasons are docs/design.md.
//!
//! The small Rust API: [`Manager::new`] with [`Options`] (every field has a default) and an [`Events`]
//! receiver such as [`event_channel`]'s, then [`Manager::start`] and [`Manager::stop`].
//! [`Options`] are taken as built; to have values checked as the JS API checks them (ranges, names, ports,
//! hosts), fill an [`options::OptionsInput`] and convert it with `Options::try_from`.
//!
//! ```
//! # #[cfg(unix)]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use backend_process_manager_core::{event_channel, Event, Manager, Options, Runtime, StartArgs};
//!
//! let dir = std::env::temp_dir().join(format!("bpm-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let options = Options {
//!   name: "doc-example".into(),
//!   // `{port}` is the free port the manager found (and `{host}` its host).
//!   command: Some("python3".into()),
//!   args: ["-m", "http.server", "{port}", "--bind", "{host}"].map(String::from).to_vec(),
//!   health_path: "/".into(),
//!   state_dir: dir.join("state"),
//!   logs: None,
//!   ..Options::default()
//! };
//! let runtime = tokio::runtime::Runtime::new()?;
//! runtime.block_on(async {
//!   let (events, mut stream) = event_channel();
//!   let manager = Manager::new(options, events);
//!   let start = StartArgs { project_root: dir.clone(), is_packaged: false };
//!   let (backend, _) = manager.start(start, Runtime::current()).await?;
//!   // It answered its health check: it serves.
//!   assert!(backend.url.starts_with("http://127.0.0.1:"));
//!   let stopped = manager.stop().await.expect("it was running");
//!   assert_eq!(stopped.pid, backend.pid);
//!   // What happened meanwhile, as events: here, the expected exit.
//!   let mut exited = false;
//!   while let Ok(event) = stream.try_recv() {
//!     exited |= matches!(event, Event::Exit { expected: true, .. });
//!   }
//!   assert!(exited);
//!   Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! # #[cfg(not(unix))]
//! # fn main() {}
//! ```

use std::sync::Arc;

// The modules the addon uses; the small API above is re-exported at the top.
pub mod blocking;
pub mod diagnostics;
pub mod error;
pub mod lifecycle;
pub mod logs;
pub mod net;
pub mod options;
pub mod os;
pub mod state;

pub use error::{PmError, Result};
pub use lifecycle::launch::Runtime;
pub use lifecycle::{BackendInfo, Event, Events, Manager, ReplicaInfo, Stats, StopResult};
pub use options::{Options, StartArgs};
pub use os::spawn::{ExitInfo, Stream};

/// An [`Events`] receiver that forwards every event into a channel, and that channel's receiving end.
/// Output lines are not forwarded (they are in the log files, and they can flood a channel).
pub fn event_channel() -> (Arc<dyn Events>, tokio::sync::mpsc::UnboundedReceiver<Event>) {
  let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
  (Arc::new(Channel(tx)), rx)
}

struct Channel(tokio::sync::mpsc::UnboundedSender<Event>);

impl Events for Channel {
  fn line(&self, _stream: Stream, _text: &str) {}
  fn emit(&self, event: Event) {
    // A receiver that is gone wants no more events.
    let _ = self.0.send(event);
  }
}
