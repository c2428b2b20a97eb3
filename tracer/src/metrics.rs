//! `tracer watch --metrics [ADDR]`: a Prometheus endpoint (`GET /metrics`) served by a small
//! HTTP/1.1 responder on the trace loop's tokio runtime. The exposition follows the scraper's
//! `Accept` header: OpenMetrics text (as written by the `prometheus-client` crate) when it
//! asks for `application/openmetrics-text`, else the Prometheus text format 0.0.4, which is
//! what `promtool check metrics` lints and what a plain `curl` should get.
//!
//! What it exports:
//!
//! ```text
//! tracer_failed_connections_total{cause,target,upstream,client_comm}   attempts and connections that failed
//! tracer_delayed_connections_total{cause,target,upstream,client_comm}  attempts that connected late
//! tracer_listener_queue_length{target}, tracer_listener_queue_max{target}
//!                                                 the latest accept queue a finding measured
//! tracer_events_total, tracer_lost_events_total{kind}, tracer_hooks_active, tracer_hook_active{hook}
//! tracer_kernel_attempt_records                   attempts and connections the kernel follows now
//! tracer_series_folded_total{label}               label values folded into "other" (the caps)
//! ```
//!
//! `target` and `client_comm` come from whatever the host's processes connect to and are
//! called, so their values are capped ([`MAX_TARGETS`], [`MAX_CLIENT_COMMS`]): later values
//! are counted under `"other"`, and `tracer_series_folded_total` says how many were folded.
//!
//! The trace loop feeds `Metrics` (`observe`, `observe_health`); the server only encodes the
//! registry, so a scrape never waits for the loop and the loop never waits for a scrape.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::kernel::hooks::CaptureHealth;
use crate::event::Target;
use crate::event::KindCounts;
use crate::explain::{AttemptRecord, Cause, Finding, Outcome, Update};

/// Where `--metrics` without an address serves.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9464";
/// A scraper has this long to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests are a line and a few headers; anything longer is not a scrape.
const MAX_REQUEST: usize = 16 * 1024;
/// Distinct `target` label values with a series of their own; later targets are counted
/// under `target="other"`. Big enough for every upstream of a large Nginx, small enough that
/// a host where everything fails does not flood the Prometheus server.
pub const MAX_TARGETS: usize = 200;
/// Distinct `client_comm` label values with a series of their own (any process can name
/// itself anything); later ones are counted under `client_comm="other"`.
pub const MAX_CLIENT_COMMS: usize = 50;
/// The label value folded series share. No target is spelled like this (`IP:PORT` or
/// `unix:PATH`); a process may call itself "other", which then shares the series.
pub const FOLDED: &str = "other";

/// The two expositions, chosen per scrape from the `Accept` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text: `# TYPE x counter` with samples `x_total`, ending in `# EOF`.
    OpenMetrics,
    /// Prometheus text format 0.0.4: `# TYPE x_total counter`, no `# EOF`.
    PrometheusText,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// OpenMetrics only when the scraper asks for it (`application/openmetrics-text`, version
    /// 1.0.0 or 0.0.1 or none, with a q at least that of the text format); the text format
    /// for everything else: no header, `*/*`, `text/plain`, versions tracer cannot write.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else { return Format::PrometheusText };
        let (mut q_openmetrics, mut q_text) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let (mut q, mut version) = (1.0f32, None);
            for p in parts {
                let Some((k, v)) = p.split_once('=') else { continue };
                match k.trim().to_ascii_lowercase().as_str() {
                    // An unreadable q is no preference at all.
                    "q" => q = v.trim().parse::<f32>().ok().filter(|q| q.is_finite()).unwrap_or(0.0).clamp(0.0, 1.0),
                    "version" => version = Some(v.trim().trim_matches('"').to_string()),
                    _ => {}
                }
            }
            match media.as_str() {
                "application/openmetrics-text" if matches!(version.as_deref(), None | Some("1.0.0") | Some("0.0.1")) => {
                    q_openmetrics = q_openmetrics.max(q)
                }
                "text/plain" if matches!(version.as_deref(), None | Some("0.0.4")) => q_text = q_text.max(q),
                "*/*" | "text/*" => q_text = q_text.max(q),
                _ => {}
            }
        }
        if q_openmetrics > 0.0 && q_openmetrics >= q_text {
            Format::OpenMetrics
        } else {
            Format::PrometheusText
        }
    }
}

