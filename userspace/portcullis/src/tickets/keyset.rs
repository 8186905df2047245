//! A validated set of ticket keys, and which key does what at a given moment.
//!
//! Windows are evaluated at each use, not at load: every node switches to a new key at the moment its
//! `encrypt_from` passes, without a reload and without talking to the others. Rules:
//! - **encrypt** with the windowed key whose `encrypt_from` is the latest one not in the future (and that
//!   still decrypts); when none, with the primary unwindowed key (the first nginx file, or the per-process key).
//! - **decrypt** with any key whose name matches and whose `decrypt_until` has not passed, pending keys
//!   included: a node whose clock is a little behind must accept tickets from a node already encrypting.

use std::collections::HashSet;
use std::time::SystemTime;

use super::key::{KeyKind, KeyName, TicketKey};

/// What a key does at a moment; shown by `portcullis keys list` and counted in `portcullis_ticket_keys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Distributed ahead of its encrypt window: decrypts only (for nodes with clocks ahead).
    Pending,
    /// The key new tickets are sealed with.
    Encrypting,
    /// Still opens tickets, seals none.
    DecryptOnly,
    /// Past `decrypt_until`: opens nothing, `keys prune` removes it.
    Expired,
}

impl KeyState {
    /// The label value / display name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Encrypting => "encrypting",
            Self::DecryptOnly => "decrypt_only",
            Self::Expired => "expired",
        }
    }
}

/// Why a set of keys is refused (the last good set stays in use).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    /// No usable key at all.
    #[error("no ticket key that can still decrypt")]
    Empty,
    /// Two files carry the same key name: a ticket could not say which one sealed it.
    #[error("key name {name} appears in both {first} and {second}")]
    DuplicateName {
        /// The name.
        name: KeyName,
        /// One file.
        first: String,
        /// The other.
        second: String,
    },
    /// Keys exist but none may encrypt now (all pending, or only decrypt-only raw files).
    #[error(
        "no key is valid for encryption now (every key is pending or past its window); run `portcullis keys rotate` or fix the windows"
    )]
    NoEncryptionKey,
}

/// A validated key set. Immutable: a change builds a new set that is swapped in whole.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<TicketKey>,
}

impl KeySet {
    /// Validates `keys` at `now`: keys past `decrypt_until` are dropped (and zeroized); the rest must have unique
    /// names and one must be able to encrypt now.
    pub fn new(keys: Vec<TicketKey>, now: SystemTime) -> Result<Self, KeySetError> {
        let keys: Vec<TicketKey> = keys.into_iter().filter(|k| k.decrypts_at(now)).collect();
        if keys.is_empty() {
            return Err(KeySetError::Empty);
        }
        let mut seen = HashSet::new();
        for k in &keys {
            if !seen.insert(k.name) {
                let first = keys
                    .iter()
                    .find(|o| o.name == k.name)
                    .map(|o| o.file.clone())
                    .unwrap_or_default();
                return Err(KeySetError::DuplicateName {
                    name: k.name,
                    first,
                    second: k.file.clone(),
                });
            }
        }
        let set = Self { keys };
        if set.encrypting(now).is_none() {
            return Err(KeySetError::NoEncryptionKey);
        }
        Ok(set)
    }

    /// A set with no keys: seals nothing, opens nothing (before the first valid load).
    pub fn empty() -> Self {
        Self { keys: Vec::new() }
    }

    /// The key to seal new tickets with at `now`.
    pub fn encrypting(&self, now: SystemTime) -> Option<&TicketKey> {
        let windowed = self
            .keys
            .iter()
            .filter(|k| k.kind == KeyKind::Windowed && k.may_encrypt_at(now))
            .max_by(|a, b| {
                a.encrypt_from
                    .cmp(&b.encrypt_from)
                    .then_with(|| a.name.cmp(&b.name))
            });
        windowed.or_else(|| {
            self.keys
                .iter()
                .find(|k| k.kind == (KeyKind::Unwindowed { primary: true }))
        })
    }

    /// The key named `name`, if it may open tickets at `now`.
    pub fn decrypting(&self, name: &[u8], now: SystemTime) -> Option<&TicketKey> {
        self.keys
            .iter()
            .find(|k| k.name.0 == name && k.decrypts_at(now))
    }

    /// Every key with its state at `now`.
    pub fn states(&self, now: SystemTime) -> Vec<(&TicketKey, KeyState)> {
        let enc = self.encrypting(now).map(|k| k.name);
        self.keys
            .iter()
            .map(|k| (k, state_of(k, enc, now)))
            .collect()
    }

    /// Seconds until the next pending key starts encrypting, if one is staged.
    pub fn next_activation(&self, now: SystemTime) -> Option<f64> {
        self.keys
            .iter()
            .filter(|k| k.decrypts_at(now))
            .filter_map(|k| k.encrypt_from?.duration_since(now).ok())
            .filter(|d| !d.is_zero())
            .min()
            .map(|d| d.as_secs_f64())
    }

