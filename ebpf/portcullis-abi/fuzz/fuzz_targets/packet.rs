//! Fuzzes the XDP packet classifier (`packet::classify`, `packet::source_and_port`): never a panic or an
//! out-of-bounds read, and the classification agrees with itself: non-TCP verdicts carry no TCP fields, a
//! listener verdict names a configured port, and `source_and_port` reads the same source and port again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_abi::packet::{classify, source_and_port};
use portcullis_abi::verdict::Verdict;
use portcullis_abi::xdp_config::XdpConfig;

fuzz_target!(|data: &[u8]| {
    // The first two bytes pick the listener port, the rest is the frame.
    let Some((port, frame)) = data.split_first_chunk::<2>() else {
        return;
    };
    let port = u16::from_be_bytes(*port);
    // Port 0 is never a listener (unused config slots are 0, and the daemon configures bound ports).
    if port == 0 {
        return;
    }
    let Ok(config) = XdpConfig::new(&[port]) else {
        return;
    };
    let c = classify(frame, &config);
    match c.verdict {
        Verdict::PassListenerTcp => {
            assert_eq!(c.dst_port, port, "a listener verdict for another port");
            assert!(usize::from(c.payload_offset) <= frame.len().max(usize::from(u16::MAX)));
            assert_eq!(
                source_and_port(frame),
                Some((c.src, c.dst_port)),
                "the second look disagrees with the classification"
            );
        }
        Verdict::PassOtherPort => assert_ne!(c.dst_port, port),
        _ => {
            assert_eq!((c.dst_port, c.tcp_flags, c.src_port, c.seq), (0, 0, 0, 0));
            assert_eq!((c.payload_offset, c.payload_len), (0, 0));
            // Any frame, even a non-TCP one: only bounded reads.
            let _ = source_and_port(frame);
        }
    }
});