/// `--metrics ADDR`: `IP:PORT`, `[IPv6]:PORT`, `localhost:PORT` or `:PORT`. `:PORT` is every
/// address, IPv4 and IPv6: `[::]:PORT`, which [`bind`] opens dual-stack.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let bad = || format!("'{s}' is not an address to serve metrics on (use e.g. {DEFAULT_ADDR} or :9464)");
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)));
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
    pub cause: Cause,
    pub target: String,
    pub upstream: String,
    pub client_comm: String,
}

/// A cause as a label value: its stable snake_case name (`dead_listener`), as in the JSON.
impl prometheus_client::encoding::EncodeLabelValue for Cause {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder) -> Result<(), std::fmt::Error> {
        prometheus_client::encoding::EncodeLabelValue::encode(&self.as_str(), encoder)
    }
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FoldedLabels {
    pub label: String,
}

/// The values of one label that get series of their own: the first `limit` seen. Every
/// later value is answered with [`FOLDED`] and counted once in `folded`.
struct LabelCap {
    limit: usize,
    kept: HashSet<String>,
    /// Hashes of the values folded so far, so each is counted once (hashes: a flood of
    /// distinct names costs 8 bytes each here, not the names).
    folded_seen: HashSet<u64>,
    folded: Counter,
}

impl LabelCap {
    fn new(limit: usize, folded: Counter) -> LabelCap {
        LabelCap { limit, kept: HashSet::new(), folded_seen: HashSet::new(), folded }
    }

    /// The label value to record `value` under.
    fn admit(&mut self, value: &str) -> String {
        if self.kept.contains(value) {
            return value.to_string();
        }
        if self.kept.len() < self.limit {
            self.kept.insert(value.to_string());
            return value.to_string();
        }
        let mut h = DefaultHasher::new();
        value.hash(&mut h);
        if self.folded_seen.insert(h.finish()) {
            self.folded.inc();
        }
        FOLDED.to_string()
    }

