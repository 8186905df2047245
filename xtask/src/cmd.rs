//! Running external commands and named steps, echoing each so a log shows exactly what ran.
//!
//! Every command xtask runs goes through [`run`], [`output_ok`] or [`probe`]: the first two turn a failure into
//! an error that names the command and its exit status ([`output_ok`] also shows its stderr and hands back its
//! output), the last is for "is this already installed?" checks where failure is an answer, not an error.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// Runs `cmd` to completion with inherited stdio after echoing it to stderr.
///
/// Fails when the program cannot be started or exits unsuccessfully; the error names the command line and the
/// exit status (or the signal that killed it).
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    eprintln!("+ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`; is the program installed and on PATH?"))?;
    if !status.success() {
        bail!("`{line}` failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` to completion, capturing its stdout and stderr (unless `cmd` already routes them elsewhere), and
/// returns its output when it exits successfully. Does not echo `cmd`: callers print what they run.
///
/// `what` names the command in errors, e.g. `"portcullis keys init --dir /x"`. Fails when the program cannot be
/// started (the error names the program) or exits unsuccessfully (the error gives the exit status, or the signal
/// that killed it, and the trimmed stderr when any was captured).
pub fn output_ok(cmd: &mut Command, what: &str) -> Result<Output> {
    let out = cmd.output().with_context(|| {
        format!(
            "cannot start {what} (`{}`)",
            cmd.get_program().to_string_lossy()
        )
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        if stderr.is_empty() {
            bail!("{what} failed ({})", out.status);
        }
        bail!("{what} failed ({}): {stderr}", out.status);
    }
    Ok(out)
}

/// Runs `cmd` silently and returns its stdout when it exits successfully, `None` when it cannot be started or
/// fails. For checks such as `bpf-linker --version`, where "not there" is an expected answer.
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What a finished step reports: its name, how long it took, whether it succeeded.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// The step's name as printed.
    pub name: &'static str,
    /// Wall-clock duration.
    pub took: Duration,
    /// Whether the step succeeded.
    pub ok: bool,
}

/// Runs `f` as the step `name`, printing its start, outcome and wall-clock duration. Returns `f`'s result and an
/// [`Outcome`] for a summary.
pub fn step<T>(name: &'static str, f: impl FnOnce() -> Result<T>) -> (Result<T>, Outcome) {
    eprintln!("==> {name}");
    let start = Instant::now();
    let result = f();
    let took = start.elapsed();
    match &result {
        Ok(_) => eprintln!("<== {name}: ok in {}", seconds(took)),
        Err(e) => eprintln!("<== {name}: FAILED in {}: {e:#}", seconds(took)),
    }
    let ok = result.is_ok();
    (result, Outcome { name, took, ok })
}

/// Formats a duration as seconds with one decimal, e.g. `12.3 s`.
pub fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// A shell-like rendering of `cmd`: working directory, the variables it sets (PATH left out: it is long and only
/// ever gains `~/.cargo/bin`), program and arguments. Variables it removes are not shown.
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    if let Some(dir) = cmd.get_current_dir() {
        parts.push(format!("cd {} &&", quote(dir.as_os_str())));
    }
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value
            && key != "PATH"
        {
            parts.push(format!("{}={}", key.to_string_lossy(), quote(value)));
        }
    }
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

/// Single-quotes `s` when a shell would otherwise split or expand it.
fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_shows_dir_env_and_quoted_args() {
        let mut cmd = Command::new("cargo");
        cmd.current_dir("/w")
            .env("RUSTFLAGS", "-C debuginfo=2")
            .env("PATH", "/ignored")
            .env_remove("RUSTC_WRAPPER")
            .args(["build", "it's"]);
        assert_eq!(
            display(&cmd),
            r"cd /w && RUSTFLAGS='-C debuginfo=2' cargo build 'it'\''s'"
        );
    }

    #[test]
    fn probe_and_run_report_failure() {
        assert_eq!(probe(&mut Command::new("true")).as_deref(), Some(""));
        assert_eq!(probe(&mut Command::new("false")), None);
        assert_eq!(probe(&mut Command::new("/nonexistent/xtask-probe")), None);
        let err = run(&mut Command::new("false")).expect_err("`false` exits 1");
        assert_eq!(err.to_string(), "`false` failed: exit status: 1");
    }

    #[test]
    fn output_ok_returns_stdout_or_names_the_command_and_its_stderr() {
        let out = output_ok(Command::new("sh").args(["-c", "echo hi"]), "greeting")
            .expect("sh echo succeeds");
        assert_eq!(out.stdout, b"hi\n");
        let err = output_ok(
            Command::new("sh").args(["-c", "echo ' no such key ' >&2; exit 3"]),
            "portcullis keys rotate",
        )
        .expect_err("exit 3 is a failure");
        assert_eq!(
            err.to_string(),
            "portcullis keys rotate failed (exit status: 3): no such key"
        );
        let err = output_ok(&mut Command::new("false"), "quiet").expect_err("`false` exits 1");
        assert_eq!(err.to_string(), "quiet failed (exit status: 1)");
        let err = output_ok(&mut Command::new("/nonexistent/xtask-out"), "missing")
            .expect_err("no such program");
        assert_eq!(
            err.to_string(),
            "cannot start missing (`/nonexistent/xtask-out`)"
        );
    }
}
