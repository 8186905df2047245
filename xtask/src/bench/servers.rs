//! The servers under test: portcullis (release build, `--workers 1`), nginx and HAProxy from Debian, each with
//! one worker pinned to CPU 0, on a free loopback port, with its config and log under `target/bench/<label>/`
//! (`<label>` is the server's name unless the bench runs one server in several configurations).
//! Stopped by PID (never by name) when the [`Server`] is dropped. For `bench http`, the same three as reverse
//! proxies ([`start_http`]) and the nginx they share as upstream ([`start_upstream`]). For `bench zero-rtt`, the
//! three with TLS 1.3 early data on, inside a network namespace, sharing ticket keys with a twin
//! ([`start_zero_rtt`]). Beside them, for `bench handshakes`, the floor: `portcullis-load floor` ([`start_floor`]).

use std::fmt;
use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::Ctx;
use super::certs::Cert;
use super::procstat;

/// The CPU every server is pinned to.
pub const SERVER_CPU: &str = "0";

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum ServerKind {
    /// This project's daemon.
    Portcullis,
    /// Debian's nginx.
    Nginx,
    /// Debian's HAProxy.
    Haproxy,
}

impl ServerKind {
    /// Label in tables and file names.
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Portcullis => "portcullis",
            ServerKind::Nginx => "nginx",
            ServerKind::Haproxy => "haproxy",
        }
    }
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    /// Which.
    pub kind: ServerKind,
    /// Its TLS port on 127.0.0.1 (the HTTP benchmark's shared upstream: its plain HTTP port).
    pub port: u16,
    /// portcullis: its `/metrics` port on 127.0.0.1.
    pub metrics_port: Option<u16>,
    child: Child,
    log: PathBuf,
    /// The network namespace it runs in (`None`: this process's).
    netns: Option<PathBuf>,
}

/// Starts `kind` with `cert`, its files under `target/bench/<server name>/`.
pub fn start(ctx: &Ctx, kind: ServerKind, cert: &Cert) -> Result<Server> {
    start_with(ctx, kind, cert, kind.name(), None)
}

/// [`start`], with its config, log and state under `target/bench/<label>/` (one directory per configuration
/// when a bench starts the same server more than once), and portcullis reading `portcullis_config` (a TOML
/// file; the flags still set listener, metrics, worker count, certificate and state directory; ignored for
/// the other servers).
pub fn start_with(
    ctx: &Ctx,
    kind: ServerKind,
    cert: &Cert,
    label: &str,
    portcullis_config: Option<&Path>,
) -> Result<Server> {
    start_with_args(ctx, kind, cert, label, portcullis_config, &[])
}

/// [`start_with`], with `extra` appended to portcullis' `run` flags (e.g. `--mode http`).
pub fn start_with_args(
    ctx: &Ctx,
    kind: ServerKind,
    cert: &Cert,
    label: &str,
    portcullis_config: Option<&Path>,
    extra: &[String],
) -> Result<Server> {
    start_on(
        ctx,
        kind,
        cert,
        label,
        portcullis_config,
        extra,
        "127.0.0.1",
    )
}

/// [`start_with_args`], the TLS listener on `host` instead of 127.0.0.1 (`bench flood`: "0.0.0.0" inside the
/// server namespace, reached over veths; metrics and readiness stay on the namespace's 127.0.0.1).
pub fn start_on(
    ctx: &Ctx,
    kind: ServerKind,
    cert: &Cert,
    label: &str,
    portcullis_config: Option<&Path>,
    extra: &[String],
    host: &str,
) -> Result<Server> {
    launch_in(
        ctx,
        kind,
        &ctx.out.join(label),
        |dir, port, metrics_port| {
            Ok(match kind {
                ServerKind::Portcullis => (
                    ctx.daemon.clone(),
                    portcullis_args(host, port, metrics_port, cert, dir)
                        .into_iter()
                        .chain(portcullis_config.map(|c| format!("--config={}", c.display())))
                        .chain(extra.iter().cloned())
                        .collect(),
                ),
                ServerKind::Nginx => {
                    let conf = dir.join("nginx.conf");
                    std::fs::write(&conf, nginx_conf(dir, host, port, cert, ctx.hold))?;
                    (PathBuf::from("/usr/sbin/nginx"), nginx_args(&conf, dir))
                }
                ServerKind::Haproxy => {
                    let conf = dir.join("haproxy.cfg");
                    std::fs::write(&conf, haproxy_conf(dir, host, port, cert, ctx.hold))?;
                    (PathBuf::from("/usr/sbin/haproxy"), haproxy_args(&conf))
                }
            })
        },
    )
}

