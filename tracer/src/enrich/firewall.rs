//! Which nftables rule dropped or rejected a packet: a static walk of a namespace's ruleset
//! (`nft -j list ruleset`) for one packet, the way netfilter walks it: the hooks the packet
//! crosses in path order, each hook's base chains by priority, each chain's rules in order,
//! following jumps, gotos, named and anonymous sets and verdict maps. The first rule whose
//! verdict is drop or reject and that surely matches wins. A rule whose match depends on what
//! cannot be known from the packet's addresses alone (conntrack state, marks, rate limits, an
//! iptables match nft cannot show) is a candidate, never the answer. Pure: the ruleset comes
//! in as text, the rules go out as data.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

/// Bound on nested jumps (the kernel's own limit is 16).
const MAX_DEPTH: usize = 16;
/// Bound on candidates returned for one packet.
const MAX_CANDIDATES: usize = 8;
/// Bound on rules visited for one packet (a hostile or huge ruleset costs at most this).
const MAX_VISITS: usize = 100_000;

/// The packet whose fate is looked for, in the namespace where it was dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags names the packet carries (`syn`; `syn`, `ack` for a SYN-ACK); empty: unknown.
    pub tcp_flags: Vec<&'static str>,
    /// The hooks it crosses in this namespace, in path order (`output`, `postrouting` for a
    /// packet sent from here; `prerouting`, `input` for one received).
    pub hooks: Vec<&'static str>,
    /// The interfaces when known (loopback traffic: `lo`).
    pub iif: Option<String>,
    pub oif: Option<String>,
}

/// One rule (or a base chain's policy) that dropped or rejected the packet, or may have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundRule {
    pub family: String,
    pub table: String,
    pub chain: String,
    /// The base chain's hook the packet came through.
    pub hook: String,
    /// The rule's handle; a policy's: its chain's handle.
    pub handle: u64,
    /// The rule's position in its chain (0-based): iptables-nft-save lists rules in this order.
    pub position: usize,
    /// The chain's policy (no rule): `policy drop`.
    pub policy: bool,
    /// Its own matches surely hold for the packet (whether it was reached may still be open).
    pub sure: bool,
}

/// What the walk found: the rules in walk order; `certain` only when exactly one rule could
/// have done it and its matches surely hold (netfilter did drop the packet: when no other
/// rule could have, an accept that may have come first did not).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleMatch {
    pub rules: Vec<FoundRule>,
    pub certain: bool,
}

