//! Session-cache cost at 256, 4,096 and 65,536 entries: our sharded LRU (`tickets::cache::SessionCache`) beside
//! rustls' `ServerSessionMemoryCache`. Run by `cargo xtask bench fleet`; prints one JSON object per line:
//! `{"impl":..,"entries":..,"take_ns":..,"put_ns":..}` (ns per operation on a full cache, single thread).

use std::time::Instant;

use portcullis::tickets::cache::SessionCache;
use portcullis::tickets::metrics::CacheCounters;
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};

fn key(i: u64) -> Vec<u8> {
    let mut k = vec![0u8; 32];
    k[..8].copy_from_slice(&i.to_le_bytes());
    k[8..16].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    k
}

/// Fills `cache` with `n` sessions, then alternates take(a present key) and put(a new key), so it stays full.
fn measure(cache: &dyn StoresServerSessions, n: u64, rounds: u64) -> (f64, f64) {
    let value = vec![0xabu8; 120];
    for i in 0..n {
        cache.put(key(i), value.clone());
    }
    let (mut take_ns, mut put_ns) = (0u128, 0u128);
    for r in 0..rounds {
        // Take then put keeps the cache full without evictions, so key(n/2 + r) is always present: an original
        // key while r < n/2, else one put n/2 rounds ago (rustls' take cost grows with its position).
        let victim = key(n / 2 + r);
        let t = Instant::now();
        let _ = std::hint::black_box(cache.take(&victim));
        take_ns += t.elapsed().as_nanos();
        let t = Instant::now();
        cache.put(key(n + r), value.clone());
        put_ns += t.elapsed().as_nanos();
    }
    let per = |ns: u128| ns as f64 / rounds as f64;
    (per(take_ns), per(put_ns))
}

fn main() {
    for n in [256u64, 4096, 65536] {
        let rounds = if n >= 65536 { 300 } else { 3000 };
        let ours = SessionCache::new(n as usize, CacheCounters::default());
        let (take, put) = measure(&ours, n, rounds);
        println!(
            "{{\"impl\":\"portcullis\",\"entries\":{n},\"take_ns\":{take:.0},\"put_ns\":{put:.0}}}"
        );
        let theirs = ServerSessionMemoryCache::new(n as usize);
        let (take, put) = measure(&*theirs, n, rounds);
        println!(
            "{{\"impl\":\"rustls\",\"entries\":{n},\"take_ns\":{take:.0},\"put_ns\":{put:.0}}}"
        );
    }
}
