//! AES-GCM nonces for sealing tickets and stored sessions, without a system call per seal.
//!
//! A nonce is `prefix (64 bits) || counter (32 bits)`: each thread draws a random prefix from the system RNG
//! once (one `getrandom`), then counts; when its counter would wrap it draws a new prefix. AES-GCM needs a
//! nonce never to repeat under one key (NIST SP 800-38D §8: a repeat reveals the XOR of two plaintexts and the
//! GHASH key). Why that holds here:
//! - Within a thread, a (prefix, counter) pair is used once: the counter only increases, and a new prefix is
//!   drawn before it would come back to a value it had. Seals on one thread under different keys share the
//!   sequence, which only makes each key's nonces a subset of a sequence without repeats.
//! - Between threads, processes and instances of the fleet (which share the keys), nonces can only meet when two
//!   prefixes are equal: with P prefixes drawn over a key's life that is at most P²/2^65, e.g. 10^-11 for ten
//!   thousand thread starts. Fully random 96-bit nonces risk q²/2^97 over q seals, which is worse as soon as a
//!   key seals more than P·2^16 values, and NIST caps random nonces at 2^32 seals per key; here the cap is per
//!   prefix, and a daily key rotation stays far below both.
//! - A forked child would share its parent's thread state: the daemon does not fork after it starts sealing.

use std::cell::Cell;

use ring::aead::NONCE_LEN;
use ring::rand::SecureRandom;

thread_local! {
    /// This thread's prefix and next counter value; `None` until the first seal (or after the counter ran out).
    static SEQUENCE: Cell<Option<(u64, u32)>> = const { Cell::new(None) };
}

/// The next nonce of this thread. `None` only when a prefix is needed and `rng` fails.
pub fn next(rng: &dyn SecureRandom) -> Option<[u8; NONCE_LEN]> {
    SEQUENCE.with(|seq| {
        let (prefix, counter) = match seq.get() {
            Some(state) => state,
            None => (draw_prefix(rng)?, 0),
        };
        // The last value of the counter is never used, so "ran out" needs no flag of its own.
        seq.set(
            counter
                .checked_add(1)
                .filter(|&c| c < u32::MAX)
                .map(|c| (prefix, c)),
        );
        Some(compose(prefix, counter))
    })
}

fn draw_prefix(rng: &dyn SecureRandom) -> Option<u64> {
    let mut prefix = [0u8; 8];
    rng.fill(&mut prefix).ok()?;
    Some(u64::from_be_bytes(prefix))
}

fn compose(prefix: u64, counter: u32) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    let (p, c) = nonce.split_at_mut(8);
    p.copy_from_slice(&prefix.to_be_bytes());
    c.copy_from_slice(&counter.to_be_bytes());
    nonce
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn unique_within_a_thread_and_across_threads() {
        let rng = ring::rand::SystemRandom::new();
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(next(&rng).expect("nonce")), "a nonce repeated");
        }
        let others: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    let rng = ring::rand::SystemRandom::new();
                    (0..1_000)
                        .map(|_| next(&rng).expect("nonce"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for t in others {
            for n in t.join().expect("thread") {
                assert!(seen.insert(n), "a nonce repeated across threads");
            }
        }
    }

    #[test]
    fn a_new_prefix_before_the_counter_wraps() {
        let rng = ring::rand::SystemRandom::new();
        let first = next(&rng).expect("nonce");
        SEQUENCE.with(|s| s.set(Some((7, u32::MAX - 2))));
        assert_eq!(next(&rng), Some(compose(7, u32::MAX - 2)));
        assert_eq!(next(&rng), Some(compose(7, u32::MAX - 1)));
        // u32::MAX - 1 was the last: the next nonce starts a fresh prefix at counter 0.
        let fresh = next(&rng).expect("nonce");
        assert_ne!(fresh.get(..8), Some(&7u64.to_be_bytes()[..]));
        assert_eq!(fresh.get(8..), Some(&[0u8; 4][..]));
        assert_ne!(fresh, first);
    }
}