/// `nft -j list ruleset`: a list of one-key objects (`table`, `chain`, `rule`, `set`...).
#[derive(Debug, Deserialize)]
struct Listing {
    nftables: Vec<serde_json::Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
struct TableJson {
    family: String,
    name: String,
    #[serde(default)]
    handle: u64,
}

#[derive(Debug, Deserialize)]
struct ChainJson {
    family: String,
    table: String,
    name: String,
    #[serde(default)]
    handle: u64,
    hook: Option<String>,
    prio: Option<Value>,
    policy: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RuleJson {
    family: String,
    table: String,
    chain: String,
    #[serde(default)]
    handle: u64,
    #[serde(default)]
    expr: Vec<Value>,
}

#[derive(Debug, Deserialize)]
struct SetJson {
    family: String,
    table: String,
    name: String,
    #[serde(default)]
    elem: Vec<Value>,
}

/// A parsed ruleset, ready to be walked for any number of packets.
#[derive(Debug, Default)]
pub struct Ruleset {
    /// (family, table) -> the table's handle (orders base chains of equal priority).
    tables: HashMap<(String, String), u64>,
    /// (family, table, chain) -> chain.
    chains: HashMap<(String, String, String), Chain>,
    /// (family, table, set) -> elements.
    sets: HashMap<(String, String, String), Vec<Value>>,
}

#[derive(Debug)]
struct Chain {
    handle: u64,
    hook: Option<String>,
    prio: i64,
    policy_drop: bool,
    rules: Vec<(u64, Vec<Value>)>,
}

impl Ruleset {
    /// The ruleset of `nft -j list ruleset`'s output; an error names what did not parse.
    pub fn parse(json: &str) -> Result<Ruleset, String> {
        let listing: Listing = serde_json::from_str(json).map_err(|e| format!("nft -j output: {e}"))?;
        let mut r = Ruleset::default();
        let mut rules = Vec::new();
        for item in listing.nftables {
            // Objects tracer does not read (metainfo, counters, flowtables...) are skipped; one
            // it reads but cannot parse fails the whole listing.
            let Some((kind, body)) = item.into_iter().next() else { continue };
            let bad = |e: serde_json::Error| format!("nft -j output, a {kind}: {e}");
            match kind.as_str() {
                "table" => {
                    let t: TableJson = serde_json::from_value(body).map_err(bad)?;
                    r.tables.insert((t.family, t.name), t.handle);
                }
                "chain" => {
                    let c: ChainJson = serde_json::from_value(body).map_err(bad)?;
                    let chain = Chain {
                        handle: c.handle,
                        prio: c.prio.as_ref().and_then(priority).unwrap_or(0),
                        hook: c.hook,
                        policy_drop: c.policy.as_deref() == Some("drop"),
                        rules: Vec::new(),
                    };
                    r.chains.insert((c.family, c.table, c.name), chain);
                }
                "rule" => rules.push(serde_json::from_value::<RuleJson>(body).map_err(bad)?),
                "set" | "map" => {
                    let s: SetJson = serde_json::from_value(body).map_err(bad)?;
                    r.sets.insert((s.family, s.table, s.name), s.elem);
                }
                _ => {}
            }
        }
        // nft lists a chain's rules in their order.
        for rule in rules {
            if let Some(chain) = r.chains.get_mut(&(rule.family, rule.table, rule.chain)) {
                chain.rules.push((rule.handle, rule.expr));
            }
        }
        Ok(r)
    }

    /// Whether the table looks made by iptables-nft: an ip/ip6 table of iptables' names whose
    /// base chains carry iptables' built-in names, or any rule using an xtables expression.
    pub fn is_iptables_table(&self, family: &str, table: &str) -> bool {
        if !matches!(family, "ip" | "ip6") {
            return false;
        }
        let mut chains = self.chains.iter().filter(|((f, t, _), _)| f == family && t == table);
        let xt = chains.clone().any(|(_, c)| c.rules.iter().any(|(_, e)| e.iter().any(|x| x.get("xt").is_some())));
        let builtin = matches!(table, "filter" | "nat" | "mangle" | "raw" | "security")
            && chains.any(|((_, _, name), c)| {
                c.hook.is_some() && matches!(name.as_str(), "INPUT" | "OUTPUT" | "FORWARD" | "PREROUTING" | "POSTROUTING")
            });
        xt || builtin
    }

    /// The hook of a base chain (None: no such chain, or not a base chain).
    pub fn hook_of(&self, family: &str, table: &str, chain: &str) -> Option<&str> {
        self.chains.get(&(family.to_string(), table.to_string(), chain.to_string()))?.hook.as_deref()
    }

    /// A chain's handle, and the position of its rule `handle` (None: no such rule).
    pub fn place_of(&self, family: &str, table: &str, chain: &str, handle: Option<u64>) -> Option<(u64, usize)> {
        let c = self.chains.get(&(family.to_string(), table.to_string(), chain.to_string()))?;
        match handle {
            Some(h) => Some((c.handle, c.rules.iter().position(|(r, _)| *r == h)?)),
            None => Some((c.handle, c.rules.len())),
        }
    }

    /// Whether any table of `family` looks made by iptables-nft.
    pub fn has_iptables_tables(&self, family: &str) -> bool {
        self.tables.keys().any(|(f, t)| f == family && self.is_iptables_table(f, t))
    }

