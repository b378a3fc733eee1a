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

/// `(local port, socket inode)` of every TCP socket in the LISTEN state: asked of the kernel over netlink
/// (sock_diag), which walks only the listening-socket table. Reading `/proc/net/tcp` instead walks the whole
/// established-connection hash (262,144 buckets on this project's 24 GiB test machine: ~4 ms a read), so it
/// is only the fallback where netlink is refused.
#[cfg(target_os = "linux")]
fn listening_sockets() -> Option<Vec<(u16, u64)>> {
  diag::listening().or_else(listening_from_proc)
}

#[cfg(target_os = "linux")]
fn listening_from_proc() -> Option<Vec<(u16, u64)>> {
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

/// The sock_diag netlink protocol (linux/inet_diag.h): one dump request per address family, filtered by the
/// kernel to sockets in the LISTEN state.
#[cfg(target_os = "linux")]
mod diag {
  use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

  const NETLINK_SOCK_DIAG: i32 = 4;
  const SOCK_DIAG_BY_FAMILY: u16 = 20;
  const NLMSG_ERROR: u16 = 2;
  const NLMSG_DONE: u16 = 3;
  const TCP_LISTEN: u32 = 10;
  const NLMSG_HDR: usize = 16;
  /// inet_diag_req_v2: family, protocol, ext, pad, states (u32), then a 48-byte inet_diag_sockid.
  const REQUEST_LEN: usize = 4 + 4 + 48;
  /// In inet_diag_msg: the source port (big-endian) after family/state/timer/retrans; the inode after the
  /// 48-byte sockid and expires, rqueue, wqueue, uid.
  const SPORT_AT: usize = 4;
  const INODE_AT: usize = 4 + 48 + 16;

  pub fn listening() -> Option<Vec<(u16, u64)>> {
    // SAFETY: socket() returns a new descriptor we own, or -1.
    let fd = unsafe {
      libc::socket(
        libc::AF_NETLINK,
        libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
        NETLINK_SOCK_DIAG,
      )
    };
    if fd < 0 {
      return None;
    }
    // SAFETY: fd is a fresh, valid descriptor.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut found = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
      dump(&socket, family as u8, &mut found)?;
    }
    Some(found)
  }

  fn dump(socket: &OwnedFd, family: u8, found: &mut Vec<(u16, u64)>) -> Option<()> {
    let total = NLMSG_HDR + REQUEST_LEN;
    let mut request = vec![0u8; total];
    request[0..4].copy_from_slice(&(total as u32).to_ne_bytes());
    request[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    request[6..8].copy_from_slice(&flags.to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence number
    request[NLMSG_HDR] = family;
    request[NLMSG_HDR + 1] = libc::IPPROTO_TCP as u8;
    request[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    // SAFETY: a zeroed sockaddr_nl with only the family set addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: the buffer and address are valid for the given lengths.
    let sent = unsafe {
      libc::sendto(
        socket.as_raw_fd(),
        request.as_ptr().cast(),
        request.len(),
        0,
        (&kernel as *const libc::sockaddr_nl).cast(),
        std::mem::size_of::<libc::sockaddr_nl>() as u32,
      )
    };
    if sent < 0 {
      return None;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
      // SAFETY: buf is valid for writes of its length.
      let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
      if n < 0 {
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
          continue;
        }
        return None;
      }
      let mut at = 0usize;
      let n = n as usize;
      while at + NLMSG_HDR <= n {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().ok()?);
        if len < NLMSG_HDR || at + len > n {
          return None;
        }
        match kind {
          NLMSG_DONE => return Some(()),
          NLMSG_ERROR => return None,
          SOCK_DIAG_BY_FAMILY => {
            let msg = &buf[at + NLMSG_HDR..at + len];
            if msg.len() >= INODE_AT + 4 {
              let port = u16::from_be_bytes([msg[SPORT_AT], msg[SPORT_AT + 1]]);
              let inode = u32::from_ne_bytes(msg[INODE_AT..INODE_AT + 4].try_into().ok()?);
              found.push((port, u64::from(inode)));
            }
          }
          _ => {}
        }
        at += (len + 3) & !3;
      }
      if n == 0 {
        return None;
      }
    }
  }
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
  port_holders_hinted(ports, &[])
}

/// Like `port_holders`, looking first at the processes in `likely` (a record's backend usually holds its
/// own port), so that the full scan of every process's descriptors is needed only for the rest.
pub fn port_holders_hinted(ports: &[u16], likely: &[u32]) -> Vec<PortHolder> {
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
    let wanted = inode_port.values().collect::<HashSet<_>>().len();
    for &pid in likely {
      if owners.len() < wanted {
        scan_process_fds(pid, &inode_port, &mut owners);
      }
    }
    if owners.len() < wanted {
      if let Ok(procs) = std::fs::read_dir("/proc") {
        for entry in procs.flatten() {
          let pid = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok());
          if let Some(pid) = pid.filter(|p| !likely.contains(p)) {
            scan_process_fds(pid, &inode_port, &mut owners);
            if owners.len() == wanted {
              break;
            }
          }
        }
      }
    }
    ports
      .iter()
      .filter(|p| listened.contains(p))
      .map(|&port| {
        let pid = owners.get(&port).copied();
        let name = pid.and_then(crate::identity::process_name);
        PortHolder { port, pid, name }
      })
      .collect()
  }
  #[cfg(not(target_os = "linux"))]
  {
    let _ = (
      ports,
      likely,
      HashMap::<u8, u8>::new(),
      HashSet::<u8>::new(),
    );
    Vec::new()
  }
}

/// Matches one process's descriptors (`/proc/PID/fd/*` → `socket:[INODE]`) against the wanted inodes.
#[cfg(target_os = "linux")]
fn scan_process_fds(pid: u32, inode_port: &HashMap<u64, u16>, owners: &mut HashMap<u16, u32>) {
  let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
    return;
  };
  for fd in fds.flatten() {
    let Ok(target) = std::fs::read_link(fd.path()) else {
      continue;
    };
    let target = target.to_string_lossy();
    let inode = target
      .strip_prefix("socket:[")
      .and_then(|s| s.strip_suffix(']'))
      .and_then(|s| s.parse::<u64>().ok());
    if let Some(&port) = inode.and_then(|i| inode_port.get(&i)) {
      owners.entry(port).or_insert(pid);
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
  fn netlink_and_proc_agree_on_listening_sockets() {
    let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let v6 = std::net::TcpListener::bind("[::1]:0").ok();
    let netlink = diag::listening().expect("sock_diag answers");
    let proc = listening_from_proc().unwrap();
    // Other tests open and close listeners meanwhile: compare only ours.
    let port = v4.local_addr().unwrap().port();
    let inode_of = |list: &[(u16, u64)]| list.iter().find(|(p, _)| *p == port).map(|(_, i)| *i);
    assert!(inode_of(&netlink).is_some_and(|i| i != 0));
    assert_eq!(inode_of(&netlink), inode_of(&proc));
    if let Some(v6) = v6 {
      let port6 = v6.local_addr().unwrap().port();
      assert!(netlink.iter().any(|&(p, _)| p == port6));
    }
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
