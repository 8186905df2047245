//! The access log: one JSON line per request, written by a thread of its own behind a bounded channel so a
//! worker never waits for a disk. A full channel drops the line and counts it
//! (`portcullis_access_log_dropped_total`). A file log is reopened on SIGUSR1 (after logrotate moved it).
//!
//! Never logged: the query string (unless `log_query`), cookies, authorization, any header value.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use prometheus_client::metrics::counter::Counter;
use serde_json::json;

use super::config::AccessLogTarget;
use super::facts::TlsFacts;

/// One `tcp` mode connection, as logged (a relay has no requests).
pub struct ConnectionEntry<'a> {
    /// When the connection was accepted.
    pub time: SystemTime,
    /// The listener's name.
    pub listener: &'a str,
    /// Client address.
    pub client: std::net::SocketAddr,
    /// Bytes from the client to the upstream.
    pub bytes_in: u64,
    /// Bytes from the upstream to the client.
    pub bytes_out: u64,
    /// Accept to close, seconds.
    pub duration: f64,
    /// The upstream chosen.
    pub upstream: std::net::SocketAddr,
    /// The connection's TLS facts.
    pub tls: &'a TlsFacts,
}

/// Lines that may wait for the writer; beyond this, lines are dropped.
const QUEUE: usize = 8192;

/// A cheap handle the workers log through.
#[derive(Clone)]
pub struct AccessLog {
    tx: Sender<String>,
    dropped: Counter,
    reopen: Arc<AtomicBool>,
    log_query: bool,
}

/// One request, as logged.
pub struct Entry<'a> {
    /// When the request head arrived.
    pub time: SystemTime,
    /// The listener's name.
    pub listener: &'a str,
    /// Client address.
    pub client: std::net::SocketAddr,
    /// `h1` or `h2`.
    pub protocol: &'static str,
    /// Request method.
    pub method: &'a str,
    /// Host or :authority.
    pub authority: Option<&'a str>,
    /// Request target; the query is cut here unless `log_query`.
    pub path_and_query: &'a str,
    /// Status sent.
    pub status: u16,
    /// Request body bytes received.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Request head to response end, seconds.
    pub duration: f64,
    /// The upstream chosen, if any.
    pub upstream: Option<std::net::SocketAddr>,
    /// Request sent to upstream response head, seconds.
    pub upstream_time: Option<f64>,
    /// The request's head came in TLS 1.3 early data: what was done with it (`forwarded`, `held`, `rejected`,
    /// `retried`, see `early.rs`); `None` when it did not.
    pub early: Option<&'static str>,
    /// The connection's TLS facts.
    pub tls: &'a TlsFacts,
}

impl AccessLog {
    /// Starts the writer thread for `target`; `None` when the log is off.
    pub fn start(
        target: &AccessLogTarget,
        log_query: bool,
        dropped: Counter,
    ) -> io::Result<Option<Self>> {
        let sink = match target {
            AccessLogTarget::Off => return Ok(None),
            AccessLogTarget::Stderr => Sink::Stderr,
            AccessLogTarget::Path(path) => Sink::File(path.clone(), open(path)?),
        };
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = reopen.clone();
        std::thread::Builder::new()
            .name("portcullis-access-log".into())
            .spawn(move || write_lines(rx, sink, &flag))?;
        Ok(Some(Self {
            tx,
            dropped,
            reopen,
            log_query,
        }))
    }

    /// Asks the writer to reopen a file log before its next line (SIGUSR1).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Reopens a file log on every SIGUSR1, for the life of the daemon (run on the control runtime).
    pub async fn reopen_on_sigusr1(self) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut usr1 = match signal(SignalKind::user_defined1()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGUSR1; the access log will not be reopened");
                return;
            }
        };
        while usr1.recv().await.is_some() {
            tracing::info!("SIGUSR1: reopening the access log");
            self.reopen();
        }
    }

    /// Queues one line; never blocks.
    pub fn log(&self, e: &Entry<'_>) {
        let path = if self.log_query {
            e.path_and_query
        } else {
            e.path_and_query
                .split_once('?')
                .map_or(e.path_and_query, |(p, _)| p)
        };
        let line = json!({
            "time": humantime::format_rfc3339_millis(e.time).to_string(),
            "listener": e.listener,
            "client": e.client.to_string(),
            "protocol": e.protocol,
            "method": e.method,
            "authority": e.authority,
            "path": path,
            "status": e.status,
            "bytes_in": e.bytes_in,
            "bytes_out": e.bytes_out,
            "duration_ms": ms(e.duration),
            "upstream": e.upstream.map(|u| u.to_string()),
            "upstream_ms": e.upstream_time.map(ms),
            "early_request": e.early.is_some(),
            "early_action": e.early,
        });
        self.send(with_tls(line, e.tls));
    }

    /// Queues one line for a `tcp` mode connection (same fields, `protocol` = `tcp`, no request fields).
    pub fn log_connection(&self, e: &ConnectionEntry<'_>) {
        let line = json!({
            "time": humantime::format_rfc3339_millis(e.time).to_string(),
            "listener": e.listener,
            "client": e.client.to_string(),
            "protocol": "tcp",
            "bytes_in": e.bytes_in,
            "bytes_out": e.bytes_out,
            "duration_ms": ms(e.duration),
            "upstream": e.upstream.to_string(),
        });
        self.send(with_tls(line, e.tls));
    }

    fn send(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

/// Seconds as milliseconds with microsecond resolution.
fn ms(seconds: f64) -> f64 {
    (seconds * 1_000_000.0).round() / 1000.0
}

enum Sink {
    Stderr,
    File(PathBuf, File),
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot open access log {} ({e}); the daemon needs write access to it and its directory",
                    path.display()
                ),
            )
        })
}

fn write_lines(rx: Receiver<String>, mut sink: Sink, reopen: &AtomicBool) {
    while let Ok(line) = rx.recv() {
        if reopen.swap(false, Ordering::Relaxed)
            && let Sink::File(path, file) = &mut sink
        {
            match open(path) {
                Ok(f) => *file = f,
                Err(e) => {
                    tracing::warn!(error = %e, "access log not reopened; still writing the old file")
                }
            }
        }
        let mut batch = line;
        batch.push('\n');
        // Whatever else is queued goes out in the same write.
        while let Ok(more) = rx.try_recv() {
            batch.push_str(&more);
            batch.push('\n');
            if batch.len() > 64 * 1024 {
                break;
            }
        }
        let written = match &mut sink {
            Sink::Stderr => io::stderr().lock().write_all(batch.as_bytes()),
            Sink::File(_, file) => file.write_all(batch.as_bytes()),
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, "access log write failed");
        }
    }
}

/// `fields` (a JSON object) with the connection's TLS facts added: the same names in both kinds of line.
fn with_tls(mut fields: serde_json::Value, tls: &super::facts::TlsFacts) -> String {
    if let Some(map) = fields.as_object_mut() {
        let facts = json!({
            "tls_version": tls.version(),
            "cipher": tls.cipher(),
            "alpn": tls.alpn,
            "sni": tls.sni,
            "handshake": tls.mode.name(),
            "resumption": tls.resumption(),
            "handshake_ms": ms(tls.handshake.as_secs_f64()),
            "fingerprint": tls.fingerprint.map(|f| format!("{f:016x}")),
            "early_data": tls.early_data,
        });
        if let serde_json::Value::Object(facts) = facts {
            map.extend(facts);
        }
    }
    fields.to_string()
}
