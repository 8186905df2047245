//! The command line: `portcullis run`, `portcullis check-config`, `portcullis keys`, `portcullis xdp`,
//! `portcullis steering`, `portcullis fingerprint` and `portcullis upgrade`.
//!
//! Exit codes: 0 success; 1 runtime failure; 2 bad configuration, bad flags, or an unusable certificate/key
//! file (the message names the field or file).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{CertificateConfig, Config, ListenerConfig, ListenerMode};
use crate::daemon::{self, RunError};

/// portcullis: edge TLS front end.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon. Without --config, runs on embedded defaults: a self-signed certificate generated into
    /// the state dir, TLS on 127.0.0.1:8443, metrics on 127.0.0.1:9090, and a built-in demo upstream.
    Run(Box<RunArgs>),
    /// Check a config file and exit: 0 if valid, 2 with the offending field named if not.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
    /// Manage a session-ticket key directory: init, rotate, prune, list.
    Keys(crate::tickets::cli::KeysArgs),
    /// Inspect and steer the XDP guard of a running daemon through its pinned maps: status, stats, block.
    Xdp(crate::xdp::cli::XdpArgs),
    /// Inspect and mark workers of the reuseport steering of a running daemon: status, saturate, clear.
    Steering(crate::steering::cli::SteeringArgs),
    /// Print the fingerprints of the ClientHello in a file (the values the guard and metrics use).
    Fingerprint(crate::xdp::cli::FingerprintArgs),
    /// Replace the running daemon by a new binary without refusing a connection: starts `portcullis run
    /// --takeover` with the flags after `--`, which takes the listening sockets and XDP links over; the old
    /// daemon drains. Run as root.
    Upgrade(crate::upgrade::cli::UpgradeArgs),
}

/// Flags of `portcullis run`; each overrides the config file.
#[derive(Debug, Clone, Args)]
struct RunArgs {
    /// TOML config file (see deploy/portcullis.toml for every field, its unit and default).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// TLS listener address (repeatable); replaces the file's listeners. Port 0 picks a free port.
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Upstream backend (repeatable, round robin); replaces upstream.backends.
    #[arg(long = "upstream", value_name = "ADDR")]
    upstream: Vec<SocketAddr>,
    /// Metrics and health endpoint address.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Certificate chain PEM (repeatable, paired in order with --key); replaces tls.certificates.
    #[arg(long = "cert", value_name = "FILE", requires = "key")]
    cert: Vec<PathBuf>,
    /// Private key PEM (repeatable, paired in order with --cert).
    #[arg(long = "key", value_name = "FILE", requires = "cert")]
    key: Vec<PathBuf>,
    /// Number of workers (threads, one per core by default).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Directory for generated state (the self-signed certificate).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Attach the XDP program to this interface (repeatable); replaces xdp.interfaces.
    #[arg(long = "xdp-interface", value_name = "IFACE")]
    xdp_interface: Vec<String>,
    /// Session-ticket key directory shared by the fleet; selects tls.tickets = "fleet".
    #[arg(long = "ticket-keys", value_name = "DIR")]
    ticket_keys: Option<PathBuf>,
    /// Listener mode (`tcp` byte relay, `http` termination) for the --listen listeners, or for every listener
    /// without --listen; replaces listeners[].mode.
    #[arg(long, value_enum, value_name = "MODE")]
    mode: Option<ListenerMode>,
    /// Access log: `off`, `stderr` or a file path; replaces log.access.
    #[arg(long = "access-log", value_name = "off|stderr|PATH")]
    access_log: Option<String>,
    /// Redis URL of the fleet's 0-RTT session store; selects tls.session_store.kind = "redis".
    #[arg(long = "session-store", value_name = "URL")]
    session_store: Option<String>,
    /// Run as this user (name or uid) once listeners are bound and XDP attached, with no capability;
    /// replaces process.user.
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// Run as this group (name or gid); replaces process.group. Default: the user's primary group.
    #[arg(long, value_name = "GROUP", requires = "user")]
    group: Option<String>,
    /// The control socket a successor connects to for an upgrade (default: $RUNTIME_DIRECTORY/control.sock,
    /// /run/portcullis/control.sock as root).
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Take the listening sockets and XDP links over from the daemon on this control socket (what `portcullis
    /// upgrade` runs).
    #[arg(long, value_name = "PATH")]
    takeover: Option<PathBuf>,
}

