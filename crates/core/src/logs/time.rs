//! ISO 8601 times in UTC with milliseconds, without a date crate.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_iso() -> String {
  let since = SystemTime::now()
    .duration_since(UNIX_EPOCH)
    .unwrap_or_default();
  iso(since.as_millis() as u64)
}

/// `2026-12-02T11:07:23.456Z` for epoch milliseconds.
pub fn iso(epoch_ms: u64) -> String {
  let (days, ms_of_day) = (epoch_ms / 86_400_000, epoch_ms % 86_400_000);
  let (year, month, day) = civil_from_days(days as i64);
  let secs = ms_of_day / 1000;
  format!(
    "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
    secs / 3600,
    secs / 60 % 60,
    secs % 60,
    ms_of_day % 1000
  )
}

/// Year, month, day of a count of days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
  let z = days + 719_468;
  let era = z.div_euclid(146_097);
  let doe = z.rem_euclid(146_097);
  let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
  let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  let mp = (5 * doy + 2) / 153;
  let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
  let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
  let year = yoe + era * 400 + i64::from(month <= 2);
  (year, month, day)
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn epoch_milliseconds_read_as_iso_times() {
    assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(iso(951_782_400_000), "2000-02-29T00:00:00.000Z");
    assert_eq!(iso(1_796_209_643_456), "2026-12-02T11:07:23.456Z");
  }
}
