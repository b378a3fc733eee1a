//! A minimal ZIP writer: stored entries (no compression), so any unzip tool of any OS opens the archive and
//! no compression crate is needed. Diagnostics are text of a few megabytes at most.

use std::io::Write;

/// CRC-32 (IEEE 802.3, as ZIP uses it), table-driven.
fn crc32(data: &[u8]) -> u32 {
  static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
  let table = TABLE.get_or_init(|| {
    let mut table = [0u32; 256];
    for (i, entry) in table.iter_mut().enumerate() {
      let mut c = i as u32;
      for _ in 0..8 {
        c = if c & 1 != 0 {
          0xEDB8_8320 ^ (c >> 1)
        } else {
          c >> 1
        };
      }
      *entry = c;
    }
    table
  });
  !data.iter().fold(!0u32, |c, &b| {
    table[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
  })
}

/// DOS date and time of an epoch second (UTC), as ZIP headers hold them.
fn dos_time(epoch_secs: u64) -> (u16, u16) {
  let iso = crate::logs::iso_time(epoch_secs * 1000);
  let n = |from: usize, to: usize| iso[from..to].parse::<u16>().unwrap_or(0);
  let (year, month, day) = (n(0, 4), n(5, 7), n(8, 10));
  let (hour, minute, second) = (n(11, 13), n(14, 16), n(17, 19));
  let date = (year.saturating_sub(1980) << 9) | (month << 5) | day;
  let time = (hour << 11) | (minute << 5) | (second / 2);
  (time, date)
}

/// Writes `entries` (name, content) as a ZIP archive; returns its size in bytes.
pub fn write(
  out: &mut impl Write,
  entries: &[(String, Vec<u8>)],
  epoch_secs: u64,
) -> std::io::Result<u64> {
  let (time, date) = dos_time(epoch_secs);
  let mut offset: u64 = 0;
  let mut central = Vec::new();
  let too_big = || std::io::Error::other("a diagnostics archive is limited to 4 GiB");
  for (name, data) in entries {
    let crc = crc32(data);
    let size = u32::try_from(data.len()).map_err(|_| too_big())?;
    let name_len = u16::try_from(name.len()).map_err(|_| too_big())?;
    let local_at = u32::try_from(offset).map_err(|_| too_big())?;
    // Bit 11: the name is UTF-8.
    let flags: u16 = 0x0800;
    let mut local = Vec::with_capacity(30 + name.len());
    local.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
    local.extend_from_slice(&20u16.to_le_bytes());
    local.extend_from_slice(&flags.to_le_bytes());
    local.extend_from_slice(&0u16.to_le_bytes()); // stored
    local.extend_from_slice(&time.to_le_bytes());
    local.extend_from_slice(&date.to_le_bytes());
    local.extend_from_slice(&crc.to_le_bytes());
    local.extend_from_slice(&size.to_le_bytes());
    local.extend_from_slice(&size.to_le_bytes());
    local.extend_from_slice(&name_len.to_le_bytes());
    local.extend_from_slice(&0u16.to_le_bytes());
    local.extend_from_slice(name.as_bytes());
    out.write_all(&local)?;
    out.write_all(data)?;
    offset += local.len() as u64 + data.len() as u64;

    central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
    central.extend_from_slice(&20u16.to_le_bytes()); // made by
    central.extend_from_slice(&20u16.to_le_bytes()); // needed
    central.extend_from_slice(&flags.to_le_bytes());
    central.extend_from_slice(&0u16.to_le_bytes());
    central.extend_from_slice(&time.to_le_bytes());
    central.extend_from_slice(&date.to_le_bytes());
    central.extend_from_slice(&crc.to_le_bytes());
    central.extend_from_slice(&size.to_le_bytes());
    central.extend_from_slice(&size.to_le_bytes());
    central.extend_from_slice(&name_len.to_le_bytes());
    central.extend_from_slice(&[0u8; 8]); // extra, comment, disk number, internal attributes
    central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
    central.extend_from_slice(&local_at.to_le_bytes());
    central.extend_from_slice(name.as_bytes());
  }
  let count = u16::try_from(entries.len()).map_err(|_| too_big())?;
  let central_at = u32::try_from(offset).map_err(|_| too_big())?;
  out.write_all(&central)?;
  let mut end = Vec::with_capacity(22);
  end.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
  end.extend_from_slice(&[0u8; 4]); // disk numbers
  end.extend_from_slice(&count.to_le_bytes());
  end.extend_from_slice(&count.to_le_bytes());
  end.extend_from_slice(&(central.len() as u32).to_le_bytes());
  end.extend_from_slice(&central_at.to_le_bytes());
  end.extend_from_slice(&0u16.to_le_bytes());
  out.write_all(&end)?;
  Ok(offset + central.len() as u64 + end.len() as u64)
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn crc32_matches_the_standard_check_value() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
  }

  /// Python's zipfile (the system's own reader here) opens it and finds every entry intact.
  #[cfg(unix)]
  #[test]
  fn an_archive_opens_with_python_zipfile() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.zip");
    let entries = vec![
      ("status.json".to_string(), b"{\"ok\":true}".to_vec()),
      (
        "logs/api.log".to_string(),
        "ünïcode line\n".repeat(1000).into_bytes(),
      ),
      ("empty.txt".to_string(), Vec::new()),
    ];
    let mut out = std::fs::File::create(&file).unwrap();
    let size = write(&mut out, &entries, 1_796_209_643).unwrap();
    assert_eq!(size, std::fs::metadata(&file).unwrap().len());
    let check = std::process::Command::new("python3")
      .args([
        "-c",
        "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); assert z.testzip() is None; print(','.join(f'{i.filename}:{i.file_size}:{i.date_time[0]}' for i in z.infolist()))",
      ])
      .arg(&file)
      .output()
      .expect("python3 runs the check");
    assert!(
      check.status.success(),
      "{}",
      String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(
      String::from_utf8_lossy(&check.stdout).trim(),
      format!(
        "status.json:11:2026,logs/api.log:{}:2026,empty.txt:0:2026",
        "ünïcode line\n".len() * 1000
      )
    );
  }
}
