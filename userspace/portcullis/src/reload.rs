//! Reload on SIGHUP (`systemctl reload`), or when a certificate file changes: the configuration is read again
//! the way it was at start (file and flags), and what can change without rebinding is applied.
//!
//! - Certificates, keys and OCSP responses (`[tls] certificates`, or the self-signed one): all are loaded
//!   first, then the SNI table is swapped whole ([`SniResolver::replace`]); handshakes in flight keep the
//!   certificate they resolved.
//! - Per listener, a new context ([`Live::contexts`]) stored in the slot the workers read for each new
//!   connection ([`ContextSlot`]): upstreams (`[upstream]` backends, connect/idle timeouts, PROXY v2, lazy
//!   connect; `[http]` limits and pool), TLS versions, ALPN, handshake timeout and ClientHello size, listener
//!   mode and name, the early-data policy, the access log (`[log]`: a new one is started when it changed).
//!   Connections already open finish on the context they started with.
//! - The `[xdp]` knobs, written into the running program's config map ([`crate::xdp::SynShed::write_knobs`]).
//! - The `[limits]` caps (for the next accept) and timeouts, keepalive and lifetime (for connections accepted
//!   after the reload; keepalive for those the kernel completes after the workers put it on their listening
//!   sockets): [`crate::limits::Limits::update`].
//! - `[admission]`: target, interval, budgets, thresholds, SYN shedding, set in place on the running admission
//!   control, which keeps what it measured ([`crate::admission::Admission::set_params`]).
//! - `[engine]`: `full_ring`, `wait_deadline`, `inline_when_idle`, for the next handshake
//!   ([`crate::offload::policy::EngineKnobs`]).
//! - `[shutdown] drain_timeout`, for the next drain (SIGTERM or upgrade).
//! - Refused, each field named in the log and `result="partial"` ([`keep_restart_fields`]): what needs new
//!   sockets, threads or programs (listen addresses, backlog, workers, the admin address, XDP interfaces, mode
//!   and pins, steering, `engine.kind`/`instances`/`ring_depth`: crypto threads and rings, `admission.enabled`:
//!   put in front of the engine at start), state read once at start (tickets, session cache and store, the
//!   process user). The rest of the file is applied.
//! - A file that does not parse or validate, or a certificate or key that does not load, changes nothing: the
//!   last good configuration stays (`result="failed"`, the log says why). A bad OCSP response only loses its
//!   staple (`tls::ocsp`).
//! - Watching ([`Reloader::run`], `[tls] watch_interval`): the certificate, key and OCSP files are stat'ed
//!   (`tls::watch`); a change, once the files settle, reloads exactly as SIGHUP does. So does a stapled OCSP
//!   response reaching its nextUpdate: the reload staples the renewed file, or drops the stale one.
//!
//! Metrics: `portcullis_config_reloads_total{result}`, `portcullis_config_last_reload_success_timestamp_seconds`,
//! `portcullis_certificate_not_after_seconds{name}` (alert: `PortcullisCertificateExpiresSoon`, 14 days).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls::crypto::CryptoProvider;

use crate::config::Config;
use crate::connection::ListenerContext;
use crate::tls::certs::LoadedCert;
use crate::tls::resolver::SniResolver;
use crate::tls::watch::Stamp;
use crate::worker::ContextSlot;

