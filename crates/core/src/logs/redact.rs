//! What never goes into a log file or a diagnostics archive: the token, and the values the manager knows
//! that look like secrets — those of the backend's environment whose name has a secret word in it.

/// The words of a variable name that mark its value as a secret.
const SECRET_WORDS: &[&str] = &[
  "TOKEN",
  "SECRET",
  "PASSWORD",
  "PASSWD",
  "KEY",
  "APIKEY",
  "AUTH",
  "COOKIE",
  "CREDENTIAL",
  "CREDENTIALS",
  "PRIVATE",
];
/// Shorter values are left alone: they are too common to hide without hiding ordinary text.
const MIN_SECRET_CHARS: usize = 6;
pub const REDACTED: &str = "[redacted]";

/// Whether a variable's name marks its value as a secret: one of its words (split at `_`, `-`, digits and
/// case changes) is a secret word. `MY_API_KEY` and `authToken` are; `KEYBOARD` and `AUTHOR` are not.
pub fn is_secret_name(name: &str) -> bool {
  words(name)
    .iter()
    .any(|w| SECRET_WORDS.iter().any(|s| w.eq_ignore_ascii_case(s)))
}

fn words(name: &str) -> Vec<String> {
  let chars: Vec<char> = name.chars().collect();
  let mut words = Vec::new();
  let mut word = String::new();
  for (i, &c) in chars.iter().enumerate() {
    if !c.is_alphabetic() {
      words.push(std::mem::take(&mut word));
      continue;
    }
    let prev = i.checked_sub(1).map(|p| chars[p]);
    let next = chars.get(i + 1);
    // `authToken`: a capital after a small letter; `APIKey`: the last capital of a run before a small one.
    let starts_word = c.is_uppercase()
      && prev.is_some_and(|p| {
        p.is_lowercase() || (p.is_uppercase() && next.is_some_and(|n| n.is_lowercase()))
      });
    if starts_word {
      words.push(std::mem::take(&mut word));
    }
    word.push(c);
  }
  words.push(word);
  words.retain(|w| !w.is_empty());
  words
}

/// Replaces known secrets in text.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
  /// The secrets as they were given.
  secrets: Vec<String>,
  /// What is replaced: each secret, and as JSON writes it when that differs (a quote, a backslash or a
  /// control character escaped: the diagnostics archive's JSON files hold values that way). Longest first,
  /// so a secret that contains another is replaced whole.
  forms: Vec<String>,
  /// A searcher per form, built once: the log looks for them in every read of the backend's output.
  finders: Vec<memchr::memmem::Finder<'static>>,
}

