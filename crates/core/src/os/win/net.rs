//! TCP on Windows: the table of listening sockets with their owner pids, and the socket options that make
//! a refused loopback connect fail at once instead of after ~2 s of SYN retries (libuv#2896).

use std::io;
use windows_sys::Win32::NetworkManagement::IpHelper::{
  GetExtendedTcpTable, MIB_TCP6ROW_OWNER_PID, MIB_TCPROW_OWNER_PID, TCP_TABLE_OWNER_PID_LISTENER,
};
use windows_sys::Win32::Networking::WinSock::{AF_INET, AF_INET6};

/// One listening socket: its port and its owner's pid (0 where the system does not say: Wine 8 gives 0
/// for every row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
  pub port: u16,
  pub pid: u32,
}

/// Every listening TCP socket, IPv4 and IPv6, from the system's table (one call per family).
pub fn listening() -> io::Result<Vec<Listening>> {
  let mut found = Vec::new();
  for family in [AF_INET, AF_INET6] {
    let buf = table(u32::from(family))?;
    let count = buf.first().copied().unwrap_or(0) as usize;
    if family == AF_INET {
      let fits = (buf.len() - 1) * 4 / std::mem::size_of::<MIB_TCPROW_OWNER_PID>();
      // SAFETY: MIB_TCPTABLE_OWNER_PID is dwNumEntries followed by the rows (all u32 fields, so offset 4
      // is aligned); no more rows are read than the buffer holds.
      let rows = unsafe {
        std::slice::from_raw_parts(
          buf.as_ptr().add(1).cast::<MIB_TCPROW_OWNER_PID>(),
          count.min(fits),
        )
      };
      found.extend(rows.iter().map(|r| Listening {
        port: u16::from_be(r.dwLocalPort as u16),
        pid: r.dwOwningPid,
      }));
    } else {
      let fits = (buf.len() - 1) * 4 / std::mem::size_of::<MIB_TCP6ROW_OWNER_PID>();
      // SAFETY: as above; MIB_TCP6ROW_OWNER_PID has 4-byte alignment (u8 arrays and u32 fields).
      let rows = unsafe {
        std::slice::from_raw_parts(
          buf.as_ptr().add(1).cast::<MIB_TCP6ROW_OWNER_PID>(),
          count.min(fits),
        )
      };
      found.extend(rows.iter().map(|r| Listening {
        port: u16::from_be(r.dwLocalPort as u16),
        pid: r.dwOwningPid,
      }));
    }
  }
  Ok(found)
}

fn table(family: u32) -> io::Result<Vec<u32>> {
  const ERROR_INSUFFICIENT_BUFFER: u32 = 122;
  let mut size = 4096u32;
  for _ in 0..8 {
    // u32 storage keeps the rows aligned.
    let mut buf = vec![0u32; (size as usize).div_ceil(4).max(1)];
    let mut len = (buf.len() * 4) as u32;
    // SAFETY: the buffer is writable for `len` bytes; the call writes at most that and updates `len`.
    let rc = unsafe {
      GetExtendedTcpTable(
        buf.as_mut_ptr().cast(),
        &mut len,
        0,
        family,
        TCP_TABLE_OWNER_PID_LISTENER,
        0,
      )
    };
    match rc {
      0 => return Ok(buf),
      ERROR_INSUFFICIENT_BUFFER => size = len.max(size) + 1024,
      e => return Err(io::Error::from_raw_os_error(e as i32)),
    }
  }
  Err(io::Error::other("the TCP table kept growing"))
}

/// What each fast-fail option did: `Ok`, or the WinSock error (Wine 8 supports neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastFail {
  pub initial_rto: Result<(), i32>,
  pub max_rt: Result<(), i32>,
}

/// No SYN retransmissions (`SIO_TCP_INITIAL_RTO`, Windows 10 1703+) and at most `max_rt_secs` of
/// retransmission overall (`TCP_MAXRT`, older systems): a refused connect fails on the first reset. Both
/// best effort: a failure leaves the socket as it was.
pub fn set_fast_fail(socket: &socket2::Socket, max_rt_secs: u32) -> FastFail {
  use std::os::windows::io::AsRawSocket;
  use windows_sys::Win32::Networking::WinSock::{
    setsockopt, WSAGetLastError, WSAIoctl, IPPROTO_TCP, SIO_TCP_INITIAL_RTO, SOCKET, SOCKET_ERROR,
    TCP_INITIAL_RTO_PARAMETERS, TCP_MAXRT,
  };
  let raw = socket.as_raw_socket() as SOCKET;
  let params = TCP_INITIAL_RTO_PARAMETERS {
    Rtt: 0xffff,                 // TCP_INITIAL_RTO_UNSPECIFIED_RTT
    MaxSynRetransmissions: 0xfe, // TCP_INITIAL_RTO_NO_SYN_RETRANSMISSIONS, (UCHAR)-2 in the C header
  };
  let mut returned = 0u32;
  // SAFETY: a valid socket; the input buffer is the parameters struct with its size; no output, no
  // overlapped operation.
  let initial_rto = unsafe {
    if WSAIoctl(
      raw,
      SIO_TCP_INITIAL_RTO,
      (&raw const params).cast(),
      std::mem::size_of_val(&params) as u32,
      std::ptr::null_mut(),
      0,
      &mut returned,
      std::ptr::null_mut(),
      None,
    ) == SOCKET_ERROR
    {
      Err(WSAGetLastError())
    } else {
      Ok(())
    }
  };
  // SAFETY: a valid socket; the option value is a u32 (DWORD seconds) with its size.
  let max_rt = unsafe {
    if setsockopt(
      raw,
      IPPROTO_TCP,
      TCP_MAXRT,
      (&raw const max_rt_secs).cast(),
      4,
    ) == SOCKET_ERROR
    {
      Err(WSAGetLastError())
    } else {
      Ok(())
    }
  };
  FastFail {
    initial_rto,
    max_rt,
  }
}
