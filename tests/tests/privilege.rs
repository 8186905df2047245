//! Least privilege: with `[process] user`, the daemon binds, attaches XDP and steering, pins its maps, then runs
//! as that user with no capability, and still serves, sheds, and cleans up its pins at exit.

use portcullis_tests::privileged::require_root;
use portcullis_tests::testbed::XdpTestbed;

/// `nobody` on Debian; numeric, so the test does not depend on the passwd file.
const NOBODY: u32 = 65534;

fn status_of(path: &std::path::Path) -> portcullis::process::Status {
    portcullis::process::Status::parse(&std::fs::read_to_string(path).expect("read status"))
}

#[test]
fn the_running_daemon_has_no_root_and_no_capability() {
    if !require_root("the_running_daemon_has_no_root_and_no_capability") {
        return;
    }
    let bed = XdpTestbed::builder("privilege")
        .xdp(&format!(
            "\n[process]\nuser = \"{NOBODY}\"\ngroup = \"{NOBODY}\""
        ))
        .build()
        .expect("XDP testbed");
    let daemon = bed.start_daemon();
    let pid = daemon.pid().expect("pid");

    // Every thread: uid and gid nobody, no effective or permitted capability. The main thread (which did the
    // drop) also has an empty bounding set and no_new_privs; threads started before the drop keep theirs.
    let main = status_of(&std::path::PathBuf::from(format!("/proc/{pid}/status")));
    assert_eq!(main.uid, Some(NOBODY), "{main:?}");
    assert_eq!(main.gid, Some(NOBODY), "{main:?}");
    assert_eq!(main.cap_eff, Some(0), "CapEff: {main:?}");
    assert_eq!(main.cap_prm, Some(0), "CapPrm: {main:?}");
    assert_eq!(main.cap_bnd, Some(0), "CapBnd: {main:?}");
    assert_eq!(main.no_new_privs, Some(true), "{main:?}");
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    let mut threads = 0;
    for task in tasks {
        let s = status_of(&task.expect("task").path().join("status"));
        assert_eq!(s.uid, Some(NOBODY), "a thread kept its uid: {s:?}");
        assert_eq!(s.cap_eff, Some(0), "a thread kept capabilities: {s:?}");
        threads += 1;
    }
    assert!(threads > 2, "only {threads} threads: workers missing?");

    // Still serving through XDP and steering, and the maps stay readable through the fds it holds.
    assert!(
        bed.s_client(daemon.addr(), 10),
        "no handshake after the drop"
    );
    let passed = daemon
        .metric(
            "portcullis_xdp_packets_total",
            &[("verdict", "pass_listener_tcp")],
        )
        .expect("metrics");
    assert!(passed > 0.0, "XDP counters unreadable after the drop");
    let status = bed.cli(&["status"]);
    assert!(!status.is_empty());

    // At exit it detaches and removes its pins as the unprivileged user.
    daemon.stop_ok();
    // (stop_ok: exit 0, so the pin removal did not fail.) The program's pin is gone.
    let pin = bed.pin_dir.path().join(portcullis_abi::names::PROG_XDP);
    assert!(!pin.exists(), "{} left behind", pin.display());
}

/// The systemd unit's model: started as an unprivileged user with the start-up capabilities as ambient ones
/// (`User=` + `AmbientCapabilities=`), the daemon sets up XDP and steering, then drops every capability.
#[test]
fn started_unprivileged_with_ambient_capabilities_it_drops_them_after_start_up() {
    use portcullis_tests::daemon::{Daemon, DaemonOptions};
    if !require_root("started_unprivileged_with_ambient_capabilities_it_drops_them_after_start_up")
    {
        return;
    }
    let bed = XdpTestbed::builder("ambient").build().expect("XDP testbed");
    // What the unit's ExecStartPre and the operator do: the pin dir and the keys belong to the service user.
    let nobody = Some(nix::unistd::Uid::from_raw(NOBODY));
    let group = Some(nix::unistd::Gid::from_raw(NOBODY));
    std::fs::create_dir_all(bed.pin_dir.path()).expect("pin dir");
    for path in [
        bed.pin_dir.path(),
        bed.pki.ecdsa.1.as_path(),
        bed.pki.rsa.1.as_path(),
    ] {
        nix::unistd::chown(path, nobody, group).expect("chown");
    }
    let caps = "+bpf,+net_admin,+perfmon,+net_bind_service";
    let daemon = Daemon::start(DaemonOptions {
        config_toml: Some(bed.config().to_owned()),
        netns: Some(bed.server.name().to_owned()),
        exec_through: [
            "setpriv",
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            &format!("--inh-caps={caps}"),
            &format!("--ambient-caps={caps}"),
        ]
        .map(str::to_owned)
        .to_vec(),
        ..Default::default()
    })
    .expect("the daemon starts unprivileged with ambient capabilities");
    let pid = daemon.pid().expect("pid");
    let main = status_of(&std::path::PathBuf::from(format!("/proc/{pid}/status")));
    assert_eq!(main.uid, Some(NOBODY), "{main:?}");
    assert_eq!(main.cap_eff, Some(0), "CapEff: {main:?}");
    assert_eq!(main.cap_prm, Some(0), "CapPrm: {main:?}");
    assert_eq!(main.no_new_privs, Some(true), "{main:?}");
    assert!(
        bed.s_client(daemon.addr(), 10),
        "no handshake after the drop"
    );
    let steering = daemon.stderr();
    assert!(
        !steering.contains("reuseport steering is off"),
        "steering did not load with the ambient capabilities:\n{steering}"
    );
    daemon.stop_ok();
}

/// The DaemonSet's model: `[process] drop_capabilities` keeps uid 0 (root-only Secret files stay readable) but
/// gives up every capability after start-up.
#[test]
fn root_with_drop_capabilities_keeps_uid_0_and_no_capability() {
    if !require_root("root_with_drop_capabilities_keeps_uid_0_and_no_capability") {
        return;
    }
    let bed = XdpTestbed::builder("dropcaps")
        .xdp("\n[process]\ndrop_capabilities = true")
        .build()
        .expect("XDP testbed");
    let daemon = bed.start_daemon();
    let pid = daemon.pid().expect("pid");
    let main = status_of(&std::path::PathBuf::from(format!("/proc/{pid}/status")));
    assert_eq!(main.uid, Some(0), "{main:?}");
    assert_eq!(main.cap_eff, Some(0), "CapEff: {main:?}");
    assert_eq!(main.cap_prm, Some(0), "CapPrm: {main:?}");
    assert_eq!(main.cap_bnd, Some(0), "CapBnd: {main:?}");
    assert_eq!(main.no_new_privs, Some(true), "{main:?}");
    assert!(
        bed.s_client(daemon.addr(), 10),
        "no handshake after the drop"
    );
    daemon.stop_ok();
}
