//! backend-process-manager: runs a desktop app's local backend server. The core modules below hold no napi
//! types and are tested with `cargo test`; `binding` is the only place that talks to Node.

pub mod error;
pub mod health;
pub mod identity;
pub mod manager;
pub mod orphans;
pub mod port;
pub mod record;
pub mod signal;
pub mod sockets;
pub mod spawn;
pub mod stop;

// Used by Node through the napi registration, which a test build does not see.
#[cfg_attr(test, allow(dead_code))]
mod binding;
