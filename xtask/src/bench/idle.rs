//! `bench idle`: memory per idle TLS 1.3 connection, portcullis beside nginx and HAProxy.
//!
//! For each cell the server starts alone (one worker on CPU 0), its processes' memory is read, then
//! `portcullis-load hold` (CPU 1) opens N connections, completes each TLS 1.3 handshake (full, X25519, ECDSA P-256)
//! and, in the "after a request" cells, one keep-alive `GET /` with its whole response; then it holds them and
//! reads nothing more. Memory is read again after a settling second: the figure is the delta divided by N, as RSS
//! (`VmRSS` of `/proc/PID/status`) and as Pss (`/proc/PID/smaps_rollup`), summed over the server's processes
//! (nginx: master and worker). Socket buffers are kernel memory and count in neither.
//!
//! **Pending**: then every connection sends 100 bytes of an unfinished HTTP/1.1 request head (no blank line ends
//! it) and memory is read once more. nginx and HAProxy keep it buffered, waiting for the rest of the head;
//! portcullis in `tcp` mode decrypts it, connects upstream (lazy connect: the first byte triggers it) and relays it
//! to a sink in this process that accepts and never reads nor answers, so its figure includes the upstream socket
//! and the relay's state; in `http` mode it waits for the rest of the head like nginx (its keep-alive request is
//! answered by the daemon's built-in demo upstream, whose memory counts against portcullis). Held `http`
//! connections have parked (100 ms after their response; the settle is longer): the figure is a parked one.
//!
//! Descriptor limits: the servers get `ulimit -n` 2N + 10,000 (client and upstream sockets), nginx
//! `worker_connections` N + 1,000, HAProxy `maxconn` N + 500 (it wants two descriptors per connection), and every
//! idle timeout 10 minutes; the client and this process raise their own limit. Where the hard limit cannot be
//! raised (root without CAP_SYS_RESOURCE), N is lowered to fit under it, with a note. portcullis runs with admission control off:
//! opening N connections at 64 at a time is a deliberate burst, not an overload to shed.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use super::Ctx;
use super::certs::{self, KeyType};
use super::load::LOAD_CPU;
use super::servers::{self, Server, ServerKind};

/// The target: KiB per idle TLS connection, portcullis `tcp` and `http` modes, RSS (issue 22).
pub const TARGET_KIB: f64 = 10.0;
/// Bytes of the unfinished request head each connection sends in the "pending" measurement.
const PENDING_BYTES: usize = 100;
/// How long memory settles after the client says it is done, before it is read.
const SETTLE: Duration = Duration::from_millis(1500);

/// One cell: a server in one configuration, held after the handshake or after one request.
struct Cell {
    label: String,
    kind: ServerKind,
    /// Extra `portcullis run` flags.
    extra: Vec<String>,
    /// Send one keep-alive request before holding.
    request: bool,
}

/// Memory of a server's processes, KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Mem {
    rss_kib: f64,
    pss_kib: f64,
}

/// What one cell measured, KiB per connection.
#[derive(Clone, Copy, Debug)]
struct Figures {
    idle: Mem,
    pending: Mem,
}

