//! Property-based fuzzing (proptest) of the two parsers that read what other users write: the
//! Nginx configuration parser (`config::parse`, through `ConfigFiles` on an in-memory map) and
//! the error-log line parser (`errlog::parse_line`), with the address helpers they share.
//!
//! Every property asserts: no panic, and bounded work per input, measured as work done rather
//! than time (files read, bytes tokenized, sizes of what comes out), so a loop or an
//! exponential blow-up fails the property instead of slowing the suite.
//!
//! Cases per property: $PROPTEST_CASES, default 2000. Each property prints how many inputs it
//! ran (`cargo test fuzz_ -- --nocapture`).
use std::cell::Cell;
use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::config::{self, ConfigFiles};
use super::errlog;

/// Generous upper bound of one fuzzed file (bytes): Nginx configs are kilobytes.
const MAX_INPUT: usize = 8 << 10;
/// The parser reads at most this many files per configuration (its `MAX_FILES`): include
/// loops stop.
const MAX_READS: usize = 4096;
/// It tokenizes at most this many bytes per configuration (its `MAX_TOTAL_BYTES`), plus the
/// file that crossed the line.
const MAX_BYTES: usize = 32 << 20;
/// It keeps at most this many errors (its `MAX_ERRORS`), each once.
const MAX_ERRORS: usize = 64;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

/// Runs `check` on `cases()` inputs from `strategy`, printing how many ran; a failure (or a
/// panic inside `check`) fails the test with the shrunk input.
fn fuzz<S: Strategy>(name: &str, strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let config = Config {
        cases: cases(),
        // No regression files in the source tree; a failure prints its input.
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    };
    let ran = Cell::new(0u64);
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |input| {
        ran.set(ran.get() + 1);
        check(input)
    });
    println!("fuzz {name}: {} inputs ran", ran.get());
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
}

/// Config files in memory, counting the work the parser asks for.
struct MemFiles {
    files: BTreeMap<String, String>,
    reads: Cell<usize>,
    bytes_read: Cell<usize>,
    /// `include` words in everything read: each can make one more call into the parser.
    includes_read: Cell<usize>,
}

impl MemFiles {
    fn new(files: BTreeMap<String, String>) -> MemFiles {
        MemFiles { files, reads: Cell::new(0), bytes_read: Cell::new(0), includes_read: Cell::new(0) }
    }
}

impl ConfigFiles for MemFiles {
    fn read(&self, path: &str) -> Result<String, String> {
        self.reads.set(self.reads.get() + 1);
        let text = self.files.get(path).cloned().ok_or_else(|| "No such file or directory".to_string())?;
        self.bytes_read.set(self.bytes_read.get() + text.len());
        self.includes_read.set(self.includes_read.get() + text.matches("include").count());
        Ok(text)
    }

    fn glob(&self, pattern: &str) -> Vec<String> {
        let Some((dir, file_pattern)) = pattern.rsplit_once('/') else { return Vec::new() };
        let prefix = format!("{dir}/");
        // BTreeMap keys come sorted, as Nginx includes them.
        self.files
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|name| !name.contains('/') && super::glob_match(file_pattern, name))
            .map(|name| format!("{prefix}{name}"))
            .collect()
    }
}

const MAIN: &str = "/c/nginx.conf";

/// Parses `files` from `MAIN` and checks the bounds every configuration must keep.
fn parse_bounded(files: BTreeMap<String, String>) -> Result<config::Parsed, TestCaseError> {
    let mem = MemFiles::new(files);
    let parsed = config::parse(&mem, MAIN, "/p");
    let (reads, bytes, includes) = (mem.reads.get(), mem.bytes_read.get(), mem.includes_read.get());
    prop_assert!(reads <= MAX_READS, "{reads} file reads: an include loop was not stopped");
    let largest = mem.files.values().map(String::len).max().unwrap_or(0);
    prop_assert!(bytes <= MAX_BYTES + largest, "{bytes} bytes tokenized: an include loop was not stopped");
    // Every target and error log comes from a directive of at least a few bytes that was read
    // (`proxy_pass localhost;` gives two targets from 21 bytes).
    prop_assert!(parsed.config.targets.len() <= bytes, "{} targets from {bytes} bytes", parsed.config.targets.len());
    prop_assert!(parsed.config.error_logs.len() <= bytes, "{} error logs from {bytes} bytes", parsed.config.error_logs.len());
    // Errors: each once, a bounded number, and none without a file read or an include.
    prop_assert!(parsed.errors.len() <= MAX_ERRORS, "{} errors", parsed.errors.len());
    prop_assert!(parsed.errors.len() <= 1 + reads + includes, "{} errors, {reads} files, {includes} includes", parsed.errors.len());
    let distinct: std::collections::BTreeSet<&String> = parsed.errors.iter().collect();
    prop_assert_eq!(distinct.len(), parsed.errors.len(), "an error repeated: {:?}", parsed.errors);
    for t in &parsed.config.targets {
        // A timeout is the default, or one a directive that was read wrote out in full.
        if let Some(ms) = t.read_timeout_ms {
            prop_assert!(ms == 60_000 || bytes > 0, "{ms} ms from nothing read");
        }
        prop_assert!(t.place.contains(':'), "place is file:line: {:?}", t.place);
        prop_assert!(t.line.ends_with(';'), "the directive as written: {:?}", t.line);
    }
    Ok(parsed)
}

