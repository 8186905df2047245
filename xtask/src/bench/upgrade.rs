//! `cargo xtask bench upgrade`: paced TLS handshakes plus long-lived connections streaming requests, while each
//! server gets 3 certificate reloads and 3 binary upgrades, the way its operators do them:
//!
//! - portcullis: `SIGHUP`, then `portcullis upgrade` (sockets and XDP links handed over, the old one drains);
//! - nginx: `SIGHUP` to the master (`nginx -s reload`), then `USR2` (a new master from the binary) and `QUIT` to
//!   the old master;
//! - HAProxy: a new process with `-x admin.sock -sf OLDPID` (the listeners taken over through the stats socket's
//!   `expose-fd listeners`; HAProxy reads certificates only at start, so a reload is the same step).
//!
//! Counted by the clients (their own rustls, so each failure has a cause): handshakes refused at connect (a SYN
//! that met no listener), failed after connect, served an older certificate after the new one was seen; on the
//! streams, requests cut (reset or truncated mid-answer) and connections closed between two requests (a client
//! must retry those). Table on stdout, JSON in `target/bench/upgrade.json`. Fails when portcullis loses anything:
//! that is the claim (README "Upgrade"); the others' figures are reported as measured.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::cmd::output_ok;

use super::Ctx;
use super::certs::{self, Cert, KeyType};
use super::servers::{self, Server, ServerKind};

/// How hard and how long.
struct Plan {
    /// Handshake threads, each paced at `interval`.
    handshakers: usize,
    interval: Duration,
    /// Long-lived connections, each sending a request every `stream_interval`.
    streams: usize,
    stream_interval: Duration,
    /// Pause after each reload and upgrade.
    gap: Duration,
}

impl Plan {
    fn of(ctx: &Ctx) -> Plan {
        if ctx.quick {
            Plan {
                handshakers: 4,
                interval: Duration::from_millis(40),
                streams: 40,
                stream_interval: Duration::from_millis(500),
                gap: Duration::from_secs(2),
            }
        } else {
            Plan {
                handshakers: 8,
                interval: Duration::from_millis(16),
                streams: 200,
                stream_interval: Duration::from_millis(500),
                gap: Duration::from_secs(5),
            }
        }
    }
}

/// One server's figures.
#[derive(Debug, Default)]
struct Row {
    handshakes: u64,
    refused: u64,
    failed: u64,
    stale: u64,
    requests: u64,
    cut: u64,
    closed_between: u64,
    seconds: f64,
    first_errors: Vec<String>,
    /// When the last loss was counted, seconds from the start: set beside `switches`, it tells losses in the
    /// warm-up (the 200 streams' first handshakes at once) from losses across a reload or an upgrade.
    last_loss: Option<f64>,
    /// Each reload and upgrade, and when it was done (seconds from the start).
    switches: Vec<String>,
}

/// What the clients count.
#[derive(Default)]
struct Tally {
    handshakes: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    stale: AtomicU64,
    requests: AtomicU64,
    cut: AtomicU64,
    closed_between: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
    /// The start of the run, and the last loss counted (seconds from it).
    started: std::sync::OnceLock<Instant>,
    last_loss: std::sync::Mutex<Option<f64>>,
}

impl Tally {
    fn count(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let at = self
            .started
            .get()
            .map_or(0.0, |s| s.elapsed().as_secs_f64());
        if let Ok(mut last) = self.last_loss.lock() {
            *last = Some(at);
        }
        if let Ok(mut e) = self.errors.lock()
            && e.len() < 5
        {
            e.push(format!("{what} (at {at:.1} s)"));
        }
    }
}

/// The certificate generations, and the newest one seen served.
struct Generations {
    certs: Vec<Cert>,
    ders: Vec<CertificateDer<'static>>,
    confirmed: AtomicUsize,
}