/// How a reload ended (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything that changed was applied.
    Ok,
    /// Applied, but for changed fields that need a restart (named in the log).
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
    admission: Family<FieldLabel, Gauge<f64, AtomicU64>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FieldLabel {
    field: &'static str,
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
            "Configuration reloads (SIGHUP or a changed certificate file), by result: ok, partial (applied but for \
             fields that need a restart, named in the log), failed (nothing applied: the last good configuration \
             stays)",
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
        registry.register(
            "portcullis_admission_setting",
            "The [admission] parameters running admission control uses (as started or last reloaded), by field: \
             durations in seconds, syn_shed as a fraction, max_in_flight_per_worker in handshakes",
            self.admission.clone(),
        );
    }

    /// Records the `[admission]` parameters admission control now runs with.
    fn admission(&self, a: &crate::admission::AdmissionConfig) {
        for (field, value) in [
            ("target", a.target.as_secs_f64()),
            ("interval", a.interval.as_secs_f64()),
            ("recover_intervals", f64::from(a.recover_intervals)),
            ("queue_budget", a.queue_budget.as_secs_f64()),
            (
                "max_in_flight_per_worker",
                a.max_in_flight_per_worker as f64,
            ),
            ("syn_shed", a.syn_shed),
            ("syn_retry_hold", a.syn_retry_hold.as_secs_f64()),
        ] {
            self.admission
                .get_or_create(&FieldLabel { field })
                .set(value);
        }
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

/// Builds every listener's context from a configuration (`daemon::ListenerParts::contexts`).
pub type BuildContexts = Box<dyn Fn(&Config) -> anyhow::Result<Vec<Arc<ListenerContext>>> + Send>;

/// What a reload changes in the running daemon.
pub struct Live {
    /// The certificate table, swapped whole.
    pub resolver: Arc<SniResolver>,
    /// Builds every listener's context from a configuration, over the daemon's long-lived parts (engine,
    /// tickets, session store, metrics, limits).
    pub contexts: BuildContexts,
    /// Where the workers read each listener's context for a new connection, in listener order.
    pub slots: Vec<ContextSlot>,
    /// The XDP program's config map, when XDP runs (the knobs are written there).
    pub xdp: Option<Arc<crate::xdp::SynShed>>,
    /// Whether the 0-RTT session store runs: turning early data on for a listener needs it.
    pub session_store: bool,
    /// The connection caps and timeouts the workers read per accept.
    pub limits: Arc<crate::limits::Limits>,
    /// `shutdown.drain_timeout`, read when a drain starts.
    pub drain_timeout: crate::shutdown::DrainTimeout,
    /// The offload engine's live knobs (`None` with `engine.kind = "inline"`).
    pub engine: Option<Arc<crate::offload::policy::EngineKnobs>>,
    /// Admission control, when it runs.
    pub admission: Option<Arc<crate::admission::Admission>>,
}

/// Reads the configuration again and applies it; owns the last good configuration.
pub struct Reloader {
    current: Config,
    load: Box<dyn Fn() -> Result<Config, String> + Send>,
    state_dir: PathBuf,
    provider: Arc<CryptoProvider>,
    metrics: ReloadMetrics,
    live: Live,
    /// When the first OCSP staple goes stale (Unix seconds): the watcher reloads then.
    staple_stale_at: Option<i64>,
}

impl Reloader {
    /// A reloader for the daemon started with `current` and serving `certs`; `load` reads the configuration as
    /// at start.
    pub fn new(
        current: Config,
        load: Box<dyn Fn() -> Result<Config, String> + Send>,
        state_dir: PathBuf,
        provider: Arc<CryptoProvider>,
        metrics: ReloadMetrics,
        live: Live,
        certs: &[LoadedCert],
    ) -> Self {
        if let Some(a) = &live.admission {
            metrics.admission(&a.params());
        }
        Self {
            current,
            load,
            state_dir,
            provider,
            metrics,
            live,
            staple_stale_at: crate::tls::ocsp::earliest_next_update(certs, unix_now()),
        }
    }

    /// One reload; logs and counts its outcome.
    pub fn reload(&mut self) -> Outcome {
        let outcome = self.try_reload();
        self.metrics.count(outcome);
        outcome
    }

    /// Reloads on every SIGHUP, and when a watched certificate file changes (`[tls] watch_interval`), until
    /// the task is dropped.
    pub async fn run(mut self, mut hangups: tokio::signal::unix::Signal) {
        let mut seen = self.stamp();
        loop {
            let interval = self.current.tls.watch_interval;
            let tick = async {
                if interval.is_zero() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(interval).await;
            };
            tokio::select! {
                signal = hangups.recv() => {
                    if signal.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP: reloading the configuration");
                    self.reload();
                    seen = self.stamp();
                }
                () = tick => {
                    if self.staple_stale_at.is_some_and(|t| unix_now() >= t) {
                        tracing::warn!("an OCSP staple passed its nextUpdate: reloading to drop or renew it");
                        if self.reload() == Outcome::Failed {
                            // The last good certificates keep their staple; the next file change tries again.
                            self.staple_stale_at = None;
                        }
                        seen = self.stamp();
                        continue;
                    }
                    if self.stamp() == seen {
                        continue;
                    }
                    let paths = crate::tls::watch::paths(&self.current.tls);
                    let settled = settle(&paths).await;
                    tracing::info!("certificate files changed: reloading the configuration");
                    self.reload();
                    // What was read is what `settled` saw; a change during the reload shows at the next tick.
                    seen = if paths == crate::tls::watch::paths(&self.current.tls) {
                        settled
                    } else {
                        self.stamp()
                    };
                }
            }
        }
    }

    fn stamp(&self) -> Stamp {
        Stamp::of(&crate::tls::watch::paths(&self.current.tls))
    }

    fn try_reload(&mut self) -> Outcome {
        let mut new = match (self.load)() {
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
        let mut refused = keep_restart_fields(&self.current, &mut new, self.live.session_store);
        let certs = match crate::tls::load_certificates(&new.tls, &self.state_dir, &self.provider) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reload failed: keeping the last good certificates and configuration");
                return Outcome::Failed;
            }
        };
        let contexts = match (self.live.contexts)(&new) {
            Ok(c) if c.len() == self.live.slots.len() => c,
            Ok(_) => {
                tracing::warn!(
                    "reload failed: the listeners changed; keeping the last good configuration"
                );
                return Outcome::Failed;
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reload failed: keeping the last good configuration");
                return Outcome::Failed;
            }
        };
        // Nothing below can fail but the XDP map write: the certificates, then the listeners, are swapped.
        if !self.live.resolver.replace(&certs) {
            tracing::warn!("reload failed: no certificate loaded; keeping the last good ones");
            return Outcome::Failed;
        }
        for c in &certs {
            tracing::info!(cert = %c.source.display(), names = ?c.names, "certificate reloaded");
        }
        self.metrics.loaded(&certs);
        self.staple_stale_at = crate::tls::ocsp::earliest_next_update(&certs, unix_now());
        for (slot, ctx) in self.live.slots.iter().zip(contexts) {
            slot.store(ctx);
        }
        self.live
            .limits
            .update(&new.limits, new.upstream.idle_timeout);
        self.live.drain_timeout.set(new.shutdown.drain_timeout);
        if let Some(knobs) = &self.live.engine {
            knobs.set(&new.engine);
        }
        if let Some(admission) = &self.live.admission
            && (differ(&self.current.admission, &new.admission)
                || differ(&self.current.engine, &new.engine))
        {
            admission.set_params(&new.admission, crate::offload::setup::bounds(&new.engine));
            self.metrics.admission(&admission.params());
        }
        if let Some(xdp) = &self.live.xdp
            && differ(&self.current.xdp, &new.xdp)
            && let Err(e) = xdp.write_knobs(&new.xdp)
        {
            tracing::warn!(error = %format!("{e:#}"), "cannot write the XDP knobs; they keep their values");
            new.xdp = self.current.xdp.clone();
            refused.push("xdp (knobs: the map write failed)".to_owned());
        }
        let applied = changed_sections(&self.current, &new);
        self.current = new;
        if refused.is_empty() {
            tracing::info!(applied = %applied.join(", "), "configuration reloaded");
            Outcome::Ok
        } else {
            tracing::warn!(
                applied = %applied.join(", "),
                fields = %refused.join(", "),
                "configuration reloaded; these changes need a restart and were not applied"
            );
            Outcome::Partial
        }
    }
}

