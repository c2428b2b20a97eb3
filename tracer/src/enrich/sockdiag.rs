//! sock_diag queries: TCP and Unix listeners with their accept queues, in one network
//! namespace. A NETLINK_SOCK_DIAG socket answers about the namespace it was created in, so a
//! socket for another namespace is created on a short-lived thread that first enters it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{self, ExtensionFlags, InetRequest, SocketId},
    unix::{self, nlas::UnixDiagName, ShowFlags, UnixRequest},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NetlinkAddr};

use crate::event::Queue;

/// Netlink dump replies are at most 32 KiB per datagram (the kernel caps its dump buffers).
const RECV_BUFFER: usize = 64 * 1024;
/// A dump always completes; the timeout only keeps a wedged kernel from hanging tracer.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);

/// A TCP socket in LISTEN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpListenerInfo {
    pub addr: SocketAddr,
    /// Socket inode (as in /proc/PID/fd links `socket:[INODE]`).
    pub inode: u32,
    /// For listeners the kernel reports the accept queue: rqueue = sk_ack_backlog (queued,
    /// not yet accepted), wqueue = sk_max_ack_backlog (the listen() backlog).
    pub queue: Queue,
    /// IPv6 sockets only: whether IPV6_V6ONLY is set (None when the kernel did not say).
    pub v6only: Option<bool>,
}

/// A Unix stream/seqpacket socket in LISTEN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixListenerInfo {
    /// Filesystem path, or `@name` for an abstract socket.
    pub path: String,
    pub inode: u32,
    /// UNIX_DIAG_RQLEN for listeners: (pending connections, listen() backlog).
    pub queue: Queue,
}

/// A TCP socket other than a listener (a connection, or one in TIME_WAIT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpConnInfo {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The kernel's TCP state number (`TCP_ESTABLISHED` = 1 ...): see `tcp_state_name`.
    pub state: u8,
    /// Socket inode; 0 for TIME_WAIT sockets and orphans (no file, hence no process).
    pub inode: u32,
}

/// The kernel's name of a TCP state number (as `ss` and /proc/net/tcp tell them), `UNKNOWN`
/// for a number this table does not know.
pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_CLOSE_WAIT: u8 = 8;

