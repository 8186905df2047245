//! Fuzzes `client_hello::parse`: it must never panic, and its verdicts must agree with the
//! contract in its docs (truncation is never malformed; a malformed prefix stays malformed), and a parse
//! without the fingerprint (what XDP runs while none is blocked) must say the same but for the fingerprint.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_abi::client_hello::{
    ClientHelloSummary, HANDSHAKE_HEADER_LEN, RECORD_HEADER_LEN, Workspace, parse, parse_in,
};

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
    let mut workspace = Workspace::NEW;
    workspace.want_fingerprint(false);
    assert_eq!(
        parse_in(data, &mut workspace),
        verdict.map(|s| ClientHelloSummary {
            fingerprint: None,
            ..s
        }),
        "a parse without the fingerprint must differ only in the fingerprint"
    );
    if let Ok(summary) = verdict {
        assert_eq!(summary.complete, summary.fingerprint.is_some());
        if summary.complete {
            let end = RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + summary.handshake_len as usize;
            assert!(end <= data.len());
            assert!(summary.sni.is_none() || summary.sni(data).is_some());
        }
    }
});
