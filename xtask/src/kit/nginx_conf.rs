//! The Nginx configuration the demo, the bench and tracer's integration tests run.

use std::path::Path;

/// An Nginx that proxies one `listen` address to `proxy_pass`, with every file it writes
/// (pid, error log, temp paths) in one directory.
pub struct NginxConf<'a> {
    /// Where nginx.pid, error.log and the temp paths go.
    pub dir: &'a Path,
    /// The user the workers run as.
    pub user: &'a str,
    pub workers: u32,
    pub worker_connections: u32,
    /// error_log's level (`error`, `warn`); None: Nginx's default.
    pub error_log_level: Option<&'a str>,
    /// More text inside `http { }`, before the proxy's server (upstream blocks, more servers).
    pub extra_http: &'a str,
    /// The proxy's listen address, e.g. `127.0.0.1:8080`.
    pub listen: &'a str,
    /// e.g. `http://127.0.0.1:8000` or `http://unix:/run/app.sock`.
    pub proxy_pass: &'a str,
    pub connect_timeout: &'a str,
    /// proxy_read_timeout; None: Nginx's default.
    pub read_timeout: Option<&'a str>,
}

impl NginxConf<'_> {
    /// The nginx.conf text (`daemon off`: the caller's guard owns the master).
    pub fn render(&self) -> String {
        let t = self.dir.display();
        let level = self.error_log_level.map(|l| format!(" {l}")).unwrap_or_default();
        let read_timeout = self.read_timeout.map(|r| format!("\n            proxy_read_timeout {r};")).unwrap_or_default();
        let NginxConf { user, workers, worker_connections, extra_http, listen, proxy_pass, connect_timeout, .. } = self;
        format!(
            r#"user {user};
worker_processes {workers};
daemon off;
pid {t}/nginx.pid;
error_log {t}/error.log{level};
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    client_body_temp_path {t}/client_body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    {extra_http}
    server {{
        listen {listen};
        location / {{
            proxy_pass {proxy_pass};
            proxy_connect_timeout {connect_timeout};{read_timeout}
        }}
    }}
}}
"#
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_server_says_what_it_was_given() {
        let conf = NginxConf {
            dir: Path::new("/tmp/t"),
            user: "www-data",
            workers: 2,
            worker_connections: 512,
            error_log_level: Some("error"),
            extra_http: "upstream backend { server 127.0.0.1:8000; }",
            listen: "127.0.0.1:8080",
            proxy_pass: "http://backend",
            connect_timeout: "3s",
            read_timeout: Some("30s"),
        }
        .render();
        for line in [
            "user www-data;",
            "worker_processes 2;",
            "error_log /tmp/t/error.log error;",
            "events { worker_connections 512; }",
            "    upstream backend { server 127.0.0.1:8000; }",
            "        listen 127.0.0.1:8080;",
            "            proxy_pass http://backend;",
            "            proxy_connect_timeout 3s;",
            "            proxy_read_timeout 30s;",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line:?} in\n{conf}");
        }
    }
}