    /// Whether some key's `decrypt_until` has passed at `now` (time to erase it).
    pub fn has_expired(&self, now: SystemTime) -> bool {
        self.keys.iter().any(|k| !k.decrypts_at(now))
    }

    /// The set without keys past `decrypt_until` (no validation: the last good set shrinks). Dropping the old
    /// set then erases them.
    pub fn without_expired(&self, now: SystemTime) -> Self {
        Self {
            keys: self
                .keys
                .iter()
                .filter(|k| k.decrypts_at(now))
                .cloned()
                .collect(),
        }
    }

    /// Number of keys loaded.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is loaded.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A key's state at `now`, given the name of the key that encrypts.
pub fn state_of(key: &TicketKey, encrypting: Option<KeyName>, now: SystemTime) -> KeyState {
    if !key.decrypts_at(now) {
        KeyState::Expired
    } else if encrypting == Some(key.name) {
        KeyState::Encrypting
    } else if key.encrypt_from.is_some_and(|from| now < from) {
        KeyState::Pending
    } else {
        KeyState::DecryptOnly
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use zeroize::Zeroizing;

    const H: Duration = Duration::from_secs(3600);

    fn at(hours: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(1_800_000_000)
            + H * u32::try_from(hours).unwrap_or(0)
    }

    fn windowed(n: u8, from: u64, until: u64) -> TicketKey {
        TicketKey::new(
            KeyName([n; 16]),
            Zeroizing::new([n; 32]),
            KeyKind::Windowed,
            (Some(at(from)), Some(at(until))),
            at(from),
            format!("k{n}.toml"),
        )
    }

    fn raw(n: u8, primary: bool) -> TicketKey {
        TicketKey::new(
            KeyName([n; 16]),
            Zeroizing::new([n; 32]),
            KeyKind::Unwindowed { primary },
            (None, None),
            at(0),
            format!("raw{n}"),
        )
    }

    #[test]
    fn newest_begun_window_encrypts_and_pending_keys_decrypt() {
        // k1 encrypts from 0 to 30, k2 from 24 (staged ahead), k3 staged far out.
        let set = KeySet::new(
            vec![windowed(1, 0, 30), windowed(2, 24, 54), windowed(3, 48, 78)],
            at(1),
        )
        .expect("valid");
        let names = |now| {
            set.states(now)
                .into_iter()
                .map(|(k, s)| (k.name.0[0], s))
                .collect::<Vec<_>>()
        };
        assert_eq!(set.encrypting(at(1)).map(|k| k.name.0[0]), Some(1));
        assert_eq!(
            names(at(1)),
            vec![
                (1, KeyState::Encrypting),
                (2, KeyState::Pending),
                (3, KeyState::Pending)
            ]
        );
        // The activation moment passes: k2 takes over without a reload; k1 still decrypts.
        assert_eq!(set.encrypting(at(25)).map(|k| k.name.0[0]), Some(2));
        assert_eq!(names(at(25))[0], (1, KeyState::DecryptOnly));
        assert!(set.decrypting(&[1; 16], at(25)).is_some());
        // Pending keys already decrypt (a node with its clock ahead encrypts with them).
        assert!(set.decrypting(&[3; 16], at(1)).is_some());
        // Past decrypt_until: refused.
        assert!(set.decrypting(&[1; 16], at(30)).is_none());
        assert_eq!(names(at(31))[0], (1, KeyState::Expired));
        assert!(set.has_expired(at(31)));
        assert_eq!(set.without_expired(at(31)).len(), 2);
        assert_eq!(
            KeySet::new(vec![windowed(1, 0, 30), windowed(2, 24, 54)], at(1))
                .expect("valid")
                .next_activation(at(1)),
            Some((23 * H).as_secs_f64())
        );
    }

    #[test]
    fn invalid_sets_are_refused() {
        assert_eq!(KeySet::new(vec![], at(0)).err(), Some(KeySetError::Empty));
        assert_eq!(
            KeySet::new(vec![windowed(1, 0, 10)], at(10)).err(),
            Some(KeySetError::Empty)
        );
        assert_eq!(
            KeySet::new(vec![windowed(1, 5, 10)], at(1)).err(),
            Some(KeySetError::NoEncryptionKey)
        );
        assert_eq!(
            KeySet::new(vec![raw(1, false)], at(1)).err(),
            Some(KeySetError::NoEncryptionKey)
        );
        assert!(matches!(
            KeySet::new(vec![windowed(1, 0, 10), raw(1, true)], at(1)).err(),
            Some(KeySetError::DuplicateName { .. })
        ));
    }

    #[test]
    fn nginx_files_first_encrypts_and_windowed_keys_take_over() {
        let set = KeySet::new(vec![raw(1, true), raw(2, false), windowed(3, 5, 50)], at(1))
            .expect("valid");
        assert_eq!(set.encrypting(at(1)).map(|k| k.name.0[0]), Some(1));
        assert!(set.decrypting(&[2; 16], at(1)).is_some());
        assert_eq!(set.encrypting(at(6)).map(|k| k.name.0[0]), Some(3));
        assert!(set.decrypting(&[1; 16], at(100)).is_some());
    }
}
