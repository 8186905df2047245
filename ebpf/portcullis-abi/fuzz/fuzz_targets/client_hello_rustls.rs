//! Differential fuzzing with rustls as the oracle: every ClientHello that rustls' server-side `Acceptor` takes
//! as complete and valid must not be called malformed by `client_hello::parse` (the parser the XDP program runs),
//! or the XDP guard would drop handshakes the daemon itself would serve.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_abi::client_hello::{Malformed, parse};

/// Where the parser is stricter than rustls' Acceptor by design (the same list as the differential test in
/// `tests/client_hello.rs`): Acceptor takes any legacy_version (RFC 8446 §4.1.2 fixes it at 0x0303) and checks
/// the PSK/early-data pairing rules (§4.2.9, §4.2.10) only later in the handshake, if at all.
const STRICTER: &[Malformed] = &[
    Malformed::BadLegacyVersion,
    Malformed::PskWithoutKeyExchangeModes,
    Malformed::EarlyDataWithoutPsk,
];

fuzz_target!(|data: &[u8]| {
    if !rustls_accepts(data) {
        return;
    }
    if let Err(reason) = parse(data) {
        assert!(
            STRICTER.contains(&reason),
            "rustls accepts this ClientHello, the parser calls it malformed: {reason:?}"
        );
    }
});

/// Whether rustls' Acceptor takes `bytes` as a complete, valid ClientHello. No crypto provider is needed: the
/// Acceptor only parses.
fn rustls_accepts(bytes: &[u8]) -> bool {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut reader = bytes;
    while !reader.is_empty() {
        match acceptor.read_tls(&mut reader) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        // rustls reads at most 4 KiB at a time and takes no more until it has processed them: a ClientHello
        // spanning records can be longer.
        if !reader.is_empty() {
            match acceptor.accept() {
                Ok(None) => {}
                Ok(Some(_)) => return true,
                Err(_) => return false,
            }
        }
    }
    matches!(acceptor.accept(), Ok(Some(_)))
}