    /// The rules that dropped or rejected `packet`, or may have.
    pub fn find(&self, packet: &Packet) -> RuleMatch {
        let mut walk = Walk { ruleset: self, packet, found: Vec::new(), visits: 0 };
        let families: &[&str] = if packet.daddr.is_ipv4() { &["ip", "inet"] } else { &["ip6", "inet"] };
        for hook in &packet.hooks {
            let mut base: Vec<(&(String, String, String), &Chain)> = self
                .chains
                .iter()
                .filter(|((f, _, _), c)| families.contains(&f.as_str()) && c.hook.as_deref() == Some(hook))
                .collect();
            base.sort_by_key(|((f, t, name), c)| (c.prio, self.tables.get(&(f.clone(), t.clone())).copied().unwrap_or(0), name.clone()));
            for (key, chain) in base {
                // A base chain is surely reached while no rule may have dropped the packet.
                let reach = if walk.found.is_empty() { Sure::Yes } else { Sure::Maybe };
                let at = Place { family: &key.0, table: &key.1, hook };
                match walk.chain(at, &key.2, reach, 0) {
                    End::Dropped => return walk.result(true),
                    End::Accepted => continue,
                    End::FellOff(reach_end) => {
                        if chain.policy_drop && walk.found.len() < MAX_CANDIDATES {
                            walk.found.push(FoundRule {
                                family: key.0.clone(),
                                table: key.1.clone(),
                                chain: key.2.clone(),
                                hook: hook.to_string(),
                                handle: chain.handle,
                                position: chain.rules.len(),
                                policy: true,
                                sure: true,
                            });
                            if reach_end == Sure::Yes {
                                return walk.result(true);
                            }
                        }
                    }
                }
                if walk.visits >= MAX_VISITS {
                    return walk.result(false);
                }
            }
        }
        walk.result(true)
    }
}

/// A chain's priority: a number, or a standard priority name (`filter`, `raw`...) with an
/// optional offset as nft may print it.
fn priority(v: &Value) -> Option<i64> {
    if let Some(n) = v.as_i64() {
        return Some(n);
    }
    let text = v.as_str()?.replace(' ', "");
    let (name, offset) = match text.find(['+', '-']) {
        Some(i) => (&text[..i], text[i..].parse::<i64>().ok()?),
        None => (text.as_str(), 0),
    };
    let base = match name {
        "raw" => -300,
        "mangle" => -150,
        "dstnat" => -100,
        "filter" => 0,
        "security" => 50,
        "srcnat" => 100,
        _ => return None,
    };
    Some(base + offset)
}

/// Whether something holds: yes, no, or cannot be told from the packet alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sure {
    Yes,
    No,
    Maybe,
}

impl Sure {
    fn of(b: bool) -> Sure {
        if b {
            Sure::Yes
        } else {
            Sure::No
        }
    }

    fn and(self, other: Sure) -> Sure {
        match (self, other) {
            (Sure::No, _) | (_, Sure::No) => Sure::No,
            (Sure::Yes, Sure::Yes) => Sure::Yes,
            _ => Sure::Maybe,
        }
    }
}

/// How walking a chain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// A rule surely dropped or rejected the packet on a path surely taken.
    Dropped,
    /// Surely accepted: this base chain is done.
    Accepted,
    /// Fell off the end or returned; `Maybe` when some earlier rule may have ended the walk.
    FellOff(Sure),
}

/// A rule's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Drop,
    Accept,
    Jump(String),
    Goto(String),
    Return,
}

#[derive(Clone, Copy)]
struct Place<'a> {
    family: &'a str,
    table: &'a str,
    hook: &'a str,
}

struct Walk<'a> {
    ruleset: &'a Ruleset,
    packet: &'a Packet,
    found: Vec<FoundRule>,
    visits: usize,
}

