//! Nginx configuration: the pure part. Tokenizes nginx's syntax, follows `include`s through a
//! caller-supplied file reader, and extracts every upstream target (`proxy_pass`,
//! `uwsgi_pass`, `fastcgi_pass`, `scgi_pass`, `grpc_pass`, `upstream { server ... }`) with the
//! upstream name, the line that configures it and the read timeout Nginx applies to it, plus
//! the `error_log` files.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::event::Target;

/// One configured upstream target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfiguredTarget {
    pub target: Target,
    /// The `upstream` block's name, or the `*_pass` argument when it names the server itself.
    pub upstream: String,
    /// The directive as written, e.g. `server 127.0.0.1:8000 max_fails=3;`.
    pub line: String,
    /// `file:line` of that directive.
    pub place: String,
    /// How long Nginx waits for the target's response (`proxy_read_timeout`, or the
    /// `uwsgi_`/`fastcgi_`/`scgi_`/`grpc_` one, as the location passing to it inherits it), in
    /// ms. For an `upstream` block's server, the smallest among the locations passing to that
    /// block. None: unknown (an upstream no location names, a `stream` proxy).
    pub read_timeout_ms: Option<u64>,
}

/// What one Nginx configuration says about upstreams and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NginxConfig {
    pub targets: Vec<ConfiguredTarget>,
    /// `error_log` files (absolute, as nginx would open them).
    pub error_logs: Vec<String>,
}

impl NginxConfig {
    /// Configured targets for `target` (a wildcard-free exact match).
    pub fn lookup(&self, target: &Target) -> Option<&ConfiguredTarget> {
        self.targets.iter().find(|t| &t.target == target)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Token {
    text: String,
    /// `;`, `{` or `}` as structure; quoted words are never structure.
    punct: bool,
    line: usize,
}

fn tokenize(src: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = src.chars().peekable();
    let mut line = 1;
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                while let Some(&c) = chars.peek() {
                    if c == '\n' {
                        break;
                    }
                    chars.next();
                }
            }
            ';' | '{' | '}' => {
                out.push(Token { text: c.to_string(), punct: true, line });
                chars.next();
            }
            '"' | '\'' => {
                let quote = c;
                chars.next();
                let mut word = String::new();
                let start = line;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                word.push(n);
                            }
                        }
                        c if c == quote => break,
                        '\n' => {
                            line += 1;
                            word.push(c);
                        }
                        c => word.push(c),
                    }
                }
                out.push(Token { text: word, punct: false, line: start });
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || c == ';' || c == '{' || c == '}' {
                        break;
                    }
                    // `${var}` inside a word is not structure.
                    if c == '$' {
                        word.push(c);
                        chars.next();
                        if chars.peek() == Some(&'{') {
                            for c in chars.by_ref() {
                                word.push(c);
                                if c == '}' {
                                    break;
                                }
                            }
                        }
                        continue;
                    }
                    word.push(c);
                    chars.next();
                }
                out.push(Token { text: word, punct: false, line });
            }
        }
    }
    out
}

/// A directive: its words, whether it opens a block, and where it is.
struct Directive {
    words: Vec<String>,
    block: bool,
    line: usize,
}

/// Reads config files for the parser (inside a master's root in production, a map in tests).
pub trait ConfigFiles {
    /// A file's text, or why it cannot be read (never its contents).
    fn read(&self, path: &str) -> Result<String, String>;
    /// Paths matching an `include` pattern (wildcards in the last component), sorted.
    fn glob(&self, pattern: &str) -> Vec<String>;
}

/// What a configuration gave: everything that parsed, and each file that did not, with why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub config: NginxConfig,
    /// `file:line: what` for each file that could not be read or parsed. Nginx may still
    /// run an older version of that file; the rest of the configuration is still used.
    pub errors: Vec<String>,
}

/// Parses the configuration rooted at `main_conf`, with `prefix` for relative paths. A file
/// that does not parse is reported and skipped from its error on; the others still count.
pub fn parse(files: &dyn ConfigFiles, main_conf: &str, prefix: &str) -> Parsed {
    let mut cfg = NginxConfig::default();
    let conf_dir = main_conf.rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_else(|| ".".into());
    let mut p = Parser {
        files,
        conf_dir,
        prefix: prefix.to_string(),
        cfg: &mut cfg,
        depth: 0,
        stack: Vec::new(),
        errors: Vec::new(),
        files_read: 0,
        bytes_read: 0,
        including: Vec::new(),
        scopes: vec![Scope { parent: 0, read_timeouts: [None; PASS_KINDS.len()] }],
        passes: Vec::new(),
        timeout_sources: Vec::new(),
    };
    p.file(main_conf, true);
    p.fill_read_timeouts();
    let errors = p.errors;
    Parsed { config: cfg, errors }
}