/// Runs the scenario against every server of `ctx`.
pub fn run(ctx: &Ctx) -> Result<()> {
    let plan = Plan::of(ctx);
    let mut certs = Vec::new();
    for g in 0..4 {
        certs.push(certs::ensure(
            &ctx.out.join(format!("upgrade-certs/{g}")),
            KeyType::Ecdsa,
        )?);
    }
    let ders = certs
        .iter()
        .map(|c| {
            CertificateDer::from_pem_file(&c.cert)
                .with_context(|| format!("reading {}", c.cert.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let config = client_config();
    let mut rows = Vec::new();
    for &kind in &ctx.servers {
        let gens = Generations {
            certs: certs.clone(),
            ders: ders.clone(),
            confirmed: AtomicUsize::new(0),
        };
        eprintln!("== bench upgrade: {kind}");
        let row = scenario(ctx, &plan, kind, &gens, &config)
            .with_context(|| format!("bench upgrade against {kind}"))?;
        rows.push((kind, row));
    }
    report(ctx, &plan, &rows)
}

fn scenario(
    ctx: &Ctx,
    plan: &Plan,
    kind: ServerKind,
    gens: &Generations,
    config: &Arc<rustls::ClientConfig>,
) -> Result<Row> {
    let label = format!("upgrade-{kind}");
    let dir = ctx.out.join(&label);
    std::fs::create_dir_all(&dir)?;
    let served = Cert {
        key_type: KeyType::Ecdsa,
        cert: dir.join("served.pem"),
        key: dir.join("served.key"),
        combined: dir.join("served.combined.pem"),
    };
    install(&gens.certs[0], &served)?;
    let mut live = Live::start(ctx, kind, &served, &dir, &label)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], live.port));
    let tally = Tally::default();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let _ = tally.started.set(started);
    let mut switches = Vec::new();
    let outcome = std::thread::scope(|scope| -> Result<()> {
        for _ in 0..plan.handshakers {
            scope.spawn(|| handshaker(config, addr, plan.interval, gens, &tally, &stop));
        }
        for _ in 0..plan.streams {
            scope.spawn(|| streamer(config, addr, plan.stream_interval, &tally, &stop));
        }
        let mut steps = || -> Result<()> {
            std::thread::sleep(plan.gap);
            for g in 1..gens.certs.len() {
                install(&gens.certs[g], &served)?;
                switches.push(format!(
                    "reload {g} at {:.1} s",
                    started.elapsed().as_secs_f64()
                ));
                live.reload()?;
                confirm(config, addr, gens, g)?;
                std::thread::sleep(plan.gap);
                switches.push(format!(
                    "upgrade {g} at {:.1} s",
                    started.elapsed().as_secs_f64()
                ));
                live.upgrade()?;
                std::thread::sleep(plan.gap);
            }
            Ok(())
        };
        let outcome = steps();
        stop.store(true, Ordering::Relaxed);
        outcome
    });
    let seconds = started.elapsed().as_secs_f64();
    live.stop();
    outcome?;
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    Ok(Row {
        handshakes: n(&tally.handshakes),
        refused: n(&tally.refused),
        failed: n(&tally.failed),
        stale: n(&tally.stale),
        requests: n(&tally.requests),
        cut: n(&tally.cut),
        closed_between: n(&tally.closed_between),
        seconds,
        first_errors: tally.errors.lock().map(|e| e.clone()).unwrap_or_default(),
        last_loss: tally.last_loss.lock().ok().and_then(|l| *l),
        switches,
    })
}

/// A server and the processes that replaced it.
struct Live {
    kind: ServerKind,
    /// The first process, when the harness started it in the foreground (nginx daemonizes: `None`).
    server: Option<Server>,
    port: u16,
    /// The process serving now (after upgrades, not `server`'s).
    current: u32,
    /// Every process started, oldest first.
    pids: Vec<u32>,
    dir: PathBuf,
    /// portcullis: the flags of `run`, for `upgrade`; HAProxy: its config file.
    args: Vec<String>,
    /// The portcullis binary (the new version of an upgrade is the same build).
    daemon: PathBuf,
}

impl Live {
    fn start(ctx: &Ctx, kind: ServerKind, cert: &Cert, dir: &Path, label: &str) -> Result<Live> {
        let (server, args) = match kind {
            ServerKind::Portcullis => {
                // Longer than the whole run: the streams must outlive every drain.
                let config = dir.join("portcullis.toml");
                std::fs::write(&config, "[shutdown]\ndrain_timeout = \"300s\"\n")?;
                let _ = std::fs::remove_file(dir.join("control.sock"));
                let extra = vec![
                    "--control-socket".to_owned(),
                    dir.join("control.sock").display().to_string(),
                ];
                let server =
                    servers::start_with_args(ctx, kind, cert, label, Some(&config), &extra)?;
                let mut args: Vec<String> = servers::portcullis_args(
                    "127.0.0.1",
                    server.port,
                    server.metrics_port,
                    cert,
                    dir,
                )
                .into_iter()
                .skip(1)
                .collect();
                args.push(format!("--config={}", config.display()));
                args.extend(extra);
                (server, args)
            }
            ServerKind::Nginx => return Live::start_nginx(ctx, cert, dir),
            ServerKind::Haproxy => {
                let port = servers::free_port()?;
                let conf = dir.join("haproxy.cfg");
                let admin = dir.join("admin.sock");
                let text = servers::haproxy_conf(dir, "127.0.0.1", port, cert, None).replacen(
                    "global\n",
                    &format!(
                        "global\n    stats socket {} mode 600 level admin expose-fd listeners\n",
                        admin.display()
                    ),
                    1,
                );
                std::fs::write(&conf, text)?;
                let args = vec![
                    "-db".to_owned(),
                    "-f".to_owned(),
                    conf.display().to_string(),
                ];
                let server = servers::launch(
                    kind,
                    servers::SERVER_CPU,
                    servers::nofile(ctx),
                    Path::new("/usr/sbin/haproxy"),
                    &args,
                    dir,
                    port,
                    None,
                    None,
                )?;
                (server, args)
            }
        };
        let current = server.pid();
        Ok(Live {
            kind,
            port: server.port,
            server: Some(server),
            current,
            pids: vec![current],
            dir: dir.to_path_buf(),
            args,
            daemon: ctx.daemon.clone(),
        })
    }

    /// nginx as a daemon: it ignores USR2 while the process that started it lives ("the changing binary signal
    /// is ignored"), so the binary upgrade needs `daemon on`; the master is found in its pid file.
    fn start_nginx(ctx: &Ctx, cert: &Cert, dir: &Path) -> Result<Live> {
        let port = servers::free_port()?;
        let conf = dir.join("nginx.conf");
        let text = servers::nginx_conf(dir, "127.0.0.1", port, cert, None).replacen(
            "daemon off;",
            "daemon on;",
            1,
        );
        std::fs::write(&conf, text)?;
        let pid_file = dir.join("nginx.pid");
        let _ = std::fs::remove_file(&pid_file);
        let status = Command::new("taskset")
            .args(["-c", servers::SERVER_CPU, "/usr/sbin/nginx"])
            .args(servers::nginx_args(&conf, dir))
            .stdin(Stdio::null())
            .stdout(log_file(dir)?)
            .stderr(log_file(dir)?)
            .status()
            .context("starting nginx")?;
        if !status.success() {
            bail!(
                "nginx did not start ({status}); see {}/error.log",
                dir.display()
            );
        }
        let master = wait_for(Duration::from_secs(10), || {
            let pid = std::fs::read_to_string(&pid_file)
                .ok()?
                .trim()
                .parse::<u32>()
                .ok()?;
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| pid)
        })
        .context("nginx did not listen within 10 s")?;
        Ok(Live {
            kind: ServerKind::Nginx,
            server: None,
            port,
            current: master,
            pids: vec![master],
            dir: dir.to_path_buf(),
            args: Vec::new(),
            daemon: ctx.daemon.clone(),
        })
    }

    /// Reads the certificate again, the server's way.
    fn reload(&mut self) -> Result<()> {
        match self.kind {
            ServerKind::Portcullis | ServerKind::Nginx => signal("-HUP", self.current),
            // HAProxy reads certificates at start only: its reload is a new process taking the sockets over.
            ServerKind::Haproxy => self.upgrade(),
        }
    }

    /// Replaces the running binary without a restart, the server's way.
    fn upgrade(&mut self) -> Result<()> {
        let next = match self.kind {
            ServerKind::Portcullis => {
                let out = output_ok(
                    Command::new("taskset")
                        .args(["-c", servers::SERVER_CPU])
                        .arg(&self.daemon)
                        .arg("upgrade")
                        .arg("--control-socket")
                        .arg(self.dir.join("control.sock"))
                        .args(["--timeout", "60s", "--"])
                        .args(&self.args)
                        .env("PORTCULLIS_LOG", "warn")
                        .stdin(Stdio::null())
                        .stderr(log_file(&self.dir)?),
                    &format!(
                        "portcullis upgrade (its log: {}/upgrades.log)",
                        self.dir.display()
                    ),
                )?;
                let text = String::from_utf8_lossy(&out.stdout);
                text.split_whitespace()
                    .skip_while(|w| *w != "pid")
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .with_context(|| format!("no pid in `portcullis upgrade`'s output: {text}"))?
            }
            ServerKind::Nginx => {
                let old = self.current;
                signal("-USR2", old)?;
                // The new master renames the old pid file to .oldbin and writes its own once it listens.
                let pid_file = self.dir.join("nginx.pid");
                let next = wait_for(Duration::from_secs(10), || {
                    std::fs::read_to_string(&pid_file)
                        .ok()
                        .and_then(|p| p.trim().parse::<u32>().ok())
                        .filter(|&p| p != old)
                })
                .context("nginx wrote no new pid file within 10 s of USR2")?;
                signal("-QUIT", old)?;
                next
            }
            ServerKind::Haproxy => {
                let admin = self.dir.join("admin.sock");
                let child = Command::new("taskset")
                    .args(["-c", servers::SERVER_CPU, "/usr/sbin/haproxy"])
                    .args(&self.args)
                    .arg("-x")
                    .arg(&admin)
                    .arg("-sf")
                    .arg(self.current.to_string())
                    .stdin(Stdio::null())
                    .stdout(log_file(&self.dir)?)
                    .stderr(log_file(&self.dir)?)
                    .spawn()
                    .context("starting the new haproxy")?;
                let pid = child.id();
                // Ready once its stats socket answers with its pid: it bound (took) the listeners before that.
                wait_for(Duration::from_secs(10), || {
                    haproxy_pid(&admin).filter(|&p| p == pid)
                })
                .context("the new haproxy did not answer on its stats socket within 10 s")?;
                pid
            }
        };
        self.current = next;
        self.pids.push(next);
        Ok(())
    }

    /// Stops every process started (the first one through its [`Server`]), by PID.
    fn stop(self) {
        let signal_name = match self.kind {
            ServerKind::Portcullis => "-INT",
            _ => "-TERM",
        };
        // The first process is the harness's [`Server`] when there is one: it stops it.
        let skip = usize::from(self.server.is_some());
        let ours: Vec<u32> = self.pids.iter().skip(skip).copied().collect();
        for &pid in ours.iter().filter(|&&p| alive(p)) {
            let _ = signal(signal_name, pid);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while ours.iter().any(|&p| alive(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for &pid in ours.iter().filter(|&&p| alive(p)) {
            let _ = signal("-KILL", pid);
        }
        drop(self.server);
    }
}

fn log_file(dir: &Path) -> Result<std::fs::File> {
    Ok(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("upgrades.log"))?)
}

fn signal(name: &str, pid: u32) -> Result<()> {
    let status = Command::new("kill")
        .arg(name)
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        bail!("kill {name} {pid} failed");
    }
    Ok(())
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

fn wait_for<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid HAProxy reports on its stats socket (`show info`).
fn haproxy_pid(admin: &Path) -> Option<u32> {
    let mut s = std::os::unix::net::UnixStream::connect(admin).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"show info\n").ok()?;
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .find_map(|l| l.strip_prefix("Pid: "))
        .and_then(|p| p.trim().parse().ok())
}

/// Copies generation `from` over the served files (each written aside, then renamed: never read half-written).
fn install(from: &Cert, to: &Cert) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (src, dst, private) in [
        (&from.key, &to.key, true),
        (&from.combined, &to.combined, true),
        (&from.cert, &to.cert, false),
    ] {
        let tmp = dst.with_extension("tmp");
        std::fs::copy(src, &tmp).with_context(|| format!("copying {}", src.display()))?;
        if private {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        }
        std::fs::rename(&tmp, dst)?;
    }
    Ok(())
}

