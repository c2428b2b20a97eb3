//! The words for each kind of evidence: the keys of the JSON `evidence` object and the terms
//! of the text report's `proof:` line. The keys are part of the JSON contract (README):
//! never change one.

use std::collections::BTreeMap;

use crate::explain::rules::errno_name;
use crate::explain::{Evidence, EvidenceCounts};

/// `tcp:tcp_send_reset NO_SOCKET`, `connect() ECONNREFUSED`, `ListenOverflows` ...: the
/// hook that fired and what it saw, or the engine's own fact.
pub fn label(e: &Evidence) -> String {
    let to_client = |yes: bool| if yes { " (to client)" } else { "" };
    match e {
        Evidence::ResetSent { reason, to_client: c } => format!("tcp:tcp_send_reset {reason}{}", to_client(*c)),
        Evidence::Dropped { reason, to_client: c } => format!("skb:kfree_skb {reason}{}", to_client(*c)),
        Evidence::SynOverflow => "tcp_conn_request: queue full".into(),
        Evidence::ResetReceived => "tcp:tcp_receive_reset".into(),
        Evidence::SynRetransmits => "tcp:tcp_retransmit_skb SYN_SENT".into(),
        Evidence::KernelQueueFull => "accept queue full (read in kernel)".into(),
        Evidence::ConnectErrno(errno) => format!("connect() {}", errno_name(*errno)),
        Evidence::IcmpSent { icmp_type, code } => format!("icmp:icmp_send {icmp_type}/{code}"),
        Evidence::ListenOverflows => "ListenOverflows".into(),
        Evidence::SockDiagQueueFull => "attempts while sock_diag saw the queue full".into(),
        Evidence::LiveListener => "attempts to a live local listener".into(),
        Evidence::DelayedThenConnected => "delayed then connected".into(),
        Evidence::PendingAtEnd => "pending at end".into(),
        Evidence::PendingNoCloseSeen => "pending, no close seen".into(),
        Evidence::PendingWhenEvicted => "pending when dropped from tracking (memory bound)".into(),
        Evidence::UnixPeerQueueFull => "unix_stream_connect: peer queue full".into(),
        Evidence::FinBeforeResponse => "upstream FIN before any response byte".into(),
        Evidence::ResetOnConnection => "reset on established connection".into(),
        Evidence::ResetAfterUpstreamFin => "reset after the upstream's FIN (written on a closed connection)".into(),
        Evidence::ClosedByDyingProcess => "upstream socket closed by its dying process".into(),
        Evidence::FatalSignal(sig) => format!("signal:signal_generate {}", crate::explain::signal_name(*sig)),
        Evidence::OomKill => "oom:mark_victim".into(),
        Evidence::UpstreamAbort => "upstream closed with a reset".into(),
        Evidence::UpstreamFinBeforeResponse => "upstream closed (FIN) before any response byte".into(),
        Evidence::NginxClosedWithoutResponse => "nginx closed before any response byte".into(),
        Evidence::NeverAccepted => "still in the accept queue when nginx gave up".into(),
        Evidence::NoLocalPort => "connect() EADDRNOTAVAIL (no free local port)".into(),
    }
}

/// The counts by label, in label order (kinds that share a label add up).
pub fn labelled(c: &EvidenceCounts) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (e, n) in c.iter() {
        *out.entry(label(e)).or_insert(0) += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON keys scripts read (README): one per kind, never changed.
    #[test]
    fn labels_are_the_json_contract() {
        let reset = |r: &str, c| Evidence::ResetSent { reason: r.into(), to_client: c };
        let drop = |r: &str, c| Evidence::Dropped { reason: r.into(), to_client: c };
        let cases = [
            (reset("NO_SOCKET", false), "tcp:tcp_send_reset NO_SOCKET"),
            (reset("NO_SOCKET", true), "tcp:tcp_send_reset NO_SOCKET (to client)"),
            (drop("NETFILTER_DROP", false), "skb:kfree_skb NETFILTER_DROP"),
            (drop("NO_SOCKET", true), "skb:kfree_skb NO_SOCKET (to client)"),
            (Evidence::SynOverflow, "tcp_conn_request: queue full"),
            (Evidence::ResetReceived, "tcp:tcp_receive_reset"),
            (Evidence::SynRetransmits, "tcp:tcp_retransmit_skb SYN_SENT"),
            (Evidence::KernelQueueFull, "accept queue full (read in kernel)"),
            (Evidence::ConnectErrno(111), "connect() ECONNREFUSED"),
            (Evidence::IcmpSent { icmp_type: 3, code: 3 }, "icmp:icmp_send 3/3"),
            (Evidence::ListenOverflows, "ListenOverflows"),
            (Evidence::SockDiagQueueFull, "attempts while sock_diag saw the queue full"),
            (Evidence::LiveListener, "attempts to a live local listener"),
            (Evidence::DelayedThenConnected, "delayed then connected"),
            (Evidence::PendingAtEnd, "pending at end"),
            (Evidence::PendingNoCloseSeen, "pending, no close seen"),
            (Evidence::PendingWhenEvicted, "pending when dropped from tracking (memory bound)"),
            (Evidence::UnixPeerQueueFull, "unix_stream_connect: peer queue full"),
        ];
        for (e, want) in cases {
            assert_eq!(label(&e), want);
        }
    }

    #[test]
    fn labelled_counts_are_in_label_order() {
        let c: EvidenceCounts = [(Evidence::ResetReceived, 3), (Evidence::ConnectErrno(111), 2), (Evidence::ListenOverflows, 1)]
            .into_iter()
            .collect();
        let got: Vec<(String, u64)> = labelled(&c).into_iter().collect();
        assert_eq!(
            got,
            [("ListenOverflows".to_string(), 1), ("connect() ECONNREFUSED".to_string(), 2), ("tcp:tcp_receive_reset".to_string(), 3)]
        );
    }
}
