//! A small netlink request/reply channel for the families no packet crate of ours covers
//! (rtnetlink addresses, ctnetlink). Requests are built by hand; replies are parsed with
//! bounds checks only (a short or odd message is skipped, never a panic).

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr as NetlinkAddr};

use super::sockdiag::set_recv_timeout;

/// struct nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32.
pub const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
/// The kernel marks nested attributes with this bit of nla_type (and may mark byte order).
const NLA_TYPE_MASK: u16 = 0x3fff;
pub const NLA_F_NESTED: u16 = 0x8000;

/// Netlink dump replies are at most 32 KiB per datagram (the kernel caps its dump buffers).
const RECV_BUFFER: usize = 64 * 1024;
/// Bound on datagrams read for one request: a dump of addresses is a few datagrams.
const MAX_DATAGRAMS: usize = 1024;

/// One netlink socket of one protocol, bound to the network namespace it was created in.
pub struct NlSocket {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl NlSocket {
    /// A socket in the calling thread's network namespace; every receive gives up after
    /// `timeout` (a reply never arrives only if something is wrong: tracer must not hang).
    pub fn new_here(protocol: isize, timeout: Duration) -> io::Result<NlSocket> {
        let mut socket = Socket::new(protocol)?;
        socket.bind_auto()?;
        socket.connect(&NetlinkAddr::new(0, 0))?;
        set_recv_timeout(&socket, timeout)?;
        Ok(NlSocket { socket, sequence: 0, buffer: Vec::with_capacity(RECV_BUFFER) })
    }

    /// A socket in network namespace `netns` (an open /proc/PID/ns/net): a short-lived thread
    /// enters it (setns affects only the calling thread) and creates the socket, which stays
    /// bound to that namespace for its whole life.
    pub fn new_in(netns: BorrowedFd<'_>, protocol: isize, timeout: Duration) -> io::Result<NlSocket> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                    NlSocket::new_here(protocol, timeout)
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("netlink helper thread panicked")))
        })
    }

    /// A non-blocking socket in `netns` (None: the caller's) that receives the multicast
    /// group `group` (the kernel's NFNLGRP_* / RTNLGRP_* number).
    pub fn subscribe_in(netns: Option<BorrowedFd<'_>>, protocol: isize, group: u32) -> io::Result<NlSocket> {
        let make = || -> io::Result<NlSocket> {
            let mut socket = Socket::new(protocol)?;
            socket.bind_auto()?;
            socket.add_membership(group)?;
            socket.set_non_blocking(true)?;
            Ok(NlSocket { socket, sequence: 0, buffer: Vec::with_capacity(RECV_BUFFER) })
        };
        let Some(netns) = netns else { return make() };
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                    make()
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("netlink helper thread panicked")))
        })
    }

    /// The payloads of the messages of type `msg_type` waiting on a subscribed socket, at most
    /// `max_datagrams` datagrams' worth (the rest waits for the next call). Messages the
    /// kernel dropped because the socket was full (ENOBUFS) are simply lost.
    pub fn drain(&mut self, msg_type: u16, max_datagrams: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for _ in 0..max_datagrams {
            self.buffer.clear();
            match self.socket.recv(&mut self.buffer, 0) {
                Ok(0) => break,
                Ok(n) => {
                    let datagram = &self.buffer[..n.min(self.buffer.len())];
                    out.extend(messages(datagram).into_iter().filter(|(k, _, _)| *k == msg_type).map(|(_, _, body)| body.to_vec()));
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(_) => break,
            }
        }
        out
    }

    /// Sends one request and collects the payloads (after the nlmsghdr) of the replies of the
    /// given type. A dump ends at NLMSG_DONE; a plain request at its first reply or error.
    /// An NLMSG_ERROR with a non-zero code becomes that errno.
    pub fn request(&mut self, msg_type: u16, flags: u16, payload: &[u8], reply_type: u16) -> io::Result<Vec<Vec<u8>>> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let message = encode_message(msg_type, flags, sequence, payload);
        self.socket.send(&message, 0)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        for _ in 0..MAX_DATAGRAMS {
            self.buffer.clear();
            let n = self.socket.recv(&mut self.buffer, 0)?.min(self.buffer.len());
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "netlink: empty reply"));
            }
            let datagram = &self.buffer[..n];
            for (kind, seq, body) in messages(datagram) {
                // A late reply to an earlier request that timed out: not ours.
                if seq != sequence {
                    continue;
                }
                match kind {
                    NLMSG_NOOP => {}
                    NLMSG_DONE => return Ok(replies),
                    NLMSG_ERROR => {
                        let code = body.get(..4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0);
                        if code != 0 {
                            return Err(io::Error::from_raw_os_error(code.saturating_neg()));
                        }
                        // An acknowledgement ends a request.
                        return Ok(replies);
                    }
                    k if k == reply_type => {
                        replies.push(body.to_vec());
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
        Err(io::Error::other("netlink reply did not end"))
    }
}

/// nlmsghdr + payload, the length field filled in.
pub fn encode_message(msg_type: u16, flags: u16, sequence: u32, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + payload.len();
    let mut message = Vec::with_capacity(align4(len));
    message.extend_from_slice(&(len as u32).to_ne_bytes());
    message.extend_from_slice(&msg_type.to_ne_bytes());
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&sequence.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(payload);
    message.resize(align4(len), 0);
    message
}

/// The messages of one datagram as (type, sequence, payload); stops at the first message whose
/// length does not fit.
pub fn messages(datagram: &[u8]) -> Vec<(u16, u32, &[u8])> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            break;
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let sequence = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
        out.push((kind, sequence, &rest[NLMSG_HDRLEN..len]));
        rest = &rest[align4(len).min(rest.len())..];
    }
    out
}

