//! The ticket on the wire: `key name (16) || nonce (12) || AES-256-GCM(issued_at u64 BE || session state) || tag (16)`,
//! with the key name as associated data.
//!
//! The issue time inside the ciphertext lets every node refuse tickets older than `tls.ticket_lifetime`, whoever
//! issued them. Nonces are a random per-thread prefix and a counter ([`nonce`](super::nonce), which argues their
//! uniqueness per key); `rng` only draws the prefixes.
//!
//! Tickets are attacker input: [`open`] returns a [`Rejection`] for anything it cannot use and never panics.

use std::time::{Duration, SystemTime};

use ring::aead::{Aad, NONCE_LEN, Nonce};
use ring::rand::SecureRandom;
use zeroize::Zeroizing;

use super::key::{NAME_LEN, TicketKey};
use super::keyset::KeySet;
use super::nonce;

/// Bytes of the AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Bytes of the issue time inside the ciphertext.
const TIME_LEN: usize = 8;
/// The shortest well-formed ticket (empty session state).
pub const MIN_TICKET_LEN: usize = NAME_LEN + NONCE_LEN + TIME_LEN + TAG_LEN;
/// How far in the future an issue time may be (another node's clock running ahead) before it is refused.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Why a ticket was not used: the label of `portcullis_ticket_rejections_total{cause}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Too short to hold a name, nonce, issue time and tag.
    Malformed,
    /// No accepted key has this name: another fleet, a per-process key of another instance, or a key past
    /// its `decrypt_until`.
    UnknownKey,
    /// The name matched but the ciphertext did not authenticate (tampered, or a different secret under a
    /// reused name).
    AuthFailed,
    /// Authentic but older than the ticket lifetime (or issued implausibly far in the future).
    Expired,
}

impl Rejection {
    /// Every cause, for pre-registering metric series.
    pub const ALL: [Rejection; 4] = [
        Self::Malformed,
        Self::UnknownKey,
        Self::AuthFailed,
        Self::Expired,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::AuthFailed => "auth_failed",
            Self::Expired => "expired",
        }
    }
}

/// A ticket that opened: the session state and how long ago its key came into use.
#[derive(Debug)]
pub struct Opened {
    /// The session state rustls sealed.
    pub plain: Vec<u8>,
    /// Age of the key that opened it (for `portcullis_ticket_key_age_seconds`).
    pub key_age: Duration,
}

/// Seals `plain` with `key`, stamped with `now`. `None` only if the system RNG (drawing a thread's nonce prefix)
/// or the AEAD fails.
pub fn seal(
    key: &TicketKey,
    plain: &[u8],
    now: SystemTime,
    rng: &dyn SecureRandom,
) -> Option<Vec<u8>> {
    let aead = key.aead()?;
    let nonce = nonce::next(rng)?;
    let issued = unix_seconds(now);
    let mut out = Vec::with_capacity(MIN_TICKET_LEN + plain.len());
    out.extend_from_slice(&key.name.0);
    out.extend_from_slice(&nonce);
    let mut body = Zeroizing::new(Vec::with_capacity(TIME_LEN + plain.len() + TAG_LEN));
    body.extend_from_slice(&issued.to_be_bytes());
    body.extend_from_slice(plain);
    aead.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(key.name.0),
        &mut *body,
    )
    .ok()?;
    out.extend_from_slice(&body);
    Some(out)
}

