//! The daemon's configuration: a typed TOML file, every field documented with its unit and default.
//!
//! Parsing is strict (`deny_unknown_fields`): a misspelt key is an error naming the key, not a silently ignored
//! setting. [`Config::validate`] then checks what types cannot express and names the offending field.
//! `portcullis check-config FILE` runs both and exits 2 on the first problem.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default TLS listener address when neither the file nor `--listen` gives one.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// Default metrics/health listener address.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9090";

/// A configuration problem, caused by the operator: the message names the field or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema (unknown field, wrong type, ...).
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The path given.
        path: PathBuf,
        /// The parser's message, which names the field and line.
        message: String,
    },
    /// A value is well-typed but not acceptable.
    #[error("config field `{field}` is invalid: {reason}")]
    Invalid {
        /// Dotted path of the field, e.g. `listeners[0].address`.
        field: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
}

/// Refuses a duration above `max`: beyond it a value is a typo (a missing unit, an extra digit), and an
/// unbounded one reaches `Instant + Duration`, which panics on overflow.
///
/// # Errors
/// `field` and the largest accepted value.
pub fn at_most(
    field: &'static str,
    d: Duration,
    max: Duration,
) -> Result<(), (&'static str, String)> {
    if d > max {
        return Err((
            field,
            format!(
                "{} is more than the largest accepted, {}",
                humantime::format_duration(d),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(())
}

/// Refuses a count above `max` (memory or threads a typo would otherwise reserve).
///
/// # Errors
/// `field` and the largest accepted value.
pub fn count_at_most(
    field: &'static str,
    n: usize,
    max: usize,
) -> Result<(), (&'static str, String)> {
    if n > max {
        return Err((
            field,
            format!("{n} is more than the largest accepted, {max}"),
        ));
    }
    Ok(())
}

/// Largest `workers` (and `engine.instances`): threads.
pub const MAX_WORKERS: usize = 1024;
/// Largest `tls.session_cache_size`: sessions (about 1 KiB each).
pub const MAX_SESSION_CACHE: usize = 1 << 20;
/// Largest `tls.handshake_timeout` and `upstream.connect_timeout`.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest `upstream.idle_timeout`.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Largest `shutdown.drain_timeout`.
pub const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);
/// Largest `tls.ticket_key_lead`.
pub const MAX_TICKET_KEY_LEAD: Duration = Duration::from_secs(7 * 24 * 3600);

impl ConfigError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Number of workers. Each is one OS thread with its own current-thread runtime and its own SO_REUSEPORT
    /// listening socket per listener. Unit: threads, 1 to 1024. Default: the number of CPUs this process may run on.
    pub workers: Option<usize>,
    /// Pin worker `i` to the `i`-th CPU this process may run on. Default: `true`.
    pub pin_workers: bool,
    /// Directory for state the daemon generates (the self-signed certificate used when no certificate is
    /// configured). Default: `/var/lib/portcullis` when run as root, else `$XDG_STATE_HOME/portcullis`
    /// (or `~/.local/state/portcullis`).
    pub state_dir: Option<PathBuf>,
    /// TLS listeners. Default: one listener named `https` on `127.0.0.1:8443`.
    pub listeners: Vec<ListenerConfig>,
    /// TLS termination settings shared by all listeners.
    pub tls: TlsConfig,
    /// Where decrypted streams go.
    pub upstream: UpstreamConfig,
    /// The Prometheus and health endpoint.
    pub metrics: MetricsConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// The XDP handshake guard. Disabled unless `interfaces` is non-empty.
    pub xdp: crate::xdp::XdpSection,
    /// Where the expensive handshake step runs (`[engine]`: software offload engine or inline).
    pub engine: crate::offload::EngineConfig,
    /// Admission control in front of the offload engine (`[admission]`).
    pub admission: crate::admission::AdmissionConfig,
    /// Reuseport steering of new connections to unsaturated workers (`[steering]`).
    pub steering: crate::steering::SteeringConfig,
    /// Limits and the upstream pool of `mode = "http"` listeners (`[http]`).
    pub http: crate::http::HttpConfig,
    /// The access log (`[log]`).
    pub log: crate::http::LogConfig,
    /// Connection caps, first-byte timeout, keepalive, lifetime (`[limits]`).
    pub limits: crate::limits::LimitsConfig,
    /// The unprivileged user and group to run as after start-up (`[process]`).
    pub process: crate::process::ProcessConfig,
    /// Giving free heap pages back to the kernel when the workers go quiet (`[memory]`).
    pub memory: crate::memory::MemoryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            workers: None,
            pin_workers: true,
            state_dir: None,
            listeners: Vec::new(),
            tls: TlsConfig::default(),
            upstream: UpstreamConfig::default(),
            metrics: MetricsConfig::default(),
            shutdown: ShutdownConfig::default(),
            xdp: crate::xdp::XdpSection::default(),
            engine: crate::offload::EngineConfig::default(),
            admission: crate::admission::AdmissionConfig::default(),
            steering: crate::steering::SteeringConfig::default(),
            http: crate::http::HttpConfig::default(),
            log: crate::http::LogConfig::default(),
            limits: crate::limits::LimitsConfig::default(),
            process: crate::process::ProcessConfig::default(),
            memory: crate::memory::MemoryConfig::default(),
        }
    }
}

