//! What is kept on disk: the state folder, the PID records in it, and what they say about orphans.

pub mod dir;
pub mod orphans;
pub mod record;
