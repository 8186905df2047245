//! A cgroup v1 CPU quota (`/sys/fs/cgroup/cpu/<name>/cpu.cfs_quota_us`) that makes every server under test
//! equally smaller, so that one client core can offer 5x its capacity.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

/// Where the cgroup v1 cpu controller is mounted here.
pub const CPU_ROOT: &str = "/sys/fs/cgroup/cpu";

/// The CFS period used, µs.
pub const PERIOD_US: u64 = 100_000;

/// A cgroup with a CPU quota; removed on drop (once its processes are gone).
#[derive(Debug)]
pub struct CpuQuota {
    dir: PathBuf,
}

impl CpuQuota {
    /// Creates (or reuses) `/sys/fs/cgroup/cpu/<name>` limited to `percent` of one CPU.
    pub fn create(name: &str, percent: u64) -> Result<Self> {
        let root = Path::new(CPU_ROOT);
        if !root.join("cpu.cfs_quota_us").is_file() {
            bail!(
                "{CPU_ROOT}/cpu.cfs_quota_us does not exist: the storm needs the cgroup v1 cpu controller \
                 mounted there (and root)"
            );
        }
        let dir = root.join(name);
        if !dir.is_dir() {
            std::fs::create_dir(&dir)
                .with_context(|| format!("cannot create cgroup {}; are we root?", dir.display()))?;
        }
        write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
        write(
            &dir.join("cpu.cfs_quota_us"),
            &(PERIOD_US * percent / 100).to_string(),
        )?;
        Ok(Self { dir })
    }

    /// The `cgroup.procs` file a process writes its PID into to join.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        // Fails while processes remain; the servers are stopped before the quota is dropped.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value)
        .with_context(|| format!("cannot write {value} to {}", path.display()))
}
