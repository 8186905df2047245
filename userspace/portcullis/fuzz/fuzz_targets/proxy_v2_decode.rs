//! Fuzzes the PROXY v2 decoder: never a panic; a decoded header lies within the input; and what `encode`
//! writes decodes to the same addresses and TLVs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::proxy::proxy_v2::{ProxyInfo, decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(d)) = decode(data) {
        assert!(d.len <= data.len(), "header longer than the input");
        // A prefix that ends before the header is incomplete or invalid, never a different header.
        if let Ok(Some(again)) = decode(data.get(..d.len).unwrap_or(data)) {
            assert_eq!(again.len, d.len);
        }
    }
    // Round trip: addresses and TLV values picked by the input.
    let Some((head, rest)) = data.split_first_chunk::<12>() else {
        return;
    };
    let client = std::net::SocketAddr::from((
        [head[0], head[1], head[2], head[3]],
        u16::from_be_bytes([head[4], head[5]]),
    ));
    let local = std::net::SocketAddr::from((
        [head[6], head[7], head[8], head[9]],
        u16::from_be_bytes([head[10], head[11]]),
    ));
    let split = rest.len() / 2;
    let authority = std::str::from_utf8(rest.get(..split).unwrap_or_default()).ok();
    let alpn = rest.get(split..).filter(|a| !a.is_empty() && a.len() < 256);
    let header = encode(
        client,
        local,
        &ProxyInfo {
            authority,
            alpn,
            tls_version: Some("TLSv1.3"),
        },
    );
    let d = decode(&header)
        .expect("our own header decodes")
        .expect("our own header is complete");
    assert_eq!((d.client, d.local, d.len), (client, local, header.len()));
});