impl Redactor {
  /// The token and every secret-looking value of `env`.
  pub fn new<'a>(
    token: Option<&str>,
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
  ) -> Redactor {
    Redactor::of(
      env
        .into_iter()
        .filter(|(name, value)| is_secret_name(name) && value.chars().count() >= MIN_SECRET_CHARS)
        .map(|(_, value)| value.to_string())
        .chain(token.map(str::to_string))
        .collect(),
    )
  }

  /// These and `other`'s secrets.
  pub fn with(&self, other: &Redactor) -> Redactor {
    Redactor::of(self.secrets.iter().chain(&other.secrets).cloned().collect())
  }

  fn of(mut secrets: Vec<String>) -> Redactor {
    secrets.retain(|s| !s.is_empty());
    secrets.sort();
    secrets.dedup();
    let mut forms: Vec<String> = secrets
      .iter()
      .flat_map(|s| {
        let json = serde_json::to_string(s).unwrap_or_default();
        let escaped = json
          .get(1..json.len().saturating_sub(1))
          .filter(|e| *e != s.as_str())
          .map(str::to_string);
        std::iter::once(s.clone()).chain(escaped)
      })
      .collect();
    forms.sort_by_key(|s| std::cmp::Reverse(s.len()));
    forms.dedup();
    let finders = forms
      .iter()
      .map(|s| memchr::memmem::Finder::new(s.as_bytes()).into_owned())
      .collect();
    Redactor {
      secrets,
      forms,
      finders,
    }
  }

  /// Whether a secret is in `text` (then `redact` would change it).
  pub fn finds_in(&self, text: &[u8]) -> bool {
    self.finders.iter().any(|f| f.find(text).is_some())
  }

  pub fn redact<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
    let mut out = std::borrow::Cow::Borrowed(text);
    for secret in &self.forms {
      if out.contains(secret.as_str()) {
        out = std::borrow::Cow::Owned(out.replace(secret.as_str(), REDACTED));
      }
    }
    if let Some((start, mark)) = self.cut_secret(&out) {
      let mut cut = out.into_owned();
      cut.replace_range(start..mark, REDACTED);
      out = std::borrow::Cow::Owned(cut);
    }
    out
  }

  /// Whether `text` is a line cut at its length limit whose kept part ends with the start of a secret (the
  /// rest of it was cut off, so it is not found whole). Cheap for other lines: a suffix compare.
  pub fn cut_in(&self, text: &str) -> bool {
    self.cut_secret(text).is_some()
  }

  /// In a line cut at its length limit (`…[truncated N bytes]` at its end), where the start of a secret
  /// that ends the kept part begins (its longest such start, however short), and where the mark begins.
  fn cut_secret(&self, text: &str) -> Option<(usize, usize)> {
    const MARK: &str = "…[truncated ";
    if self.forms.is_empty() || !text.ends_with(" bytes]") {
      return None;
    }
    let mark = text.rfind(MARK)?;
    let count = text[mark + MARK.len()..].strip_suffix(" bytes]")?;
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
      return None;
    }
    let kept = &text[..mark];
    self
      .forms
      .iter()
      .filter_map(|form| {
        (1..form.len())
          .rev()
          .find(|&n| form.is_char_boundary(n) && kept.ends_with(&form[..n]))
      })
      .max()
      .map(|n| (mark - n, mark))
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn secret_names_are_told_by_their_words() {
    for name in [
      "MY_API_KEY",
      "authToken",
      "APIKey",
      "DB_PASSWORD",
      "github-token",
      "AWS_SECRET_ACCESS_KEY",
      "session_cookie",
      "CREDENTIALS_FILE",
      "private_key2",
      "APIKEY",
      "x-auth",
    ] {
      assert!(is_secret_name(name), "{name}");
    }
    for name in [
      "KEYBOARD",
      "AUTHOR",
      "PATH",
      "HOME",
      "monkey",
      "TOKENIZER",
      "PORT",
      "LANG",
    ] {
      assert!(!is_secret_name(name), "{name}");
    }
  }

  #[test]
  fn the_token_and_secret_values_are_replaced_short_values_kept() {
    let r = Redactor::new(
      Some("tok3n-abcdef"),
      [
        ("DB_PASSWORD", "hunter22"),
        ("API_KEY", "abc"),
        ("HOME", "/home/someone"),
      ],
    );
    assert_eq!(
      r.redact("login hunter22 with tok3n-abcdef at /home/someone, key abc"),
      "login [redacted] with [redacted] at /home/someone, key abc"
    );
    let quoted = Redactor::new(None, [("DB_PASSWORD", "pa\"ss\\wo\nrd")]);
    assert_eq!(
      quoted.redact(r#"{"DB_PASSWORD": "pa\"ss\\wo\nrd"} and pa"ss\wo"#),
      r#"{"DB_PASSWORD": "[redacted]"} and pa"ss\wo"#,
      "as JSON escapes it"
    );
    assert_eq!(
      r.redact("aaa tok3n-a…[truncated 9 bytes]"),
      "aaa [redacted]…[truncated 9 bytes]",
      "the start of a secret cut off"
    );
    assert_eq!(
      r.redact("aaa tok…[truncated 9 bytes] more"),
      "aaa tok…[truncated 9 bytes] more"
    );
    assert!(matches!(
      r.redact("nothing here"),
      std::borrow::Cow::Borrowed(_)
    ));
  }
}
