//! Sessions sealed for a shared store: the fleet's ticket format (`tickets::format`: AES-256-GCM under the
//! encrypting key, key name as associated data, issue time inside) around `identity || session`, so the store
//! never holds a resumption secret in clear and a value moved to another identity does not open.

use std::time::{Duration, SystemTime};

use ring::rand::SecureRandom;
use zeroize::Zeroizing;

use crate::tickets::format::{self, Rejection};
use crate::tickets::keyset::KeySet;

/// Seals `session` for `identity` with the key set's encrypting key. `None` when no key may encrypt now or
/// the RNG fails (the session is then not stored: the client simply cannot resume with that ticket).
pub fn seal(
    keys: &KeySet,
    identity: &[u8],
    session: &[u8],
    now: SystemTime,
    rng: &dyn SecureRandom,
) -> Option<Vec<u8>> {
    let key = keys.encrypting(now)?;
    let id_len = u8::try_from(identity.len()).ok()?;
    let mut plain = Zeroizing::new(Vec::with_capacity(1 + identity.len() + session.len()));
    plain.push(id_len);
    plain.extend_from_slice(identity);
    plain.extend_from_slice(session);
    format::seal(key, &plain, now, rng)
}

/// Opens what [`seal`] made for `identity`. A value sealed for another identity fails as `AuthFailed`.
pub fn open(
    keys: &KeySet,
    identity: &[u8],
    sealed: &[u8],
    now: SystemTime,
    lifetime: Duration,
) -> Result<Zeroizing<Vec<u8>>, Rejection> {
    let opened = Zeroizing::new(format::open(keys, sealed, now, lifetime)?.plain);
    let (&id_len, rest) = opened.split_first().ok_or(Rejection::Malformed)?;
    let (id, session) = rest
        .split_at_checked(usize::from(id_len))
        .ok_or(Rejection::Malformed)?;
    if id != identity {
        return Err(Rejection::AuthFailed);
    }
    Ok(Zeroizing::new(session.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tickets::key::TicketKey;

    #[test]
    fn round_trip_bound_to_the_identity() {
        let now = SystemTime::now();
        let keys = KeySet::new(vec![TicketKey::random(true).expect("rng")], now).expect("set");
        let rng = ring::rand::SystemRandom::new();
        let sealed = seal(&keys, b"id-1", b"secret session", now, &rng).expect("sealed");
        assert!(
            !sealed.windows(6).any(|w| w == b"secret"),
            "no plaintext in the store"
        );
        let life = Duration::from_secs(60);
        assert_eq!(
            open(&keys, b"id-1", &sealed, now, life).map(|s| s.to_vec()),
            Ok(b"secret session".to_vec())
        );
        assert_eq!(
            open(&keys, b"id-2", &sealed, now, life).err(),
            Some(Rejection::AuthFailed)
        );
        assert!(open(&keys, b"id-1", &sealed[..10], now, life).is_err());
    }
}
