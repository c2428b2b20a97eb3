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

/// Reads config files for the parser (through /proc/PID/root in production, a map in tests).
pub trait ConfigFiles {
    fn read(&self, path: &str) -> Option<String>;
    /// Paths matching an `include` pattern (only `*` in the last component needs support).
    fn glob(&self, pattern: &str) -> Vec<String>;
}

/// Parses the configuration rooted at `main_conf`, with `prefix` for relative paths.
pub fn parse(files: &dyn ConfigFiles, main_conf: &str, prefix: &str) -> Result<NginxConfig, String> {
    let mut cfg = NginxConfig::default();
    let conf_dir = main_conf.rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_else(|| ".".into());
    let mut p = Parser { files, conf_dir, prefix: prefix.to_string(), cfg: &mut cfg, depth_guard: 0, stack: Vec::new() };
    p.file(main_conf, true)?;
    Ok(cfg)
}

struct Parser<'a> {
    files: &'a dyn ConfigFiles,
    conf_dir: String,
    prefix: String,
    cfg: &'a mut NginxConfig,
    depth_guard: usize,
    /// Enclosing blocks: (directive name, first argument).
    stack: Vec<(String, String)>,
}

impl Parser<'_> {
    fn file(&mut self, path: &str, required: bool) -> Result<(), String> {
        self.depth_guard += 1;
        if self.depth_guard > 64 {
            return Err(format!("{path}: too many nested includes"));
        }
        let Some(src) = self.files.read(path) else {
            if required {
                return Err(format!("cannot read {path}"));
            }
            return Ok(());
        };
        let tokens = tokenize(&src);
        let mut i = 0;
        self.block(path, &tokens, &mut i, 0)?;
        self.depth_guard -= 1;
        Ok(())
    }

    fn block(&mut self, path: &str, tokens: &[Token], i: &mut usize, depth: usize) -> Result<(), String> {
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
                if pattern.contains('*') {
                    for f in self.files.glob(&pattern) {
                        self.file(&f, false)?;
                    }
                } else {
                    self.file(&pattern, true)?;
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
        fn read(&self, path: &str) -> Option<String> {
            self.0.get(path).map(|s| s.to_string())
        }
        fn glob(&self, pattern: &str) -> Vec<String> {
            let (dir, _) = pattern.rsplit_once('/').unwrap();
            let mut v: Vec<String> =
                self.0.keys().filter(|k| k.starts_with(dir) && k.ends_with(".conf")).map(|k| k.to_string()).collect();
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
        parse(&files, "/etc/nginx/nginx.conf", "/usr/share/nginx").expect("parses")
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
        let err = parse(&files, "/c/nginx.conf", "/").unwrap_err();
        assert!(err.contains("/c/nginx.conf:2"), "{err}");
        let files = Files(HashMap::from([("/c/nginx.conf", "http {\n")]));
        assert!(parse(&files, "/c/nginx.conf", "/").unwrap_err().contains("end of file"));
        let files = Files(HashMap::new());
        assert!(parse(&files, "/c/nginx.conf", "/").unwrap_err().contains("cannot read"));
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
