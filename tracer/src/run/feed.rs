//! What goes into the engine besides the kernel's own records: sock_diag probes, listener
//! owners' process facts, namespaces' address books, NAT translations, and lost-event counts.

use std::collections::HashMap;

use crate::capture::Capture;
use crate::enrich::after_connect::{measurement_for, MeasurementBudget};
use crate::enrich::nat::{nat_candidate, NatBudget};
use crate::enrich::nftrace::RuleTracing;
use crate::enrich::{self, Enricher};
use crate::event::{Event, EventBody, FlowAddr, KindCounts, RecordKind, Target};
use crate::explain::rules::{drop_meaning, DropMeaning};
use crate::explain::Engine;

/// Do not ask sock_diag about the same target more often than this.
const PROBE_EVERY_NS: u64 = 200_000_000;
/// How long a netfilter drop the kernel could not place in a namespace waits for an event of
/// its connection that says whose it is, and how many wait at most.
const UNPLACED_DROP_TTL_NS: u64 = 5_000_000_000;
const MAX_UNPLACED_DROPS: usize = 1024;

/// Netfilter drops whose namespace the kernel did not give (a packet without its socket: one
/// received, or sent on loopback), by arrival, oldest first.
#[derive(Default)]
struct UnplacedDrops(std::collections::VecDeque<(u64, FlowAddr)>);

impl UnplacedDrops {
    fn push(&mut self, ts_ns: u64, packet: FlowAddr) {
        if self.0.len() >= MAX_UNPLACED_DROPS {
            self.0.pop_front();
        }
        self.0.push_back((ts_ns, packet));
    }

    /// The waiting drops of connection `flow` (either direction), taken; old ones forgotten.
    fn take(&mut self, flow: &FlowAddr, ts_ns: u64) -> Vec<FlowAddr> {
        self.0.retain(|(t, _)| ts_ns.saturating_sub(*t) < UNPLACED_DROP_TTL_NS);
        let mut taken = Vec::new();
        self.0.retain(|(_, p)| {
            let ours = p == flow || *p == flow.reversed();
            if ours && !taken.contains(p) {
                taken.push(*p);
            }
            !ours
        });
        taken
    }
}

/// What asks netfilter's ruleset for the rule that dropped a packet, and how often.
#[derive(Default)]
struct RuleLookups {
    /// Each (netns, packet flow) once, capped per second (the NAT lookups' budget).
    budget: NatBudget,
    unplaced: UnplacedDrops,
    /// `--trace-rules`: the kernel's own trace of the drops (its table goes with it).
    tracing: Option<RuleTracing>,
}

/// The userspace side of the event stream and what it remembers between batches.
pub struct Feed {
    pub enricher: Enricher,
    /// When each (netns, target) was last asked about, so that a storm asks once in a while.
    last_probe: HashMap<(u32, Target), u64>,
    /// How often the after-connect measurements (ports, connection holders) may be made.
    budget: MeasurementBudget,
    /// How often conntrack may be asked where a connection was translated to.
    nat_budget: NatBudget,
    /// Lost-event counts already turned into `Lost` events, by kind.
    reported_lost: KindCounts,
    reported_skipped: KindCounts,
    rule_lookups: RuleLookups,
}

impl Feed {
    pub fn new(enricher: Enricher) -> Feed {
        Feed { enricher, last_probe: HashMap::new(), budget: MeasurementBudget::new(), nat_budget: NatBudget::new(), reported_lost: KindCounts::new(), reported_skipped: KindCounts::new(), rule_lookups: RuleLookups::default() }
    }