/// Creates `dir`, picks a free port (and a metrics port for portcullis), builds the program and its arguments
/// with `build(dir, port, metrics_port)`, and launches it on [`SERVER_CPU`] in this namespace.
fn launch_in(
    ctx: &Ctx,
    kind: ServerKind,
    dir: &Path,
    build: impl FnOnce(&Path, u16, Option<u16>) -> Result<(PathBuf, Vec<String>)>,
) -> Result<Server> {
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let metrics_port = match kind {
        ServerKind::Portcullis => Some(free_port()?),
        _ => None,
    };
    let (program, args) = build(dir, port, metrics_port)?;
    launch(
        kind,
        SERVER_CPU,
        nofile(ctx),
        &program,
        &args,
        dir,
        port,
        metrics_port,
        None,
    )
}

/// Starts `kind` as an HTTPS reverse proxy (h2 and HTTP/1.1 by ALPN) in front of the plain HTTP/1.1 server on
/// 127.0.0.1:`upstream`, keeping upstream connections alive, files under `target/bench/<server>-http/`:
/// portcullis `--mode http`, nginx `proxy_pass` to an `upstream` with `keepalive`, HAProxy `mode http` with
/// `http-reuse always`. All three add the same `Forwarded`, `X-Forwarded-For` and `X-Forwarded-Proto` headers
/// portcullis adds, and none logs requests, so they do the same work per request.
pub fn start_http(ctx: &Ctx, kind: ServerKind, cert: &Cert, upstream: u16) -> Result<Server> {
    let dir = ctx.out.join(format!("{}-http", kind.name()));
    launch_in(ctx, kind, &dir, |dir, port, metrics_port| {
        Ok(match kind {
            ServerKind::Portcullis => (
                ctx.daemon.clone(),
                portcullis_args("127.0.0.1", port, metrics_port, cert, dir)
                    .into_iter()
                    .chain([
                        "--mode".into(),
                        "http".into(),
                        "--upstream".into(),
                        format!("127.0.0.1:{upstream}"),
                    ])
                    .collect(),
            ),
            ServerKind::Nginx => {
                let conf = dir.join("nginx.conf");
                std::fs::write(&conf, nginx_http_conf(dir, port, cert, upstream))?;
                (PathBuf::from("/usr/sbin/nginx"), nginx_args(&conf, dir))
            }
            ServerKind::Haproxy => {
                let conf = dir.join("haproxy.cfg");
                std::fs::write(&conf, haproxy_http_conf(dir, port, cert, upstream))?;
                (PathBuf::from("/usr/sbin/haproxy"), haproxy_args(&conf))
            }
        })
    })
}

/// Starts the upstream the HTTP benchmark's servers share: nginx serving plain HTTP/1.1 on a free loopback port
/// with keep-alive, `files` (name, size in bytes) as static files written under
/// `target/bench/http-upstream/www/`, one worker pinned to `cpu` (the load generator's: its CPU is not the
/// measured server's). nginx because it serves static files with `sendfile` at a few µs each, in C, and
/// `setup --bench` installs it anyway; a Rust server in xtask would cost a dependency and be slower.
pub fn start_upstream(ctx: &Ctx, cpu: &str, files: &[(&str, usize)]) -> Result<Server> {
    let dir = ctx.out.join("http-upstream");
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    for (name, size) in files {
        // Printable bytes, so a body can be eyeballed in a log.
        let body: Vec<u8> = (0..*size).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(www.join(name), body)?;
    }
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, upstream_conf(&dir, port))?;
    launch(
        ServerKind::Nginx,
        cpu,
        nofile(ctx),
        Path::new("/usr/sbin/nginx"),
        &nginx_args(&conf, &dir),
        &dir,
        port,
        None,
        None,
    )
}

