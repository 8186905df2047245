//! The early-data step, between inspect and the expensive step: for a listener with 0-RTT, fetch the offered
//! session from the store (asynchronously, under `fetch_timeout`) and choose the `ServerConfig` for this
//! connection: with early data when the ticket is fresh, admission control is not shedding and the ClientHello
//! is not suspect (malformed by the XDP guard's parser), without it (the handshake still resumes) otherwise.
//!
//! ```text
//! inspect ──► early_data::prepare ──► HandshakeEngine::run (rustls `take` consumes the staged session)
//!             psk identity, fetch, freshness, shedding
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::server::ServerConnection;

use super::inspect::HelloInfo;
use crate::tickets::session_store::metrics::{EarlyDataCounters, Outcome};
use crate::tickets::session_store::{IDENTITY_LEN, Lookup, SessionStore, Staged, value};

/// Whether admission control sheds now (read-only).
pub type Shedding = Arc<dyn Fn() -> bool + Send + Sync>;

/// One listener's early-data step.
pub struct EarlyData {
    on: Option<On>,
    counters: EarlyDataCounters,
}

struct On {
    store: Arc<SessionStore>,
    accept: Arc<ServerConfig>,
    refuse: Arc<ServerConfig>,
    freshness: Duration,
    shedding: Option<Shedding>,
}

/// The choice for one connection; keep it until the handshake ends (it holds the staged session).
pub struct Prepared {
    /// The configuration to hand to `into_connection`.
    pub config: Arc<ServerConfig>,
    /// Known outcome, or `None` while it depends on rustls (or the client offered no early data).
    outcome: Option<Outcome>,
    /// Early data may be accepted: rustls decides (counted `accepted` or `mismatch` after the handshake).
    pending: bool,
    _staged: Option<Staged>,
}

impl EarlyData {
    /// A listener without 0-RTT: only counts `off` for clients that try.
    pub fn off(counters: EarlyDataCounters) -> Self {
        Self { on: None, counters }
    }

    /// A listener with 0-RTT: `accept` and `refuse` share `store` and differ in `max_early_data_size`.
    pub fn on(
        store: Arc<SessionStore>,
        accept: Arc<ServerConfig>,
        refuse: Arc<ServerConfig>,
        freshness: Duration,
        shedding: Option<Shedding>,
        counters: EarlyDataCounters,
    ) -> Self {
        Self {
            on: Some(On {
                store,
                accept,
                refuse,
                freshness,
                shedding,
            }),
            counters,
        }
    }

    /// Fetches the offered session and chooses the configuration (`base` when the listener has no 0-RTT).
    pub async fn prepare(&self, hello: &HelloInfo, base: &Arc<ServerConfig>) -> Prepared {
        let early = hello.offers_early_data;
        let Some(on) = &self.on else {
            return Prepared::decided(base.clone(), early.then_some(Outcome::Off));
        };
        let Some(psk) = hello
            .psk
            .as_ref()
            .filter(|p| p.identity.len() == IDENTITY_LEN)
        else {
            // No identity of ours: nothing to fetch (a PSK rustls cannot find is a full handshake).
            let outcome = (early && hello.offers_psk).then_some(Outcome::StoreMiss);
            return Prepared::decided(on.accept.clone(), outcome);
        };
        let session = match on.store.fetch(&psk.identity).await {
            Lookup::Hit(session) => session,
            Lookup::Replay => {
                return Prepared::decided(on.accept.clone(), early.then_some(Outcome::Replay));
            }
            Lookup::Miss => {
                return Prepared::decided(on.accept.clone(), early.then_some(Outcome::StoreMiss));
            }
            Lookup::Down => {
                return Prepared::decided(on.accept.clone(), early.then_some(Outcome::StoreDown));
            }
        };
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let stale = value::age_skew_ms(&session, psk.obfuscated_age, now_ms)
            .is_none_or(|skew| u128::from(skew) > on.freshness.as_millis());
        let staged = Some(on.store.stage(&psk.identity, session));
        let (config, outcome, pending) = if !early {
            (on.accept.clone(), None, false)
        } else if stale {
            (on.refuse.clone(), Some(Outcome::Stale), false)
        } else if on.shedding.as_ref().is_some_and(|s| s()) {
            (on.refuse.clone(), Some(Outcome::Shedding), false)
        } else if hello.malformed.is_some() {
            // A hello the XDP guard would have dropped (its verdict is not visible per connection here): a
            // crafted one gets no request in before the handshake completes.
            (on.refuse.clone(), Some(Outcome::Suspect), false)
        } else {
            (on.accept.clone(), None, true)
        };
        Prepared {
            config,
            outcome,
            pending,
            _staged: staged,
        }
    }

