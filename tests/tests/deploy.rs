//! The files under deploy/ stay true: alert rules load in promtool and pass their unit tests, every metric the
//! rules and the Grafana dashboard name is one the daemon exports (with XDP attached, in a namespace), and the
//! config embedded in the Kubernetes manifest passes `portcullis check-config`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis_tests::{
    daemon::{TempDir, binary},
    privileged::require_root,
    testbed::XdpTestbed,
};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

#[test]
fn alert_rules_pass_promtool() {
    promtool(
        &["check", "rules"],
        &deploy("prometheus/portcullis-alerts.yml"),
    );
}

/// `promtool ARGS FILE`, which must succeed.
fn promtool(args: &[&str], file: &Path) {
    let out = Command::new("promtool")
        .args(args)
        .arg(file)
        .output()
        .expect("promtool (run `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `promtool test rules` on `portcullis-alerts.test.yml`, against a copy of the rules without their annotations:
/// promtool compares annotations whole, and the tests are about when an alert fires and with which labels.
#[test]
fn alert_rules_pass_their_unit_tests() {
    let rules = std::fs::read_to_string(deploy("prometheus/portcullis-alerts.yml")).expect("rules");
    let stripped = without_annotations(&rules);
    assert!(
        !stripped.contains("annotations:") && stripped.contains("alert: PortcullisXdpGenericMode"),
        "stripping the annotations went wrong:\n{stripped}"
    );
    let dir = TempDir::new("alert-tests").expect("tempdir");
    std::fs::write(dir.path().join("portcullis-alerts.yml"), stripped).expect("write rules");
    let tests = dir.path().join("portcullis-alerts.test.yml");
    std::fs::copy(deploy("prometheus/portcullis-alerts.test.yml"), &tests).expect("copy tests");
    promtool(&["test", "rules"], &tests);
}

/// `rules` without any `annotations:` block (the key and every line indented deeper than it).
fn without_annotations(rules: &str) -> String {
    let mut kept = String::new();
    let mut skipping_deeper_than: Option<usize> = None;
    for line in rules.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(level) = skipping_deeper_than {
            if line.trim().is_empty() || indent > level {
                continue;
            }
            skipping_deeper_than = None;
        }
        if line.trim() == "annotations:" {
            skipping_deeper_than = Some(indent);
            continue;
        }
        kept.push_str(line);
        kept.push('\n');
    }
    kept
}

/// Every `portcullis_...` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("portcullis_") {
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..len].to_owned());
        rest = &tail[len..];
    }
    names
}

/// The metric families of a `/metrics` text (its `# TYPE` lines).
fn families(metrics: &str) -> BTreeSet<&str> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .collect()
}

/// Whether `name` is a sample name of one of `families` (a counter's `_total`, a histogram's `_bucket`, ...).
fn exported(name: &str, families: &BTreeSet<&str>) -> bool {
    families.contains(name)
        || ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|f| families.contains(f))
            })
}

/// Families the daemon writes only once they have a sample (prometheus-client leaves an empty family out of a
/// scrape), which the bed below does not provoke: each is read by name in the test that provokes it, named here
/// and checked to still name it.
const PROVOKED_ELSEWHERE: [(&str, &str); 7] = [
    ("portcullis_admission_shed_total", "admission.rs"),
    ("portcullis_ticket_keys", "fleet.rs"),
    ("portcullis_ticket_key_next_activation_seconds", "fleet.rs"),
    ("portcullis_upstream_connect_errors_total", "tls.rs"),
    ("portcullis_http_requests_total", "http.rs"),
    ("portcullis_http_first_byte_seconds_bucket", "http.rs"),
    ("portcullis_http_early_requests_total", "zero_rtt_http.rs"),
];

