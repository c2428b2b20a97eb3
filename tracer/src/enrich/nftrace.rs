//! `--trace-rules`, exactness on demand: nftables tracing (`meta nftrace set 1` for the SYNs
//! tracer diagnoses, in a table of its own, `inet tracer_trace`, in every namespace), after
//! which the kernel itself tells (nfnetlink trace events) which rule's verdict dropped a
//! packet. It changes the ruleset, so it is off by default; the table is removed when the
//! trace ends (`RuleTracing`'s drop: the report, a stop signal, an error) and, after a
//! SIGKILL, by the next start of tracer (`remove_leftover_tables`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};

use super::rawnl::{self, NlSocket, NLM_F_REQUEST};
use super::ruleset::{self, NFT};
use super::Enricher;
use crate::event::FlowAddr;

/// tracer's own table (family inet).
pub const TRACE_TABLE: &str = "tracer_trace";
/// Before raw (-300) and conntrack (-200): the mark is set before any rule may drop.
const TRACE_PRIORITY: i32 = -350;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_TRACE: u16 = 17;
/// The multicast group of trace events.
const NFNLGRP_NFTRACE: u32 = 9;
const NFPROTO_INET: u8 = 1;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TRACE_TABLE: u16 = 1;
const NFTA_TRACE_CHAIN: u16 = 2;
const NFTA_TRACE_RULE_HANDLE: u16 = 3;
const NFTA_TRACE_TYPE: u16 = 4;
const NFTA_TRACE_VERDICT: u16 = 5;
const NFTA_TRACE_ID: u16 = 6;
const NFTA_TRACE_NETWORK_HEADER: u16 = 8;
const NFTA_TRACE_TRANSPORT_HEADER: u16 = 9;
const NFTA_TRACE_POLICY: u16 = 16;
const NFTA_VERDICT_CODE: u16 = 1;
const NFT_TRACETYPE_POLICY: u32 = 1;
const NFT_TRACETYPE_RULE: u32 = 3;
/// The netfilter verdict that drops (nft's drop and reject both end in it).
const NF_DROP: u32 = 0;
/// Trace datagrams read per namespace per call, and traced drops remembered.
const MAX_TRACE_DATAGRAMS: usize = 256;
const MAX_TRACED: usize = 4096;

/// One trace event: the packet, where the verdict was given, and whether it dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// The trace id the kernel gives every event of one packet's walk.
    pub id: u32,
    /// nftables family name (`inet`, `ip`, `ip6`).
    pub family: String,
    pub table: String,
    pub chain: String,
    /// The rule's handle (None for a policy).
    pub handle: Option<u64>,
    pub dropped: bool,
    pub packet: Option<FlowAddr>,
}

/// A drop the kernel traced: the rule (or policy) and the base chain the walk began in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracedDrop {
    pub netns: u32,
    pub packet: FlowAddr,
    pub family: String,
    pub table: String,
    pub chain: String,
    pub handle: Option<u64>,
    /// The first chain of the packet's walk there (a base chain: it gives the hook).
    pub base_chain: String,
}

/// A trace event's payload (nfgenmsg, then attributes); None when it is malformed.
pub fn parse_trace(payload: &[u8]) -> Option<TraceEvent> {
    let family = match *payload.first()? {
        1 => "inet",
        2 => "ip",
        10 => "ip6",
        _ => return None,
    };
    let attrs = payload.get(4..)?;
    let be32 = |kind: u16| -> Option<u32> { Some(u32::from_be_bytes(rawnl::attribute(attrs, kind)?.get(..4)?.try_into().ok()?)) };
    let text = |kind: u16| -> Option<String> {
        let raw = rawnl::attribute(attrs, kind)?;
        let raw = raw.split(|b| *b == 0).next()?;
        String::from_utf8(raw.to_vec()).ok()
    };
    let kind = be32(NFTA_TRACE_TYPE)?;
    let dropped = match kind {
        NFT_TRACETYPE_RULE => {
            let verdict = rawnl::attribute(attrs, NFTA_TRACE_VERDICT)?;
            let code = rawnl::attribute(verdict, NFTA_VERDICT_CODE)?;
            u32::from_be_bytes(code.get(..4)?.try_into().ok()?) == NF_DROP
        }
        NFT_TRACETYPE_POLICY => be32(NFTA_TRACE_POLICY) == Some(NF_DROP),
        _ => false,
    };
    let handle = match kind {
        NFT_TRACETYPE_RULE => Some(u64::from_be_bytes(rawnl::attribute(attrs, NFTA_TRACE_RULE_HANDLE)?.get(..8)?.try_into().ok()?)),
        _ => None,
    };
    let packet = match (rawnl::attribute(attrs, NFTA_TRACE_NETWORK_HEADER), rawnl::attribute(attrs, NFTA_TRACE_TRANSPORT_HEADER)) {
        (Some(net), Some(tcp)) => tcp_packet(net, tcp),
        _ => None,
    };
    Some(TraceEvent {
        id: be32(NFTA_TRACE_ID).unwrap_or(0),
        family: family.to_string(),
        table: text(NFTA_TRACE_TABLE)?,
        chain: text(NFTA_TRACE_CHAIN)?,
        handle,
        dropped,
        packet,
    })
}