fn one_file(text: String) -> BTreeMap<String, String> {
    BTreeMap::from([(MAIN.to_string(), text)])
}

// ---------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------

/// Words a configuration is made of: directive names the parser acts on, include targets
/// (the main file itself, globs, missing files), addresses in every form it parses, and
/// near-misses of each.
fn word() -> impl Strategy<Value = String> {
    let fixed = prop::sample::select(vec![
        "include", "proxy_pass", "uwsgi_pass", "fastcgi_pass", "scgi_pass", "grpc_pass", "server", "upstream", "error_log",
        "http", "location", "events", "stream", "user", "listen", "/c/nginx.conf", "nginx.conf", "/c/a.conf", "a.conf",
        "conf.d/*.conf", "/c/conf.d/*", "/c/*", "*", "?.conf", "[a-z]*.conf", "[!a]*", "[", "[]", "/c/missing.conf",
        "127.0.0.1:8000", "127.0.0.1", "[::1]:9000", "[::1", "::1]", "localhost", "localhost:70000", "localhost:",
        "unix:/run/g.sock", "unix:", "http://unix:/x:/", "http://unix:/x", "http://unix:", "https://[::1]:443/a",
        "grpcs://10.0.0.1", "http://backend", "http://", "http:///", "$host", "${x}", "http://$h:1", "${", "$",
        "syslog:server=1", "stderr", "memory:1m", "/dev/null", "logs/error.log", "max_fails=3", "\u{202e}", "ü", "",
        "proxy_read_timeout", "fastcgi_read_timeout", "grpc_read_timeout", "if", "limit_except", "30s", "1m30s", "500ms",
        "0", "99999999999999999999h", "18446744073709551615ms", "1y1M1w1d", "m", "5x",
    ]);
    prop_oneof![
        4 => fixed.prop_map(str::to_string),
        2 => "[a-z0-9:/._*?\\[\\]!$-]{0,12}",
        1 => "\"([^\"\\\\]|\\\\.){0,10}\"?",
        1 => "'([^'\\\\]|\\\\.){0,10}'?",
        1 => any::<String>().prop_map(|s| s.chars().take(12).collect()),
    ]
}

/// A directive or a block of them.
#[derive(Clone, Debug)]
enum Node {
    Simple(Vec<String>),
    Block(Vec<String>, Vec<Node>),
}

fn node() -> impl Strategy<Value = Node> {
    let simple = prop::collection::vec(word(), 1..4).prop_map(Node::Simple);
    simple.prop_recursive(6, 48, 6, |inner| {
        (prop::collection::vec(word(), 1..3), prop::collection::vec(inner, 0..6)).prop_map(|(w, c)| Node::Block(w, c))
    })
}

fn render(nodes: &[Node], sep: &str, out: &mut String) {
    for n in nodes {
        match n {
            Node::Simple(words) => {
                out.push_str(&words.join(" "));
                out.push(';');
            }
            Node::Block(words, children) => {
                out.push_str(&words.join(" "));
                out.push_str(" {");
                out.push_str(sep);
                render(children, sep, out);
                out.push('}');
            }
        }
        out.push_str(sep);
    }
}

/// One edit that makes a well-formed file nearly valid: a structure character, quote,
/// escape, comment or newline inserted, or a character removed.
#[derive(Clone, Debug)]
enum Edit {
    Insert(usize, char),
    Remove(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), prop::sample::select(vec!['{', '}', ';', '"', '\'', '\\', '#', '\n', '$', '*'])).prop_map(|(i, c)| Edit::Insert(i, c)),
        any::<usize>().prop_map(Edit::Remove),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        match *e {
            Edit::Insert(i, c) => chars.insert(i % (chars.len() + 1), c),
            Edit::Remove(i) if !chars.is_empty() => {
                chars.remove(i % chars.len());
            }
            Edit::Remove(_) => {}
        }
    }
    chars.into_iter().take(MAX_INPUT).collect()
}