/// Opens `ticket` with whichever key of `keys` it names, refusing it if older than `lifetime` at `now`.
pub fn open(
    keys: &KeySet,
    ticket: &[u8],
    now: SystemTime,
    lifetime: Duration,
) -> Result<Opened, Rejection> {
    if ticket.len() < MIN_TICKET_LEN {
        return Err(Rejection::Malformed);
    }
    let (name, rest) = ticket
        .split_at_checked(NAME_LEN)
        .ok_or(Rejection::Malformed)?;
    let (nonce, sealed) = rest
        .split_at_checked(NONCE_LEN)
        .ok_or(Rejection::Malformed)?;
    let key = keys.decrypting(name, now).ok_or(Rejection::UnknownKey)?;
    let aead = key.aead().ok_or(Rejection::AuthFailed)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Rejection::Malformed)?;
    let mut buf = Zeroizing::new(sealed.to_vec());
    let body = aead
        .open_in_place(nonce, Aad::from(key.name.0), &mut buf[..])
        .map_err(|_| Rejection::AuthFailed)?;
    let (time, plain) = body
        .split_at_checked(TIME_LEN)
        .ok_or(Rejection::Malformed)?;
    let issued = u64::from_be_bytes(time.try_into().map_err(|_| Rejection::Malformed)?);
    let now_s = unix_seconds(now);
    if issued > now_s.saturating_add(MAX_CLOCK_SKEW.as_secs())
        || now_s.saturating_sub(issued) > lifetime.as_secs()
    {
        return Err(Rejection::Expired);
    }
    Ok(Opened {
        plain: plain.to_vec(),
        key_age: now.duration_since(key.since).unwrap_or_default(),
    })
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tickets::key::{KeyKind, KeyName};

    const LIFETIME: Duration = Duration::from_secs(3600);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn set_of(keys: Vec<TicketKey>) -> KeySet {
        KeySet::new(keys, now()).expect("valid set")
    }

    fn key(n: u8, primary: bool) -> TicketKey {
        TicketKey::new(
            KeyName([n; 16]),
            Zeroizing::new([n; 32]),
            KeyKind::Unwindowed { primary },
            (None, None),
            now() - Duration::from_secs(60),
            String::new(),
        )
    }

    fn sealed(n: u8, plain: &[u8], at: SystemTime) -> Vec<u8> {
        seal(&key(n, true), plain, at, &ring::rand::SystemRandom::new()).expect("seal")
    }

    #[test]
    fn round_trip_any_node_with_the_key() {
        let rng = ring::rand::SystemRandom::new();
        let a = set_of(vec![key(1, true)]);
        let t = seal(
            a.encrypting(now()).expect("key"),
            b"session state",
            now(),
            &rng,
        )
        .expect("seal");
        assert_eq!(t.get(..16), Some(&[1u8; 16][..]));
        assert_eq!(t.len(), MIN_TICKET_LEN + 13);
        // Another node with the same key, and also an older one to decrypt with.
        let b = set_of(vec![key(2, true), key(1, false)]);
        let opened = open(&b, &t, now() + Duration::from_secs(10), LIFETIME).expect("opens");
        assert_eq!(opened.plain, b"session state");
        assert_eq!(opened.key_age, Duration::from_secs(70));
        // Nonces differ per ticket.
        let t2 = seal(
            a.encrypting(now()).expect("key"),
            b"session state",
            now(),
            &rng,
        )
        .expect("seal");
        assert_ne!(t, t2);
    }

    #[test]
    fn every_rejection_has_its_cause() {
        let keys = set_of(vec![key(1, true)]);
        let good = sealed(1, b"state", now());
        // Malformed: every prefix shorter than the minimum, including empty.
        for cut in 0..MIN_TICKET_LEN {
            assert_eq!(
                open(&keys, &good[..cut], now(), LIFETIME).err(),
                Some(Rejection::Malformed),
                "{cut}"
            );
        }
        // Truncated but long enough: the tag no longer matches.
        assert_eq!(
            open(&keys, &good[..good.len() - 1], now(), LIFETIME).err(),
            Some(Rejection::AuthFailed)
        );
        // Foreign key name.
        assert_eq!(
            open(&keys, &sealed(9, b"state", now()), now(), LIFETIME).err(),
            Some(Rejection::UnknownKey)
        );
        // Every single-bit flip after the name fails authentication (flips in the name: unknown key).
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            let want = if i < NAME_LEN {
                Rejection::UnknownKey
            } else {
                Rejection::AuthFailed
            };
            assert_eq!(open(&keys, &bad, now(), LIFETIME).err(), Some(want), "{i}");
        }
        // Same name, different secret: authentication fails.
        let mut impostor = key(1, true);
        impostor = TicketKey::new(
            impostor.name,
            Zeroizing::new([7; 32]),
            impostor.kind,
            (None, None),
            now(),
            String::new(),
        );
        let forged =
            seal(&impostor, b"state", now(), &ring::rand::SystemRandom::new()).expect("seal");
        assert_eq!(
            open(&keys, &forged, now(), LIFETIME).err(),
            Some(Rejection::AuthFailed)
        );
        // Expired: older than the lifetime, or from too far in the future.
        let old = sealed(1, b"state", now() - LIFETIME - Duration::from_secs(1));
        assert_eq!(
            open(&keys, &old, now(), LIFETIME).err(),
            Some(Rejection::Expired)
        );
        let edge = sealed(1, b"state", now() - LIFETIME);
        assert!(open(&keys, &edge, now(), LIFETIME).is_ok());
        let future = sealed(1, b"state", now() + MAX_CLOCK_SKEW + Duration::from_secs(1));
        assert_eq!(
            open(&keys, &future, now(), LIFETIME).err(),
            Some(Rejection::Expired)
        );
        let near_future = sealed(1, b"state", now() + Duration::from_secs(5));
        assert!(open(&keys, &near_future, now(), LIFETIME).is_ok());
    }

    #[test]
    fn random_bytes_never_panic() {
        let keys = set_of(vec![key(1, true)]);
        let rng = ring::rand::SystemRandom::new();
        for len in 0..300 {
            let mut junk = vec![0u8; len];
            rng.fill(&mut junk).expect("rng");
            if len >= NAME_LEN {
                junk[..NAME_LEN].copy_from_slice(&[1; NAME_LEN]);
            }
            assert!(open(&keys, &junk, now(), LIFETIME).is_err());
        }
    }
}
