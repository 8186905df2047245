//! Host tests of the ClientHello parser: real captured ClientHellos (see `fixtures/README.md`),
//! every prefix of them, one crafted input per [`Malformed`] reason, GREASE and extension-order
//! handling of the fingerprint, and bounded random mutation checked against rustls.

extern crate alloc;

#[path = "../src/hello_fixtures.rs"]
mod hello_fixtures;

use hello_fixtures::{
    Hello, Rng, alpn, key_share, malformed_cases, mutate, psk, sni, split_cases, u16_list, u16s,
    vec16, versions,
};
use portcullis_abi::client_hello;
use portcullis_abi::client_hello::{
    ClientHelloSummary, HANDSHAKE_HEADER_LEN, MAX_EXTENSIONS, Malformed, RECORD_HEADER_LEN, Stage,
    Workspace,
    fingerprint::{shape, shape_of},
    group, parse,
};

/// One captured ClientHello and what the parser must say about it.
struct Fixture {
    name: &'static str,
    bytes: &'static [u8],
    sni: Option<&'static str>,
    tls13: bool,
    psk: bool,
    early_data: bool,
    tls12_ticket: bool,
    /// Whether X25519MLKEM768 is among the key shares.
    post_quantum: bool,
    /// Whether the capture holds bytes after the ClientHello's record (0-RTT records).
    trailing: bool,
}

/// A fixture entry with the fields most captures share; `..base(..)` overrides the rest.
const fn base(name: &'static str, bytes: &'static [u8]) -> Fixture {
    Fixture {
        name,
        bytes,
        sni: Some("example.com"),
        tls13: true,
        psk: false,
        early_data: false,
        tls12_ticket: false,
        post_quantum: false,
        trailing: false,
    }
}

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("../fixtures/client_hello/", $name, ".bin"))
    };
}

const FIXTURES: &[Fixture] = &[
    Fixture {
        sni: None,
        ..base("curl_no_sni", fixture!("curl_no_sni"))
    },
    base("curl_sni", fixture!("curl_sni")),
    Fixture {
        tls13: false,
        ..base("openssl_tls12", fixture!("openssl_tls12"))
    },
    Fixture {
        tls13: false,
        tls12_ticket: true,
        ..base("openssl_tls12_ticket", fixture!("openssl_tls12_ticket"))
    },
    base("openssl_tls13", fixture!("openssl_tls13")),
    Fixture {
        psk: true,
        early_data: true,
        trailing: true,
        ..base(
            "openssl_tls13_psk_early_data",
            fixture!("openssl_tls13_psk_early_data"),
        )
    },
    base("python_default", fixture!("python_default")),
    Fixture {
        tls13: false,
        tls12_ticket: true,
        ..base("rustls_tls12_ticket", fixture!("rustls_tls12_ticket"))
    },
    Fixture {
        psk: true,
        ..base("rustls_tls13_psk", fixture!("rustls_tls13_psk"))
    },
    Fixture {
        psk: true,
        early_data: true,
        trailing: true,
        ..base(
            "rustls_tls13_psk_early_data",
            fixture!("rustls_tls13_psk_early_data"),
        )
    },
    base("rustls_x25519", fixture!("rustls_x25519")),
    Fixture {
        post_quantum: true,
        ..base("rustls_x25519mlkem768", fixture!("rustls_x25519mlkem768"))
    },
];

/// Bytes from the start of the input to the end of the ClientHello, for a complete summary.
fn hello_end(summary: &ClientHelloSummary) -> usize {
    RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + summary.handshake_len as usize
}

