//! One ticket key: its 16-byte name (sent in every ticket, not secret), its 32-byte AES-256-GCM secret
//! (zeroized on drop, never logged, not even by `Debug`), and its validity window.

use std::fmt;
use std::time::SystemTime;

use zeroize::Zeroizing;

/// Length of a key name, the first bytes of every ticket (as in nginx's key files).
pub const NAME_LEN: usize = 16;
/// Length of the AES-256-GCM secret.
pub const SECRET_LEN: usize = 32;

/// A key's public name. Shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyName(pub [u8; NAME_LEN]);

impl KeyName {
    /// The name as 32 lowercase hex digits.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyName({})", self.hex())
    }
}

/// Where a key came from, which decides how its window is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A portcullis key file with an explicit window.
    Windowed,
    /// An nginx-style raw file (48 or 80 bytes) or a per-process random key: no window. `primary` keys encrypt
    /// when no windowed key can; the others only decrypt.
    Unwindowed {
        /// The first nginx file in name order, or the per-process key.
        primary: bool,
    },
}

/// One ticket key. Cloning copies the secret into another zeroized buffer.
#[derive(Clone)]
pub struct TicketKey {
    /// Public name, the first 16 bytes of every ticket sealed with this key.
    pub name: KeyName,
    secret: Zeroizing<[u8; SECRET_LEN]>,
    /// The AES-256-GCM key expanded once, when the key is loaded or rotated in (expanding it per seal or open
    /// cost 0.9 µs per resumption: BENCHMARKS.md). `None` only if ring refuses a 32-byte key, which it does not.
    /// ring does not zeroize its round keys on drop: a key past its window leaves them in freed memory, as
    /// rustls' own traffic keys do.
    aead: Option<ring::aead::LessSafeKey>,
    /// Windowed or not.
    pub kind: KeyKind,
    /// Start of the encrypt window (windowed keys). A node encrypts with the newest key whose window began.
    pub encrypt_from: Option<SystemTime>,
    /// End of the decrypt window (windowed keys): after it, tickets sealed with the key are refused and the
    /// key is erased from memory.
    pub decrypt_until: Option<SystemTime>,
    /// When the key came into use, for the key-age histogram: `encrypt_from`, else the file's mtime, else the
    /// time it was generated.
    pub since: SystemTime,
    /// File name in the key directory (empty for a per-process key). Shown in logs and `keys list`.
    pub file: String,
}

impl TicketKey {
    /// A key from its parts. The secret is moved in and zeroized when the key is dropped.
    pub fn new(
        name: KeyName,
        secret: Zeroizing<[u8; SECRET_LEN]>,
        kind: KeyKind,
        window: (Option<SystemTime>, Option<SystemTime>),
        since: SystemTime,
        file: String,
    ) -> Self {
        let aead = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &secret[..])
            .ok()
            .map(ring::aead::LessSafeKey::new);
        Self {
            name,
            secret,
            aead,
            kind,
            encrypt_from: window.0,
            decrypt_until: window.1,
            since,
            file,
        }
    }

    /// A fresh random key with no window (the `per-process` mode, and tests).
    pub fn random(primary: bool) -> Result<Self, ring::error::Unspecified> {
        use ring::rand::SecureRandom;
        let rng = ring::rand::SystemRandom::new();
        let mut name = [0u8; NAME_LEN];
        rng.fill(&mut name)?;
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        rng.fill(&mut secret[..])?;
        Ok(Self::new(
            KeyName(name),
            secret,
            KeyKind::Unwindowed { primary },
            (None, None),
            SystemTime::now(),
            String::new(),
        ))
    }

    /// The AES-256-GCM key (expanded when the key was built).
    pub(crate) fn aead(&self) -> Option<&ring::aead::LessSafeKey> {
        self.aead.as_ref()
    }

    /// The secret, for writing a key file. Never log it.
    pub(crate) fn secret(&self) -> &[u8; SECRET_LEN] {
        &self.secret
    }

    /// Whether tickets sealed with this key may still be opened at `now`.
    pub fn decrypts_at(&self, now: SystemTime) -> bool {
        self.decrypt_until.is_none_or(|until| now < until)
    }

    /// Whether this key's encrypt window has begun (and it still decrypts) at `now`.
    pub fn may_encrypt_at(&self, now: SystemTime) -> bool {
        match self.kind {
            KeyKind::Windowed => {
                self.encrypt_from.is_some_and(|from| from <= now) && self.decrypts_at(now)
            }
            KeyKind::Unwindowed { primary } => primary,
        }
    }
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKey")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Decodes exactly `N` bytes of hex, or `None`.
pub fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        let (hi, lo) = (digit(*pair.first()?)?, digit(*pair.get(1)?)?);
        *o = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_bad_input() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&bytes), "0001abff");
        assert_eq!(unhex::<4>("0001abff"), Some(bytes));
        assert_eq!(unhex::<4>("0001ABFF"), Some(bytes));
        assert_eq!(unhex::<4>("0001abf"), None);
        assert_eq!(unhex::<4>("0001abfg"), None);
        assert_eq!(unhex::<2>("é1"), None);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = TicketKey::random(true).expect("rng");
        let secret_hex = hex(key.secret());
        let shown = format!("{key:?}");
        assert!(!shown.contains(&secret_hex), "{shown}");
    }
}
