//! JS values in, without judgement: checking them is `options`' job.

use bpm::options::Value;
use napi::bindgen_prelude::{Array, FromNapiValue, Object};
use napi::{JsValue, Unknown, ValueType};

/// Options are small: deeper nesting than this is a mistake (or a cycle), not an option.
const MAX_DEPTH: usize = 8;

pub fn from_js(value: Unknown<'_>) -> napi::Result<Value> {
  convert(value, 0)
}

fn convert(value: Unknown<'_>, depth: usize) -> napi::Result<Value> {
  Ok(match value.get_type()? {
    ValueType::Undefined => Value::Undefined,
    ValueType::Null => Value::Null,
    ValueType::Boolean => Value::Bool(bool::from_unknown(value)?),
    ValueType::Number => Value::Number(f64::from_unknown(value)?),
    ValueType::String => Value::String(String::from_unknown(value)?),
    ValueType::Object if depth >= MAX_DEPTH => Value::Other("deeply nested object"),
    ValueType::Object if value.is_array()? => {
      let array = Array::from_unknown(value)?;
      let mut items = Vec::with_capacity(array.len() as usize);
      for i in 0..array.len() {
        let item: Unknown = array
          .get(i)?
          .ok_or_else(|| napi::Error::from_reason("an array changed while it was read"))?;
        items.push(convert(item, depth + 1)?);
      }
      Value::Array(items)
    }
    ValueType::Object => {
      let object = Object::from_unknown(value)?;
      let mut fields = Vec::new();
      for key in Object::keys(&object)? {
        if let Some(field) = object.get::<Unknown>(&key)? {
          fields.push((key, convert(field, depth + 1)?));
        }
      }
      Value::Object(fields)
    }
    ValueType::Function => Value::Other("function"),
    ValueType::Symbol => Value::Other("symbol"),
    _ => Value::Other("bigint or other value"),
  })
}
