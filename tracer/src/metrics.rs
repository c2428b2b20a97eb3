//! `tracer watch --metrics [ADDR]`: a Prometheus endpoint (`GET /metrics`, OpenMetrics text
//! as written by the `prometheus-client` crate) served by a small HTTP/1.1 responder on the
//! trace loop's tokio runtime.
//!
//! What it exports:
//!
//! ```text
//! tracer_failed_connections_total{cause,target,upstream,client_comm}   attempts that failed
//! tracer_delayed_connections_total{cause,target,upstream,client_comm}  attempts that connected late
//! tracer_listener_queue_length{target}, tracer_listener_queue_max{target}
//!                                                 the latest accept queue a finding measured
//! tracer_events_total, tracer_lost_events_total{kind}, tracer_hooks_active, tracer_hook_active{hook}
//! ```
//!
//! The trace loop feeds `Metrics` (`observe`, `observe_health`); the server only encodes the
//! registry, so a scrape never waits for the loop and the loop never waits for a scrape.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::capture::Capture;
use crate::event::Target;
use crate::explain::{AttemptRecord, Cause, Finding, Outcome, Update};

/// Where `--metrics` without an address serves.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9464";
/// The Content-Type of what `prometheus_client::encoding::text::encode` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// A scraper has this long to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests are a line and a few headers; anything longer is not a scrape.
const MAX_REQUEST: usize = 16 * 1024;

/// `--metrics ADDR`: `IP:PORT`, `[IPv6]:PORT`, `localhost:PORT` or `:PORT` (all addresses).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let bad = || format!("'{s}' is not an address to serve metrics on (use e.g. {DEFAULT_ADDR} or :9464)");
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    // A host name: only names this host resolves without asking the network (localhost).
    if s.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) {
        if let Some(a) = s.to_socket_addrs().ok().and_then(|mut it| it.next()) {
            return Ok(a);
        }
    }
    Err(bad())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub cause: String,
    pub target: String,
    pub upstream: String,
    pub client_comm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    pub hook: String,
}