#[test]
fn every_fixture_parses_to_its_expected_summary() {
    for f in FIXTURES {
        let s = parse(f.bytes).unwrap_or_else(|reason| panic!("{}: malformed: {reason}", f.name));
        assert!(
            s.complete && !s.fragmented && !s.needs_more_bytes(),
            "{}: {s:?}",
            f.name
        );
        assert_eq!(s.stage, Stage::Done, "{}", f.name);
        assert_eq!(s.sni(f.bytes), f.sni.map(str::as_bytes), "{}: SNI", f.name);
        assert_eq!(s.sni_present(), f.sni.is_some(), "{}", f.name);
        assert_eq!(s.offers_tls13, f.tls13, "{}: offers_tls13", f.name);
        assert_eq!(s.offers_psk, f.psk, "{}: offers_psk", f.name);
        assert_eq!(
            s.offers_early_data, f.early_data,
            "{}: offers_early_data",
            f.name
        );
        assert_eq!(s.tls12_ticket, f.tls12_ticket, "{}: tls12_ticket", f.name);
        assert_eq!(
            s.offers_key_share(group::X25519_MLKEM768),
            f.post_quantum,
            "{}: key shares {:x?}",
            f.name,
            s.key_share_groups()
        );
        assert_eq!(
            hello_end(&s) < f.bytes.len(),
            f.trailing,
            "{}: trailing bytes",
            f.name
        );
        assert!(s.fingerprint.is_some(), "{}", f.name);
        assert!(s.signature_algorithms_present, "{}", f.name);
        assert!(
            s.cipher_suite_count > 0 && s.extension_count > 0,
            "{}",
            f.name
        );
        if f.tls13 {
            assert!(
                !s.key_share_groups().is_empty(),
                "{}: TLS 1.3 without key share",
                f.name
            );
        }
    }
}

#[test]
fn post_quantum_fixture_spans_more_than_one_segment_worth_of_bytes() {
    let pq = fixture!("rustls_x25519mlkem768");
    let s = parse(pq).expect("the PQ fixture is well-formed");
    assert!(
        s.handshake_len > 1200,
        "X25519MLKEM768 share should make it >1 KB: {s:?}"
    );
    assert_eq!(s.key_share_groups().first(), Some(&group::X25519_MLKEM768));
    // Cut where a 1200-byte first segment would end: the hybrid group is already reported.
    let cut =
        parse(pq.get(..1200).expect("fixture is longer")).expect("a prefix is never malformed");
    assert!(
        cut.needs_more_bytes() && cut.stage == Stage::Extensions,
        "{cut:?}"
    );
    assert!(
        cut.offers_key_share(group::X25519_MLKEM768) && cut.sni_present(),
        "{cut:?}"
    );
}

#[test]
fn every_prefix_of_every_fixture_is_incomplete_never_malformed() {
    for f in FIXTURES {
        let full = parse(f.bytes).expect("fixture is well-formed");
        let end = hello_end(&full);
        let mut last_stage = Stage::RecordHeader;
        for len in 0..=f.bytes.len() {
            let prefix = f.bytes.get(..len).expect("len is within the fixture");
            let s = parse(prefix)
                .unwrap_or_else(|reason| panic!("{}[..{len}]: malformed: {reason}", f.name));
            assert!(
                s.stage >= last_stage,
                "{}[..{len}]: stage went back",
                f.name
            );
            last_stage = s.stage;
            if len < end {
                assert!(
                    !s.complete && s.needs_more_bytes(),
                    "{}[..{len}]: {s:?}",
                    f.name
                );
                assert_eq!(s.fingerprint, None, "{}[..{len}]", f.name);
            } else {
                // Bytes after the ClientHello (0-RTT records) change nothing.
                assert_eq!(s, full, "{}[..{len}]", f.name);
            }
        }
    }
}

#[test]
fn a_hello_continuing_in_a_second_record_is_fragmented_not_malformed() {
    let bytes = fixture!("rustls_x25519");
    // Re-frame: first record holds the first 100 handshake bytes, the second record the rest.
    let handshake = bytes
        .get(RECORD_HEADER_LEN..)
        .expect("fixture has a header");
    let (first, second) = handshake.split_at(100);
    let mut reframed = Vec::new();
    for part in [first, second] {
        reframed.extend_from_slice(&[22, 3, 1]);
        reframed.extend_from_slice(&(part.len() as u16).to_be_bytes());
        reframed.extend_from_slice(part);
    }
    let s = parse(&reframed).expect("handshake fragmentation is legal (RFC 8446 §5.1)");
    assert!(
        s.fragmented && !s.complete && !s.needs_more_bytes(),
        "{s:?}"
    );
    let short = parse(reframed.get(..50).expect("long enough")).expect("prefix");
    assert!(
        short.needs_more_bytes(),
        "before the record ends, more bytes help: {short:?}"
    );
}

