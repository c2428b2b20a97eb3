//! Refused attempts the kernel counted instead of sending (`TcpAttemptRepeats`): they join
//! their exemplar's finding whenever they come, and are counted lost when it has none.

use super::test_kit::*;
use super::*;
use crate::event::{Event, EventBody, FlowAddr, RecordKind, TaskInfo};
use tracer_common::EventKind;

const SOCK: u64 = 0xffff_0001;

fn exemplar_flow() -> FlowAddr {
    flow("127.0.0.1:40001", "127.0.0.1:8000")
}

/// What the kernel sends in full for the first refused connect: its reset from no socket,
/// then the attempt, then capture's mark that it is an exemplar (a count of 0).
fn exemplar(ts: u64) -> Vec<Event> {
    let f = exemplar_flow();
    vec![rst_sent_no_socket(ts + 10_000, f), failed(ts + 40_000, SOCK, &nginx(812), f, 111, 0, true, ts), repeats(ts + 40_000, SOCK, f, 0)]
}

/// `count` more attempts like the exemplar of (`sock`, `f`), the last one closed at `ts`.
fn repeats(ts: u64, sock: u64, f: FlowAddr, count: u64) -> Event {
    Event { ts_ns: ts, netns: NS, sock, task: TaskInfo::default(), body: EventBody::TcpAttemptRepeats { flow: f, count } }
}

fn push_all(e: &mut Engine, events: &[Event]) {
    for ev in events {
        e.push(ev);
    }
}

fn lost_attempts(e: &Engine) -> u64 {
    e.lost_events().get(&RecordKind(EventKind::TcpAttemptFailed)).copied().unwrap_or(0)
}

/// The dead-listener finding of one exemplar and 7 repeats, counted as 8 attempts.
fn assert_eight_refused(e: &Engine, last_ns: u64) {
    let f = only(e);
    assert_finding(&f, Cause::DeadListener, 8, &[812], None);
    assert_eq!(f.evidence[reset_sent("NO_SOCKET")], 8);
    assert_eq!(f.evidence[Evidence::ResetReceived], 8);
    assert_eq!(f.evidence[Evidence::ConnectErrno(111)], 8);
    assert_eq!(f.last_seen_ns, last_ns);
    let st = e.findings.values().next().expect("a finding");
    assert_eq!((st.resets_sent, st.netfilter_drops, st.syn_retransmits), (8, 0, 0));
    assert_eq!(lost_attempts(e), 0);
}

fn counts(records: &[AttemptRecord]) -> Vec<u64> {
    records.iter().map(|r| r.count).collect()
}

#[test]
fn repeats_before_the_exemplar_concludes_join_its_finding() {
    let mut e = engine();
    push_all(&mut e, &exemplar(S));
    e.push(&repeats(S + 20 * MS, SOCK, exemplar_flow(), 3));
    e.push(&repeats(S + 40 * MS, SOCK, exemplar_flow(), 4));
    assert!(e.findings().is_empty(), "the exemplar waits out its grace period");
    let records = attempts(&e.tick(2 * S));
    assert_eq!(counts(&records), [1, 7]);
    let held = &records[1];
    assert_eq!((held.cause, held.errno, held.sock, held.ts_ns, held.client.pid), (Cause::DeadListener, 111, SOCK, S + 40 * MS, 812));
    assert_eq!(held.evidence[reset_sent("NO_SOCKET")], 7);
    assert_eight_refused(&e, S + 40 * MS);
    e.finish();
    assert_eight_refused(&e, S + 40 * MS);
}

#[test]
fn repeats_after_the_exemplar_concluded_join_its_finding() {
    let mut e = engine();
    push_all(&mut e, &exemplar(S));
    assert_eq!(counts(&attempts(&e.tick(2 * S))), [1]);
    e.push(&repeats(2 * S + 20 * MS, SOCK, exemplar_flow(), 3));
    e.push(&repeats(2 * S + 40 * MS, SOCK, exemplar_flow(), 4));
    // The counts of one report period make one record: one line per exemplar and report.
    let records = attempts(&e.tick(3 * S));
    assert_eq!(counts(&records), [7]);
    assert_eq!((records[0].evidence[Evidence::ConnectErrno(111)], records[0].ts_ns), (7, 2 * S + 40 * MS));
    assert_eight_refused(&e, 2 * S + 40 * MS);
    // The next period's come in a record of their own.
    e.push(&repeats(3 * S + 20 * MS, SOCK, exemplar_flow(), 2));
    assert_eq!(counts(&attempts(&e.tick(4 * S))), [2]);
    assert_eq!(only(&e).count, 10);
}

#[test]
fn finish_applies_the_repeats_of_the_exemplars_it_concludes() {
    let mut e = engine();
    push_all(&mut e, &exemplar(S));
    e.push(&repeats(S + 20 * MS, SOCK, exemplar_flow(), 7));
    assert_eq!(counts(&attempts(&e.finish())), [1, 7]);
    assert_eight_refused(&e, S + 20 * MS);
}