/// Every metric tracer exports, and the registry that encodes them.
pub struct Metrics {
    registry: Arc<Registry>,
    failed: Family<AttemptLabels, Counter>,
    delayed: Family<AttemptLabels, Counter>,
    queue_len: Family<TargetLabels, Gauge>,
    queue_max: Family<TargetLabels, Gauge>,
    events: Counter,
    lost: Family<KindLabels, Counter>,
    hooks_active: Gauge,
    hook_active: Family<HookLabels, Gauge>,
    /// Upstream names of findings, by (cause, target, netns): attempts carry none themselves.
    upstreams: Mutex<HashMap<(Cause, Target, u32), String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let failed = Family::<AttemptLabels, Counter>::default();
        let delayed = Family::<AttemptLabels, Counter>::default();
        let queue_len = Family::<TargetLabels, Gauge>::default();
        let queue_max = Family::<TargetLabels, Gauge>::default();
        let events = Counter::default();
        let lost = Family::<KindLabels, Counter>::default();
        let hooks_active = Gauge::default();
        let hook_active = Family::<HookLabels, Gauge>::default();
        let mut r = Registry::default();
        // Counters get their `_total` suffix from the encoder.
        r.register(
            "tracer_failed_connections",
            "Upstream connection attempts that failed, by cause, target, Nginx upstream name and client command",
            failed.clone(),
        );
        r.register(
            "tracer_delayed_connections",
            "Upstream connection attempts that connected only after SYN retransmits (full accept queue)",
            delayed.clone(),
        );
        r.register(
            "tracer_listener_queue_length",
            "Accept queue length of the listener on the target, as last measured for a finding",
            queue_len.clone(),
        );
        r.register(
            "tracer_listener_queue_max",
            "Accept queue maximum (listen backlog) of the listener on the target, as last measured for a finding",
            queue_max.clone(),
        );
        r.register("tracer_events", "Events the kernel programs handed to tracer", events.clone());
        r.register(
            "tracer_lost_events",
            "Events the kernel could not hand over (ring buffer full), by kind",
            lost.clone(),
        );
        r.register("tracer_hooks_active", "Kernel hooks attached", hooks_active.clone());
        r.register("tracer_hook_active", "1 when the kernel hook is attached, 0 when not", hook_active.clone());
        Metrics {
            registry: Arc::new(r),
            failed,
            delayed,
            queue_len,
            queue_max,
            events,
            lost,
            hooks_active,
            hook_active,
            upstreams: Mutex::new(HashMap::new()),
        }
    }

    /// The registry, for the server.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    /// Counts what `Engine::tick` reported (already filtered): attempts by outcome, and the
    /// queue each changed finding measured. `upstream`: the Nginx upstream a finding's target
    /// is configured in (from the Nginx configuration), None when unknown (label "").
    pub fn observe<'a>(&self, updates: impl IntoIterator<Item = &'a Update>, upstream: impl Fn(&Finding) -> Option<String>) {
        let updates: Vec<&Update> = updates.into_iter().collect();
        // Findings first: they name the upstream the attempts of the same tick belong to.
        for u in &updates {
            if let Update::Finding(f) = u {
                self.observe_finding(f, upstream(f));
            }
        }
        for u in &updates {
            if let Update::Attempt(a) = u {
                self.observe_attempt(a);
            }
        }
    }

    pub fn observe_finding(&self, f: &Finding, upstream: Option<String>) {
        if let Some(upstream) = upstream.filter(|u| !u.is_empty()) {
            self.upstreams.lock().unwrap().insert((f.cause, f.target.clone(), f.netns), upstream);
        }
        if let Some(q) = f.queue {
            let labels = TargetLabels { target: f.target.to_string() };
            self.queue_len.get_or_create(&labels).set(q.len as i64);
            self.queue_max.get_or_create(&labels).set(q.max as i64);
        }
    }

    pub fn observe_attempt(&self, a: &AttemptRecord) {
        let upstream = self
            .upstreams
            .lock()
            .unwrap()
            .get(&(a.cause, a.target.clone(), a.netns))
            .cloned()
            .unwrap_or_default();
        let labels = AttemptLabels {
            cause: a.cause.as_str().to_string(),
            target: a.target.to_string(),
            upstream,
            client_comm: a.client.comm.clone(),
        };
        match a.outcome {
            // Still waiting when tracer stopped following it: it did not connect.
            Outcome::Failed | Outcome::Pending => self.failed.get_or_create(&labels).inc(),
            Outcome::Delayed => self.delayed.get_or_create(&labels).inc(),
        };
    }

    /// tracer's own health: events emitted by the kernel programs (total over kinds), events
    /// lost per kind (every kind seen gets a series, 0 until something is lost), hooks.
    pub fn observe_health(&self, emitted: &BTreeMap<String, u64>, lost: &BTreeMap<String, u64>, hooks: &[(String, bool)]) {
        raise_to(&self.events, emitted.values().sum());
        for kind in emitted.keys().chain(lost.keys()) {
            let c = self.lost.get_or_create(&KindLabels { kind: kind.clone() });
            raise_to(&c, lost.get(kind).copied().unwrap_or(0));
        }
        self.hooks_active.set(hooks.iter().filter(|(_, active)| *active).count() as i64);
        for (hook, active) in hooks {
            self.hook_active.get_or_create(&HookLabels { hook: hook.clone() }).set(*active as i64);
        }
    }

    /// Reads tracer's health from the capture (kernel counters, hooks).
    pub fn observe_capture(&self, capture: &Capture) {
        let hooks: Vec<(String, bool)> = capture.hooks.iter().map(|h| (h.hook.clone(), h.active)).collect();
        let (emitted, lost) = capture.counters().unwrap_or_default();
        self.observe_health(&emitted, &lost, &hooks);
    }

    /// The whole exposition (OpenMetrics text, ending in `# EOF`).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// Counters only go up: take an absolute reading from the kernel as an increase.
fn raise_to(c: &Counter, value: u64) {
    let now = c.get();
    if value > now {
        c.inc_by(value - now);
    }
}

pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Binds the metrics address (before anything is attached, so a bad address fails at once).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot serve metrics on {addr}"))
}