/// A near-valid file: a tree of directives, written with one of a few separators, then
/// lightly damaged.
fn near_valid_file() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(node(), 0..8),
        prop::sample::select(vec![" ", "\n", "\n  ", "#c\n", "\t"]),
        prop::collection::vec(edit(), 0..4),
    )
        .prop_map(|(nodes, sep, edits)| {
            let mut text = String::new();
            render(&nodes, sep, &mut text);
            apply(&text, &edits)
        })
}

/// A configuration of several files that include each other (and themselves), by name and
/// by glob, including an editor's dot file that Nginx never reads.
fn config_set() -> impl Strategy<Value = BTreeMap<String, String>> {
    let names = vec![MAIN, "/c/a.conf", "/c/conf.d/x.conf", "/c/conf.d/.#y.conf", "/c/conf.d/z.conf"];
    prop::collection::vec((prop::sample::select(names), near_valid_file()), 1..5)
        .prop_map(|files| files.into_iter().map(|(n, t)| (n.to_string(), t)).collect())
}

// ---------------------------------------------------------------------------------------
// Config parser properties
// ---------------------------------------------------------------------------------------

#[test]
fn fuzz_config_arbitrary_bytes() {
    fuzz("config: arbitrary bytes", prop::collection::vec(any::<u8>(), 0..MAX_INPUT), |bytes| {
        parse_bounded(one_file(String::from_utf8_lossy(&bytes).into_owned()))?;
        Ok(())
    });
}

#[test]
fn fuzz_config_arbitrary_text_of_nginx_characters() {
    // Mostly the characters that carry structure, so that quotes, escapes, braces, comments
    // and `${` meet in every order.
    fuzz("config: nginx characters", "[{};\"'\\\\#$\n a-z0-9:/.*]{0,2000}", |text| {
        parse_bounded(one_file(text))?;
        Ok(())
    });
}

#[test]
fn fuzz_config_near_valid_single_file() {
    fuzz("config: near-valid file", near_valid_file(), |text| {
        parse_bounded(one_file(text))?;
        Ok(())
    });
}

#[test]
fn fuzz_config_near_valid_include_sets() {
    fuzz("config: near-valid include sets", config_set(), |files| {
        parse_bounded(files)?;
        Ok(())
    });
}

#[test]
fn fuzz_config_self_includes_and_mutual_includes_stop() {
    // A file that includes itself (by path, relative name or glob) `fanout` times, and a
    // pair that include each other: exponential without a bound on files read.
    let strategy = (
        1usize..16,
        prop::sample::select(vec!["/c/nginx.conf", "nginx.conf", "/c/*.conf", "*.conf", "/c/a.conf"]),
        any::<bool>(),
    );
    fuzz("config: include loops", strategy, |(fanout, include, mutual)| {
        let main = format!(
            "http {{ upstream u {{ server 127.0.0.1:8000; }} }}\n{}",
            format!("include {include};\n").repeat(fanout)
        );
        let mut files = one_file(main);
        if mutual {
            files.insert("/c/a.conf".into(), format!("include {MAIN}; server {{ proxy_pass http://127.0.0.1:9000; }}"));
        }
        let parsed = parse_bounded(files)?;
        // What parsed before the loop still counts, and the loop is named.
        prop_assert!(parsed.config.targets.iter().any(|t| t.upstream == "u"), "{:?}", parsed.config.targets);
        prop_assert!(!parsed.errors.is_empty(), "an include loop is reported");
        Ok(())
    });
}

#[test]
fn fuzz_config_deep_nesting() {
    // Unbalanced and balanced nesting, deeper than any real configuration: no stack overflow.
    let strategy = (0usize..20_000, 0usize..20_000, prop::sample::select(vec!["a {", "{", "a{b{", "\"{\" {", "location / {"]));
    fuzz("config: deep nesting", strategy, |(open, close, opener)| {
        let text = format!("{}{}", opener.repeat(open), "}".repeat(close));
        let text: String = text.chars().take(64 << 10).collect();
        parse_bounded(one_file(text))?;
        Ok(())
    });
}

#[test]
fn fuzz_time_values_never_panic() {
    let text = prop_oneof!["[0-9msdhwMy ]{0,24}", any::<String>().prop_map(|s| s.chars().take(24).collect())];
    fuzz("fuzz_time_values_never_panic", text, |text: String| {
        if let Some(ms) = config::parse_time_ms(&text) {
            prop_assert!(text.trim().starts_with(|c: char| c.is_ascii_digit()), "{text:?} -> {ms}");
        }
        Ok(())
    });
}

#[test]
fn fuzz_glob_match_terminates() {
    fuzz("config: include glob patterns", ("[*?\\[\\]!a-c.-]{0,24}", "[a-c.\\[\\]-]{0,40}"), |(pattern, name)| {
        let _ = super::glob_match(&pattern, &name);
        // A pattern without wildcards matches only itself (the dot-file rule aside).
        if !pattern.contains(['*', '?', '[']) && !name.starts_with('.') {
            prop_assert_eq!(super::glob_match(&pattern, &name), pattern == name);
        }
        Ok(())
    });
}