/// One TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name used as the `listener` label in metrics. Default: `https` for the first listener, `https-N` after.
    #[serde(default)]
    pub name: Option<String>,
    /// Address to bind, `IP:PORT`. Port 0 picks a free port (reported in the readiness notification).
    pub address: SocketAddr,
    /// Listen backlog. Unit: connections. Default: 4096 (the kernel caps it at `net.core.somaxconn`).
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// How long the kernel keeps a connection that has sent nothing since its TCP handshake from the workers
    /// (`TCP_DEFER_ACCEPT`; nginx's `deferred`, HAProxy's `defer-accept`). In TLS the client speaks first, so a
    /// worker is handed a connection together with its ClientHello: one wake-up fewer per handshake, and a
    /// connection whose ClientHello never comes (dropped by the XDP guard, or never sent) and is reset costs no
    /// worker anything. One still silent at the end is handed over at the kernel's next SYN-ACK retransmission
    /// (its schedule rounds up to whole seconds) and meets `tls.handshake_timeout` as before. A connection
    /// completed with a SYN cookie (while the SYN queue is full) is handed over at once: the kernel keeps no
    /// state to hold it with. `"0s"`: off (handed over at the TCP handshake). At most 60 s. Default: `"1s"`.
    #[serde(default = "default_defer_accept", with = "humantime_serde")]
    pub defer_accept: Duration,
    /// `"tcp"`: relay the decrypted bytes (optionally after a PROXY v2 header); `"http"`: terminate HTTP/1.1 and
    /// h2 and proxy requests (`[http]`). Default: `"tcp"`.
    #[serde(default)]
    pub mode: ListenerMode,
    /// TLS 1.3 0-RTT on this listener (`[listeners.early_data]`). Default: off.
    #[serde(default)]
    pub early_data: crate::tickets::session_store::EarlyDataConfig,
}

/// What a listener does with a decrypted connection (`listeners[].mode`, `portcullis run --mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// Byte relay to the upstream.
    #[default]
    Tcp,
    /// HTTP/1.1 and h2 termination, HTTP/1.1 to the upstream.
    Http,
}

fn default_backlog() -> u32 {
    4096
}

/// `listeners[].defer_accept`'s default.
pub fn default_defer_accept() -> Duration {
    Duration::from_secs(1)
}

/// Largest `listeners[].defer_accept`.
pub const MAX_DEFER_ACCEPT: Duration = Duration::from_secs(60);

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 (RFC 5246).
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 (RFC 8446).
    #[serde(rename = "1.3")]
    Tls13,
}