    #[cfg(test)]
    fn is_kept(&self, value: &str) -> bool {
        self.kept.contains(value)
    }
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
    attempt_records: Gauge,
    /// Upstream names of findings, by (cause, target, netns): attempts carry none themselves.
    upstreams: Mutex<HashMap<(Cause, Target, u32), String>>,
    targets: Mutex<LabelCap>,
    client_comms: Mutex<LabelCap>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::with_caps(MAX_TARGETS, MAX_CLIENT_COMMS)
    }

    /// `new` with other caps (tests).
    fn with_caps(max_targets: usize, max_client_comms: usize) -> Metrics {
        let failed = Family::<AttemptLabels, Counter>::default();
        let delayed = Family::<AttemptLabels, Counter>::default();
        let queue_len = Family::<TargetLabels, Gauge>::default();
        let queue_max = Family::<TargetLabels, Gauge>::default();
        let events = Counter::default();
        let lost = Family::<KindLabels, Counter>::default();
        let hooks_active = Gauge::default();
        let hook_active = Family::<HookLabels, Gauge>::default();
        let attempt_records = Gauge::default();
        let folded = Family::<FoldedLabels, Counter>::default();
        // Both caps have a series from the start: 0 says "nothing folded", not "unknown".
        let folded_targets = folded.get_or_create(&FoldedLabels { label: "target".into() }).clone();
        let folded_comms = folded.get_or_create(&FoldedLabels { label: "client_comm".into() }).clone();
        let mut r = Registry::default();
        // Counters are registered without `_total`: the encoders add it (OpenMetrics to the
        // samples, the text format to the family name too). Help texts hold no quote,
        // backslash or newline, so they need no escaping in either format.
        r.register(
            "tracer_failed_connections",
            "Upstream connections that failed (connect attempts, and connections that ended without a response), by cause, target, Nginx upstream name and client command",
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
            "Events the kernel could not hand over (ring buffer full, or a program run the kernel skipped), by kind",
            lost.clone(),
        );
        r.register("tracer_hooks_active", "Kernel hooks attached", hooks_active.clone());
        r.register("tracer_hook_active", "1 when the kernel hook is attached, 0 when not", hook_active.clone());
        r.register(
            "tracer_kernel_attempt_records",
            format!(
                "Connection attempts and connections whose owner the kernel table holds now, of {}: a socket whose set of {} is full is not followed, and counted in tracer_lost_events_total",
                tracer_common::ATTEMPT_RECORDS,
                tracer_common::ATTEMPT_WAYS
            ),
            attempt_records.clone(),
        );
        r.register(
            "tracer_series_folded",
            format!(
                "Distinct label values counted under the value other because the label reached its cap ({max_targets} targets, {max_client_comms} client commands)"
            ),
            folded,
        );
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
            attempt_records,
            upstreams: Mutex::new(HashMap::new()),
            targets: Mutex::new(LabelCap::new(max_targets, folded_targets)),
            client_comms: Mutex::new(LabelCap::new(max_client_comms, folded_comms)),
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
            let target = self.targets.lock().unwrap().admit(&f.target.to_string());
            // The queue of "other" would be one folded listener's, then another's: it means
            // nothing, so folded targets get no queue gauges (their attempts are still counted).
            if target != FOLDED {
                let labels = TargetLabels { target };
                self.queue_len.get_or_create(&labels).set(q.len as i64);
                self.queue_max.get_or_create(&labels).set(q.max as i64);
            }
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
            cause: a.cause,
            target: self.targets.lock().unwrap().admit(&a.target.to_string()),
            upstream,
            client_comm: self.client_comms.lock().unwrap().admit(&a.client.comm),
        };
        match a.outcome {
            // Still waiting when tracer stopped following it: it did not connect.
            Outcome::Failed | Outcome::Pending => self.failed.get_or_create(&labels).inc_by(a.count),
            Outcome::Delayed => self.delayed.get_or_create(&labels).inc_by(a.count),
        };
    }

    /// Whether `target` has series of its own (not folded into "other").
    #[cfg(test)]
    fn target_kept(&self, target: &str) -> bool {
        self.targets.lock().unwrap().is_kept(target)
    }

    /// tracer's own health: events emitted by the kernel programs (total over kinds), events
    /// lost per kind (every kind seen gets a series, 0 until something is lost), hooks.
    pub fn observe_health(&self, emitted: &KindCounts, lost: &KindCounts, hooks: &[(String, bool)]) {
        raise_to(&self.events, emitted.values().sum());
        for kind in emitted.keys().chain(lost.keys()) {
            let c = self.lost.get_or_create(&KindLabels { kind: kind.name() });
            raise_to(&c, lost.get(kind).copied().unwrap_or(0));
        }
        self.hooks_active.set(hooks.iter().filter(|(_, active)| *active).count() as i64);
        for (hook, active) in hooks {
            self.hook_active.get_or_create(&HookLabels { hook: hook.clone() }).set(*active as i64);
        }
    }

    /// Reads tracer's health as capture publishes it (kernel counters, hooks).
    pub fn observe_capture(&self, health: impl Into<CaptureHealth>) {
        let health = health.into();
        let hooks: Vec<(String, bool)> = health.hooks.iter().map(|h| (h.hook.clone(), h.active)).collect();
        self.observe_health(&health.emitted, &health.lost, &hooks);
        if let Some(n) = health.attempt_records {
            self.attempt_records.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The whole exposition in `format`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn render(&self, format: Format) -> String {
        render(&self.registry, format)
    }
}

/// Counters only go up: take an absolute reading from the kernel as an increase.
fn raise_to(c: &Counter, value: u64) {
    let now = c.get();
    if value > now {
        c.inc_by(value - now);
    }
}

pub fn render(registry: &Registry, format: Format) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    match format {
        Format::OpenMetrics => out,
        Format::PrometheusText => openmetrics_to_text(&out),
    }
}