    /// The listener's `portcullis_early_data_total` handles (for a handshake that ends after the stage).
    pub fn counters(&self) -> &EarlyDataCounters {
        &self.counters
    }

    /// Counts the attempt once the handshake is done (`conn`) or failed (`None`; `too_large` says whether
    /// rustls failed it for too much early data).
    pub fn count(&self, prepared: &Prepared, conn: Option<&mut ServerConnection>, too_large: bool) {
        prepared.count_with(&self.counters, conn, too_large);
    }
}

impl Prepared {
    /// A handshake handed over with its early data accepted reached the client's Finished.
    pub fn count_accepted(&self, counters: &EarlyDataCounters) {
        counters.count(self.outcome.unwrap_or(Outcome::Accepted));
    }

    /// A handshake handed over with its early data accepted failed after the stage.
    pub fn count_failed(&self, counters: &EarlyDataCounters, too_large: bool) {
        self.count_with(counters, None, too_large);
    }

    fn count_with(
        &self,
        counters: &EarlyDataCounters,
        conn: Option<&mut ServerConnection>,
        too_large: bool,
    ) {
        let prepared = self;
        let outcome = if too_large {
            Some(Outcome::TooLarge)
        } else if let Some(o) = prepared.outcome {
            Some(o)
        } else if prepared.pending {
            conn.map(|c| match c.early_data() {
                Some(_) => Outcome::Accepted,
                None => Outcome::Mismatch,
            })
        } else {
            None
        };
        if let Some(o) = outcome {
            counters.count(o);
        }
    }

    fn decided(config: Arc<ServerConfig>, outcome: Option<Outcome>) -> Self {
        Self {
            config,
            outcome,
            pending: false,
            _staged: None,
        }
    }
}