/// TLS termination settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Certificates, chosen per connection by SNI (and, when one name has both, by the key types the client
    /// accepts: ECDSA first). The first certificate is also the default for clients without SNI or with an
    /// unknown name. Default: none configured, so a self-signed ECDSA P-256 certificate for `localhost` and
    /// `127.0.0.1` is generated on first start into `state_dir` and reused afterwards.
    pub certificates: Vec<CertificateConfig>,
    /// ALPN protocols offered, in server preference order. A client offering none of them fails the handshake
    /// with `no_application_protocol`; a client offering no ALPN at all is accepted. Default: `["h2", "http/1.1"]`
    /// on `http` listeners (served by the proxy itself), `["http/1.1"]` on `tcp` listeners (the built-in demo
    /// upstream speaks HTTP/1.1 only; add `"h2"` when the upstream speaks HTTP/2).
    pub alpn: Option<Vec<String>>,
    /// Protocol versions enabled. Default: `["1.2", "1.3"]`.
    pub versions: Vec<TlsVersion>,
    /// Time a client has from TCP accept to a finished handshake before the connection is closed and counted
    /// as a `timeout` failure. A duration such as `"10s"` or `"500ms"`, at most `"5m"`. Default: `"10s"`.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Longest ClientHello accepted, in bytes of the handshake message (its 4-byte header and body; the records
    /// carrying it may add 5 bytes each). A longer one is refused with a `decode_error` alert and counted as
    /// `hello_too_large`; it may span any number of records and TCP segments up to this size (RFC 8446 §5.1).
    /// From 1024 to 65539 (rustls' own limit: a body of 65,535 bytes). Default: 65536 (64 KiB; post-quantum key
    /// shares make real ones 1.2 to 10 KB).
    pub max_client_hello_size: usize,
    /// Session tickets: `"fleet"` (keys from `ticket_keys_dir`, shared by every instance), `"per-process"`
    /// (a random key per process: tickets resume only on the instance that issued them), or `"off"` (no
    /// tickets; TLS 1.3 resumes statefully from the session cache). Default: `"fleet"` when
    /// `ticket_keys_dir` is set, else `"per-process"`.
    pub tickets: Option<TicketMode>,
    /// Directory of ticket keys, watched every second (format: `deploy/ticket-keys.md`; manage it with
    /// `portcullis keys init|rotate|prune|list`). Default: none.
    pub ticket_keys_dir: Option<PathBuf>,
    /// Tickets older than this are refused (full handshake), whichever instance issued them; also the lifetime
    /// hint sent to clients. A duration, at most `"7d"` (RFC 8446 §4.6.1). Default: `"6h"`.
    #[serde(with = "humantime_serde")]
    pub ticket_lifetime: Duration,
    /// How long before a new key starts encrypting `portcullis keys rotate --config` stages it, so it reaches
    /// every node first. A duration, at most `"7d"`. Default: `"1h"`.
    #[serde(with = "humantime_serde")]
    pub ticket_key_lead: Duration,
    /// Sessions kept for TLS 1.2 session-ID resumption (and TLS 1.3 when `tickets = "off"`), least recently
    /// used evicted first. Unit: sessions, at most 1048576; 0 disables the cache. Default: 4096.
    pub session_cache_size: usize,
    /// Where the sessions of early-data listeners live (`[tls.session_store]`).
    pub session_store: crate::tickets::session_store::SessionStoreConfig,
    /// How often the certificate, key and OCSP files are checked for a change (the resolved target's device,
    /// inode, mtime and size, so a Kubernetes Secret's `..data` symlink swap counts); a change reloads as
    /// SIGHUP does. A duration, at most `"1h"`; `"0s"` turns watching off. Default: `"5s"`.
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
}

/// How session tickets are sealed (`tls.tickets`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TicketMode {
    /// Keys from `tls.ticket_keys_dir`, shared by the fleet, with validity windows.
    Fleet,
    /// One random key per process (resumption only on the issuing instance).
    PerProcess,
    /// No tickets.
    Off,
}

