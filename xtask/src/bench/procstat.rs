//! CPU time of a server's processes, from `/proc/PID/stat` (utime + stime, fields 14 and 15, in clock ticks).

use std::time::Duration;

use crate::cmd;

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux unless told otherwise).
pub fn ticks_per_second() -> u64 {
    cmd::probe(std::process::Command::new("getconf").arg("CLK_TCK"))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// `root` and its direct children (nginx: master and worker).
pub fn tree(root: u32) -> Vec<u32> {
    let mut pids = vec![root];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if stat_fields(pid).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()))
                == Some(root)
            {
                pids.push(pid);
            }
        }
    }
    pids
}

/// utime + stime of `pids`, summed (threads included: the kernel sums them per process).
pub fn cpu_time(pids: &[u32]) -> Duration {
    let hz = ticks_per_second().max(1);
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| {
            let f = stat_fields(*pid)?;
            // After the command's closing parenthesis: state is field 3, so utime (14) is index 11.
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .sum();
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// The fields of `/proc/PID/stat` after the command name (which may contain spaces and parentheses).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.get(text.rfind(')')? + 1..)?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time() {
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(!cpu_time(&[std::process::id()]).is_zero());
        assert!(tree(std::process::id()).contains(&std::process::id()));
    }
}
