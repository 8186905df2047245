//! Command-line parsing (`portcullis-load run|limit|hold|ttfb|floor`), output files, exit codes. The only place that uses
//! `anyhow`: everything below returns typed errors.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use rustls::pki_types::ServerName;

use crate::chart;
use crate::client_config::{ClientConfigs, Group, TlsOptions};
use crate::connection::{ConnSpec, Target};
use crate::floor;
use crate::hold::{self, HoldSpec};
use crate::kind::{Kind, Mix};
use crate::limit::{self, LimitSpec};
use crate::phases::{self, Arrival, Phase};
use crate::report::Report;
use crate::runner::{self, Load, RunSpec};
use crate::store::Scope;

/// Open-loop TLS handshake load generator.
#[derive(Parser, Debug)]
#[command(name = "portcullis-load", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Open TLS connections to the targets and report latency from intended start.
    Run(Box<RunArgs>),
    /// Time rustls handshakes in memory, server side only: the "limit" column of the benchmarks.
    Limit(LimitArgs),
    /// Hold N idle TLS 1.3 connections for a memory benchmark (stdin/stdout protocol: see the `hold` module).
    Hold(HoldArgs),
    /// Time to first response byte of one `GET` per new connection, full / resumed / 0-RTT, sequential
    /// samples; prints JSON (the probe of `cargo xtask bench zero-rtt`).
    Ttfb(crate::ttfb::TtfbArgs),
    /// The least a rustls server over TCP can do (one thread; handshake, wait for the client's close,
    /// close_notify, close), serving until stopped: the "floor" column of `cargo xtask bench handshakes`.
    Floor(FloorArgs),
}

#[derive(Args, Debug)]
struct FloorArgs {
    /// Address to listen on; port 0 picks a free one (printed).
    #[arg(long, value_name = "HOST:PORT")]
    listen: String,
    /// PEM certificate chain.
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key.
    #[arg(long)]
    key: PathBuf,
}

#[derive(Args, Debug)]
struct HoldArgs {
    /// Target address.
    #[arg(long, value_name = "HOST:PORT")]
    target: String,
    /// Server name sent as SNI.
    #[arg(long, default_value = "localhost")]
    sni: String,
    /// Connections to open and hold.
    #[arg(long, default_value = "2000")]
    connections: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value = "64")]
    concurrency: usize,
    /// Before holding, send one keep-alive `GET PATH HTTP/1.1` and read its whole response.
    #[arg(long, value_name = "PATH")]
    http: Option<String>,
    /// Size in bytes of the unfinished request head sent on `pending`.
    #[arg(long, default_value = "100")]
    pending_bytes: usize,
    /// Bound on each connection's connect, handshake and response, seconds.
    #[arg(long, value_name = "SECONDS", default_value = "30")]
    timeout: f64,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Target address (repeatable: round robin). A name resolves once, at start.
    #[arg(long = "target", value_name = "HOST:PORT", required = true)]
    targets: Vec<String>,
    /// Server name sent as SNI (and the session store's key in the `sni` scope).
    #[arg(long, default_value = "localhost")]
    sni: String,
    /// Handshake kinds and weights: full13, full12, resume13, resume12-ticket, resume12-id, e.g.
    /// `full13:1,resume13:3`.
    #[arg(long, default_value = "full13")]
    mix: String,
    /// Open loop: new connections per second (with --duration), unless --phase/--phases is given.
    #[arg(long, value_name = "PER_SECOND")]
    rate: Option<f64>,
    /// Arrival process of --rate.
    #[arg(long, value_enum, default_value = "constant")]
    arrival: Arrival,
    /// Length of the run in seconds (--rate or --concurrency).
    #[arg(long, value_name = "SECONDS", default_value = "10")]
    duration: f64,
    /// A phase NAME:SECONDS:RATE[:constant|poisson] (repeatable, in order), e.g. --phase steady:10:200
    /// --phase storm:5:1000:poisson --phase recovery:10:200.
    #[arg(long = "phase", value_name = "PHASE")]
    phases: Vec<Phase>,
    /// Phases from a TOML file of [[phase]] tables (name, duration_s, rate, arrival).
    #[arg(long = "phases", value_name = "FILE", conflicts_with = "phases")]
    phase_file: Option<PathBuf>,
    /// Closed loop instead: this many connections back to back (to saturate a server). Latency is then from
    /// the actual start.
    #[arg(long, value_name = "N", conflicts_with_all = ["rate", "phases", "phase_file"])]
    concurrency: Option<usize>,
    /// No more connections than this in the whole run.
    #[arg(long, default_value = "1000000")]
    max_connections: u64,
    /// Open loop: at most this many connections at once; arrivals beyond count as `client_limit`.
    #[arg(long, default_value = "4096")]
    max_inflight: usize,
    /// Per-connection bound from intended start to handshake done (and first byte), seconds.
    #[arg(long, value_name = "SECONDS", default_value = "10")]
    timeout: f64,
    /// Local address to connect from (repeatable; used in turn). Each address has its own ephemeral ports, so a
    /// storm with many connections waiting at once (SYNs the server dropped) does not run out of ports, e.g.
    /// --source 127.0.0.2 --source 127.0.0.3. Default: the kernel's choice.
    #[arg(long = "source", value_name = "ADDR")]
    sources: Vec<std::net::IpAddr>,
    /// After the handshake send `GET PATH HTTP/1.1` (Host = SNI, Connection: close) and time the first byte.
    #[arg(long, value_name = "PATH")]
    http: Option<String>,
    /// Keep each connection open this long after the response (or handshake) before closing, seconds.
    #[arg(long, value_name = "SECONDS", default_value = "0")]
    keep: f64,
    /// ALPN protocol to offer (repeatable), e.g. h2, http/1.1.
    #[arg(long = "alpn")]
    alpn: Vec<String>,
    /// Key exchange group (repeatable, in preference order; default x25519). secp256r1 is always offered
    /// last, as real clients do (TLS 1.2 servers with a P-256 certificate require it).
    #[arg(long = "group", value_enum)]
    groups: Vec<Group>,
    /// Session store key: per SNI (every target with that SNI shares) or global.
    #[arg(long, value_enum, default_value = "sni")]
    ticket_scope: Scope,
    /// Seed of the kind mix and Poisson gaps.
    #[arg(long, default_value = "1")]
    seed: u64,
    /// Skip the one-connection-per-target check before the run.
    #[arg(long)]
    no_preflight: bool,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the SVG chart here.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Title of the chart.
    #[arg(long, default_value = "portcullis-load")]
    title: String,
    /// No table on stdout and no progress line.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct LimitArgs {
    /// PEM certificate chain.
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key.
    #[arg(long)]
    key: PathBuf,
    /// Handshake kind.
    #[arg(long, default_value = "full13")]
    kind: Kind,
    /// Handshakes to time.
    #[arg(long, default_value = "2000")]
    handshakes: u32,
    /// Key exchange group (repeatable).
    #[arg(long = "group", value_enum)]
    groups: Vec<Group>,
    /// Print JSON instead of a sentence.
    #[arg(long)]
    json: bool,
}