impl TlsConfig {
    /// The ALPN protocols a listener in `mode` offers: the configured ones, else its mode's default.
    pub fn alpn_for(&self, mode: ListenerMode) -> Vec<String> {
        match (&self.alpn, mode) {
            (Some(list), _) => list.clone(),
            (None, ListenerMode::Http) => vec!["h2".to_owned(), "http/1.1".to_owned()],
            (None, ListenerMode::Tcp) => vec!["http/1.1".to_owned()],
        }
    }

    /// The effective ticket mode: the configured one, else `fleet` with a key dir and `per-process` without.
    pub fn ticket_mode(&self) -> TicketMode {
        match (self.tickets, &self.ticket_keys_dir) {
            (Some(mode), _) => mode,
            (None, Some(_)) => TicketMode::Fleet,
            (None, None) => TicketMode::PerProcess,
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            certificates: Vec::new(),
            alpn: None,
            versions: vec![TlsVersion::Tls12, TlsVersion::Tls13],
            handshake_timeout: Duration::from_secs(10),
            max_client_hello_size: 64 * 1024,
            tickets: None,
            ticket_keys_dir: None,
            ticket_lifetime: Duration::from_secs(6 * 3600),
            ticket_key_lead: Duration::from_secs(3600),
            session_cache_size: 4096,
            session_store: crate::tickets::session_store::SessionStoreConfig::default(),
            watch_interval: Duration::from_secs(5),
        }
    }
}

/// One certificate chain and its private key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM file with the leaf certificate first, then intermediates.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, SEC1 or PKCS#1; ECDSA P-256/P-384, RSA or Ed25519).
    pub key: PathBuf,
    /// Server names this certificate answers for (`example.com`, `*.example.com`). Default: the DNS names in
    /// the certificate's subjectAltName extension.
    #[serde(default)]
    pub server_names: Vec<String>,
    /// DER OCSP response stapled to this certificate's handshakes (`openssl ocsp -respout FILE`), read again
    /// with the certificate. One that does not parse, is not `successful`, is for another certificate or is
    /// past its nextUpdate is logged and not stapled; the certificate is served either way. Default: none.
    #[serde(default)]
    pub ocsp: Option<PathBuf>,
}

/// Upstream backends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Backend addresses, `IP:PORT`, used round robin. Default: empty, which starts the built-in demo upstream
    /// (an HTTP/1.1 responder on a loopback port) so a fresh install answers `curl -k https://127.0.0.1:8443/`.
    pub backends: Vec<SocketAddr>,
    /// Time allowed for the TCP connect to a backend. A duration, at most `"5m"`. Default: `"3s"`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Send a PROXY protocol v2 header first on every upstream connection, carrying the client address, the
    /// SNI (as PP2_TYPE_AUTHORITY) and the negotiated ALPN (PP2_TYPE_ALPN). `tcp` listeners only (`http` ones
    /// send `Forwarded`). Default: `false`.
    pub proxy_protocol: bool,
    /// An established connection on which no byte moves in either direction for this long is closed (as
    /// nginx's stream `proxy_timeout`). A duration, at most `"24h"`. Default: `"10m"`.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connect to the backend when the client sends its first byte after the handshake, not at once: a client
    /// that handshakes and leaves (health checks, scanners, preconnects) costs no upstream connection. Set
    /// `false` for protocols in which the server speaks first. Default: `true`.
    pub lazy_connect: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            backends: Vec::new(),
            connect_timeout: Duration::from_secs(3),
            proxy_protocol: false,
            idle_timeout: Duration::from_secs(600),
            lazy_connect: true,
        }
    }
}

/// The metrics and health endpoint (`/metrics`, `/healthz`, `/readyz`), plain HTTP on its own listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address to bind, `IP:PORT`; port 0 picks a free port. Default: `127.0.0.1:9090`.
    pub address: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            address: parse_const_addr(DEFAULT_METRICS),
        }
    }
}

/// Graceful shutdown (SIGTERM). SIGINT stops at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After SIGTERM, how long open connections may finish before they are closed. A duration, at most
    /// `"1h"`. Default: `"30s"`.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(30),
        }
    }
}

