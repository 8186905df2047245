//! The first PSK identity of a TLS 1.3 ClientHello and its `obfuscated_ticket_age` (RFC 8446 §4.2.11), read
//! from the raw record: rustls' `ClientHello` does not expose them, and the early-data step needs them before
//! the expensive step. Bounds-checked; anything unexpected is `None` (then no session is fetched).

/// Extension type of pre_shared_key.
const PRE_SHARED_KEY: u16 = 41;

/// The first offered PSK identity and its obfuscated age.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PskOffer {
    /// The identity bytes (for our stateful tickets: the session ID).
    pub identity: Vec<u8>,
    /// `obfuscated_ticket_age`: the client's ticket age in ms plus the ticket's `age_add`, mod 2^32.
    pub obfuscated_age: u32,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
    }
    fn u24(&mut self) -> Option<usize> {
        let b = self.take(3)?;
        Some(
            usize::from(*b.first()?) << 16 | usize::from(*b.get(1)?) << 8 | usize::from(*b.get(2)?),
        )
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// Parses `raw` (the first TLS record, a ClientHello within it) for the first PSK identity.
pub fn first_psk(raw: &[u8]) -> Option<PskOffer> {
    let mut record = Reader(raw);
    if record.u8()? != 22 {
        return None;
    }
    record.take(2)?;
    let body = record.vec16()?;
    let mut hs = Reader(body);
    if hs.u8()? != 1 {
        return None;
    }
    let len = hs.u24()?;
    let mut hello = Reader(hs.take(len)?);
    hello.take(2 + 32)?;
    hello.vec8()?;
    hello.vec16()?;
    hello.vec8()?;
    let mut exts = Reader(hello.vec16()?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let data = exts.vec16()?;
        if ty != PRE_SHARED_KEY {
            continue;
        }
        let mut psk = Reader(data);
        let mut ids = Reader(psk.vec16()?);
        let identity = ids.vec16()?.to_vec();
        let obfuscated_age = ids.u32()?;
        return Some(PskOffer {
            identity,
            obfuscated_age,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::inspect::tests::fixture;

    #[test]
    fn reads_the_identity_of_real_hellos_and_never_panics() {
        for name in ["openssl_tls13_psk_early_data.bin", "rustls_tls13_psk.bin"] {
            let hello = fixture(name);
            let psk = first_psk(&hello).unwrap_or_else(|| panic!("{name}: PSK offer"));
            assert!(!psk.identity.is_empty(), "{name}");
            for cut in 0..hello.len() {
                let _ = first_psk(&hello[..cut]);
            }
        }
        assert_eq!(first_psk(&fixture("curl_sni.bin")), None);
        assert_eq!(first_psk(b"GET / HTTP/1.1\r\n"), None);
    }
}
