//! The netfilter rule that dropped a packet, named from the ruleset of the namespace where the
//! drop happened: read there with the system's nft (`ruleset`), kept until the namespace's
//! ruleset generation changes, and walked for the packet (`firewall`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use super::firewall::{iptables_specs, rule_texts, FoundRule, Packet, Ruleset};
use super::ruleset::{self, IP6TABLES_NFT_SAVE, IPTABLES_NFT_SAVE, NFT};
use super::{Enricher, CONNTRACK_TIMEOUT};
use crate::event::{Event, EventBody, FlowAddr, IptablesRule, NamedRule, TaskInfo};

/// A ruleset whose generation cannot be read is read again after this long.
const REREAD_UNKNOWN_NS: u64 = 2_000_000_000;
/// A namespace's ruleset is read at most this often; a ruleset that changes all the time is
/// served by its last reading meanwhile.
const MIN_READ_INTERVAL_NS: u64 = 500_000_000;

/// One namespace's ruleset as last read.
pub struct ReadRuleset {
    /// The generation it was read at (None: unknown, or it changed while being read).
    generation: Option<u32>,
    read_ns: u64,
    ruleset: Ruleset,
    /// Rule texts by (family, table, chain, handle).
    texts: HashMap<(String, String, String, u64), String>,
    /// iptables-nft-save's `-A` lines by (family, table, chain).
    specs: HashMap<(String, String, String), Vec<String>>,
}

impl ReadRuleset {
    fn named(&self, r: &FoundRule) -> NamedRule {
        let text = if r.policy {
            "policy drop".to_string()
        } else {
            let key = (r.family.clone(), r.table.clone(), r.chain.clone(), r.handle);
            self.texts.get(&key).cloned().unwrap_or_else(|| format!("(rule handle {}; its text was not read)", r.handle))
        };
        let iptables = self.ruleset.is_iptables_table(&r.family, &r.table).then(|| {
            let spec = if r.policy {
                Some(format!("-P {} DROP", r.chain))
            } else {
                self.specs.get(&(r.family.clone(), r.table.clone(), r.chain.clone())).and_then(|lines| lines.get(r.position).cloned())
            };
            spec.map(|spec| IptablesRule { table: r.table.clone(), chain: r.chain.clone(), spec })
        });
        NamedRule {
            family: r.family.clone(),
            table: r.table.clone(),
            chain: r.chain.clone(),
            hook: r.hook.clone(),
            handle: r.handle,
            text,
            policy: r.policy,
            iptables: iptables.flatten(),
        }
    }
}

impl Enricher {
    /// `FirewallRule`: the rules of namespace `netns`'s ruleset that dropped the TCP packet
    /// `packet` (in its own direction; `syn`: it is a connection's SYN), or may have. None when
    /// none is found or the ruleset cannot be read (no nft, no permission, the namespace gone).
    pub fn firewall_rule(&mut self, netns: u32, packet: FlowAddr, syn: bool, ts_ns: u64) -> Option<Event> {
        if netns == 0 || !ruleset::nf_tables_present() {
            return None;
        }
        self.refresh_ruleset(netns, ts_ns)?;
        let packet_facts = self.packet_in(netns, packet, syn);
        let read = self.rulesets.get(&netns)?;
        let found = read.ruleset.find(&packet_facts);
        if found.rules.is_empty() {
            return None;
        }
        let rules = found.rules.iter().map(|r| read.named(r)).collect();
        let own = Some(netns) == self.own_netns;
        let netns_name = self.namespaces.name(netns).filter(|_| !own).map(str::to_string);
        // A name outlives any process in the namespace: preferred.
        let enter_pid = if own || netns_name.is_some() { None } else { self.namespaces.pid(netns) };
        let body = EventBody::FirewallRule { flow: packet, rules, certain: found.certain, enter_pid, netns_name };
        Some(Event { ts_ns, netns, sock: 0, task: TaskInfo::default(), body })
    }

    /// `FirewallRule` from a drop the kernel traced (`--trace-rules`): that rule, certain.
    pub fn traced_rule(&mut self, traced: &super::nftrace::TracedDrop, ts_ns: u64) -> Option<Event> {
        let netns = traced.netns;
        self.refresh_ruleset(netns, ts_ns);
        let read = self.rulesets.get(&netns)?;
        let (chain_handle, position) = read.ruleset.place_of(&traced.family, &traced.table, &traced.chain, traced.handle).unwrap_or((0, 0));
        let hook = read.ruleset.hook_of(&traced.family, &traced.table, &traced.base_chain).unwrap_or("unknown").to_string();
        let found = FoundRule {
            family: traced.family.clone(),
            table: traced.table.clone(),
            chain: traced.chain.clone(),
            hook,
            handle: traced.handle.unwrap_or(chain_handle),
            position,
            policy: traced.handle.is_none(),
            sure: true,
        };
        let rule = read.named(&found);
        let own = Some(netns) == self.own_netns;
        let netns_name = self.namespaces.name(netns).filter(|_| !own).map(str::to_string);
        let enter_pid = if own || netns_name.is_some() { None } else { self.namespaces.pid(netns) };
        let body = EventBody::FirewallRule { flow: traced.packet, rules: vec![rule], certain: true, enter_pid, netns_name };
        Some(Event { ts_ns, netns, sock: 0, task: TaskInfo::default(), body })
    }

