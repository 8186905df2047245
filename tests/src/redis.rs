//! A real `redis-server` per test, on a free loopback port (never a mock): started without persistence, ready
//! when it answers `PING`, killed on drop. Fault tests stop it (`SIGSTOP`: the port still accepts, nothing
//! answers) or kill it.
//!
//! `redis-server` is a Debian package that `cargo xtask setup` installs; when it is missing the test is
//! skipped with a line saying why, and under `CI=true` that skip is a failure.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running `redis-server` this test started.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
}

/// Whether `redis-server` can run here. Prints why not; panics under `CI=true`, where skipping is a failure.
pub fn require_redis(test: &str) -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    crate::privileged::skip(&format!(
        "test `{test}` needs redis-server (`cargo xtask setup` installs it)"
    ))
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it answers `PING`.
    pub fn start() -> anyhow::Result<Self> {
        // A port the kernel says is free; another process could take it before redis binds, so retry.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--protected-mode", "yes", "--daemonize", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start redis-server (`cargo xtask setup` installs it)")?;
            let mut server = Self { child, port };
            if server.wait_ready().is_ok() {
                return Ok(server);
            }
            let _ = server.child.kill();
            let _ = server.child.wait();
        }
        bail!("redis-server did not come up on a free port in 5 attempts")
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("redis-server exited: {status}");
            }
            if self.ping() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("redis-server not answering PING on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the server answers `PING` within 200 ms.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Keys under a prefix (`KEYS prefix*`), via a raw RESP request: how many sessions the store holds.
    pub fn count_keys(&self, prefix: &str) -> anyhow::Result<usize> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let pattern = format!("{prefix}*");
        write!(s, "*2\r\n$4\r\nKEYS\r\n${}\r\n{pattern}\r\n", pattern.len())?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n") {
            s.read_exact(&mut byte)?;
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head);
        text.trim()
            .strip_prefix('*')
            .context("KEYS answers an array")?
            .parse()
            .context("array length")
    }

    /// SIGSTOP: the kernel still accepts connections, redis answers nothing.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// SIGKILL: connections are refused from now on.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("killing redis-server")?;
        self.child.wait().context("reaping redis-server")?;
        Ok(())
    }

    fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = i32::try_from(self.child.id()).context("pid")?;
        kill(Pid::from_raw(pid), signal).context("signalling redis-server")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGCONT first: a stopped process does not act on SIGKILL until it runs (it does die, but be plain).
        let _ = self.signal(Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
