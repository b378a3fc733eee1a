//! The network side: free ports and their reservations, who listens where, and health probes.

pub mod health;
pub mod listeners;
pub mod port;
pub mod reservation;