/// A rule or panel naming a metric the daemon does not export (renamed, or never written) alerts on nothing and
/// draws nothing, silently: checked against a real daemon's `/metrics`, with XDP attached so that the guard's
/// families are there too.
#[test]
fn alerts_and_dashboard_name_only_exported_metrics() {
    if !require_root("alerts_and_dashboard_name_only_exported_metrics") {
        return;
    }
    let bed = XdpTestbed::builder("deploy-metrics")
        .build()
        .expect("XDP testbed");
    let daemon = bed.start_daemon();
    assert!(bed.s_client(daemon.addr(), 30), "a handshake");
    let metrics = daemon.metrics_text().expect("GET /metrics");
    let families = families(&metrics);
    assert!(
        families.contains("portcullis_xdp_attached"),
        "no portcullis_xdp_attached:\n{metrics}"
    );
    let mut missing = Vec::new();
    for file in [
        "prometheus/portcullis-alerts.yml",
        "grafana/portcullis-dashboard.json",
    ] {
        let text = std::fs::read_to_string(deploy(file)).expect(file);
        let names = metric_names(&text);
        assert!(!names.is_empty(), "{file} names no portcullis_ metric");
        for name in names {
            if exported(&name, &families) {
                continue;
            }
            match PROVOKED_ELSEWHERE.iter().find(|(n, _)| *n == name) {
                Some((_, test)) => {
                    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("tests")
                        .join(test);
                    let source = std::fs::read_to_string(&path).expect("test source");
                    assert!(
                        source.contains(&name),
                        "tests/{test} no longer reads {name}: provoke it here, or name the test that does"
                    );
                }
                None => missing.push(format!("{file}: {name}")),
            }
        }
    }
    assert!(
        missing.is_empty(),
        "metrics named in deploy/ that the daemon does not export:\n{}\n/metrics:\n{metrics}",
        missing.join("\n")
    );
    daemon.stop_ok();
}

#[test]
fn kubernetes_config_map_passes_check_config() {
    let manifest =
        std::fs::read_to_string(deploy("kubernetes/portcullis-daemonset.yaml")).expect("manifest");
    // The block scalar after `portcullis.toml: |`, dedented.
    let mut lines = manifest
        .lines()
        .skip_while(|l| !l.trim_end().ends_with("portcullis.toml: |"));
    let header = lines
        .next()
        .expect("portcullis.toml block in the ConfigMap");
    let indent = header.len() - header.trim_start().len() + 2;
    let toml: String = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
        .collect();
    assert!(toml.contains("[[listeners]]"), "{toml}");
    let dir = TempDir::new("k8s").expect("tempdir");
    let file = dir.path().join("portcullis.toml");
    std::fs::write(&file, &toml).expect("write");
    let out = Command::new(binary())
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{toml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The systemd unit stays hardened: `systemd-analyze security` scores it below 5.0 ("OK"), it runs as a user
/// with only the start-up capabilities, and it grants nothing the code does not use.
#[test]
fn systemd_unit_scores_ok_in_systemd_analyze_security() {
    let unit = deploy("systemd/portcullis.service");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("run systemd-analyze (apt-get install systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            let rest = l.split("Overall exposure level for").nth(1)?;
            rest.split(':')
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "no overall score in:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(score < 5.0, "exposure {score} is not OK (< 5.0):\n{text}");
    let body = std::fs::read_to_string(&unit).expect("unit");
    // The score recorded in the unit's header matches (docs move with the file).
    assert!(
        body.contains(&format!("{score:.1} OK")),
        "record {score:.1} in the unit's header comment"
    );
    for line in [
        "User=portcullis",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_NET_BIND_SERVICE",
    ] {
        assert!(body.lines().any(|l| l == line), "missing `{line}`");
    }
    assert!(
        !body.contains("CAP_SYS_RESOURCE"),
        "no code needs CAP_SYS_RESOURCE"
    );
}

/// The DaemonSet keeps its security settings: capabilities dropped but the start-up ones, no privilege
/// escalation, a read-only root, seccomp, resources, and the admin endpoint on loopback only.
#[test]
fn daemonset_is_least_privilege_and_keeps_admin_off_node_addresses() {
    let manifest =
        std::fs::read_to_string(deploy("kubernetes/portcullis-daemonset.yaml")).expect("manifest");
    // The portcullis container: from its `- name:` to the next container's.
    let start = manifest
        .find("- name: portcullis\n")
        .expect("the portcullis container");
    let container = manifest.get(start..).unwrap_or_default();
    let end = container
        .find("- name: kube-rbac-proxy")
        .unwrap_or(container.len());
    let container = container.get(..end).unwrap_or_default();
    for needle in [
        "allowPrivilegeEscalation: false",
        "readOnlyRootFilesystem: true",
        "type: RuntimeDefault",
        "drop: [\"ALL\"]",
        "add: [\"BPF\", \"NET_ADMIN\", \"PERFMON\", \"NET_BIND_SERVICE\", \"SETPCAP\"]",
        "resources:",
        "requests:",
        "limits:",
        "memory:",
        "host: 127.0.0.1",
    ] {
        assert!(
            container.contains(needle),
            "the portcullis container lacks `{needle}`"
        );
    }
    assert!(
        !manifest.contains("SYS_RESOURCE"),
        "no code needs SYS_RESOURCE"
    );
    assert!(
        !manifest.contains("0.0.0.0:9090"),
        "admin bound to every node address"
    );
    assert!(manifest.contains("address = \"127.0.0.1:9090\""));
    assert!(manifest.contains("drop_capabilities = true"));
}
