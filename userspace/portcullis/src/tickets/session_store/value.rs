//! What we read from rustls' encoded TLS 1.3 session (`ServerSessionValue`, rustls 0.23 `msgs/persist.rs`)
//! without decoding it: the version near the front and, at the very end, the issue time and `age_add`.
//!
//! The encoding ends with `creation_time_sec (u64 BE) || age_obfuscation_offset (u32 BE)`; the unit test
//! `stale_ticket_resumes_without_early_data` (`handshake/early_data.rs`) checks it on a session rustls issued.

/// Bytes of the fixed tail: issue time (u64) and age_add (u32).
const TAIL_LEN: usize = 12;

/// The TLS version of an encoded session: `0x0304` for TLS 1.3. `None` when too short to say.
pub fn version(value: &[u8]) -> Option<u16> {
    let (&has_sni, rest) = value.split_first()?;
    let rest = match has_sni {
        1 => {
            let (&len, rest) = rest.split_first()?;
            rest.get(usize::from(len)..)?
        }
        _ => rest,
    };
    let v = rest.get(..2)?;
    Some(u16::from_be_bytes([*v.first()?, *v.get(1)?]))
}

/// The session's issue time (Unix seconds) and its `ticket_age_add`.
pub fn issued_and_age_add(value: &[u8]) -> Option<(u64, u32)> {
    let tail = value.get(value.len().checked_sub(TAIL_LEN)?..)?;
    let (time, add) = tail.split_at_checked(8)?;
    Some((
        u64::from_be_bytes(time.try_into().ok()?),
        u32::from_be_bytes(add.try_into().ok()?),
    ))
}

/// How far the client's ticket age (from its `obfuscated_ticket_age`) is from ours (now minus the issue
/// time), RFC 8446 §8.3. `None` when the session is too short to carry the tail.
pub fn age_skew_ms(value: &[u8], obfuscated_ticket_age: u32, now_unix_ms: u64) -> Option<u64> {
    let (issued, age_add) = issued_and_age_add(value)?;
    let client_ms = u64::from(obfuscated_ticket_age.wrapping_sub(age_add));
    let server_ms = now_unix_ms.saturating_sub(issued.saturating_mul(1000));
    Some(client_ms.abs_diff(server_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_version_and_tail_and_never_panics() {
        let mut v = vec![1, 3, b'a', b'.', b'b', 0x03, 0x04, 9, 9];
        v.extend_from_slice(&1_000u64.to_be_bytes());
        v.extend_from_slice(&7u32.to_be_bytes());
        assert_eq!(version(&v), Some(0x0304));
        assert_eq!(issued_and_age_add(&v), Some((1_000, 7)));
        // Client says 2 s, we say 2.5 s: 500 ms apart.
        assert_eq!(
            age_skew_ms(&v, 2_000u32.wrapping_add(7), 1_002_500),
            Some(500)
        );
        assert_eq!(version(&[0, 0x03, 0x03]), Some(0x0303));
        for cut in 0..v.len() {
            let _ = version(&v[..cut]);
            let _ = age_skew_ms(&v[..cut], 0, 0);
        }
        assert_eq!(issued_and_age_add(&v[..11]), None);
    }
}
