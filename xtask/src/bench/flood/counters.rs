//! What `bench flood` reads before and after each phase: CPU time by kind per CPU (`/proc/stat`), the server
//! namespace's TCP counters (`nstat`), and portcullis' `/metrics` (XDP verdicts, userspace refusals).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// Jiffies of one CPU by kind, from its `cpuN` line of `/proc/stat`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    /// user + nice.
    pub user: u64,
    /// system.
    pub system: u64,
    /// softirq.
    pub softirq: u64,
    /// irq.
    pub irq: u64,
    /// idle + iowait.
    pub idle: u64,
    /// steal and the rest.
    pub other: u64,
}

impl CpuTimes {
    fn total(&self) -> u64 {
        self.user + self.system + self.softirq + self.irq + self.idle + self.other
    }
}

/// Shares of a CPU over an interval, in percent.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuShare {
    /// user + nice.
    pub user: f64,
    /// system.
    pub system: f64,
    /// softirq (+ irq).
    pub softirq: f64,
}

/// `/proc/stat`'s `cpu<cpu>` line.
pub fn cpu(cpu: usize) -> Result<CpuTimes> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let prefix = format!("cpu{cpu} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .with_context(|| format!("no cpu{cpu} line in /proc/stat"))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    Ok(CpuTimes {
        user: at(0) + at(1),
        system: at(2),
        idle: at(3) + at(4),
        irq: at(5),
        softirq: at(6),
        other: f.iter().skip(7).take(3).sum(),
    })
}

/// The shares of `after - before`.
pub fn share(before: CpuTimes, after: CpuTimes) -> CpuShare {
    let total = after.total().saturating_sub(before.total()).max(1) as f64;
    let pct = |a: u64, b: u64| 100.0 * a.saturating_sub(b) as f64 / total;
    CpuShare {
        user: pct(after.user, before.user),
        system: pct(after.system, before.system),
        softirq: pct(after.softirq + after.irq, before.softirq + before.irq),
    }
}

/// Packets the kernel dropped because a CPU's receive backlog was full (`netdev_max_backlog`: where RPS queues
/// packets for the server's CPU), summed over CPUs: the second column of `/proc/net/softnet_stat`. Host-wide;
/// in this bench's windows nearly all of it is the flood's.
pub fn backlog_drops() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/softnet_stat")
        .context("reading /proc/net/softnet_stat")?;
    Ok(text
        .lines()
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .sum())
}

/// The kernel TCP counters `bench flood` reports, as `nstat` names them.
pub const NSTAT: &[&str] = &[
    "TcpExtSyncookiesSent",
    "TcpExtSyncookiesRecv",
    "TcpExtSyncookiesFailed",
    "TcpExtListenOverflows",
    "TcpExtListenDrops",
    "TcpExtTCPReqQFullDrop",
];

/// `nstat -asz` in namespace `ns`: every counter, absolute.
pub fn nstat(ns: &str) -> Result<BTreeMap<String, u64>> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["nstat", "-a", "-s", "-z"])
        .stdin(Stdio::null())
        .output()
        .context("cannot run nstat (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "nstat in {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.parse().ok()?))
        })
        .collect())
}

/// `after - before` for each name in `names` (0 when missing).
pub fn delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    names: &[&str],
) -> BTreeMap<String, u64> {
    names
        .iter()
        .map(|n| {
            let b = before.get(*n).copied().unwrap_or(0);
            let a = after.get(*n).copied().unwrap_or(0);
            ((*n).to_owned(), a.saturating_sub(b))
        })
        .collect()
}

/// The samples of a Prometheus text exposition this bench reports, summed by a short key: `xdp:<verdict>` for
/// `portcullis_xdp_packets_total`, `handshake:<result>` for `portcullis_handshakes_total`, `refused:<reason>`
/// for `portcullis_connections_refused_total`, `shed:<..>` for `portcullis_admission_shed_total`, `state:<to>` for
/// `portcullis_admission_transitions_total`, `unsaturated_bursts:all` for handshakes admission control let
/// past its normal burst because the engine was not saturated (the queue grew from other work taking the CPU),
/// and per handshake class the engine's steps (`engine_steps:<class>`), those run on the worker
/// (`engine_inline:<class>`; the rest took the hop to a crypto thread) and their summed queue wait in µs
/// (`engine_wait_us:<class>`).
pub fn metrics(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let (prefix, label, scale) = match name {
            "portcullis_xdp_packets_total" => ("xdp", "verdict", 1.0),
            "portcullis_handshakes_total" => ("handshake", "result", 1.0),
            "portcullis_connections_refused_total" => ("refused", "reason", 1.0),
            "portcullis_admission_shed_total" => ("shed", "reason", 1.0),
            "portcullis_admission_transitions_total" => ("state", "to", 1.0),
            "portcullis_admission_unsaturated_bursts_total" => ("unsaturated_bursts", "none", 1.0),
            "portcullis_engine_queue_wait_seconds_count" => ("engine_steps", "class", 1.0),
            "portcullis_engine_idle_inline_total" => ("engine_inline", "class", 1.0),
            "portcullis_engine_queue_wait_seconds_sum" => ("engine_wait_us", "class", 1e6),
            _ => continue,
        };
        let which = label_value(labels, label).unwrap_or("all");
        *out.entry(format!("{prefix}:{which}")).or_insert(0) += (value * scale) as u64;
    }
    out
}

/// The value of `label` in `a="x",b="y"}`.
fn label_value<'a>(labels: &'a str, label: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{label}=\""))? + label.len() + 2;
    let rest = labels.get(start..)?;
    rest.get(..rest.find('"')?)
}

/// `after - before` over every key of `after`, zeros left out.
pub fn delta_all(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, a)| {
            let d = a.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_sums_by_label() {
        let text = "# HELP x\nportcullis_xdp_packets_total{verdict=\"drop_syn_rate\",cpu=\"0\"} 3\n\
                    portcullis_xdp_packets_total{verdict=\"drop_syn_rate\",cpu=\"1\"} 4\n\
                    portcullis_handshakes_total{listener=\"a\",result=\"ok\"} 10\n\
                    portcullis_engine_queue_wait_seconds_sum{class=\"full_ecdsa\"} 0.25\n\
                    portcullis_engine_queue_wait_seconds_count{class=\"full_ecdsa\"} 9\n\
                    portcullis_engine_idle_inline_total{class=\"full_ecdsa\"} 6\n\
                    other_total 5\n";
        let m = metrics(text);
        assert_eq!(m.get("xdp:drop_syn_rate"), Some(&7));
        assert_eq!(m.get("handshake:ok"), Some(&10));
        assert_eq!(m.get("engine_steps:full_ecdsa"), Some(&9));
        assert_eq!(m.get("engine_inline:full_ecdsa"), Some(&6));
        assert_eq!(m.get("engine_wait_us:full_ecdsa"), Some(&250_000));
        assert_eq!(m.len(), 5);
    }

    #[test]
    fn cpu_share_adds_up() {
        let a = CpuTimes::default();
        let b = CpuTimes {
            user: 10,
            system: 20,
            softirq: 30,
            irq: 0,
            idle: 40,
            other: 0,
        };
        let s = share(a, b);
        assert!((s.user - 10.0).abs() < 1e-9 && (s.softirq - 30.0).abs() < 1e-9);
        assert!(cpu(0).is_ok());
    }
}
