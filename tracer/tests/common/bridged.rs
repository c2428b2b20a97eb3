//! Namespaces laid out the way a container host lays them out (docker0, a CNI bridge): a
//! bridge namespace holding a Linux bridge, and a front namespace (Nginx's container) and an
//! app namespace (the upstream's) each joined to it by a veth pair on one subnet. Packets
//! between front and app cross the bridge; nothing leaves the test's namespaces.

use super::Netns;

/// The front namespace's address on the bridge.
pub const FRONT_IP: &str = "10.232.0.1";
/// The app namespace's address on the bridge.
pub const APP_IP: &str = "10.232.0.2";
/// The subnet's prefix length.
const PREFIX: u8 = 24;
/// The interface name inside each member namespace.
pub const MEMBER_IF: &str = "eth0";

/// Three namespaces (`tracer-t-<name>-{br,front,app}-<pid>`), each deleted on drop with what
/// runs inside it; deleting the bridge namespace deletes the veth pairs too.
pub struct Bridged {
    /// Nginx's namespace: FRONT_IP on eth0, and a default route out of eth0.
    pub front: Netns,
    /// The upstream's namespace: APP_IP on eth0.
    pub app: Netns,
    /// Holds the bridge `br0` and the veth ends `vfront` and `vapp`, no address.
    pub bridge: Netns,
}

impl Bridged {
    pub fn new(name: &str) -> Bridged {
        let bridge = Netns::new(&format!("{name}-br"));
        let front = Netns::new(&format!("{name}-front"));
        let app = Netns::new(&format!("{name}-app"));
        let fail = |e: anyhow::Error| -> ! { panic!("cannot lay out the bridged namespaces {name}: {e:#}") };
        bridge.add_bridge("br0").unwrap_or_else(|e| fail(e));
        bridge.join_bridge("br0", "vfront", &front, MEMBER_IF, &format!("{FRONT_IP}/{PREFIX}")).unwrap_or_else(|e| fail(e));
        bridge.join_bridge("br0", "vapp", &app, MEMBER_IF, &format!("{APP_IP}/{PREFIX}")).unwrap_or_else(|e| fail(e));
        // A Service address is on no interface: without a route connect() fails with
        // ENETUNREACH before the DNAT rule can rewrite it.
        front.add_default_route(MEMBER_IF).unwrap_or_else(|e| fail(e));
        Bridged { front, app, bridge }
    }
}