#[test]
fn repeats_of_an_unknown_exemplar_are_lost_after_the_hold() {
    let mut e = engine();
    e.push(&repeats(S, 0x9, exemplar_flow(), 5));
    e.push(&repeats(S + 20 * MS, 0x9, exemplar_flow(), 2));
    assert!(e.tick(5 * S).is_empty());
    assert_eq!(lost_attempts(&e), 0, "its exemplar may still come");
    assert!(e.tick(12 * S).is_empty());
    assert_eq!(lost_attempts(&e), 7);
    assert!(e.findings().is_empty());
    e.finish();
    assert_eq!(lost_attempts(&e), 7, "lost once");
}

#[test]
fn repeats_still_held_at_finish_are_lost() {
    let mut e = engine();
    e.push(&repeats(S, 0x9, exemplar_flow(), 5));
    assert!(e.finish().is_empty());
    assert!(e.findings().is_empty());
    assert_eq!(lost_attempts(&e), 5);
}

#[test]
fn repeats_of_an_exemplar_concluded_without_a_finding_are_lost() {
    let f = exemplar_flow();
    let mut e = engine();
    // Closed by its owner, nothing refused it: no finding (and no repeats should follow).
    e.push(&failed(S, SOCK, &nginx(812), f, 0, 0, false, S - MS));
    e.push(&repeats(S + 20 * MS, SOCK, f, 3));
    e.tick(2 * S);
    assert_eq!(lost_attempts(&e), 3);
    e.push(&repeats(2 * S + 20 * MS, SOCK, f, 4));
    assert_eq!(lost_attempts(&e), 7, "known to have no finding: lost at once");
    e.finish();
    assert!(e.findings().is_empty());
    assert_eq!(lost_attempts(&e), 7);
}

#[test]
fn held_repeats_are_bounded_and_the_oldest_pushed_out_are_lost() {
    let mut e = Engine::new(EngineOptions { max_tracked: 2, ..EngineOptions::default() });
    for i in 0..5u64 {
        e.push(&repeats(S + i * MS, 0x10 + i, exemplar_flow(), 10 + i));
    }
    assert_eq!(lost_attempts(&e), 10 + 11 + 12);
    assert_eq!(e.buffered_evidence(), 2);
    e.finish();
    assert_eq!(lost_attempts(&e), (10..15).sum::<u64>());
}

#[test]
fn repeats_wait_for_a_newer_attempt_of_a_reused_socket_and_ports() {
    let mut e = engine();
    push_all(&mut e, &exemplar(S));
    e.tick(2 * S);
    // The same socket and ports again, closed by its owner: its repeats are not the first's.
    e.push(&failed(3 * S, SOCK, &nginx(812), exemplar_flow(), 0, 0, false, 3 * S - MS));
    e.push(&repeats(3 * S + 20 * MS, SOCK, exemplar_flow(), 6));
    e.finish();
    assert_finding(&only(&e), Cause::DeadListener, 1, &[812], None);
    assert_eq!(lost_attempts(&e), 6);
}

#[test]
fn an_exemplar_in_use_is_remembered_and_an_idle_one_forgotten() {
    let mut e = Engine::new(EngineOptions { evidence_ttl_ns: 10 * S, ..EngineOptions::default() });
    push_all(&mut e, &exemplar(S));
    e.tick(2 * S);
    e.push(&repeats(5 * S, SOCK, exemplar_flow(), 3));
    e.tick(14 * S);
    e.push(&repeats(14 * S, SOCK, exemplar_flow(), 4));
    assert_eq!(only(&e).count, 8, "used within the TTL: still remembered");
    e.tick(30 * S);
    e.push(&repeats(31 * S, SOCK, exemplar_flow(), 5));
    e.tick(45 * S);
    assert_eq!(only(&e).count, 8);
    assert_eq!(lost_attempts(&e), 5, "idle past the TTL: forgotten, its late repeats lost");
}

/// Only an attempt capture marked as an exemplar (a count of 0 after it) is remembered when it
/// concludes: a refused attempt the kernel sent alone costs no copy of its record, and a count
/// that names it later (none should) is lost, not added to a finding.
#[test]
fn an_attempt_not_marked_as_an_exemplar_is_not_remembered() {
    let f = exemplar_flow();
    let mut e = engine();
    push_all(&mut e, &exemplar(S)[..2]);
    assert_eq!(counts(&attempts(&e.tick(2 * S))), [1]);
    e.push(&repeats(2 * S + 20 * MS, SOCK, f, 3));
    assert!(attempts(&e.tick(3 * S)).is_empty());
    assert_finding(&only(&e), Cause::DeadListener, 1, &[812], None);
    assert_eq!(lost_attempts(&e), 3);
}
