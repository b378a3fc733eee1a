use super::*;
use std::sync::Mutex;

fn config(dir: &Path, max_bytes: u64, keep: u32) -> LogConfig {
  LogConfig {
    dir: dir.to_path_buf(),
    max_bytes,
    keep,
  }
}

fn quiet_log(config: LogConfig, name: &str) -> (Arc<Log>, Arc<Mutex<Vec<LogWarning>>>) {
  let warnings = Arc::new(Mutex::new(Vec::new()));
  let seen = warnings.clone();
  let log = Log::new(
    config,
    name,
    Arc::new(move |w| seen.lock().unwrap().push(w)),
  );
  (log, warnings)
}

#[test]
fn lines_are_framed_and_read_back_oldest_first() {
  let dir = tempfile::tempdir().unwrap();
  let (log, warnings) = quiet_log(config(dir.path(), DEFAULT_MAX_BYTES, 2), "api");
  let none = Redactor::default();
  log.line(LogStream::Out, 0, "listening on 8000", &none);
  log.line(LogStream::Err, 1, "a warning\rwith a return", &none);
  log.line(LogStream::Manager, 0, "ready", &none);
  log.flush();
  let text = std::fs::read_to_string(log.path()).unwrap();
  let first = text.lines().next().unwrap();
  assert!(first.ends_with(" out 0 listening on 8000"), "{first}");
  assert_eq!(
    first.len(),
    "2026-12-02T11:07:23.456Z".len() + " out 0 listening on 8000".len()
  );
  let lines = log.tail(10, None);
  assert_eq!(lines.len(), 3);
  assert_eq!(lines[1].stream, LogStream::Err);
  assert_eq!(lines[1].replica, 1);
  assert_eq!(lines[1].line, "a warning with a return");
  assert_eq!(log.tail(10, Some(LogStream::Manager))[0].line, "ready");
  assert_eq!(log.tail(1, None)[0].line, "ready");
  assert!(warnings.lock().unwrap().is_empty());
}

/// Only its owner can read a log (it may hold what the backend printed of its data).
#[cfg(unix)]
#[test]
fn a_log_file_has_mode_0600() {
  use std::os::unix::fs::PermissionsExt;
  let dir = tempfile::tempdir().unwrap();
  let (log, warnings) = quiet_log(config(dir.path(), DEFAULT_MAX_BYTES, 2), "api");
  log.line(LogStream::Out, 0, "listening on 8000", &Redactor::default());
  log.flush();
  assert_eq!(
    std::fs::metadata(log.path()).unwrap().permissions().mode() & 0o777,
    0o600
  );
  assert!(warnings.lock().unwrap().is_empty());
}

#[test]
fn files_rotate_by_size_keep_that_many_and_never_split_a_line() {
  let dir = tempfile::tempdir().unwrap();
  let (log, _) = quiet_log(config(dir.path(), 1000, 3), "rot");
  let none = Redactor::default();
  for i in 0..200 {
    log.line(
      LogStream::Out,
      0,
      &format!("line {i:04} {}", "x".repeat(40)),
      &none,
    );
  }
  log.flush();
  let mut all = Vec::new();
  for n in (0..=3).rev() {
    let text = std::fs::read_to_string(file_of(dir.path(), "rot", n)).unwrap();
    assert!(text.len() as u64 <= 1000, "file {n}: {} bytes", text.len());
    assert!(text.ends_with('\n'));
    all.extend(text.lines().map(|l| parse_line(l).unwrap().line));
  }
  assert!(
    !file_of(dir.path(), "rot", 4).exists(),
    "at most `keep` rotated files"
  );
  // The newest lines, in order, with none cut: the oldest went with the deleted files.
  assert_eq!(
    all.last().unwrap(),
    &format!("line 0199 {}", "x".repeat(40))
  );
  for pair in all.windows(2) {
    assert!(pair[0] < pair[1], "{pair:?}");
  }
  assert_eq!(log.tail(all.len() + 50, None).len(), all.len());
}

#[test]
fn a_very_long_line_is_cut_with_a_mark() {
  let framed = frame("T".into(), LogStream::Out, 0, &"é".repeat(MAX_LINE_BYTES));
  let text = String::from_utf8(framed).unwrap();
  assert!(text.ends_with(&format!("…[truncated {} bytes]\n", MAX_LINE_BYTES)));
}

/// A line the pipe reader has cut (64 KiB and its mark) is written as it is, not cut again.
#[test]
fn a_line_already_cut_is_written_as_it_is() {
  let mut cut = "é".repeat(MAX_LINE_BYTES / 2);
  push_truncation_mark(&mut cut, usize::MAX);
  assert!(cut.len() <= MAX_CUT_LINE);
  let framed = frame("T".into(), LogStream::Out, 0, &cut);
  assert_eq!(
    String::from_utf8(framed).unwrap(),
    format!("T out 0 {cut}\n")
  );
}