/// The shared table of captures (used by the daemon's XDP test) is this file's table.
#[test]
fn shared_capture_table_matches_the_fixtures() {
    assert_eq!(hello_fixtures::CAPTURED.len(), FIXTURES.len());
    for (name, bytes, resumption) in hello_fixtures::CAPTURED {
        let fixture = FIXTURES
            .iter()
            .find(|f| f.name == *name)
            .unwrap_or_else(|| panic!("{name} is not in FIXTURES"));
        assert_eq!(fixture.bytes, *bytes, "{name}");
        assert_eq!(fixture.psk || fixture.tls12_ticket, *resumption, "{name}");
    }
}

#[test]
fn crafted_valid_hello_parses() {
    let bytes = Hello::valid().encode();
    let s = parse(&bytes).expect("crafted hello is well-formed");
    assert!(s.complete && s.offers_tls13 && s.alpn_present, "{s:?}");
    assert_eq!(s.sni(&bytes), Some(&b"example.com"[..]));
    assert_eq!(
        s.key_share_groups(),
        &[group::X25519],
        "GREASE key share is left out"
    );
    assert_eq!(
        (s.cipher_suite_count, s.extension_count, s.session_id_len),
        (4, 8, 32)
    );

    // RFC 8446 §5.1: legacy_record_version "MUST be ignored"; any 3.x passes.
    for record_version in [0x0300, 0x0304, 0x03ff] {
        let bytes = Hello {
            record_version,
            ..Hello::valid()
        }
        .encode();
        assert!(
            parse(&bytes).is_ok_and(|s| s.complete),
            "record version {record_version:#06x}"
        );
    }

    // RFC 5246 §7.4.1.2: a ClientHello may end after compression_methods.
    let bare = Hello {
        tail: vec![],
        ..Hello::valid()
    }
    .encode();
    let s = parse(&bare).expect("no extensions block is legal");
    assert!(
        s.complete && s.extension_count == 0 && s.fingerprint.is_some(),
        "{s:?}"
    );
}

#[test]
fn each_malformed_reason_has_a_crafted_input_that_yields_exactly_it() {
    let cases = malformed_cases();
    for reason in Malformed::ALL {
        assert!(
            cases.iter().any(|(r, _)| *r == reason),
            "no crafted input for {reason:?}"
        );
    }
    for (reason, bytes) in &cases {
        assert_eq!(
            parse(bytes),
            Err(*reason),
            "crafted {reason:?}: {bytes:02x?}"
        );
    }
}

