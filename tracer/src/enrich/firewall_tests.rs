//! The matcher on rulesets captured with `nft -j list ruleset` from real namespaces (nft
//! 1.0.6, iptables-nft 1.8.9; the .txt and .save files are `nft -a -s list ruleset` and
//! `iptables-nft-save` of the same rulesets).

use super::*;

const DECOY: &str = include_str!("testdata/nft-decoy.json");
const DECOY_TEXT: &str = include_str!("testdata/nft-decoy.txt");
const MANY: &str = include_str!("testdata/nft-many.json");
const MANY_TEXT: &str = include_str!("testdata/nft-many.txt");
const IPT: &str = include_str!("testdata/iptables-nft.json");
const IPT_SAVE: &str = include_str!("testdata/iptables-nft.save");

/// A SYN sent from this namespace to `dst` (loopback when both ends are 127.0.0.1).
fn syn_out(src: &str, dst: &str, sport: u16, dport: u16) -> Packet {
    let saddr: IpAddr = src.parse().unwrap();
    let daddr: IpAddr = dst.parse().unwrap();
    let lo = daddr.is_loopback().then(|| "lo".to_string());
    Packet { saddr, daddr, sport, dport, tcp_flags: vec!["syn"], hooks: vec!["output", "postrouting"], iif: None, oif: lo }
}

/// A SYN received by this namespace on an interface tracer does not know.
fn syn_in(src: &str, dst: &str, dport: u16) -> Packet {
    Packet {
        saddr: src.parse().unwrap(),
        daddr: dst.parse().unwrap(),
        sport: 40000,
        dport,
        tcp_flags: vec!["syn"],
        hooks: vec!["prerouting", "input"],
        iif: None,
        oif: None,
    }
}

fn handles(m: &RuleMatch) -> Vec<u64> {
    m.rules.iter().map(|r| r.handle).collect()
}

#[test]
fn the_drop_after_a_decoy_for_another_port_is_named_and_certain() {
    let r = Ruleset::parse(DECOY).unwrap();
    let m = r.find(&syn_out("10.0.0.1", "10.2.0.5", 40000, 8000));
    assert_eq!(handles(&m), [6], "not the decoy (handle 5, port 9000) nor the accept after it: {m:?}");
    assert!(m.certain, "{m:?}");
    let rule = &m.rules[0];
    assert_eq!((rule.family.as_str(), rule.table.as_str(), rule.chain.as_str(), rule.hook.as_str()), ("inet", "filter", "output", "output"));
    assert_eq!(rule_texts(DECOY_TEXT)[&("inet".into(), "filter".into(), "output".into(), 6)], "tcp dport 8000 counter drop");
    // Another port: nothing drops it.
    let m = r.find(&syn_out("10.0.0.1", "10.2.0.5", 40000, 8001));
    assert!(m.rules.is_empty() && !m.certain, "{m:?}");
    // The decoy's own port.
    assert_eq!(handles(&r.find(&syn_out("10.0.0.1", "10.2.0.5", 40000, 9000))), [5]);
}

#[test]
fn an_accept_in_an_earlier_base_chain_does_not_stop_a_later_one() {
    // `table ip early` accepts 10.1.0.0/16 at priority -10; the packet still crosses
    // inet filter output at priority 0, whose rule drops it.
    let r = Ruleset::parse(DECOY).unwrap();
    let m = r.find(&syn_out("10.0.0.1", "10.1.2.3", 40000, 8000));
    assert_eq!(handles(&m), [6], "{m:?}");
    assert!(m.certain);
}

#[test]
fn a_policy_drop_is_named_when_no_rule_drops() {
    // inet filter input: policy drop after `ct state established,related accept` (which a SYN
    // may or may not meet, as far as the ruleset tells) and an accept for port 22 on lo.
    let r = Ruleset::parse(DECOY).unwrap();
    let m = r.find(&syn_in("10.0.0.9", "10.0.0.1", 8000));
    assert_eq!(m.rules.len(), 1, "{m:?}");
    let policy = &m.rules[0];
    assert!(policy.policy, "{m:?}");
    assert_eq!((policy.chain.as_str(), policy.handle), ("input", 1));
    assert!(m.certain, "the only way netfilter could have dropped it: {m:?}");
}

#[test]
fn named_and_anonymous_sets_ranges_prefixes_and_verdict_maps() {
    let r = Ruleset::parse(MANY).unwrap();
    let first = |dst: &str, dport: u16| r.find(&syn_out("10.0.0.1", dst, 40000, dport));
    // Named set of ports (reject), anonymous set with an address (reject with tcp reset).
    assert_eq!(handles(&first("10.2.0.5", 8002)), [8]);
    assert_eq!(handles(&first("127.0.0.1", 7001)), [7]);
    assert!(first("127.0.0.2", 7001).rules.iter().all(|r| r.handle != 7), "address not in the rule");
    // Named interval set of networks.
    assert_eq!(handles(&first("10.9.3.4", 1)), [9]);
    // oifname "lo": known for loopback, sure.
    let m = first("127.0.0.1", 8000);
    assert_eq!(handles(&m), [10]);
    assert!(m.certain);
    // A range; a verdict map.
    assert_eq!(handles(&first("10.2.0.5", 8008)).first(), Some(&16));
    assert!(handles(&first("10.2.0.5", 8014)).contains(&24), "{:?}", first("10.2.0.5", 8014));
    // An IPv6 rule never matches an IPv4 packet; an IPv6 packet meets it, and never the IPv4
    // rules nor `table ip filter`'s policy.
    assert!(!handles(&first("10.2.0.5", 8006)).contains(&15));
    let m = r.find(&syn_out("::1", "::1", 40000, 8006));
    assert_eq!((handles(&m), m.certain), (vec![15], true), "{m:?}");
    let m = r.find(&syn_out("::1", "::1", 40000, 7000));
    assert!(m.rules.iter().all(|x| x.family == "inet" && x.handle != 7), "{m:?}");
    let texts = rule_texts(MANY_TEXT);
    assert_eq!(texts[&("inet".into(), "filter".into(), "output".into(), 8)], "tcp dport @blocked reject");
    assert_eq!(texts[&("inet".into(), "filter".into(), "output".into(), 22)], "tcp dport 8013 drop comment \"hello\"");
}