/// Include nesting deeper than this is a loop (a file including itself).
const MAX_INCLUDE_DEPTH: usize = 32;
/// Blocks nested deeper than this are not a real configuration (and would exhaust the stack).
const MAX_BLOCK_DEPTH: usize = 64;
/// More files than this is not a configuration anyone wrote by hand.
const MAX_FILES: usize = 4096;
/// Bytes tokenized per configuration, all includes counted: a large file that includes itself
/// would otherwise be tokenized MAX_FILES times (gigabytes) and its targets copied as often.
const MAX_TOTAL_BYTES: usize = 32 << 20;
/// Errors kept per configuration (each distinct): an include loop repeats the same ones.
const MAX_ERRORS: usize = 64;

/// The `*_pass` directives and the directive that sets how long each waits for a response.
const PASS_KINDS: [(&str, &str); 5] = [
    ("proxy_pass", "proxy_read_timeout"),
    ("uwsgi_pass", "uwsgi_read_timeout"),
    ("fastcgi_pass", "fastcgi_read_timeout"),
    ("scgi_pass", "scgi_read_timeout"),
    ("grpc_pass", "grpc_read_timeout"),
];
/// Nginx's default for every `*_read_timeout`.
const DEFAULT_READ_TIMEOUT_MS: u64 = 60_000;
/// The blocks whose `*_read_timeout` their inner blocks inherit (the innermost setting wins).
const TIMEOUT_SCOPES: &[&str] = &["http", "server", "location", "if", "limit_except"];

/// One block `*_read_timeout` directives can be set in: what it sets itself, by `PASS_KINDS`
/// index, and the block it inherits from (scopes are numbered in the order they open, so a
/// parent always comes before its children; the root is its own parent).
struct Scope {
    parent: usize,
    read_timeouts: [Option<u64>; PASS_KINDS.len()],
}

/// A `*_pass` directive as far as timeouts go.
struct Pass {
    /// The name it passes to (`backend` for `proxy_pass http://backend/x`); None when it is
    /// resolved at request time (a variable), so it may name any upstream block.
    name: Option<String>,
    kind: usize,
    scope: usize,
    /// Inside `stream { }`: no read timeout in the http sense.
    stream: bool,
}

/// Where a configured target's read timeout comes from (one per `cfg.targets` entry).
enum TimeoutSource {
    /// The pass that names the target itself (an index into `passes`).
    Pass(usize),
    /// A server of the `upstream` block of this name: the locations that pass to it.
    Upstream { name: String, stream: bool },
}

struct Parser<'a> {
    files: &'a dyn ConfigFiles,
    conf_dir: String,
    prefix: String,
    cfg: &'a mut NginxConfig,
    /// Include nesting.
    depth: usize,
    /// Enclosing blocks: (directive name, first argument, index of their timeout scope).
    stack: Vec<(String, String, usize)>,
    errors: Vec<String>,
    files_read: usize,
    bytes_read: usize,
    /// The files being parsed, outermost first (an include of one of them is a loop).
    including: Vec<String>,
    /// Timeout scopes; 0 is the configuration's top level.
    scopes: Vec<Scope>,
    passes: Vec<Pass>,
    /// Per `cfg.targets` entry, where its read timeout comes from (resolved once the whole
    /// configuration is read: a timeout set after a location still applies to it).
    timeout_sources: Vec<TimeoutSource>,
}