/// Starts `program args` pinned to `cpu` with its log under `dir` (inside the network namespace `netns` when
/// given), and waits until it is ready (portcullis: `/readyz` on `metrics_port`; the others: `port` accepts;
/// both on 127.0.0.1 of that namespace).
#[expect(
    clippy::too_many_arguments,
    reason = "each is one fact of a server's start, named at the three call sites"
)]
pub(super) fn launch(
    kind: ServerKind,
    cpu: &str,
    nofile: usize,
    program: &Path,
    args: &[String],
    dir: &Path,
    port: u16,
    metrics_port: Option<u16>,
    netns: Option<&Path>,
) -> Result<Server> {
    let log = dir.join(format!("{}.log", kind.name()));
    let child = spawn_pinned(cpu, nofile, program, args, &log, netns)?;
    let mut server = Server {
        kind,
        port,
        metrics_port,
        child,
        log,
        netns: netns.map(Path::to_path_buf),
    };
    server.wait_ready()?;
    Ok(server)
}

/// Starts `program args` pinned to `cpu` with the descriptor limit `nofile`, stdout and stderr to `log`, inside
/// the network namespace `netns` when given. sh raises the descriptor limit, then execs taskset, which execs the
/// program (nsenter execs its program too: no fork for a network namespace): the child's PID is the program's.
fn spawn_pinned(
    cpu: &str,
    nofile: usize,
    program: &Path,
    args: &[String],
    log: &Path,
    netns: Option<&Path>,
) -> Result<Child> {
    let log_file = File::create(log)?;
    let enter = netns.map(super::netns::nsenter).unwrap_or_default();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {nofile}; exec taskset -c {cpu} \"$@\""))
        .arg("sh")
        .args(&enter)
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .env("PORTCULLIS_LOG", "warn");
    eprintln!(
        "+ {} {}  (log {})",
        program.display(),
        args.join(" "),
        log.display()
    );
    cmd.spawn()
        .with_context(|| format!("cannot start {}", program.display()))
}

/// The floor of `bench handshakes` (`portcullis-load floor`: one thread, rustls over TCP and nothing else), beside
/// the servers rather than one of them: no other benchmark runs it. Pinned to [`SERVER_CPU`] like them, its
/// log under `target/bench/floor/`, stopped by PID when dropped.
#[derive(Debug)]
pub struct Floor {
    /// Its TLS port on 127.0.0.1.
    pub port: u16,
    child: Child,
    log: PathBuf,
}

/// Starts the floor with `cert` on a free loopback port and waits until the port accepts.
pub fn start_floor(ctx: &Ctx, cert: &Cert) -> Result<Floor> {
    let dir = ctx.out.join("floor");
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let args = vec![
        "floor".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--cert".into(),
        path(&cert.cert),
        "--key".into(),
        path(&cert.key),
    ];
    let log = dir.join("floor.log");
    let child = spawn_pinned(SERVER_CPU, nofile(ctx), &ctx.load, &args, &log, None)?;
    let mut floor = Floor { port, child, log };
    wait_until_ready(
        &mut floor.child,
        &"the floor server",
        &floor.log,
        port,
        || Ok(TcpStream::connect(("127.0.0.1", port)).is_ok()),
    )?;
    Ok(floor)
}

impl Floor {
    /// utime+stime of the floor so far.
    pub fn cpu_time(&self) -> Duration {
        procstat::cpu_time(&[self.child.id()])
    }
}

impl Drop for Floor {
    /// SIGTERM by PID; SIGKILL by PID after 10 s.
    fn drop(&mut self) {
        stop(&mut self.child, "-TERM", &"the floor server");
    }
}