/// How long the watcher waits between two looks at files that just changed.
const SETTLE: Duration = Duration::from_millis(250);

/// Waits until the files stop changing (two looks 250 ms apart agree, at most 5 s), so a renewal that writes
/// the chain, then the key, then the OCSP response is read once, whole; the stamp they settled at.
async fn settle(paths: &[PathBuf]) -> Stamp {
    let mut last = Stamp::of(paths);
    for _ in 0..20 {
        tokio::time::sleep(SETTLE).await;
        let now = Stamp::of(paths);
        if now == last {
            break;
        }
        last = now;
    }
    last
}

fn differ<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

/// Puts back into `new` the fields that need a restart (new sockets, programs, threads, or state read once)
/// where they differ from `old`, and names them. The rest of `new` can be applied as it is.
pub fn keep_restart_fields(old: &Config, new: &mut Config, session_store: bool) -> Vec<String> {
    let mut refused = Vec::new();
    let mut keep = |name: String, changed: bool| {
        if changed {
            refused.push(name);
        }
        changed
    };
    macro_rules! restart {
        ($name:expr, $($field:ident).+) => {
            if keep($name.to_owned(), differ(&old.$($field).+, &new.$($field).+)) {
                new.$($field).+ = old.$($field).+.clone();
            }
        };
    }
    // A whole section that needs a restart, its changed fields named.
    macro_rules! section {
        ($name:expr, $($field:ident).+) => {
            let changed = changed_fields($name, &old.$($field).+, &new.$($field).+);
            if !changed.is_empty() {
                for field in changed {
                    keep(field, true);
                }
                new.$($field).+ = old.$($field).+.clone();
            }
        };
    }
    // Threads and sockets.
    restart!("workers", workers);
    restart!("engine.kind", engine.kind);
    restart!("engine.instances", engine.instances);
    restart!("engine.ring_depth", engine.ring_depth);
    restart!("admission.enabled", admission.enabled);
    restart!("pin_workers", pin_workers);
    restart!("memory.release_after_quiet", memory.release_after_quiet);
    restart!("state_dir", state_dir);
    restart!("metrics.address", metrics.address);
    if keep(
        "listeners (their number)".to_owned(),
        old.listeners.len() != new.listeners.len(),
    ) {
        new.listeners = old.listeners.clone();
    }
    for (i, (o, n)) in old
        .listeners
        .iter()
        .zip(new.listeners.iter_mut())
        .enumerate()
    {
        if keep(format!("listeners[{i}].address"), o.address != n.address) {
            n.address = o.address;
        }
        if keep(format!("listeners[{i}].backlog"), o.backlog != n.backlog) {
            n.backlog = o.backlog;
        }
        if keep(
            format!("listeners[{i}].defer_accept"),
            o.defer_accept != n.defer_accept,
        ) {
            n.defer_accept = o.defer_accept;
        }
        if keep(
            format!("listeners[{i}].early_data (the 0-RTT session store starts only with it)"),
            !session_store && n.early_data.enabled() && differ(&o.early_data, &n.early_data),
        ) {
            n.early_data = o.early_data.clone();
        }
    }
    // Programs and pins.
    restart!("xdp.interfaces", xdp.interfaces);
    restart!("xdp.mode", xdp.mode);
    restart!("xdp.pin_dir", xdp.pin_dir);
    section!("steering", steering);
    // State read once at start.
    restart!("tls.tickets", tls.tickets);
    restart!("tls.ticket_keys_dir", tls.ticket_keys_dir);
    restart!("tls.ticket_lifetime", tls.ticket_lifetime);
    restart!("tls.ticket_key_lead", tls.ticket_key_lead);
    restart!("tls.session_cache_size", tls.session_cache_size);
    section!("tls.session_store", tls.session_store);
    section!("process", process);
    refused
}

