//! Property tests: arbitrary input to the record parser and to record cleanup never panics, is rejected
//! with a reason, and never leads to a signal.

use backend_process_manager::orphans::{cleanup, CleanupAction};
use backend_process_manager::record::{parse_record, read_record, Problem};
use proptest::prelude::*;
use std::io::Write;
use std::time::Duration;

fn write_private(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
  let path = dir.join(name);
  let mut options = std::fs::OpenOptions::new();
  options.write(true).create(true).truncate(true);
  #[cfg(unix)]
  std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
  options.open(&path).unwrap().write_all(bytes).unwrap();
  path
}

/// JSON values of every kind, for record fields.
fn any_json() -> impl Strategy<Value = serde_json::Value> {
  prop_oneof![
    Just(serde_json::Value::Null),
    any::<bool>().prop_map(serde_json::Value::from),
    any::<i64>().prop_map(serde_json::Value::from),
    any::<u64>().prop_map(serde_json::Value::from),
    any::<f64>().prop_map(|f| serde_json::json!(f)),
    ".{0,20}".prop_map(serde_json::Value::from),
    (0u32..70000).prop_map(serde_json::Value::from),
  ]
}

const FIELDS: [&str; 10] = [
  "version",
  "name",
  "pid",
  "port",
  "host",
  "startedAt",
  "exe",
  "startTime",
  "ownerPid",
  "ownerStartTime",
];

fn record_like() -> impl Strategy<Value = String> {
  proptest::collection::vec(proptest::option::of(any_json()), FIELDS.len()).prop_map(|values| {
    let mut object = serde_json::Map::new();
    for (field, value) in FIELDS.iter().zip(values) {
      if let Some(v) = value {
        object.insert((*field).to_string(), v);
      }
    }
    serde_json::Value::Object(object).to_string()
  })
}

/// Every field present with the right JSON type but an arbitrary value.
fn typed_record() -> impl Strategy<Value = String> {
  (
    (any::<u32>(), ".{0,12}", any::<u32>(), any::<u32>(), ".{0,8}"),
    (any::<u64>(), proptest::option::of(".{0,12}"), any::<u64>(), any::<u32>(), any::<u64>()),
  )
    .prop_map(|((version, name, pid, port, host), (started, exe, start, owner, owner_start))| {
      serde_json::json!({
        "version": version % 3, "name": name, "pid": pid % 5, "port": port % 70000, "host": host,
        "startedAt": started, "exe": exe, "startTime": start, "ownerPid": owner, "ownerStartTime": owner_start
      })
      .to_string()
    })
}

proptest! {
  #![proptest_config(ProptestConfig::with_cases(512))]

  #[test]
  fn a_typed_record_is_accepted_only_when_plausible(text in typed_record()) {
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ok = parsed["version"] == 1
      && parsed["pid"].as_u64().unwrap() > 1
      && (1..=65535).contains(&parsed["port"].as_u64().unwrap())
      && parsed["ownerPid"].as_u64().unwrap() > 0
      && !parsed["name"].as_str().unwrap().is_empty()
      && backend_process_manager::record::validate_name(parsed["name"].as_str().unwrap()).is_ok();
    prop_assert_eq!(parse_record(&text).is_ok(), ok, "{}", text);
  }

  #[test]
  fn arbitrary_text_never_panics_the_parser(text in ".{0,400}") {
    let _ = parse_record(&text);
  }

  #[test]
  fn a_parsed_record_is_always_a_plausible_one(text in record_like()) {
    if let Ok(record) = parse_record(&text) {
      prop_assert_eq!(record.version, 1);
      prop_assert!(record.pid > 1);
      prop_assert!(record.port > 0);
      prop_assert!(!record.name.is_empty() && !record.name.contains('/'));
    }
  }

  #[test]
  fn arbitrary_bytes_in_a_record_file_are_rejected_with_a_reason(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_private(dir.path(), "x-123.json", &bytes);
    match read_record(&path) {
      Ok(record) => prop_assert!(record.pid > 1),
      Err(Problem::Invalid(reason)) | Err(Problem::Untrusted(reason)) => prop_assert!(!reason.is_empty()),
    }
  }
}

proptest! {
  #![proptest_config(ProptestConfig::with_cases(64))]

  /// Records with arbitrary fields — some naming this very process or a live bystander — never get anything
  /// signalled: without the exact start time of the live process, a record is stale.
  #[test]
  fn cleanup_of_arbitrary_records_signals_nothing(
    texts in proptest::collection::vec(record_like(), 1..6),
    start_times in proptest::collection::vec(any::<u64>(), 6),
  ) {
    let dir = tempfile::tempdir().unwrap();
    let me = std::process::id();
    let mut bystander = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let pids = [me, bystander.id()];
    for (i, text) in texts.iter().enumerate() {
      // Half the files: a well-formed record for a live pid with an arbitrary start time and a dead owner.
      let body = if i % 2 == 0 {
        serde_json::json!({
          "version": 1, "name": "x", "pid": pids[(i / 2) % 2], "port": 8000, "host": "127.0.0.1",
          "startedAt": 0, "exe": null, "startTime": start_times[i], "ownerPid": 999_999, "ownerStartTime": 1
        }).to_string()
      } else {
        text.clone()
      };
      write_private(dir.path(), &format!("x-{}.json", 1000 + i), body.as_bytes());
    }
    let items = cleanup(dir.path(), None, Duration::from_millis(50));
    let bystander_alive = bystander.try_wait().unwrap().is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    prop_assert!(bystander_alive, "the bystander was signalled");
    for item in &items {
      prop_assert!(
        !matches!(item.action, CleanupAction::Terminated | CleanupAction::Failed),
        "{:?}", item
      );
    }
  }
}
