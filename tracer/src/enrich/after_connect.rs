//! Which decoded events call for a measurement of the after-connect causes, and how often
//! tracer may make one: the local port range and the sockets towards a target when a connect
//! found no free port (`PortsInUse`), and who holds the upstream's end of a connection Nginx
//! gave up on (`ConnHolder`). Pure: the measuring itself is `Enricher::measure`.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::event::{ConnEnd, Event, EventBody, FlowAddr};

/// A measurement an event asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measurement {
    /// `ip_local_port_range` of `netns` and its TCP sockets towards `target`, by state.
    Ports { netns: u32, target: SocketAddr },
    /// The socket with local = `flow.dst`, remote = `flow.src` in `netns`, and its holder.
    Holder { netns: u32, flow: FlowAddr },
}

/// The measurement `ev` calls for, if any.
///
/// A connect() that found no local port (`Event::connect_found_no_local_port`) asks for the
/// port range and what holds it. A client-side connection its owner closed with nothing received is Nginx giving up
/// on a silent upstream: who holds the other end, and in what state, says why it was silent.
pub fn measurement_for(ev: &Event) -> Option<Measurement> {
    if let Some(target) = ev.connect_found_no_local_port() {
        return Some(Measurement::Ports { netns: ev.netns, target });
    }
    match &ev.body {
        EventBody::TcpConnEnded { flow, end: ConnEnd::LocalFin, client_side: true, bytes_received: 0, .. } => {
            Some(Measurement::Holder { netns: ev.netns, flow: *flow })
        }
        _ => None,
    }
}

/// One port measurement per (netns, target) per this long: a storm of failed connects all
/// find the same exhausted range.
pub const PORTS_EVERY_NS: u64 = 1_000_000_000;
/// Holder lookups (each a scan of /proc/*/fd) per second of event time, at most.
pub const HOLDER_LOOKUPS_PER_SECOND: u32 = 10;
/// Bound on remembered (netns, target) pairs.
const MAX_PORT_KEYS: usize = 10_000;

/// How often each measurement may be made, by the triggering events' own (kernel) time.
#[derive(Debug, Default)]
pub struct MeasurementBudget {
    last_ports: HashMap<(u32, SocketAddr), u64>,
    /// Start of the current one-second window of holder lookups, and lookups made in it.
    holder_window_ns: u64,
    holders_in_window: u32,
}

impl MeasurementBudget {
    pub fn new() -> MeasurementBudget {
        MeasurementBudget::default()
    }

    /// Whether `m`, asked for by an event at `ts_ns`, may be made now; counts it if so.
    pub fn admit(&mut self, m: &Measurement, ts_ns: u64) -> bool {
        match m {
            Measurement::Ports { netns, target } => {
                let key = (*netns, *target);
                let due = self.last_ports.get(&key).is_none_or(|t| ts_ns.saturating_sub(*t) >= PORTS_EVERY_NS);
                if due {
                    if self.last_ports.len() >= MAX_PORT_KEYS {
                        self.last_ports.clear();
                    }
                    self.last_ports.insert(key, ts_ns);
                }
                due
            }
            Measurement::Holder { .. } => {
                if ts_ns.saturating_sub(self.holder_window_ns) >= 1_000_000_000 || ts_ns < self.holder_window_ns {
                    self.holder_window_ns = ts_ns;
                    self.holders_in_window = 0;
                }
                if self.holders_in_window >= HOLDER_LOOKUPS_PER_SECOND {
                    return false;
                }
                self.holders_in_window += 1;
                true
            }
        }
    }
}