fn parse_const_addr(s: &str) -> SocketAddr {
    match s.parse() {
        Ok(addr) => addr,
        Err(_) => unreachable!("constant address {s} is valid"),
    }
}

impl Config {
    /// Reads and parses a config file, then validates it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text without validating it. The error message names the field and line at fault.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// Fills in defaults that depend on other fields: one listener when none is configured.
    pub fn with_defaults(mut self) -> Self {
        if self.listeners.is_empty() {
            self.listeners.push(ListenerConfig {
                name: None,
                address: parse_const_addr(DEFAULT_LISTEN),
                backlog: default_backlog(),
                defer_accept: default_defer_accept(),
                mode: ListenerMode::default(),
                early_data: Default::default(),
            });
        }
        self
    }

    /// Checks what the types cannot: the first problem found is returned, naming its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.workers == Some(0) {
            return Err(ConfigError::invalid("workers", "must be at least 1"));
        }
        if let Err((field, reason)) = self.check_bounds() {
            return Err(ConfigError::invalid(field, reason));
        }
        let mut names = std::collections::HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if l.backlog == 0 {
                return Err(ConfigError::invalid(
                    format!("listeners[{i}].backlog"),
                    "must be at least 1",
                ));
            }
            if let Err((_, reason)) = at_most("defer_accept", l.defer_accept, MAX_DEFER_ACCEPT) {
                return Err(ConfigError::invalid(
                    format!("listeners[{i}].defer_accept"),
                    reason,
                ));
            }
            if let Some(name) = &l.name {
                if name.is_empty() {
                    return Err(ConfigError::invalid(
                        format!("listeners[{i}].name"),
                        "must not be empty",
                    ));
                }
                if !names.insert(name.clone()) {
                    return Err(ConfigError::invalid(
                        format!("listeners[{i}].name"),
                        format!("`{name}` is used by another listener"),
                    ));
                }
            }
        }
        if self.tls.versions.is_empty() {
            return Err(ConfigError::invalid(
                "tls.versions",
                "enable at least one of \"1.2\", \"1.3\"",
            ));
        }
        for (i, p) in self.tls.alpn.iter().flatten().enumerate() {
            if p.is_empty() || p.len() > 255 {
                return Err(ConfigError::invalid(
                    format!("tls.alpn[{i}]"),
                    "an ALPN protocol id is 1 to 255 bytes (RFC 7301 §3.1)",
                ));
            }
        }
        if self.tls.handshake_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "tls.handshake_timeout",
                "must be greater than zero",
            ));
        }
        if !(1024..=65_539).contains(&self.tls.max_client_hello_size) {
            return Err(ConfigError::invalid(
                "tls.max_client_hello_size",
                "must be from 1024 to 65539 bytes (rustls refuses a longer ClientHello itself)",
            ));
        }
        if self.tls.ticket_mode() == TicketMode::Fleet && self.tls.ticket_keys_dir.is_none() {
            return Err(ConfigError::invalid(
                "tls.ticket_keys_dir",
                "tickets = \"fleet\" needs a key directory (or --ticket-keys DIR)",
            ));
        }
        if self.tls.ticket_lifetime.is_zero()
            || self.tls.ticket_lifetime > Duration::from_secs(7 * 24 * 3600)
        {
            return Err(ConfigError::invalid(
                "tls.ticket_lifetime",
                "must be greater than zero and at most 7 days (RFC 8446 §4.6.1)",
            ));
        }
        if self.upstream.idle_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "upstream.idle_timeout",
                "must be greater than zero",
            ));
        }
        if self.upstream.connect_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "upstream.connect_timeout",
                "must be greater than zero",
            ));
        }
        for (i, c) in self.tls.certificates.iter().enumerate() {
            for (j, n) in c.server_names.iter().enumerate() {
                if n.is_empty() || n.contains(char::is_whitespace) {
                    return Err(ConfigError::invalid(
                        format!("tls.certificates[{i}].server_names[{j}]"),
                        format!("`{n}` is not a DNS name"),
                    ));
                }
            }
        }
        for (i, iface) in self.xdp.interfaces.iter().enumerate() {
            if iface.is_empty() || iface.len() > 15 {
                return Err(ConfigError::invalid(
                    format!("xdp.interfaces[{i}]"),
                    "an interface name is 1 to 15 bytes",
                ));
            }
        }
        self.validate_early_data()?;
        if let Err((field, reason)) = self.xdp.validate() {
            return Err(ConfigError::invalid(format!("xdp.{field}"), reason));
        }
        if let Err((field, reason)) = self.engine.validate() {
            return Err(ConfigError::invalid(field, reason));
        }
        if let Err((field, reason)) = self.admission.validate() {
            return Err(ConfigError::invalid(field, reason));
        }
        if let Err((field, reason)) = self.limits.validate() {
            return Err(ConfigError::invalid(field, reason));
        }
        if let Err((field, reason)) = self.memory.validate() {
            return Err(ConfigError::invalid(field, reason));
        }
        if let Err((field, reason)) = self.process.validate() {
            return Err(ConfigError::invalid(field, reason));
        }
        if let Err((field, reason)) = self.http.validate() {
            return Err(ConfigError::invalid(field, reason));
        }
        if self.listeners.iter().any(|l| l.mode == ListenerMode::Http) {
            for (i, p) in self.tls.alpn.iter().flatten().enumerate() {
                if p != "h2" && p != "http/1.1" {
                    return Err(ConfigError::invalid(
                        format!("tls.alpn[{i}]"),
                        "an http listener serves only \"h2\" and \"http/1.1\"",
                    ));
                }
            }
        }
        Ok(())
    }

    /// `[tls.session_store]` and every `[listeners.early_data]`: 0-RTT needs TLS 1.3, and Redis needs the
    /// fleet's ticket keys to seal sessions with.
    fn validate_early_data(&self) -> Result<(), ConfigError> {
        use crate::tickets::session_store::StoreKind;
        if let Err((field, reason)) = self.tls.session_store.validate() {
            return Err(ConfigError::invalid(
                format!("tls.session_store.{field}"),
                reason,
            ));
        }
        if self.tls.session_store.kind == StoreKind::Redis
            && self.tls.ticket_mode() != TicketMode::Fleet
        {
            return Err(ConfigError::invalid(
                "tls.session_store.kind",
                "\"redis\" seals sessions with the fleet's ticket keys: set tls.ticket_keys_dir (or --ticket-keys DIR)",
            ));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if let Err((field, reason)) = l.early_data.validate() {
                return Err(ConfigError::invalid(
                    format!("listeners[{i}].early_data.{field}"),
                    reason,
                ));
            }
            if l.early_data.enabled() && !self.tls.versions.contains(&TlsVersion::Tls13) {
                return Err(ConfigError::invalid(
                    format!("listeners[{i}].early_data.max_size"),
                    "0-RTT needs TLS 1.3 in tls.versions",
                ));
            }
        }
        Ok(())
    }

    /// Upper bounds of the top-level and `[tls]`, `[upstream]`, `[shutdown]` sizes and durations (the other
    /// sections bound their own in their `validate`).
    fn check_bounds(&self) -> Result<(), (&'static str, String)> {
        count_at_most("workers", self.workers.unwrap_or(1), MAX_WORKERS)?;
        count_at_most(
            "tls.session_cache_size",
            self.tls.session_cache_size,
            MAX_SESSION_CACHE,
        )?;
        at_most(
            "tls.handshake_timeout",
            self.tls.handshake_timeout,
            MAX_CONNECT_TIMEOUT,
        )?;
        at_most(
            "tls.watch_interval",
            self.tls.watch_interval,
            Duration::from_secs(3600),
        )?;
        at_most(
            "tls.ticket_key_lead",
            self.tls.ticket_key_lead,
            MAX_TICKET_KEY_LEAD,
        )?;
        at_most(
            "upstream.connect_timeout",
            self.upstream.connect_timeout,
            MAX_CONNECT_TIMEOUT,
        )?;
        at_most(
            "upstream.idle_timeout",
            self.upstream.idle_timeout,
            MAX_IDLE_TIMEOUT,
        )?;
        at_most(
            "shutdown.drain_timeout",
            self.shutdown.drain_timeout,
            MAX_DRAIN_TIMEOUT,
        )
    }

    /// The listener's metric label: its configured name, or `https` / `https-N`.
    pub fn listener_name(&self, index: usize) -> String {
        match self.listeners.get(index).and_then(|l| l.name.clone()) {
            Some(name) => name,
            None if index == 0 => "https".to_owned(),
            None => format!("https-{index}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = Config::parse("")
            .expect("empty config parses")
            .with_defaults();
        c.validate().expect("defaults are valid");
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].address.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.metrics.address.to_string(), DEFAULT_METRICS);
        assert_eq!(c.tls.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.tls.alpn_for(ListenerMode::Tcp), ["http/1.1"]);
        assert_eq!(c.tls.alpn_for(ListenerMode::Http), ["h2", "http/1.1"]);
        assert_eq!(c.shutdown.drain_timeout, Duration::from_secs(30));
        assert!(c.xdp.interfaces.is_empty());
        assert!(c.pin_workers);
        assert_eq!(c.tls.ticket_mode(), TicketMode::PerProcess);
        assert_eq!(c.tls.ticket_lifetime, Duration::from_secs(6 * 3600));
        assert_eq!(c.tls.session_cache_size, 4096);
        let c = Config::parse("[tls]\nticket_keys_dir = \"/k\"\n").expect("parses");
        assert_eq!(c.tls.ticket_mode(), TicketMode::Fleet);
        let c = Config::parse("[tls]\nticket_keys_dir = \"/k\"\ntickets = \"per-process\"\n")
            .expect("parses");
        assert_eq!(c.tls.ticket_mode(), TicketMode::PerProcess);
    }

    #[test]
    fn full_file_parses() {
        let c = Config::parse(
            r#"
            workers = 2
            pin_workers = false
            state_dir = "/tmp/x"
            [[listeners]]
            name = "edge"
            address = "0.0.0.0:443"
            backlog = 128
            [tls]
            alpn = ["h2", "http/1.1"]
            versions = ["1.3"]
            handshake_timeout = "250ms"
            [[tls.certificates]]
            cert = "a.pem"
            key = "a.key"
            server_names = ["example.com"]
            [upstream]
            backends = ["10.0.0.1:80", "[::1]:8080"]
            connect_timeout = "1s"
            proxy_protocol = true
            [metrics]
            address = "[::1]:9100"
            [shutdown]
            drain_timeout = "5s"
            [xdp]
            interfaces = ["eth0"]
            mode = "generic"
            pin_dir = "/sys/fs/bpf/p2"
            "#,
        )
        .expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.workers, Some(2));
        assert_eq!(c.tls.handshake_timeout, Duration::from_millis(250));
        assert_eq!(c.tls.versions, vec![TlsVersion::Tls13]);
        assert_eq!(c.upstream.backends.len(), 2);
        assert_eq!(c.xdp.mode, crate::xdp::XdpMode::Generic);
        assert_eq!(c.listener_name(0), "edge");
    }

    #[test]
    fn unknown_field_is_named() {
        let err = Config::parse("[tls]\nhandshake_timeot = \"1s\"\n").expect_err("unknown field");
        assert!(err.contains("handshake_timeot"), "{err}");
    }

    #[test]
    fn bad_value_type_is_named() {
        let err =
            Config::parse("[upstream]\nbackends = [\"not an address\"]\n").expect_err("bad addr");
        assert!(err.contains("backends"), "{err}");
        let err =
            Config::parse("[tls]\nhandshake_timeout = \"ten seconds\"\n").expect_err("bad dur");
        assert!(err.contains("handshake_timeout"), "{err}");
        let err = Config::parse("[tls]\nversions = [\"1.1\"]\n").expect_err("bad version");
        assert!(err.contains("versions"), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            ("workers = 0", "workers"),
            ("[tls]\nversions = []", "tls.versions"),
            ("[tls]\nalpn = [\"\"]", "tls.alpn[0]"),
            (
                "[[listeners]]\naddress = \"127.0.0.1:0\"\nmode = \"http\"\n[tls]\nalpn = [\"spdy/3\"]",
                "tls.alpn[0]",
            ),
            ("[http]\nmax_head_bytes = 1024", "http.max_head_bytes"),
            (
                "[http]\nheader_read_timeout = \"0s\"",
                "http.header_read_timeout",
            ),
            ("[http]\nh2_stream_window = 1000", "http.h2_stream_window"),
            ("[tls]\nhandshake_timeout = \"0s\"", "tls.handshake_timeout"),
            (
                "[tls]\nmax_client_hello_size = 1023",
                "tls.max_client_hello_size",
            ),
            (
                "[tls]\nmax_client_hello_size = 65540",
                "tls.max_client_hello_size",
            ),
            (
                "[upstream]\nconnect_timeout = \"0s\"",
                "upstream.connect_timeout",
            ),
            ("[tls]\ntickets = \"fleet\"", "tls.ticket_keys_dir"),
            ("[tls]\nticket_lifetime = \"8d\"", "tls.ticket_lifetime"),
            (
                "[[listeners]]\naddress = \"127.0.0.1:1\"\nbacklog = 0",
                "listeners[0].backlog",
            ),
            (
                "[[listeners]]\naddress = \"127.0.0.1:1\"\ndefer_accept = \"61s\"",
                "listeners[0].defer_accept",
            ),
            (
                "[[listeners]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n[[listeners]]\nname = \"a\"\naddress = \"127.0.0.1:2\"",
                "listeners[1].name",
            ),
            (
                "[xdp]\ninterfaces = [\"a-very-long-interface-name\"]",
                "xdp.interfaces[0]",
            ),
            // Upper bounds (issue 20 defect 5): a huge value is refused, never left to panic at run time.
            ("workers = 100000", "workers"),
            (
                "[tls]\nsession_cache_size = 100000000",
                "tls.session_cache_size",
            ),
            ("[tls]\nhandshake_timeout = \"1h\"", "tls.handshake_timeout"),
            ("[tls]\nticket_key_lead = \"30d\"", "tls.ticket_key_lead"),
            (
                "[upstream]\nconnect_timeout = \"1h\"",
                "upstream.connect_timeout",
            ),
            (
                "[upstream]\nidle_timeout = \"10y\"",
                "upstream.idle_timeout",
            ),
            (
                "[shutdown]\ndrain_timeout = \"18446744073709551615s\"",
                "shutdown.drain_timeout",
            ),
            ("[engine]\ninstances = 5000", "engine.instances"),
            ("[engine]\nwait_deadline = \"1h\"", "engine.wait_deadline"),
            ("[admission]\ntarget = \"1h\"", "admission.target"),
            ("[admission]\ninterval = \"1h\"", "admission.interval"),
            (
                "[admission]\nqueue_budget = \"1h\"",
                "admission.queue_budget",
            ),
            (
                "[admission]\nsyn_retry_hold = \"2h\"",
                "admission.syn_retry_hold",
            ),
            (
                "[admission]\nrecover_intervals = 1000000",
                "admission.recover_intervals",
            ),
            (
                "[admission]\nmax_in_flight_per_worker = 100000000",
                "admission.max_in_flight_per_worker",
            ),
        ];
        for (text, field) in cases {
            let c = Config::parse(text).expect("parses");
            match c.validate() {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: expected invalid {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_largest_accepted_values_are_valid() {
        let c = Config::parse(
            "workers = 1024\n[tls]\nsession_cache_size = 1048576\nhandshake_timeout = \"5m\"\n\
             [upstream]\nidle_timeout = \"24h\"\nconnect_timeout = \"5m\"\n[shutdown]\ndrain_timeout = \"1h\"\n",
        )
        .expect("parses");
        c.validate().expect("the bounds themselves are accepted");
    }
}
