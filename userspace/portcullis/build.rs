//! Picks the BPF object the daemon embeds (see `src/xdp/object.rs`).
//!
//! 1. `PORTCULLIS_BPF_OBJECT`, an absolute path, as `cargo xtask build` sets it after building the BPF crate.
//! 2. Else `<workspace>/target/bpf/bpfel-unknown-none/release/portcullis-ebpf`, where that build puts it.
//! 3. Else an empty object: a plain `cargo build` without the BPF toolchain keeps working, and the daemon refuses
//!    to start XDP with an error that says how to build the object.
//!
//! The BPF crate is not built from here: a cargo build started by a build script on the same target dir blocks
//! on cargo's lock, and it needs a different compiler (see `shared/TOOLCHAIN.md`).

use std::{
    env,
    path::{Path, PathBuf},
};

/// Where `cargo xtask build` puts the BPF object, relative to the workspace root.
const DEFAULT_OBJECT: &str = "target/bpf/bpfel-unknown-none/release/portcullis-ebpf";

/// Environment variable naming the BPF object to embed.
const OBJECT_ENV: &str = "PORTCULLIS_BPF_OBJECT";

fn main() -> Result<(), String> {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed={OBJECT_ENV}");
    let manifest_dir = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").ok_or("cargo did not set CARGO_MANIFEST_DIR")?,
    );
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("cargo did not set OUT_DIR")?);

    let object = match env::var_os(OBJECT_ENV).filter(|v| !v.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(format!(
                    "{OBJECT_ENV}={} is not a file; build the BPF object first (`cargo xtask build` does both), \
                     or unset {OBJECT_ENV} to build without XDP",
                    path.display()
                ));
            }
            Some(path)
        }
        None => {
            // userspace/portcullis -> workspace root.
            let fallback = manifest_dir.join("../..").join(DEFAULT_OBJECT);
            fallback.is_file().then_some(fallback)
        }
    };

    let embedded = match object {
        Some(path) => {
            // Watching a path that does not exist would rerun this script on every build, so only an existing
            // object is watched; building it later needs `cargo xtask build` (which sets the variable) or a touch
            // of this file.
            println!("cargo::rerun-if-changed={}", path.display());
            path.canonicalize()
                .map_err(|e| format!("cannot resolve BPF object path {}: {e}", path.display()))?
        }
        None => {
            println!(
                "cargo::warning=building portcullis without the BPF object: XDP will refuse to start. \
                 Build with `cargo xtask build` (or set {OBJECT_ENV})."
            );
            let empty = out_dir.join("portcullis-ebpf.empty");
            write_if_changed(&empty, b"")?;
            empty
        }
    };
    // Read by `include_bytes_aligned!` in src/xdp/object.rs.
    println!(
        "cargo::rustc-env=PORTCULLIS_BPF_OBJECT_EMBEDDED={}",
        embedded.display()
    );
    Ok(())
}

/// Writes `contents` unless the file already holds them, so its mtime (and the crate's rebuild) stays put.
fn write_if_changed(path: &Path, contents: &[u8]) -> Result<(), String> {
    if std::fs::read(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    std::fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
