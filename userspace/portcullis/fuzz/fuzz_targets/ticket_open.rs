//! Fuzzes `tickets::format::open` on client-controlled ticket bytes: never a panic; a forged ticket never
//! opens; and a ticket sealed from the input opens to the same bytes.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use portcullis::tickets::format::{open, seal};
use portcullis::tickets::key::{KeyKind, KeyName, TicketKey};
use portcullis::tickets::keyset::KeySet;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn keys() -> (TicketKey, KeySet) {
    let key = |n: u8| {
        TicketKey::new(
            KeyName([n; 16]),
            zeroize::Zeroizing::new([n; 32]),
            KeyKind::Unwindowed { primary: n == 1 },
            (None, None),
            now() - Duration::from_secs(60),
            String::new(),
        )
    };
    let set = KeySet::new(vec![key(1), key(2)], now()).expect("a valid key set");
    (key(1), set)
}

fuzz_target!(|data: &[u8]| {
    let (key, set) = keys();
    let lifetime = Duration::from_secs(6 * 3600);
    // Arbitrary bytes as a ticket: without the key they cannot carry a valid tag.
    assert!(
        open(&set, data, now(), lifetime).is_err(),
        "a ticket nobody sealed opened"
    );
    // The input as session state: sealed, it opens to itself.
    let sealed = seal(&key, data, now(), &ring::rand::SystemRandom::new()).expect("seal");
    let opened = open(&set, &sealed, now(), lifetime).expect("a sealed ticket opens");
    assert_eq!(opened.plain, data);
});
