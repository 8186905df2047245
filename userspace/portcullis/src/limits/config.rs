//! The `[limits]` config section: what one client, one worker and the process may hold.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{at_most, count_at_most};

/// Caps on open connections and on how long a connection may sit or live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Client connections the whole process may have open; one more is reset at accept and counted in
    /// `portcullis_connections_refused_total{reason="process_limit"}`. Unit: connections, 1 to 16777216.
    /// Default: half of what `RLIMIT_NOFILE` (its soft limit, raised to the hard one at start) leaves after 256 descriptors for the daemon itself (each
    /// connection may need a client and an upstream socket).
    pub max_connections: Option<usize>,
    /// Client connections one worker may have open (`reason="worker_limit"`). Unit: connections, 1 to
    /// 16777216. Default: no cap of its own (the process cap applies).
    pub max_connections_per_worker: Option<usize>,
    /// Client connections one source may have open (`reason="source_limit"`): an IPv4 address, or an IPv6
    /// /64. Unit: connections, at most 16777216; 0 turns the cap off. Default: 0.
    pub max_connections_per_source: usize,
    /// After a finished handshake, how long the client has to send its first byte of data before the
    /// connection is closed (`portcullis_connections_closed_total{cause="first_byte_timeout"}`), with
    /// `upstream.lazy_connect` (the default). The shorter of this and `upstream.idle_timeout` applies. A
    /// duration, at most `"24h"`. Default: `"30s"`.
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// TCP keepalive on client connections: idle time before the first probe (probes then go every 10 s,
    /// 3 unanswered close the connection), so a vanished client's connection does not wait for
    /// `upstream.idle_timeout`. `"0s"` turns keepalive off. Set on the listening sockets, whose accepted sockets
    /// inherit it. A duration, at most `"2h"`. Default: `"60s"`.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// Longest a client connection may live, from accept; then it is closed
    /// (`portcullis_connections_closed_total{cause="lifetime"}`) whatever it is doing. `"0s"` means no
    /// limit. A duration, at most `"30d"`. Default: `"0s"`.
    #[serde(with = "humantime_serde")]
    pub max_connection_lifetime: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: None,
            max_connections_per_worker: None,
            max_connections_per_source: 0,
            first_byte_timeout: Duration::from_secs(30),
            tcp_keepalive: Duration::from_secs(60),
            max_connection_lifetime: Duration::ZERO,
        }
    }
}

/// Largest connection cap accepted.
const MAX_CAP: usize = 1 << 24;

impl LimitsConfig {
    /// Checks values; returns the offending field's name and why.
    ///
    /// # Errors
    /// The first field out of range.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (field, cap) in [
            ("limits.max_connections", self.max_connections),
            (
                "limits.max_connections_per_worker",
                self.max_connections_per_worker,
            ),
        ] {
            if cap == Some(0) {
                return Err((field, "must be at least 1".to_owned()));
            }
            count_at_most(field, cap.unwrap_or(1), MAX_CAP)?;
        }
        count_at_most(
            "limits.max_connections_per_source",
            self.max_connections_per_source,
            MAX_CAP,
        )?;
        if self.first_byte_timeout.is_zero() {
            return Err((
                "limits.first_byte_timeout",
                "must be greater than zero".to_owned(),
            ));
        }
        at_most(
            "limits.first_byte_timeout",
            self.first_byte_timeout,
            crate::config::MAX_IDLE_TIMEOUT,
        )?;
        at_most(
            "limits.tcp_keepalive",
            self.tcp_keepalive,
            Duration::from_secs(7200),
        )?;
        at_most(
            "limits.max_connection_lifetime",
            self.max_connection_lifetime,
            Duration::from_secs(30 * 24 * 3600),
        )
    }

    /// The process cap: the configured one, else derived from `RLIMIT_NOFILE`'s soft limit.
    pub fn process_cap(&self) -> usize {
        self.max_connections
            .unwrap_or_else(|| cap_from_nofile(nofile_soft_limit()))
    }

    /// `tcp_keepalive`'s idle time, `None` for `"0s"` (off).
    pub fn keepalive(&self) -> Option<Duration> {
        (!self.tcp_keepalive.is_zero()).then_some(self.tcp_keepalive)
    }
}

fn nofile_soft_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft)
}

/// Half of what `nofile` leaves after 256 descriptors for the daemon (listeners, BPF maps, logs, admin).
fn cap_from_nofile(nofile: u64) -> usize {
    let per_connection = 2;
    let cap = nofile.saturating_sub(256) / per_connection;
    usize::try_from(cap).unwrap_or(MAX_CAP).clamp(1, MAX_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_process_cap_follows_the_descriptor_limit() {
        assert_eq!(cap_from_nofile(1024), 384);
        assert_eq!(cap_from_nofile(1_048_576), 524_160);
        assert_eq!(cap_from_nofile(100), 1);
        assert_eq!(cap_from_nofile(u64::MAX), MAX_CAP);
    }

    #[test]
    fn validation_names_the_field() {
        assert!(LimitsConfig::default().validate().is_ok());
        let cases = [
            (
                LimitsConfig {
                    max_connections: Some(0),
                    ..LimitsConfig::default()
                },
                "limits.max_connections",
            ),
            (
                LimitsConfig {
                    max_connections_per_worker: Some(usize::MAX),
                    ..LimitsConfig::default()
                },
                "limits.max_connections_per_worker",
            ),
            (
                LimitsConfig {
                    first_byte_timeout: Duration::ZERO,
                    ..LimitsConfig::default()
                },
                "limits.first_byte_timeout",
            ),
            (
                LimitsConfig {
                    max_connection_lifetime: Duration::MAX,
                    ..LimitsConfig::default()
                },
                "limits.max_connection_lifetime",
            ),
        ];
        for (c, field) in cases {
            assert_eq!(c.validate().map_err(|(f, _)| f), Err(field));
        }
    }
}
