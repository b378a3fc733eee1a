//! The one thread that starts every backend (docs/design.md §2, §23). Linux's parent-death signal fires when
//! the *thread* that forked exits, so the forking thread must live as long as the app: one thread, started
//! with the first backend, forks them all and never ends. A start holds it only until the program runs
//! (the spawn returns after `exec`), which the gate delays until the PID record is written (§25): starts
//! take turns for that long, and each returns its child to the runtime, where the exit is awaited.

use std::sync::mpsc::Sender;
use std::sync::Mutex;

type Job = Box<dyn FnOnce() + Send>;

/// Runs `job` on the spawner thread, after the starts queued before it. Fails only when no thread could be
/// made for it.
pub fn run(job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
  static QUEUE: Mutex<Option<Sender<Job>>> = Mutex::new(None);
  let mut queue = QUEUE.lock().unwrap_or_else(|e| e.into_inner());
  let job: Job = Box::new(job);
  let job = match queue.as_ref() {
    Some(tx) => match tx.send(job) {
      Ok(()) => return Ok(()),
      // The thread is gone (it cannot panic: every job runs under catch_unwind): a new one takes over.
      Err(returned) => returned.0,
    },
    None => job,
  };
  let (tx, rx) = std::sync::mpsc::channel::<Job>();
  std::thread::Builder::new()
    .name("bpm-spawner".into())
    .stack_size(crate::blocking::THREAD_STACK)
    .spawn(move || {
      for job in rx {
        // A panicking start must not end the thread: its exit would signal every running backend.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
      }
    })?;
  let _ = tx.send(job);
  *queue = Some(tx);
  Ok(())
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn every_job_runs_on_the_same_thread_even_after_one_panicked() {
    let (tx, rx) = std::sync::mpsc::channel();
    for panics in [false, true, false] {
      let tx = tx.clone();
      run(move || {
        let _ = tx.send(std::thread::current().id());
        if panics {
          panic!("a failing start");
        }
      })
      .unwrap();
    }
    let ids: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
  }
}