impl Walk<'_> {
    fn result(self, complete: bool) -> RuleMatch {
        let certain = complete && self.found.len() == 1 && self.found[0].sure;
        RuleMatch { rules: self.found, certain }
    }

    fn chain(&mut self, at: Place<'_>, name: &str, mut reach: Sure, depth: usize) -> End {
        let key = (at.family.to_string(), at.table.to_string(), name.to_string());
        let Some(chain) = self.ruleset.chains.get(&key) else { return End::FellOff(reach) };
        if depth > MAX_DEPTH {
            return End::FellOff(Sure::Maybe);
        }
        for (position, (handle, exprs)) in chain.rules.iter().enumerate() {
            self.visits += 1;
            if self.visits >= MAX_VISITS {
                return End::FellOff(Sure::Maybe);
            }
            let (matched, verdicts) = self.rule(at, exprs);
            for (verdict, sure) in verdicts {
                let taken = matched.and(sure).and(reach);
                if taken == Sure::No {
                    continue;
                }
                match verdict {
                    Verdict::Drop => {
                        if self.found.len() < MAX_CANDIDATES {
                            self.found.push(FoundRule {
                                family: at.family.to_string(),
                                table: at.table.to_string(),
                                chain: name.to_string(),
                                hook: at.hook.to_string(),
                                handle: *handle,
                                position,
                                policy: false,
                                sure: matched == Sure::Yes && sure == Sure::Yes,
                            });
                        }
                        if taken == Sure::Yes {
                            return End::Dropped;
                        }
                        reach = Sure::Maybe;
                    }
                    Verdict::Accept => {
                        if taken == Sure::Yes {
                            return End::Accepted;
                        }
                        reach = Sure::Maybe;
                    }
                    Verdict::Return => {
                        if taken == Sure::Yes {
                            return End::FellOff(reach);
                        }
                        reach = Sure::Maybe;
                    }
                    Verdict::Jump(ref target) | Verdict::Goto(ref target) => {
                        let goto = matches!(verdict, Verdict::Goto(_));
                        match self.chain(at, target, taken, depth + 1) {
                            End::Dropped => return End::Dropped,
                            End::Accepted if taken == Sure::Yes => return End::Accepted,
                            End::FellOff(Sure::Yes) if goto && taken == Sure::Yes => return End::FellOff(Sure::Yes),
                            End::FellOff(Sure::Yes) if taken == Sure::Yes => {}
                            _ => reach = Sure::Maybe,
                        }
                    }
                }
            }
        }
        End::FellOff(reach)
    }

    /// Whether the rule's matches hold for the packet, and its verdicts (a verdict map gives
    /// one per element, each as sure as its key's match).
    fn rule(&self, at: Place<'_>, exprs: &[Value]) -> (Sure, Vec<(Verdict, Sure)>) {
        let mut matched = Sure::Yes;
        let mut verdicts = Vec::new();
        for e in exprs {
            let Some((kind, body)) = e.as_object().and_then(|o| o.iter().next()) else {
                matched = matched.and(Sure::Maybe);
                continue;
            };
            match kind.as_str() {
                "match" => matched = matched.and(self.test(at, body)),
                "drop" | "reject" => verdicts.push((Verdict::Drop, Sure::Yes)),
                "accept" | "queue" => verdicts.push((Verdict::Accept, Sure::Yes)),
                // NAT statements end the walk of their chain like an accept.
                "dnat" | "snat" | "masquerade" | "redirect" => verdicts.push((Verdict::Accept, Sure::Yes)),
                "return" => verdicts.push((Verdict::Return, Sure::Yes)),
                "jump" | "goto" => {
                    let Some(target) = body.get("target").and_then(Value::as_str) else { continue };
                    let v = if kind == "jump" { Verdict::Jump(target.into()) } else { Verdict::Goto(target.into()) };
                    verdicts.push((v, Sure::Yes));
                }
                "vmap" => verdicts.extend(self.vmap(at, body)),
                "xt" => match (body.get("type").and_then(Value::as_str), body.get("name").and_then(Value::as_str)) {
                    // A comment always matches; iptables' REJECT target rejects.
                    (Some("match"), Some("comment")) => {}
                    (Some("target"), Some("REJECT")) => verdicts.push((Verdict::Drop, Sure::Yes)),
                    (Some("target"), _) => {}
                    _ => matched = matched.and(Sure::Maybe),
                },
                // Statements that never stop a packet.
                "counter" | "log" | "mangle" | "notrack" | "set" | "ct helper" | "ct timeout" | "ct expectation"
                | "dup" | "secmark" | "flow" | "continue" => {}
                // limit, quota, meter, fib, anything newer: cannot be told statically.
                _ => matched = matched.and(Sure::Maybe),
            }
        }
        (matched, verdicts)
    }

    /// `match { op, left, right }`.
    fn test(&self, at: Place<'_>, m: &Value) -> Sure {
        let op = m.get("op").and_then(Value::as_str).unwrap_or("==");
        let (Some(left), Some(right)) = (m.get("left"), m.get("right")) else { return Sure::Maybe };
        let Some(value) = self.value_of(left) else { return Sure::Maybe };
        let value = match value {
            Known::Absent => return Sure::No,
            Known::Unknown => return Sure::Maybe,
            v => v,
        };
        match op {
            "==" | "in" => self.contains(at, right, &value, op == "in"),
            "!=" => match self.contains(at, right, &value, false) {
                Sure::Yes => Sure::No,
                Sure::No => Sure::Yes,
                Sure::Maybe => Sure::Maybe,
            },
            "<" | ">" | "<=" | ">=" => match (&value, right.as_u64()) {
                (Known::Number(n), Some(r)) => Sure::of(match op {
                    "<" => *n < r,
                    ">" => *n > r,
                    "<=" => *n <= r,
                    _ => *n >= r,
                }),
                _ => Sure::Maybe,
            },
            _ => Sure::Maybe,
        }
    }

    /// The packet's value of an expression nft matches on; None for what tracer cannot read.
    fn value_of(&self, e: &Value) -> Option<Known> {
        let p = self.packet;
        if let Some(payload) = e.get("payload") {
            let protocol = payload.get("protocol").and_then(Value::as_str)?;
            let field = payload.get("field").and_then(Value::as_str)?;
            return Some(match (protocol, field) {
                ("ip", _) if !p.daddr.is_ipv4() => Known::Absent,
                ("ip6", _) if !p.daddr.is_ipv6() => Known::Absent,
                ("ip" | "ip6", "saddr") => Known::Addr(p.saddr),
                ("ip" | "ip6", "daddr") => Known::Addr(p.daddr),
                ("ip", "protocol") | ("ip6", "nexthdr") => Known::Name("tcp".into(), 6),
                ("tcp" | "th", "sport") => Known::Number(u64::from(p.sport)),
                ("tcp" | "th", "dport") => Known::Number(u64::from(p.dport)),
                ("tcp", "flags") if p.tcp_flags.is_empty() => Known::Unknown,
                ("tcp", "flags") => Known::Flags(p.tcp_flags.clone()),
                ("udp" | "sctp" | "dccp" | "icmp" | "icmpv6" | "udplite" | "esp" | "ah" | "comp", _) => Known::Absent,
                _ => Known::Unknown,
            });
        }
        if let Some(meta) = e.get("meta") {
            let key = meta.get("key").and_then(Value::as_str)?;
            let v4 = p.daddr.is_ipv4();
            return Some(match key {
                "l4proto" => Known::Name("tcp".into(), 6),
                "nfproto" => Known::Name(if v4 { "ipv4" } else { "ipv6" }.into(), if v4 { 2 } else { 10 }),
                "protocol" => Known::Name(if v4 { "ip" } else { "ip6" }.into(), if v4 { 0x0800 } else { 0x86dd }),
                "iifname" => p.iif.clone().map_or(Known::Unknown, |i| Known::Name(i, u64::MAX)),
                "oifname" => p.oif.clone().map_or(Known::Unknown, |i| Known::Name(i, u64::MAX)),
                _ => Known::Unknown,
            });
        }
        // ct, fib, socket, numgen, rt, osf, concatenations...: not from the packet alone.
        Some(Known::Unknown)
    }

    /// Whether `value` equals `right` or is in it (a set literal, a named set, a range, a
    /// prefix). `flag_op`: nft's `in` on flags (any of the named bits set).
    fn contains(&self, at: Place<'_>, right: &Value, value: &Known, flag_op: bool) -> Sure {
        if let Some(name) = right.as_str().and_then(|s| s.strip_prefix('@')) {
            let key = (at.family.to_string(), at.table.to_string(), name.to_string());
            let Some(elements) = self.ruleset.sets.get(&key) else { return Sure::Maybe };
            return any_of(elements.iter().map(|e| element_holds(e, value, flag_op)));
        }
        if let Some(items) = right.get("set").and_then(Value::as_array) {
            return any_of(items.iter().map(|e| element_holds(e, value, flag_op)));
        }
        element_holds(right, value, flag_op)
    }

    /// The verdicts of a verdict map, each as sure as its key matching the packet.
    fn vmap(&self, at: Place<'_>, body: &Value) -> Vec<(Verdict, Sure)> {
        let Some(key) = body.get("key").and_then(|k| self.value_of(k)) else { return Vec::new() };
        let data = body.get("data");
        let elements: Vec<Value> = match data {
            Some(Value::String(s)) if s.starts_with('@') => {
                let k = (at.family.to_string(), at.table.to_string(), s[1..].to_string());
                self.ruleset.sets.get(&k).cloned().unwrap_or_default()
            }
            Some(d) => d.get("set").and_then(Value::as_array).cloned().unwrap_or_default(),
            None => Vec::new(),
        };
        let mut out = Vec::new();
        for element in elements {
            // A map element: [key, verdict] (or {"elem": ...} around the key).
            let Some(pair) = element.as_array().filter(|a| a.len() == 2) else { continue };
            let holds = match &key {
                Known::Absent => Sure::No,
                Known::Unknown => Sure::Maybe,
                k => element_holds(&pair[0], k, false),
            };
            if holds == Sure::No {
                continue;
            }
            if let Some(v) = verdict_of(&pair[1]) {
                out.push((v, holds));
            }
        }
        out
    }
}