/// Sends `signal` to `child` by PID and waits for it; SIGKILL by PID after 10 s.
fn stop(child: &mut Child, signal: &str, what: &dyn fmt::Display) {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args([signal, &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{what} (pid {pid}) did not stop within 10 s: SIGKILL");
    let _ = child.kill();
    let _ = child.wait();
}

impl Server {
    /// The server's own PID (nginx: the master's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's PID and its children's (nginx: master and worker).
    pub fn pids(&self) -> Vec<u32> {
        procstat::tree(self.child.id())
    }

    /// utime+stime of the server's processes so far.
    pub fn cpu_time(&self) -> Duration {
        procstat::cpu_time(&self.pids())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let (port, metrics_port, netns) = (self.port, self.metrics_port, &self.netns);
        // portcullis binds its listeners first and loads its XDP program after (the verifier takes a while):
        // ready means `/readyz` says so, not that the port answers.
        let probe = || match metrics_port {
            Some(mp) => http_get(mp, "/readyz").is_ok_and(|(status, _)| status == 200),
            None => TcpStream::connect(("127.0.0.1", port)).is_ok(),
        };
        wait_until_ready(
            &mut self.child,
            &self.kind,
            &self.log,
            port,
            || match netns {
                Some(ns) => super::netns::run_in(ns, probe),
                None => Ok(probe()),
            },
        )
    }
}

/// Polls `ready` every 50 ms until it says so, for at most 15 s; fails at once, with `what`'s log, when `child`
/// (listening on 127.0.0.1:`port` once up) exits first.
fn wait_until_ready(
    child: &mut Child,
    what: &dyn fmt::Display,
    log: &Path,
    port: u16,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{what} exited during start-up ({status}); its log {}:\n{}",
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if ready()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{what} did not listen on 127.0.0.1:{port} within 15 s; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One plain HTTP/1.0 GET on 127.0.0.1:`port`: the status and the body.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .with_context(|| format!("reading the answer to GET {path} from 127.0.0.1:{port}"))?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("GET {path} on 127.0.0.1:{port}: an answer without a body");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET {path} on 127.0.0.1:{port}: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

impl Drop for Server {
    /// SIGINT for portcullis (immediate stop; SIGTERM would drain for 30 s), SIGTERM for the others, by PID;
    /// SIGKILL by PID after 10 s.
    fn drop(&mut self) {
        let signal = match self.kind {
            ServerKind::Portcullis => "-INT",
            _ => "-TERM",
        };
        stop(&mut self.child, signal, &self.kind);
    }
}

/// The servers' descriptor limit: 20,000, or room for `ctx.hold` client connections and as many upstream ones;
/// never above this process's hard limit (which a child cannot exceed).
pub fn nofile(ctx: &Ctx) -> usize {
    let want = ctx.hold.map_or(20_000, |n| (2 * n + 10_000).max(20_000));
    want.min(hard_nofile())
}

/// This process's hard RLIMIT_NOFILE (`usize::MAX` when unlimited or unknown).
pub fn hard_nofile() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return usize::MAX;
    }
    usize::try_from(lim.rlim_max).unwrap_or(usize::MAX)
}

/// A port the kernel says is free now (bound to port 0, then released).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// `portcullis run` with one worker on `host`:`port`, metrics on 127.0.0.1:`metrics_port`, `cert`, state under
/// `dir`.
pub(super) fn portcullis_args(
    host: &str,
    port: u16,
    metrics_port: Option<u16>,
    cert: &Cert,
    dir: &Path,
) -> Vec<String> {
    vec![
        "run".into(),
        "--listen".into(),
        format!("{host}:{port}"),
        "--metrics".into(),
        format!("127.0.0.1:{}", metrics_port.unwrap_or_default()),
        "--workers".into(),
        "1".into(),
        "--cert".into(),
        path(&cert.cert),
        "--key".into(),
        path(&cert.key),
        "--state-dir".into(),
        path(&dir.join("state")),
    ]
}

/// nginx in the foreground with `conf`, its prefix and error log in `dir`.
pub(super) fn nginx_args(conf: &Path, dir: &Path) -> Vec<String> {
    vec![
        "-c".into(),
        path(conf),
        "-p".into(),
        path(dir),
        "-e".into(),
        path(&dir.join("error.log")),
    ]
}

/// HAProxy in the foreground (`-db`) with `conf`.
fn haproxy_args(conf: &Path) -> Vec<String> {
    vec!["-db".into(), "-f".into(), path(conf)]
}

/// nginx's temporary file paths under `dir` (the compiled-in ones need the `www-data` layout).
fn nginx_temp_paths(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    \
         uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;"
    )
}

