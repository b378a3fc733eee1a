//! Which TCP ports are listened on, and by which process — read natively from the OS (Linux:
//! `/proc/net/tcp`, `/proc/net/tcp6` and `/proc/PID/fd`), never by spawning `ss`, `lsof` or `netstat`.

use std::collections::{HashMap, HashSet};

/// The process holding a port, where the OS tells (on Linux a user sees the holders it owns, or all as root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHolder {
  pub port: u16,
  pub pid: Option<u32>,
  pub name: Option<String>,
}

/// `(local port, socket inode)` of every TCP socket in the LISTEN state.
#[cfg(target_os = "linux")]
fn listening_sockets() -> Option<Vec<(u16, u64)>> {
  let mut found = Vec::new();
  let mut any_table = false;
  for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
    let Ok(text) = std::fs::read_to_string(table) else {
      continue;
    };
    any_table = true;
    found.extend(text.lines().skip(1).filter_map(parse_listen_line));
  }
  any_table.then_some(found)
}

/// One line of `/proc/net/tcp*`: `sl local_address rem_address st … uid timeout inode`, with the address
/// as `HEXIP:HEXPORT` and the state `0A` for LISTEN.
fn parse_listen_line(line: &str) -> Option<(u16, u64)> {
  let fields: Vec<&str> = line.split_whitespace().collect();
  if fields.get(3)? != &"0A" {
    return None;
  }
  let port_hex = fields.get(1)?.rsplit(':').next()?;
  let port = u16::from_str_radix(port_hex, 16).ok()?;
  let inode = fields.get(9)?.parse().ok()?;
  Some((port, inode))
}

/// Ports that some socket listens on, in one read of the kernel's tables; `None` where the OS has no such
/// table (the caller then binds every candidate).
pub fn listening_ports() -> Option<HashSet<u16>> {
  #[cfg(target_os = "linux")]
  {
    listening_sockets().map(|s| s.into_iter().map(|(port, _)| port).collect())
  }
  #[cfg(not(target_os = "linux"))]
  {
    None
  }
}

/// For each port, the process listening on it, if any and if the OS tells.
pub fn port_holders(ports: &[u16]) -> Vec<PortHolder> {
  #[cfg(target_os = "linux")]
  {
    let mut inode_port: HashMap<u64, u16> = HashMap::new();
    let mut listened: HashSet<u16> = HashSet::new();
    for (port, inode) in listening_sockets().unwrap_or_default() {
      if ports.contains(&port) {
        listened.insert(port);
        if inode != 0 {
          inode_port.insert(inode, port);
        }
      }
    }
    let mut owners: HashMap<u16, u32> = HashMap::new();
    if !inode_port.is_empty() {
      scan_fds(&inode_port, &mut owners);
    }
    ports
      .iter()
      .filter(|p| listened.contains(p))
      .map(|&port| {
        let pid = owners.get(&port).copied();
        let name = pid.and_then(|pid| {
          std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()
            .map(|s| s.trim_end().to_owned())
        });
        PortHolder { port, pid, name }
      })
      .collect()
  }
  #[cfg(not(target_os = "linux"))]
  {
    let _ = (ports, HashMap::<u8, u8>::new(), HashSet::<u8>::new());
    Vec::new()
  }
}

/// Match socket inodes against `/proc/*/fd/*` links (`socket:[INODE]`).
#[cfg(target_os = "linux")]
fn scan_fds(inode_port: &HashMap<u64, u16>, owners: &mut HashMap<u16, u32>) {
  let Ok(procs) = std::fs::read_dir("/proc") else {
    return;
  };
  for entry in procs.flatten() {
    let Some(pid) = entry
      .file_name()
      .to_str()
      .and_then(|s| s.parse::<u32>().ok())
    else {
      continue;
    };
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
      continue;
    };
    for fd in fds.flatten() {
      let Ok(target) = std::fs::read_link(fd.path()) else {
        continue;
      };
      let target = target.to_string_lossy();
      let Some(inode) = target
        .strip_prefix("socket:[")
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse::<u64>().ok())
      else {
        continue;
      };
      if let Some(&port) = inode_port.get(&inode) {
        owners.entry(port).or_insert(pid);
        if owners.len() == inode_port.values().collect::<HashSet<_>>().len() {
          return;
        }
      }
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn parses_a_listen_line_and_skips_others() {
    let listen = "   0: 0100007F:E7CD 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 23406 1 0000000000000000 100 0 0 10 0";
    assert_eq!(parse_listen_line(listen), Some((0xE7CD, 23406)));
    let established = "   1: 0100007F:E7CD 0100007F:A000 01 00000000:00000000 00:00000000 00000000  1000        0 23407 1 0000000000000000 100 0 0 10 0";
    assert_eq!(parse_listen_line(established), None);
    assert_eq!(parse_listen_line("garbage"), None);
  }

  #[cfg(target_os = "linux")]
  #[test]
  fn finds_the_holder_of_a_listening_port() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    assert!(listening_ports().unwrap().contains(&port));
    let holders = port_holders(&[port]);
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].pid, Some(std::process::id()));
  }
}