    /// Who listens where right now (pushed to the engine with the owners' process facts), so
    /// that a listener that dies a second from now is still named. Returns the owners' pids
    /// and the Unix paths, for the kernel to watch.
    pub fn snapshot_listeners(&mut self, engine: &mut Engine) -> (Vec<u32>, Vec<String>) {
        let mut owners = Vec::new();
        let mut paths = Vec::new();
        // Every namespace's address book first: it places the listeners' addresses.
        for ev in self.enricher.snapshot_addresses(enrich::monotonic_ns()) {
            engine.push(&ev);
        }
        for ev in self.enricher.snapshot_listeners() {
            engine.push(&ev);
            if let EventBody::ListenerSeen { target, .. } = &ev.body {
                if ev.task.pid != 0 {
                    owners.push(ev.task.pid);
                    if let Some(info) = enrich::cgroup::process_info_event(&ev.task, ev.ts_ns, ev.netns) {
                        engine.push(&info);
                    }
                }
                if let Target::Unix(p) = target {
                    paths.push(p.clone());
                }
            }
        }
        owners.sort_unstable();
        owners.dedup();
        let _ = self.enricher.poll_overflows();
        (owners, paths)
    }

    /// Listen-queue overflows sock_diag saw, and the kernel's accept-wait histograms (function
    /// hook on inet_csk_accept).
    pub fn poll(&mut self, capture: &Capture, now: u64, engine: &mut Engine) {
        for ev in self.enricher.poll_overflows() {
            engine.push(&ev);
            // A namespace whose listeners overflow: their queues now, while they are full
            // (the kernel reads a queue only at a SYN retransmit of a client in the same
            // namespace; clients in another namespace, or that give up sooner, get none).
            for seen in self.enricher.listeners_seen_in(ev.netns) {
                engine.push(&seen);
            }
        }
        // poll_overflows rescanned /proc: the namespaces it found have no address book yet.
        for ev in self.enricher.addresses_of_new_namespaces(now) {
            engine.push(&ev);
        }
        self.accept_waits(capture, now, engine);
    }

    pub fn accept_waits(&mut self, capture: &Capture, now: u64, engine: &mut Engine) {
        for ev in capture.accept_waits.as_ref().map(|a| a.events(now)).unwrap_or_default() {
            engine.push(&ev);
        }
    }

    /// `--trace-rules`: nftables tracing on in every namespace, until the feed is dropped.
    pub fn trace_rules(&mut self, ports: &[u16], only: Option<u32>) {
        self.rule_lookups.tracing = Some(self.enricher.start_rule_tracing(ports, only));
    }

    pub fn absorb(&mut self, batch: &mut Vec<Event>, engine: &mut Engine) {
        absorb(batch, engine, &mut self.enricher, &mut self.last_probe, &mut self.budget, &mut self.nat_budget, &mut self.rule_lookups);
    }

    pub fn lost_events(&mut self, capture: &Capture, now: u64, engine: &mut Engine) {
        lost_events(capture, &mut self.reported_lost, now, engine);
        skipped_runs(capture, &mut self.reported_skipped, now, engine);
    }
}