/// Handshakes until generation `g` is served (at most 15 s), then marks it confirmed: from then on, an older
/// certificate is counted stale.
fn confirm(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    gens: &Generations,
    g: usize,
) -> Result<()> {
    let seen = wait_for(Duration::from_secs(15), || {
        let (_, leaf) = connect(config, addr).ok()?;
        (gens
            .ders
            .get(g)
            .is_some_and(|d| d.as_ref() == leaf.as_ref()))
        .then_some(())
    });
    if seen.is_none() {
        bail!("certificate generation {g} was not served within 15 s of its reload");
    }
    gens.confirmed.store(g, Ordering::Release);
    Ok(())
}

type Stream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Why a connection failed: at connect (`true`: no listener took the SYN) or after.
fn connect(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> std::result::Result<(Stream, CertificateDer<'static>), (bool, String)> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| (true, format!("connect: {e}")))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| (false, e.to_string()))?;
    let name = ServerName::try_from("localhost").map_err(|e| (false, e.to_string()))?;
    let mut conn =
        rustls::ClientConnection::new(config.clone(), name).map_err(|e| (false, e.to_string()))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .map_err(|e| (false, format!("handshake: {e}")))?;
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .ok_or((false, "no certificate".to_owned()))?;
    Ok((rustls::StreamOwned::new(conn, tcp), leaf))
}

fn handshaker(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    interval: Duration,
    gens: &Generations,
    tally: &Tally,
    stop: &AtomicBool,
) {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let due = gens.confirmed.load(Ordering::Acquire);
        tally.handshakes.fetch_add(1, Ordering::Relaxed);
        match connect(config, addr) {
            Ok((mut stream, leaf)) => {
                let g = gens.ders.iter().position(|d| d.as_ref() == leaf.as_ref());
                if g.is_none_or(|g| g < due) {
                    tally.count(&tally.stale, format!("generation {g:?} served after {due}"));
                }
                stream.conn.send_close_notify();
                let _ = stream.flush();
            }
            Err((true, e)) => tally.count(&tally.refused, e),
            Err((false, e)) => tally.count(&tally.failed, e),
        }
        next += interval;
        match next.checked_duration_since(Instant::now()) {
            Some(wait) => std::thread::sleep(wait),
            // Behind (a slow handshake): the schedule moves on rather than bursting to catch up.
            None => next = Instant::now(),
        }
    }
}