impl Parser<'_> {
    /// Parses one file; its errors are recorded, never propagated: a broken include does not
    /// take the rest of the configuration with it.
    fn file(&mut self, path: &str, required: bool) {
        if self.including.iter().any(|p| p == path) {
            self.error(format!("{path}: includes itself (an include loop); not followed again"));
            return;
        }
        if self.depth >= MAX_INCLUDE_DEPTH {
            self.error(format!("{path}: includes nested deeper than {MAX_INCLUDE_DEPTH} (an include loop?)"));
            return;
        }
        if self.files_read >= MAX_FILES {
            self.error(format!("{path}: more than {MAX_FILES} files included; the rest are skipped"));
            return;
        }
        if self.bytes_read >= MAX_TOTAL_BYTES {
            // Not even read: reading is work too (up to MAX_CONFIG_BYTES a file).
            self.error(format!("{path}: more than {} MiB of configuration included; the rest is skipped", MAX_TOTAL_BYTES >> 20));
            return;
        }
        self.files_read += 1;
        let src = match self.files.read(path) {
            Ok(src) => src,
            Err(why) => {
                if required {
                    self.error(format!("cannot read {path}: {why}"));
                }
                return;
            }
        };
        self.bytes_read += src.len();
        if self.bytes_read > MAX_TOTAL_BYTES {
            self.error(format!("{path}: more than {} MiB of configuration included; the rest is skipped", MAX_TOTAL_BYTES >> 20));
            return;
        }
        let tokens = tokenize(&src);
        let mut i = 0;
        self.depth += 1;
        self.including.push(path.to_string());
        // The blocks this file opens are closed by this file: an error leaves them.
        let stack_len = self.stack.len();
        if let Err(e) = self.block(path, &tokens, &mut i, 0) {
            self.error(e);
        }
        self.stack.truncate(stack_len);
        self.including.pop();
        self.depth -= 1;
    }

    /// Records an error once, and no more than MAX_ERRORS of them.
    fn error(&mut self, e: String) {
        if self.errors.len() < MAX_ERRORS && !self.errors.contains(&e) {
            self.errors.push(e);
        }
    }

    fn block(&mut self, path: &str, tokens: &[Token], i: &mut usize, depth: usize) -> Result<(), String> {
        if depth > MAX_BLOCK_DEPTH {
            let line = tokens.get(*i).map(|t| t.line).unwrap_or(0);
            return Err(format!("{path}:{line}: blocks nested deeper than {MAX_BLOCK_DEPTH}"));
        }
        loop {
            let Some(d) = next_directive(tokens, i, path)? else {
                if depth > 0 {
                    return Err(format!("{path}: unexpected end of file, expecting \"}}\""));
                }
                return Ok(());
            };
            if d.words.is_empty() {
                // A closing brace.
                if depth == 0 {
                    return Err(format!("{path}:{}: unexpected \"}}\"", d.line));
                }
                return Ok(());
            }
            self.directive(path, &d)?;
            if d.block {
                let name = d.words[0].clone();
                let arg = d.words.get(1).cloned().unwrap_or_default();
                let scope = if TIMEOUT_SCOPES.contains(&name.as_str()) {
                    self.scopes.push(Scope { parent: self.scope(), read_timeouts: [None; PASS_KINDS.len()] });
                    self.scopes.len() - 1
                } else {
                    self.scope()
                };
                self.stack.push((name, arg, scope));
                self.block(path, tokens, i, depth + 1)?;
                self.stack.pop();
            }
        }
    }

    fn resolve(&self, p: &str, relative_to_conf: bool) -> String {
        if p.starts_with('/') {
            p.to_string()
        } else if relative_to_conf {
            format!("{}/{p}", self.conf_dir)
        } else {
            format!("{}/{p}", self.prefix.trim_end_matches('/'))
        }
    }

    fn directive(&mut self, path: &str, d: &Directive) -> Result<(), String> {
        let name = d.words[0].as_str();
        let place = format!("{path}:{}", d.line);
        let written = format!("{};", d.words.join(" "));
        match name {
            "include" if d.words.len() >= 2 => {
                let pattern = self.resolve(&d.words[1], true);
                if pattern.contains(['*', '?', '[']) {
                    for f in self.files.glob(&pattern) {
                        self.file(&f, false);
                    }
                } else {
                    self.file(&pattern, true);
                }
            }
            "error_log" if d.words.len() >= 2 => {
                let f = &d.words[1];
                if f != "stderr" && !f.starts_with("syslog:") && !f.starts_with("memory:") && f != "/dev/null" {
                    let abs = self.resolve(f, false);
                    if !self.cfg.error_logs.contains(&abs) {
                        self.cfg.error_logs.push(abs);
                    }
                }
            }
            "server" if d.words.len() >= 2 && self.inside("upstream").is_some() => {
                let upstream = self.inside("upstream").unwrap_or_default();
                let stream = self.inside("stream").is_some();
                for target in targets_of_address(&d.words[1], 80) {
                    self.cfg.targets.push(ConfiguredTarget {
                        target,
                        upstream: upstream.clone(),
                        line: written.clone(),
                        place: place.clone(),
                        read_timeout_ms: None,
                    });
                    self.timeout_sources.push(TimeoutSource::Upstream { name: upstream.clone(), stream });
                }
            }
            "proxy_pass" | "uwsgi_pass" | "fastcgi_pass" | "scgi_pass" | "grpc_pass" if d.words.len() >= 2 => {
                let arg = &d.words[1];
                let (addr, default_port) = strip_scheme(arg);
                let kind = PASS_KINDS.iter().position(|(pass, _)| *pass == name).unwrap_or(0);
                let stream = self.inside("stream").is_some();
                // Variables are resolved only at request time: the pass may reach any upstream
                // block (its timeout counts for all of them), and adds no target of its own.
                let variable = addr.contains('$');
                self.passes.push(Pass { name: (!variable).then(|| addr.to_string()), kind, scope: self.scope(), stream });
                if variable {
                    return Ok(());
                }
                // `proxy_pass http://backend` names an upstream block: its servers carry the
                // targets.
                let pass = self.passes.len() - 1;
                let targets = targets_of_address(addr, default_port);
                for target in targets {
                    self.cfg.targets.push(ConfiguredTarget {
                        target,
                        upstream: arg.clone(),
                        line: written.clone(),
                        place: place.clone(),
                        read_timeout_ms: None,
                    });
                    self.timeout_sources.push(TimeoutSource::Pass(pass));
                }
            }
            _ if d.words.len() == 2 && PASS_KINDS.iter().any(|(_, timeout)| *timeout == name) => {
                // A value nginx would refuse is ignored: the inherited one stays.
                let kind = PASS_KINDS.iter().position(|(_, timeout)| *timeout == name).unwrap_or(0);
                if let Some(ms) = parse_time_ms(&d.words[1]) {
                    let scope = self.scope();
                    self.scopes[scope].read_timeouts[kind] = Some(ms);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The argument of the innermost enclosing block named `name`.
    fn inside(&self, name: &str) -> Option<String> {
        self.stack.iter().rev().find(|(n, _, _)| n == name).map(|(_, a, _)| a.clone())
    }

    /// The timeout scope directives here belong to.
    fn scope(&self) -> usize {
        self.stack.last().map(|(_, _, s)| *s).unwrap_or(0)
    }

    /// Gives every configured target its read timeout, once the whole configuration is read
    /// (nginx merges a block's settings into its inner blocks after parsing, so the order of
    /// directives does not matter). Linear in the configuration's size.
    fn fill_read_timeouts(&mut self) {
        // The effective timeouts of each scope: its own, else its parent's (parents first).
        let mut effective: Vec<[u64; PASS_KINDS.len()]> = Vec::with_capacity(self.scopes.len());
        for s in &self.scopes {
            let inherited = effective.get(s.parent).copied().unwrap_or([DEFAULT_READ_TIMEOUT_MS; PASS_KINDS.len()]);
            let mut own = inherited;
            for (k, t) in s.read_timeouts.iter().enumerate() {
                if let Some(t) = t {
                    own[k] = *t;
                }
            }
            effective.push(own);
        }
        let timeout_of = |p: &Pass| (!p.stream).then(|| effective[p.scope][p.kind]);
        // An upstream block serves every location that passes to it: the smallest of their
        // timeouts is the one a close after which may be a timeout. A pass through a variable
        // may name any block.
        let mut by_name: HashMap<&str, u64> = HashMap::new();
        let mut any_name: Option<u64> = None;
        for p in &self.passes {
            let Some(t) = timeout_of(p) else { continue };
            match &p.name {
                Some(name) => {
                    let e = by_name.entry(name.as_str()).or_insert(t);
                    *e = (*e).min(t);
                }
                None => any_name = Some(any_name.map_or(t, |a| a.min(t))),
            }
        }
        for (target, source) in self.cfg.targets.iter_mut().zip(&self.timeout_sources) {
            target.read_timeout_ms = match source {
                TimeoutSource::Pass(i) => self.passes.get(*i).and_then(timeout_of),
                TimeoutSource::Upstream { stream: true, .. } => None,
                TimeoutSource::Upstream { name, stream: false } => match (by_name.get(name.as_str()), any_name) {
                    (Some(t), Some(a)) => Some((*t).min(a)),
                    (Some(t), None) => Some(*t),
                    // Only variables may name it: their timeouts, the smallest.
                    (None, a) => a,
                },
            };
        }
    }
}

/// An nginx time (`30s`, `500ms`, `1m30s`, `1h`, a plain number = seconds) in ms; None for
/// anything nginx would refuse, or too large to count.
pub fn parse_time_ms(value: &str) -> Option<u64> {
    const UNITS: [(&str, u64); 8] = [
        ("ms", 1),
        ("s", 1_000),
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
        ("w", 604_800_000),
        ("M", 2_592_000_000),
        ("y", 31_536_000_000),
    ];
    let mut rest = value.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        // "ms" before "m": the longest unit that matches.
        let (unit_len, scale) = match UNITS.iter().find(|(u, _)| rest.starts_with(u)) {
            Some((u, scale)) => (u.len(), *scale),
            // A bare number is seconds, and only as the last part.
            None if rest.is_empty() => (0, 1_000),
            None => return None,
        };
        rest = rest[unit_len..].trim_start();
        total = total.checked_add(n.checked_mul(scale)?)?;
    }
    Some(total)
}

fn next_directive(tokens: &[Token], i: &mut usize, path: &str) -> Result<Option<Directive>, String> {
    let mut words = Vec::new();
    let mut line = 0;
    while let Some(t) = tokens.get(*i) {
        *i += 1;
        if t.punct {
            match t.text.as_str() {
                ";" => return Ok(Some(Directive { words, block: false, line })),
                "{" => {
                    if words.is_empty() {
                        return Err(format!("{path}:{}: unexpected \"{{\"", t.line));
                    }
                    return Ok(Some(Directive { words, block: true, line }));
                }
                _ => {
                    if !words.is_empty() {
                        return Err(format!("{path}:{}: unexpected \"}}\" (missing \";\"?)", t.line));
                    }
                    return Ok(Some(Directive { words: Vec::new(), block: false, line: t.line }));
                }
            }
        }
        if words.is_empty() {
            line = t.line;
        }
        words.push(t.text.clone());
    }
    if !words.is_empty() {
        return Err(format!("{path}:{line}: unexpected end of file, expecting \";\" or \"}}\""));
    }
    Ok(None)
}

/// `http://127.0.0.1:8000/x` -> (`127.0.0.1:8000`, 80); `unix:/p` stays as is.
fn strip_scheme(arg: &str) -> (&str, u16) {
    for (scheme, port) in [("http://", 80), ("https://", 443), ("grpc://", 80), ("grpcs://", 443)] {
        if let Some(rest) = arg.strip_prefix(scheme) {
            if rest.starts_with("unix:") {
                // `http://unix:/path:/uri`: the path ends at the next ':'.
                let after = &rest[5..];
                let end = after.find(':').map(|e| e + 5).unwrap_or(rest.len());
                return (&rest[..end], port);
            }
            let end = rest.find('/').unwrap_or(rest.len());
            return (&rest[..end], port);
        }
    }
    (arg, 80)
}

/// The targets an address names: `unix:/path`, `1.2.3.4[:port]`, `[::1][:port]`,
/// `localhost[:port]` (both loopbacks). Other host names are not resolved: nginx resolved them
/// at start-up, and tracer will see the addresses it uses in the failures themselves.
pub fn targets_of_address(addr: &str, default_port: u16) -> Vec<Target> {
    if let Some(p) = addr.strip_prefix("unix:") {
        return vec![Target::Unix(p.to_string())];
    }
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return vec![Target::Tcp(sa)];
    }
    if let Ok(ip) = addr.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return vec![Target::Tcp(SocketAddr::new(ip, default_port))];
    }
    let (host, port) = match addr.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(p) => (h, p),
            Err(_) => return Vec::new(),
        },
        None => (addr, default_port),
    };
    if host == "localhost" {
        return vec![
            Target::Tcp(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
            Target::Tcp(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port)),
        ];
    }
    Vec::new()
}

