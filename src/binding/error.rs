//! Core errors become real JS errors here, in one place (like node-rs's `map_error`): an `Error` with the
//! API's `code`, its fields, and the OS error underneath as `cause`. No panic reaches JS as anything but
//! `ERR_INTERNAL` (docs/design.md §14).

use bpm::error::{catch_panic, catch_panic_async, Field, PmError, Result};
use napi::bindgen_prelude::{Object, PromiseRaw, ToNapiValue};
use napi::{Env, JsValue, Status};
use std::future::Future;

/// The JS `Error` for a core error, as a napi error that throws (or rejects with) exactly that object.
pub fn to_js(env: &Env, err: &PmError) -> napi::Error {
  build(env, err).unwrap_or_else(|e| e)
}

fn build(env: &Env, err: &PmError) -> napi::Result<napi::Error> {
  let mut error = env.create_error(napi::Error::new(Status::GenericFailure, err.to_string()))?;
  error.set("code", err.code())?;
  for (name, field) in err.fields() {
    match field {
      Field::Number(n) => error.set(name, n)?,
      Field::Text(t) => error.set(name, t)?,
      Field::Lines(lines) => error.set(name, lines)?,
      Field::Null => error.set(name, napi::bindgen_prelude::Null)?,
    }
  }
  if let Some(os) = err.os_cause() {
    let mut cause = env.create_error(napi::Error::new(Status::GenericFailure, os.to_string()))?;
    cause.set("code", format!("{:?}", os.kind()))?;
    if let Some(errno) = os.raw_os_error() {
      cause.set("errno", errno)?;
    }
    error.set("cause", cause)?;
  }
  Ok(napi::Error::from(error.to_unknown()))
}

/// Runs a synchronous core call; its error (or panic) is thrown as the API's JS error.
pub fn sync<T>(env: &Env, work: impl FnOnce() -> Result<T>) -> napi::Result<T> {
  catch_panic(work).map_err(|err| to_js(env, &err))
}

/// Runs a core future on the async runtime and settles a promise with its result; its error (or panic)
/// rejects the promise with the API's JS error. `convert` makes the JS value on the JS thread.
pub fn promise<'env, T, V>(
  env: &'env Env,
  work: impl Future<Output = Result<T>> + Send + 'static,
  convert: impl FnOnce(T) -> V + 'static,
) -> napi::Result<PromiseRaw<'env, V>>
where
  T: Send + 'static,
  V: ToNapiValue + 'static,
{
  let guarded = async move { Ok(catch_panic_async(work).await) };
  env.spawn_future_with_callback(guarded, move |env, result: Result<T>| match result {
    Ok(value) => Ok(convert(value)),
    Err(err) => Err(to_js(env, &err)),
  })
}

/// Like `promise`, for a wait whose end the app is waiting to see (`waitForBackendReady`): the future runs
/// alone on a thread of its own, on a runtime of its own (so it may also sleep there, see
/// `health::Watch::own_thread`), and settles the promise from that thread. Its end reaches JS in one
/// hand-over between threads (to the JS thread) instead of two (a runtime worker, then the JS thread).
pub fn promise_on_own_thread<'env, T, V, F>(
  env: &'env Env,
  work: impl FnOnce() -> F + Send + 'static,
  convert: impl FnOnce(T) -> V + Send + 'static,
) -> napi::Result<Object<'env>>
where
  F: Future<Output = Result<T>> + Send + 'static,
  T: Send + 'static,
  V: ToNapiValue + 'static,
{
  let (deferred, promise) = env.create_deferred()?;
  std::thread::Builder::new()
    .name("bpm-wait".into())
    .stack_size(bpm::blocking::THREAD_STACK)
    .spawn(move || {
      // Its runtime is made here, off the JS thread.
      let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PmError::Internal(format!("no runtime for the wait: {e}")))
        .and_then(|runtime| runtime.block_on(catch_panic_async(work())));
      deferred.resolve(move |env| match result {
        Ok(value) => Ok(convert(value)),
        Err(err) => Err(to_js(&env, &err)),
      });
    })
    .map_err(|e| {
      to_js(
        env,
        &PmError::Internal(format!("no thread for the wait: {e}")),
      )
    })?;
  Ok(promise)
}

/// A promise of blocking core work (see `blocking`): run on a thread of its own, settled like `promise`.
pub fn blocking_promise<'env, T, V>(
  env: &'env Env,
  work: impl FnOnce() -> Result<T> + Send + 'static,
  convert: impl FnOnce(T) -> V + 'static,
) -> napi::Result<PromiseRaw<'env, V>>
where
  T: Send + 'static,
  V: ToNapiValue + 'static,
{
  promise(env, async move { bpm::blocking::run(work).await? }, convert)
}

/// Checks the arguments on the JS thread (a bad one throws there), then runs the blocking work with what
/// the check made, like `blocking_promise`.
pub fn checked_blocking_promise<'env, A, T, V>(
  env: &'env Env,
  check: impl FnOnce() -> Result<A>,
  work: impl FnOnce(A) -> Result<T> + Send + 'static,
  convert: impl FnOnce(T) -> V + 'static,
) -> napi::Result<PromiseRaw<'env, V>>
where
  A: Send + 'static,
  T: Send + 'static,
  V: ToNapiValue + 'static,
{
  let args = sync(env, check)?;
  blocking_promise(env, move || work(args), convert)
}
