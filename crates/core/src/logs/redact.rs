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
  /// What is replaced (`forms_of`): each secret, and the other forms it is printed in. Longest first, so a
  /// secret that contains another is replaced whole.
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
    let mut forms: Vec<String> = secrets.iter().flat_map(|s| forms_of(s)).collect();
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

/// A secret as it is given, and as it is printed otherwise:
/// - as JSON writes it (a quote, a backslash or a control character escaped: the diagnostics archive's JSON
///   files hold values that way);
/// - percent-encoded, as it is in a URL (a password in a database URL): every byte escaped but the
///   unreserved ones (RFC 3986, Python's `quote(safe='')`), and also keeping `!'()*` (`encodeURIComponent`);
/// - line by line, for a secret of several lines (a PEM private key): a backend that prints it prints it
///   as several lines, and each is searched in a line of its own. Lines shorter than a secret value can be
///   are not (`MIN_SECRET_CHARS`).
fn forms_of(secret: &str) -> Vec<String> {
  let mut forms = vec![secret.to_string()];
  let json = serde_json::to_string(secret).unwrap_or_default();
  forms.extend(
    json
      .get(1..json.len().saturating_sub(1))
      .map(str::to_string),
  );
  forms.push(percent_encoded(secret, b""));
  forms.push(percent_encoded(secret, b"!'()*"));
  if secret.contains(['\n', '\r']) {
    forms.extend(
      secret
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|line| line.chars().count() >= MIN_SECRET_CHARS)
        .map(str::to_string),
    );
  }
  forms.sort();
  forms.dedup();
  forms
}

/// `text` with every byte escaped as `%XX` but ASCII letters, digits, `-._~` and `also_kept`.
fn percent_encoded(text: &str, also_kept: &[u8]) -> String {
  let mut out = String::with_capacity(text.len());
  for &b in text.as_bytes() {
    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || also_kept.contains(&b) {
      out.push(b as char);
    } else {
      out.push_str(&format!("%{b:02X}"));
    }
  }
  out
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
      quoted.redact(r#"{"DB_PASSWORD": "pa\"ss\\wo\nrd"} and pa"ss"#),
      r#"{"DB_PASSWORD": "[redacted]"} and pa"ss"#,
      "as JSON escapes it"
    );
    let url = Redactor::new(None, [("DB_PASSWORD", "p@ss/w0rd (x)!")]);
    assert_eq!(
      url.redact("postgres://app:p%40ss%2Fw0rd%20%28x%29%21@db/app and p%40ss%2Fw0rd%20(x)!@db"),
      "postgres://app:[redacted]@db/app and [redacted]@db",
      "percent-encoded, strictly and as encodeURIComponent does"
    );
    let key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\nab\n-----END PRIVATE KEY-----\n";
    let pem = Redactor::new(None, [("PRIVATE_KEY", key)]);
    assert_eq!(
      pem.redact("key: MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"),
      "key: [redacted]",
      "a line of a secret of several lines, printed on its own"
    );
    assert_eq!(pem.redact("  BKcwggSjAgEAAoIBAQC7"), "  [redacted]");
    assert_eq!(
      pem.redact("ab cd"),
      "ab cd",
      "too short a line to be told from text"
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
