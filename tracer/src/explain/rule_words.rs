//! The words of a firewall finding's rule: the one line that names it, and the fix that names
//! the exact command removing it (the commands change the firewall, and say so).

use crate::event::NamedRule;

use super::cause_words::shell_word;
use super::output::RuleFacts;

/// `inet filter output (handle 4): tcp dport 8000 counter drop`; with iptables-nft, the
/// iptables line after it.
pub fn rule_line(r: &NamedRule) -> String {
    let mut s = format!("{} {} {} (handle {}): {}", r.family, r.table, r.chain, r.handle, r.text);
    if let Some(ipt) = &r.iptables {
        s.push_str(&format!(" [iptables -t {} {}]", ipt.table, ipt.spec));
    }
    s
}

/// The command prefix that runs in the namespace of the rule.
fn enter(facts: &RuleFacts) -> String {
    match (&facts.netns_name, facts.enter_pid) {
        (Some(name), _) => format!("sudo ip netns exec {} ", shell_word(name)),
        (None, Some(pid)) => format!("sudo nsenter --net=/proc/{pid}/ns/net "),
        (None, None) => "sudo ".to_string(),
    }
}

/// `iptables` or `ip6tables` for a table's family.
fn iptables_command(family: &str) -> &'static str {
    if family == "ip6" {
        "ip6tables"
    } else {
        "iptables"
    }
}

/// The command that takes the rule out of the way: its deletion, or for a policy an accept
/// for the port added to its chain.
fn removal(facts: &RuleFacts, r: &NamedRule, port: &str) -> String {
    let at = enter(facts);
    let (family, table, chain) = (shell_word(&r.family), shell_word(&r.table), shell_word(&r.chain));
    match (&r.iptables, r.policy) {
        (Some(ipt), false) => {
            let spec = ipt.spec.strip_prefix("-A ").unwrap_or(&ipt.spec);
            format!("{at}{} -t {} -D {spec}", iptables_command(&r.family), shell_word(&ipt.table))
        }
        (Some(ipt), true) => {
            format!("{at}{} -t {} -I {} -p tcp --dport {port} -j ACCEPT", iptables_command(&r.family), shell_word(&ipt.table), shell_word(&ipt.chain))
        }
        (None, false) => format!("{at}nft delete rule {family} {table} {chain} handle {}", r.handle),
        (None, true) => format!("{at}nft insert rule {family} {table} {chain} tcp dport {port} accept"),
    }
}

/// Where the rule is, in words: `in this host's namespace` or `in network namespace N`.
fn place(facts: &RuleFacts) -> String {
    match (&facts.netns_name, facts.enter_pid) {
        (Some(name), _) => format!("in network namespace {} (`ip netns` name {})", facts.netns, shell_word(name)),
        (None, Some(_)) => format!("in network namespace {}", facts.netns),
        (None, None) => "in tracer's network namespace".to_string(),
    }
}

/// The first part of a firewall finding's fix when a rule was named (`verb`: `drops` or
/// `rejects`, the finding's cause); None without one.
pub fn fix(facts: Option<&RuleFacts>, port: &str, verb: &str) -> Option<String> {
    let facts = facts?;
    let first = facts.rules.first()?;
    let what = if first.policy { "The policy of chain" } else { "The rule" };
    let changes = "this changes the firewall; make the change where the rules are managed, such as \
                   firewalld, Docker, kube-proxy or /etc/nftables.conf, or it comes back";
    if facts.certain {
        let how = if first.policy {
            "Let the upstream's port through before the policy applies"
        } else {
            "Remove it"
        };
        return Some(format!(
            "{what} `{}` {} {verb} the packets to the upstream. {how} with `{}` ({changes}), \
             or allow only Nginx's traffic through.",
            rule_line(first),
            place(facts),
            removal(facts, first, port)
        ));
    }
    let list: Vec<String> = facts.rules.iter().map(|r| format!("`{}`", rule_line(r))).collect();
    Some(format!(
        "tracer cannot tell from the ruleset alone which rule {} {verb} the packets (some matches, such as \
         connection state, marks, rate limits or iptables extensions, depend on more than the packet's \
         addresses and ports); the candidates, in the order netfilter meets them: {}. \
         Watch their counters (`{}nft -a list ruleset`) while the failures happen, then remove the one \
         that matches, e.g. `{}` for the first ({changes}).",
        place(facts),
        list.join(", "),
        enter(facts),
        removal(facts, first, port)
    ))
}