/// [`nginx_conf`]'s TLS settings with h2, proxying to an upstream block with idle keep-alive connections (as
/// many as portcullis pools by default, 32). Client and upstream connections serve any number of requests
/// (nginx's default closes them after 1,000, which would add handshakes to the figure). 144 KiB of proxy
/// buffers per request, with no temporary file: a 64 KiB response stays in memory, as it does in the others.
fn nginx_http_conf(dir: &Path, port: u16, cert: &Cert, upstream: u16) -> String {
    format!(
        r#"# Written by cargo xtask bench http; one worker pinned to CPU 0.
worker_processes 1;
worker_cpu_affinity 1;
worker_rlimit_nofile 20000;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 16000; }}
http {{
    access_log off;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ecdh_curve X25519:prime256v1;
    ssl_session_cache shared:SSL:20m;
    ssl_session_tickets on;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    {temp}
    upstream backend {{
        server 127.0.0.1:{upstream};
        keepalive 32;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2 backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header Forwarded "for=$remote_addr;proto=https;host=$host";
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_buffer_size 16k;
            proxy_buffers 8 16k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"#,
        dir = dir.display(),
        temp = nginx_temp_paths(dir),
        cert = cert.cert.display(),
        key = cert.key.display(),
    )
}

/// [`haproxy_conf`]'s TLS settings with h2, proxying to the upstream with idle connections shared between
/// clients (`http-reuse always`, like portcullis' and nginx's pools).
fn haproxy_http_conf(dir: &Path, port: u16, cert: &Cert, upstream: u16) -> String {
    format!(
        r#"# Written by cargo xtask bench http; one thread pinned to CPU 0.
global
    nbthread 1
    cpu-map 1/1 0
    maxconn 9000
    pidfile {dir}/haproxy.pid
    ssl-default-bind-options ssl-min-ver TLSv1.2
    ssl-default-bind-curves X25519:P-256
    tune.ssl.cachesize 100000

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend tls
    bind 127.0.0.1:{port} ssl crt {combined} alpn h2,http/1.1 backlog 4096
    option forwardfor
    http-request set-header X-Forwarded-Proto https
    http-request set-header Forwarded "for=%[src];proto=https;host=%[req.hdr(host)]"
    default_backend upstream

backend upstream
    http-reuse always
    server up 127.0.0.1:{upstream}
"#,
        dir = dir.display(),
        combined = cert.combined.display(),
    )
}

/// The shared upstream: static files from `dir/www` with `sendfile`, keep-alive without a request limit.
fn upstream_conf(dir: &Path, port: u16) -> String {
    format!(
        r#"# Written by cargo xtask bench http: the upstream every server under test proxies to.
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 16000; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    open_file_cache max=16;
    default_type application/octet-stream;
    {temp}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {dir}/www;
    }}
}}
"#,
        dir = dir.display(),
        temp = nginx_temp_paths(dir),
    )
}

