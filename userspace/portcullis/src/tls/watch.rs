//! Noticing a change of the certificate, key and OCSP files without a signal (`[tls] watch_interval`).
//!
//! A poll of `stat` on each file, following symlinks: the resolved target's device, inode, mtime and size. That
//! sees an edit in place, a `mv` over the file, and a Kubernetes Secret update, which writes a new
//! `..2026_12_06_...` directory and swaps the `..data` symlink the visible names point through (a new inode
//! although the path is the same). A poll needs no dependency, no inotify watch per directory, and works on
//! every filesystem (inotify misses changes on NFS and some overlay setups).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::config::TlsConfig;

/// The files a reload reads for the certificates: each one's chain, key and OCSP response.
pub fn paths(tls: &TlsConfig) -> Vec<PathBuf> {
    tls.certificates
        .iter()
        .flat_map(|c| [Some(&c.cert), Some(&c.key), c.ocsp.as_ref()])
        .flatten()
        .cloned()
        .collect()
}

/// What `stat` said of each watched file (`None`: missing or unreadable), in order; two equal stamps mean
/// nothing observable changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp(Vec<(PathBuf, Option<FileId>)>);

/// A file's identity and version as `stat` (through symlinks) sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    mtime_ns: i128,
    size: u64,
}

impl Stamp {
    /// Stats every path now.
    pub fn of(paths: &[PathBuf]) -> Self {
        Self(
            paths
                .iter()
                .map(|p| {
                    let id = std::fs::metadata(p).ok().map(|m| FileId {
                        dev: m.dev(),
                        ino: m.ino(),
                        mtime_ns: i128::from(m.mtime()) * 1_000_000_000
                            + i128::from(m.mtime_nsec()),
                        size: m.len(),
                    });
                    (p.clone(), id)
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_swap_an_edit_and_a_removal_change_the_stamp() {
        let dir = std::env::temp_dir().join(format!("portcullis-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("..v1")).expect("mkdir");
        std::fs::create_dir_all(dir.join("..v2")).expect("mkdir");
        std::fs::write(dir.join("..v1/tls.crt"), "one").expect("write");
        std::fs::write(dir.join("..v2/tls.crt"), "two").expect("write");
        std::os::unix::fs::symlink("..v1", dir.join("..data")).expect("symlink");
        std::os::unix::fs::symlink("..data/tls.crt", dir.join("tls.crt")).expect("symlink");
        let paths = vec![dir.join("tls.crt")];
        let first = Stamp::of(&paths);
        assert_eq!(first, Stamp::of(&paths), "nothing changed");
        // Kubernetes: a new ..data symlink renamed over the old one.
        std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).expect("symlink");
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("rename");
        let swapped = Stamp::of(&paths);
        assert_ne!(first, swapped, "a ..data swap went unnoticed");
        std::fs::write(dir.join("..v2/tls.crt"), "two, longer").expect("write");
        let edited = Stamp::of(&paths);
        assert_ne!(swapped, edited, "an edit went unnoticed");
        std::fs::remove_file(dir.join("..v2/tls.crt")).expect("rm");
        assert_ne!(edited, Stamp::of(&paths), "a removal went unnoticed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_watched_files_are_each_pair_and_its_ocsp_and_the_interval_is_bounded() {
        let c = crate::config::Config::parse(
            "[tls]\nwatch_interval = \"250ms\"\n[[tls.certificates]]\ncert = \"a.pem\"\nkey = \"a.key\"\n\
             ocsp = \"a.ocsp\"\n[[tls.certificates]]\ncert = \"b.pem\"\nkey = \"b.key\"\n",
        )
        .expect("parses");
        assert_eq!(c.tls.watch_interval, std::time::Duration::from_millis(250));
        let names: Vec<PathBuf> = ["a.pem", "a.key", "a.ocsp", "b.pem", "b.key"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(paths(&c.tls), names);
        let too_long = crate::config::Config::parse("[tls]\nwatch_interval = \"2h\"\n")
            .expect("parses")
            .with_defaults()
            .validate()
            .expect_err("2h is refused");
        assert!(
            too_long.to_string().contains("tls.watch_interval"),
            "{too_long}"
        );
        assert_eq!(
            crate::config::Config::default().tls.watch_interval,
            std::time::Duration::from_secs(5)
        );
    }
}
