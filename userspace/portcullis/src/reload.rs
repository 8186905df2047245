//! Reload on SIGHUP (`systemctl reload`): the configuration is read again the way it was at start (file and
//! flags), and what can change without rebinding is applied.
//!
//! - Applied: the certificates and keys (`[tls] certificates`, or the self-signed one): all are loaded first,
//!   then the SNI table is swapped whole ([`SniResolver::replace`]); handshakes in flight keep the certificate
//!   they resolved.
//! - Refused, with the section named in the log and `result="partial"`: every other section that changed.
//!   Listen addresses, workers, XDP and the admin address need new sockets or programs; the others are read
//!   once into the workers today (a restart applies them).
//! - A file that does not parse or validate, or a certificate or key that does not load, changes nothing: the
//!   last good configuration stays (`result="failed"`, the log says why).
//!
//! Metrics: `portcullis_config_reloads_total{result}`, `portcullis_config_last_reload_success_timestamp_seconds`,
//! `portcullis_certificate_not_after_seconds{name}` (alert: `PortcullisCertificateExpiresSoon`, 14 days).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls::crypto::CryptoProvider;

use crate::config::Config;
use crate::tls::certs::LoadedCert;
use crate::tls::resolver::SniResolver;

/// How a reload ended (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything that changed was applied.
    Ok,
    /// The certificates were applied; other changed sections need a restart.
    Partial,
    /// Nothing changed: the file or a certificate is bad.
    Failed,
}

impl Outcome {
    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Partial => "partial",
            Self::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    name: String,
}

/// The reload and certificate metrics.
#[derive(Clone, Default)]
pub struct ReloadMetrics {
    reloads: Family<ResultLabel, Counter>,
    last_success: Gauge,
    not_after: Family<NameLabel, Gauge>,
}

impl ReloadMetrics {
    /// Registers the families, every `result` present from the start.
    pub fn register(&self, registry: &mut Registry) {
        for o in [Outcome::Ok, Outcome::Partial, Outcome::Failed] {
            let _ = self
                .reloads
                .get_or_create(&ResultLabel { result: o.name() });
        }
        registry.register(
            "portcullis_config_reloads",
            "Configuration reloads (SIGHUP), by result: ok, partial (certificates applied, other changes need a \
             restart), failed (nothing applied: the last good configuration stays)",
            self.reloads.clone(),
        );
        registry.register(
            "portcullis_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded with success (start or reload), Unix time",
            self.last_success.clone(),
        );
        registry.register(
            "portcullis_certificate_not_after_seconds",
            "End of validity of each served certificate (its first name, else its file), Unix time",
            self.not_after.clone(),
        );
    }

    /// Records the certificates now served, and a successful load now.
    pub fn loaded(&self, certs: &[LoadedCert]) {
        self.not_after.clear();
        for c in certs {
            let name = c
                .names
                .first()
                .cloned()
                .unwrap_or_else(|| c.source.display().to_string());
            if let Some(t) = not_after(c) {
                self.not_after.get_or_create(&NameLabel { name }).set(t);
            }
        }
        self.last_success.set(unix_now());
    }