/// A target as nginx writes it in an error log's `upstream: "..."` field
/// (`http://127.0.0.1:8000/`, `http://unix:/run/g.sock:/`, `fastcgi://127.0.0.1:9000`).
pub fn target_of_log_url(url: &str) -> Option<Target> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    // Every scheme writes its address the same way after "://": reuse the http parsing.
    let normalized = format!("http://{rest}");
    let (addr, port) = strip_scheme(&normalized);
    targets_of_address(addr, port).into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Files(HashMap<&'static str, &'static str>);
    impl ConfigFiles for Files {
        fn read(&self, path: &str) -> Result<String, String> {
            self.0.get(path).map(|s| s.to_string()).ok_or_else(|| "No such file or directory".into())
        }
        fn glob(&self, pattern: &str) -> Vec<String> {
            let (dir, file_pattern) = pattern.rsplit_once('/').unwrap();
            let mut v: Vec<String> = self
                .0
                .keys()
                .filter_map(|k| k.strip_prefix(dir).and_then(|r| r.strip_prefix('/')))
                .filter(|name| !name.contains('/') && crate::nginx::glob_match(file_pattern, name))
                .map(|name| format!("{dir}/{name}"))
                .collect();
            v.sort();
            v
        }
    }

    const MAIN: &str = r#"
