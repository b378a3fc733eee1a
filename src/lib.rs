//! backend-process-manager: runs a desktop app's local backend server. The core modules hold no napi
//! types and are tested with `cargo test`; `binding` is the only place that talks to Node. The public
//! contract is docs/api.md. Nothing is exported to Rust users: the modules are private, so the compiler
//! reports code that nothing uses.

// Used by Node through the napi registration, which a test build does not see.
#[cfg_attr(test, allow(dead_code))]
mod binding;
mod blocking;
mod diagnostics;
mod error;
mod lifecycle;
mod logs;
mod net;
mod options;
mod os;
mod state;
