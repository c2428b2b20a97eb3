//! Enricher tests. Those that need root (sock_diag of other namespaces, `ip netns`) skip with
//! a printed reason otherwise.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

fn is_root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        note!("skipped {test}: needs root");
    }
    root
}

fn set_backlog(fd: RawFd, backlog: i32) {
    // Calling listen() again on a listening socket only updates its backlog.
    // SAFETY: fd is an open listening socket owned by the caller.
    assert_eq!(unsafe { libc::listen(fd, backlog) }, 0, "listen: {}", std::io::Error::last_os_error());
}

/// A non-blocking connect to an IPv4 address (returns at once; the handshake goes on).
fn start_connect(addr: SocketAddr) -> OwnedFd {
    let SocketAddr::V4(v4) = addr else { panic!("IPv4 only") };
    // SAFETY: plain socket calls on a fresh fd; sockaddr_in fully initialized.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        assert!(fd >= 0);
        let owned = OwnedFd::from_raw_fd(fd);
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let err = std::io::Error::last_os_error();
        assert!(rc == 0 || err.raw_os_error() == Some(libc::EINPROGRESS), "connect: {err}");
        owned
    }
}

/// A fresh directory for socket files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tracer-enrich-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn listener_seen<'a>(events: &'a [Event], netns: u32, target: &Target) -> Option<&'a Event> {
    events.iter().find(|e| {
        e.netns == netns && matches!(&e.body, EventBody::ListenerSeen { target: t, .. } if t == target)
    })
}

fn queue_of(event: &Event) -> Queue {
    match &event.body {
        EventBody::ListenerSeen { queue, .. } => *queue,
        other => panic!("not a ListenerSeen: {other:?}"),
    }
}

#[test]
fn monotonic_clock_moves_forward() {
    let a = monotonic_ns();
    std::thread::sleep(Duration::from_millis(2));
    let b = monotonic_ns();
    assert!(a > 0 && b >= a + 1_000_000, "{a} {b}");
}

#[test]
fn reads_netstat_counters() {
    let text = "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops\n\
                TcpExt: 0 0 17 20\n\
                IpExt: InNoRoutes ListenOverflows\n\
                IpExt: 1 99\n";
    assert_eq!(netstat_value(text, "TcpExt", "ListenOverflows"), Some(17));
    assert_eq!(netstat_value(text, "TcpExt", "ListenDrops"), Some(20));
    assert_eq!(netstat_value(text, "IpExt", "ListenOverflows"), Some(99));
    assert_eq!(netstat_value(text, "TcpExt", "Nope"), None);
    assert_eq!(netstat_value("TcpExt: ListenOverflows\n", "TcpExt", "ListenOverflows"), None);
    let own = fs::read_to_string("/proc/self/net/netstat").unwrap();
    assert!(netstat_value(&own, "TcpExt", "ListenOverflows").is_some());
}

#[test]
fn snapshot_finds_own_tcp_and_unix_listeners() {
    if !is_root("snapshot_finds_own_tcp_and_unix_listeners") {
        return;
    }
    let own_netns = netns_inode_of_pid(std::process::id()).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    set_backlog(tcp.as_raw_fd(), 7);
    let dir = TempDir::new("snapshot");
    let path = dir.0.join("app.sock");
    let unix = UnixListener::bind(&path).unwrap();
    set_backlog(unix.as_raw_fd(), 7);

    let mut enricher = Enricher::new();
    let events = enricher.snapshot_listeners();
    let tcp_target = Target::Tcp(tcp.local_addr().unwrap());
    let unix_target = Target::Unix(path.to_str().unwrap().to_string());
    for target in [&tcp_target, &unix_target] {
        let e = listener_seen(&events, own_netns, target)
            .unwrap_or_else(|| panic!("{target} not in {events:#?}"));
        assert_eq!(e.task.pid, std::process::id(), "{e:?}");
        assert!(!e.task.comm.is_empty());
        assert_eq!(queue_of(e), Queue { len: 0, max: 7 }, "{target}");
        assert!(e.ts_ns > 0);
    }

    // The same listeners, asked for one at a time.
    let e = enricher.probe_target(own_netns, &unix_target).expect("unix listener");
    assert_eq!((e.task.pid, queue_of(&e).max), (std::process::id(), 7));
    let port = tcp.local_addr().unwrap().port();
    let e = enricher.probe_target(own_netns, &tcp_target).expect("tcp listener");
    assert_eq!(
        e.body,
        EventBody::ListenerSeen { target: tcp_target.clone(), queue: Queue { len: 0, max: 7 } }
    );
    // 127.0.0.2 is not the address the listener is bound to.
    let other = Target::Tcp(SocketAddr::from(([127, 0, 0, 2], port)));
    assert!(enricher.probe_target(own_netns, &other).is_none());
    assert!(enricher.probe_target(own_netns, &Target::Unix("/nonexistent/x.sock".into())).is_none());
    assert!(enricher.probe_target(1, &tcp_target).is_none(), "no namespace has inode 1");
}