/// Netlink attributes (struct nlattr: len u16, type u16, value) as (type without flag bits,
/// value); stops at the first attribute whose length does not fit.
pub fn attributes(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        if len < 4 || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        out.push((kind, &buf[4..len]));
        buf = &buf[align4(len).min(buf.len())..];
    }
    out
}

/// The value of the first attribute of type `kind` in `buf`.
pub fn attribute(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attributes(buf).into_iter().find(|(k, _)| *k == kind).map(|(_, v)| v)
}

/// Appends one attribute (padded to 4 bytes) to `out`.
pub fn push_attribute(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(align4(out.len()), 0);
}

pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_attributes_round_trip_and_odd_lengths_stop_parsing() {
        let mut payload = vec![9u8; 3];
        payload.resize(4, 0);
        push_attribute(&mut payload, 2 | NLA_F_NESTED, &[1, 2, 3, 4, 5]);
        push_attribute(&mut payload, 3, &[]);
        let mut datagram = encode_message(20, NLM_F_REQUEST, 7, &payload);
        datagram.extend(encode_message(NLMSG_DONE, 0, 7, &[]));
        let parsed = messages(&datagram);
        assert_eq!(parsed.len(), 2);
        assert_eq!((parsed[0].0, parsed[0].1), (20, 7));
        assert_eq!(parsed[1].0, NLMSG_DONE);
        let attrs = attributes(&parsed[0].2[4..]);
        assert_eq!(attrs, vec![(2, &[1u8, 2, 3, 4, 5][..]), (3, &[][..])]);
        assert_eq!(attribute(&parsed[0].2[4..], 3), Some(&[][..]));
        assert_eq!(attribute(&parsed[0].2[4..], 4), None);
        // A length past the end, a length below the header: nothing, no panic.
        let mut bad = datagram.clone();
        bad[0] = 0xff;
        bad[1] = 0xff;
        assert!(messages(&bad).is_empty());
        assert!(messages(&[1, 0, 0, 0]).is_empty());
        assert!(attributes(&[2, 0, 1, 0]).is_empty());
        assert!(attributes(&[200, 0, 1, 0, 1]).is_empty());
        // Every truncation of a valid datagram parses without a panic.
        for cut in 0..datagram.len() {
            for (_, _, body) in messages(&datagram[..cut]) {
                let _ = attributes(body);
            }
        }
    }
}
