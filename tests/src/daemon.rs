//! Starting the real `portcullis` binary for a test and talking to it.
//!
//! Readiness is the daemon's sd_notify `READY=1` message on a socket the test owns (no sleeps, no polling);
//! listeners bind port 0 and the daemon reports the ports it got. Each daemon gets its own temporary directory
//! (state dir, config file, stderr log), removed when the [`Daemon`] is dropped. The process is killed on drop
//! if the test did not stop it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a daemon may take to become ready (a debug build generating its certificate on a busy CI host).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The daemon binary under test: `$PORTCULLIS_BIN`, else the workspace's debug build.
pub fn binary() -> PathBuf {
    match std::env::var_os("PORTCULLIS_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/portcullis"),
    }
}

/// A fresh temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/portcullis-test-<pid>-<n>-<tag>`.
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("portcullis-test-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How to start a daemon.
#[derive(Debug, Default, Clone)]
pub struct DaemonOptions {
    /// Arguments after `portcullis run` (`--listen 127.0.0.1:0` and `--metrics 127.0.0.1:0` are added unless
    /// the args or config say otherwise; `--state-dir` is always the test's own).
    pub args: Vec<String>,
    /// Config file contents, passed with `--config`.
    pub config_toml: Option<String>,
    /// Network namespace name (under /run/netns) to run the daemon in.
    pub netns: Option<String>,
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    /// The TLS listeners' bound addresses, in config order.
    pub listen: Vec<SocketAddr>,
    /// The metrics endpoint.
    pub metrics: SocketAddr,
    child: Option<Child>,
    netns: Option<String>,
    dir: TempDir,
    /// The daemon's own pin directory (removed after the daemon, fields drop after `Drop::drop`).
    _pins: Option<crate::bpffs::BpfDir>,
}

impl Daemon {
    /// Starts the daemon and waits for its readiness notification.
    pub fn start(opts: DaemonOptions) -> anyhow::Result<Daemon> {
        let dir = TempDir::new("daemon")?;
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).context("binding the notify socket")?;
        notify.set_read_timeout(Some(Duration::from_millis(200)))?;

        let mut args: Vec<String> = vec![
            "run".into(),
            "--state-dir".into(),
            dir.path().join("state").display().to_string(),
        ];
        let config_has = |section: &str| {
            opts.config_toml
                .as_deref()
                .is_some_and(|c| c.contains(section))
        };
        // Every daemon pins its BPF objects (the steering program, on by default; XDP when configured) in a
        // directory of its own, unless the test chose one: parallel tests must never share or delete each
        // other's pins, nor touch a production daemon's default pin_dir.
        let own_pins = (!config_has("pin_dir")).then(|| crate::bpffs::BpfDir::new("daemon"));
        let toml = match &own_pins {
            Some(pins) => Some(with_pin_dir(
                opts.config_toml.as_deref().unwrap_or_default(),
                pins.path(),
            )),
            None => opts.config_toml.clone(),
        };
        if let Some(toml) = &toml {
            let path = dir.path().join("portcullis.toml");
            std::fs::write(&path, toml)?;
            args.extend(["--config".into(), path.display().to_string()]);
        }
        if !opts.args.iter().any(|a| a == "--listen") && !config_has("[[listeners]]") {
            args.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        if !opts.args.iter().any(|a| a == "--metrics") && !config_has("[metrics]") {
            args.extend(["--metrics".into(), "127.0.0.1:0".into()]);
        }
        args.extend(opts.args.iter().cloned());

        let stderr = std::fs::File::create(dir.path().join("stderr.log"))?;
        let mut cmd = match &opts.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .arg("--")
                    .arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        cmd.args(&args)
            .env("NOTIFY_SOCKET", &notify_path)
            .env(
                "PORTCULLIS_LOG",
                std::env::var("PORTCULLIS_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd.spawn().with_context(|| {
            format!(
                "cannot start {} (build it with `cargo xtask build`)",
                binary().display()
            )
        })?;
        let mut daemon = Daemon {
            listen: Vec::new(),
            metrics: SocketAddr::from(([0, 0, 0, 0], 0)),
            child: Some(child),
            netns: opts.netns.clone(),
            dir,
            _pins: own_pins,
        };
        daemon.wait_ready(&notify)?;
        Ok(daemon)
    }

    fn wait_ready(&mut self, notify: &UnixDatagram) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "daemon exited before ready ({status}); stderr:\n{}",
                    self.stderr()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "daemon not ready after {READY_TIMEOUT:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            let n = match notify.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let msg = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
            if !msg.lines().any(|l| l == "READY=1") {
                continue;
            }
            for line in msg.lines() {
                if let Some(v) = line.strip_prefix("PORTCULLIS_LISTEN=") {
                    self.listen = v.split(',').map(str::parse).collect::<Result<_, _>>()?;
                }
                if let Some(v) = line.strip_prefix("PORTCULLIS_METRICS=") {
                    self.metrics = v.parse()?;
                }
            }
            return Ok(());
        }
    }

    /// The first TLS listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.listen.first().copied().unwrap_or(self.metrics)
    }

    /// The daemon's PID while it runs (to read its memory from `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The daemon's private directory (its state dir is `state/` inside).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the daemon logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// `GET path` on the metrics endpoint; returns (status, body). Runs inside the daemon's netns if it has one.
    pub fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let addr = self.metrics;
        let path = path.to_owned();
        match &self.netns {
            None => http_get(addr, &path),
            Some(ns) => {
                let ns = ns.clone();
                std::thread::spawn(move || -> anyhow::Result<(u16, String)> {
                    let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
                    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)?;
                    http_get(addr, &path)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("metrics thread panicked"))?
            }
        }
    }

    /// The `/metrics` text (Prometheus text format).
    pub fn metrics_text(&self) -> anyhow::Result<String> {
        let (status, body) = self.admin_get("/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}: {body}");
        }
        Ok(body)
    }

    /// Sum of the samples of `name` whose labels include every `key="value"` in `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        Ok(metric_value(&self.metrics_text()?, name, labels))
    }

    /// Sends `signal` and waits (bounded) for the process to exit.
    pub fn stop_with(mut self, signal: nix::sys::signal::Signal) -> anyhow::Result<ExitStatus> {
        self.stop_in_place(signal)
    }

    fn stop_in_place(&mut self, signal: nix::sys::signal::Signal) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("daemon already stopped")?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, signal)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "daemon did not exit within 30 s of {signal}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` without waiting.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("daemon already stopped")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
            signal,
        )?;
        Ok(())
    }

    /// Whether the process has exited (without waiting).
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("daemon already stopped"),
        }
    }

    /// The tail of a test: SIGTERM, and the daemon must drain and exit 0; panics with its stderr otherwise.
    pub fn stop_ok(mut self) {
        match self.stop_in_place(nix::sys::signal::Signal::SIGTERM) {
            Ok(s) if s.success() => {}
            Ok(s) => panic!(
                "daemon exited with {s} after SIGTERM; stderr:\n{}",
                self.stderr()
            ),
            Err(e) => panic!("stopping the daemon: {e:#}"),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `toml` with `[xdp] pin_dir` set to `dir`: under the `[xdp]` table if it has one, else in a new one.
fn with_pin_dir(toml: &str, dir: &Path) -> String {
    let line = format!("pin_dir = {:?}\n", dir.display().to_string());
    match toml.find("[xdp]\n") {
        Some(at) => {
            let (head, tail) = toml.split_at(at + "[xdp]\n".len());
            format!("{head}{line}{tail}")
        }
        None => format!("{toml}\n[xdp]\n{line}"),
    }
}

/// A minimal HTTP/1.0 GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status line in {resp:?}"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Sums the samples of `name` in a Prometheus text exposition whose labels include all of `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_part) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_part.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            if !all {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pin_dir_goes_into_the_xdp_table_or_a_new_one() {
        let dir = Path::new("/sys/fs/bpf/x");
        assert_eq!(
            with_pin_dir("workers = 2\n[xdp]\ninterfaces = [\"v\"]\n", dir),
            "workers = 2\n[xdp]\npin_dir = \"/sys/fs/bpf/x\"\ninterfaces = [\"v\"]\n"
        );
        assert_eq!(
            with_pin_dir("[admission]\nenabled = true\n", dir),
            "[admission]\nenabled = true\n\n[xdp]\npin_dir = \"/sys/fs/bpf/x\"\n"
        );
        assert_eq!(
            with_pin_dir("", dir),
            "\n[xdp]\npin_dir = \"/sys/fs/bpf/x\"\n"
        );
    }
}
