//! The parser as the loaded BPF program runs it, against the host build of the same code, on thousands of inputs:
//! prefixes of every captured ClientHello, the table of ClientHellos spanning records (`hello_fixtures::split_cases`)
//! and their prefixes, the captures re-framed in records at random boundaries (some with a ChangeCipherSpec
//! inserted), and seeded random mutants of all these (`hello_fixtures::mutate`, the parser's own mutator), each the
//! first segment of a flow of its own, with a fingerprint blocked so that the hashing steps and the shape index run too.
//!
//! The host's `Err(reason)` must be a drop counted under `reason`, a fingerprint the host computes that is blocked a
//! drop as a blocked fingerprint, anything else a pass. This is where the two builds of the parser could part ways
//! unseen by the fixture tables: the loads, masks and bounds only the BPF side has, its verifier-shaped steps, the
//! shape index in front of the hashing.
//!
//! Privileged like `test_run`, whose loader and runner it uses.

use portcullis_abi::{
    client_hello::{ClientHelloSummary, Malformed, RECORD_HEADER_LEN, parse},
    hello_fixtures::{CAPTURED, Rng, handshake_of, in_records, mutate, record, split_cases},
    verdict::Verdict,
};

use super::hello::{
    Conn, MSS, blocklist, config, curl_hello, hello, malformed_counters, set_index,
};
use super::run::{XDP_DROP, XDP_PASS, load, skip_reason};

/// Random mutants judged, beside the prefixes.
const MUTANTS: usize = 3000;

/// [`mutate`], with the edits biased to the start one time in two, where the lengths and headers are: the uniform
/// edits of a 1.4 KB post-quantum ClientHello land mostly in its key.
fn mutant(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    if rng.below(2) == 0 {
        let head = bytes.len().min(16 << rng.below(6));
        let mut out = mutate(rng, &bytes[..head]);
        out.extend_from_slice(&bytes[head..]);
        out
    } else {
        mutate(rng, bytes)
    }
}

/// What the program must do with a first segment the host parses to `parsed`, while `blocked` is blocked.
fn expected(parsed: &Result<ClientHelloSummary, Malformed>, blocked: u64) -> (u32, Verdict) {
    match parsed {
        Err(_) => (XDP_DROP, Verdict::DropMalformedHello),
        Ok(summary) => match summary.fingerprint {
            Some(f) if f.ordered == blocked || f.unordered == blocked => {
                (XDP_DROP, Verdict::DropBlockedFingerprint)
            }
            _ => (XDP_PASS, Verdict::PassClientHello),
        },
    }
}

#[test]
fn the_program_judges_as_the_host_parser_does() {
    if skip_reason("the_program_judges_as_the_host_parser_does").is_some() {
        return;
    }
    let (mut ebpf, counters) = load(config());
    let blocked = parse(curl_hello())
        .expect("curl parses")
        .fingerprint
        .expect("complete")
        .unordered;
    blocklist(&mut ebpf).insert(blocked, 1, 0).expect("block");
    set_index(&mut ebpf, 1, &[blocked], false);

    let segments: Vec<&[u8]> = CAPTURED
        .iter()
        .map(|(_, bytes, _)| bytes.get(..MSS).unwrap_or(bytes))
        .collect();
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for segment in &segments {
        // Every seventh prefix, and the whole segment: cut inside every field of the headers and many extensions.
        inputs.extend((1..segment.len()).step_by(7).map(|n| segment[..n].to_vec()));
        inputs.push(segment.to_vec());
    }
    // ClientHellos spanning records: the table's rows and their prefixes, and the captures re-framed at a random
    // boundary (in two or three records, a ChangeCipherSpec after them one time in four), to be mutated below too.
    for case in split_cases() {
        let segment = case.bytes.get(..MSS).unwrap_or(&case.bytes);
        inputs.extend((1..segment.len()).step_by(7).map(|n| segment[..n].to_vec()));
        inputs.push(segment.to_vec());
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let reframed: Vec<Vec<u8>> = (0..200)
        .map(|_| {
            let handshake = handshake_of(CAPTURED[rng.below(CAPTURED.len())].1);
            let first = 1 + rng.below(handshake.len() - 1);
            let second = 1 + rng.below(handshake.len());
            let mut bytes = in_records(handshake, &[first, second]);
            if rng.below(4) == 0 {
                // Somewhere after the first record: before the ClientHello's end, a malformation.
                let at = (RECORD_HEADER_LEN + first..=bytes.len())
                    .nth(rng.below(3))
                    .unwrap_or(bytes.len());
                let ccs = record(20, &[1]);
                bytes.splice(at..at, ccs);
            }
            bytes.truncate(MSS);
            bytes
        })
        .collect();
    inputs.extend(reframed.iter().cloned());
    let segments: Vec<&[u8]> = segments
        .into_iter()
        .chain(reframed.iter().map(Vec::as_slice))
        .collect();
    for _ in 0..MUTANTS {
        let segment = segments[rng.below(segments.len())];
        // One segment's worth (an insertion may have grown it), and never empty: a segment without payload is not
        // a first data segment.
        let mut input = mutant(&mut rng, segment);
        input.truncate(MSS);
        if !input.is_empty() {
            inputs.push(input);
        }
    }

    let (mut malformed, mut blocked_seen, mut passed, mut fragmented) = (0, 0, 0, 0);
    let mut reasons = std::collections::BTreeSet::new();
    for (i, input) in inputs.iter().enumerate() {
        let parsed = parse(input);
        let want = expected(&parsed, blocked);
        let before = parsed.is_err().then(|| malformed_counters(&ebpf));
        fragmented += usize::from(matches!(&parsed, Ok(s) if s.fragmented));
        // A flow of its own per input: 100 sources of 60,000 ports.
        let conn = Conn::v4(100 + (i / 60_000) as u8, 1024 + (i % 60_000) as u16);
        let got = hello(&mut ebpf, &counters, conn, input);
        assert_eq!(
            got,
            want,
            "input {i} ({} bytes) judged unlike the host parse {parsed:?}: {input:02x?}",
            input.len()
        );
        match (parsed, before) {
            (Err(reason), Some(before)) => {
                let after = malformed_counters(&ebpf);
                let counted: Vec<_> = Malformed::ALL
                    .iter()
                    .zip(after.iter().zip(&before))
                    .filter(|(_, (a, b))| a != b)
                    .map(|(r, _)| *r)
                    .collect();
                assert_eq!(counted, [reason], "input {i}: counted under {counted:?}");
                malformed += 1;
                reasons.insert(reason.name());
            }
            _ if want.1 == Verdict::DropBlockedFingerprint => blocked_seen += 1,
            _ => passed += 1,
        }
    }
    // The mix must exercise every outcome and many reasons, or the comparison proves little.
    assert!(
        malformed > 500
            && passed > 500
            && blocked_seen >= 1
            && reasons.len() >= 15
            && fragmented > 200,
        "{malformed} malformed ({reasons:?}), {passed} passed ({fragmented} spanning records), {blocked_seen} blocked"
    );
}
