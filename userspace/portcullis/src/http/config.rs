//! `[http]`: limits and upstream pool settings of the listeners in `mode = "http"`, and `[log]`: the access log.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// hyper refuses a read buffer smaller than this (its `max_buf_size` panics below 8 KiB).
const MIN_HEAD_BYTES: usize = 8192;

/// `[http]`: what an `http` listener allows its clients and how it reaches its upstreams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest HTTP/1.1 request head (request line and headers). A bigger one is answered 431 and the connection
    /// closed. Unit: bytes, at least 8192. Default: 32768.
    pub max_head_bytes: usize,
    /// Most header fields in an HTTP/1.1 request head; more is answered 431. Unit: fields. Default: 100.
    pub max_headers: usize,
    /// Largest h2 header list (RFC 9113 §6.5.2 `SETTINGS_MAX_HEADER_LIST_SIZE`). Unit: bytes. Default: 32768.
    pub h2_max_header_list_bytes: u32,
    /// A client connection with no request in flight is closed after this long (h2 with a GOAWAY). A duration.
    /// Default: `"60s"`.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Time from an HTTP/1.1 request's first byte to its complete head; a slower client (slowloris) gets 408 and
    /// the connection is closed. A duration. Default: `"10s"`.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// h2 streams a client may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`). Default: 128.
    pub h2_max_concurrent_streams: u32,
    /// h2 flow-control window of each stream (`SETTINGS_INITIAL_WINDOW_SIZE`). Unit: bytes. Default: 262144.
    pub h2_stream_window: u32,
    /// h2 flow-control window of the whole connection. Unit: bytes. Default: 1048576.
    pub h2_connection_window: u32,
    /// Keep the client's `Forwarded`, `X-Forwarded-For` and `X-Forwarded-Proto` and append to them (only behind
    /// a proxy you trust); otherwise they are replaced by what this proxy saw. Default: `false`.
    pub trusted_forwarded: bool,
    /// Time for the upstream to answer with a response head once the request is sent; longer is a 504.
    /// A duration. Default: `"60s"`.
    #[serde(with = "humantime_serde")]
    pub upstream_response_timeout: Duration,
    /// Idle keep-alive connections kept per upstream by each worker (never shared across workers).
    /// Unit: connections; 0 disables reuse. Default: 32.
    pub pool_max_idle: usize,
    /// An idle pooled upstream connection is closed after this long. A duration. Default: `"30s"`.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_head_bytes: 32 * 1024,
            max_headers: 100,
            h2_max_header_list_bytes: 32 * 1024,
            idle_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
            h2_max_concurrent_streams: 128,
            h2_stream_window: 256 * 1024,
            h2_connection_window: 1024 * 1024,
            trusted_forwarded: false,
            upstream_response_timeout: Duration::from_secs(60),
            pool_max_idle: 32,
            pool_idle_timeout: Duration::from_secs(30),
        }
    }
}

impl HttpConfig {
    /// Checks what the types cannot; the error names the field (under `http.`) and what is accepted.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_head_bytes < MIN_HEAD_BYTES {
            return Err((
                "http.max_head_bytes",
                format!("must be at least {MIN_HEAD_BYTES}"),
            ));
        }
        if self.max_headers == 0 {
            return Err(("http.max_headers", "must be at least 1".into()));
        }
        for (field, d) in [
            ("http.idle_timeout", self.idle_timeout),
            ("http.header_read_timeout", self.header_read_timeout),
            (
                "http.upstream_response_timeout",
                self.upstream_response_timeout,
            ),
            ("http.pool_idle_timeout", self.pool_idle_timeout),
        ] {
            if d.is_zero() {
                return Err((field, "must be greater than zero".into()));
            }
        }
        if self.h2_max_concurrent_streams == 0 {
            return Err((
                "http.h2_max_concurrent_streams",
                "must be at least 1".into(),
            ));
        }
        // RFC 9113 §6.5.2: windows are at least the initial 65,535 and at most 2^31 - 1.
        for (field, w) in [
            ("http.h2_stream_window", self.h2_stream_window),
            ("http.h2_connection_window", self.h2_connection_window),
        ] {
            if !(65_535..=0x7fff_ffff).contains(&w) {
                return Err((
                    field,
                    "must be 65535 to 2147483647 bytes (RFC 9113 §6.5.2)".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Where access log lines go (`[log] access`, `--access-log`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(from = "String")]
pub enum AccessLogTarget {
    /// No access log (`"off"`).
    #[default]
    Off,
    /// Standard error (`"stderr"`), next to the daemon's own log.
    Stderr,
    /// Appended to this file, reopened on SIGUSR1 (after logrotate moved it).
    Path(PathBuf),
}

impl From<String> for AccessLogTarget {
    fn from(s: String) -> Self {
        match s.as_str() {
            "off" | "" => Self::Off,
            "stderr" => Self::Stderr,
            _ => Self::Path(PathBuf::from(s)),
        }
    }
}

/// `[log]`: the access log.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `"off"`, `"stderr"` or a file path: one JSON line per request on `http` listeners. Default: `"off"`.
    pub access: AccessLogTarget,
    /// Keep the query string in the logged path (it often carries tokens). Default: `false`.
    pub log_query: bool,
}
