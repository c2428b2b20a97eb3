//! Reading the TCP 4-tuple out of an skb's own headers, for packets with no socket attached
//! (a SYN dropped on input, an RST answered by nobody). Only `struct sk_buff` member offsets
//! come from the kernel (via BTF); IP and TCP header layouts are wire formats.
use tracer_common::{Config, Flow, AF_INET, AF_INET6};

use crate::read::kernel;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// The packet's flow in its own direction, when it is IPv4/IPv6 TCP.
#[inline(always)]
pub fn tcp_flow(cfg: &Config, skb: u64, eth_proto: u16) -> Option<Flow> {
    let off = &cfg.offsets;
    let head: u64 = kernel(skb, off.skb_head)?;
    let nh: u16 = kernel(skb, off.skb_network_header)?;
    if nh == u16::MAX {
        return None;
    }
    let ip = head + nh as u64;
    let tcp_proto = cfg.enums.ipproto_tcp as u8;
    let mut flow = Flow::default();
    let tcp_at;
    if eth_proto == ETH_P_IP {
        let vihl: u8 = kernel(ip, 0)?;
        let proto: u8 = kernel(ip, 9)?;
        if vihl >> 4 != 4 || proto != tcp_proto {
            return None;
        }
        let s: [u8; 4] = kernel(ip, 12)?;
        let d: [u8; 4] = kernel(ip, 16)?;
        flow.family = AF_INET;
        flow.saddr[..4].copy_from_slice(&s);
        flow.daddr[..4].copy_from_slice(&d);
        tcp_at = ip + ((vihl & 0x0f) as u64) * 4;
    } else if eth_proto == ETH_P_IPV6 {
        // Extension headers are not followed: a SYN to an upstream does not carry them.
        let next: u8 = kernel(ip, 6)?;
        if next != tcp_proto {
            return None;
        }
        flow.family = AF_INET6;
        flow.saddr = kernel(ip, 8)?;
        flow.daddr = kernel(ip, 24)?;
        tcp_at = ip + 40;
    } else {
        return None;
    }
    let sport: u16 = kernel(tcp_at, 0)?;
    let dport: u16 = kernel(tcp_at, 2)?;
    flow.sport = u16::from_be(sport);
    flow.dport = u16::from_be(dport);
    Some(flow)
}