fn verdict_of(v: &Value) -> Option<Verdict> {
    let (kind, body) = v.as_object()?.iter().next()?;
    Some(match kind.as_str() {
        "drop" | "reject" => Verdict::Drop,
        "accept" => Verdict::Accept,
        "return" => Verdict::Return,
        "jump" => Verdict::Jump(body.get("target")?.as_str()?.into()),
        "goto" => Verdict::Goto(body.get("target")?.as_str()?.into()),
        _ => return None,
    })
}

/// Yes when one holds, No when none can, else Maybe.
fn any_of(results: impl Iterator<Item = Sure>) -> Sure {
    let mut out = Sure::No;
    for r in results {
        match r {
            Sure::Yes => return Sure::Yes,
            Sure::Maybe => out = Sure::Maybe,
            Sure::No => {}
        }
    }
    out
}

/// A value of the packet, as far as tracer knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Known {
    Addr(IpAddr),
    Number(u64),
    /// A name nft may print (`tcp`, an interface) and the number it stands for (u64::MAX: none).
    Name(String, u64),
    Flags(Vec<&'static str>),
    /// The header is not in the packet (an `ip` match on an IPv6 packet): never matches.
    Absent,
    Unknown,
}

/// Whether one set element, range, prefix or literal holds for `value`.
fn element_holds(e: &Value, value: &Known, flag_op: bool) -> Sure {
    // A set element with options (timeout, counter, comment): {"elem": {"val": ...}}.
    if let Some(inner) = e.get("elem").and_then(|x| x.get("val")) {
        return element_holds(inner, value, flag_op);
    }
    match value {
        Known::Addr(ip) => {
            if let Some(p) = e.get("prefix") {
                let addr = p.get("addr").and_then(Value::as_str).and_then(|a| a.parse::<IpAddr>().ok());
                let len = p.get("len").and_then(Value::as_u64);
                return match (addr, len) {
                    (Some(a), Some(l)) => Sure::of(in_prefix(*ip, a, l)),
                    _ => Sure::Maybe,
                };
            }
            if let Some(r) = e.get("range").and_then(Value::as_array).filter(|r| r.len() == 2) {
                let lo = r[0].as_str().and_then(|a| a.parse::<IpAddr>().ok());
                let hi = r[1].as_str().and_then(|a| a.parse::<IpAddr>().ok());
                return match (lo, hi) {
                    (Some(lo), Some(hi)) => Sure::of(lo <= *ip && *ip <= hi && lo.is_ipv4() == ip.is_ipv4()),
                    _ => Sure::Maybe,
                };
            }
            match e.as_str().and_then(|a| a.parse::<IpAddr>().ok()) {
                Some(a) => Sure::of(a == *ip),
                None => Sure::Maybe,
            }
        }
        Known::Number(n) => {
            if let Some(r) = e.get("range").and_then(Value::as_array).filter(|r| r.len() == 2) {
                return match (r[0].as_u64(), r[1].as_u64()) {
                    (Some(lo), Some(hi)) => Sure::of(lo <= *n && *n <= hi),
                    _ => Sure::Maybe,
                };
            }
            match e.as_u64() {
                Some(x) => Sure::of(x == *n),
                None => Sure::Maybe,
            }
        }
        Known::Name(name, number) => match e {
            Value::String(s) => Sure::of(s == name),
            Value::Number(x) if *number != u64::MAX => Sure::of(x.as_u64() == Some(*number)),
            _ => Sure::Maybe,
        },
        Known::Flags(set) => {
            let named: Option<Vec<&str>> = match e {
                Value::String(s) => Some(vec![s.as_str()]),
                Value::Array(a) => a.iter().map(Value::as_str).collect(),
                _ => None,
            };
            match named {
                // `in`: any of the named bits set; `==`: exactly these bits.
                Some(names) if flag_op => Sure::of(names.iter().any(|n| set.contains(n))),
                Some(names) => Sure::of(names.len() == set.len() && names.iter().all(|n| set.contains(n))),
                None => Sure::Maybe,
            }
        }
        Known::Absent => Sure::No,
        Known::Unknown => Sure::Maybe,
    }
}

