//! What to tell the operator when the kernel refuses a BPF object or program with "permission denied".
//!
//! `BPF_PROG_LOAD` fails with `EACCES` both when the caller lacks privileges and when the verifier rejects the
//! program (kernel/bpf/verifier.c returns `-EACCES` for most rejections), so the errno alone does not say whose
//! fault it is. The verifier log does: the verifier only writes one when it ran, so a log means the program is
//! at fault (a bug in this build), and an empty log (or `EPERM`, which the verifier never returns) means the
//! process may not load BPF at all.

use aya::programs::ProgramError;

/// How many lines of the verifier log the message quotes: the verdict and the instructions just before it.
/// The whole log stays in the error chain (aya's own message).
const LOG_TAIL_LINES: usize = 5;

/// The hint for a process that may not load BPF.
const PRIVILEGES: &str =
    "permission denied: run the daemon as root or grant it CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON";

/// Adds who is at fault to a "permission denied" from loading `what` (say "XDP program `xdp_guard`"): the
/// verifier when it left a log, else missing privileges. Other errors are returned unchanged.
pub(crate) fn explain(what: &str, error: anyhow::Error) -> anyhow::Error {
    let refusal = error.chain().find_map(|cause| {
        if let Some(ProgramError::LoadError {
            io_error,
            verifier_log,
        }) = cause.downcast_ref::<ProgramError>()
        {
            return Some((errno(io_error)?, verifier_log.to_string()));
        }
        cause
            .downcast_ref::<std::io::Error>()
            .and_then(errno)
            .map(|e| (e, String::new()))
    });
    match refusal.and_then(|(errno, log)| advice(what, errno, &log)) {
        Some(message) => error.context(message),
        None => error,
    }
}

/// The errno of a "permission denied" I/O error; `EPERM` when the OS gave none (the privileges hint, as before
/// the verifier case was told apart).
fn errno(e: &std::io::Error) -> Option<i32> {
    (e.kind() == std::io::ErrorKind::PermissionDenied)
        .then(|| e.raw_os_error().unwrap_or(libc::EPERM))
}

/// The message for loading `what` failing with `errno` and verifier `log` (empty when there is none), or `None`
/// when this is not a "permission denied" and the error speaks for itself.
fn advice(what: &str, errno: i32, log: &str) -> Option<String> {
    match errno {
        libc::EACCES if !log.trim().is_empty() => Some(format!(
            "the kernel's verifier rejected {what} (a bug in this build, not your setup): {}",
            tail(log)
        )),
        libc::EACCES | libc::EPERM => Some(PRIVILEGES.to_owned()),
        _ => None,
    }
}

/// The last [`LOG_TAIL_LINES`] non-blank lines of a verifier log, on one line.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let skip = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines.get(skip..).unwrap_or_default().join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "func#0 @0\n0: R1=ctx() R10=fp0\n; let start = ctx.data();\n1: (61) r2 = *(u32 *)(r1 +0)\n\
        2: (61) r3 = *(u32 *)(r1 +4)\n3: (71) r4 = *(u8 *)(r2 +12)\ninvalid access to packet, off=12 size=1, \
        R2(id=0,off=12,r=0)\nR2 offset is outside of the packet\n\
        processed 4 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0\n\n";

    #[test]
    fn verifier_log_blames_the_program() {
        let m = advice("XDP program `xdp_guard`", libc::EACCES, LOG).expect("advice");
        assert!(
            m.starts_with(
                "the kernel's verifier rejected XDP program `xdp_guard` (a bug in this build, not your setup): "
            ),
            "{m}"
        );
        assert!(m.contains("R2 offset is outside of the packet"), "{m}");
        assert!(m.ends_with("mark_read 0"), "{m}");
        assert!(!m.contains("func#0"), "only the last lines: {m}");
        assert!(!m.contains("CAP_BPF"), "{m}");
    }

    #[test]
    fn no_log_or_eperm_blames_privileges() {
        for (errno, log) in [
            (libc::EACCES, ""),
            (libc::EACCES, " \n\n"),
            (libc::EPERM, ""),
            (libc::EPERM, LOG),
        ] {
            assert_eq!(
                advice("p", errno, log).as_deref(),
                Some(PRIVILEGES),
                "{errno} {log:?}"
            );
        }
    }

    #[test]
    fn other_errors_speak_for_themselves() {
        assert_eq!(advice("p", libc::EINVAL, LOG), None);
        assert_eq!(advice("p", libc::E2BIG, ""), None);
    }

    #[test]
    fn explain_reads_aya_load_errors() {
        let load_error = |errno: i32, log: &str| {
            anyhow::Error::new(ProgramError::LoadError {
                io_error: std::io::Error::from_raw_os_error(errno),
                verifier_log: aya_obj::VerifierLog::new(log.to_owned()),
            })
        };
        let top = |e: anyhow::Error| e.to_string();
        assert!(
            top(explain("p", load_error(libc::EACCES, LOG))).starts_with("the kernel's verifier")
        );
        assert_eq!(top(explain("p", load_error(libc::EACCES, ""))), PRIVILEGES);
        assert_eq!(top(explain("p", load_error(libc::EPERM, LOG))), PRIVILEGES);
        let invalid = top(explain("p", load_error(libc::EINVAL, LOG)));
        assert!(
            invalid.starts_with("the BPF_PROG_LOAD syscall returned"),
            "{invalid}"
        );
        // A bare I/O error (map creation, say): no verifier involved.
        let denied = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(top(explain("p", denied)), PRIVILEGES);
    }
}
