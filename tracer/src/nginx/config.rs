//! Nginx configuration: the pure part. Tokenizes nginx's syntax, follows `include`s through a
//! caller-supplied file reader, and extracts every upstream target (`proxy_pass`,
//! `uwsgi_pass`, `fastcgi_pass`, `scgi_pass`, `grpc_pass`, `upstream { server ... }`) with the
//! upstream name and the line that configures it, plus the `error_log` files.
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
    let mut p = Parser { files, conf_dir, prefix: prefix.to_string(), cfg: &mut cfg, depth: 0, stack: Vec::new(), errors: Vec::new(), files_read: 0, bytes_read: 0, including: Vec::new() };
    p.file(main_conf, true);
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

struct Parser<'a> {
    files: &'a dyn ConfigFiles,
    conf_dir: String,
    prefix: String,
    cfg: &'a mut NginxConfig,
    /// Include nesting.
    depth: usize,
    /// Enclosing blocks: (directive name, first argument).
    stack: Vec<(String, String)>,
    errors: Vec<String>,
    files_read: usize,
    bytes_read: usize,
    /// The files being parsed, outermost first (an include of one of them is a loop).
    including: Vec<String>,
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
                self.stack.push((name, arg));
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
                for target in targets_of_address(&d.words[1], 80) {
                    self.cfg.targets.push(ConfiguredTarget {
                        target,
                        upstream: upstream.clone(),
                        line: written.clone(),
                        place: place.clone(),
                    });
                }
            }
            "proxy_pass" | "uwsgi_pass" | "fastcgi_pass" | "scgi_pass" | "grpc_pass" if d.words.len() >= 2 => {
                let arg = &d.words[1];
                let (addr, default_port) = strip_scheme(arg);
                // `proxy_pass http://backend` names an upstream block: its servers carry the
                // targets. Variables are resolved only at request time: skip them.
                if addr.contains('$') {
                    return Ok(());
                }
                let targets = targets_of_address(addr, default_port);
                for target in targets {
                    self.cfg.targets.push(ConfiguredTarget {
                        target,
                        upstream: arg.clone(),
                        line: written.clone(),
                        place: place.clone(),
                    });
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The argument of the innermost enclosing block named `name`.
    fn inside(&self, name: &str) -> Option<String> {
        self.stack.iter().rev().find(|(n, _)| n == name).map(|(_, a)| a.clone())
    }
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

    #[test]
    fn log_urls_become_targets() {
        assert_eq!(target_of_log_url("http://127.0.0.1:8000/"), Some(t("127.0.0.1:8000")));
        assert_eq!(target_of_log_url("http://unix:/run/g.sock:/"), Some(t("unix:/run/g.sock")));
        assert_eq!(target_of_log_url("http://[::1]:8000/x"), Some(t("[::1]:8000")));
        assert_eq!(target_of_log_url("fastcgi://127.0.0.1:9000"), Some(t("127.0.0.1:9000")));
        assert_eq!(target_of_log_url("fastcgi://unix:/run/php.sock:"), Some(t("unix:/run/php.sock")));
    }
}