#[test]
fn full_accept_queue_and_overflows_are_measured() {
    if !is_root("full_accept_queue_and_overflows_are_measured") {
        return;
    }
    let own_netns = netns_inode_of_pid(std::process::id()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    set_backlog(listener.as_raw_fd(), 1);
    let addr = listener.local_addr().unwrap();
    let wildcard_listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let wildcard_port = wildcard_listener.local_addr().unwrap().port();

    let mut enricher = Enricher::new();
    assert!(enricher.poll_overflows().is_empty(), "the first call only primes");

    // Never accepted: two fit (the kernel refuses only when len > max), the third SYN is
    // dropped and counted in ListenOverflows.
    let _clients: Vec<OwnedFd> = (0..3).map(|_| start_connect(addr)).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut overflow_delta = 0;
    let mut queue = None;
    while Instant::now() < deadline {
        let event = enricher.probe_target(own_netns, &Target::Tcp(addr)).expect("listener");
        assert_eq!(event.task.pid, std::process::id());
        queue = Some(queue_of(&event));
        overflow_delta += enricher
            .poll_overflows()
            .iter()
            .filter(|e| e.netns == own_netns)
            .map(|e| match e.body {
                EventBody::ListenOverflows { delta } => delta,
                _ => 0,
            })
            .sum::<u64>();
        if queue.is_some_and(|q| q.is_full()) && overflow_delta > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let queue = queue.unwrap();
    assert_eq!(queue.max, 1);
    assert!(queue.len >= queue.max, "{queue:?}");
    assert!(overflow_delta > 0, "ListenOverflows did not rise");

    // A wildcard listener serves a loopback target.
    let target = Target::Tcp(SocketAddr::from(([127, 0, 0, 1], wildcard_port)));
    let event = enricher.probe_target(own_netns, &target).expect("wildcard listener");
    assert_eq!(event.task.pid, std::process::id());
}

/// Removes the test namespace (and kills its listener) however the test ends.
struct NetnsGuard {
    name: &'static str,
    child: Option<Child>,
}

impl NetnsGuard {
    /// A new namespace `name` with loopback up (a leftover of an earlier run deleted first).
    fn fresh(name: &'static str) -> NetnsGuard {
        let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
        assert!(ip(&["netns", "add", name]), "ip netns add {name}");
        let guard = NetnsGuard { name, child: None };
        assert!(ip(&["netns", "exec", name, "ip", "link", "set", "lo", "up"]));
        guard
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", self.name]).stderr(Stdio::null()).status();
    }
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).status().map(|s| s.success()).unwrap_or(false)
}

#[test]
fn finds_listener_in_another_namespace() {
    if !is_root("finds_listener_in_another_namespace") {
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        note!("skipped finds_listener_in_another_namespace: no `ip` command (iproute2)");
        return;
    }
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| Command::new(p).arg("-V").output().is_ok_and(|o| o.status.success()));
    let Some(python) = python else {
        note!("skipped finds_listener_in_another_namespace: no python3");
        return;
    };
    const NAME: &str = "tracer-enrich-test";
    let mut guard = NetnsGuard::fresh(NAME);

    // `ip netns exec` execs the command, so the child's pid is python's.
    let script = "import socket,time\n\
                  s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(5)\n\
                  print(s.getsockname()[1], flush=True)\n\
                  time.sleep(120)\n";
    let child = Command::new("ip")
        .args(["netns", "exec", NAME, python, "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn ip netns exec");
    let pid = child.id();
    let child = guard.child.insert(child);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("python printed {line:?}"));

    let netns = netns_inode_of_pid(pid).expect("python's netns");
    assert_ne!(Some(netns), netns_inode_of_pid(std::process::id()));
    let target = Target::Tcp(SocketAddr::from(([127, 0, 0, 1], port)));
    let mut enricher = Enricher::new();
    let event = enricher.probe_target(netns, &target).expect("listener in the test namespace");
    assert_eq!(event.netns, netns);
    assert_eq!(event.task.pid, pid, "{event:?}");
    assert!(event.task.comm.starts_with("python"), "{event:?}");
    assert_eq!(queue_of(&event), Queue { len: 0, max: 5 });

    let events = enricher.snapshot_listeners();
    let seen = listener_seen(&events, netns, &target).expect("snapshot covers the test namespace");
    assert_eq!(seen.task.pid, pid);
    drop(guard);
    assert!(!fs::read_dir("/run/netns").map(|d| d.flatten().any(|e| e.file_name() == NAME)).unwrap_or(false));
}