/// The addresses and ports of a TCP packet from its IP and TCP headers.
fn tcp_packet(net: &[u8], tcp: &[u8]) -> Option<FlowAddr> {
    let (src, dst): (IpAddr, IpAddr) = match net.first()? >> 4 {
        4 if net.get(9) == Some(&6) => {
            let s: [u8; 4] = net.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = net.get(16..20)?.try_into().ok()?;
            (Ipv4Addr::from(s).into(), Ipv4Addr::from(d).into())
        }
        6 if net.get(6) == Some(&6) => {
            let s: [u8; 16] = net.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = net.get(24..40)?.try_into().ok()?;
            (Ipv6Addr::from(s).into(), Ipv6Addr::from(d).into())
        }
        _ => return None,
    };
    let sport = u16::from_be_bytes(tcp.get(0..2)?.try_into().ok()?);
    let dport = u16::from_be_bytes(tcp.get(2..4)?.try_into().ok()?);
    Some(FlowAddr { src: SocketAddr::new(src, sport), dst: SocketAddr::new(dst, dport) })
}

/// Whether namespace's `socket` has tracer's table (NFT_MSG_GETTABLE; ENOENT: no).
fn has_trace_table(socket: &mut NlSocket) -> io::Result<bool> {
    let mut request = vec![NFPROTO_INET, 0, 0, 0];
    let mut name = TRACE_TABLE.as_bytes().to_vec();
    name.push(0);
    rawnl::push_attribute(&mut request, NFTA_TABLE_NAME, &name);
    let msg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE;
    let reply_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE;
    match socket.request(msg_type, NLM_F_REQUEST, &request, reply_type) {
        Ok(replies) => Ok(!replies.is_empty()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The nft commands that make tracer's table: SYNs (to `ports`, all when empty) marked for
/// tracing as they leave (output) and as they arrive (prerouting).
pub fn table_commands(ports: &[u16]) -> String {
    let to = match ports {
        [] => String::new(),
        ports => format!(" tcp dport {{ {} }}", ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")),
    };
    let mark = format!("tcp flags & (syn | ack) == syn{to} meta nftrace set 1");
    format!(
        "add table inet {TRACE_TABLE}; \
         add chain inet {TRACE_TABLE} out {{ type filter hook output priority {TRACE_PRIORITY}; }}; \
         add chain inet {TRACE_TABLE} pre {{ type filter hook prerouting priority {TRACE_PRIORITY}; }}; \
         add rule inet {TRACE_TABLE} out {mark}; \
         add rule inet {TRACE_TABLE} pre {mark}"
    )
}

/// Tracing in the namespaces it was turned on in: their handles (to remove the table at the
/// end) and trace subscriptions; the drops traced lately.
pub struct RuleTracing {
    /// (netns, a handle on it; None: tracer's own).
    places: Vec<(u32, Option<OwnedFd>)>,
    listeners: Vec<(u32, NlSocket)>,
    /// The first chain of each packet's walk through each table, by (netns, trace id, table):
    /// a base chain, which gives the hook.
    walks: std::collections::VecDeque<((u32, u32, String), String)>,
    traced: std::collections::VecDeque<TracedDrop>,
}

impl Drop for RuleTracing {
    /// Removes tracer's table from every namespace it was added to.
    fn drop(&mut self) {
        for (netns, fd) in &self.places {
            if let Err(e) = ruleset::run_in_netns(fd.as_ref().map(|f| f.as_fd()), NFT, &["delete", "table", "inet", TRACE_TABLE]) {
                note!("tracer: could not remove table inet {TRACE_TABLE} from netns {netns} ({e}): remove it with `nft delete table inet {TRACE_TABLE}` there, or start tracer again");
            }
        }
    }
}

impl RuleTracing {
    /// Reads the trace events waiting: the drops are kept (bounded), with the base chain of
    /// their walk.
    pub fn read(&mut self) {
        for (netns, socket) in &mut self.listeners {
            for payload in socket.drain((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_TRACE, MAX_TRACE_DATAGRAMS) {
                let Some(event) = parse_trace(&payload) else { continue };
                let key = (*netns, event.id, format!("{} {}", event.family, event.table));
                let base = match self.walks.iter().find(|(k, _)| *k == key) {
                    Some((_, chain)) => chain.clone(),
                    None => {
                        if self.walks.len() >= MAX_TRACED {
                            self.walks.pop_front();
                        }
                        self.walks.push_back((key, event.chain.clone()));
                        event.chain.clone()
                    }
                };
                let (true, Some(packet)) = (event.dropped, event.packet) else { continue };
                if self.traced.len() >= MAX_TRACED {
                    self.traced.pop_front();
                }
                self.traced.push_back(TracedDrop {
                    netns: *netns,
                    packet,
                    family: event.family,
                    table: event.table,
                    chain: event.chain,
                    handle: event.handle,
                    base_chain: base,
                });
            }
        }
    }

    /// The traced drop of `packet` (either direction) in any namespace, the latest.
    pub fn drop_of(&self, packet: &FlowAddr) -> Option<&TracedDrop> {
        self.traced.iter().rev().find(|t| t.packet == *packet || t.packet == packet.reversed())
    }
}

impl Enricher {
    /// Removes tracer's trace table left in any namespace by a tracer that could not (a
    /// SIGKILL). Asked by netlink first, so a host without it runs no program at all.
    pub fn remove_leftover_trace_tables(&mut self) {
        if !ruleset::nf_tables_present() {
            return;
        }
        self.namespaces.refresh();
        for netns in self.namespaces.all_inodes() {
            let protocol = netlink_sys::protocols::NETLINK_NETFILTER;
            let Some(socket) = Self::netlink_socket(&mut self.nftables_sockets, &mut self.namespaces, self.own_netns, netns, protocol, super::CONNTRACK_TIMEOUT) else { continue };
            if !has_trace_table(socket).unwrap_or(false) {
                continue;
            }
            let handle = if Some(netns) == self.own_netns { None } else { self.namespaces.handle_or_named(netns) };
            match ruleset::run_in_netns(handle, NFT, &["delete", "table", "inet", TRACE_TABLE]) {
                Ok(_) => note!("tracer: removed table inet {TRACE_TABLE} left in netns {netns} by an earlier tracer"),
                Err(e) => note!("tracer: could not remove table inet {TRACE_TABLE} left in netns {netns}: {e}"),
            }
        }
    }

    /// Turns tracing on in every namespace, or only in `only` (SYNs to `ports`; all when
    /// empty): tracer's table and a subscription to the trace events. Namespaces it cannot
    /// enter are left as they are.
    pub fn start_rule_tracing(&mut self, ports: &[u16], only: Option<u32>) -> RuleTracing {
        let mut tracing = RuleTracing { places: Vec::new(), listeners: Vec::new(), walks: Default::default(), traced: Default::default() };
        if !ruleset::nf_tables_present() {
            return tracing;
        }
        let commands = table_commands(ports);
        self.namespaces.refresh();
        for netns in self.namespaces.all_inodes().into_iter().filter(|n| only.is_none_or(|o| o == *n)) {
            let own = Some(netns) == self.own_netns;
            let fd = if own {
                None
            } else {
                match self.namespaces.handle_or_named(netns).map(|h| h.try_clone_to_owned()) {
                    Some(Ok(fd)) => Some(fd),
                    _ => continue,
                }
            };
            let subscribed = NlSocket::subscribe_in(fd.as_ref().map(|f| f.as_fd()), netlink_sys::protocols::NETLINK_NETFILTER, NFNLGRP_NFTRACE);
            let socket = match subscribed {
                Ok(s) => s,
                Err(e) => {
                    log::debug!("no trace events for netns {netns}: {e}");
                    continue;
                }
            };
            match ruleset::run_in_netns(fd.as_ref().map(|f| f.as_fd()), NFT, &[&commands]) {
                Ok(_) => {
                    tracing.places.push((netns, fd));
                    tracing.listeners.push((netns, socket));
                }
                Err(e) => note!("tracer: --trace-rules: no tracing in netns {netns}: {e}"),
            }
        }
        tracing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace_payload(family: u8, kind: u32, verdict: Option<u32>, handle: u64) -> Vec<u8> {
        let mut p = vec![family, 0, 0, 0];
        rawnl::push_attribute(&mut p, NFTA_TRACE_TABLE, b"filter\0");
        rawnl::push_attribute(&mut p, NFTA_TRACE_CHAIN, b"output\0");
        rawnl::push_attribute(&mut p, NFTA_TRACE_TYPE, &kind.to_be_bytes());
        rawnl::push_attribute(&mut p, NFTA_TRACE_ID, &77u32.to_be_bytes());
        if kind == NFT_TRACETYPE_RULE {
            rawnl::push_attribute(&mut p, NFTA_TRACE_RULE_HANDLE, &handle.to_be_bytes());
            let mut v = Vec::new();
            rawnl::push_attribute(&mut v, NFTA_VERDICT_CODE, &verdict.unwrap_or(1).to_be_bytes());
            rawnl::push_attribute(&mut p, NFTA_TRACE_VERDICT | rawnl::NLA_F_NESTED, &v);
        } else {
            rawnl::push_attribute(&mut p, NFTA_TRACE_POLICY, &verdict.unwrap_or(1).to_be_bytes());
        }
        let mut ip = vec![0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0];
        ip.extend([127, 0, 0, 1, 127, 0, 0, 2]);
        rawnl::push_attribute(&mut p, NFTA_TRACE_NETWORK_HEADER, &ip);
        let mut tcp = Vec::new();
        tcp.extend(40000u16.to_be_bytes());
        tcp.extend(8000u16.to_be_bytes());
        tcp.extend([0u8; 16]);
        rawnl::push_attribute(&mut p, NFTA_TRACE_TRANSPORT_HEADER, &tcp);
        p
    }

    #[test]
    fn trace_events_give_the_rule_the_verdict_and_the_packet() {
        let e = parse_trace(&trace_payload(1, NFT_TRACETYPE_RULE, Some(NF_DROP), 4)).unwrap();
        assert_eq!((e.family.as_str(), e.table.as_str(), e.chain.as_str(), e.handle, e.dropped, e.id), ("inet", "filter", "output", Some(4), true, 77));
        let flow = FlowAddr { src: "127.0.0.1:40000".parse().unwrap(), dst: "127.0.0.2:8000".parse().unwrap() };
        assert_eq!(e.packet, Some(flow));
        let accepted = parse_trace(&trace_payload(2, NFT_TRACETYPE_RULE, Some(1), 5)).unwrap();
        assert!(!accepted.dropped && accepted.family == "ip");
        let policy = parse_trace(&trace_payload(1, NFT_TRACETYPE_POLICY, Some(NF_DROP), 0)).unwrap();
        assert!(policy.dropped && policy.handle.is_none());
        // Malformed: nothing, no panic.
        let good = trace_payload(1, NFT_TRACETYPE_RULE, Some(NF_DROP), 4);
        for cut in 0..good.len() {
            let _ = parse_trace(&good[..cut]);
        }
        assert!(parse_trace(&[7, 0, 0, 0]).is_none());
    }

    #[test]
    fn the_table_marks_syns_to_the_traced_ports_before_any_rule() {
        let c = table_commands(&[8000, 8001]);
        assert!(c.contains("add table inet tracer_trace;"), "{c}");
        assert!(c.contains("type filter hook output priority -350;"), "{c}");
        assert!(c.contains("type filter hook prerouting priority -350;"), "{c}");
        assert!(c.contains("tcp flags & (syn | ack) == syn tcp dport { 8000, 8001 } meta nftrace set 1"), "{c}");
        assert!(table_commands(&[]).contains("== syn meta nftrace set 1"));
    }
}
