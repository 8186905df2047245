//! Where things live in the workspace: its root, the target directories, the BPF object, the daemon binary.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// The cargo profile of the userspace build (the BPF object is always built in release).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// `cargo build`: artifacts in `target/debug`.
    Debug,
    /// `cargo build --release`: artifacts in `target/release`.
    Release,
}

impl Profile {
    /// `Release` when `release` is set (the `--release` flag), `Debug` otherwise.
    pub fn from_release_flag(release: bool) -> Self {
        if release { Self::Release } else { Self::Debug }
    }

    /// The directory under the target dir that holds this profile's artifacts.
    pub fn dir_name(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Release => "release",
        }
    }

    /// The cargo flag selecting this profile, if any.
    pub fn cargo_flag(self) -> Option<&'static str> {
        match self {
            Self::Debug => None,
            Self::Release => Some("--release"),
        }
    }
}

/// Paths of the workspace xtask belongs to.
#[derive(Clone, Debug)]
pub struct Workspace {
    root: PathBuf,
    target: PathBuf,
}

impl Workspace {
    /// The workspace that contains this xtask crate: the parent of its manifest directory, taken at compile time
    /// so the binary also works when run directly rather than through `cargo xtask`.
    ///
    /// The target dir is `$CARGO_TARGET_DIR` when set (as cargo resolves it: relative to the current directory),
    /// `<root>/target` otherwise, so the paths handed to tests match where cargo really put the binaries.
    pub fn locate() -> Result<Self> {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest_dir
            .parent()
            .with_context(|| {
                format!(
                    "xtask manifest dir {} has no parent",
                    manifest_dir.display()
                )
            })?
            .to_path_buf();
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => std::path::absolute(&dir).with_context(|| {
                format!(
                    "cannot make CARGO_TARGET_DIR={} absolute; unset it or give an absolute path",
                    dir.display()
                )
            })?,
            None => root.join("target"),
        };
        Ok(Self { root, target })
    }

    /// The workspace root (holds the root `Cargo.toml`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The target dir of the userspace build (`$CARGO_TARGET_DIR` or `<root>/target`).
    pub fn target_dir(&self) -> &Path {
        &self.target
    }

    /// The BPF programs crate, built by Debian's toolchain from its own directory.
    pub fn bpf_crate_dir(&self) -> PathBuf {
        self.root.join("ebpf/portcullis-ebpf")
    }

    /// The separate target dir of the BPF build: sharing the userspace one would make a cargo started from a
    /// build.rs block on cargo's own lock, and mixes artifacts of two different compilers.
    pub fn bpf_target_dir(&self) -> PathBuf {
        self.target.join("bpf")
    }

    /// The BPF ELF object the daemon embeds (the `portcullis-ebpf` bin, always a release build).
    pub fn bpf_object(&self) -> PathBuf {
        self.bpf_target_dir()
            .join("bpfel-unknown-none/release/portcullis-ebpf")
    }

    /// The daemon binary of `profile`.
    pub fn daemon_bin(&self, profile: Profile) -> PathBuf {
        self.target.join(profile.dir_name()).join("portcullis")
    }

    /// The state dir `cargo xtask run` gives the daemon (its self-signed certificate lands there).
    pub fn state_dir(&self) -> PathBuf {
        self.target.join("portcullis-state")
    }
}
