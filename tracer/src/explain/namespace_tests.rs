//! Across network namespaces and NAT, replayed: Nginx in one namespace, the upstream in
//! another (a bridge between them), and a Service address translated by DNAT.

use super::test_kit::*;
use super::Cause;
use crate::event::{Event, EventBody};

/// The app's namespace (Nginx's is test_kit's NS).
const APP_NS: u32 = 4026532999;

fn in_netns(mut ev: Event, netns: u32) -> Event {
    ev.netns = netns;
    ev
}

fn app_addresses(ts: u64) -> Event {
    in_netns(packet(ts, EventBody::NetnsAddresses { addrs: vec!["127.0.0.1".parse().unwrap(), "10.232.0.2".parse().unwrap()] }), APP_NS)
}

#[test]
fn a_listener_in_another_namespace_is_named_with_its_story() {
    let gunicorn = task(700, "gunicorn");
    let f = flow("10.232.0.1:40000", "10.232.0.2:8000");
    let mut events = vec![
        app_addresses(S),
        in_netns(listen_start(2 * S, &gunicorn, "0.0.0.0:8000"), APP_NS),
        in_netns(listen_stop(5 * S, &gunicorn, "0.0.0.0:8000"), APP_NS),
    ];
    events.extend(dead_listener_attempt(6 * S, 0xc1, &nginx(812), f));
    let (e, _) = run(&events);
    let finding = only(&e);
    assert_finding(&finding, Cause::DeadListener, 1, &[812], Some(700));
    assert_eq!(finding.netns, NS, "the finding stays with Nginx's namespace");
    assert!(!finding.timeline.is_empty(), "the listener's story: {:?}", finding.timeline);
    assert_eq!(finding.backend, None);
}

#[test]
fn without_the_address_book_the_other_namespace_is_not_guessed() {
    // The same events, but tracer never learnt which namespace holds 10.232.0.2: no listener
    // is named rather than a wrong one.
    let gunicorn = task(700, "gunicorn");
    let f = flow("10.232.0.1:40000", "10.232.0.2:8000");
    let mut events = vec![
        in_netns(listen_start(2 * S, &gunicorn, "0.0.0.0:8000"), APP_NS),
        in_netns(listen_stop(5 * S, &gunicorn, "0.0.0.0:8000"), APP_NS),
    ];
    events.extend(dead_listener_attempt(6 * S, 0xc1, &nginx(812), f));
    let (e, _) = run(&events);
    let finding = only(&e);
    assert_eq!(finding.cause, Cause::DeadListener);
    assert_eq!(finding.listener, None);
}

#[test]
fn a_service_address_translated_to_a_dead_backend_is_a_dead_listener_behind_nat() {
    let dialled = flow("10.232.0.1:40000", "10.96.0.10:80");
    let translated = flow("10.232.0.1:40000", "10.232.0.2:8405");
    let events = vec![
        app_addresses(S),
        // The backend's namespace answers the translated SYN: nothing listens there.
        in_netns(rst_sent_no_socket(6 * S + 10_000, translated), APP_NS),
        rst_received(6 * S + 30_000, 0xc1, &nginx(812), dialled),
        failed(6 * S + 40_000, 0xc1, &nginx(812), dialled, 111, 0, true, 6 * S),
        // conntrack in Nginx's namespace, asked right after the failure.
        packet(6 * S + 50_000, EventBody::NatMapping { flow: dialled, backend: addr("10.232.0.2:8405") }),
    ];
    let (e, _) = run(&events);
    let finding = only(&e);
    assert_finding(&finding, Cause::DeadListener, 1, &[812], None);
    assert_eq!(finding.target.to_string(), "10.96.0.10:80");
    assert_eq!(finding.backend, Some(addr("10.232.0.2:8405")));
}

#[test]
fn the_same_refusal_without_the_nat_mapping_stays_a_remote_refusal() {
    let dialled = flow("10.232.0.1:40000", "10.96.0.10:80");
    let translated = flow("10.232.0.1:40000", "10.232.0.2:8405");
    let events = vec![
        in_netns(rst_sent_no_socket(6 * S + 10_000, translated), APP_NS),
        rst_received(6 * S + 30_000, 0xc1, &nginx(812), dialled),
        failed(6 * S + 40_000, 0xc1, &nginx(812), dialled, 111, 0, true, 6 * S),
    ];
    let (e, _) = run(&events);
    assert_eq!(only(&e).cause, Cause::RemoteRefused);
}

#[test]
fn an_address_held_by_two_namespaces_names_neither() {
    let gunicorn = task(700, "gunicorn");
    let other = 4026533000;
    let f = flow("10.232.0.1:40000", "10.232.0.2:8000");
    let mut events = vec![
        app_addresses(S),
        in_netns(packet(S, EventBody::NetnsAddresses { addrs: vec!["10.232.0.2".parse().unwrap()] }), other),
        in_netns(listen_start(2 * S, &gunicorn, "0.0.0.0:8000"), APP_NS),
        in_netns(listen_stop(5 * S, &gunicorn, "0.0.0.0:8000"), APP_NS),
    ];
    events.extend(dead_listener_attempt(6 * S, 0xc1, &nginx(812), f));
    let (e, _) = run(&events);
    assert_eq!(only(&e).listener, None);
}

#[test]
fn a_connect_given_up_at_a_full_queue_in_another_namespace_is_backlog_full() {
    // Nginx's connect timeout (1 s) ends the attempt before the first SYN retransmit; the
    // app's namespace counted listen overflows meanwhile, and Gunicorn listens there.
    let gunicorn = task(700, "gunicorn");
    let f = flow("10.232.0.1:40000", "10.232.0.2:8000");
    let events = vec![
        app_addresses(S),
        in_netns(listen_start(2 * S, &gunicorn, "0.0.0.0:8000"), APP_NS),
        in_netns(packet(5 * S + 500 * MS, EventBody::ListenOverflows { delta: 3 }), APP_NS),
        failed(6 * S, 0xc1, &nginx(812), f, 0, 0, false, 5 * S),
    ];
    let (e, _) = run(&events);
    let finding = only(&e);
    assert_finding(&finding, Cause::BacklogFull, 1, &[812], Some(700));
}

#[test]
fn a_client_giving_up_early_with_no_overflow_is_no_failure() {
    let gunicorn = task(700, "gunicorn");
    let f = flow("10.232.0.1:40000", "10.232.0.2:8000");
    let events = vec![
        app_addresses(S),
        in_netns(listen_start(2 * S, &gunicorn, "0.0.0.0:8000"), APP_NS),
        failed(6 * S, 0xc1, &nginx(812), f, 0, 0, false, 5 * S),
    ];
    let (e, _) = run(&events);
    assert!(e.findings().is_empty());
}

#[test]
fn the_serving_namespace_rule() {
    use crate::event::serving_namespace;
    let ip = "10.232.0.2".parse().unwrap();
    assert_eq!(serving_namespace(NS, "127.0.0.1".parse().unwrap(), []), Some(NS));
    assert_eq!(serving_namespace(NS, ip, []), None);
    assert_eq!(serving_namespace(NS, ip, [APP_NS]), Some(APP_NS));
    assert_eq!(serving_namespace(NS, ip, [APP_NS, NS]), Some(NS));
    assert_eq!(serving_namespace(NS, ip, [NS, APP_NS]), Some(NS));
    assert_eq!(serving_namespace(NS, ip, [APP_NS, 4026533000]), None);
}
