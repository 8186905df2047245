//! The files under deploy/ stay true: alert rules load in promtool, and the config embedded in the Kubernetes
//! manifest passes `portcullis check-config`.

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis_tests::daemon::{TempDir, binary};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

#[test]
fn alert_rules_pass_promtool() {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy("prometheus/portcullis-alerts.yml"))
        .output()
        .expect("promtool (run `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