fn in_prefix(ip: IpAddr, net: IpAddr, len: u64) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if len <= 32 => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if len <= 128 => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The text of each rule as `nft -a -s list ruleset` prints it (handle comment cut off), by
/// (family, table, chain, handle).
pub fn rule_texts(listing: &str) -> HashMap<(String, String, String, u64), String> {
    let mut out = HashMap::new();
    let mut table: Option<(String, String)> = None;
    let mut chain: Option<String> = None;
    for line in listing.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("table ") {
            let mut words = rest.split_whitespace();
            table = match (words.next(), words.next()) {
                (Some(f), Some(n)) => Some((f.to_string(), n.to_string())),
                _ => None,
            };
            chain = None;
            continue;
        }
        if let Some(rest) = t.strip_prefix("chain ") {
            chain = rest.split_whitespace().next().map(str::to_string);
            continue;
        }
        if t.starts_with("set ") || t.starts_with("map ") || t.starts_with("flowtable ") || t == "}" {
            if t != "}" {
                chain = None;
            }
            continue;
        }
        let (Some((family, name)), Some(c)) = (&table, &chain) else { continue };
        let Some((text, handle)) = t.rsplit_once(" # handle ") else { continue };
        let Ok(handle) = handle.trim().parse::<u64>() else { continue };
        out.insert((family.clone(), name.clone(), c.clone(), handle), text.trim_end().to_string());
    }
    out
}

/// The `-A CHAIN ...` lines of `iptables-nft-save` output, per (table, chain), in order.
pub fn iptables_specs(save: &str) -> HashMap<(String, String), Vec<String>> {
    let mut out: HashMap<(String, String), Vec<String>> = HashMap::new();
    let mut table = None;
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = Some(t.trim().to_string());
        } else if let (Some(t), Some(rest)) = (&table, line.strip_prefix("-A ")) {
            let chain = rest.split_whitespace().next().unwrap_or_default().to_string();
            out.entry((t.clone(), chain)).or_default().push(line.to_string());
        }
    }
    out
}

#[cfg(test)]
#[path = "firewall_tests.rs"]
mod tests;