/// Feeds a batch to the engine in time order, asking sock_diag about listeners where the
/// kernel could not measure them itself (listeners older than tracer, Unix listeners), and
/// measuring what the after-connect causes need while it is still there (the free ports when
/// a connect found none, who holds a connection Nginx gave up on).
fn absorb(
    batch: &mut Vec<Event>,
    engine: &mut Engine,
    enricher: &mut Enricher,
    last_probe: &mut HashMap<(u32, Target), u64>,
    budget: &mut MeasurementBudget,
    nat_budget: &mut NatBudget,
    rule_lookups: &mut RuleLookups,
) {
    // Records from different CPUs interleave in the ring: restore time order.
    batch.sort_by_key(|e| e.ts_ns);
    let me = std::process::id();
    for ev in batch.drain(..) {
        // tracer's own listener (--metrics) is not an upstream anyone meant.
        if ev.task.pid == me && matches!(ev.body, EventBody::TcpListenStart { .. } | EventBody::TcpListenStop { .. }) {
            continue;
        }
        let probe = match &ev.body {
            // Asked where the target is served (a container's namespace, maybe).
            EventBody::TcpSynRetransmit { flow, queue: None, .. } => {
                Some((enricher.serving_netns(ev.netns, flow.dst.ip()).unwrap_or(ev.netns), Target::Tcp(flow.dst)))
            }
            // The kernel recorded the caller's netns: it decides which sock_diag to ask.
            EventBody::UnixConnectFailed { path, errno } if *errno == libc::EAGAIN || *errno == libc::ECONNREFUSED => {
                Some((ev.netns, Target::Unix(path.clone())))
            }
            _ => None,
        };
        // A namespace first seen: its address book, just before the event that named it.
        if let Some(book) = enricher.addresses_if_unknown(ev.netns, ev.ts_ns) {
            engine.push(&book);
        }
        engine.push(&ev);
        // Measured now, stamped just after its trigger so the engine meets it next.
        // A destination configured in no namespace was translated (a Service, a published
        // port): conntrack names the backend while the entry lasts (~10 s after a refusal).
        if let Some((netns, flow)) = nat_candidate(&ev) {
            if !enricher.is_local_anywhere(flow.dst.ip()) && nat_budget.admit(netns, flow, ev.ts_ns) {
                for measured in enricher.nat_mapping(netns, flow, ev.ts_ns.saturating_add(1)) {
                    engine.push(&measured);
                }
            }
        }
        name_firewall_rule(&ev, engine, enricher, rule_lookups);
        if let Some(m) = measurement_for(&ev).filter(|m| budget.admit(m, ev.ts_ns)) {
            if let Some(measured) = enricher.measure(m, ev.ts_ns.saturating_add(1)) {
                engine.push(&measured);
            }
        }
        // A new listener: its owner's parent, cgroup and unit, while it is alive to be read.
        if matches!(ev.body, EventBody::TcpListenStart { .. } | EventBody::UnixBind { .. }) {
            if let Some(info) = enrich::cgroup::process_info_event(&ev.task, ev.ts_ns, ev.netns) {
                engine.push(&info);
            }
        }
        if let Some(key) = probe {
            let due = last_probe.get(&key).is_none_or(|t| ev.ts_ns.saturating_sub(*t) >= PROBE_EVERY_NS);
            if due {
                last_probe.insert(key.clone(), ev.ts_ns);
                if let Some(seen) = enricher.probe_target(key.0, &key.1) {
                    engine.push(&seen);
                }
            }
        }
    }
    if last_probe.len() > 10_000 {
        last_probe.clear();
    }
}

/// The netfilter rule of a drop, read from the ruleset of the namespace where it happened.
/// A drop with its socket is the connecting socket's own SYN, in its namespace: asked at once.
/// A drop without (a packet received, or on loopback) waits for an event of its connection
/// (a SYN retransmit, the reset, the failure), whose client's namespace places its addresses:
/// the sender's namespace is asked first, then the receiver's, then the host's (`drop_places`).
fn name_firewall_rule(ev: &Event, engine: &mut Engine, enricher: &mut Enricher, lookups: &mut RuleLookups) {
    // `on_path`: the packet surely crossed the namespace; otherwise what is found there is only
    // a candidate.
    let ask = |netns: u32, packet: FlowAddr, syn: bool, on_path: bool, enricher: &mut Enricher, engine: &mut Engine, lookups: &mut RuleLookups| -> bool {
        if !lookups.budget.admit(netns, packet, ev.ts_ns) {
            return false;
        }
        match enricher.firewall_rule(netns, packet, syn, ev.ts_ns.saturating_add(1)) {
            Some(mut named) => {
                if let EventBody::FirewallRule { certain, .. } = &mut named.body {
                    *certain &= on_path;
                }
                engine.push(&named);
                true
            }
            None => false,
        }
    };
    match &ev.body {
        EventBody::SkbDropped { flow: Some(packet), reason }
            if drop_meaning(reason.strip_prefix("SKB_DROP_REASON_").unwrap_or(reason.as_ref())) == Some(DropMeaning::Netfilter) =>
        {
            // Traced by the kernel (`--trace-rules`): the rule itself, in the namespace it
            // says, whatever the ruleset alone could tell.
            if let Some(tracing) = lookups.tracing.as_mut() {
                tracing.read();
                if let Some(traced) = tracing.drop_of(packet).cloned() {
                    if lookups.budget.admit(traced.netns, *packet, ev.ts_ns) {
                        if let Some(named) = enricher.traced_rule(&traced, ev.ts_ns.saturating_add(1)) {
                            engine.push(&named);
                        }
                    }
                    return;
                }
            }
            if ev.netns != 0 {
                ask(ev.netns, *packet, true, true, enricher, engine, lookups);
            } else {
                lookups.unplaced.push(ev.ts_ns, *packet);
            }
        }
        EventBody::TcpSynRetransmit { flow, .. } | EventBody::TcpAttemptFailed { flow, .. } | EventBody::TcpRstReceived { flow }
            if ev.netns != 0 =>
        {
            for packet in lookups.unplaced.take(flow, ev.ts_ns) {
                let places = enricher.drop_places(ev.netns, packet);
                for (netns, on_path) in places {
                    if ask(netns, packet, packet == *flow, on_path, enricher, engine, lookups) {
                        break;
                    }
                }
            }
        }
        _ => {}
    }
}

