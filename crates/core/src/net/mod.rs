//! The network side: free ports and their reservations, who listens where, health probes, and the load
//! balancer in front of replicas.

pub mod balancer;
pub mod health;
pub mod listeners;
pub mod port;
pub mod reservation;