#[test]
fn measures_ports_towards_a_target_in_own_namespace() {
    if !is_root("measures_ports_towards_a_target_in_own_namespace") {
        return;
    }
    let own_netns = netns_inode_of_pid(std::process::id()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    // Three connections towards the target (blocking connects: established on return); the
    // listener's accepted ends point the other way and are not counted.
    let clients: Vec<std::net::TcpStream> = (0..3).map(|_| std::net::TcpStream::connect(target).unwrap()).collect();
    let _accepted = listener.accept().unwrap();
    let mut enricher = Enricher::new();
    let event = enricher.ports_in_use(own_netns, target, 42).expect("measured");
    let own_range = after_connect::parse_port_range(&fs::read_to_string(PORT_RANGE_PATH).unwrap()).unwrap();
    let held: BTreeMap<String, u64> = [("ESTABLISHED".to_string(), 3)].into_iter().collect();
    assert_eq!((event.ts_ns, event.netns), (42, own_netns));
    assert_eq!(event.body, EventBody::PortsInUse { target, range: own_range, by_state: held });
    drop(clients);
    assert!(enricher.ports_in_use(1, target, 42).is_none(), "no namespace has inode 1");
}

#[test]
fn reads_the_port_range_from_inside_another_namespace() {
    if !is_root("reads_the_port_range_from_inside_another_namespace") {
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        note!("skipped reads_the_port_range_from_inside_another_namespace: no `ip` command (iproute2)");
        return;
    }
    let Some(python) = ["/usr/bin/python3", "python3"].into_iter().find(|p| Command::new(p).arg("-V").output().is_ok_and(|o| o.status.success())) else {
        note!("skipped reads_the_port_range_from_inside_another_namespace: no python3");
        return;
    };
    const NAME: &str = "tracer-enrich-ports";
    let mut guard = NetnsGuard::fresh(NAME);
    assert!(ip(&["netns", "exec", NAME, "sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=40000 40003"]));
    // Two connections to its own listener: their local ports come from the 4-port range.
    let script = "import socket,time\n\
                  s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(5)\n\
                  c=[socket.create_connection(s.getsockname()) for _ in range(2)]\n\
                  print(s.getsockname()[1], flush=True)\n\
                  time.sleep(120)\n";
    let child = Command::new("ip").args(["netns", "exec", NAME, python, "-c", script]).stdout(Stdio::piped()).spawn().expect("spawn ip netns exec");
    let pid = child.id();
    let child = guard.child.insert(child);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("python printed {line:?}"));
    let netns = netns_inode_of_pid(pid).expect("python's netns");
    assert_ne!(Some(netns), netns_inode_of_pid(std::process::id()));

    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let mut enricher = Enricher::new();
    let event = enricher.ports_in_use(netns, target, 7).expect("measured in the test namespace");
    let held: BTreeMap<String, u64> = [("ESTABLISHED".to_string(), 2)].into_iter().collect();
    assert_eq!(event.netns, netns);
    assert_eq!(event.body, EventBody::PortsInUse { target, range: (40000, 40003), by_state: held });
    drop(guard);
}

