//! The embedded store (`kind = "local"`): sharded, bounded, single use, entries expiring after the ticket
//! lifetime. It protects **this instance only**: another instance never sees its sessions.
//!
//! A taken session leaves a tombstone until it would have expired, so a second use is recognised as a replay
//! rather than an unknown ticket. Eviction is oldest-first per shard, O(1) (insertion order in a queue).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::Lookup;

const SHARDS: usize = 16;

/// The local store.
#[derive(Debug)]
pub struct LocalStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    per_shard: usize,
    ttl: Duration,
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<Vec<u8>, Entry>,
    order: VecDeque<Vec<u8>>,
}

#[derive(Debug)]
struct Entry {
    /// `None` once taken (a tombstone).
    session: Option<Zeroizing<Vec<u8>>>,
    expires: Instant,
}

impl LocalStore {
    /// At most `capacity` sessions (and tombstones), each kept for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            ttl,
        }
    }

    fn shard(&self, id: &[u8]) -> std::sync::MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(id) as usize) % SHARDS;
        let shard = self.shards.get(i).or_else(|| self.shards.first());
        match shard {
            Some(m) => m.lock().unwrap_or_else(|e| e.into_inner()),
            None => unreachable!("SHARDS > 0"),
        }
    }

    /// Stores `session` under `id` at `now`, evicting the oldest entry of a full shard.
    pub fn put(&self, id: Vec<u8>, session: Vec<u8>, now: Instant) {
        let mut shard = self.shard(&id);
        while shard.map.len() >= self.per_shard {
            let Some(old) = shard.order.pop_front() else {
                break;
            };
            shard.map.remove(&old);
        }
        let entry = Entry {
            session: Some(Zeroizing::new(session)),
            expires: now + self.ttl,
        };
        if shard.map.insert(id.clone(), entry).is_none() {
            shard.order.push_back(id);
        }
    }

    /// Takes the session under `id` at `now`: the first call gets it, later ones see the tombstone.
    pub fn take(&self, id: &[u8], now: Instant) -> Lookup {
        let mut shard = self.shard(id);
        match shard.map.get_mut(id) {
            Some(e) if e.expires <= now => Lookup::Miss,
            Some(e) => match e.session.take() {
                Some(s) => Lookup::Hit(s),
                None => Lookup::Replay,
            },
            None => Lookup::Miss,
        }
    }

    /// Entries (sessions and tombstones) held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use_ttl_and_bound() {
        let s = LocalStore::new(32, Duration::from_secs(10));
        let t0 = Instant::now();
        s.put(b"a".to_vec(), b"A".to_vec(), t0);
        assert!(matches!(s.take(b"a", t0), Lookup::Hit(v) if v.as_slice() == b"A"));
        assert!(matches!(s.take(b"a", t0), Lookup::Replay));
        assert!(matches!(s.take(b"b", t0), Lookup::Miss));
        s.put(b"c".to_vec(), b"C".to_vec(), t0);
        assert!(matches!(
            s.take(b"c", t0 + Duration::from_secs(10)),
            Lookup::Miss
        ));
        for i in 0..1000u32 {
            s.put(i.to_be_bytes().to_vec(), vec![1], t0);
        }
        assert!(s.len() <= 32, "{}", s.len());
        // The newest survive eviction.
        assert!(matches!(s.take(&999u32.to_be_bytes(), t0), Lookup::Hit(_)));
    }
}
