//! backend-process-manager's Node-API addon: it converts JS values into the core's options and calls, and
//! the core's results, events and errors back into JS values. Everything else lives in the core crate
//! (crates/core), which has no napi dependency, so Cargo keeps the boundary.

extern crate backend_process_manager_core as bpm;

// Used by Node through the napi registration, which a test build (`cargo clippy --all-targets`) does not see.
#[cfg_attr(test, allow(dead_code))]
mod binding;