user www-data;
error_log /var/log/nginx/error.log;
events { worker_connections 768; }
http {
    include /etc/nginx/conf.d/*.conf;
    upstream backend {
        server 127.0.0.1:8000 max_fails=3;   # gunicorn
        server unix:/run/gunicorn/gunicorn.sock;
    }
}
"#;
    const SITE: &str = r#"
server {
    listen 80;
    location / { proxy_pass http://backend; }
    location /api/ { proxy_pass http://127.0.0.1:9000/api/; }
    location /legacy { uwsgi_pass unix:/run/uwsgi.sock; }
    location /php { fastcgi_pass 127.0.0.1:9001; }
    location /six { proxy_pass http://[::1]:7000; }
    location /local { proxy_pass http://localhost:7100; }
    location /var { proxy_pass http://$host:1; }
    location /sock { proxy_pass http://unix:/run/app.sock:/; }
}
"#;

    fn cfg() -> NginxConfig {
        let files = Files(HashMap::from([("/etc/nginx/nginx.conf", MAIN), ("/etc/nginx/conf.d/site.conf", SITE)]));
        let parsed = parse(&files, "/etc/nginx/nginx.conf", "/usr/share/nginx");
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        parsed.config
    }

    fn t(s: &str) -> Target {
        match s.strip_prefix("unix:") {
            Some(p) => Target::Unix(p.into()),
            None => Target::Tcp(s.parse().unwrap()),
        }
    }

    #[test]
    fn maps_every_kind_of_target_to_its_upstream_and_line() {
        let c = cfg();
        let up = c.lookup(&t("127.0.0.1:8000")).expect("upstream server");
        assert_eq!(up.upstream, "backend");
        assert_eq!(up.line, "server 127.0.0.1:8000 max_fails=3;");
        assert_eq!(up.place, "/etc/nginx/nginx.conf:8");
        assert_eq!(c.lookup(&t("unix:/run/gunicorn/gunicorn.sock")).unwrap().upstream, "backend");
        let api = c.lookup(&t("127.0.0.1:9000")).unwrap();
        assert_eq!(api.upstream, "http://127.0.0.1:9000/api/");
        assert_eq!(api.place, "/etc/nginx/conf.d/site.conf:5");
        assert!(c.lookup(&t("unix:/run/uwsgi.sock")).is_some());
        assert!(c.lookup(&t("127.0.0.1:9001")).is_some());
        assert!(c.lookup(&t("[::1]:7000")).is_some());
        assert!(c.lookup(&t("127.0.0.1:7100")).is_some() && c.lookup(&t("[::1]:7100")).is_some());
        assert!(c.lookup(&t("unix:/run/app.sock")).is_some());
        // `proxy_pass http://backend` adds no target of its own; `$host` is skipped.
        assert_eq!(c.targets.len(), 9, "{:#?}", c.targets);
        assert_eq!(c.error_logs, ["/var/log/nginx/error.log"]);
    }

    #[test]
    fn reports_syntax_errors_with_file_and_line() {
        let files = Files(HashMap::from([("/c/nginx.conf", "http {\n server { listen 80 }\n")]));
        let errors = parse(&files, "/c/nginx.conf", "/").errors;
        assert!(errors.len() == 1 && errors[0].contains("/c/nginx.conf:2"), "{errors:?}");
        let files = Files(HashMap::from([("/c/nginx.conf", "http {\n")]));
        assert!(parse(&files, "/c/nginx.conf", "/").errors[0].contains("end of file"));
        let files = Files(HashMap::new());
        assert!(parse(&files, "/c/nginx.conf", "/").errors[0].contains("cannot read /c/nginx.conf"));
    }

    #[test]
    fn a_broken_include_costs_only_itself() {
        // An editor's lock file (never included by nginx) and a half-edited site beside a
        // good one: the good site and the main file's upstream still count, the broken
        // file is named.
        let files = Files(HashMap::from([
            ("/etc/nginx/nginx.conf", MAIN),
            ("/etc/nginx/conf.d/a-good.conf", "server { location / { proxy_pass http://127.0.0.1:9100; } }"),
            ("/etc/nginx/conf.d/b-broken.conf", "server { location / { proxy_pass http://127.0.0.1:9200 } }"),
            ("/etc/nginx/conf.d/.#draft.conf", "this is { not nginx"),
        ]));
        let parsed = parse(&files, "/etc/nginx/nginx.conf", "/usr/share/nginx");
        assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.errors);
        assert!(parsed.errors[0].starts_with("/etc/nginx/conf.d/b-broken.conf:1"), "{:?}", parsed.errors);
        let c = parsed.config;
        assert!(c.lookup(&t("127.0.0.1:9100")).is_some());
        assert!(c.lookup(&t("127.0.0.1:8000")).is_some(), "the upstream after the include still counts");
        assert_eq!(c.error_logs, ["/var/log/nginx/error.log"]);
    }

    #[test]
    fn include_loops_and_deep_nesting_end_with_an_error() {
        let files = Files(HashMap::from([("/c/nginx.conf", "include /c/nginx.conf;")]));
        let errors = parse(&files, "/c/nginx.conf", "/").errors;
        assert_eq!(errors, ["/c/nginx.conf: includes itself (an include loop); not followed again"]);
        let deep: &'static str = Box::leak(format!("{}{}", "a {".repeat(100_000), "}".repeat(100_000)).into_boxed_str());
        let files = Files(HashMap::from([("/c/nginx.conf", deep)]));
        let errors = parse(&files, "/c/nginx.conf", "/").errors;
        assert!(errors.iter().any(|e| e.contains("blocks nested deeper")), "{errors:?}");
    }

    fn timeout_of(c: &NginxConfig, target: &str) -> Option<u64> {
        c.lookup(&t(target)).unwrap_or_else(|| panic!("{target} not configured: {c:#?}")).read_timeout_ms
    }

    #[test]
    fn nginx_times_parse_to_ms_and_garbage_to_none() {
        let cases: [(&str, Option<u64>); 14] = [
            ("30s", Some(30_000)),
            ("500ms", Some(500)),
            ("1m", Some(60_000)),
            ("1h", Some(3_600_000)),
            ("45", Some(45_000)),
            ("1m30s", Some(90_000)),
            ("1m 30s", Some(90_000)),
            ("1d", Some(86_400_000)),
            ("0", Some(0)),
            ("", None),
            ("s", None),
            ("30x", None),
            ("-5s", None),
            ("99999999999999999999s", None),
        ];
        for (text, ms) in cases {
            assert_eq!(parse_time_ms(text), ms, "{text:?}");
        }
    }

    #[test]
    fn read_timeouts_are_inherited_innermost_first_with_nginx_defaults() {
        let main = r#"
http {
    proxy_read_timeout 30s;
    server {
        location /a { proxy_pass http://127.0.0.1:9001; }
        location /b { proxy_read_timeout 500ms; proxy_pass http://127.0.0.1:9002; }
        location /c { fastcgi_pass 127.0.0.1:9003; }
        location /d { uwsgi_read_timeout 2m; uwsgi_pass unix:/run/d.sock; }
        location /e { grpc_pass grpc://127.0.0.1:9005; }
        location /f { scgi_pass 127.0.0.1:9006; scgi_read_timeout garbage; }
        location /g { if ($arg_x) { proxy_pass http://127.0.0.1:9007; } proxy_read_timeout 7s; }
    }
    server {
        # Set after the location: nginx merges at the end, the order does not matter.
        location / { proxy_pass http://127.0.0.1:9008; }
        proxy_read_timeout 1m30s;
    }
}
stream { server { proxy_pass 127.0.0.1:9009; } }
"#;
        let files = Files(HashMap::from([("/c/nginx.conf", main)]));
        let parsed = parse(&files, "/c/nginx.conf", "/");
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let c = parsed.config;
        assert_eq!(timeout_of(&c, "127.0.0.1:9001"), Some(30_000), "from http");
        assert_eq!(timeout_of(&c, "127.0.0.1:9002"), Some(500), "the location's own");
        assert_eq!(timeout_of(&c, "127.0.0.1:9003"), Some(60_000), "fastcgi_pass reads fastcgi_read_timeout: default");
        assert_eq!(timeout_of(&c, "unix:/run/d.sock"), Some(120_000));
        assert_eq!(timeout_of(&c, "127.0.0.1:9005"), Some(60_000), "grpc: default");
        assert_eq!(timeout_of(&c, "127.0.0.1:9006"), Some(60_000), "a garbage value is ignored");
        assert_eq!(timeout_of(&c, "127.0.0.1:9007"), Some(7_000), "an `if` inherits its location's");
        assert_eq!(timeout_of(&c, "127.0.0.1:9008"), Some(90_000), "from its server, set after it");
        assert_eq!(timeout_of(&c, "127.0.0.1:9009"), None, "a stream proxy has no read timeout");
    }

    #[test]
    fn an_upstream_servers_read_timeout_is_the_smallest_of_the_locations_passing_to_it() {
        let main = r#"
http {
    upstream app { server 127.0.0.1:8000; server unix:/run/app.sock; }
    upstream unused { server 127.0.0.1:8100; }
    upstream dynamic { server 127.0.0.1:8200; }
    upstream php { server 127.0.0.1:8300; }
    server {
        proxy_read_timeout 30s;
        location / { proxy_pass http://app; }
        location /slow { proxy_read_timeout 5m; proxy_pass http://app/slow; }
        location /quick { proxy_read_timeout 10s; proxy_pass http://app; }
        location /php { fastcgi_read_timeout 20s; fastcgi_pass php; }
    }
    server {
        listen 81;
        location / { proxy_read_timeout 45s; proxy_pass http://$arg_upstream; }
    }
}
"#;
        let files = Files(HashMap::from([("/c/nginx.conf", main)]));
        let parsed = parse(&files, "/c/nginx.conf", "/");
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let c = parsed.config;
        assert_eq!(timeout_of(&c, "127.0.0.1:8000"), Some(10_000));
        assert_eq!(timeout_of(&c, "unix:/run/app.sock"), Some(10_000));
        // A variable pass may reach any upstream block: its 45 s counts for those no literal
        // pass names smaller.
        assert_eq!(timeout_of(&c, "127.0.0.1:8100"), Some(45_000));
        assert_eq!(timeout_of(&c, "127.0.0.1:8200"), Some(45_000));
        assert_eq!(timeout_of(&c, "127.0.0.1:8300"), Some(20_000));
        // Without the variable pass, a block no location names has no known timeout.
        let main = "http { upstream unused { server 127.0.0.1:8100; } }";
        let files = Files(HashMap::from([("/c/nginx.conf", main)]));
        assert_eq!(timeout_of(&parse(&files, "/c/nginx.conf", "/").config, "127.0.0.1:8100"), None);
    }

    #[test]
    fn the_main_test_configuration_gets_default_timeouts() {
        let c = cfg();
        assert_eq!(timeout_of(&c, "127.0.0.1:8000"), Some(60_000));
        assert_eq!(timeout_of(&c, "unix:/run/uwsgi.sock"), Some(60_000));
        assert!(c.targets.iter().all(|t| t.read_timeout_ms == Some(60_000)), "{:#?}", c.targets);
    }

    #[test]
    fn log_urls_become_targets() {
        assert_eq!(target_of_log_url("http://127.0.0.1:8000/"), Some(t("127.0.0.1:8000")));
        assert_eq!(target_of_log_url("http://unix:/run/g.sock:/"), Some(t("unix:/run/g.sock")));
        assert_eq!(target_of_log_url("http://[::1]:8000/x"), Some(t("[::1]:8000")));
        assert_eq!(target_of_log_url("fastcgi://127.0.0.1:9000"), Some(t("127.0.0.1:9000")));
        assert_eq!(target_of_log_url("fastcgi://unix:/run/php.sock:"), Some(t("unix:/run/php.sock")));
    }
}