/// Serves `GET /metrics` on `listener` until the runtime stops (one task per connection).
pub fn spawn_server(listener: TcpListener, registry: Arc<Registry>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let registry = Arc::clone(&registry);
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(REQUEST_TIMEOUT, serve_one(stream, &registry)).await;
                    });
                }
                Err(e) => {
                    // EMFILE and the like: wait a little instead of spinning.
                    log::warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

async fn serve_one(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") || buf.len() > MAX_REQUEST {
            break;
        }
    }
    let response = respond(&buf, || render(registry));
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// The whole HTTP/1.1 response to a request (pure: `body` renders the metrics when needed).
pub fn respond(request: &[u8], body: impl FnOnce() -> String) -> Vec<u8> {
    let text = String::from_utf8_lossy(request);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body, head) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", CONTENT_TYPE, body(), false),
        ("HEAD", "/metrics") => ("200 OK", CONTENT_TYPE, body(), true),
        _ => ("404 Not Found", "text/plain; charset=utf-8", "Not found: tracer serves GET /metrics\n".to_string(), false),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventBody, Queue, TaskInfo};
    use crate::explain::{Engine, EngineOptions};

    /// A real finding and attempt, made by the engine (unix_missing, one attempt by `comm`).
    fn engine_sample(comm: &str) -> (Finding, AttemptRecord) {
        let mut e = Engine::new(EngineOptions::default());
        let task = TaskInfo { pid: 812, tid: 812, uid: 33, comm: comm.into() };
        e.push(&Event {
            ts_ns: 1_000_000_000,
            netns: 7,
            sock: 0xb000,
            task,
            body: EventBody::UnixConnectFailed { path: "/run/app.sock".into(), errno: libc::ENOENT },
        });
        let updates = e.finish();
        let a = updates
            .iter()
            .find_map(|u| match u {
                Update::Attempt(a) => Some(a.clone()),
                _ => None,
            })
            .expect("an attempt");
        (e.findings().remove(0), a)
    }

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn attempts_are_counted_per_cause_target_upstream_and_comm() {
        let m = Metrics::new();
        let (f, a) = engine_sample("nginx");
        let mut tcp = a.clone();
        tcp.cause = Cause::DeadListener;
        tcp.target = Target::Tcp("127.0.0.1:8000".parse().unwrap());
        let mut late = tcp.clone();
        late.cause = Cause::BacklogFull;
        late.outcome = Outcome::Delayed;
        let mut other = tcp.clone();
        other.client.comm = "curl".into();
        let mut named = f.clone();
        named.target = Target::Tcp("127.0.0.1:9000".parse().unwrap());
        let mut in_app = tcp.clone();
        in_app.target = named.target.clone();
        in_app.cause = named.cause;
        let updates = vec![
            Update::Finding(f),
            Update::Finding(named),
            Update::Attempt(in_app),
            Update::Attempt(a),
            Update::Attempt(tcp.clone()),
            Update::Attempt(tcp),
            Update::Attempt(late),
            Update::Attempt(other),
        ];
        m.observe(&updates, |f| (f.target.to_string() == "127.0.0.1:9000").then(|| "app".to_string()));
        let text = m.render();
        assert!(text.contains("# TYPE tracer_failed_connections counter"), "{text}");
        assert_eq!(
            line(&text, r#"tracer_failed_connections_total{cause="dead_listener",target="127.0.0.1:8000",upstream="",client_comm="nginx"}"#),
            Some(r#"tracer_failed_connections_total{cause="dead_listener",target="127.0.0.1:8000",upstream="",client_comm="nginx"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tracer_failed_connections_total{cause="dead_listener",target="127.0.0.1:8000",upstream="",client_comm="curl"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tracer_failed_connections_total{cause="unix_missing",target="unix:/run/app.sock",upstream="",client_comm="nginx"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tracer_delayed_connections_total{cause="backlog_full",target="127.0.0.1:8000",upstream="",client_comm="nginx"} 1"#),
            "{text}"
        );
        assert!(!text.contains(r#"tracer_failed_connections_total{cause="backlog_full""#), "delayed is not failed: {text}");
        // The upstream name of the finding the attempt belongs to.
        assert!(
            text.contains(r#"tracer_failed_connections_total{cause="unix_missing",target="127.0.0.1:9000",upstream="app",client_comm="nginx"} 1"#),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn queue_gauges_follow_the_latest_finding() {
        let m = Metrics::new();
        let (mut f, _) = engine_sample("nginx");
        f.cause = Cause::BacklogFull;
        f.target = Target::Tcp("[::1]:8000".parse().unwrap());
        f.queue = Some(Queue { len: 129, max: 128 });
        m.observe_finding(&f, None);
        f.queue = Some(Queue { len: 5, max: 128 });
        m.observe_finding(&f, None);
        let text = m.render();
        assert!(text.contains("# TYPE tracer_listener_queue_length gauge"), "{text}");
        assert!(text.contains(r#"tracer_listener_queue_length{target="[::1]:8000"} 5"#), "{text}");
        assert!(text.contains(r#"tracer_listener_queue_max{target="[::1]:8000"} 128"#), "{text}");
    }

    #[test]
    fn health_counters_take_kernel_readings_and_never_go_down() {
        let m = Metrics::new();
        let emitted: BTreeMap<String, u64> = [("Attempt".to_string(), 10), ("Listen".to_string(), 5)].into();
        let hooks = vec![
            ("tracepoint/sock/inet_sock_set_state".to_string(), true),
            ("tracepoint/icmp/icmp_send".to_string(), false),
        ];
        m.observe_health(&emitted, &BTreeMap::new(), &hooks);
        let lost: BTreeMap<String, u64> = [("Attempt".to_string(), 3)].into();
        let emitted2: BTreeMap<String, u64> = [("Attempt".to_string(), 20), ("Listen".to_string(), 5)].into();
        m.observe_health(&emitted2, &lost, &hooks);
        m.observe_health(&emitted, &lost, &hooks); // an older reading changes nothing
        let text = m.render();
        assert!(text.contains("\ntracer_events_total 25\n"), "{text}");
        assert!(text.contains(r#"tracer_lost_events_total{kind="Attempt"} 3"#), "{text}");
        assert!(text.contains(r#"tracer_lost_events_total{kind="Listen"} 0"#), "{text}");
        assert!(text.contains("\ntracer_hooks_active 1\n"), "{text}");
        assert!(text.contains(r#"tracer_hook_active{hook="tracepoint/sock/inet_sock_set_state"} 1"#), "{text}");
        assert!(text.contains(r#"tracer_hook_active{hook="tracepoint/icmp/icmp_send"} 0"#), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        let (_, mut a) = engine_sample("we\"ird\\x");
        a.target = Target::Unix("/tmp/a\nb".into());
        m.observe_attempt(&a);
        let text = m.render();
        assert!(text.contains(r#"target="unix:/tmp/a\nb""#), "{text}");
        assert!(text.contains(r#"client_comm="we\"ird\\x""#), "{text}");
    }

    #[test]
    fn http_answers_get_metrics_and_404_otherwise() {
        let ok = String::from_utf8(respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", || "a 1\n# EOF\n".into())).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")), "{ok}");
        assert!(ok.contains("Content-Length: 10\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\na 1\n# EOF\n"), "{ok}");
        let q = String::from_utf8(respond(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", || "b".into())).unwrap();
        assert!(q.starts_with("HTTP/1.1 200 OK\r\n") && q.ends_with("\r\n\r\nb"), "{q}");
        let head = String::from_utf8(respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", || "abc".into())).unwrap();
        assert!(head.contains("Content-Length: 3\r\n") && head.ends_with("\r\n\r\n"), "{head}");
        for req in [&b"GET / HTTP/1.1\r\n\r\n"[..], b"POST /metrics HTTP/1.1\r\n\r\n", b"", b"garbage"] {
            let r = String::from_utf8(respond(req, || unreachable!("no metrics for a 404"))).unwrap();
            assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        }
    }

    #[test]
    fn addresses_parse_or_explain() {
        assert_eq!(parse_addr("127.0.0.1:9464").unwrap(), "127.0.0.1:9464".parse().unwrap());
        assert_eq!(parse_addr("[::1]:9100").unwrap(), "[::1]:9100".parse().unwrap());
        assert_eq!(parse_addr(":9464").unwrap(), "0.0.0.0:9464".parse().unwrap());
        assert_eq!(parse_addr("localhost:9464").unwrap().port(), 9464);
        assert_eq!(parse_addr(DEFAULT_ADDR).unwrap(), "127.0.0.1:9464".parse().unwrap());
        for bad in ["", "nonsense", "127.0.0.1", "127.0.0.1:99999", ":x", "300.1.1.1:80"] {
            let e = parse_addr(bad).unwrap_err();
            assert!(e.contains("is not an address") && !e.contains('\n'), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn serves_a_real_scrape_over_tcp() {
        let m = Metrics::new();
        m.observe_health(&[("Attempt".to_string(), 4)].into(), &BTreeMap::new(), &[]);
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = spawn_server(listener, m.registry());
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
        assert!(resp.contains("\ntracer_events_total 4\n"), "{resp}");
        server.abort();
        // An address already taken is refused with a clear error.
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let e = bind(taken.local_addr().unwrap()).await.unwrap_err();
        assert!(format!("{e:#}").starts_with("cannot serve metrics on 127.0.0.1:"), "{e:#}");
    }
}
