//! Namespaces and NAT: which network namespace of this host serves an address, and the real
//! backend behind a translated target (DNAT: a Kubernetes Service, a published port). Both
//! are measured by enrich (`NetnsAddresses`, `NatMapping`); here they only steer where the
//! engine looks for a target's listener and which socket-less evidence belongs to an attempt.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use crate::event::{serving_namespace, Event, EventBody, FlowAddr, Target};

use super::attempt::{FlowEvidence, FlowKey};
use super::engine::Engine;
use super::Map;

/// The addresses of each network namespace, and the namespaces of each address.
#[derive(Default)]
pub(super) struct AddressBook {
    by_netns: Map<u32, Vec<IpAddr>>,
    owners: Map<IpAddr, BTreeSet<u32>>,
}

impl AddressBook {
    /// Replaces what `netns` holds. Loopback and unspecified addresses are every namespace's
    /// own and name none in particular: they are left out.
    pub(super) fn set(&mut self, netns: u32, addrs: &[IpAddr], max: usize) {
        if let Some(old) = self.by_netns.remove(&netns) {
            for ip in old {
                if let Some(o) = self.owners.get_mut(&ip) {
                    o.remove(&netns);
                    if o.is_empty() {
                        self.owners.remove(&ip);
                    }
                }
            }
        }
        if self.by_netns.len() >= max {
            return;
        }
        let kept: Vec<IpAddr> = addrs.iter().copied().filter(|ip| !ip.is_loopback() && !ip.is_unspecified()).collect();
        for ip in &kept {
            self.owners.entry(*ip).or_default().insert(netns);
        }
        self.by_netns.insert(netns, kept);
    }

    /// Whether some namespace of this host has `ip`.
    pub(super) fn has(&self, ip: IpAddr) -> bool {
        self.owners.contains_key(&ip)
    }

    /// The namespace that serves `ip` for a client in `netns`: the client's own when the
    /// address is its own, loopback, or unknown; else the one other namespace that has it.
    /// An address held by several other namespaces (the same private range in two isolated
    /// networks) names none of them: the client's namespace stays.
    pub(super) fn serving(&self, netns: u32, ip: IpAddr) -> u32 {
        let holders = self.owners.get(&ip).into_iter().flatten().copied();
        serving_namespace(netns, ip, holders).unwrap_or(netns)
    }
}

impl Engine {
    pub(super) fn namespace_event(&mut self, ev: &Event) {
        match &ev.body {
            EventBody::NetnsAddresses { addrs } => self.book.set(ev.netns, addrs, self.opts.max_tracked),
            EventBody::NatMapping { flow, backend } => self.nat_mapping(flow, *backend),
            _ => {}
        }
    }

    /// The attempt on `flow` went to `backend` after NAT: packets of the translated flow (a
    /// reset from no socket, a drop, a full queue in the backend's namespace) are its
    /// evidence, those already waiting and those to come.
    fn nat_mapping(&mut self, flow: &FlowAddr, backend: SocketAddr) {
        let translated = FlowAddr { src: flow.src, dst: backend };
        if translated == *flow {
            return;
        }
        let Some(key) = self.attempt_by_flow.get(&FlowKey::of(flow)).copied() else { return };
        let waiting: Vec<FlowEvidence> = self.flow_buffer.take_all(&FlowKey::of(&translated)).collect();
        let Some(a) = self.attempts.get_mut(&key) else { return };
        a.nat_flow = Some(translated);
        for e in &waiting {
            a.apply_flow_evidence(e);
        }
        self.attempt_by_flow.insert(FlowKey::of(&translated), key);
    }

    /// Where the listener of `dst` (as dialled from `netns`, translated to `backend` when
    /// NAT was seen) lives: its namespace and address.
    pub(super) fn listener_place(&self, netns: u32, dst: SocketAddr, backend: Option<SocketAddr>) -> (u32, Target) {
        let real = backend.unwrap_or(dst);
        (self.book.serving(netns, real.ip()), Target::Tcp(real))
    }

    /// `listener_place` for a finding's target (Unix paths stay where they are).
    pub(super) fn finding_place(&self, netns: u32, target: &Target, backend: Option<SocketAddr>) -> (u32, Target) {
        match target {
            Target::Tcp(dst) => self.listener_place(netns, *dst, backend),
            Target::Unix(_) => (netns, target.clone()),
        }
    }
}
