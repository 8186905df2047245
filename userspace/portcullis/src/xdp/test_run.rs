//! The packet fixture table run through the loaded BPF program with `BPF_PROG_TEST_RUN`: the kernel's copy of
//! the classifier (reading through `data_end` checks, after the verifier) must reach the same verdict as the host
//! unit test of `portcullis_abi::packet::classify` on every row.
//!
//! Privileged: it loads the embedded object. Without root (or without an embedded object) it skips with a line
//! saying why, except under `CI=true`, where a skip is a failure.

use aya::{
    EbpfLoader,
    maps::{Array, MapData, PerCpuArray},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use portcullis_abi::{
    names::{MAP_XDP_CONFIG, MAP_XDP_VERDICTS, PROG_XDP},
    packet::ETH_HLEN,
    packet_fixtures::{FIXTURE_LISTENER_PORTS, fixtures},
    verdict::Verdict,
    xdp_config::{XDP_CONFIG_KEY, XdpConfig},
};

use super::object;

/// `XDP_PASS`, the only action the program returns for now.
const XDP_PASS: u32 = 2;

#[test]
fn bpf_program_agrees_with_the_fixture_table() {
    let why = if !nix::unistd::Uid::effective().is_root() {
        Some("needs root (CAP_BPF) to load the BPF object")
    } else if object::embedded().is_err() {
        Some("no BPF object embedded (build with `cargo xtask build`)")
    } else {
        None
    };
    if let Some(why) = why {
        let ci = std::env::var("CI").as_deref() == Ok("true");
        assert!(
            !ci,
            "bpf_program_agrees_with_the_fixture_table {why}; CI=true forbids skipping"
        );
        eprintln!("SKIP: bpf_program_agrees_with_the_fixture_table {why}");
        return;
    }

    let object = object::embedded().expect("checked above");
    let mut ebpf = EbpfLoader::new()
        .load(object)
        .expect("load the embedded object");
    let config = XdpConfig::new(&FIXTURE_LISTENER_PORTS).expect("fixture ports fit");
    Array::<_, XdpConfig>::try_from(ebpf.map_mut(MAP_XDP_CONFIG).expect("config map"))
        .expect("config map type")
        .set(XDP_CONFIG_KEY, config, 0)
        .expect("write config");
    let counters: PerCpuArray<MapData, u64> = ebpf
        .take_map(MAP_XDP_VERDICTS)
        .expect("verdict map")
        .try_into()
        .expect("verdict map type");
    let program: &mut Xdp = ebpf
        .program_mut(PROG_XDP)
        .expect("program")
        .try_into()
        .expect("XDP program");
    program.load().expect("the verifier accepts the program");

    let totals = || -> Vec<u64> {
        Verdict::ALL
            .iter()
            .map(|v| {
                counters
                    .get(&v.index(), 0)
                    .expect("read counter")
                    .iter()
                    .sum()
            })
            .collect()
    };
    let mut ran = 0;
    for fixture in fixtures() {
        // The kernel refuses XDP test input shorter than an Ethernet header (EINVAL); the host test covers those.
        if fixture.frame.len() < ETH_HLEN {
            continue;
        }
        let before = totals();
        let mut options = TestRunOptions::new();
        options.data_in = Some(&fixture.frame);
        let result = program
            .test_run(options)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on `{}`: {e}", fixture.description));
        assert_eq!(result.return_value, XDP_PASS, "{}", fixture.description);
        let after = totals();
        for verdict in Verdict::ALL {
            let i = verdict.index() as usize;
            let expected = u64::from(verdict == fixture.expected);
            assert_eq!(
                after[i] - before[i],
                expected,
                "`{}`: counter {} moved by {}, expected verdict {}",
                fixture.description,
                verdict.name(),
                after[i] - before[i],
                fixture.expected.name()
            );
        }
        ran += 1;
    }
    assert!(ran >= 20, "only {ran} fixtures ran through the BPF program");
}