    /// The namespaces a packet dropped where the kernel did not say (no socket of its own) may
    /// have been dropped in, for a client in `client_netns`, in path order: the sender's, then
    /// the receiver's (both surely on its path), then tracer's own, the host's, which forwards
    /// between containers on a Docker bridge but may not be on the path at all (`false`: a
    /// rule found there is only a candidate).
    pub fn drop_places(&self, client_netns: u32, packet: FlowAddr) -> Vec<(u32, bool)> {
        let mut places: Vec<(u32, bool)> = Vec::new();
        for ip in [packet.src.ip(), packet.dst.ip()] {
            if let Some(ns) = self.serving_netns(client_netns, ip) {
                if !places.iter().any(|(p, _)| *p == ns) {
                    places.push((ns, true));
                }
            }
        }
        if let Some(own) = self.own_netns.filter(|own| !places.iter().any(|(p, _)| p == own)) {
            places.push((own, false));
        }
        places
    }

    /// The packet as the matcher sees it in namespace `netns`: the hooks it crosses there
    /// follow from which of its addresses are the namespace's own.
    fn packet_in(&self, netns: u32, flow: FlowAddr, syn: bool) -> Packet {
        let book: &[IpAddr] = self.address_books.get(&netns).map(|b| b.addrs.as_slice()).unwrap_or(&[]);
        let local = |ip: IpAddr| ip.is_loopback() || book.contains(&ip);
        let (from_here, to_here) = (local(flow.src.ip()), local(flow.dst.ip()));
        let hooks = match (from_here, to_here) {
            (true, true) => vec!["output", "postrouting", "prerouting", "input"],
            (true, false) => vec!["output", "postrouting"],
            (false, true) => vec!["prerouting", "input"],
            (false, false) => vec!["prerouting", "forward", "postrouting"],
        };
        // Between two addresses of one namespace packets go through lo.
        let lo = (from_here && to_here).then(|| "lo".to_string());
        Packet {
            saddr: flow.src.ip(),
            daddr: flow.dst.ip(),
            sport: flow.src.port(),
            dport: flow.dst.port(),
            tcp_flags: if syn { vec!["syn"] } else { Vec::new() },
            hooks,
            iif: lo.clone(),
            oif: lo,
        }
    }

    /// Reads namespace `netns`'s ruleset when its generation changed since the last reading
    /// (or cannot be told and the reading is old). None when there is none to use.
    fn refresh_ruleset(&mut self, netns: u32, ts_ns: u64) -> Option<()> {
        let generation = self.ruleset_generation(netns);
        if let Some(read) = self.rulesets.get(&netns) {
            let age = ts_ns.saturating_sub(read.read_ns);
            let same = match (generation, read.generation) {
                (Some(now), Some(then)) => now == then,
                _ => age < REREAD_UNKNOWN_NS,
            };
            if same || (age < MIN_READ_INTERVAL_NS && ts_ns >= read.read_ns) {
                return Some(());
            }
        }
        let own = Some(netns) == self.own_netns;
        let handle = if own { None } else { Some(self.namespaces.handle_or_named(netns)?) };
        let json = match ruleset::run_in_netns(handle, NFT, &["-j", "list", "ruleset"]) {
            Ok(json) => json,
            Err(e) => {
                log::debug!("nft ruleset of netns {netns}: {e}");
                return None;
            }
        };
        let ruleset = match Ruleset::parse(&json) {
            Ok(r) => r,
            Err(e) => {
                log::debug!("nft ruleset of netns {netns}: {e}");
                return None;
            }
        };
        let texts = ruleset::run_in_netns(handle, NFT, &["-a", "-s", "list", "ruleset"]).map(|t| rule_texts(&t)).unwrap_or_default();
        let mut specs = HashMap::new();
        for (family, program) in [("ip", IPTABLES_NFT_SAVE), ("ip6", IP6TABLES_NFT_SAVE)] {
            if !ruleset.has_iptables_tables(family) || !Path::new(program).exists() {
                continue;
            }
            match ruleset::run_in_netns(handle, program, &[]) {
                Ok(save) => specs.extend(iptables_specs(&save).into_iter().map(|((t, c), lines)| ((family.to_string(), t, c), lines))),
                Err(e) => log::debug!("{program} in netns {netns}: {e}"),
            }
        }
        // Changed while it was read: the texts may not match; read again next time.
        let generation = generation.filter(|g| self.ruleset_generation(netns) == Some(*g));
        self.rulesets.insert(netns, ReadRuleset { generation, read_ns: ts_ns, ruleset, texts, specs });
        Some(())
    }

    fn ruleset_generation(&mut self, netns: u32) -> Option<u32> {
        let protocol = netlink_sys::protocols::NETLINK_NETFILTER;
        let socket = Self::netlink_socket(&mut self.nftables_sockets, &mut self.namespaces, self.own_netns, netns, protocol, CONNTRACK_TIMEOUT)?;
        match ruleset::generation(socket) {
            Ok(g) => Some(g),
            Err(e) => {
                log::debug!("nftables generation in netns {netns}: {e}");
                self.nftables_sockets.remove(&netns);
                None
            }
        }
    }
}