#[test]
fn more_malformed_shapes_map_to_the_right_reason() {
    use Malformed::*;
    let valid = Hello::valid();
    let with = |list: &[(u16, Vec<u8>)]| Hello::with_extensions(list).encode();
    let cases = [
        (
            BadRecordVersion,
            Hello {
                record_version: 0x0200,
                ..valid.clone()
            }
            .encode(),
        ),
        (NotHandshakeRecord, vec![0x80, 0x2e, 0x01]), // SSLv2-style hello
        (NotHandshakeRecord, vec![b'S']),
        // The ClientHello's fields run past its declared length.
        (
            HandshakeLengthMismatch,
            vec![22, 3, 1, 0, 14, 1, 0, 0, 10, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        (
            ExtensionsLengthMismatch,
            Hello {
                tail: vec![0],
                ..valid.clone()
            }
            .encode(),
        ),
        (
            ExtensionFramingBroken,
            Hello {
                tail: vec16(&[0, 16, 0]),
                ..valid.clone()
            }
            .encode(),
        ),
        (BadSniFraming, with(&[(0, vec16(&[]))])),
        (BadSniFraming, with(&[(0, vec16(&[0, 0, 9, b'a']))])),
        (
            BadSniFraming,
            with(&[(0, [sni("a.example"), vec![0, 0, 1, b'b']].concat())]),
        ),
        (BadSniFraming, {
            let mut two = vec![0];
            two.extend_from_slice(&vec16(b"a.example"));
            two.push(0);
            two.extend_from_slice(&vec16(b"b.example"));
            with(&[(0, vec16(&two))])
        }),
        (BadSupportedVersions, with(&[(43, vec![0])])),
        (BadSupportedVersions, with(&[(43, vec![])])),
        (BadSupportedGroups, with(&[(10, vec16(&[0, 29, 0]))])),
        (BadKeyShare, with(&[(51, vec16(&[0, 29, 0, 40, 1]))])),
        (BadKeyShare, with(&[(51, vec![0, 9])])),
        (
            BadPskFraming,
            with(&[(45, vec![1, 1]), (41, [psk(), vec![0]].concat())]),
        ),
    ];
    for (reason, bytes) in &cases {
        assert_eq!(
            parse(bytes),
            Err(*reason),
            "crafted {reason:?}: {bytes:02x?}"
        );
    }
    // An unknown name_type ends the walk: its framing is unknown (RFC 6066 §3).
    let odd_type = with(&[(0, vec16(&[7, 1, 2, 3]))]);
    let s = parse(&odd_type).expect("unknown name types are skipped");
    assert!(s.complete && !s.sni_present(), "{s:?}");
}

#[test]
fn malformed_verdicts_are_stable_across_longer_prefixes() {
    for (reason, bytes) in malformed_cases() {
        let mut seen = false;
        for len in 0..=bytes.len() {
            match parse(&bytes[..len]) {
                Ok(s) => {
                    assert!(!seen, "{reason:?}[..{len}] went from malformed back to Ok");
                    assert!(!s.complete, "{reason:?}[..{len}] complete: {s:?}");
                }
                Err(found) => {
                    assert_eq!(found, reason, "{reason:?}[..{len}]");
                    seen = true;
                }
            }
        }
    }
}

#[test]
fn grease_values_do_not_change_the_fingerprint() {
    let fingerprint = |hello: &Hello| {
        parse(&hello.encode())
            .expect("well-formed")
            .fingerprint
            .expect("complete")
    };
    let greasy = Hello::valid();
    let list = |grease: [u16; 4]| {
        vec![
            (grease[0], vec![]),
            (0, sni("example.com")),
            (10, u16_list(&[grease[1], group::X25519, group::SECP256R1])),
            (13, u16_list(&[0x0403, 0x0804])),
            (16, alpn()),
            (43, versions(&[grease[2], 0x0304, 0x0303])),
            (51, key_share(&[(grease[1], 1), (group::X25519, 32)])),
            (grease[3], vec![0]),
        ]
    };
    let other_grease = Hello {
        suites: u16s(&[0xeaea, 0x1301, 0x1302, 0xc02b]),
        ..Hello::with_extensions(&list([0x7a7a, 0xbaba, 0xcaca, 0x9a9a]))
    };
    assert_eq!(fingerprint(&greasy), fingerprint(&other_grease));

    let no_grease = Hello {
        suites: u16s(&[0x1301, 0x1302, 0xc02b]),
        ..Hello::with_extensions(&[
            (0, sni("other.example")),
            (10, u16_list(&[group::X25519, group::SECP256R1])),
            (13, u16_list(&[0x0403, 0x0804])),
            (16, alpn()),
            (43, versions(&[0x0304, 0x0303])),
            (51, key_share(&[(group::X25519, 32)])),
        ])
    };
    // GREASE values count in the shape (declared counts, see `fingerprint::shape`), not in the hash.
    const HASH: u64 = (1 << 44) - 1;
    let (greasy, no_grease_print) = (fingerprint(&greasy), fingerprint(&no_grease));
    assert_eq!(
        (greasy.ordered & HASH, greasy.unordered & HASH),
        (
            no_grease_print.ordered & HASH,
            no_grease_print.unordered & HASH
        ),
        "SNI value and GREASE are not hashed"
    );
    assert_eq!(shape_of(greasy.ordered), Some(shape(4, 8)));
    assert_eq!(shape_of(no_grease_print.unordered), Some(shape(3, 6)));

    let other_suites = Hello {
        suites: u16s(&[0x1302, 0x1301, 0xc02b]),
        ..no_grease.clone()
    };
    assert_ne!(fingerprint(&no_grease), fingerprint(&other_suites));
}

#[test]
fn only_the_unordered_fingerprint_survives_extension_permutation() {
    let a = Hello::with_extensions(&[
        (0, sni("example.com")),
        (10, u16_list(&[group::X25519])),
        (16, alpn()),
    ]);
    let b = Hello::with_extensions(&[
        (16, alpn()),
        (0, sni("example.com")),
        (10, u16_list(&[group::X25519])),
    ]);
    let fa = parse(&a.encode())
        .expect("ok")
        .fingerprint
        .expect("complete");
    let fb = parse(&b.encode())
        .expect("ok")
        .fingerprint
        .expect("complete");
    assert_eq!(fa.unordered, fb.unordered);
    assert_ne!(fa.ordered, fb.ordered);

    // The set tells types apart below 64 (the bitmap) and above (the sum of mixes), and keeps high types
    // order-independent too.
    let set = |types: &[u16]| {
        let extensions: Vec<(u16, Vec<u8>)> = types.iter().map(|t| (*t, vec![])).collect();
        parse(&Hello::with_extensions(&extensions).encode())
            .expect("ok")
            .fingerprint
            .expect("complete")
            .unordered
    };
    assert_eq!(set(&[23, 0xff01, 0xfe0d]), set(&[0xfe0d, 23, 0xff01]));
    assert_ne!(set(&[23, 0xff01]), set(&[23, 0xfe0d]));
    assert_ne!(set(&[23, 22]), set(&[23, 21]));

    // Moving a group into the cipher list must not collide: lists are delimited by counts.
    let c = Hello::with_extensions(&[(10, u16_list(&[group::X25519, 0x1301]))]);
    let d = Hello {
        suites: u16s(&[0x5a5a, 0x1301, 0x1302, 0xc02b, group::X25519]),
        ..Hello::with_extensions(&[(10, u16_list(&[0x1301]))])
    };
    let fc = parse(&c.encode())
        .expect("ok")
        .fingerprint
        .expect("complete");
    let fd = parse(&d.encode())
        .expect("ok")
        .fingerprint
        .expect("complete");
    assert_ne!(fc, fd);
}

/// Whether rustls' server-side Acceptor takes `bytes` as a complete, valid ClientHello.
fn rustls_accepts(bytes: &[u8]) -> bool {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut reader = bytes;
    while !reader.is_empty() {
        if acceptor.read_tls(&mut reader).is_err() {
            return false;
        }
        // rustls reads at most 4 KiB at a time and takes no more until it has processed them.
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

#[test]
fn rustls_acceptor_takes_every_fixture() {
    for f in FIXTURES {
        assert!(
            rustls_accepts(f.bytes),
            "{}: rustls rejects it, so the oracle is void",
            f.name
        );
    }
}

#[test]
fn record_versions_rustls_takes_are_not_malformed() {
    // rustls' record layer takes 0x03XX and the versions it has names for (found by the differential fuzz
    // target with 0x0002): a ClientHello in such a record is one the daemon would serve.
    let curl = FIXTURES
        .iter()
        .find(|f| f.name == "curl_sni")
        .expect("the curl fixture");
    for version in [0x0002u16, 0xfeff, 0xfefd, 0xfefc, 0x0300, 0x0304] {
        let mut bytes = curl.bytes.to_vec();
        bytes[1..3].copy_from_slice(&version.to_be_bytes());
        assert!(rustls_accepts(&bytes), "{version:#06x}: rustls rejects it");
        assert!(parse(&bytes).is_ok(), "{version:#06x}: called malformed");
    }
    // What rustls rejects stays malformed here.
    for version in [0x0000u16, 0x0201, 0x0400, 0xfefe] {
        let mut bytes = curl.bytes.to_vec();
        bytes[1..3].copy_from_slice(&version.to_be_bytes());
        assert!(!rustls_accepts(&bytes), "{version:#06x}: rustls takes it");
        assert_eq!(
            parse(&bytes).map(|_| ()),
            Err(Malformed::BadRecordVersion),
            "{version:#06x}"
        );
    }
}

#[test]
fn random_mutations_never_panic_and_rustls_accepted_hellos_are_never_malformed() {
    // Where this parser is stricter than rustls' Acceptor by design. Acceptor takes any
    // legacy_version (RFC 8446 §4.1.2 fixes it at 0x0303; major 3 is the least a TLS client
    // sends) and checks the PSK/early-data pairing rules (§4.2.9, §4.2.10) only later in the
    // handshake, if at all. rustls rejects every other reason too (40 seeds × 3000 mutants each).
    const STRICTER: &[Malformed] = &[
        Malformed::BadLegacyVersion,
        Malformed::PskWithoutKeyExchangeModes,
        Malformed::EarlyDataWithoutPsk,
    ];
    // Fixed by default so CI is deterministic; CLIENT_HELLO_SEED / CLIENT_HELLO_ROUNDS explore more.
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let seed = env("CLIENT_HELLO_SEED", 0x9e37_79b9_7f4a_7c15).max(1);
    let rounds = env("CLIENT_HELLO_ROUNDS", 1500);
    let mut rng = Rng(seed);
    let mut compared = 0;
    for f in FIXTURES {
        for round in 0..rounds {
            let input = mutate(&mut rng, f.bytes);
            let verdict = parse(&input);
            if let Ok(s) = &verdict {
                assert_eq!(s.complete, s.fingerprint.is_some(), "{} #{round}", f.name);
                if s.complete {
                    assert!(hello_end(s) <= input.len(), "{} #{round}", f.name);
                    if let Some(sni) = s.sni {
                        assert!(
                            s.sni(&input).is_some(),
                            "{} #{round}: SNI {sni:?} out of input",
                            f.name
                        );
                    }
                }
            }
            if rustls_accepts(&input) {
                compared += 1;
                if let Err(reason) = verdict {
                    assert!(
                        STRICTER.contains(&reason),
                        "{} #{round} (seed {seed:#x}): rustls accepts, we say {reason:?}: {input:02x?}",
                        f.name
                    );
                }
            }
        }
    }
    assert!(
        compared > 100,
        "too few mutants were valid for rustls ({compared}) to compare"
    );
}

/// The fingerprints of the captured ClientHellos, as first computed in format 2 (2026-11-23): blocklists in the field
/// hold such values, so a change to how the parser computes them (for speed in XDP) must leave every one as it was,
/// or come with a new `fingerprint::FORMAT`, whose top byte makes the CLI refuse the old values and `xdp status`
/// report them, as format 2 did for format 1.
#[test]
fn fingerprints_of_the_captured_client_hellos_are_stable() {
    const EXPECTED: &[(&str, u64, u64)] = &[
        ("curl_no_sni", 0x027c_bf88_d7d2_26d5, 0x027c_b731_5d9a_ac89),
        ("curl_sni", 0x027c_c046_e3ad_ee47, 0x027c_c95b_0db9_cc2e),
        (
            "openssl_tls12",
            0x0270_7f56_1d11_d0ca,
            0x0270_79ca_2440_57b2,
        ),
        (
            "openssl_tls12_ticket",
            0x0270_7f56_1d11_d0ca,
            0x0270_79ca_2440_57b2,
        ),
        (
            "openssl_tls13",
            0x0210_aa66_25aa_346c,
            0x0210_a393_194d_029e,
        ),
        (
            "openssl_tls13_psk_early_data",
            0x0210_cb84_cf80_0bae,
            0x0210_c53b_b5b6_191e,
        ),
        (
            "python_default",
            0x0248_b4af_21f5_7dfe,
            0x0248_b557_74e1_9325,
        ),
        (
            "rustls_tls12_ticket",
            0x0228_82be_9058_8be4,
            0x0228_81ba_3ade_19e6,
        ),
        (
            "rustls_tls13_psk",
            0x0228_a3f8_b03c_1a93,
            0x0228_af80_ed41_233f,
        ),
        (
            "rustls_tls13_psk_early_data",
            0x0228_b8bf_cf48_6442,
            0x0228_b9d8_bd73_a4f3,
        ),
        (
            "rustls_x25519",
            0x0228_af73_9e31_5502,
            0x0228_a1ba_1bdc_0e43,
        ),
        (
            "rustls_x25519mlkem768",
            0x0228_a8ce_ecbb_4b36,
            0x0228_a045_90bd_9ec1,
        ),
    ];
    let captured = hello_fixtures::CAPTURED;
    assert_eq!(
        captured.len(),
        EXPECTED.len(),
        "a capture without a golden value"
    );
    for (name, ordered, unordered) in EXPECTED {
        let (_, bytes, _) = captured
            .iter()
            .find(|c| c.0 == *name)
            .expect("captured fixture");
        let summary = parse(bytes).expect("captures parse");
        let got = summary.fingerprint.expect("captures are complete");
        assert_eq!(
            (got.ordered, got.unordered),
            (*ordered, *unordered),
            "{name}"
        );
    }
}

/// Without the fingerprint (what XDP does while no fingerprint is blocked) every parse, of every prefix of every
/// capture and of every malformed case, says the same as with it, except that it has no fingerprint.
#[test]
fn a_parse_without_the_fingerprint_differs_only_in_the_fingerprint() {
    let without = |input: &[u8]| {
        let mut workspace = client_hello::Workspace::NEW;
        workspace.want_fingerprint(false);
        client_hello::parse_in(input, &mut workspace)
    };
    let mut inputs: Vec<Vec<u8>> = malformed_cases().into_iter().map(|c| c.1).collect();
    for (_, bytes, _) in hello_fixtures::CAPTURED {
        inputs.extend((0..=bytes.len()).map(|len| bytes[..len].to_vec()));
    }
    for input in &inputs {
        let expected = parse(input).map(|s| ClientHelloSummary {
            fingerprint: None,
            ..s
        });
        assert_eq!(without(input), expected, "{input:02x?}");
    }
    // The same workspace asked again computes it again, and a reset at the next parse keeps the choice.
    let (_, curl, _) = hello_fixtures::CAPTURED[0];
    let mut workspace = client_hello::Workspace::NEW;
    workspace.want_fingerprint(false);
    for _ in 0..2 {
        let summary = client_hello::parse_in(curl, &mut workspace).expect("curl parses");
        assert_eq!(summary.fingerprint, None);
    }
    workspace.want_fingerprint(true);
    let summary = client_hello::parse_in(curl, &mut workspace).expect("curl parses");
    assert_eq!(summary.fingerprint, parse(curl).expect("curl").fingerprint);
    assert!(summary.fingerprint.is_some());
}

/// The XDP program keeps one workspace per CPU and parses every ClientHello in it: a parse must not see what the
/// one before left there. Every captured ClientHello (whole and cut at every length) and every malformed case, each
/// parsed after each other in one reused workspace, gives what a fresh parse gives.
#[test]
fn a_reused_workspace_parses_like_a_fresh_one() {
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for (_, bytes, _) in hello_fixtures::CAPTURED {
        for cut in [
            1,
            5,
            9,
            44,
            80,
            bytes.len() / 2,
            bytes.len() - 1,
            bytes.len(),
        ] {
            inputs.push(bytes[..cut.min(bytes.len())].to_vec());
        }
    }
    inputs.extend(malformed_cases().into_iter().map(|(_, bytes)| bytes));
    let mut workspace = client_hello::Workspace::NEW;
    for before in &inputs {
        for input in &inputs {
            let _ = client_hello::parse_in(&before[..], &mut workspace);
            assert_eq!(
                client_hello::parse_in(&input[..], &mut workspace),
                parse(input),
                "{} bytes after {} bytes",
                input.len(),
                before.len()
            );
        }
    }
}

/// An extension whose length runs past the extensions block breaks the block's framing, whatever its type: the
/// reason names the block, not the extension (whose own framing is never reached).
#[test]
fn an_extension_overrunning_the_block_is_broken_framing_whatever_its_type() {
    for kind in [0u16, 10, 13, 16, 21, 35, 41, 42, 43, 45, 51, 0xfe0d] {
        let bytes = Hello {
            tail: vec16(&[(kind >> 8) as u8, kind as u8, 0, 9, 1, 2]),
            ..Hello::valid()
        }
        .encode();
        assert_eq!(
            parse(&bytes),
            Err(Malformed::ExtensionFramingBroken),
            "extension type {kind}"
        );
    }
}

#[test]
fn exactly_the_extension_limit_parses_and_one_more_is_too_many() {
    let extensions = |count: u16| {
        Hello::with_extensions(&(0..count).map(|i| (100 + i, vec![])).collect::<Vec<_>>()).encode()
    };
    let limit = MAX_EXTENSIONS as u16;
    let s = parse(&extensions(limit)).expect("the limit itself is allowed");
    assert!(
        s.complete && s.extension_count == limit && s.fingerprint.is_some(),
        "{s:?}"
    );
    assert_eq!(
        parse(&extensions(limit + 1)),
        Err(Malformed::TooManyExtensions)
    );
    // Without the fingerprint too (the XDP program's default), whose walk ends the same way.
    let mut workspace = Workspace::NEW;
    workspace.want_fingerprint(false);
    let s = client_hello::parse_in(&extensions(limit)[..], &mut workspace).expect("allowed");
    assert!(s.complete && s.extension_count == limit, "{s:?}");
}

#[test]
fn client_hellos_spanning_records_pass_and_contradicting_records_are_malformed() {
    for case in split_cases() {
        let parsed = parse(&case.bytes);
        match case.malformed {
            None => {
                let s = parsed.unwrap_or_else(|reason| {
                    panic!(
                        "{}: legal (RFC 8446 §5.1), called {reason:?}",
                        case.description
                    )
                });
                assert!(
                    !s.complete && s.fingerprint.is_none(),
                    "{}: {s:?}",
                    case.description
                );
                // Every prefix is legal too: a first segment may end anywhere.
                for len in 0..case.bytes.len().min(2048) {
                    assert!(
                        parse(&case.bytes[..len]).is_ok(),
                        "{}[..{len}] called malformed",
                        case.description
                    );
                }
                // Whole, rustls takes it (the cases cut short are prefixes of ones it takes).
                let whole = case.bytes.len() >= hello_bytes_in(&case.bytes);
                if whole {
                    assert!(
                        rustls_accepts(&case.bytes),
                        "{}: rustls refuses it",
                        case.description
                    );
                }
            }
            Some(reason) => {
                assert_eq!(parsed.map(|_| ()), Err(reason), "{}", case.description);
                assert!(
                    !rustls_accepts(&case.bytes),
                    "{}: rustls takes what we call {reason:?}",
                    case.description
                );
            }
        }
    }
}

/// Bytes from the start of `bytes` to the end of the record that carries a multi-record ClientHello's last byte, as
/// its record headers say (past the end of `bytes` when it was cut short).
fn hello_bytes_in(bytes: &[u8]) -> usize {
    let total =
        HANDSHAKE_HEADER_LEN + u32::from_be_bytes([0, bytes[6], bytes[7], bytes[8]]) as usize;
    let (mut at, mut carried) = (0, 0);
    while carried < total && at + RECORD_HEADER_LEN <= bytes.len() {
        let len = usize::from(u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]));
        carried += len;
        at += RECORD_HEADER_LEN + len;
    }
    if carried < total { usize::MAX } else { at }
}

#[test]
fn a_segment_ending_with_a_complete_first_record_is_not_malformed() {
    // The outside conformance run's case (issue 17): the first of two records, whole, and nothing after it.
    for (name, bytes, _) in hello_fixtures::CAPTURED {
        let handshake = hello_fixtures::handshake_of(bytes);
        for first in 1..handshake.len() {
            let records = hello_fixtures::in_records(handshake, &[first]);
            for end in [
                RECORD_HEADER_LEN + first,
                RECORD_HEADER_LEN + first + 1,
                records.len(),
            ] {
                let s = parse(&records[..end]).unwrap_or_else(|reason| {
                    panic!("{name} split at {first}, cut at {end}: {reason:?}")
                });
                assert!(
                    s.fragmented && !s.complete,
                    "{name} split at {first}, cut at {end}: {s:?}"
                );
            }
        }
    }
}

#[test]
fn records_past_the_walked_ones_are_not_looked_at() {
    use client_hello::steps::MAX_CONTINUATION_RECORDS;
    let curl = hello_fixtures::handshake_of(hello_fixtures::captured("curl_sni"));
    let ccs = hello_fixtures::record(20, &[1]);
    // One-byte records: the first, then `after` more, then a ChangeCipherSpec before the ClientHello's end.
    let split = |after: usize| {
        let records = hello_fixtures::in_records(&curl[..=after], &vec![1; after + 1]);
        [records, ccs.clone()].concat()
    };
    assert_eq!(
        parse(&split(MAX_CONTINUATION_RECORDS - 1)).map(|_| ()),
        Err(Malformed::NotHandshakeRecord),
        "the last record walked"
    );
    // A client splitting this finely gains what a TCP segment cut there would: the rest is not judged here.
    let s = parse(&split(MAX_CONTINUATION_RECORDS)).expect("one record past the walk");
    assert!(s.fragmented && !s.complete, "{s:?}");
}
