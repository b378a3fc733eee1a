//! The operating system, through crates: processes (facts, trees, signals), spawning and stopping. Each
//! concept is one module; a module's per-OS parts sit behind `cfg` with the same function names.

#[cfg(unix)]
pub mod exec_format;
pub mod guard;
pub mod process;
pub mod signal;
pub mod spawn;
pub mod spawn_problem;
pub mod stop;
pub mod tree;
#[cfg(windows)]
pub(crate) mod win;