/// A rule of `inet filter output` for tests.
#[cfg(test)]
pub(crate) fn test_rule(handle: u64, text: &str) -> NamedRule {
    NamedRule {
        family: "inet".into(),
        table: "filter".into(),
        chain: "output".into(),
        hook: "output".into(),
        handle,
        text: text.into(),
        policy: false,
        iptables: None,
    }
}

#[cfg(test)]
mod tests {
    use super::test_rule as rule;
    use super::*;
    use crate::event::IptablesRule;

    #[test]
    fn a_certain_rule_is_named_with_its_deletion() {
        let facts = RuleFacts { netns: 4026531840, rules: vec![rule(4, "tcp dport 8000 counter drop")], certain: true, enter_pid: None, netns_name: None };
        assert_eq!(rule_line(&facts.rules[0]), "inet filter output (handle 4): tcp dport 8000 counter drop");
        let fix = super::fix(Some(&facts), "8000", "drops").unwrap();
        assert!(fix.contains("`sudo nft delete rule inet filter output handle 4`"), "{fix}");
        assert!(fix.contains("changes the firewall"), "{fix}");
        let other = RuleFacts { enter_pid: Some(77), netns: 5, ..facts };
        let fix = super::fix(Some(&other), "8000", "drops").unwrap();
        assert!(fix.contains("`sudo nsenter --net=/proc/77/ns/net nft delete rule inet filter output handle 4`"), "{fix}");
        assert!(fix.contains("network namespace 5"), "{fix}");
        let named = RuleFacts { netns_name: Some("blue net".into()), ..other };
        let fix = super::fix(Some(&named), "8000", "drops").unwrap();
        assert!(fix.contains("`sudo ip netns exec 'blue net' nft delete rule inet filter output handle 4`"), "{fix}");
    }

    #[test]
    fn iptables_rules_policies_and_candidates() {
        let mut ipt = rule(5, "tcp dport 8000 counter reject with tcp reset");
        ipt.family = "ip".into();
        ipt.chain = "APP".into();
        let spec = "-A APP -p tcp -m tcp --dport 8000 -m comment --comment \"block app\" -j REJECT --reject-with tcp-reset";
        ipt.iptables = Some(IptablesRule { table: "filter".into(), chain: "APP".into(), spec: spec.into() });
        let facts = RuleFacts { netns: 1, rules: vec![ipt.clone()], certain: true, enter_pid: None, netns_name: None };
        let fix = super::fix(Some(&facts), "8000", "drops").unwrap();
        assert!(fix.contains("`sudo iptables -t filter -D APP -p tcp -m tcp --dport 8000 -m comment --comment \"block app\" -j REJECT --reject-with tcp-reset`"), "{fix}");
        assert!(rule_line(&ipt).contains("[iptables -t filter -A APP"), "{}", rule_line(&ipt));

        let mut policy = rule(1, "policy drop");
        policy.policy = true;
        let facts = RuleFacts { netns: 1, rules: vec![policy.clone()], certain: true, enter_pid: None, netns_name: None };
        let fix = super::fix(Some(&facts), "8000", "drops").unwrap();
        assert!(fix.starts_with("The policy of chain"), "{fix}");
        assert!(fix.contains("`sudo nft insert rule inet filter output tcp dport 8000 accept`"), "{fix}");

        let facts = RuleFacts { netns: 1, rules: vec![rule(12, "ct state new tcp dport 8000 drop"), rule(13, "tcp dport 8000 drop")], certain: false, enter_pid: None, netns_name: None };
        let fix = super::fix(Some(&facts), "8000", "drops").unwrap();
        assert!(fix.contains("cannot tell") && fix.contains("candidates"), "{fix}");
        assert!(fix.contains("(handle 12)") && fix.contains("(handle 13)"), "{fix}");
        assert!(super::fix(None, "8000", "drops").is_none());
    }

    #[test]
    fn outside_names_are_shell_words() {
        let mut odd = rule(3, "drop");
        odd.chain = "a b;rm".into();
        let facts = RuleFacts { netns: 1, rules: vec![odd], certain: true, enter_pid: None, netns_name: None };
        let fix = super::fix(Some(&facts), "8000", "drops").unwrap();
        assert!(fix.contains("nft delete rule inet filter 'a b;rm' handle 3"), "{fix}");
    }
}