fn streamer(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    interval: Duration,
    tally: &Tally,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let mut stream = match connect(config, addr) {
            Ok((s, _)) => s,
            Err((_, e)) => {
                tally.count(&tally.cut, format!("stream connect: {e}"));
                std::thread::sleep(interval);
                continue;
            }
        };
        loop {
            if stop.load(Ordering::Relaxed) {
                stream.conn.send_close_notify();
                let _ = stream.flush();
                return;
            }
            match request(&mut stream) {
                Ok(()) => {
                    tally.requests.fetch_add(1, Ordering::Relaxed);
                }
                Err((0, e)) => {
                    tally.count(
                        &tally.closed_between,
                        format!("closed between requests: {e}"),
                    );
                    break;
                }
                Err((_, e)) => {
                    tally.count(&tally.cut, format!("cut mid-answer: {e}"));
                    break;
                }
            }
            std::thread::sleep(interval);
        }
    }
}

/// One keep-alive `GET /`, its head and `Content-Length` body read whole. On failure: the bytes of the
/// answer read before it (0: the connection ended between two requests) and why.
fn request(stream: &mut Stream) -> std::result::Result<(), (usize, String)> {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .and_then(|()| stream.flush())
        .map_err(|e| (0, format!("write: {e}")))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => return Err((head.len(), "closed".into())),
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err((head.len(), format!("read: {e}"))),
        }
        if head.len() > 16 * 1024 {
            return Err((head.len(), "answer head over 16 KiB".into()));
        }
    }
    let text = String::from_utf8_lossy(&head);
    let length: usize = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .ok_or_else(|| (head.len(), format!("no content-length in {text:?}")))?;
    let mut body = vec![0u8; length];
    stream
        .read_exact(&mut body)
        .map_err(|e| (head.len().max(1), format!("body: {e}")))?;
    if !text.starts_with("HTTP/1.1 200") {
        return Err((head.len(), format!("answer {text:?}")));
    }
    Ok(())
}