/// The fields of section `name` (a struct with a derived `Debug`) that differ between `old` and `new`, as
/// `name.field`; `name` alone when they differ in a way the field list does not show.
fn changed_fields<T: std::fmt::Debug>(name: &str, old: &T, new: &T) -> Vec<String> {
    if !differ(old, new) {
        return Vec::new();
    }
    // `{:#?}` puts each top-level field on a line of its own indented by four spaces, `name: value`, its value
    // continuing on deeper-indented lines.
    fn fields(pretty: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for line in pretty.lines().skip(1) {
            match line.strip_prefix("    ") {
                Some(rest) if !rest.starts_with(' ') => {
                    if let Some((field, value)) = rest.split_once(": ") {
                        out.push((field.to_owned(), value.to_owned()));
                    }
                }
                _ => {
                    if let Some((_, value)) = out.last_mut() {
                        value.push_str(line);
                    }
                }
            }
        }
        out
    }
    let (a, b) = (fields(&format!("{old:#?}")), fields(&format!("{new:#?}")));
    let named: Vec<String> = a
        .iter()
        .zip(&b)
        .filter(|((fa, va), (fb, vb))| fa == fb && va != vb)
        .map(|((field, _), _)| format!("{name}.{field}"))
        .collect();
    if named.is_empty() || a.len() != b.len() {
        vec![name.to_owned()]
    } else {
        named
    }
}