#[test]
fn secrets_are_redacted_in_the_file() {
  let dir = tempfile::tempdir().unwrap();
  let (log, _) = quiet_log(config(dir.path(), DEFAULT_MAX_BYTES, 1), "sec");
  let redactor = Redactor::new(
    Some("0123456789abcdef"),
    [("STRIPE_API_KEY", "sk_live_secret")],
  );
  log.line(
    LogStream::Out,
    0,
    "token 0123456789abcdef key sk_live_secret",
    &redactor,
  );
  log.flush();
  let text = std::fs::read_to_string(log.path()).unwrap();
  assert!(text.contains("token [redacted] key [redacted]"), "{text}");
  assert!(!text.contains("sk_live_secret") && !text.contains("0123456789abcdef"));
}

#[test]
fn a_log_that_cannot_be_written_drops_and_counts_lines_and_warns_once_then_again_when_it_works() {
  let dir = tempfile::tempdir().unwrap();
  let (log, warnings) = quiet_log(config(dir.path(), DEFAULT_MAX_BYTES, 1), "blocked");
  let none = Redactor::default();
  // A folder where the file should be: opening it fails, even for root (a full disk is tested in JS).
  std::fs::create_dir(log.path()).unwrap();
  for _ in 0..5 {
    log.line(LogStream::Out, 0, "lost", &none);
  }
  log.flush();
  assert_eq!(
    warnings.lock().unwrap().len(),
    1,
    "one warning for the whole failure"
  );
  std::fs::remove_dir(log.path()).unwrap();
  log.line(LogStream::Out, 0, "kept", &none);
  log.flush();
  let w = warnings.lock().unwrap().clone();
  assert_eq!(w.len(), 2, "{w:?}");
  assert_eq!(w[1].dropped, 5);
  let lines = log.tail(10, None);
  assert_eq!(lines[0].line, "kept");
  assert!(lines[1].line.contains("5 lines were dropped"), "{lines:?}");
}

#[test]
fn names_of_logs_skip_rotated_files() {
  let dir = tempfile::tempdir().unwrap();
  for f in ["api.log", "api.1.log", "web.log", "my.app.log", "notes.txt"] {
    std::fs::write(dir.path().join(f), "").unwrap();
  }
  assert_eq!(names_in(dir.path()), vec!["api", "my.app", "web"]);
}

/// Lines written together are framed as each would be alone: redacted (also a secret split across two
/// lines is no secret), kept on one line, cut when too long.
#[test]
fn lines_written_together_are_framed_as_each_alone() {
  let redactor = Redactor::new(Some("0123456789abcdef"), []);
  let long = "y".repeat(MAX_CUT_LINE + 5);
  let batches: Vec<Vec<&str>> = vec![
    vec!["plain one", "plain two", ""],
    vec!["a token 0123456789abcdef here", "after"],
    vec!["split 01234567", "89abcdef split"],
    vec!["with\ra return", "with\na newline"],
    vec!["short", &long],
  ];
  for batch in batches {
    let together = tempfile::tempdir().unwrap();
    let alone = tempfile::tempdir().unwrap();
    let (a, _) = quiet_log(config(together.path(), DEFAULT_MAX_BYTES, 1), "b");
    let (b, _) = quiet_log(config(alone.path(), DEFAULT_MAX_BYTES, 1), "b");
    a.lines(LogStream::Err, 2, &batch, &redactor);
    for text in &batch {
      b.line(LogStream::Err, 2, text, &redactor);
    }
    a.flush();
    let read = |log: &Arc<Log>| {
      let text = std::fs::read_to_string(log.path()).unwrap();
      assert_eq!(text.lines().count(), batch.len(), "{text:?}");
      text
        .lines()
        .map(|l| {
          let l = parse_line(l).unwrap();
          (l.stream, l.replica, l.line)
        })
        .collect::<Vec<_>>()
    };
    let got = read(&a);
    assert_eq!(got, read(&b), "{batch:?}");
    assert!(got.iter().all(|(_, _, l)| !l.contains("0123456789abcdef")));
  }
}

/// Lines that reach the writer together (one read of a fast backend) are cut at rotation between lines:
/// each file holds whole lines up to its size, and a line longer than the size goes alone into a file.
#[test]
fn lines_written_together_rotate_between_lines() {
  let dir = tempfile::tempdir().unwrap();
  let (log, warnings) = quiet_log(config(dir.path(), 1000, 20), "batch");
  let none = Redactor::default();
  let long = "z".repeat(1500);
  let mut texts: Vec<String> = (0..60)
    .map(|i| format!("line {i:04} {}", "x".repeat(40)))
    .collect();
  texts.insert(30, long.clone());
  for batch in texts.chunks(25) {
    let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
    log.lines(LogStream::Out, 0, &batch, &none);
  }
  log.flush();
  let mut all = Vec::new();
  for n in (0..=20).rev() {
    let Ok(text) = std::fs::read_to_string(file_of(dir.path(), "batch", n)) else {
      continue;
    };
    assert!(text.ends_with('\n'), "file {n} ends with a whole line");
    let lines: Vec<String> = text.lines().map(|l| parse_line(l).unwrap().line).collect();
    if lines.contains(&long) {
      assert_eq!(
        lines,
        std::slice::from_ref(&long),
        "file {n}: the long line alone"
      );
    } else {
      assert!(text.len() as u64 <= 1000, "file {n}: {} bytes", text.len());
    }
    all.extend(lines);
  }
  assert_eq!(all, texts, "every line once, in order, none cut");
  assert!(warnings.lock().unwrap().is_empty());
}

