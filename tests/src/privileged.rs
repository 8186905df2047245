//! Privileged tests need root (CAP_BPF, CAP_NET_ADMIN). Outside CI a non-root run skips them with a line saying
//! why; under `CI=true` a skip is a failure, so a lost capability cannot hide a regression.

/// Returns `true` when the caller may run a privileged test. Returns `false` (after printing why) when it must be
/// skipped. Panics under `CI=true`, where skipping is not allowed.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    skip(&format!(
        "privileged test `{test}` needs root (CAP_BPF, CAP_NET_ADMIN)"
    ))
}

/// Skips a test, printing `why`, and returns `false`; panics under `CI=true`, where skipping is not allowed.
pub fn skip(why: &str) -> bool {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}; CI=true forbids skipping tests");
    }
    eprintln!("SKIP: {why}");
    false
}
