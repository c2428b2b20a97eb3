//! Where a connection was address-translated to: one ctnetlink IPCTNL_MSG_CT_GET for the
//! conntrack entry whose original tuple is the flow as the client dialled it; the reply
//! tuple's source is the backend the packets really went to (DNAT: a Service address, a
//! published port). Built by hand on `rawnl` (no maintained crate covers ctnetlink queries).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::rawnl::{self, NlSocket, NLA_F_NESTED, NLM_F_REQUEST};
use crate::event::FlowAddr;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
/// The multicast group of conntrack's destroy events.
pub const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
/// The type of a destroy event.
pub const DESTROY_EVENT: u16 = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE;
/// struct nfgenmsg: family u8, version u8, res_id be16.
const NFGENMSG_LEN: usize = 4;
const NFNETLINK_V0: u8 = 0;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// Whether the kernel has connection tracking at all (built in, or its module loaded). Asking
/// ctnetlink otherwise would make the kernel load the modules: tracer must not change the
/// host's firewall, and without conntrack there is no NAT to find.
pub fn conntrack_present() -> bool {
    Path::new("/sys/module/nf_conntrack").exists()
}

/// The backend `flow` (TCP, as the client dialled it) was translated to, from the conntrack
/// table of the socket's namespace: Ok(None) when there is no entry (ENOENT), or the entry is
/// not translated.
pub fn backend_of(socket: &mut NlSocket, flow: FlowAddr) -> io::Result<Option<SocketAddr>> {
    let Some(request) = encode_get(flow) else { return Ok(None) };
    let msg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
    let reply_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
    let replies = match socket.request(msg_type, NLM_F_REQUEST, &request, reply_type) {
        Ok(r) => r,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(replies.iter().find_map(|r| translated_backend(r, flow)))
}

/// A destroy event's translated TCP flow: (the flow as dialled, the backend); None for an
/// untranslated entry, another protocol, or a malformed message.
///
/// Why listen: conntrack deletes an entry at once when the only reply was a reset (a refused
/// connect), so a lookup after the failure finds nothing; its destroy event still tells.
pub fn destroyed_translation(payload: &[u8]) -> Option<(FlowAddr, SocketAddr)> {
    let attrs = payload.get(NFGENMSG_LEN..)?;
    let (src, dst) = parse_tuple(rawnl::attribute(attrs, CTA_TUPLE_ORIG)?)?;
    let (reply_src, _) = parse_tuple(rawnl::attribute(attrs, CTA_TUPLE_REPLY)?)?;
    (reply_src != dst).then_some((FlowAddr { src, dst }, reply_src))
}

/// nfgenmsg + CTA_TUPLE_ORIG { CTA_TUPLE_IP { src, dst }, CTA_TUPLE_PROTO { TCP, ports } };
/// None when the two ends are of different families.
pub fn encode_get(flow: FlowAddr) -> Option<Vec<u8>> {
    let (family, ip) = match (flow.src.ip(), flow.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = Vec::new();
            rawnl::push_attribute(&mut ip, CTA_IP_V4_SRC, &s.octets());
            rawnl::push_attribute(&mut ip, CTA_IP_V4_DST, &d.octets());
            (libc::AF_INET as u8, ip)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut ip = Vec::new();
            rawnl::push_attribute(&mut ip, CTA_IP_V6_SRC, &s.octets());
            rawnl::push_attribute(&mut ip, CTA_IP_V6_DST, &d.octets());
            (libc::AF_INET6 as u8, ip)
        }
        _ => return None,
    };
    let mut proto = Vec::new();
    rawnl::push_attribute(&mut proto, CTA_PROTO_NUM, &[libc::IPPROTO_TCP as u8]);
    rawnl::push_attribute(&mut proto, CTA_PROTO_SRC_PORT, &flow.src.port().to_be_bytes());
    rawnl::push_attribute(&mut proto, CTA_PROTO_DST_PORT, &flow.dst.port().to_be_bytes());
    let mut tuple = Vec::new();
    rawnl::push_attribute(&mut tuple, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
    rawnl::push_attribute(&mut tuple, CTA_TUPLE_PROTO | NLA_F_NESTED, &proto);
    let mut message = vec![family, NFNETLINK_V0, 0, 0];
    rawnl::push_attribute(&mut message, CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple);
    Some(message)
}

/// One tuple (CTA_TUPLE_ORIG or CTA_TUPLE_REPLY's value) as (source, destination).
fn parse_tuple(tuple: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let ip = rawnl::attribute(tuple, CTA_TUPLE_IP)?;
    let proto = rawnl::attribute(tuple, CTA_TUPLE_PROTO)?;
    let (src, dst) = match (rawnl::attribute(ip, CTA_IP_V4_SRC), rawnl::attribute(ip, CTA_IP_V4_DST)) {
        (Some(s), Some(d)) => (IpAddr::from(<[u8; 4]>::try_from(s).ok()?), IpAddr::from(<[u8; 4]>::try_from(d).ok()?)),
        _ => {
            let s = rawnl::attribute(ip, CTA_IP_V6_SRC)?;
            let d = rawnl::attribute(ip, CTA_IP_V6_DST)?;
            (IpAddr::from(<[u8; 16]>::try_from(s).ok()?), IpAddr::from(<[u8; 16]>::try_from(d).ok()?))
        }
    };
    if rawnl::attribute(proto, CTA_PROTO_NUM)? != [libc::IPPROTO_TCP as u8] {
        return None;
    }
    let port = |kind| Some(u16::from_be_bytes(<[u8; 2]>::try_from(rawnl::attribute(proto, kind)?).ok()?));
    Some((SocketAddr::new(src, port(CTA_PROTO_SRC_PORT)?), SocketAddr::new(dst, port(CTA_PROTO_DST_PORT)?)))
}

/// The backend in one IPCTNL_MSG_CT_NEW payload (nfgenmsg + attributes) about `flow`: the
/// reply tuple's source, when it differs from the dialled destination. None for an entry of
/// another flow, an untranslated one, or a malformed message.
pub fn translated_backend(payload: &[u8], flow: FlowAddr) -> Option<SocketAddr> {
    let attrs = payload.get(NFGENMSG_LEN..)?;
    let original = parse_tuple(rawnl::attribute(attrs, CTA_TUPLE_ORIG)?)?;
    if original != (flow.src, flow.dst) {
        return None;
    }
    let (reply_src, _) = parse_tuple(rawnl::attribute(attrs, CTA_TUPLE_REPLY)?)?;
    (reply_src != flow.dst).then_some(reply_src)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(src: &str, dst: &str) -> FlowAddr {
        FlowAddr { src: src.parse().unwrap(), dst: dst.parse().unwrap() }
    }

    /// The kernel's reply shape: nfgenmsg, then both tuples (encode_get builds the same nesting).
    fn reply(orig: FlowAddr, reply: FlowAddr) -> Vec<u8> {
        let orig_get = encode_get(orig).unwrap();
        let reply_get = encode_get(reply).unwrap();
        let mut payload = orig_get.clone();
        // encode_get's tuple attribute, re-typed as the reply tuple.
        let mut reply_attr = reply_get[NFGENMSG_LEN..].to_vec();
        reply_attr[2..4].copy_from_slice(&(CTA_TUPLE_REPLY | NLA_F_NESTED).to_ne_bytes());
        payload.extend(reply_attr);
        // Other attributes the kernel sends (status, timeout) come along and are ignored.
        rawnl::push_attribute(&mut payload, 3, &8u32.to_be_bytes());
        payload
    }

    #[test]
    fn the_reply_tuples_source_is_the_backend() {
        let dialled = flow("10.232.0.1:40000", "10.96.0.10:80");
        let payload = reply(dialled, flow("10.232.0.2:8405", "10.232.0.1:40000"));
        assert_eq!(translated_backend(&payload, dialled), Some("10.232.0.2:8405".parse().unwrap()));
        // No translation: the reply comes from the dialled address.
        let plain = reply(dialled, flow("10.96.0.10:80", "10.232.0.1:40000"));
        assert_eq!(translated_backend(&plain, dialled), None);
        // An entry of another flow is not this flow's answer.
        assert_eq!(translated_backend(&payload, flow("10.232.0.1:40001", "10.96.0.10:80")), None);
        let v6 = flow("[fd00::1]:40000", "[fd00::a]:80");
        let payload = reply(v6, flow("[fd00::2]:8405", "[fd00::1]:40000"));
        assert_eq!(translated_backend(&payload, v6), Some("[fd00::2]:8405".parse().unwrap()));
    }

    #[test]
    fn a_destroy_event_names_the_translation() {
        let dialled = flow("10.232.0.1:40000", "10.96.0.10:80");
        let payload = reply(dialled, flow("10.232.0.2:8405", "10.232.0.1:40000"));
        assert_eq!(destroyed_translation(&payload), Some((dialled, "10.232.0.2:8405".parse().unwrap())));
        assert_eq!(destroyed_translation(&reply(dialled, dialled.reversed())), None, "not translated");
        for cut in 0..payload.len() {
            let _ = destroyed_translation(&payload[..cut]);
        }
    }

    #[test]
    fn odd_replies_give_nothing() {
        let dialled = flow("10.232.0.1:40000", "10.96.0.10:80");
        let payload = reply(dialled, flow("10.232.0.2:8405", "10.232.0.1:40000"));
        for cut in 0..payload.len() {
            let _ = translated_backend(&payload[..cut], dialled);
        }
        assert_eq!(translated_backend(&payload[..NFGENMSG_LEN], dialled), None);
        assert_eq!(translated_backend(&[], dialled), None);
        // Mixed families cannot be asked about.
        assert!(encode_get(flow("10.0.0.1:1", "[::1]:2")).is_none());
    }
}