#[test]
fn a_jump_into_a_user_chain_names_the_rule_there() {
    let r = Ruleset::parse(MANY).unwrap();
    let m = r.find(&syn_out("10.0.0.1", "10.2.0.5", 40000, 8003));
    assert_eq!(handles(&m), [25], "{m:?}");
    assert_eq!(m.rules[0].chain, "user");
    assert_eq!(m.rules[0].hook, "output", "reached through the output base chain");
    assert!(m.certain);
}

#[test]
fn what_cannot_be_decided_statically_gives_candidates_never_certainty() {
    let r = Ruleset::parse(MANY).unwrap();
    // Port 8004: `ct state new tcp dport 8004 drop` may match; `meta mark 0x1 drop` and
    // `limit rate 10/second drop` may too; nothing after them is sure for this port.
    let m = r.find(&syn_out("10.0.0.1", "10.2.0.5", 40000, 8004));
    assert!(!m.certain, "{m:?}");
    // Then `table ip filter`'s OUTPUT chain, policy drop, for every IPv4 packet.
    assert_eq!(handles(&m), [12, 18, 19, 1], "{m:?}");
    assert!(m.rules[3].policy && m.rules[3].table == "filter" && m.rules[3].family == "ip", "{m:?}");
    // Port 8011 (`tcp flags syn tcp dport 8011 drop`) comes after the mark and limit rules:
    // candidates too, the sure one last.
    let m = r.find(&syn_out("10.0.0.1", "10.2.0.5", 40000, 8011));
    assert_eq!(handles(&m), [18, 19, 20, 1], "{m:?}");
    assert!(!m.certain);
    assert!(m.rules[2].sure && !m.rules[0].sure);
}

#[test]
fn iptables_nft_rules_their_table_and_save_lines() {
    let r = Ruleset::parse(IPT).unwrap();
    assert!(r.is_iptables_table("ip", "filter"));
    assert!(!Ruleset::parse(MANY).unwrap().is_iptables_table("inet", "filter"));
    // -A OUTPUT -d 127.0.0.1/32 -p tcp -j APP, then the REJECT with a comment in APP.
    let m = r.find(&syn_out("127.0.0.1", "127.0.0.1", 40000, 8000));
    assert_eq!(handles(&m), [5], "{m:?}");
    assert!(m.certain, "a comment match always holds: {m:?}");
    let found = &m.rules[0];
    assert_eq!((found.chain.as_str(), found.position), ("APP", 0));
    let specs = iptables_specs(IPT_SAVE);
    assert_eq!(
        specs[&("filter".into(), "APP".into())][found.position],
        "-A APP -p tcp -m tcp --dport 8000 -m comment --comment \"block app\" -j REJECT --reject-with tcp-reset"
    );
    // multiport is an xtables match nft cannot show: a candidate; so is the conntrack one.
    let m = r.find(&syn_out("127.0.0.1", "10.2.0.5", 40000, 8001));
    assert_eq!(handles(&m), [6, 7], "{m:?}");
    assert!(!m.certain);
}

#[test]
fn bad_input_is_an_error_or_nothing_never_a_panic() {
    assert!(Ruleset::parse("").is_err());
    assert!(Ruleset::parse("{\"nftables\": 3}").is_err());
    let odd = r#"{"nftables": [{"chain": {"family": "inet", "table": "t", "name": "c", "hook": "output", "prio": "filter + 5", "policy": "drop"}},
        {"rule": {"family": "inet", "table": "t", "chain": "c", "handle": 2, "expr": [{"jump": {"target": "c"}}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "nowhere", "handle": 3, "expr": [{"drop": null}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "c", "handle": 4, "expr": [7, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [[1, 2]]}}}, {"drop": null}]}},
        {"future": {}}]}"#;
    let r = Ruleset::parse(odd).unwrap();
    // The chain jumps into itself: bounded; the rest of the rules are candidates at most.
    let m = r.find(&syn_out("10.0.0.1", "10.2.0.5", 40000, 8000));
    assert!(!m.certain, "{m:?}");
    assert!(m.rules.len() <= MAX_CANDIDATES);
    assert!(rule_texts("table\nchain\n# handle x\n}").is_empty());
}

#[test]
fn priorities_by_number_or_name() {
    assert_eq!(priority(&serde_json::json!(-10)), Some(-10));
    assert_eq!(priority(&serde_json::json!("filter")), Some(0));
    assert_eq!(priority(&serde_json::json!("raw")), Some(-300));
    assert_eq!(priority(&serde_json::json!("filter - 10")), Some(-10));
    assert_eq!(priority(&serde_json::json!("mangle + 1")), Some(-149));
    assert_eq!(priority(&serde_json::json!("nonsense")), None);
}
