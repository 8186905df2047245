//! The client-side session store, shared by every target so that a ticket one server issued can be offered to
//! another (the fleet case: do the servers share ticket keys?).
//!
//! rustls keys its store by server name. [`Scope::Sni`] keeps that (targets behind the same SNI share tickets,
//! whatever their address); [`Scope::Global`] ignores the name so tickets cross SNIs too. TLS 1.3 tickets are
//! single use (RFC 8446 §C.4); TLS 1.2 sessions are reused until replaced.
//!
//! rustls reads the store while building the ClientHello, synchronously inside `ClientConnection::new`. The store
//! notes on the calling thread whether it handed something out; [`take_offered`] right after `new` tells the
//! connection whether it offered resumption, which is how a full handshake is attributed to "nothing to offer"
//! or "offered and rejected".

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use rustls::NamedGroup;
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;

/// How many TLS 1.3 tickets are kept per key; the oldest go first. Servers send one or two per handshake.
pub const TICKETS_PER_KEY: usize = 4096;

/// How the store keys sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// By server name (SNI), as rustls' own cache: every target with the same SNI shares.
    Sni,
    /// One pool for every server name.
    Global,
}

thread_local! {
    static OFFERED: Cell<bool> = const { Cell::new(false) };
}

/// Whether the store handed out a ticket or session on this thread since the last call. Call it right before and
/// right after `ClientConnection::new`.
pub fn take_offered() -> bool {
    OFFERED.with(|o| o.replace(false))
}

fn note_offered() {
    OFFERED.with(|o| o.set(true));
}

#[derive(Debug, Default)]
struct Entry {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

/// The shared store: one map behind one mutex (held for a lookup only), seen through a namespace per
/// handshake kind, so a TLS 1.2 session saved by a session-ID-only connection is never offered by a ticket
/// connection (and the other way round), which would count as a rejection the server did not make.
#[derive(Clone, Debug)]
pub struct TicketStore {
    scope: Scope,
    namespace: &'static str,
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

impl TicketStore {
    /// An empty store keyed by `scope`.
    pub fn new(scope: Scope) -> Self {
        Self {
            scope,
            namespace: "",
            entries: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The same map seen through `namespace` (a kind's name): entries of other namespaces are invisible.
    pub fn namespaced(&self, namespace: &'static str) -> Self {
        Self {
            namespace,
            ..self.clone()
        }
    }

    /// How many TLS 1.3 tickets are stored, over all keys and namespaces.
    pub fn tls13_tickets(&self) -> usize {
        self.with(|m| m.values().map(|e| e.tls13.len()).sum())
    }

    fn key(&self, name: &ServerName<'_>) -> String {
        match self.scope {
            Scope::Sni => format!("{}/{}", self.namespace, name.to_str()),
            Scope::Global => self.namespace.to_owned(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Entry>) -> R) -> R {
        // A panic while holding the lock cannot leave a map half-updated in a way that matters here.
        let mut guard = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }
}

impl ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        let key = self.key(&server_name);
        self.with(|m| m.entry(key).or_default().kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        let key = self.key(server_name);
        self.with(|m| m.get(&key).and_then(|e| e.kx_hint))
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        let key = self.key(&server_name);
        self.with(|m| m.entry(key).or_default().tls12 = Some(value));
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        let key = self.key(server_name);
        let value = self.with(|m| m.get(&key).and_then(|e| e.tls12.clone()));
        if value.is_some() {
            note_offered();
        }
        value
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        let key = self.key(server_name);
        self.with(|m| {
            if let Some(e) = m.get_mut(&key) {
                e.tls12 = None;
            }
        });
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let key = self.key(&server_name);
        self.with(|m| {
            let tickets = &mut m.entry(key).or_default().tls13;
            if tickets.len() >= TICKETS_PER_KEY {
                tickets.pop_front();
            }
            tickets.push_back(value);
        });
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let key = self.key(server_name);
        // Newest first: the ticket least likely to have expired.
        let value = self.with(|m| m.get_mut(&key).and_then(|e| e.tls13.pop_back()));
        if value.is_some() {
            note_offered();
        }
        value
    }
}