/// Parses arguments, runs, prints. Exit 0 ok, 1 the run failed, 2 bad arguments (clap's own code).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Limit(args) => run_limit(&args),
        Command::Hold(args) => run_hold(&args),
        Command::Ttfb(args) => run_ttfb(&args),
        Command::Floor(args) => run_floor(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> Result<()> {
    let spec = run_spec(&args)?;
    let report = runner::run(spec)?;
    if !args.quiet {
        print!("{}", report.table());
    }
    write_outputs(
        &report,
        &args.title,
        args.json.as_deref(),
        args.svg.as_deref(),
    )
}

fn run_spec(args: &RunArgs) -> Result<RunSpec> {
    let sni = ServerName::try_from(args.sni.clone())
        .with_context(|| format!("--sni {:?} is not a DNS name or IP address", args.sni))?;
    let targets = args
        .targets
        .iter()
        .map(|t| {
            Ok(Target {
                addr: resolve(t)?,
                sni: sni.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mix: Mix = args.mix.parse().context("--mix")?;
    let load = if let Some(concurrency) = args.concurrency {
        if concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        Load::Closed {
            concurrency,
            duration: seconds("--duration", args.duration)?,
        }
    } else {
        let phases = if let Some(file) = &args.phase_file {
            phases::from_file(file)?
        } else if !args.phases.is_empty() {
            args.phases.clone()
        } else if let Some(rate) = args.rate {
            vec![Phase {
                name: "run".into(),
                duration_s: args.duration,
                rate,
                arrival: args.arrival,
            }]
        } else {
            bail!(
                "say how to load: --rate R (with --duration), --phase ..., --phases FILE or --concurrency N"
            );
        };
        phases::validate(&phases)?;
        Load::Open(phases)
    };
    let request = args.http.as_ref().map(|path| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: portcullis-load\r\nConnection: close\r\n\r\n",
            args.sni
        )
        .into_bytes()
    });
    let groups = if args.groups.is_empty() {
        vec![Group::X25519]
    } else {
        args.groups.clone()
    };
    Ok(RunSpec {
        targets,
        mix,
        tls: TlsOptions {
            groups,
            alpn: args.alpn.iter().map(|a| a.as_bytes().to_vec()).collect(),
            scope: args.ticket_scope,
        },
        conn: ConnSpec {
            request,
            keep: seconds_or_zero("--keep", args.keep)?,
            timeout: seconds("--timeout", args.timeout)?,
            sources: args.sources.clone().into(),
        },
        load,
        max_connections: args.max_connections,
        max_inflight: args.max_inflight.max(1),
        seed: args.seed,
        preflight: !args.no_preflight,
        progress: !args.quiet,
    })
}

fn run_ttfb(args: &crate::ttfb::TtfbArgs) -> Result<()> {
    let report = crate::ttfb::run(args)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn run_hold(args: &HoldArgs) -> Result<()> {
    let sni = ServerName::try_from(args.sni.clone())
        .with_context(|| format!("--sni {:?} is not a DNS name or IP address", args.sni))?;
    // Every held connection is a descriptor: raise the soft limit to the hard one (root may raise both).
    raise_nofile(args.connections as u64 + 64)?;
    let configs = ClientConfigs::new(&TlsOptions::default(), [Kind::Full13])
        .context("building the TLS 1.3 client configuration")?;
    let config = configs
        .of(Kind::Full13)
        .context("no TLS 1.3 configuration")?;
    let spec = HoldSpec {
        addr: resolve(&args.target)?,
        connections: args.connections,
        concurrency: args.concurrency,
        request: args.http.as_ref().map(|path| {
            format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: portcullis-load\r\n\r\n",
                args.sni
            )
            .into_bytes()
        }),
        pending: hold::unfinished_head(&args.sni, args.pending_bytes),
        timeout: seconds("--timeout", args.timeout)?,
        sni,
    };
    hold::run(spec, config).map_err(|f| anyhow::anyhow!("hold: {}", f.message))
}

/// Raises RLIMIT_NOFILE's soft limit to at least `want` (and the hard one too when it is lower: needs root).
fn raise_nofile(want: u64) -> Result<()> {
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
    let soft = lim.rlim_cur;
    lim.rlim_cur = want;
    lim.rlim_max = lim.rlim_max.max(want);
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| {
            format!("cannot raise the open-file limit from {soft} to {want}: run as root or raise `ulimit -n`")
        });
    }
    Ok(())
}

fn run_floor(args: &FloorArgs) -> Result<()> {
    let addr: SocketAddr = args
        .listen
        .parse()
        .with_context(|| format!("--listen {:?}: expected IP:PORT", args.listen))?;
    let config = floor::server_config(&args.cert, &args.key)?;
    let listener = floor::bind(addr)?;
    let bound = listener.local_addr().context("reading the bound address")?;
    println!("portcullis-load floor: listening on {bound}");
    std::io::Write::flush(&mut std::io::stdout()).context("writing to stdout")?;
    floor::serve(listener, config)?;
    Ok(())
}

fn run_limit(args: &LimitArgs) -> Result<()> {
    let spec = LimitSpec {
        cert: args.cert.clone(),
        key: args.key.clone(),
        kind: args.kind,
        handshakes: args.handshakes.max(1),
        tls: TlsOptions {
            groups: if args.groups.is_empty() {
                vec![Group::X25519]
            } else {
                args.groups.clone()
            },
            ..TlsOptions::default()
        },
    };
    let result = limit::measure(&spec)?;
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "{}: {:.1} µs server CPU per handshake ({} handshakes, {} resumed; client {:.1} µs)",
            result.kind,
            result.server_cpu_us,
            result.handshakes,
            result.resumed,
            result.client_cpu_us
        );
    }
    Ok(())
}

fn write_outputs(
    report: &Report,
    title: &str,
    json: Option<&Path>,
    svg: Option<&Path>,
) -> Result<()> {
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text)
            .with_context(|| format!("cannot write the JSON report to {}", path.display()))?;
    }
    if let Some(path) = svg {
        chart::write_svg(report, title, path)?;
    }
    Ok(())
}

fn resolve(target: &str) -> Result<SocketAddr> {
    target
        .to_socket_addrs()
        .with_context(|| format!("--target {target:?}: expected HOST:PORT"))?
        .next()
        .with_context(|| format!("--target {target:?} resolves to no address"))
}

fn seconds(flag: &str, value: f64) -> Result<Duration> {
    if !(value.is_finite() && value > 0.0) {
        bail!("{flag} must be a number of seconds above zero (got {value})");
    }
    Ok(Duration::from_secs_f64(value))
}

fn seconds_or_zero(flag: &str, value: f64) -> Result<Duration> {
    if value == 0.0 {
        return Ok(Duration::ZERO);
    }
    seconds(flag, value)
}