/// The sock_diag family of an address: AF_INET for IPv4 and IPv4-mapped IPv6 (such a peer is
/// reached through an IPv4 socket, or a dual-stack one the IPv4 lookup also finds).
fn family_of(addr: SocketAddr) -> (u8, SocketId) {
    match addr.ip().to_canonical() {
        IpAddr::V4(_) => (AF_INET, SocketId::new_v4()),
        IpAddr::V6(_) => (AF_INET6, SocketId::new_v6()),
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// A sock_diag netlink socket bound to one network namespace.
pub struct DiagSocket {
    socket: Socket,
    sequence: u32,
}

impl DiagSocket {
    /// A socket in the calling thread's network namespace.
    pub fn new_here() -> io::Result<DiagSocket> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&NetlinkAddr::new(0, 0))?;
        set_recv_timeout(&socket, RECV_TIMEOUT)?;
        Ok(DiagSocket { socket, sequence: 0 })
    }

    /// A socket in the network namespace `netns` (an open /proc/PID/ns/net). A dedicated
    /// thread enters the namespace (setns affects only the calling thread), creates the socket
    /// and exits; the socket stays bound to that namespace for its whole life.
    pub fn new_in(netns: BorrowedFd<'_>) -> io::Result<DiagSocket> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(io::Error::from)?;
                    DiagSocket::new_here()
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("sock_diag helper thread panicked")))
        })
    }

    /// Every TCP listener (IPv4 and IPv6) of this namespace.
    pub fn tcp_listeners(&mut self) -> io::Result<Vec<TcpListenerInfo>> {
        let mut listeners = Vec::new();
        for (family, socket_id) in [(AF_INET, SocketId::new_v4()), (AF_INET6, SocketId::new_v6())] {
            let request = SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states: inet::StateFlags::LISTEN,
                socket_id,
            });
            for message in self.dump(request)? {
                if let SockDiagMessage::InetResponse(response) = message {
                    let h = &response.header;
                    let v6only = response.nlas.iter().find_map(|nla| match nla {
                        inet::nlas::Nla::SkV6Only(v) => Some(*v),
                        _ => None,
                    });
                    listeners.push(TcpListenerInfo {
                        addr: SocketAddr::new(h.socket_id.source_address, h.socket_id.source_port),
                        inode: h.inode,
                        queue: Queue { len: h.recv_queue, max: h.send_queue },
                        v6only,
                    });
                }
            }
        }
        Ok(listeners)
    }

    /// Every named Unix listener of this namespace.
    pub fn unix_listeners(&mut self) -> io::Result<Vec<UnixListenerInfo>> {
        let request = SockDiagMessage::UnixRequest(UnixRequest {
            state_flags: unix::StateFlags::LISTEN,
            inode: 0,
            show_flags: ShowFlags::NAME | ShowFlags::RQLEN,
            cookie: [0xff; 8],
        });
        let mut listeners = Vec::new();
        for message in self.dump(request)? {
            if let SockDiagMessage::UnixResponse(response) = message {
                // An unnamed listener cannot be connected to by path: not a target.
                let Some(path) = response.name().map(unix_name) else { continue };
                let (len, max) = match (
                    response.number_of_pending_connection(),
                    response.max_number_of_pending_connection(),
                ) {
                    (Some(len), Some(max)) => (len, max),
                    _ => continue,
                };
                listeners.push(UnixListenerInfo {
                    path,
                    inode: response.header.inode,
                    queue: Queue { len, max },
                });
            }
        }
        Ok(listeners)
    }

    /// Every TCP socket but listeners whose remote end is `remote` (IPv4-mapped addresses
    /// compared as IPv4), TIME_WAIT included.
    pub fn tcp_connections_to(&mut self, remote: SocketAddr) -> io::Result<Vec<TcpConnInfo>> {
        let (family, socket_id) = family_of(remote);
        let request = SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: inet::StateFlags::all() - inet::StateFlags::LISTEN,
            socket_id,
        });
        let remote = canonical(remote);
        Ok(self
            .dump(request)?
            .iter()
            .filter_map(tcp_conn_info)
            .filter(|c| c.remote == remote)
            .collect())
    }

    /// The TCP socket whose local end is `local` and remote end `remote`, if there is one: one
    /// exact lookup in the kernel's hash (no dump).
    pub fn tcp_connection(&mut self, local: SocketAddr, remote: SocketAddr) -> io::Result<Option<TcpConnInfo>> {
        let (family, mut socket_id) = family_of(local);
        let (local, remote) = (canonical(local), canonical(remote));
        socket_id.source_address = local.ip();
        socket_id.source_port = local.port();
        socket_id.destination_address = remote.ip();
        socket_id.destination_port = remote.port();
        // INET_DIAG_NOCOOKIE: any socket of these addresses.
        socket_id.cookie = [0xff; 8];
        let request = SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: inet::StateFlags::all(),
            socket_id,
        });
        let replies = match self.exchange(request, NLM_F_REQUEST) {
            Ok(replies) => replies,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        // The kernel's lookup falls back to a listener on the local address when no
        // connection matches: only the exact pair counts.
        Ok(replies.iter().filter_map(tcp_conn_info).find(|c| c.local == local && c.remote == remote))
    }

    /// Sends one dump request and collects the replies up to NLMSG_DONE.
    fn dump(&mut self, request: SockDiagMessage) -> io::Result<Vec<SockDiagMessage>> {
        self.exchange(request, NLM_F_REQUEST | NLM_F_DUMP)
    }

    /// Sends one request and collects the replies: up to NLMSG_DONE for a dump, the first
    /// message for an exact lookup (which gets one reply, or an error, and no NLMSG_DONE).
    fn exchange(&mut self, request: SockDiagMessage, flags: u16) -> io::Result<Vec<SockDiagMessage>> {
        let is_dump = flags & NLM_F_DUMP != 0;
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(request));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;

        let mut replies = Vec::new();
        let mut buffer: Vec<u8> = Vec::with_capacity(RECV_BUFFER);
        loop {
            buffer.clear();
            let received = self.socket.recv(&mut buffer, 0)?.min(buffer.len());
            if received == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "sock_diag: empty reply"));
            }
            let mut offset = 0;
            while offset + 16 <= received {
                // nlmsg_len leads every message; use it to step over ones that fail to parse.
                let len =
                    u32::from_ne_bytes(buffer[offset..offset + 4].try_into().expect("4 bytes")) as usize;
                if len < 16 || offset + len > received {
                    break;
                }
                let bytes = &buffer[offset..offset + len];
                offset += (len + 3) & !3;
                let Ok(message) = NetlinkMessage::<SockDiagMessage>::deserialize(bytes) else {
                    continue;
                };
                if message.header.sequence_number != self.sequence {
                    continue; // a late reply to an earlier, abandoned dump
                }
                match message.payload {
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) => {
                        return Err(match e.code {
                            Some(code) => io::Error::from_raw_os_error(-code.get()),
                            None => io::Error::other("sock_diag: unexpected ACK"),
                        })
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m);
                        if !is_dump {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

impl AsFd for DiagSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// A sock_diag TCP reply as a connection (None for other replies).
fn tcp_conn_info(message: &SockDiagMessage) -> Option<TcpConnInfo> {
    let SockDiagMessage::InetResponse(response) = message else { return None };
    let h = &response.header;
    Some(TcpConnInfo {
        local: canonical(SocketAddr::new(h.socket_id.source_address, h.socket_id.source_port)),
        remote: canonical(SocketAddr::new(h.socket_id.destination_address, h.socket_id.destination_port)),
        state: h.state,
        inode: h.inode,
    })
}

/// SO_RCVTIMEO on a netlink socket: a kernel that never answers cannot hold tracer up.
pub(super) fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: tv is a valid timeval for the duration of the call; the fd is open.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A Unix socket name as tracer writes targets: the path, or `@name` for abstract names.
pub fn unix_name(name: &UnixDiagName) -> String {
    match name {
        UnixDiagName::Pathname(p) => p.to_string_lossy().into_owned(),
        UnixDiagName::Abstract(bytes) => format!("@{}", String::from_utf8_lossy(bytes)),
    }
}

/// How well a TCP listener serves `target`: 0 = bound to exactly that address, 1 = wildcard of
/// the same family, 2 = IPv6 wildcard that also accepts IPv4 (not V6ONLY); None = does not.
pub fn tcp_match_rank(listener: &TcpListenerInfo, target: SocketAddr) -> Option<u8> {
    if listener.addr.port() != target.port() {
        return None;
    }
    let wanted = target.ip().to_canonical();
    let bound = listener.addr.ip().to_canonical();
    if bound == wanted {
        return Some(0);
    }
    match (listener.addr.ip(), wanted) {
        (IpAddr::V4(a), IpAddr::V4(_)) if a.is_unspecified() => Some(1),
        (IpAddr::V6(a), IpAddr::V6(_)) if a.is_unspecified() => Some(1),
        // Linux's default (net.ipv6.bindv6only=0) lets a [::] listener take IPv4 connections.
        (IpAddr::V6(a), IpAddr::V4(_)) if a.is_unspecified() && listener.v6only != Some(true) => Some(2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(addr: &str, v6only: Option<bool>) -> TcpListenerInfo {
        TcpListenerInfo { addr: addr.parse().unwrap(), inode: 1, queue: Queue { len: 0, max: 1 }, v6only }
    }

    #[test]
    fn ranks_listeners_for_a_target() {
        let t: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        assert_eq!(tcp_match_rank(&listener("127.0.0.1:8000", None), t), Some(0));
        assert_eq!(tcp_match_rank(&listener("0.0.0.0:8000", None), t), Some(1));
        assert_eq!(tcp_match_rank(&listener("[::]:8000", Some(false)), t), Some(2));
        assert_eq!(tcp_match_rank(&listener("[::]:8000", Some(true)), t), None);
        assert_eq!(tcp_match_rank(&listener("127.0.0.2:8000", None), t), None);
        assert_eq!(tcp_match_rank(&listener("127.0.0.1:8001", None), t), None);
        assert_eq!(tcp_match_rank(&listener("[::ffff:127.0.0.1]:8000", None), t), Some(0));
        let t6: SocketAddr = "[::1]:8000".parse().unwrap();
        assert_eq!(tcp_match_rank(&listener("[::]:8000", Some(true)), t6), Some(1));
        assert_eq!(tcp_match_rank(&listener("0.0.0.0:8000", None), t6), None);
    }

    #[test]
    fn names_unix_sockets() {
        assert_eq!(unix_name(&UnixDiagName::Pathname("/run/a.sock".into())), "/run/a.sock");
        assert_eq!(unix_name(&UnixDiagName::Abstract(b"app".to_vec())), "@app");
    }
}