/// Moves the early data rustls accepted out of `conn` (all of it arrives before the client's Finished): the
/// relay sends it upstream only after the handshake completed, like HAProxy, never before.
pub fn drain(conn: &mut ServerConnection) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(mut early) = conn.early_data() {
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut early, &mut buf) {
            let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
                break;
            };
            out.extend_from_slice(chunk);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tickets::Tickets;
    use crate::tickets::cache::SessionCache;
    use crate::tickets::metrics::CacheCounters;
    use crate::tickets::session_store::SessionStoreConfig;
    use crate::tickets::session_store::metrics::StoreMetrics;
    use rustls::pki_types::ServerName;
    use rustls::server::Acceptor;
    use rustls::{ClientConfig, ClientConnection};
    use std::io::Write;

    struct Fixture {
        client: Arc<ClientConfig>,
        base: Arc<ServerConfig>,
        step: EarlyData,
        store: Arc<SessionStore>,
        metrics: StoreMetrics,
        registry: prometheus_client::registry::Registry,
    }

    fn fixture(freshness: Duration) -> Fixture {
        fixture_with(freshness, None)
    }

    fn fixture_with(freshness: Duration, shedding: Option<Shedding>) -> Fixture {
        let (base, mut client) = crate::test_tls::tls13_pair();
        let base = Arc::new(base);
        client.enable_early_data = true;
        let metrics = StoreMetrics::new();
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let store = Arc::new(
            SessionStore::start(
                &SessionStoreConfig::default(),
                None,
                Arc::new(SessionCache::new(16, CacheCounters::default())),
                Duration::from_secs(3600),
                metrics.clone(),
            )
            .expect("local store"),
        );
        let step = EarlyData::on(
            store.clone(),
            Tickets::early_data_config(&base, store.clone(), 1024),
            Tickets::early_data_config(&base, store.clone(), 0),
            freshness,
            shedding,
            metrics.listener("https"),
        );
        Fixture {
            client: Arc::new(client),
            base,
            step,
            store,
            metrics,
            registry,
        }
    }

    /// Moves bytes both ways until neither side has anything to send.
    fn pump(client: &mut ClientConnection, server: &mut ServerConnection) {
        for _ in 0..20 {
            let mut moved = false;
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).expect("client write");
            }
            if !buf.is_empty() {
                moved = true;
                server.read_tls(&mut buf.as_slice()).expect("server read");
                server.process_new_packets().expect("server process");
            }
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).expect("server write");
            }
            if !buf.is_empty() {
                moved = true;
                client.read_tls(&mut buf.as_slice()).expect("client read");
                client.process_new_packets().expect("client process");
            }
            if !moved {
                return;
            }
        }
    }

    /// The client's first flight (ClientHello and, with a ticket, early data "GET /").
    fn first_flight(client: &mut ClientConnection) -> Vec<u8> {
        if let Some(mut early) = client.early_data() {
            early.write_all(b"GET /").expect("early write");
        }
        let mut flight = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut flight).expect("flight");
        }
        flight
    }

    /// The server side of one handshake on `flight`, through the early-data step (with `tweak` applied to the
    /// inspection first).
    async fn serve(
        f: &Fixture,
        flight: &[u8],
        tweak: impl FnOnce(&mut HelloInfo),
    ) -> (ServerConnection, Prepared) {
        let mut acceptor = Acceptor::default();
        acceptor.read_tls(&mut &flight[..]).expect("acceptor read");
        let accepted = acceptor.accept().ok().flatten().expect("whole hello");
        let mut hello = HelloInfo::new(accepted.client_hello().server_name(), flight);
        tweak(&mut hello);
        let prepared = f.step.prepare(&hello, &f.base).await;
        let mut conn = accepted
            .into_connection(prepared.config.clone())
            .unwrap_or_else(|(e, _)| panic!("into_connection: {e}"));
        conn.process_new_packets().expect("process");
        (conn, prepared)
    }

    fn client(f: &Fixture) -> ClientConnection {
        ClientConnection::new(
            f.client.clone(),
            ServerName::try_from("localhost").expect("name"),
        )
        .expect("client")
    }

    /// A full handshake, after which the fixture's client holds the tickets it was sent.
    async fn warm(f: &Fixture) {
        let mut c = client(f);
        let flight = first_flight(&mut c);
        let (mut s, _p) = serve(f, &flight, |_| {}).await;
        pump(&mut c, &mut s);
        assert!(!c.is_handshaking() && !s.is_handshaking());
    }

    fn text(f: &Fixture) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &f.registry).expect("encode");
        out
    }

    #[tokio::test]
    async fn zero_rtt_once_then_replay_refused() {
        let f = fixture(Duration::from_secs(10));
        // First connection: full handshake, tickets stored.
        warm(&f).await;
        // Second: resumes with early data, accepted once.
        let mut c2 = client(&f);
        let flight = first_flight(&mut c2);
        let (mut s2, p2) = serve(&f, &flight, |h| {
            let psk = h.psk.as_ref().expect("psk offer");
            assert_eq!(psk.identity.len(), IDENTITY_LEN);
        })
        .await;
        pump(&mut c2, &mut s2);
        assert!(c2.is_early_data_accepted(), "early data accepted");
        assert_eq!(s2.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        f.step.count(&p2, Some(&mut s2), false);
        assert_eq!(drain(&mut s2), b"GET /");
        // The staged session is gone once rustls took it; dropping the guard is harmless.
        drop(p2);
        // The same flight again: the ticket is spent, counted as a replay; full handshake, no early data.
        let (mut s3, p3) = serve(&f, &flight, |_| {}).await;
        f.step.count(&p3, Some(&mut s3), false);
        assert!(s3.early_data().is_none());
        assert_ne!(s3.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        let t = text(&f);
        for want in [
            "portcullis_early_data_total{listener=\"https\",outcome=\"accepted\"} 1",
            "portcullis_early_data_total{listener=\"https\",outcome=\"replay\"} 1",
            "portcullis_session_store_requests_total{op=\"fetch\",result=\"replay\"} 1",
            "portcullis_session_store_requests_total{op=\"fetch\",result=\"hit\"} 1",
        ] {
            assert!(t.contains(want), "{want} in\n{t}");
        }
    }

    #[tokio::test]
    async fn stale_ticket_resumes_without_early_data() {
        let f = fixture(Duration::from_secs(10));
        warm(&f).await;
        let mut c2 = client(&f);
        let flight = first_flight(&mut c2);
        // As if the client's clock said the ticket is 30 s older than we think.
        let (mut s2, p2) = serve(&f, &flight, |h| {
            if let Some(psk) = h.psk.as_mut() {
                psk.obfuscated_age = psk.obfuscated_age.wrapping_add(30_000);
            }
        })
        .await;
        pump(&mut c2, &mut s2);
        f.step.count(&p2, Some(&mut s2), false);
        assert!(!c2.is_early_data_accepted());
        assert_eq!(s2.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        assert!(drain(&mut s2).is_empty());
        assert!(
            text(&f)
                .contains("portcullis_early_data_total{listener=\"https\",outcome=\"stale\"} 1")
        );
        // The real session's age is what rustls stored a moment ago.
        let mut c3 = client(&f);
        let flight = first_flight(&mut c3);
        let psk = HelloInfo::new(None, &flight).psk.expect("psk");
        let Lookup::Hit(session) = f.store.fetch(&psk.identity).await else {
            panic!("session stored");
        };
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        let skew = value::age_skew_ms(&session, psk.obfuscated_age, now_ms).expect("tail");
        assert!(skew < 2_000, "{skew} ms");
    }

    #[tokio::test]
    async fn no_early_data_while_admission_sheds() {
        let f = fixture_with(Duration::from_secs(10), Some(Arc::new(|| true)));
        warm(&f).await;
        let mut c2 = client(&f);
        let flight = first_flight(&mut c2);
        let (mut s2, p2) = serve(&f, &flight, |_| {}).await;
        pump(&mut c2, &mut s2);
        f.step.count(&p2, Some(&mut s2), false);
        assert!(!c2.is_early_data_accepted());
        assert_eq!(s2.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        assert!(
            text(&f)
                .contains("portcullis_early_data_total{listener=\"https\",outcome=\"shedding\"} 1")
        );
    }

    #[tokio::test]
    async fn no_early_data_for_a_suspect_hello() {
        let f = fixture(Duration::from_secs(10));
        warm(&f).await;
        let mut c2 = client(&f);
        let flight = first_flight(&mut c2);
        let (mut s2, p2) = serve(&f, &flight, |h| h.malformed = Some("test")).await;
        pump(&mut c2, &mut s2);
        f.step.count(&p2, Some(&mut s2), false);
        assert!(!c2.is_early_data_accepted());
        assert_eq!(s2.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        assert!(
            text(&f)
                .contains("portcullis_early_data_total{listener=\"https\",outcome=\"suspect\"} 1")
        );
    }

    #[tokio::test]
    async fn a_listener_without_early_data_counts_off() {
        let f = fixture(Duration::from_secs(10));
        let off = EarlyData::off(f.metrics.listener("plain"));
        let hello = HelloInfo::new(
            None,
            &crate::handshake::inspect::tests::fixture("openssl_tls13_psk_early_data.bin"),
        );
        assert!(hello.offers_early_data);
        let prepared = off.prepare(&hello, &f.base).await;
        assert!(Arc::ptr_eq(&prepared.config, &f.base));
        off.count(&prepared, None, false);
        assert!(
            text(&f).contains("portcullis_early_data_total{listener=\"plain\",outcome=\"off\"} 1")
        );
    }
}