#[test]
fn finds_who_holds_a_connection_and_when_none_does_yet() {
    if !is_root("finds_who_holds_a_connection_and_when_none_does_yet") {
        return;
    }
    let own_netns = netns_inode_of_pid(std::process::id()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    let client = std::net::TcpStream::connect(upstream).unwrap();
    // Nginx's view: src = the client's end, dst = the upstream.
    let flow = FlowAddr { src: client.local_addr().unwrap(), dst: upstream };
    let mut enricher = Enricher::new();

    // Not accepted yet: no process holds the upstream's end.
    let event = enricher.conn_holder(own_netns, flow, 9).expect("the queued connection");
    assert_eq!(event.task.pid, 0, "{event:?}");
    assert_eq!((event.ts_ns, event.netns), (9, own_netns));
    assert_eq!(event.body, EventBody::ConnHolder { flow, state: None, in_queue: true });

    // Accepted: this process holds it, and its state is read.
    let (accepted, _) = listener.accept().unwrap();
    let event = enricher.conn_holder(own_netns, flow, 9).expect("the accepted connection");
    assert_eq!(event.task.pid, std::process::id(), "{event:?}");
    assert!(!event.task.comm.is_empty());
    let EventBody::ConnHolder { flow: seen, state, in_queue } = &event.body else { panic!("{event:?}") };
    assert_eq!((*seen, *in_queue), (flow, false));
    let state = state.as_deref().expect("state read");
    assert!(state.starts_with("R (") || state.starts_with("S ("), "{state}");

    // A flow nobody has: nothing (the kernel's fallback to the listener is not taken).
    let stranger = FlowAddr { src: SocketAddr::from(([127, 0, 0, 1], 1)), dst: upstream };
    assert!(enricher.conn_holder(own_netns, stranger, 9).is_none());
    // Closed by its holder: an orphan finishing alone, no holder.
    drop(accepted);
    assert!(enricher.conn_holder(own_netns, flow, 9).is_none());
    drop(client);
}

/// Namespaces made with `ip netns add` (deleted on drop) and the processes that keep them
/// known to tracer (the registry finds namespaces by their processes; killed on drop).
struct Namespaces {
    names: Vec<&'static str>,
    children: Vec<Child>,
}

impl Namespaces {
    fn new(names: &[&'static str]) -> Namespaces {
        for name in names {
            let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
            assert!(ip(&["netns", "add", name]), "ip netns add {name}");
        }
        let namespaces = Namespaces { names: names.to_vec(), children: Vec::new() };
        for name in names {
            assert!(ip(&["-n", name, "link", "set", "lo", "up"]));
        }
        namespaces
    }

    /// Starts `args` inside `name` (`ip netns exec` execs it: the child's pid is the
    /// command's) and returns the child's pid.
    fn spawn(&mut self, name: &str, args: &[&str], stdout: Stdio) -> u32 {
        let child = Command::new("ip").args(["netns", "exec", name]).args(args).stdout(stdout).spawn().expect("spawn ip netns exec");
        let pid = child.id();
        self.children.push(child);
        pid
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
        }
    }
}

fn has_ip_command(test: &str) -> bool {
    let present = Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
    if !present {
        note!("skipped {test}: no `ip` command (iproute2)");
    }
    present
}

/// The namespace inode of a just-spawned `ip netns exec` child, once it has entered the
/// namespace (bounded wait: `ip` enters it before exec'ing the command).
fn netns_of_child(pid: u32, not: u32) -> u32 {
    for _ in 0..200 {
        if let Some(netns) = netns_inode_of_pid(pid).filter(|n| *n != not) {
            return netns;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("pid {pid} never entered its namespace");
}

fn addresses_of(events: &[Event], netns: u32) -> Option<&Vec<IpAddr>> {
    events.iter().find_map(|e| match &e.body {
        EventBody::NetnsAddresses { addrs } if e.netns == netns => Some(addrs),
        _ => None,
    })
}

#[test]
fn reports_the_addresses_configured_in_another_namespace() {
    const TEST: &str = "reports_the_addresses_configured_in_another_namespace";
    if !is_root(TEST) || !has_ip_command(TEST) {
        return;
    }
    const NAME: &str = "tracer-addr-test";
    let mut namespaces = Namespaces::new(&[NAME]);
    // A veth pair inside the namespace (this kernel has no dummy driver).
    assert!(ip(&["-n", NAME, "link", "add", "tracer-d0", "type", "veth", "peer", "name", "tracer-d1"]));
    assert!(ip(&["-n", NAME, "addr", "add", "10.231.5.7/24", "dev", "tracer-d0"]));
    assert!(ip(&["-n", NAME, "addr", "add", "fd00:231::7/64", "dev", "tracer-d0", "nodad"]));
    assert!(ip(&["-n", NAME, "link", "set", "tracer-d0", "up"]));
    assert!(ip(&["-n", NAME, "link", "set", "tracer-d1", "up"]));
    let own = netns_inode_of_pid(std::process::id()).unwrap();
    let pid = namespaces.spawn(NAME, &["sleep", "60"], Stdio::null());
    let netns = netns_of_child(pid, own);

    let mut enricher = Enricher::new();
    let events = enricher.snapshot_addresses(11);
    let addrs = addresses_of(&events, netns).expect("the test namespace's address book");
    for want in ["10.231.5.7", "fd00:231::7", "127.0.0.1", "::1"] {
        assert!(addrs.contains(&want.parse().unwrap()), "{want} missing from {addrs:?}");
    }
    // Besides those, only the link-local addresses the kernel gives each interface.
    let link_local = |a: &IpAddr| matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
    assert_eq!(addrs.iter().filter(|a| !link_local(a)).count(), 4, "{addrs:?}");
    let own_addrs = addresses_of(&events, own).expect("own namespace's address book");
    assert!(!own_addrs.contains(&"10.231.5.7".parse().unwrap()), "{own_addrs:?}");
    assert!(events.iter().all(|e| e.ts_ns == 11));
    assert!(enricher.is_local_anywhere("10.231.5.7".parse().unwrap()));
    assert!(!enricher.is_local_anywhere("10.231.5.8".parse().unwrap()));
    // Measured already: a namespace is measured on first sight only.
    assert!(enricher.addresses_if_unknown(netns, 12).is_none());
    assert!(enricher.addresses_of_new_namespaces(12).is_empty());

    // An address added later shows in the next measurement.
    assert!(ip(&["-n", NAME, "addr", "add", "10.231.6.1/24", "dev", "tracer-d0"]));
    let event = enricher.measure_addresses(netns, 13).expect("measured again");
    assert_eq!(event.netns, netns);
    let EventBody::NetnsAddresses { addrs } = &event.body else { panic!("{event:?}") };
    assert!(addrs.contains(&"10.231.6.1".parse().unwrap()), "{addrs:?}");
    assert!(enricher.measure_addresses(1, 13).is_none(), "no namespace has inode 1");
}

#[test]
fn names_the_backend_a_dnat_rule_sent_a_refused_connection_to() {
    const TEST: &str = "names_the_backend_a_dnat_rule_sent_a_refused_connection_to";
    if !is_root(TEST) || !has_ip_command(TEST) {
        return;
    }
    let Some(python) = ["/usr/bin/python3"].into_iter().find(|p| Command::new(p).arg("-V").output().is_ok_and(|o| o.status.success())) else {
        note!("skipped {TEST}: no python3");
        return;
    };
    if Command::new("/usr/sbin/nft").arg("--version").output().is_err() {
        note!("skipped {TEST}: no /usr/sbin/nft");
        return;
    }
    if !conntrack::conntrack_present() {
        note!("skipped {TEST}: no conntrack in this kernel");
        return;
    }
    const A: &str = "tracer-nat-a";
    const B: &str = "tracer-nat-b";
    let mut namespaces = Namespaces::new(&[A, B]);
    assert!(ip(&["-n", A, "link", "add", "tracer-va", "type", "veth", "peer", "name", "tracer-vb", "netns", B]));
    assert!(ip(&["-n", A, "addr", "add", "10.232.0.1/24", "dev", "tracer-va"]));
    assert!(ip(&["-n", B, "addr", "add", "10.232.0.2/24", "dev", "tracer-vb"]));
    assert!(ip(&["-n", A, "link", "set", "tracer-va", "up"]));
    assert!(ip(&["-n", B, "link", "set", "tracer-vb", "up"]));
    assert!(ip(&["-n", A, "route", "add", "default", "via", "10.232.0.2"]));
    let rules = "table ip nat {\n  chain output {\n    type nat hook output priority -100;\n    ip daddr 10.96.0.10 tcp dport 80 dnat to 10.232.0.2:8405\n    ip daddr 10.96.0.10 tcp dport 81 dnat to 10.232.0.2:8406\n  }\n}\n";
    let dir = TempDir::new("nat");
    let rules_path = dir.0.join("nat.nft");
    fs::write(&rules_path, rules).unwrap();
    assert!(ip(&["netns", "exec", A, "/usr/sbin/nft", "-f", rules_path.to_str().unwrap()]), "nft -f");

    let own = netns_inode_of_pid(std::process::id()).unwrap();
    let b_pid = namespaces.spawn(B, &["sleep", "60"], Stdio::null());
    let b = netns_of_child(b_pid, own);
    let a_pid = namespaces.spawn(A, &["sleep", "60"], Stdio::null());
    let a = netns_of_child(a_pid, own);
    // tracer is running before the failure: it knows both namespaces and their addresses.
    let mut enricher = Enricher::new();
    let books = enricher.snapshot_addresses(20);
    assert!(addresses_of(&books, b).is_some_and(|addrs| addrs.contains(&"10.232.0.2".parse().unwrap())));
    assert!(addresses_of(&books, a).is_some_and(|addrs| addrs.contains(&"10.232.0.1".parse().unwrap())));

    // The client binds first so its port outlives the refused connect.
    let script = "import socket,errno\n\
                  s=socket.socket(); s.settimeout(5); s.bind(('10.232.0.1',0)); port=s.getsockname()[1]\n\
                  try:\n    s.connect(('10.96.0.10',80)); r='connected'\n\
                  except socket.timeout: r='timeout'\n\
                  except OSError as e: r=errno.errorcode.get(e.errno,str(e.errno))\n\
                  print(port, r, flush=True)\n";
    let output = Command::new("ip").args(["netns", "exec", A, python, "-c", script]).output().expect("run the client");
    let line = String::from_utf8_lossy(&output.stdout).to_string();
    let (port, outcome) = line.trim().split_once(' ').unwrap_or_else(|| panic!("python printed {line:?}"));
    assert_eq!(outcome, "ECONNREFUSED", "nothing listens on 10.232.0.2:8405");
    let port: u16 = port.parse().unwrap();

    let flow = FlowAddr { src: SocketAddr::from(([10, 232, 0, 1], port)), dst: "10.96.0.10:80".parse().unwrap() };
    let events = enricher.nat_mapping(a, flow, 21);
    let mappings: Vec<&Event> = events.iter().filter(|e| matches!(e.body, EventBody::NatMapping { .. })).collect();
    assert_eq!(mappings.len(), 1, "{events:?}");
    assert_eq!(mappings[0].netns, a);
    assert_eq!(mappings[0].ts_ns, 21);
    assert_eq!(mappings[0].body, EventBody::NatMapping { flow, backend: "10.232.0.2:8405".parse().unwrap() });

    // A flow conntrack never saw, and one to an address a namespace has: no mapping.
    let other = FlowAddr { src: SocketAddr::from(([10, 232, 0, 1], port.wrapping_add(1).max(1))), dst: flow.dst };
    assert!(enricher.nat_mapping(a, other, 22).iter().all(|e| !matches!(e.body, EventBody::NatMapping { .. })));
    let direct = FlowAddr { src: flow.src, dst: "10.232.0.2:8405".parse().unwrap() };
    assert!(enricher.nat_mapping(a, direct, 23).is_empty(), "10.232.0.2 is B's own address");

    // A connection that got through (a listener on 8406 in B) keeps its entry: the lookup
    // itself answers (no destroy event yet: TIME_WAIT lasts two minutes).
    let listener = "import socket,time\n\
                    s=socket.socket(); s.bind(('10.232.0.2',8406)); s.listen(5)\n\
                    print('ready', flush=True)\n\
                    time.sleep(60)\n";
    namespaces.spawn(B, &[python, "-c", listener], Stdio::piped());
    let mut ready = String::new();
    BufReader::new(namespaces.children.last_mut().unwrap().stdout.take().unwrap()).read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    let script81 = script.replace("80)", "81)");
    let output = Command::new("ip").args(["netns", "exec", A, python, "-c", &script81]).output().expect("run the client");
    let line = String::from_utf8_lossy(&output.stdout).to_string();
    let (port, outcome) = line.trim().split_once(' ').unwrap_or_else(|| panic!("python printed {line:?}"));
    assert_eq!(outcome, "connected");
    let flow = FlowAddr { src: SocketAddr::from(([10, 232, 0, 1], port.parse().unwrap())), dst: "10.96.0.10:81".parse().unwrap() };
    let events = enricher.nat_mapping(a, flow, 24);
    let backend = "10.232.0.2:8406".parse().unwrap();
    assert!(events.iter().any(|e| e.netns == a && e.body == EventBody::NatMapping { flow, backend }), "{events:?}");
}

/// Runs `nft` with `args` inside namespace `name` (the test's own set-up, not tracer's path).
fn nft_in(name: &str, args: &[&str]) {
    let mut all = vec!["netns", "exec", name, "nft"];
    all.extend_from_slice(args);
    assert!(ip(&all), "nft {args:?} in {name}");
}

#[test]
fn names_the_rule_of_a_drop_in_another_namespace_and_reads_a_changed_ruleset_again() {
    if !is_root("names_the_rule_of_a_drop_in_another_namespace_and_reads_a_changed_ruleset_again") {
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() || !ruleset::trusted_program(ruleset::NFT) {
        note!("skipped names_the_rule_of_a_drop...: no `ip` command or no root-owned {}", ruleset::NFT);
        return;
    }
    const NAME: &str = "tracer-enrich-rule";
    let mut guard = NetnsGuard::fresh(NAME);
    let child = Command::new("ip").args(["netns", "exec", NAME, "sleep", "120"]).spawn().expect("spawn sleep");
    let pid = child.id();
    guard.child = Some(child);
    let netns = (0..100)
        .find_map(|_| {
            let ns = netns_inode_of_pid(pid).filter(|ns| Some(*ns) != netns_inode_of_pid(std::process::id()));
            if ns.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            ns
        })
        .expect("sleep's netns");
    nft_in(NAME, &["add", "table", "inet", "t"]);
    nft_in(NAME, &["add", "chain", "inet", "t", "out", "{ type filter hook output priority 0; }"]);
    nft_in(NAME, &["add", "rule", "inet", "t", "out", "tcp", "dport", "9000", "drop"]);
    nft_in(NAME, &["add", "rule", "inet", "t", "out", "tcp", "dport", "8000", "counter", "drop"]);
    nft_in(NAME, &["add", "rule", "inet", "t", "out", "tcp", "dport", "8000", "accept"]);

    let mut enricher = Enricher::new();
    let syn = FlowAddr { src: "127.0.0.1:40000".parse().unwrap(), dst: "127.0.0.1:8000".parse().unwrap() };
    let s = 1_000_000_000;
    let event = enricher.firewall_rule(netns, syn, true, 10 * s).expect("the rule");
    assert_eq!(event.netns, netns);
    let EventBody::FirewallRule { flow, rules, certain, enter_pid, netns_name } = &event.body else { panic!("{event:?}") };
    assert_eq!((*flow, *certain, *enter_pid, netns_name.as_deref()), (syn, true, None, Some(NAME)), "by its name, not pid {pid}");
    assert_eq!(rules.len(), 1, "{rules:?}");
    let r = &rules[0];
    assert_eq!((r.family.as_str(), r.table.as_str(), r.chain.as_str(), r.hook.as_str()), ("inet", "t", "out", "output"));
    assert_eq!(r.text, "tcp dport 8000 counter drop");
    let first_handle = r.handle;

    // A reject inserted before it: a new generation, read again.
    nft_in(NAME, &["insert", "rule", "inet", "t", "out", "tcp", "dport", "8000", "reject"]);
    let event = enricher.firewall_rule(netns, syn, true, 12 * s).expect("the new rule");
    let EventBody::FirewallRule { rules, .. } = &event.body else { panic!("{event:?}") };
    assert_ne!(rules[0].handle, first_handle, "{rules:?}");
    assert_eq!(rules[0].text, "tcp dport 8000 reject");
    // Another port: nothing drops it.
    let other = FlowAddr { src: "127.0.0.1:40000".parse().unwrap(), dst: "127.0.0.1:8001".parse().unwrap() };
    assert!(enricher.firewall_rule(netns, other, true, 13 * s).is_none());
    assert!(enricher.firewall_rule(1, syn, true, 14 * s).is_none(), "no namespace has inode 1");

    // No process left in it: still reached by its `ip netns` name.
    if let Some(mut child) = guard.child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    nft_in(NAME, &["insert", "rule", "inet", "t", "out", "tcp", "dport", "8000", "counter", "reject"]);
    let event = enricher.firewall_rule(netns, syn, true, 16 * s).expect("the rule of a namespace without processes");
    let EventBody::FirewallRule { rules, enter_pid, netns_name, .. } = &event.body else { panic!("{event:?}") };
    assert_eq!(rules[0].text, "tcp dport 8000 counter reject");
    assert_eq!((netns_name.as_deref(), enter_pid.is_none()), (Some(NAME), true), "{event:?}");
}
