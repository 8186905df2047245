//! Fuzzes `client_hello::parse`: it must never panic, and its verdicts must agree with the
//! contract in its docs (truncation is never malformed; a malformed prefix stays malformed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_abi::client_hello::{HANDSHAKE_HEADER_LEN, RECORD_HEADER_LEN, parse};

fuzz_target!(|data: &[u8]| {
    let verdict = parse(data);
    // Cut the input in two at a point the input itself picks, and compare the verdicts.
    let cut = data
        .first()
        .map_or(0, |b| usize::from(*b) * data.len() / 256);
    let prefix = parse(data.get(..cut).unwrap_or(data));
    match (&prefix, &verdict) {
        (Err(early), whole) => assert_eq!(
            whole,
            &Err(*early),
            "a malformed prefix must stay malformed"
        ),
        (Ok(p), Ok(w)) => assert!(!p.complete || p == w, "a complete prefix must not change"),
        (Ok(p), Err(_)) => assert!(!p.complete, "a complete ClientHello cannot turn malformed"),
    }
    if let Ok(summary) = verdict {
        assert_eq!(summary.complete, summary.fingerprint.is_some());
        if summary.complete {
            let end = RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + summary.handshake_len as usize;
            assert!(end <= data.len());
            assert!(summary.sni.is_none() || summary.sni(data).is_some());
        }
    }
});
