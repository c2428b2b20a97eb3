//! Kernels without drop reasons (before 5.17, e.g. Debian 11's 5.10): what the kernel shows
//! there for each refused or dropped connect, and the verdicts it must give. Each sequence is
//! what 5.10 fired in the VM matrix: no tcp_send_reset from no socket (before 6.10), drops
//! named by their site (`in FUNCTION`) instead of a reason, or no drops at all when the drop
//! sites are unknown.

use super::rules::{classify_tcp, drop_meaning, DropMeaning, TcpFacts};
use super::test_kit::*;
use super::*;
use crate::event::Event;

fn run_with(events: &[Event], local_refusals_unseen: bool) -> Engine {
    let mut e = Engine::new(EngineOptions { local_refusals_unseen, ..EngineOptions::default() });
    for ev in events {
        e.push(ev);
    }
    e.finish();
    e
}

/// A refused connect on 5.10: the SYN freed by `site` (when drop sites are known), then the
/// reset on the client's socket.
fn refused_attempt(ts: u64, sock: u64, f: crate::event::FlowAddr, site: Option<&str>) -> Vec<Event> {
    let mut v = Vec::new();
    if let Some(site) = site {
        v.push(dropped(ts + 10_000, f, site));
    }
    v.push(rst_received(ts + 30_000, sock, &nginx(812), f));
    v.push(failed(ts + 40_000, sock, &nginx(812), f, 111, 0, true, ts));
    v
}

#[test]
fn drop_sites_mean_what_the_reasons_mean() {
    assert_eq!(drop_meaning("in nf_hook_slow"), Some(DropMeaning::Netfilter));
    assert_eq!(drop_meaning("NETFILTER_DROP"), Some(DropMeaning::Netfilter));
    assert_eq!(drop_meaning("in tcp_v4_rcv"), Some(DropMeaning::NoSocket));
    assert_eq!(drop_meaning("in tcp_v6_rcv"), Some(DropMeaning::NoSocket));
    assert_eq!(drop_meaning("NO_SOCKET"), Some(DropMeaning::NoSocket));
    assert_eq!(drop_meaning("TCP_LISTEN_OVERFLOW"), Some(DropMeaning::ListenOverflow));
    assert_eq!(drop_meaning("in ip_rcv"), None);
}

#[test]
fn dead_listener_from_the_syn_dropped_in_tcp_v4_rcv() {
    let f = flow("127.0.0.1:40001", "127.0.0.1:8000");
    let mut events = refused_attempt(S, 0x1, f, Some("in tcp_v4_rcv"));
    events.extend(refused_attempt(2 * S, 0x2, flow("127.0.0.1:40002", "127.0.0.1:8000"), Some("in tcp_v4_rcv")));
    let e = run_with(&events, false);
    let found = only(&e);
    assert_finding(&found, Cause::DeadListener, 2, &[812], None);
    assert_eq!(found.evidence[dropped_for("in tcp_v4_rcv")], 2);

    let f6 = flow("[::1]:40001", "[::1]:8000");
    let e = run_with(&refused_attempt(S, 0x1, f6, Some("in tcp_v6_rcv")), false);
    assert_finding(&only(&e), Cause::DeadListener, 1, &[812], None);
}

#[test]
fn a_tcp_v4_rcv_drop_of_the_answer_proves_nothing_about_the_target() {
    // The drop of a packet going to the client (a late answer to a socket gone) is no
    // evidence against the target's listener: a remote refusal stays remote.
    let f = flow("127.0.0.1:40001", "10.0.0.2:8000");
    let back = flow("10.0.0.2:8000", "127.0.0.1:40001");
    let mut events = vec![dropped(S + 10_000, back, "in tcp_v4_rcv")];
    events.extend(refused_attempt(S, 0x1, f, None));
    let e = run_with(&events, false);
    assert_eq!(only(&e).cause, Cause::RemoteRefused);
}

#[test]
fn firewall_reject_and_drop_from_drops_in_nf_hook_slow() {
    // reject with tcp reset: the SYN freed in nf_hook_slow, the forged reset received.
    let f = flow("127.0.0.1:40001", "127.0.0.1:8003");
    let e = run_with(&refused_attempt(S, 0x1, f, Some("in nf_hook_slow")), false);
    assert_finding(&only(&e), Cause::FirewallReject, 1, &[812], None);

    // reject with icmp: the drop, then ECONNREFUSED from the ICMP error (no icmp_send on 5.10).
    let f = flow("127.0.0.1:40002", "127.0.0.1:8004");
    let events = vec![dropped(S, f, "in nf_hook_slow"), failed(S + 40_000, 0x2, &nginx(812), f, 111, 0, false, S)];
    let e = run_with(&events, false);
    assert_finding(&only(&e), Cause::FirewallReject, 1, &[812], None);

    // drop: the SYN freed in nf_hook_slow, no retransmit traced (5.10 traces only those
    // sent), and the client gives up.
    let f = flow("127.0.0.1:40003", "127.0.0.1:8002");
    let events = vec![dropped(S, f, "in nf_hook_slow"), failed(3 * S, 0x3, &nginx(812), f, 0, 0, false, S)];
    let e = run_with(&events, false);
    let found = only(&e);
    assert_finding(&found, Cause::FirewallDrop, 1, &[812], None);
    assert_eq!(found.evidence[dropped_for("in nf_hook_slow")], 1);
}

#[test]
fn a_kernel_that_cannot_show_local_refusals_never_names_a_cause_it_did_not_see() {
    // Neither drop reasons nor drop sites: a dead listener and a reject look alike, and like
    // a remote refusal. The verdict says so.
    let mut events = refused_attempt(S, 0x1, flow("127.0.0.1:40001", "127.0.0.1:8000"), None);
    events.extend(refused_attempt(2 * S, 0x2, flow("127.0.0.1:40002", "127.0.0.1:8000"), None));
    let e = run_with(&events, true);
    let found = only(&e);
    assert_finding(&found, Cause::RefusedUnattributed, 2, &[812], None);
    assert_eq!(found.cause.as_str(), "refused_unattributed");
    // The same events where the kernel could have shown a local refusal: remote.
    assert_eq!(only(&run_with(&events, false)).cause, Cause::RemoteRefused);
    // Local evidence still wins on such a kernel (e.g. a reject with icmp seen by icmp_send).
    let facts = TcpFacts { rst_received: true, sk_err: 111, local_no_socket: true, local_refusals_unseen: true, ..TcpFacts::default() };
    assert_eq!(classify_tcp(&facts), Some((Cause::DeadListener, None)));
    let facts = TcpFacts { sk_err: 111, local_refusals_unseen: true, ..TcpFacts::default() };
    assert_eq!(classify_tcp(&facts), Some((Cause::RefusedUnattributed, None)));
}
