//! What a try does differently per platform, chosen at the module boundary: the `ready: 'notify'` socket
//! (`READY=1`, `STATUS=`, `STOPPING=1`) and the death guard are Unix's; elsewhere they are nothing
//! (`ready: 'notify'` is refused at construction off Unix, and no guard is started).

pub use imp::{start_guard, tell_guard, Notices};

#[cfg(unix)]
mod imp {
  use crate::error::{PmError, Result};
  use crate::lifecycle::context::Context;
  use crate::lifecycle::ready;
  use crate::lifecycle::{Event, Level};
  use crate::net::health;
  use crate::options::ReadySignal;
  use crate::os::spawn::{Child, SpawnSpec};
  use std::sync::Arc;
  use tokio::time::Instant;

  /// The socket a try's backend says `READY=1` on (`ready: 'notify'`), or none.
  pub struct Notices(Option<ready::NotifySocket>);

  impl Notices {
    /// With `ready: 'notify'`: a socket of this try's own, named to the backend in `NOTIFY_SOCKET`.
    pub fn open(signal: &ReadySignal, spec: &mut SpawnSpec) -> Result<Notices> {
      if !matches!(signal, ReadySignal::Notify) {
        return Ok(Notices(None));
      }
      let socket = ready::NotifySocket::open().map_err(|e| PmError::SpawnFailed {
        command: spec.program.clone(),
        reason: format!("no notify socket could be made for it: {e}"),
        problem: None,
        source: Some(Arc::new(e)),
      })?;
      spec.env.retain(|(k, _)| k != "NOTIFY_SOCKET");
      spec
        .env
        .push(("NOTIFY_SOCKET".into(), socket.path().display().to_string()));
      Ok(Notices(Some(socket)))
    }

    /// Ready at the first `READY=1`; `STATUS=` lines meanwhile become `status` events.
    pub async fn wait_ready(
      &self,
      ctx: &Context,
      deadline: Instant,
      replica: Option<usize>,
    ) -> std::result::Result<health::Ready, health::NotReady> {
      let began = Instant::now();
      let not_ready = |why: &str| health::NotReady {
        last: health::ProbeOutcome::Failed(why.to_string()),
        probes: 0,
      };
      let Some(socket) = &self.0 else {
        return Err(not_ready("no notify socket"));
      };
      loop {
        let notices = tokio::select! {
          notices = socket.next() => notices.ok_or_else(|| not_ready("the notify socket failed"))?,
          _ = tokio::time::sleep_until(deadline) => return Err(not_ready("no READY=1 on NOTIFY_SOCKET")),
        };
        // Every notice of the datagram counts: READY=1 often comes with a STATUS= line.
        let ready = notices.contains(&ready::Notice::Ready);
        for notice in notices {
          report(ctx, notice, replica);
        }
        if ready {
          return Ok(health::Ready {
            probes: 0,
            latency: began.elapsed(),
          });
        }
      }
    }

    /// After ready: what the backend still says on its socket, until it exits.
    pub fn keep_reading(self, ctx: &Arc<Context>, child: Arc<Child>, replica: Option<usize>) {
      let Some(socket) = self.0 else {
        return;
      };
      let ctx = Arc::downgrade(ctx);
      tokio::spawn(async move {
        loop {
          let notices = tokio::select! {
            notices = socket.next() => notices,
            _ = child.exited() => None,
          };
          let (Some(notices), Some(ctx)) = (notices, ctx.upgrade()) else {
            return;
          };
          for notice in notices {
            report(&ctx, notice, replica);
          }
        }
      });
    }
  }

  fn report(ctx: &Context, notice: ready::Notice, replica: Option<usize>) {
    match notice {
      ready::Notice::Status(text) => ctx.emit_for(replica, Event::Status { text }),
      ready::Notice::Stopping => ctx.log_for(
        replica,
        Level::Info,
        "the backend says it is stopping (STOPPING=1)",
      ),
      ready::Notice::Ready => {}
    }
  }

  /// Starts the death guard (when the options use one) if it is not running yet, before the backend is
  /// forked: a backend held at its gate meanwhile would hold the guard's spawn up (if the spawn waited for
  /// its `exec`), and that backend's own start would be waiting for the guard.
  pub async fn start_guard(ctx: &Context) {
    if ctx.options.death_guard.uses_guard() {
      crate::os::guard::start_shared().await;
    }
  }

  /// Tells the death guard (when the options use one) about the group of `pid`, held at its gate: the
  /// guard knows it before its program can run.
  pub fn tell_guard(ctx: &Context, pid: u32) {
    if !ctx.options.death_guard.uses_guard() {
      return;
    }
    let told = crate::os::guard::started().is_some_and(|g| g.watch(pid, ctx.deadlines.stop));
    if !told {
      ctx.log(
        Level::Warn,
        "the death guard could not be started or told (is /bin/sh there?); the backend may outlive a killed app",
      );
    }
  }
}

#[cfg(not(unix))]
mod imp {
  use crate::error::Result;
  use crate::lifecycle::context::Context;
  use crate::net::health;
  use crate::options::ReadySignal;
  use crate::os::spawn::{Child, SpawnSpec};
  use std::sync::Arc;
  use tokio::time::Instant;

  /// No notify socket off Unix (`ready: 'notify'` is refused at construction).
  pub struct Notices;

  impl Notices {
    pub fn open(_signal: &ReadySignal, _spec: &mut SpawnSpec) -> Result<Notices> {
      Ok(Notices)
    }

    pub async fn wait_ready(
      &self,
      _ctx: &Context,
      _deadline: Instant,
      _replica: Option<usize>,
    ) -> std::result::Result<health::Ready, health::NotReady> {
      Err(health::NotReady {
        last: health::ProbeOutcome::Failed("ready: 'notify' needs Unix".into()),
        probes: 0,
      })
    }

    pub fn keep_reading(self, _ctx: &Arc<Context>, _child: Arc<Child>, _replica: Option<usize>) {}
  }

  /// No guard off Unix: Windows ends the tree with its job object.
  pub async fn start_guard(_ctx: &Context) {}

  pub fn tell_guard(_ctx: &Context, _pid: u32) {}
}