#[test]
fn fuzz_addresses() {
    let strategy = prop_oneof![any::<String>(), "(https?|grpcs?|fastcgi|uwsgi)://(unix:)?[\\[\\]:0-9a-f./]{0,30}(:/.*)?"];
    fuzz("config: addresses and log URLs", (strategy, any::<u16>()), |(addr, port)| {
        prop_assert!(config::targets_of_address(&addr, port).len() <= 2);
        let _ = config::target_of_log_url(&addr);
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// Error-log line parser properties
// ---------------------------------------------------------------------------------------

/// Pieces of the lines Nginx writes about upstreams, to be put together in any order.
fn log_piece() -> impl Strategy<Value = String> {
    let fixed = prop::sample::select(vec![
        "2026/11/24 10:05:53 [error] ", "812#812: ", "*3 ", "connect() failed (", "111: Connection refused)", "(2: No such file",
        "connect() to unix:/run/g.sock failed ", "upstream timed out (110: Connection timed out)", " while connecting to upstream",
        "no live upstreams", "recv() failed (104: ", "upstream prematurely closed", ", client: 127.0.0.1", ", upstream: \"",
        "http://127.0.0.1:8000/", "http://unix:/run/g.sock:/", "http://[::1]:8000/x", "fastcgi://unix:/p.sock:", "http://backend/",
        "http://unix:", "://", "\"", ", host: \"x\"", "#", "] ", " (", ":", "-1", "99999999999999999999", "\u{1b}[2J", "\n",
    ]);
    prop_oneof![4 => fixed.prop_map(str::to_string), 1 => any::<String>().prop_map(|s| s.chars().take(16).collect())]
}

#[test]
fn fuzz_errlog_arbitrary_lines() {
    fuzz("errlog: arbitrary lines", any::<String>(), |line| {
        check_log_line(&line)?;
        Ok(())
    });
}

#[test]
fn fuzz_errlog_near_valid_lines() {
    fuzz("errlog: near-valid lines", prop::collection::vec(log_piece(), 0..16), |pieces| {
        let line = pieces.concat();
        check_log_line(&line)?;
        // A batch of them correlated with no finding: every connection line is unexplained.
        let lines: Vec<errlog::LogLine> = pieces.iter().chain([&line]).filter_map(|l| errlog::parse_line(l)).collect();
        let c = errlog::correlate(&lines, &[], &|_| None);
        prop_assert_eq!(c.unexplained.len(), lines.len());
        prop_assert!(c.explained.is_empty());
        Ok(())
    });
}

fn check_log_line(line: &str) -> Result<(), TestCaseError> {
    if let Some(parsed) = errlog::parse_line(line) {
        prop_assert_eq!(&parsed.raw, line);
        if let Some(url) = &parsed.upstream_url {
            // The URL is a piece of the line, not invented.
            prop_assert!(line.contains(url.as_str()));
            prop_assert_eq!(&parsed.target, &config::target_of_log_url(url));
        } else {
            prop_assert!(parsed.target.is_none());
        }
    }
    Ok(())
}

#[test]
fn a_wide_include_graph_is_tokenized_a_bounded_number_of_times() {
    // No loop, but each of 20 files of 256 KiB includes the next one twice: 2^20 inclusions,
    // gigabytes to tokenize and millions of targets without a budget on bytes and files.
    let servers = "server 127.0.0.1:8000;\n".repeat((256 << 10) / 23);
    let mut files = BTreeMap::new();
    for n in 0..20 {
        let name = if n == 0 { MAIN.to_string() } else { format!("/c/f{n}.conf") };
        files.insert(name, format!("include /c/f{next}.conf;\ninclude /c/f{next}.conf;\nupstream u{n} {{\n{servers}}}\n", next = n + 1));
    }
    let mem = MemFiles::new(files);
    let parsed = config::parse(&mem, MAIN, "/p");
    assert!(mem.reads.get() <= MAX_READS, "{} files read", mem.reads.get());
    assert!(mem.bytes_read.get() <= MAX_BYTES + (256 << 10) + 100, "{} bytes tokenized", mem.bytes_read.get());
    // Each target costs 23 bytes of what was tokenized.
    assert!(parsed.config.targets.len() <= mem.bytes_read.get() / 23, "{} targets", parsed.config.targets.len());
    assert!(parsed.config.targets.iter().any(|t| t.upstream == "u0"), "what was read still counts");
    assert!(parsed.errors.iter().any(|e| e.contains("the rest")), "the cut is reported: {:?}", parsed.errors);
    assert!(parsed.errors.len() <= MAX_ERRORS);
}
