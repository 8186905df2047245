//! A per-test directory on bpffs for the daemon's pins, so parallel tests never share (or delete) each other's
//! maps.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// `/sys/fs/bpf/portcullis-<tag>-<pid>-<n>`, removed (with anything left in it) on drop. Not created here: the
/// daemon creates it, and must remove what it pinned when it stops.
#[derive(Debug)]
pub struct BpfDir(PathBuf);

impl BpfDir {
    /// A fresh path; anything a crashed earlier run left there is removed.
    pub fn new(tag: &str) -> BpfDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/portcullis-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        BpfDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for BpfDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