fn client_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| unreachable!("the default provider supports the default versions"))
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    // Every handshake a full one: resumption would hide a certificate change.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// The benchmark's certificates are self-signed and change on every reload: the clients check which one they
/// got instead of a chain, and still verify the handshake's signature.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn report(ctx: &Ctx, plan: &Plan, rows: &[(ServerKind, Row)]) -> Result<()> {
    println!(
        "\nbench upgrade: {} handshakes/s offered, {} streams (a request every {:?}), 3 reloads + 3 upgrades{}",
        (plan.handshakers as f64 / plan.interval.as_secs_f64()).round(),
        plan.streams,
        plan.stream_interval,
        if ctx.quick {
            " (--quick: smoke figures)"
        } else {
            ""
        }
    );
    println!(
        "{:<11} {:>10} {:>8} {:>7} {:>6} {:>9} {:>6} {:>15} {:>7}",
        "server",
        "handshakes",
        "refused",
        "failed",
        "stale",
        "requests",
        "cut",
        "closed-between",
        "seconds"
    );
    let mut json = Vec::new();
    for (kind, r) in rows {
        println!(
            "{:<11} {:>10} {:>8} {:>7} {:>6} {:>9} {:>6} {:>15} {:>7.1}",
            kind.name(),
            r.handshakes,
            r.refused,
            r.failed,
            r.stale,
            r.requests,
            r.cut,
            r.closed_between,
            r.seconds
        );
        for e in &r.first_errors {
            println!("    {kind}: {e}");
        }
        if let Some(at) = r.last_loss {
            println!(
                "    {kind}: last loss at {at:.1} s; {}",
                r.switches.join(", ")
            );
        }
        json.push(serde_json::json!({
            "server": kind.name(),
            "handshakes": r.handshakes,
            "refused": r.refused,
            "failed": r.failed,
            "stale_certificate": r.stale,
            "stream_requests": r.requests,
            "cut_mid_answer": r.cut,
            "closed_between_requests": r.closed_between,
            "seconds": r.seconds,
            "first_errors": r.first_errors,
            "last_loss_seconds": r.last_loss,
            "switches": r.switches,
        }));
    }
    let path = ctx.out.join("upgrade.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("JSON: {}", path.display());
    for (kind, r) in rows {
        if *kind == ServerKind::Portcullis {
            let lost = r.refused + r.failed + r.stale + r.cut + r.closed_between;
            if lost > 0 || r.handshakes == 0 || r.requests == 0 {
                bail!(
                    "portcullis lost {lost} handshakes or requests across reloads and upgrades (or measured nothing): \
                     see target/bench/upgrade-portcullis/"
                );
            }
        }
    }
    Ok(())
}
