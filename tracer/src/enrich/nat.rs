//! Which events ask where a connection was address-translated to, and how often conntrack may
//! be asked. Pure: the asking itself is `Enricher::nat_mapping`.

use std::collections::HashSet;

use crate::event::{Event, EventBody, FlowAddr};

/// Conntrack lookups per second of event time, at most, over all namespaces.
pub const NAT_LOOKUPS_PER_SECOND: u32 = 50;
/// A namespace's address book is measured again, when asked, at most this often.
pub const ADDRESSES_EVERY_NS: u64 = 3_000_000_000;
/// Bound on remembered (netns, flow) pairs.
const MAX_FLOWS: usize = 10_000;

/// The flow (netns of the client, the flow as it dialled) whose translation `ev` asks about:
/// a connect that failed, a SYN sent again, a connection its client saw end. Only flows that
/// went out (a local port, a destination port) can have a conntrack entry. A loopback
/// destination is every namespace's own address: answered here, before the address books are
/// searched for it on every refused connect of a flood.
pub fn nat_candidate(ev: &Event) -> Option<(u32, FlowAddr)> {
    let flow = match &ev.body {
        EventBody::TcpAttemptFailed { flow, .. } | EventBody::TcpSynRetransmit { flow, .. } => *flow,
        EventBody::TcpConnEnded { flow, client_side: true, .. } => *flow,
        _ => return None,
    };
    let went_out = flow.src.port() != 0
        && flow.dst.port() != 0
        && !flow.dst.ip().is_unspecified()
        && !flow.dst.ip().is_loopback();
    (went_out && ev.netns != 0).then_some((ev.netns, flow))
}

/// Each (netns, flow) is looked up once; lookups in all are capped per second.
#[derive(Debug, Default)]
pub struct NatBudget {
    asked: HashSet<(u32, FlowAddr)>,
    window_ns: u64,
    in_window: u32,
}

impl NatBudget {
    pub fn new() -> NatBudget {
        NatBudget::default()
    }

    /// Whether the flow may be looked up now (event time `ts_ns`); counts it if so.
    pub fn admit(&mut self, netns: u32, flow: FlowAddr, ts_ns: u64) -> bool {
        if self.asked.contains(&(netns, flow)) {
            return false;
        }
        if ts_ns.saturating_sub(self.window_ns) >= 1_000_000_000 || ts_ns < self.window_ns {
            self.window_ns = ts_ns;
            self.in_window = 0;
        }
        if self.in_window >= NAT_LOOKUPS_PER_SECOND {
            return false;
        }
        self.in_window += 1;
        if self.asked.len() >= MAX_FLOWS {
            self.asked.clear();
        }
        self.asked.insert((netns, flow));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ConnEnd, TaskInfo};

    fn flow(src: &str, dst: &str) -> FlowAddr {
        FlowAddr { src: src.parse().unwrap(), dst: dst.parse().unwrap() }
    }

    fn event(body: EventBody) -> Event {
        Event { ts_ns: 5, netns: 7, sock: 1, task: TaskInfo::default(), body }
    }

    fn ended(client_side: bool) -> Event {
        event(EventBody::TcpConnEnded {
            flow: flow("10.0.0.1:40000", "10.96.0.10:80"),
            end: ConnEnd::Reset,
            client_side,
            after_fin: false,
            sk_err: 0,
            bytes_sent: 0,
            bytes_received: 0,
            start_ns: 1,
            established_ns: 2,
            idle_before_fin_ns: None,
            since_fin_ns: None,
            closer: None,
            exit_code: 0,
            signal: None,
            unread_bytes: 0,
        })
    }

    #[test]
    fn failures_retransmits_and_client_ends_are_candidates() {
        let f = flow("10.0.0.1:40000", "10.96.0.10:80");
        let failed = event(EventBody::TcpAttemptFailed { flow: f, sk_err: 111, syn_retransmits: 0, rst_received: true, start_ns: 1 });
        assert_eq!(nat_candidate(&failed), Some((7, f)));
        let syn = event(EventBody::TcpSynRetransmit { flow: f, syn_retransmits: 1, queue: None, listener: None });
        assert_eq!(nat_candidate(&syn), Some((7, f)));
        assert_eq!(nat_candidate(&ended(true)), Some((7, f)));
        assert_eq!(nat_candidate(&ended(false)), None, "the server's side");
        let no_port = event(EventBody::TcpAttemptFailed { flow: flow("0.0.0.0:0", "10.96.0.10:80"), sk_err: 0, syn_retransmits: 0, rst_received: false, start_ns: 1 });
        assert_eq!(nat_candidate(&no_port), None, "never went out");
        let mut unknown_netns = failed.clone();
        unknown_netns.netns = 0;
        assert_eq!(nat_candidate(&unknown_netns), None);
        assert_eq!(nat_candidate(&event(EventBody::ListenOverflows { delta: 1 })), None);
    }

    #[test]
    fn a_loopback_destination_is_no_candidate() {
        let f = flow("127.0.0.1:40000", "127.0.0.1:8000");
        let failed = event(EventBody::TcpAttemptFailed { flow: f, sk_err: 111, syn_retransmits: 0, rst_received: true, start_ns: 1 });
        assert_eq!(nat_candidate(&failed), None);
    }

    #[test]
    fn each_flow_once_and_lookups_capped_per_second() {
        let mut budget = NatBudget::new();
        let s = 1_000_000_000;
        let f = flow("10.0.0.1:40000", "10.96.0.10:80");
        assert!(budget.admit(7, f, s));
        assert!(!budget.admit(7, f, s + 1), "asked already");
        assert!(budget.admit(8, f, s + 2), "another namespace's flow");
        let admitted = (0..200u16)
            .filter(|i| budget.admit(7, flow(&format!("10.0.0.1:{}", 41000 + i), "10.96.0.10:80"), s + 3 + u64::from(*i)))
            .count();
        assert_eq!(admitted, NAT_LOOKUPS_PER_SECOND as usize - 2);
        assert!(budget.admit(7, flow("10.0.0.1:50000", "10.96.0.10:80"), 2 * s + 10), "a new second");
    }
}