    fn count(&self, outcome: Outcome) {
        self.reloads
            .get_or_create(&ResultLabel {
                result: outcome.name(),
            })
            .inc();
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The leaf certificate's notAfter, Unix seconds.
fn not_after(cert: &LoadedCert) -> Option<i64> {
    let leaf = cert.key.cert.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// Reads the configuration again and applies it; owns the last good configuration.
pub struct Reloader {
    current: Config,
    load: Box<dyn Fn() -> Result<Config, String> + Send>,
    state_dir: PathBuf,
    provider: Arc<CryptoProvider>,
    resolver: Arc<SniResolver>,
    metrics: ReloadMetrics,
}

impl Reloader {
    /// A reloader for the daemon started with `current`; `load` reads the configuration as at start.
    pub fn new(
        current: Config,
        load: Box<dyn Fn() -> Result<Config, String> + Send>,
        state_dir: PathBuf,
        provider: Arc<CryptoProvider>,
        resolver: Arc<SniResolver>,
        metrics: ReloadMetrics,
    ) -> Self {
        Self {
            current,
            load,
            state_dir,
            provider,
            resolver,
            metrics,
        }
    }

    /// One reload; logs and counts its outcome.
    pub fn reload(&mut self) -> Outcome {
        let outcome = self.try_reload();
        self.metrics.count(outcome);
        outcome
    }

    fn try_reload(&mut self) -> Outcome {
        let new = match (self.load)() {
            Ok(c) => c.with_defaults(),
            Err(e) => {
                tracing::warn!(error = %e, "reload failed: keeping the last good configuration");
                return Outcome::Failed;
            }
        };
        if let Err(e) = new.validate() {
            tracing::warn!(error = %e, "reload failed: keeping the last good configuration");
            return Outcome::Failed;
        }
        let certs = match crate::tls::load_certificates(&new.tls, &self.state_dir, &self.provider) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reload failed: keeping the last good certificates and configuration");
                return Outcome::Failed;
            }
        };
        if !self.resolver.replace(&certs) {
            tracing::warn!("reload failed: no certificate loaded; keeping the last good ones");
            return Outcome::Failed;
        }
        for c in &certs {
            tracing::info!(cert = %c.source.display(), names = ?c.names, "certificate reloaded");
        }
        self.metrics.loaded(&certs);
        let restart = needs_restart(&self.current, &new);
        self.current.tls.certificates = new.tls.certificates;
        if restart.is_empty() {
            tracing::info!("configuration reloaded");
            Outcome::Ok
        } else {
            tracing::warn!(
                fields = %restart.join(", "),
                "configuration reloaded: certificates applied; these changes need a restart and were not applied"
            );
            Outcome::Partial
        }
    }
}

/// The sections (top-level fields) of `new` that differ from `old`, other than the certificates.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let differ =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let mut tls_old = old.tls.clone();
    let mut tls_new = new.tls.clone();
    tls_old.certificates.clear();
    tls_new.certificates.clear();
    let sections: [(&'static str, bool); 14] = [
        ("workers", differ(&old.workers, &new.workers)),
        ("pin_workers", differ(&old.pin_workers, &new.pin_workers)),
        ("state_dir", differ(&old.state_dir, &new.state_dir)),
        ("listeners", differ(&old.listeners, &new.listeners)),
        ("tls", differ(&tls_old, &tls_new)),
        ("upstream", differ(&old.upstream, &new.upstream)),
        ("metrics", differ(&old.metrics, &new.metrics)),
        ("shutdown", differ(&old.shutdown, &new.shutdown)),
        ("xdp", differ(&old.xdp, &new.xdp)),
        ("engine", differ(&old.engine, &new.engine)),
        ("admission", differ(&old.admission, &new.admission)),
        ("steering", differ(&old.steering, &new.steering)),
        ("limits", differ(&old.limits, &new.limits)),
        ("process", differ(&old.process, &new.process)),
    ];
    sections
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_sections_are_named_and_certificates_are_not_among_them() {
        let old = Config::parse("workers = 2\n[[listeners]]\naddress = \"127.0.0.1:1\"\n")
            .expect("parses");
        let same_but_certs = Config::parse(
            "workers = 2\n[[listeners]]\naddress = \"127.0.0.1:1\"\n[[tls.certificates]]\ncert = \"a\"\nkey = \"b\"\n",
        )
        .expect("parses");
        assert!(needs_restart(&old, &same_but_certs).is_empty());
        let moved = Config::parse(
            "workers = 3\n[[listeners]]\naddress = \"127.0.0.1:2\"\n[upstream]\nidle_timeout = \"1m\"\n",
        )
        .expect("parses");
        assert_eq!(
            needs_restart(&old, &moved),
            vec!["workers", "listeners", "upstream"]
        );
    }
}