/// Turns kernel lost-event counters into `Lost` events (only the increase since last time).
fn lost_events(capture: &Capture, reported: &mut KindCounts, now: u64, engine: &mut Engine) {
    let Ok((_, lost)) = capture.counters() else { return };
    report_increase(lost, reported, now, engine, |kind, n| format!("tracer: warning: the kernel lost {n} {kind} events (ring buffer full)"));
}

/// Turns the kernel's count of skipped program runs into `Lost` events (the increase since
/// last time): a run skipped because another BPF program was running on that CPU sent nothing.
fn skipped_runs(capture: &Capture, reported: &mut KindCounts, now: u64, engine: &mut Engine) {
    report_increase(capture.skipped_runs(), reported, now, engine, |kind, n| {
        format!("tracer: warning: the kernel skipped {n} runs of the program that reports {kind} events (another BPF program was running on that CPU)")
    });
}

/// For each kind whose running total in `counts` rose past what `reported` holds: one warning
/// line and one `Lost` event with the increase.
fn report_increase(counts: KindCounts, reported: &mut KindCounts, now: u64, engine: &mut Engine, warning: impl Fn(RecordKind, u64) -> String) {
    for (kind, count) in counts {
        let before = reported.get(&kind).copied().unwrap_or(0);
        if count > before {
            note!("{}", warning(kind, count - before));
            engine.push(&Event { ts_ns: now, netns: 0, sock: 0, task: Default::default(), body: EventBody::Lost { kind, count: count - before } });
            reported.insert(kind, count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unplaced_drops_are_taken_by_their_connection_once_and_forgotten_when_old() {
        let flow = FlowAddr { src: "10.0.0.1:40000".parse().unwrap(), dst: "10.0.0.2:8000".parse().unwrap() };
        let other = FlowAddr { src: "10.0.0.1:40001".parse().unwrap(), dst: "10.0.0.2:8000".parse().unwrap() };
        let mut drops = UnplacedDrops::default();
        drops.push(1, flow);
        drops.push(2, flow);
        drops.push(3, flow.reversed());
        drops.push(4, other);
        assert_eq!(drops.take(&flow, 10), [flow, flow.reversed()], "each packet direction once");
        assert!(drops.take(&flow, 11).is_empty(), "taken");
        assert!(drops.take(&other, 4 + UNPLACED_DROP_TTL_NS).is_empty(), "too old");
        for i in 0..(MAX_UNPLACED_DROPS as u64 + 5) {
            drops.push(i, other);
        }
        assert_eq!(drops.0.len(), MAX_UNPLACED_DROPS);
    }
}