/// `net.ipv4.ip_local_port_range` as /proc/sys shows it: two numbers, tab-separated.
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut numbers = text.split_whitespace().map(|n| n.parse::<u16>());
    let (Some(Ok(lo)), Some(Ok(hi)), None) = (numbers.next(), numbers.next(), numbers.next()) else { return None };
    (lo <= hi).then_some((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TaskInfo;

    fn flow(src: &str, dst: &str) -> FlowAddr {
        FlowAddr { src: src.parse().unwrap(), dst: dst.parse().unwrap() }
    }

    fn event(body: EventBody) -> Event {
        Event { ts_ns: 5, netns: 7, sock: 1, task: TaskInfo::default(), body }
    }

    fn attempt_failed(src: &str, sk_err: i32, syn_retransmits: u32, rst_received: bool) -> Event {
        event(EventBody::TcpAttemptFailed { flow: flow(src, "127.0.0.1:8000"), sk_err, syn_retransmits, rst_received, start_ns: 1 })
    }

    fn conn_ended(end: ConnEnd, client_side: bool, bytes_received: u64) -> Event {
        event(EventBody::TcpConnEnded {
            flow: flow("127.0.0.1:40000", "127.0.0.1:8000"),
            end,
            client_side,
            after_fin: false,
            sk_err: 0,
            bytes_sent: 143,
            bytes_received,
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
    fn only_a_connect_that_got_no_local_port_asks_for_the_ports() {
        let target: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        assert_eq!(measurement_for(&attempt_failed("0.0.0.0:0", 0, 0, false)), Some(Measurement::Ports { netns: 7, target }));
        // A local port, a socket error, a retransmit or a reset: the connect went out.
        assert_eq!(measurement_for(&attempt_failed("127.0.0.1:40000", 0, 0, false)), None);
        assert_eq!(measurement_for(&attempt_failed("0.0.0.0:0", 111, 0, false)), None);
        assert_eq!(measurement_for(&attempt_failed("0.0.0.0:0", 0, 1, false)), None);
        assert_eq!(measurement_for(&attempt_failed("0.0.0.0:0", 0, 0, true)), None);
    }

    #[test]
    fn only_nginx_giving_up_with_nothing_received_asks_for_the_holder() {
        let want = Some(Measurement::Holder { netns: 7, flow: flow("127.0.0.1:40000", "127.0.0.1:8000") });
        assert_eq!(measurement_for(&conn_ended(ConnEnd::LocalFin, true, 0)), want);
        assert_eq!(measurement_for(&conn_ended(ConnEnd::LocalFin, true, 1)), None, "a response byte came");
        assert_eq!(measurement_for(&conn_ended(ConnEnd::LocalFin, false, 0)), None, "the upstream's own socket");
        assert_eq!(measurement_for(&conn_ended(ConnEnd::PeerFin, true, 0)), None);
        assert_eq!(measurement_for(&conn_ended(ConnEnd::Reset, true, 0)), None);
        assert_eq!(measurement_for(&event(EventBody::ListenOverflows { delta: 1 })), None);
    }

    #[test]
    fn ports_are_measured_once_per_namespace_and_target_per_second() {
        let mut budget = MeasurementBudget::new();
        let a = Measurement::Ports { netns: 1, target: "127.0.0.1:8000".parse().unwrap() };
        let b = Measurement::Ports { netns: 2, target: "127.0.0.1:8000".parse().unwrap() };
        let c = Measurement::Ports { netns: 1, target: "127.0.0.1:8001".parse().unwrap() };
        let s = 1_000_000_000;
        assert!(budget.admit(&a, s));
        assert!(!budget.admit(&a, s + s / 2));
        assert!(budget.admit(&b, s + s / 2));
        assert!(budget.admit(&c, s + s / 2));
        assert!(budget.admit(&a, 2 * s));
        assert!(!budget.admit(&a, 2 * s + 1));
    }

    #[test]
    fn holder_lookups_are_capped_per_second() {
        let mut budget = MeasurementBudget::new();
        let m = Measurement::Holder { netns: 1, flow: flow("127.0.0.1:40000", "127.0.0.1:8000") };
        let s = 1_000_000_000;
        let admitted = (0..100u64).filter(|i| budget.admit(&m, s + i * 1_000_000)).count();
        assert_eq!(admitted, HOLDER_LOOKUPS_PER_SECOND as usize);
        // The next second has a new budget.
        assert!(budget.admit(&m, 2 * s + 500_000_000));
    }

    #[test]
    fn reads_the_port_range() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("40000 40003"), Some((40000, 40003)));
        assert_eq!(parse_port_range("40003 40000"), None);
        assert_eq!(parse_port_range("1 2 3"), None);
        assert_eq!(parse_port_range("1"), None);
        assert_eq!(parse_port_range("a b"), None);
        assert_eq!(parse_port_range("70000 80000"), None);
        let own = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        assert!(parse_port_range(&own).is_some(), "{own:?}");
    }
}