/// One worker on CPU 0, access log off, TLS 1.2 and 1.3, session cache and tickets on, a fixed response. With
/// `hold` (`bench idle`): room for that many connections, and idle ones kept for 10 minutes.
pub(super) fn nginx_conf(
    dir: &Path,
    host: &str,
    port: u16,
    cert: &Cert,
    hold: Option<usize>,
) -> String {
    let (nofile, connections, timeouts) = match hold {
        None => (20_000, 16_000, String::new()),
        Some(n) => (
            2 * n + 10_000,
            n + 1_000,
            "    client_header_timeout 10m;\n    keepalive_timeout 10m;\n".to_owned(),
        ),
    };
    format!(
        r#"# Written by cargo xtask bench; one worker pinned to CPU 0.
worker_processes 1;
worker_cpu_affinity 1;
worker_rlimit_nofile {nofile};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
{timeouts}    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ecdh_curve X25519:prime256v1;
    ssl_session_cache shared:SSL:20m;
    ssl_session_tickets on;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen {host}:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 "hello from nginx\n"; }}
    }}
}}
"#,
        dir = dir.display(),
        cert = cert.cert.display(),
        key = cert.key.display(),
    )
}

/// One thread on CPU 0, TLS 1.2 and 1.3, a fixed response. With `hold` (`bench idle`): room for that many
/// connections, and idle ones kept for 10 minutes.
pub(super) fn haproxy_conf(
    dir: &Path,
    host: &str,
    port: u16,
    cert: &Cert,
    hold: Option<usize>,
) -> String {
    let (maxconn, timeout) = match hold {
        None => (9_000, "30s"),
        Some(n) => (n + 500, "10m"),
    };
    format!(
        r#"# Written by cargo xtask bench; one thread pinned to CPU 0.
global
    nbthread 1
    cpu-map 1/1 0
    maxconn {maxconn}
    pidfile {dir}/haproxy.pid
    ssl-default-bind-options ssl-min-ver TLSv1.2
    ssl-default-bind-curves X25519:P-256
    tune.ssl.cachesize 100000

defaults
    mode http
    timeout connect 5s
    timeout client {timeout}
    timeout server {timeout}
    timeout http-keep-alive {timeout}
    timeout http-request {timeout}

frontend tls
    bind {host}:{port} ssl crt {combined} backlog 4096
    http-request return status 200 content-type text/plain string "hello from haproxy"
"#,
        dir = dir.display(),
        combined = cert.combined.display(),
    )
}

/// One server of `bench zero-rtt`: where it runs and what it shares with its twin.
#[derive(Debug, Clone)]
pub struct ZeroRttSpec {
    /// The network namespace it runs in (`/run/netns/NAME`); it listens on 0.0.0.0 there.
    pub netns: PathBuf,
    /// Its TLS port.
    pub port: u16,
    /// portcullis: its metrics port on 127.0.0.1 of the namespace.
    pub metrics_port: u16,
    /// The upstream's plain HTTP port on 127.0.0.1 of the namespace.
    pub upstream: u16,
    /// Directory under `target/bench/` for its config and log.
    pub label: String,
    /// Ticket key material shared by the instances of one server: portcullis' fleet key directory
    /// (`portcullis keys init`), nginx's `ssl_session_ticket_key` file, HAProxy's `tls-ticket-keys` file.
    pub ticket_keys: PathBuf,
    /// portcullis: the Redis session store's URL (`None`: the local store).
    pub redis: Option<String>,
}

/// Starts `kind` as an HTTPS reverse proxy with TLS 1.3 early data on, in front of the upstream in the same
/// namespace, with `spec`'s shared ticket keys: portcullis `mode = "http"` with `[listeners.early_data]` and
/// the local or Redis session store; nginx `ssl_early_data on` and `Early-Data $ssl_early_data`; HAProxy
/// `allow-0rtt` (it adds `Early-Data: 1` itself; the `set-header` says so in the config too).
pub fn start_zero_rtt(
    ctx: &Ctx,
    kind: ServerKind,
    cert: &Cert,
    spec: &ZeroRttSpec,
) -> Result<Server> {
    let dir = ctx.out.join(&spec.label);
    std::fs::create_dir_all(&dir)?;
    let (program, args, metrics_port): (PathBuf, Vec<String>, Option<u16>) = match kind {
        ServerKind::Portcullis => {
            let conf = dir.join("portcullis.toml");
            std::fs::write(&conf, portcullis_zero_rtt_conf(spec))?;
            let mut args =
                portcullis_args("0.0.0.0", spec.port, Some(spec.metrics_port), cert, &dir);
            args.push(format!("--config={}", conf.display()));
            (ctx.daemon.clone(), args, Some(spec.metrics_port))
        }
        ServerKind::Nginx => {
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, nginx_zero_rtt_conf(&dir, cert, spec))?;
            (
                PathBuf::from("/usr/sbin/nginx"),
                nginx_args(&conf, &dir),
                None,
            )
        }
        ServerKind::Haproxy => {
            let conf = dir.join("haproxy.cfg");
            std::fs::write(&conf, haproxy_zero_rtt_conf(&dir, cert, spec))?;
            (
                PathBuf::from("/usr/sbin/haproxy"),
                haproxy_args(&conf),
                None,
            )
        }
    };
    launch(
        kind,
        SERVER_CPU,
        nofile(ctx),
        &program,
        &args,
        &dir,
        spec.port,
        metrics_port,
        Some(&spec.netns),
    )
}