/// Parses arguments, runs, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Keys(args) => crate::tickets::cli::run(args),
        Command::Xdp(args) => crate::xdp::cli::run(args),
        Command::Steering(args) => crate::steering::cli::run(args),
        Command::Fingerprint(args) => crate::xdp::cli::fingerprint(args),
        Command::Upgrade(args) => crate::upgrade::cli::run(args),
        Command::Run(args) => {
            // SIGHUP reads the configuration again the same way: the file, then the flags over it.
            let again = (*args).clone();
            let load = Box::new(move || again.clone().into_config());
            let upgrade = crate::upgrade::UpgradeOptions {
                control_socket: args.control_socket.clone(),
                takeover: args.takeover.clone(),
            };
            let config = match args.into_config() {
                Ok(c) => c,
                Err(msg) => {
                    eprintln!("error: {msg}");
                    crate::upgrade::report_status(&format!("FAILED {msg}"));
                    return ExitCode::from(2);
                }
            };
            match daemon::run(config, load, upgrade) {
                Ok(()) => ExitCode::SUCCESS,
                Err(RunError::Config(msg)) => {
                    eprintln!("error: {msg}");
                    crate::upgrade::report_status(&format!("FAILED {msg}"));
                    ExitCode::from(2)
                }
                Err(RunError::Other(e)) => {
                    eprintln!("error: {e:#}");
                    crate::upgrade::report_status(&format!("FAILED {e:#}"));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

impl RunArgs {
    fn into_config(self) -> Result<Config, String> {
        let mut config = match &self.config {
            Some(path) => Config::load(path).map_err(|e| e.to_string())?,
            None => Config::default(),
        };
        if !self.listen.is_empty() {
            // The file's listeners keep their settings (early data, names) and take the addresses in order.
            let mut from_file = std::mem::take(&mut config.listeners).into_iter();
            config.listeners = self
                .listen
                .iter()
                .map(|&address| match from_file.next() {
                    Some(l) => ListenerConfig { address, ..l },
                    None => ListenerConfig {
                        name: None,
                        address,
                        backlog: 4096,
                        defer_accept: crate::config::default_defer_accept(),
                        mode: ListenerMode::default(),
                        early_data: Default::default(),
                    },
                })
                .collect();
        }
        if let Some(mode) = self.mode {
            config = config.with_defaults();
            for l in &mut config.listeners {
                l.mode = mode;
            }
        }
        if let Some(target) = self.access_log {
            config.log.access = target.into();
        }
        if !self.upstream.is_empty() {
            config.upstream.backends = self.upstream;
        }
        if let Some(m) = self.metrics {
            config.metrics.address = m;
        }
        if self.cert.len() != self.key.len() {
            return Err(format!(
                "--cert and --key come in pairs: got {} --cert and {} --key",
                self.cert.len(),
                self.key.len()
            ));
        }
        if !self.cert.is_empty() {
            config.tls.certificates = self
                .cert
                .into_iter()
                .zip(self.key)
                .map(|(cert, key)| CertificateConfig {
                    cert,
                    key,
                    server_names: Vec::new(),
                    ocsp: None,
                })
                .collect();
        }
        if let Some(w) = self.workers {
            config.workers = Some(w);
        }
        if let Some(dir) = self.state_dir {
            config.state_dir = Some(dir);
        }
        if !self.xdp_interface.is_empty() {
            config.xdp.interfaces = self.xdp_interface;
        }
        if let Some(dir) = self.ticket_keys {
            config.tls.ticket_keys_dir = Some(dir);
            config.tls.tickets = Some(crate::config::TicketMode::Fleet);
        }
        if let Some(url) = self.session_store {
            config.tls.session_store.url = Some(url);
            config.tls.session_store.kind = crate::tickets::session_store::StoreKind::Redis;
        }
        if let Some(user) = self.user {
            config.process.user = Some(user);
            config.process.group = self.group;
        }
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// Logs to stderr; the filter comes from `PORTCULLIS_LOG` (e.g. `debug`, `portcullis=trace`), default `info`.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
