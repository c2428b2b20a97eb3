//! The addresses configured on a network namespace's interfaces (its address book), read with
//! an rtnetlink RTM_GETADDR dump on a socket created inside that namespace. The kernel's own
//! answer, IPv4 and IPv6, loopback included.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::rawnl::{self, NlSocket, NLM_F_DUMP, NLM_F_REQUEST};

const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
/// struct ifaddrmsg: family u8, prefixlen u8, flags u8, scope u8, index u32.
const IFADDRMSG_LEN: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

/// Every address configured in the socket's namespace, sorted and without duplicates.
pub fn dump_addresses(socket: &mut NlSocket) -> io::Result<Vec<IpAddr>> {
    // AF_UNSPEC: both families in one dump.
    let request = [0u8; IFADDRMSG_LEN];
    let replies = socket.request(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, &request, RTM_NEWADDR)?;
    let mut addrs: Vec<IpAddr> = replies.iter().filter_map(|r| parse_newaddr(r)).collect();
    addrs.sort_unstable();
    addrs.dedup();
    Ok(addrs)
}

/// The interface's own address in one RTM_NEWADDR payload (ifaddrmsg + attributes). IFA_LOCAL
/// is the own address where both are given (on a point-to-point link IFA_ADDRESS is the peer);
/// else IFA_ADDRESS. None for another family or a malformed message.
pub fn parse_newaddr(payload: &[u8]) -> Option<IpAddr> {
    let family = i32::from(*payload.first()?);
    let attrs = payload.get(IFADDRMSG_LEN..)?;
    let value = rawnl::attribute(attrs, IFA_LOCAL).or_else(|| rawnl::attribute(attrs, IFA_ADDRESS))?;
    match family {
        libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(value).ok()?))),
        libc::AF_INET6 => {
            let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(value).ok()?);
            // Flows name IPv4 peers of IPv6 sockets as plain IPv4: match that.
            Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::rawnl::push_attribute;

    fn newaddr(family: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut payload = vec![family, 24, 0, 0, 1, 0, 0, 0];
        for (kind, value) in attrs {
            push_attribute(&mut payload, *kind, value);
        }
        payload
    }

    #[test]
    fn reads_own_address_of_each_family() {
        let v4 = newaddr(libc::AF_INET as u8, &[(IFA_ADDRESS, &[10, 0, 0, 2]), (IFA_LOCAL, &[10, 0, 0, 1])]);
        assert_eq!(parse_newaddr(&v4), Some("10.0.0.1".parse().unwrap()), "IFA_LOCAL wins");
        let v4 = newaddr(libc::AF_INET as u8, &[(IFA_ADDRESS, &[127, 0, 0, 1])]);
        assert_eq!(parse_newaddr(&v4), Some("127.0.0.1".parse().unwrap()));
        let one: [u8; 16] = "::1".parse::<Ipv6Addr>().unwrap().octets();
        let v6 = newaddr(libc::AF_INET6 as u8, &[(IFA_ADDRESS, &one)]);
        assert_eq!(parse_newaddr(&v6), Some("::1".parse().unwrap()));
    }

    #[test]
    fn odd_messages_give_nothing() {
        assert_eq!(parse_newaddr(&[]), None);
        assert_eq!(parse_newaddr(&[2, 24, 0]), None);
        assert_eq!(parse_newaddr(&newaddr(libc::AF_INET as u8, &[])), None);
        assert_eq!(parse_newaddr(&newaddr(libc::AF_INET as u8, &[(IFA_ADDRESS, &[1, 2, 3])])), None);
        assert_eq!(parse_newaddr(&newaddr(libc::AF_INET6 as u8, &[(IFA_ADDRESS, &[1, 2, 3, 4])])), None);
        assert_eq!(parse_newaddr(&newaddr(17, &[(IFA_ADDRESS, &[1, 2, 3, 4])])), None);
    }

    #[test]
    fn dumps_own_namespace_loopback() {
        let mut socket = NlSocket::new_here(netlink_sys::protocols::NETLINK_ROUTE, std::time::Duration::from_secs(2)).expect("rtnetlink socket");
        let addrs = dump_addresses(&mut socket).expect("RTM_GETADDR dump");
        // Every namespace whose lo is up has 127.0.0.1; the test machine's has.
        assert!(addrs.contains(&"127.0.0.1".parse().unwrap()), "{addrs:?}");
        // A second request on the same socket works too (sequence numbers move on).
        assert_eq!(dump_addresses(&mut socket).expect("again"), addrs);
    }
}
