//! `portcullis upgrade`: starts the new binary as `portcullis run --takeover SOCKET ARGS...`, in a session of
//! its own so it outlives this command, and waits until it says ready (exit 0) or fails (exit 1, its error
//! printed). Run it as root (or with the capabilities `portcullis run` needs): the running daemon has none.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Args;

/// Flags of `portcullis upgrade`.
#[derive(Debug, Clone, Args)]
pub struct UpgradeArgs {
    /// The running daemon's control socket (default: $RUNTIME_DIRECTORY/control.sock, /run/portcullis/control.sock
    /// as root).
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// The new binary (default: this one, i.e. the file now installed at its path).
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
    /// How long the successor may take to become ready, e.g. `60s`.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// The flags of `portcullis run` for the new daemon (after `--`): the same as the running one's.
    #[arg(last = true, value_name = "RUN_ARGS")]
    run_args: Vec<String>,
}

/// Runs `portcullis upgrade`.
pub fn run(args: UpgradeArgs) -> ExitCode {
    match upgrade(&args) {
        Ok(pid) => {
            println!("upgraded: pid {pid} serves; the old daemon drains");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn upgrade(args: &UpgradeArgs) -> anyhow::Result<u32> {
    use anyhow::Context as _;
    let control = args
        .control_socket
        .clone()
        .unwrap_or_else(super::default_control_socket);
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("cannot find this binary's path; pass --binary")?,
    };
    let status_dir =
        std::env::temp_dir().join(format!("portcullis-upgrade-{}", std::process::id()));
    std::fs::create_dir_all(&status_dir)
        .with_context(|| format!("cannot create {}", status_dir.display()))?;
    let status_path = status_dir.join("status.sock");
    let _ = std::fs::remove_file(&status_path);
    let status = std::os::unix::net::UnixDatagram::bind(&status_path)
        .with_context(|| format!("cannot bind {}", status_path.display()))?;
    // The successor may drop to the daemon's user before it reports.
    std::fs::set_permissions(
        &status_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )?;
    status.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut child = Command::new(&binary)
        .arg("run")
        .arg("--takeover")
        .arg(&control)
        .args(&args.run_args)
        .env(super::STATUS_SOCKET_ENV, &status_path)
        .stdin(Stdio::null())
        // A daemon keeps no pipe of this command open: whoever reads our stdout sees it end when we exit.
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let deadline = Instant::now() + args.timeout;
    let outcome = loop {
        let mut buf = [0u8; 4096];
        match status.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
                if let Some(pid) = msg.strip_prefix("READY pid=") {
                    break Ok(pid.trim().parse().unwrap_or(child.id()));
                }
                if let Some(reason) = msg.strip_prefix("FAILED ") {
                    break Err(anyhow::anyhow!("the new daemon failed: {reason}"));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => break Err(e.into()),
        }
        if let Some(exit) = child.try_wait()? {
            break Err(anyhow::anyhow!(
                "the new daemon exited ({exit}) before it was ready; the running one goes on serving"
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break Err(anyhow::anyhow!(
                "the new daemon was not ready within {:?}; stopped it, the running one goes on serving",
                args.timeout
            ));
        }
    };
    let _ = std::fs::remove_dir_all(&status_dir);
    outcome
}