/// Rewrites the crate's OpenMetrics text as Prometheus text format 0.0.4. The sample lines
/// and label escaping are the same in both; what differs is the family name of a counter
/// (OpenMetrics `# TYPE x counter` with samples `x_total`; the text format names the family
/// `x_total`, else its HELP and TYPE belong to no sample), `# UNIT` (OpenMetrics only) and
/// the closing `# EOF` (OpenMetrics only).
fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            // The encoder writes HELP then TYPE: hold HELP until the type names the family.
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let family = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
            if let Some((_, text)) = help.take().filter(|(n, _)| *n == name) {
                out.push_str(&format!("# HELP {family} {text}\n"));
            }
            out.push_str(&format!("# TYPE {family} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Binds the metrics address (before anything is attached, so a bad address fails at once).
/// `[::]:PORT` (what `:PORT` means) is opened dual-stack, IPv6 and IPv4 on one socket, with
/// IPV6_V6ONLY off whatever the host's default; where IPv6 is disabled it falls back to
/// `0.0.0.0:PORT`, saying so.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let every_address = addr.ip() == Ipv6Addr::UNSPECIFIED;
    match listen(addr, every_address) {
        Ok(l) => Ok(l),
        Err(e) if every_address && ipv6_unavailable(&e) => {
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()));
            note!("tracer: warning: IPv6 is not available here ({e}); serving metrics on {v4} (IPv4 only)");
            listen(v4, false).with_context(|| format!("cannot serve metrics on {v4}"))
        }
        Err(e) => Err(e).with_context(|| format!("cannot serve metrics on {addr}")),
    }
}

/// The errors of a kernel without IPv6 (ipv6.disable=1) or a host where [::] is not usable.
fn ipv6_unavailable(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT))
}

