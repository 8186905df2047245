//! The pin directory on bpffs and the program and map pins the guard creates (and removes again, except the
//! persistent state maps).

use std::{
    io,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    maps::{Map, MapData},
    programs::Xdp,
};
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

/// The pins one guard created, removed by [`Pins::remove_all`] in reverse order.
#[derive(Debug, Default)]
pub(crate) struct Pins {
    /// Map pin files this guard created.
    files: Vec<PathBuf>,
    /// The pin directory, when this guard created it (removed if empty after the files).
    created_dir: Option<PathBuf>,
    /// Taking over from a running daemon (`upgrade`): its pins are replaced as expected, not as stale ones.
    pub(crate) replacing_predecessor: bool,
}

impl Pins {
    /// Creates `dir` if needed (and remembers that it did) and checks it is on a BPF filesystem.
    pub(crate) fn prepare_dir(&mut self, dir: &Path) -> anyhow::Result<()> {
        if !dir.exists() {
            let parent_on_bpffs = dir.parent().is_some_and(is_on_bpffs);
            if !parent_on_bpffs {
                bail!(
                    "XDP pin_dir {} does not exist and its parent is not on a BPF filesystem; use a directory under \
                     a bpffs mount such as /sys/fs/bpf (mount one with `mount -t bpf bpf /sys/fs/bpf`)",
                    dir.display()
                );
            }
            std::fs::create_dir(dir).with_context(|| {
                format!(
                    "cannot create XDP pin_dir {}; the daemon needs root or write access there",
                    dir.display()
                )
            })?;
            self.created_dir = Some(dir.to_path_buf());
        }
        if !is_on_bpffs(dir) {
            bail!(
                "XDP pin_dir {} is not on a BPF filesystem, so maps cannot be pinned there; use a directory under a \
                 bpffs mount such as /sys/fs/bpf (mount one with `mount -t bpf bpf /sys/fs/bpf`)",
                dir.display()
            );
        }
        Ok(())
    }

    /// Pins `map` at `dir/name`, replacing a stale pin left by a run that did not clean up.
    pub(crate) fn pin_map(&mut self, map: &Map, dir: &Path, name: &str) -> anyhow::Result<()> {
        let path = clear_stale(dir, name, self.replacing_predecessor)?;
        map.pin(&path)
            .with_context(|| format!("cannot pin XDP map `{name}` at {}", path.display()))?;
        self.files.push(path);
        Ok(())
    }

    /// Pins the loaded `program` at `dir/name` (for `bpftool prog show|run pinned`), replacing a stale pin.
    pub(crate) fn pin_program(
        &mut self,
        program: &mut Xdp,
        dir: &Path,
        name: &str,
    ) -> anyhow::Result<()> {
        self.pin_with(dir, name, |path| {
            program
                .pin(path)
                .with_context(|| format!("cannot pin XDP program `{name}` at {}", path.display()))
        })
    }

    /// Pins something else at `dir/name` with `pin` (aya's program types have no common pin trait), replacing a
    /// stale pin; the file is removed with the others.
    pub(crate) fn pin_with(
        &mut self,
        dir: &Path,
        name: &str,
        pin: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let path = clear_stale(dir, name, self.replacing_predecessor)?;
        pin(&path)?;
        self.files.push(path);
        Ok(())
    }

    /// Gives up the pins: a successor replaced them, so they are not this guard's to remove (`upgrade`).
    pub(crate) fn forget(&mut self) {
        self.files.clear();
        self.created_dir = None;
    }

    /// The pin files created so far.
    pub(crate) fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Removes every pin this guard created, and the directory if it created it and it is now empty. Tries all of
    /// them and reports the first failure.
    pub(crate) fn remove_all(&mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        for path in self.files.drain(..).rev() {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed XDP map pin"),
                // Someone (an operator, a newer daemon) removed it already: the goal is reached.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    let e = anyhow::Error::new(e)
                        .context(format!("cannot remove XDP map pin {}", path.display()));
                    tracing::warn!(error = %format!("{e:#}"), "XDP pin cleanup");
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(dir) = self.created_dir.take() {
            match std::fs::remove_dir(&dir) {
                Ok(()) => tracing::info!(path = %dir.display(), "removed XDP pin_dir"),
                // Not empty: something else pinned there since; leave it to its owner.
                Err(e) => tracing::debug!(path = %dir.display(), error = %e, "kept XDP pin_dir"),
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A map whose pin outlives the daemon, so a restart reuses it: the SYN budgets and the blocklist survive.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Persistent {
    /// Map (and pin file) name.
    pub(crate) name: &'static str,
    /// Key size the program expects, in bytes.
    pub(crate) key_size: u32,
    /// Value size the program expects, in bytes.
    pub(crate) value_size: u32,
}

/// Makes `dir/name` safe to reuse for `map`: a pin of another shape (left by an older daemon with another map
/// layout) is removed with a warning, since reusing it would corrupt both. Returns the pin path, which the loader
/// then opens if it exists or creates and pins if not.
pub(crate) fn reusable_pin(dir: &Path, map: Persistent) -> anyhow::Result<PathBuf> {
    let path = dir.join(map.name);
    if !path.exists() {
        return Ok(path);
    }
    let shape = MapData::from_pin(&path)
        .and_then(|data| data.info())
        .map(|info| (info.key_size(), info.value_size()));
    match shape {
        Ok(shape) if shape == (map.key_size, map.value_size) => {
            tracing::info!(path = %path.display(), "reusing pinned XDP map: its state survives the restart");
        }
        other => {
            tracing::warn!(
                path = %path.display(),
                found = ?other.map_err(|e| e.to_string()),
                expected = ?(map.key_size, map.value_size),
                "pinned XDP map has another layout (an older daemon?); replacing it, its entries are lost"
            );
            std::fs::remove_file(&path).with_context(|| {
                format!(
                    "cannot remove the incompatible XDP map pin {}",
                    path.display()
                )
            })?;
        }
    }
    Ok(path)
}

/// `dir/name`, with a stale pin left by a run that did not clean up removed (and a warning logged).
fn clear_stale(dir: &Path, name: &str, predecessor: bool) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    match std::fs::remove_file(&path) {
        Ok(()) if predecessor => {
            tracing::debug!(path = %path.display(), "replaced the running daemon's pin");
        }
        Ok(()) => tracing::warn!(
            path = %path.display(),
            "replaced a stale XDP pin (a previous run did not detach cleanly, or another daemon uses the same \
             pin_dir: give each daemon its own)"
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot remove the stale XDP pin {}", path.display()));
        }
    }
    Ok(path)
}

/// Where the bpf_link of `interface` is pinned while a successor takes it over.
pub(crate) fn link_pin(dir: &Path, interface: &str) -> PathBuf {
    dir.join(format!("link_{interface}"))
}

/// Whether `path` is on a BPF filesystem.
fn is_on_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}