/// Runs the benchmark; writes `target/bench/idle.{txt,json}`.
pub fn run(ctx: &Ctx) -> Result<()> {
    let asked = ctx.hold.context("bench idle without a connection count")?;
    // Root without CAP_SYS_RESOURCE (containers) cannot raise the hard limit: hold what fits under it, with
    // portcullis' upstream sockets and the sink's (one each per pending connection) counted.
    let _ = raise_own_nofile((2 * asked + 10_000) as u64);
    let fit = servers::hard_nofile().saturating_sub(2_000) / 2;
    let n = asked.min(fit);
    if n < asked {
        println!(
            "note: the open-file hard limit is {} and cannot be raised here (CAP_SYS_RESOURCE): holding {n} \
             connections instead of {asked}",
            servers::hard_nofile()
        );
    }
    if n < 100 {
        bail!(
            "the open-file hard limit leaves room for {n} connections: raise it (`ulimit -Hn`, as root)"
        );
    }
    raise_own_nofile(servers::nofile(ctx).min(servers::hard_nofile()) as u64)?;
    let ctx = &Ctx {
        hold: Some(n),
        ..ctx.clone()
    };
    let cert = certs::ensure(&ctx.out, KeyType::Ecdsa)?;
    let cells = cells(ctx)?;
    let mut rows = Vec::new();
    for cell in &cells {
        let figures =
            measure(ctx, &cert, cell, n).with_context(|| format!("bench idle: {}", cell.label))?;
        rows.push((cell, figures));
    }
    let text = table(&rows, n);
    print!("{text}");
    std::fs::write(ctx.out.join("idle.txt"), &text)?;
    let json = json!({
        "connections": n,
        "pending_bytes": PENDING_BYTES,
        "target_kib": TARGET_KIB,
        "cells": rows.iter().map(|(c, f)| json!({
            "label": c.label,
            "after_request": c.request,
            "idle_rss_kib": f.idle.rss_kib,
            "idle_pss_kib": f.idle.pss_kib,
            "pending_rss_kib": f.pending.rss_kib,
            "pending_pss_kib": f.pending.pss_kib,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(
        ctx.out.join("idle.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    for (cell, f) in &rows {
        if cell.kind == ServerKind::Portcullis {
            let met = f.idle.rss_kib <= TARGET_KIB;
            println!(
                "{}: {:.1} KiB per idle connection (RSS): the <= {TARGET_KIB} KiB target is {}",
                cell.label,
                f.idle.rss_kib,
                if met { "met" } else { "NOT met" }
            );
        }
    }
    Ok(())
}

/// The cells in table order: portcullis `tcp` (and `http` when the daemon has `--mode`), nginx and HAProxy after
/// the handshake and after one request.
fn cells(ctx: &Ctx) -> Result<Vec<Cell>> {
    let mut cells = Vec::new();
    for kind in &ctx.servers {
        match kind {
            ServerKind::Portcullis => {
                cells.push(Cell {
                    label: "portcullis tcp".into(),
                    kind: *kind,
                    extra: Vec::new(),
                    request: false,
                });
                if daemon_has_http_mode(ctx)? {
                    cells.push(Cell {
                        label: "portcullis http".into(),
                        kind: *kind,
                        extra: vec!["--mode".into(), "http".into()],
                        request: true,
                    });
                } else {
                    println!(
                        "note: `portcullis run --help` has no `--mode`: the portcullis http cell is skipped"
                    );
                }
            }
            _ => {
                for request in [false, true] {
                    cells.push(Cell {
                        label: if request {
                            format!("{kind} (after a request)")
                        } else {
                            kind.name().to_owned()
                        },
                        kind: *kind,
                        extra: Vec::new(),
                        request,
                    });
                }
            }
        }
    }
    Ok(cells)
}

fn daemon_has_http_mode(ctx: &Ctx) -> Result<bool> {
    let out = Command::new(&ctx.daemon)
        .args(["run", "--help"])
        .output()
        .with_context(|| format!("running {} run --help", ctx.daemon.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("--mode"))
}

fn measure(ctx: &Ctx, cert: &certs::Cert, cell: &Cell, n: usize) -> Result<Figures> {
    let sink = Sink::start()?;
    let dir = ctx.out.join("idle");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join(format!("{}.toml", cell.label.replace(' ', "-")));
    // `tcp`: the upstream is the sink. `http`: the keep-alive request needs an answer, so the built-in demo
    // upstream (in the daemon's process: its memory counts against portcullis) serves it.
    let upstream = if cell.request {
        String::new()
    } else {
        format!("[upstream]\nbackends = [\"127.0.0.1:{}\"]\n", sink.port)
    };
    std::fs::write(
        &config,
        format!(
            "# cargo xtask bench idle: admission control off.\n[admission]\nenabled = false\n{upstream}"
        ),
    )?;
    let label = format!("idle-{}", cell.label.replace([' ', '(', ')'], ""));
    let server =
        servers::start_with_args(ctx, cell.kind, cert, &label, Some(&config), &cell.extra)?;
    std::thread::sleep(SETTLE);
    let before = mem(&server);
    let mut client = Hold::start(ctx, server.port, n, cell.request)?;
    client.expect(&format!("held {n}"))?;
    std::thread::sleep(SETTLE);
    let idle = mem(&server);
    client.send("pending")?;
    client.expect(&format!("pending {n}"))?;
    if cell.kind == ServerKind::Portcullis && !cell.request {
        wait_relayed(&server, (n * PENDING_BYTES) as f64)?;
    }
    std::thread::sleep(SETTLE);
    let pending = mem(&server);
    client.finish()?;
    drop(server);
    drop(sink);
    let per = |m: Mem| Mem {
        rss_kib: (m.rss_kib - before.rss_kib) / n as f64,
        pss_kib: (m.pss_kib - before.pss_kib) / n as f64,
    };
    Ok(Figures {
        idle: per(idle),
        pending: per(pending),
    })
}

/// Waits until portcullis has relayed `bytes` to its upstream (the pending heads), so the pending figure includes
/// every upstream connection and relay.
fn wait_relayed(server: &Server, bytes: f64) -> Result<()> {
    let port = server
        .metrics_port
        .context("portcullis without a metrics port")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = servers::http_get(port, "/metrics")?;
        let relayed: f64 = text
            .lines()
            .filter(|l| {
                l.starts_with("portcullis_forwarded_bytes_total")
                    && l.contains("\"client_to_upstream\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
            .sum();
        if relayed >= bytes {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("portcullis relayed {relayed} of the {bytes} pending bytes upstream within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn table(rows: &[(&Cell, Figures)], n: usize) -> String {
    let nginx = |request: bool| {
        rows.iter()
            .find(|(c, _)| c.kind == ServerKind::Nginx && c.request == request)
            .map(|(_, f)| *f)
    };
    let mut t = format!(
        "KiB per idle TLS 1.3 connection, {n} held (RSS and Pss deltas of the server's processes); \
         pending = with {PENDING_BYTES} bytes of an unfinished request head\n\n\
         | server | idle RSS | idle Pss | x nginx | pending RSS | pending Pss | x nginx |\n\
         |---|---:|---:|---:|---:|---:|---:|\n"
    );
    for (cell, f) in rows {
        let base = nginx(cell.request);
        let ratio = |mine: f64, theirs: Option<f64>| {
            theirs
                .filter(|t| *t > 0.0)
                .map_or("-".to_owned(), |t| format!("{:.2}", mine / t))
        };
        t.push_str(&format!(
            "| {} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {} |\n",
            cell.label,
            f.idle.rss_kib,
            f.idle.pss_kib,
            ratio(f.idle.rss_kib, base.map(|b| b.idle.rss_kib)),
            f.pending.rss_kib,
            f.pending.pss_kib,
            ratio(f.pending.rss_kib, base.map(|b| b.pending.rss_kib)),
        ));
    }
    t
}

/// RSS and Pss of the server's processes.
fn mem(server: &Server) -> Mem {
    let mut m = Mem::default();
    for pid in server.pids() {
        m.rss_kib += kib_field(&format!("/proc/{pid}/status"), "VmRSS:");
        m.pss_kib += kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:");
    }
    m
}

/// The `NAME: 123 kB` line of a /proc file, in KiB (0 when absent).
fn kib_field(path: &str, name: &str) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0.0)
}

fn raise_own_nofile(want: u64) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if lim.rlim_cur >= want {
        return Ok(());
    }
    lim.rlim_cur = want;
    lim.rlim_max = lim.rlim_max.max(want);
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| {
            format!("cannot raise this process's open-file limit to {want} (the upstream sink holds one per connection): run as root")
        });
    }
    Ok(())
}

/// portcullis' upstream: accepts and keeps every connection, never reads, never answers.
struct Sink {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the upstream sink")?;
        // std listens with a backlog of 128: the pending row's connects arrive thousands at once, and a full
        // accept queue drops SYNs that portcullis' 3 s connect timeout then gives up on. Listening again
        // raises the backlog (to net.core.somaxconn at most).
        // SAFETY: listen(2) on a descriptor this listener owns; no memory is passed.
        if unsafe { libc::listen(listener.as_raw_fd(), 65_535) } != 0 {
            return Err(std::io::Error::last_os_error())
                .context("raising the upstream sink's backlog");
        }
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        Ok(Self {
            port,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `portcullis-load hold`, on CPU 1, driven over its stdin/stdout.
struct Hold {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    deadline: Instant,
}

impl Hold {
    fn start(ctx: &Ctx, port: u16, n: usize, request: bool) -> Result<Self> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "ulimit -n {}; exec taskset -c {LOAD_CPU} \"$@\"",
                (n + 1_000).min(servers::hard_nofile())
            ))
            .arg("sh")
            .arg(&ctx.load)
            .args(["hold", "--target"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--connections", &n.to_string()])
            .args(["--pending-bytes", &PENDING_BYTES.to_string()]);
        if request {
            cmd.args(["--http", "/"]);
        }
        eprintln!(
            "+ portcullis-load hold --target 127.0.0.1:{port} --connections {n}{}",
            if request { " --http /" } else { "" }
        );
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", ctx.load.display()))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
            // Bounded: the client's own per-connection timeout is 30 s, 64 at a time.
            deadline: Instant::now() + Duration::from_secs(600),
        })
    }

    /// Reads the next line and checks it is `want` (the client fails with a message on stderr otherwise).
    fn expect(&mut self, want: &str) -> Result<()> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if line.trim() != want {
            let status = self.child.wait()?;
            bail!(
                "portcullis-load hold said {:?} instead of {want:?} ({status}); its error is above",
                line.trim()
            );
        }
        if Instant::now() > self.deadline {
            bail!("portcullis-load hold took more than 10 minutes");
        }
        Ok(())
    }

    fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        writeln!(stdin, "{line}")?;
        Ok(stdin.flush()?)
    }

    /// Closes stdin: the client closes every connection and exits.
    fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            bail!("portcullis-load hold exited with {status}");
        }
        Ok(())
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.stdin.take().is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proc_field_reads_in_kib() {
        let dir = std::env::temp_dir().join(format!("xtask-idle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let f = dir.join("status");
        std::fs::write(&f, "Name:\tx\nVmRSS:\t   16984 kB\nPss:   12 kB\n").expect("write");
        let p = f.display().to_string();
        assert_eq!(kib_field(&p, "VmRSS:"), 16984.0);
        assert_eq!(kib_field(&p, "Pss:"), 12.0);
        assert_eq!(kib_field(&p, "Nope:"), 0.0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