/// The top-level sections of `new` that differ from `old` (what a reload applied), for the log.
fn changed_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    // After `keep_restart_fields` only these can differ.
    let sections: [(&'static str, bool); 10] = [
        ("listeners", differ(&old.listeners, &new.listeners)),
        ("tls", differ(&old.tls, &new.tls)),
        ("upstream", differ(&old.upstream, &new.upstream)),
        ("http", differ(&old.http, &new.http)),
        ("xdp", differ(&old.xdp, &new.xdp)),
        ("limits", differ(&old.limits, &new.limits)),
        ("log", differ(&old.log, &new.log)),
        ("engine", differ(&old.engine, &new.engine)),
        ("admission", differ(&old.admission, &new.admission)),
        ("shutdown", differ(&old.shutdown, &new.shutdown)),
    ];
    sections
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text).expect("parses")
    }

    #[test]
    fn restart_fields_are_named_and_kept_and_the_rest_is_left_to_apply() {
        let old = parse("workers = 2\n[[listeners]]\naddress = \"127.0.0.1:1\"\n");
        let mut same_but_certs = parse(
            "workers = 2\n[[listeners]]\naddress = \"127.0.0.1:1\"\n[[tls.certificates]]\ncert = \"a\"\nkey = \"b\"\n",
        );
        assert!(keep_restart_fields(&old, &mut same_but_certs, false).is_empty());
        let mut moved = parse(
            "workers = 3\n[[listeners]]\naddress = \"127.0.0.1:2\"\n[upstream]\nidle_timeout = \"1m\"\n\
             backends = [\"127.0.0.1:9\"]\n[xdp]\nsyn_rate = 5\ninterfaces = [\"eth0\"]\n[limits]\n\
             max_connections = 10\n[admission]\ntarget = \"7ms\"\nsyn_shed = 0.5\n[process]\n\
             drop_capabilities = true\n",
        );
        assert_eq!(
            keep_restart_fields(&old, &mut moved, false),
            vec![
                "workers",
                "listeners[0].address",
                "xdp.interfaces",
                "process.drop_capabilities"
            ]
        );
        // The refused fields hold their old values; the others their new ones.
        assert_eq!(moved.workers, Some(2));
        assert_eq!(
            moved.listeners.first().map(|l| l.address),
            old.listeners.first().map(|l| l.address)
        );
        assert!(moved.xdp.interfaces.is_empty());
        assert_eq!(moved.limits.max_connections, Some(10));
        assert_eq!(moved.upstream.idle_timeout, Duration::from_secs(60));
        assert_eq!(moved.xdp.syn_rate, 5);
        assert_eq!(moved.admission.target, Duration::from_millis(7));
        assert_eq!(
            changed_sections(&old, &moved),
            vec!["upstream", "xdp", "limits", "admission"]
        );
    }

    #[test]
    fn engine_threads_and_rings_and_admission_on_off_need_a_restart_the_knobs_do_not() {
        let old = parse("");
        let mut new = parse(
            "[engine]\ninstances = 3\nring_depth = 64\nfull_ring = \"wait\"\nwait_deadline = \"20ms\"\n\
             inline_when_idle = false\n[admission]\nenabled = false\nqueue_budget = \"9ms\"\n\
             max_in_flight_per_worker = 8\n[shutdown]\ndrain_timeout = \"2s\"\n",
        );
        assert_eq!(
            keep_restart_fields(&old, &mut new, false),
            vec!["engine.instances", "engine.ring_depth", "admission.enabled"]
        );
        assert_eq!(new.engine.instances, None);
        assert_eq!(new.engine.ring_depth, 256);
        assert!(new.admission.enabled);
        assert!(!new.engine.inline_when_idle);
        assert_eq!(new.engine.wait_deadline, Duration::from_millis(20));
        assert_eq!(new.admission.max_in_flight_per_worker, 8);
        assert_eq!(new.shutdown.drain_timeout, Duration::from_secs(2));
        assert_eq!(
            changed_sections(&old, &new),
            vec!["engine", "admission", "shutdown"]
        );
    }

    #[test]
    fn a_changed_field_of_a_restart_section_is_named_even_when_nested() {
        let old = parse("");
        let mut new = parse("[tls.session_store]\ncapacity = 10\n[steering]\nenabled = false\n");
        assert_eq!(
            keep_restart_fields(&old, &mut new, false),
            vec!["steering.enabled", "tls.session_store.capacity"]
        );
        assert!(!differ(&old.tls, &new.tls) && !differ(&old.steering, &new.steering));
        assert_eq!(
            changed_fields("x", &Some(1), &None::<i32>),
            vec!["x"],
            "not a struct: the section is named"
        );
    }

    #[test]
    fn turning_early_data_on_needs_the_session_store_started_at_start() {
        let old = parse("[[listeners]]\naddress = \"127.0.0.1:1\"\n");
        let on =
            "[[listeners]]\naddress = \"127.0.0.1:1\"\n[listeners.early_data]\nmax_size = 16384\n";
        let mut without_store = parse(on);
        assert_eq!(
            keep_restart_fields(&old, &mut without_store, false),
            vec!["listeners[0].early_data (the 0-RTT session store starts only with it)"]
        );
        assert!(
            without_store
                .listeners
                .iter()
                .all(|l| !l.early_data.enabled())
        );
        let mut with_store = parse(on);
        assert!(keep_restart_fields(&old, &mut with_store, true).is_empty());
        assert!(with_store.listeners.iter().all(|l| l.early_data.enabled()));
    }
}