/// Whole lines as read are framed in one pass: the file holds what framing each line alone would make of
/// them, including the lines that need more (a secret, a carriage return, a line too long, an empty one).
#[test]
fn lines_as_read_are_framed_as_each_line_alone_would_be() {
  let redactor = Redactor::new(Some("0123456789abcdef"), []);
  let long = "y".repeat(MAX_CUT_LINE + 10);
  let texts = [
    "plain one\nplain two\n\n".to_string(),
    "a token 0123456789abcdef here\nafter\n".to_string(),
    "with\ra return\nnext\n".to_string(),
    format!("short\n{long}\nafter\n"),
  ];
  for text in texts {
    let together = tempfile::tempdir().unwrap();
    let alone = tempfile::tempdir().unwrap();
    let (a, warnings) = quiet_log(config(together.path(), DEFAULT_MAX_BYTES, 1), "b");
    let (b, _) = quiet_log(config(alone.path(), DEFAULT_MAX_BYTES, 1), "b");
    a.text(LogStream::Out, 1, &text, &redactor);
    for line in text.split_terminator('\n') {
      b.line(LogStream::Out, 1, line, &redactor);
    }
    a.flush();
    let read = |log: &Arc<Log>| {
      std::fs::read_to_string(log.path())
        .unwrap()
        .lines()
        .map(|l| parse_line(l).unwrap().line)
        .collect::<Vec<_>>()
    };
    let got = read(&a);
    assert_eq!(got.len(), text.split_terminator('\n').count());
    assert_eq!(got, read(&b), "{text:?}");
    assert!(got.iter().all(|l| !l.contains("0123456789abcdef")));
    assert!(warnings.lock().unwrap().is_empty());
  }
}

/// The lines of one flood, queued as fast as they come (64 KiB reads framed and handed over without
/// waiting) up to less than the queue's bound: none is lost or split, whatever the writer's pace, and the
/// files (their blocks reserved ahead in a flood) hold exactly the lines, rotated whole.
#[test]
fn a_flood_below_the_queue_bound_loses_no_line() {
  let dir = tempfile::tempdir().unwrap();
  let (log, warnings) = quiet_log(config(dir.path(), 1024 * 1024, 30), "flood");
  let none = Redactor::default();
  let mut sent = 0usize;
  let mut read = String::new();
  let mut framed = 0;
  // ~10 MiB framed, below the 16 MiB bound.
  while framed < 10 * 1024 * 1024 {
    read.clear();
    while read.len() < 64 * 1024 - 200 {
      read.push_str(&format!("{sent:08} {}\n", "x".repeat(90)));
      sent += 1;
      framed += 100 + "2026-12-02T11:07:23.456Z out 0 ".len();
    }
    log.text(LogStream::Out, 0, &read, &none);
  }
  log.flush();
  let mut next = 0usize;
  for n in (0..=30).rev() {
    let Ok(bytes) = std::fs::read(file_of(dir.path(), "flood", n)) else {
      continue;
    };
    assert!(
      bytes.len() as u64 <= 1024 * 1024,
      "file {n}: {}",
      bytes.len()
    );
    let text = String::from_utf8(bytes).expect("only the lines, no reserved zeros");
    assert!(text.ends_with('\n'), "file {n} ends with a whole line");
    for line in text.lines() {
      let line = parse_line(line).unwrap().line;
      assert_eq!(line, format!("{next:08} {}", "x".repeat(90)));
      next += 1;
    }
  }
  assert_eq!(next, sent, "every line once, in order");
  assert!(warnings.lock().unwrap().is_empty());
}

/// Rotation in a flood keeps `keep` files besides the log (the oldest are deleted off the writer's thread,
/// their names gone at once) and the newest lines.
#[test]
fn a_flood_rotates_keeping_the_newest_files() {
  let dir = tempfile::tempdir().unwrap();
  let (log, warnings) = quiet_log(config(dir.path(), 256 * 1024, 2), "kept");
  let none = Redactor::default();
  let lines: Vec<String> = (0..40_000)
    .map(|i| format!("{i:06} {}", "k".repeat(60)))
    .collect();
  for piece in lines.chunks(1000) {
    log.text(LogStream::Out, 0, &(piece.join("\n") + "\n"), &none);
  }
  log.flush();
  let mut names: Vec<String> = std::fs::read_dir(dir.path())
    .unwrap()
    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
    .collect();
  names.sort();
  assert_eq!(names, ["kept.1.log", "kept.2.log", "kept.log"]);
  let tail = log.tail(1, None);
  assert_eq!(tail[0].line, lines[lines.len() - 1]);
  assert!(warnings.lock().unwrap().is_empty());
}
