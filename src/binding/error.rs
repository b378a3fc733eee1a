//! Core errors become real JS errors here, in one place (like node-rs's `map_error`): an `Error` with the
//! API's `code`, its fields, and the OS error underneath as `cause`. No panic reaches JS as anything but
//! `ERR_INTERNAL` (docs/design.md §14).

use crate::error::{catch_panic, catch_panic_async, Field, PmError, Result};
use napi::bindgen_prelude::{PromiseRaw, ToNapiValue};
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
  promise(
    env,
    async move { crate::blocking::run(work).await? },
    convert,
  )
}