fn listen(addr: SocketAddr, dual_stack: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // As std and tokio's own bind do: a restart finds its port free despite TIME_WAIT.
    socket.set_reuseaddr(true)?;
    if dual_stack {
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv6V6Only, &false)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
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
    let response = respond(&buf, |format| render(registry, format));
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// The `Accept` header of a request (several are joined, as HTTP says they may be), if any.
fn accept_header(request: &str) -> Option<String> {
    let values: Vec<&str> = request
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("accept"))
        .map(|(_, value)| value.trim())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// The whole HTTP/1.1 response to a request (pure: `body` renders the metrics in the format
/// the request's `Accept` header chose, when needed).
pub fn respond(request: &[u8], body: impl FnOnce(Format) -> String) -> Vec<u8> {
    let text = String::from_utf8_lossy(request);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let format = Format::negotiate(accept_header(&text).as_deref());
    let (status, content_type, body, head) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", format.content_type(), body(format), false),
        ("HEAD", "/metrics") => ("200 OK", format.content_type(), body(format), true),
        _ => ("404 Not Found", "text/plain; charset=utf-8", "Not found: tracer serves GET /metrics\n".to_string(), false),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nVary: Accept\r\nConnection: close\r\n\r\n",
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
    fn every_cause_has_its_own_label_value() {
        let m = Metrics::new();
        let (_, a) = engine_sample("nginx");
        for cause in Cause::ALL {
            let mut each = a.clone();
            each.cause = cause;
            m.observe_attempt(&each);
        }
        let text = m.render(Format::PrometheusText);
        for cause in Cause::ALL {
            let series = format!(r#"tracer_failed_connections_total{{cause="{}",target="unix:/run/app.sock",upstream="",client_comm="nginx"}} 1"#, cause.as_str());
            assert!(text.contains(&series), "{series} missing:\n{text}");
        }
        let names: std::collections::HashSet<&str> = Cause::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), Cause::ALL.len(), "two causes share a label value");
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
        let text = m.render(Format::OpenMetrics);
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
        let text = m.render(Format::OpenMetrics);
        assert!(text.contains("# TYPE tracer_listener_queue_length gauge"), "{text}");
        assert!(text.contains(r#"tracer_listener_queue_length{target="[::1]:8000"} 5"#), "{text}");
        assert!(text.contains(r#"tracer_listener_queue_max{target="[::1]:8000"} 128"#), "{text}");
    }

    /// The kernel's attempt-record count is a gauge: it follows each reading down as well as
    /// up, and an unreadable counter leaves the last reading.
    #[test]
    fn attempt_records_gauge_follows_the_kernel_count() {
        use crate::kernel::hooks::CaptureHealth;
        let m = Metrics::new();
        let health = |n: Option<u64>| CaptureHealth { hooks: vec![], emitted: KindCounts::new(), lost: KindCounts::new(), attempt_records: n };
        m.observe_capture(health(Some(50)));
        assert!(m.render(Format::PrometheusText).contains("\ntracer_kernel_attempt_records 50\n"));
        m.observe_capture(health(Some(3)));
        m.observe_capture(health(None));
        let text = m.render(Format::PrometheusText);
        assert!(text.contains("\ntracer_kernel_attempt_records 3\n"), "{text}");
        assert!(text.contains("# TYPE tracer_kernel_attempt_records gauge"), "{text}");
        assert!(text.contains("of 524288: a socket whose set of 8 is full"), "{text}");
    }

    #[test]
    fn health_counters_take_kernel_readings_and_never_go_down() {
        let m = Metrics::new();
        use crate::event::RecordKind;
        use tracer_common::EventKind;
        let kind = |k: EventKind| RecordKind(k);
        let emitted: KindCounts = [(kind(EventKind::TcpAttemptFailed), 10), (kind(EventKind::TcpListenStart), 5)].into();
        let hooks = vec![
            ("tracepoint/sock/inet_sock_set_state".to_string(), true),
            ("tracepoint/icmp/icmp_send".to_string(), false),
        ];
        m.observe_health(&emitted, &KindCounts::new(), &hooks);
        let lost: KindCounts = [(kind(EventKind::TcpAttemptFailed), 3)].into();
        let emitted2: KindCounts = [(kind(EventKind::TcpAttemptFailed), 20), (kind(EventKind::TcpListenStart), 5)].into();
        m.observe_health(&emitted2, &lost, &hooks);
        m.observe_health(&emitted, &lost, &hooks); // an older reading changes nothing
        let text = m.render(Format::OpenMetrics);
        assert!(text.contains("\ntracer_events_total 25\n"), "{text}");
        assert!(text.contains(r#"tracer_lost_events_total{kind="TcpAttemptFailed"} 3"#), "{text}");
        assert!(text.contains(r#"tracer_lost_events_total{kind="TcpListenStart"} 0"#), "{text}");
        assert!(text.contains("\ntracer_hooks_active 1\n"), "{text}");
        assert!(text.contains(r#"tracer_hook_active{hook="tracepoint/sock/inet_sock_set_state"} 1"#), "{text}");
        assert!(text.contains(r#"tracer_hook_active{hook="tracepoint/icmp/icmp_send"} 0"#), "{text}");
    }

    #[test]
    fn an_attempt_record_standing_for_counted_repeats_adds_its_count() {
        let m = Metrics::new();
        let (_, a) = engine_sample("nginx");
        m.observe_attempt(&a);
        m.observe_attempt(&AttemptRecord { count: 5, ..a });
        let series = r#"tracer_failed_connections_total{cause="unix_missing",target="unix:/run/app.sock",upstream="",client_comm="nginx"}"#;
        let text = m.render(Format::OpenMetrics);
        assert_eq!(line(&text, series), Some(format!("{series} 6").as_str()), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        let (_, mut a) = engine_sample("we\"ird\\x");
        a.target = Target::Unix("/tmp/a\nb".into());
        m.observe_attempt(&a);
        let text = m.render(Format::OpenMetrics);
        assert!(text.contains(r#"target="unix:/tmp/a\nb""#), "{text}");
        assert!(text.contains(r#"client_comm="we\"ird\\x""#), "{text}");
    }

    #[test]
    fn http_answers_get_metrics_and_404_otherwise() {
        let ok = String::from_utf8(respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", |f| {
            assert_eq!(f, Format::PrometheusText, "no Accept header: the text format");
            "a 1\n# EOF\n".into()
        }))
        .unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), "{ok}");
        assert!(ok.contains("Content-Length: 10\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\na 1\n# EOF\n"), "{ok}");
        let q = String::from_utf8(respond(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", |_| "b".into())).unwrap();
        assert!(q.starts_with("HTTP/1.1 200 OK\r\n") && q.ends_with("\r\n\r\nb"), "{q}");
        let head = String::from_utf8(respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", |_| "abc".into())).unwrap();
        assert!(head.contains("Content-Length: 3\r\n") && head.ends_with("\r\n\r\n"), "{head}");
        for req in [&b"GET / HTTP/1.1\r\n\r\n"[..], b"POST /metrics HTTP/1.1\r\n\r\n", b"", b"garbage"] {
            let r = String::from_utf8(respond(req, |_| unreachable!("no metrics for a 404"))).unwrap();
            assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        }
    }

    #[test]
    fn addresses_parse_or_explain() {
        assert_eq!(parse_addr("127.0.0.1:9464").unwrap(), "127.0.0.1:9464".parse().unwrap());
        assert_eq!(parse_addr("[::1]:9100").unwrap(), "[::1]:9100".parse().unwrap());
        // Every address: IPv6 and IPv4 (bound dual-stack).
        assert_eq!(parse_addr(":9464").unwrap(), "[::]:9464".parse().unwrap());
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
        m.observe_health(&[(crate::event::RecordKind(tracer_common::EventKind::TcpAttemptFailed), 4)].into(), &KindCounts::new(), &[]);
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

    /// What `Prometheus` itself sends (it prefers OpenMetrics).
    const PROMETHEUS_ACCEPT: &str =
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn openmetrics_only_when_the_scraper_asks_for_it() {
        use Format::*;
        for (accept, want) in [
            (None, PrometheusText),
            (Some(""), PrometheusText),
            (Some("*/*"), PrometheusText),
            (Some("text/plain"), PrometheusText),
            (Some("text/plain;version=0.0.4"), PrometheusText),
            (Some("application/json"), PrometheusText),
            (Some(PROMETHEUS_ACCEPT), OpenMetrics),
            (Some("application/openmetrics-text"), OpenMetrics),
            (Some("Application/OpenMetrics-Text; Version=1.0.0"), OpenMetrics),
            (Some("application/openmetrics-text; version=0.0.1; charset=utf-8"), OpenMetrics),
            // Asked, but liked less than the text format, or refused (q=0), or a version
            // tracer does not write: the text format.
            (Some("application/openmetrics-text;q=0.2, text/plain;q=0.9"), PrometheusText),
            (Some("application/openmetrics-text;q=0"), PrometheusText),
            (Some("application/openmetrics-text;q=nonsense"), PrometheusText),
            (Some("application/openmetrics-text;version=2.0.0"), PrometheusText),
            (Some("text/plain;q=0.5, application/openmetrics-text;q=0.9"), OpenMetrics),
        ] {
            assert_eq!(Format::negotiate(accept), want, "Accept: {accept:?}");
        }
        assert_eq!(accept_header("GET /metrics HTTP/1.1\r\nHost: x\r\nACCEPT: a/b\r\naccept: c/d\r\n\r\n").as_deref(), Some("a/b,c/d"));
        assert_eq!(accept_header("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nAccept: body/not-a-header"), None);
        let om = String::from_utf8(respond(format!("GET /metrics HTTP/1.1\r\nAccept: {PROMETHEUS_ACCEPT}\r\n\r\n").as_bytes(), |f| {
            assert_eq!(f, OpenMetrics);
            "# EOF\n".into()
        }))
        .unwrap();
        assert!(om.contains("Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"), "{om}");
    }

    /// Every metric with something in it, as after a real trace.
    fn populated() -> Metrics {
        let m = Metrics::new();
        let (mut f, a) = engine_sample("nginx");
        f.queue = Some(Queue { len: 3, max: 2 });
        let mut late = a.clone();
        late.outcome = Outcome::Delayed;
        m.observe(&[Update::Finding(f), Update::Attempt(a), Update::Attempt(late)], |_| Some("backend".into()));
        m.observe_health(
            &[(crate::event::RecordKind(tracer_common::EventKind::TcpAttemptFailed), 4)].into(),
            &[(crate::event::RecordKind(tracer_common::EventKind::TcpAttemptFailed), 1)].into(),
            &[("sock:inet_sock_set_state".to_string(), true)],
        );
        m
    }

    /// The lint a scraper relies on, in either format: every sample belongs to a family with
    /// HELP and TYPE, counters' samples end in `_total`. Returns the families seen.
    fn lint(text: &str, format: Format) -> Vec<String> {
        let mut families: Vec<(String, String, bool)> = Vec::new(); // name, type, has help
        let mut helped: Vec<String> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.push(rest.split(' ').next().unwrap().to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                families.push((name.to_string(), kind.to_string(), helped.iter().any(|h| h == name)));
            } else if line.starts_with('#') {
                assert!(format == Format::OpenMetrics && (line == "# EOF" || line.starts_with("# UNIT")), "stray comment {line:?}:\n{text}");
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                let (family, kind, has_help) = families.last().unwrap_or_else(|| panic!("{name} before any TYPE:\n{text}"));
                assert!(*has_help, "{family} has no HELP:\n{text}");
                match (format, kind.as_str()) {
                    (Format::OpenMetrics, "counter") => assert_eq!(name, format!("{family}_total"), "{text}"),
                    (Format::PrometheusText, "counter") => {
                        assert!(family.ends_with("_total") && name == family, "counter family {family}, sample {name}:\n{text}")
                    }
                    _ => assert_eq!(name, family, "{text}"),
                }
            }
        }
        match format {
            Format::OpenMetrics => assert!(text.ends_with("# EOF\n"), "{text}"),
            Format::PrometheusText => assert!(!text.contains("# EOF"), "{text}"),
        }
        families.into_iter().map(|(n, _, _)| n).collect()
    }

    #[test]
    fn both_formats_give_every_family_help_and_type() {
        let m = populated();
        let om = m.render(Format::OpenMetrics);
        let text = m.render(Format::PrometheusText);
        println!("{text}");
        let om_families = lint(&om, Format::OpenMetrics);
        let text_families = lint(&text, Format::PrometheusText);
        assert!(om_families.contains(&"tracer_events".to_string()), "{om}");
        for counter in ["tracer_events_total", "tracer_failed_connections_total", "tracer_lost_events_total", "tracer_series_folded_total"] {
            assert!(text.contains(&format!("# TYPE {counter} counter\n")), "{counter}:\n{text}");
            assert!(text.contains(&format!("# HELP {counter} ")), "{counter}:\n{text}");
        }
        assert_eq!(text_families.len(), om_families.len(), "the same families:\n{om}\n{text}");
        // The samples themselves are the same lines in both.
        let samples = |s: &str| s.lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect::<Vec<_>>();
        assert_eq!(samples(&om), samples(&text));
        assert!(text.contains("\ntracer_events_total 4\n") && text.contains(r#"tracer_series_folded_total{label="target"} 0"#), "{text}");
    }

    /// `promtool check metrics` (the Prometheus project's linter) on the text format. Skips,
    /// saying why, where promtool is not installed (`cargo xtask setup` installs it).
    #[test]
    fn promtool_accepts_the_text_format() {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        let mut child = match Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                println!("skipped: promtool is not installed ({e}; `cargo xtask setup` installs the prometheus package)");
                return;
            }
        };
        let text = populated().render(Format::PrometheusText);
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{text}");
    }

    #[test]
    fn targets_beyond_the_cap_are_folded_into_other_and_counted() {
        let m = Metrics::with_caps(3, 2);
        let (_, a) = engine_sample("nginx");
        let attempt = |port: u16, comm: &str| {
            let mut a = a.clone();
            a.cause = Cause::DeadListener;
            a.target = Target::Tcp(format!("127.0.0.1:{port}").parse().unwrap());
            a.client.comm = comm.into();
            a
        };
        // 6 targets, two attempts each; 3 comms.
        for port in 9001..=9006 {
            m.observe_attempt(&attempt(port, "nginx"));
            m.observe_attempt(&attempt(port, "nginx"));
        }
        m.observe_attempt(&attempt(9001, "curl"));
        m.observe_attempt(&attempt(9001, "python3"));
        m.observe_attempt(&attempt(9001, "python3"));
        // A folded target's queue is not exported; a kept one's is.
        let (mut f, _) = engine_sample("nginx");
        f.queue = Some(Queue { len: 1, max: 1 });
        f.target = Target::Tcp("127.0.0.1:9006".parse().unwrap());
        m.observe_finding(&f, None);
        f.target = Target::Tcp("127.0.0.1:9002".parse().unwrap());
        m.observe_finding(&f, None);
        let text = m.render(Format::PrometheusText);
        println!("{text}");
        let series = |target: &str, comm: &str| {
            format!(r#"tracer_failed_connections_total{{cause="dead_listener",target="{target}",upstream="",client_comm="{comm}"}}"#)
        };
        for port in 9001..=9003 {
            assert!(text.contains(&format!("{} 2\n", series(&format!("127.0.0.1:{port}"), "nginx"))), "{port}:\n{text}");
            assert!(m.target_kept(&format!("127.0.0.1:{port}")));
        }
        // 9004..9006: 3 targets x 2 attempts, in one series.
        assert!(text.contains(&format!("{} 6\n", series("other", "nginx"))), "{text}");
        assert!(!text.contains("127.0.0.1:9004") && !text.contains("127.0.0.1:9006"), "{text}");
        assert!(text.contains(&format!("{} 1\n", series("127.0.0.1:9001", "curl"))), "{text}");
        assert!(text.contains(&format!("{} 2\n", series("127.0.0.1:9001", "other"))), "python3 is the third comm:\n{text}");
        // Each folded value counted once, however often it came.
        assert!(text.contains("tracer_series_folded_total{label=\"target\"} 3\n"), "{text}");
        assert!(text.contains("tracer_series_folded_total{label=\"client_comm\"} 1\n"), "{text}");
        assert!(text.contains(r#"tracer_listener_queue_length{target="127.0.0.1:9002"} 1"#), "{text}");
        assert!(!text.contains(r#"tracer_listener_queue_length{target="other"}"#), "{text}");
        // The documented caps.
        assert_eq!((MAX_TARGETS, MAX_CLIENT_COMMS), (200, 50));
        assert!(text.contains("# HELP tracer_series_folded_total Distinct label values counted under the value other because the label reached its cap (3 targets, 2 client commands)."), "{text}");
    }

    /// `:PORT` answers on 127.0.0.1 and on ::1 (one dual-stack socket).
    #[tokio::test]
    async fn every_address_is_dual_stack() {
        if !std::path::Path::new("/proc/net/if_inet6").exists() {
            println!("skipped: this kernel has no IPv6 (bind falls back to 0.0.0.0)");
            return;
        }
        let addr = parse_addr(":0").unwrap();
        let listener = bind(addr).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listener.local_addr().unwrap().is_ipv6(), "{:?}", listener.local_addr());
        let server = spawn_server(listener, populated().registry());
        for ip in ["127.0.0.1", "[::1]"] {
            let to: SocketAddr = format!("{ip}:{port}").parse().unwrap();
            let mut s = TcpStream::connect(to).await.unwrap_or_else(|e| panic!("connect {to}: {e}"));
            s.write_all(b"GET /metrics HTTP/1.1\r\nAccept: text/plain\r\n\r\n").await.unwrap();
            let mut resp = String::new();
            s.read_to_string(&mut resp).await.unwrap();
            assert!(resp.starts_with("HTTP/1.1 200 OK") && resp.contains("\ntracer_events_total 4\n"), "{to}: {resp}");
        }
        server.abort();
        assert!(ipv6_unavailable(&std::io::Error::from_raw_os_error(libc::EAFNOSUPPORT)));
        assert!(!ipv6_unavailable(&std::io::Error::from_raw_os_error(libc::EADDRINUSE)));
    }
}
