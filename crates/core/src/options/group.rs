//! The members of a `BackendGroup`: unique names, dependencies that name other members, and no cycle. The
//! JS group starts each member once its dependencies are up; this is where their order is checked.

use super::{name, strings, Value};
use crate::error::{PmError, Result};

/// The members in an order where every dependency comes before what depends on it (`entries`:
/// `[{ name, dependsOn }]`, as given). Each member's dependencies, as indices, come with it.
pub fn order(entries: &Value) -> Result<Vec<(usize, Vec<usize>)>> {
  let Value::Array(items) = entries else {
    return Err(PmError::invalid(
      "a BackendGroup takes an array of ProcessManager options, each with a name",
    ));
  };
  if items.is_empty() {
    return Err(PmError::invalid(
      "a BackendGroup needs at least one backend",
    ));
  }
  let mut names = Vec::with_capacity(items.len());
  let mut depends = Vec::with_capacity(items.len());
  for (i, item) in items.iter().enumerate() {
    let Value::Object(fields) = item else {
      return Err(PmError::invalid(format!(
        "backend {i} of the group is not an options object"
      )));
    };
    let field = |key: &str| {
      fields
        .iter()
        .find(|(k, _)| k == key)
        .map_or(Value::Undefined, |(_, v)| v.clone())
    };
    let member = match field("name") {
      Value::Undefined => {
        return Err(PmError::invalid(format!(
          "backend {i} of the group has no name: each needs a unique one"
        )))
      }
      v => name(&v)?,
    };
    if names.contains(&member) {
      return Err(PmError::invalid(format!(
        "two backends of the group are named {member:?}: names must be unique"
      )));
    }
    let deps = match field("dependsOn") {
      Value::Undefined | Value::Null => Vec::new(),
      v => strings(&v, &format!("dependsOn of {member:?}"))?,
    };
    names.push(member);
    depends.push(deps);
  }
  let mut edges = Vec::with_capacity(items.len());
  for (i, deps) in depends.iter().enumerate() {
    let mut of = Vec::new();
    for dep in deps {
      let Some(j) = names.iter().position(|n| n == dep) else {
        return Err(PmError::invalid(format!(
          "{:?} depends on {dep:?}, which is not a backend of the group",
          names[i]
        )));
      };
      if !of.contains(&j) {
        of.push(j);
      }
    }
    edges.push(of);
  }
  // Depth-first, keeping the path: a member met again on its own path closes a cycle.
  let mut state = vec![Mark::New; names.len()];
  let mut ordered = Vec::with_capacity(names.len());
  for start in 0..names.len() {
    let mut path = Vec::new();
    visit(start, &edges, &mut state, &mut path, &mut ordered, &names)?;
  }
  Ok(ordered.into_iter().map(|i| (i, edges[i].clone())).collect())
}

#[derive(Clone, Copy, PartialEq)]
enum Mark {
  New,
  OnPath,
  Done,
}

fn visit(
  i: usize,
  edges: &[Vec<usize>],
  state: &mut [Mark],
  path: &mut Vec<usize>,
  ordered: &mut Vec<usize>,
  names: &[String],
) -> Result<()> {
  match state[i] {
    Mark::Done => return Ok(()),
    Mark::OnPath => {
      let from = path.iter().position(|&p| p == i).unwrap_or(0);
      let cycle: Vec<&str> = path[from..]
        .iter()
        .chain(std::iter::once(&i))
        .map(|&p| names[p].as_str())
        .collect();
      return Err(PmError::invalid(format!(
        "the group's dependencies form a cycle: {}",
        cycle.join(" → ")
      )));
    }
    Mark::New => {}
  }
  state[i] = Mark::OnPath;
  path.push(i);
  for &dep in &edges[i] {
    visit(dep, edges, state, path, ordered, names)?;
  }
  path.pop();
  state[i] = Mark::Done;
  ordered.push(i);
  Ok(())
}

#[cfg(test)]
mod tests {
  use super::*;

  fn member(name: &str, deps: &[&str]) -> Value {
    Value::object(vec![
      ("name", Value::String(name.into())),
      (
        "dependsOn",
        Value::Array(deps.iter().map(|d| Value::String((*d).into())).collect()),
      ),
    ])
  }

  fn names(entries: &Value) -> Vec<usize> {
    order(entries)
      .unwrap()
      .into_iter()
      .map(|(i, _)| i)
      .collect()
  }

  #[test]
  fn dependencies_come_first() {
    let entries = Value::Array(vec![
      member("worker", &["api", "db"]),
      member("api", &["db"]),
      member("db", &[]),
    ]);
    assert_eq!(names(&entries), vec![2, 1, 0]);
    assert_eq!(order(&entries).unwrap()[2], (0, vec![1, 2]));
  }

  #[test]
  fn cycles_unknown_names_and_duplicates_are_refused() {
    let cycle = Value::Array(vec![
      member("a", &["b"]),
      member("b", &["c"]),
      member("c", &["a"]),
    ]);
    let e = order(&cycle).unwrap_err().to_string();
    assert!(e.contains("a → b → c → a"), "{e}");
    let own = Value::Array(vec![member("a", &["a"])]);
    assert!(order(&own).unwrap_err().to_string().contains("cycle"));
    let unknown = Value::Array(vec![member("a", &["nope"])]);
    assert!(order(&unknown)
      .unwrap_err()
      .to_string()
      .contains("\"nope\""));
    let twice = Value::Array(vec![member("a", &[]), member("a", &[])]);
    assert!(order(&twice).unwrap_err().to_string().contains("unique"));
    let nameless = Value::Array(vec![Value::object(vec![])]);
    assert!(order(&nameless)
      .unwrap_err()
      .to_string()
      .contains("no name"));
    assert!(order(&Value::Array(vec![])).is_err());
  }
}
