//! The threads that start every backend (docs/design.md §2, §23). Linux's parent-death signal fires when the
//! *thread* that forked exits, so a forking thread must live as long as the app: the spawner threads are
//! started with the first backend, fork them all and never end. A start holds its thread until the program
//! runs (the spawn returns after `exec`), which the gate delays until the PID record is written (§25); with
//! `SPAWNERS` threads, that many starts can wait for their records at once (two independent backends, or
//! two replicas, are then started side by side). Each start returns its child to the runtime, where the
//! exit is awaited: the number of threads does not grow with the backends.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// Spawner threads, all started together with the first backend.
const SPAWNERS: usize = 2;

/// Runs `job` on a free spawner thread, in the order of the queue. Fails only when no thread could be
/// made for it.
pub fn run(job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
  static QUEUE: Mutex<Option<Sender<Job>>> = Mutex::new(None);
  let mut queue = QUEUE.lock().unwrap_or_else(|e| e.into_inner());
  let job: Job = Box::new(job);
  let job = match queue.as_ref() {
    Some(tx) => match tx.send(job) {
      Ok(()) => return Ok(()),
      // Every thread is gone (none can panic: each job runs under catch_unwind): new ones take over.
      Err(returned) => returned.0,
    },
    None => job,
  };
  let (tx, rx) = std::sync::mpsc::channel::<Job>();
  let rx = Arc::new(Mutex::new(rx));
  let mut started = 0;
  for _ in 0..SPAWNERS {
    let rx = rx.clone();
    let thread = std::thread::Builder::new()
      .name("bpm-spawner".into())
      .stack_size(crate::blocking::THREAD_STACK)
      .spawn(move || serve(&rx));
    if thread.is_ok() {
      started += 1;
    }
  }
  if started == 0 {
    return Err(std::io::Error::other("no spawner thread could be started"));
  }
  let _ = tx.send(job);
  *queue = Some(tx);
  Ok(())
}

fn serve(queue: &Mutex<Receiver<Job>>) {
  loop {
    // One thread waits for the next job at a time; the others are busy or wait for the lock.
    let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
    let Ok(job) = job else {
      return;
    };
    // A panicking start must not end the thread: its exit would signal the backends it forked.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::collections::HashSet;

  #[test]
  fn jobs_run_on_the_same_few_threads_even_after_one_panicked() {
    let (tx, rx) = std::sync::mpsc::channel();
    for panics in [false, true, false, false, false] {
      let tx = tx.clone();
      run(move || {
        let _ = tx.send(std::thread::current().id());
        if panics {
          panic!("a failing start");
        }
      })
      .unwrap();
    }
    let ids: HashSet<_> = (0..5).map(|_| rx.recv().unwrap()).collect();
    assert!(ids.len() <= SPAWNERS, "{ids:?}");
  }

  #[test]
  fn a_start_that_waits_does_not_hold_up_the_next() {
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    // The first job waits (a child held at its gate) until the second has run.
    run(move || {
      let _ = hold_rx.recv();
    })
    .unwrap();
    run(move || {
      let _ = done_tx.send(());
      let _ = hold_tx.send(());
    })
    .unwrap();
    done_rx
      .recv_timeout(std::time::Duration::from_secs(10))
      .expect("the second start ran while the first waited");
  }
}