/// Early data up to 16 KiB on an `http` listener, the fleet's key directory, the local store or Redis (with
/// the example's 5 ms fetch timeout).
fn portcullis_zero_rtt_conf(spec: &ZeroRttSpec) -> String {
    let store = match &spec.redis {
        Some(url) => format!("kind = \"redis\"\nurl = {url:?}\nfetch_timeout = \"5ms\""),
        None => "kind = \"local\"".to_owned(),
    };
    format!(
        r#"# Written by cargo xtask bench zero-rtt.
[[listeners]]
name = "https"
address = "0.0.0.0:{port}"
mode = "http"

[listeners.early_data]
max_size = 16384

[tls]
alpn = ["http/1.1"]
ticket_keys_dir = {keys:?}

[tls.session_store]
{store}

[upstream]
backends = ["127.0.0.1:{upstream}"]
"#,
        port = spec.port,
        keys = spec.ticket_keys.display().to_string(),
        upstream = spec.upstream,
    )
}

/// TLS 1.3 with stateless tickets under the shared key file (no session cache: a ticket is the session, as
/// across a fleet), early data on, the early-data flag passed to the upstream.
fn nginx_zero_rtt_conf(dir: &Path, cert: &Cert, spec: &ZeroRttSpec) -> String {
    format!(
        r#"# Written by cargo xtask bench zero-rtt; one worker pinned to CPU 0.
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets on;
    ssl_session_ticket_key {keys};
    ssl_early_data on;
    {temp}
    upstream backend {{
        server 127.0.0.1:{upstream};
        keepalive 8;
    }}
    server {{
        listen 0.0.0.0:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header Early-Data $ssl_early_data;
        }}
    }}
}}
"#,
        dir = dir.display(),
        keys = spec.ticket_keys.display(),
        temp = nginx_temp_paths(dir),
        upstream = spec.upstream,
        port = spec.port,
        cert = cert.cert.display(),
        key = cert.key.display(),
    )
}

/// `allow-0rtt` and the shared `tls-ticket-keys` on the bind, `Early-Data: 1` on requests that came in early
/// data (HAProxy's docs for `allow-0rtt` and `ssl_fc_has_early`).
fn haproxy_zero_rtt_conf(dir: &Path, cert: &Cert, spec: &ZeroRttSpec) -> String {
    format!(
        r#"# Written by cargo xtask bench zero-rtt; one thread pinned to CPU 0.
global
    nbthread 1
    cpu-map 1/1 0
    maxconn 1000
    pidfile {dir}/haproxy.pid
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s

frontend tls
    bind 0.0.0.0:{port} ssl crt {combined} alpn http/1.1 allow-0rtt tls-ticket-keys {keys}
    http-request set-header Early-Data 1 if {{ ssl_fc_has_early }}
    default_backend upstream

backend upstream
    http-reuse always
    server up 127.0.0.1:{upstream}
"#,
        dir = dir.display(),
        port = spec.port,
        combined = cert.combined.display(),
        keys = spec.ticket_keys.display(),
        upstream = spec.upstream,
    )
}
