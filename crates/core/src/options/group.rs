//! The members of a `BackendGroup`: unique names, dependencies that name other members, and no cycle. The
//! JS group starts each member once its dependencies are up; this is where their order is checked.

use super::{name, strings};
use crate::error::{PmError, Result};

/// One member as the group checks it: `{ name, dependsOn }` as given (`None`: not an options object).
#[derive(Debug, Clone, Default)]
pub struct MemberInput {
  pub name: Option<String>,
  pub depends_on: Option<Vec<String>>,
}

/// The members in an order where every dependency comes before what depends on it (`entries`:
/// `[{ name, dependsOn }]`, as given). Each member's dependencies, as indices, come with it.
pub fn order(entries: Vec<Option<MemberInput>>) -> Result<Vec<(usize, Vec<usize>)>> {
  if entries.is_empty() {
    return Err(PmError::invalid(
      "a BackendGroup needs at least one backend",
    ));
  }
  let count = entries.len();
  let mut names = Vec::with_capacity(count);
  let mut depends = Vec::with_capacity(count);
  for (i, item) in entries.into_iter().enumerate() {
    let Some(member) = item else {
      return Err(PmError::invalid(format!(
        "backend {i} of the group is not an options object"
      )));
    };
    let Some(given) = member.name else {
      return Err(PmError::invalid(format!(
        "backend {i} of the group has no name: each needs a unique one"
      )));
    };
    let member_name = name(given)?;
    if names.contains(&member_name) {
      return Err(PmError::invalid(format!(
        "two backends of the group are named {member_name:?}: names must be unique"
      )));
    }
    let deps = match member.depends_on {
      None => Vec::new(),
      Some(v) => strings(v, &format!("dependsOn of {member_name:?}"))?,
    };
    names.push(member_name);
    depends.push(deps);
  }
  let mut edges = Vec::with_capacity(count);
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

  fn member(name: &str, deps: &[&str]) -> Option<MemberInput> {
    Some(MemberInput {
      name: Some(name.into()),
      depends_on: Some(deps.iter().map(|d| (*d).into()).collect()),
    })
  }

  fn names(entries: Vec<Option<MemberInput>>) -> Vec<usize> {
    order(entries)
      .unwrap()
      .into_iter()
      .map(|(i, _)| i)
      .collect()
  }

  #[test]
  fn dependencies_come_first() {
    let entries = || {
      vec![
        member("worker", &["api", "db"]),
        member("api", &["db"]),
        member("db", &[]),
      ]
    };
    assert_eq!(names(entries()), vec![2, 1, 0]);
    assert_eq!(order(entries()).unwrap()[2], (0, vec![1, 2]));
  }

  #[test]
  fn cycles_unknown_names_and_duplicates_are_refused() {
    let error = |entries| order(entries).unwrap_err().to_string();
    let cycle = vec![
      member("a", &["b"]),
      member("b", &["c"]),
      member("c", &["a"]),
    ];
    let e = error(cycle);
    assert!(e.contains("a → b → c → a"), "{e}");
    assert!(error(vec![member("a", &["a"])]).contains("cycle"));
    assert!(error(vec![member("a", &["nope"])]).contains("\"nope\""));
    assert!(error(vec![member("a", &[]), member("a", &[])]).contains("unique"));
    assert!(error(vec![Some(MemberInput::default())]).contains("no name"));
    assert!(error(vec![None]).contains("not an options object"));
    assert!(order(vec![]).is_err());
  }
}
