//! Who may be sent the token: the socket that took a request's connection must be one of the backend's
//! processes' (docs/design.md §26), checked after the connect and before a byte is written.

use crate::blocking;
use crate::net::health::{Connection, Owner, Secret};
use crate::net::listeners::{self, Holder};
use crate::os::tree;
use std::sync::Arc;

/// The token, to be sent only where a connection was taken by the processes that `roots` names now (the
/// backend's, or every replica's; asked at each request, as restarts change them).
pub fn secret(
  token: Option<String>,
  roots: impl Fn() -> Vec<u32> + Send + Sync + 'static,
) -> Option<Secret> {
  let token = token?;
  let roots = Arc::new(roots);
  let owner: Owner = Arc::new(move |connection| {
    let roots = roots.clone();
    Box::pin(async move { holder(connection, roots()).await })
  });
  Some(Secret { token, owner })
}

async fn holder(connection: Connection, roots: Vec<u32>) -> Holder {
  // The trees' own descriptors are a few /proc reads, done here (a thread for them would cost more than
  // the reads, on the path that decides how fast the app sees its backend); the rarer looks beyond the
  // trees run off the async worker.
  let tree: Vec<u32> = roots
    .iter()
    .flat_map(|&pid| tree::with_descendants(pid))
    .collect();
  match listeners::connection_held_by(connection.local, connection.peer, &tree) {
    Holder::Others => blocking::run(move || beyond_the_trees(connection, &roots))
      .await
      .unwrap_or(Holder::Others),
    held => held,
  }
}

fn beyond_the_trees(connection: Connection, roots: &[u32]) -> Holder {
  // A server that a wrapper started and that left the tree is still in the backend's process group.
  let group: Vec<u32> = roots
    .iter()
    .flat_map(|&pid| tree::group_members(pid))
    .map(|m| m.pid)
    .collect();
  match listeners::connection_held_by(connection.local, connection.peer, &group) {
    Holder::Others => {}
    held => return held,
  }
  // This process's own listener (the balancer's, or the socket every replica is handed with
  // `listen: 'fd'`) is bound before any probe and held for the whole run: whichever of the backend's
  // processes accepted from it, the connection is ours.
  match listeners::listened_at_by(connection.peer, &[std::process::id()]) {
    Holder::Ours => Holder::Ours,
    _ => Holder::Others,
  }
}
