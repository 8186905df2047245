//! Reading a secret file (a TLS private key, a ticket key): one open, then the owner, the mode and the size
//! checked on that open file (no window between a check and the read), the bytes read into a buffer that is
//! zeroized when dropped.
//!
//! A secret file must be a regular file (symlinks are followed: Kubernetes Secret volumes are symlinks),
//! owned by root, by the user the daemon runs as or by the one it drops to ([`set_daemon_user`]), and unreadable
//! by group and others (mode 0600 or 0400).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use zeroize::Zeroizing;

/// Why a secret file was refused; each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The file cannot be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Group or others may access it.
    #[error(
        "{path} has mode {mode:04o}: group/world access to a key file is refused; chmod 600 it (or 400)"
    )]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Owned by someone who is neither root nor the daemon's user.
    #[error(
        "{path} is owned by uid {owner}: a key file must be owned by root or by the daemon's user (uid {daemon}); chown it"
    )]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The daemon's effective uid.
        daemon: u32,
    },
    /// Not a regular file, or larger than any key of its kind.
    #[error("{path} is {what}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// What it is instead (`a directory`, `12345678 bytes, more than the 1048576 a key file may have`).
        what: String,
    },
}

impl SecretFileError {
    /// The file at fault.
    pub fn path(&self) -> &Path {
        match self {
            Self::Read { path, .. }
            | Self::Mode { path, .. }
            | Self::Owner { path, .. }
            | Self::Shape { path, .. } => path,
        }
    }
}

/// The uid the daemon drops to (`[process] user`), when it starts as root and drops; `u32::MAX` when unset.
static RUN_AS: AtomicU32 = AtomicU32::new(u32::MAX);

/// Accepts secret files owned by `uid` too, the user the daemon is about to become: the key it reads as root at
/// start is the one it reads again as that user on reload or after an upgrade, so that user must own it (a
/// root-owned 0600 key would load at start and fail every later reload).
pub fn set_daemon_user(uid: u32) {
    RUN_AS.store(uid, Ordering::Relaxed);
}

/// The daemon's user: the one it drops to when set, else its effective uid.
fn daemon_user() -> u32 {
    match RUN_AS.load(Ordering::Relaxed) {
        u32::MAX => nix::unistd::Uid::effective().as_raw(),
        uid => uid,
    }
}

/// A secret file's bytes (zeroized on drop) and its metadata as read from the open file.
pub struct SecretFile {
    /// The contents.
    pub bytes: Zeroizing<Vec<u8>>,
    /// `fstat` of the file that was read.
    pub meta: std::fs::Metadata,
}

/// Reads `path` if it is a regular file of at most `max_len` bytes, owned by root, the daemon's effective user
/// or the user it drops to, with no group or other permission bits.
///
/// # Errors
/// The first check that fails, naming the file.
pub fn read(path: &Path, max_len: u64) -> Result<SecretFile, SecretFileError> {
    let read_err = |source| SecretFileError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    let shape = |what: String| SecretFileError::Shape {
        path: path.to_owned(),
        what,
    };
    if !meta.is_file() {
        return Err(shape("not a regular file".to_owned()));
    }
    let daemon = daemon_user();
    if meta.uid() != 0
        && meta.uid() != daemon
        && meta.uid() != nix::unistd::Uid::effective().as_raw()
    {
        return Err(SecretFileError::Owner {
            path: path.to_owned(),
            owner: meta.uid(),
            daemon,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Mode {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() > max_len {
        return Err(shape(format!(
            "{} bytes, more than the {max_len} a key file of this kind may have",
            meta.len()
        )));
    }
    // Room for exactly the stat'ed size and one byte more: the buffer never reallocates (which would leave an
    // unzeroized copy behind), and a file that grew since the stat is noticed.
    let len = usize::try_from(meta.len()).unwrap_or(usize::MAX - 1);
    let mut bytes = Zeroizing::new(Vec::with_capacity(len + 1));
    (&mut file)
        .take(meta.len() + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() > len {
        return Err(shape(
            "changing while it is read; retry once it is written".to_owned(),
        ));
    }
    Ok(SecretFile { bytes, meta })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Self {
            let d = std::env::temp_dir()
                .join(format!("portcullis-secret-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).expect("mkdir");
            Self(d)
        }

        fn file(&self, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, bytes).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_private_file_is_read_whole() {
        let d = Dir::new("ok");
        for mode in [0o600, 0o400] {
            let p = d.file("k", b"secret", mode);
            let f = read(&p, 64).expect("readable");
            assert_eq!(&f.bytes[..], b"secret");
        }
    }

    #[test]
    fn group_or_world_access_is_refused_naming_the_mode() {
        let d = Dir::new("mode");
        for mode in [0o640, 0o604, 0o644, 0o660] {
            let p = d.file("k", b"secret", mode);
            let err = read(&p, 64).err().expect("refused");
            assert!(
                matches!(err, SecretFileError::Mode { mode: m, .. } if m == mode),
                "{err}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
            assert_eq!(err.path(), p);
        }
    }

    #[test]
    fn a_foreign_owner_is_refused_naming_the_owner() {
        let d = Dir::new("owner");
        let p = d.file("k", b"secret", 0o600);
        let me = nix::unistd::Uid::effective();
        // Only root can give a file away; as another user, own files are the only ones we can make.
        if !me.is_root() {
            eprintln!("SKIP part: chown needs root");
            return;
        }
        nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(4242)), None).expect("chown");
        let err = read(&p, 64).err().expect("refused");
        assert!(
            matches!(err, SecretFileError::Owner { owner: 4242, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("uid 4242"), "{err}");
        // The user a root daemon drops to may own it: it reads the key again as that user on reload.
        nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(4343)), None).expect("chown");
        assert!(read(&p, 64).is_err(), "uid 4343 is nobody's yet");
        set_daemon_user(4343);
        let ok = read(&p, 64);
        set_daemon_user(u32::MAX);
        assert!(ok.is_ok(), "the [process] user's key refused");
    }

    #[test]
    fn oversized_and_non_regular_files_are_refused() {
        let d = Dir::new("shape");
        let p = d.file("k", &[0u8; 100], 0o600);
        assert!(matches!(read(&p, 99), Err(SecretFileError::Shape { .. })));
        assert!(matches!(read(&d.0, 99), Err(SecretFileError::Shape { .. })));
        assert!(matches!(
            read(&d.0.join("missing"), 99),
            Err(SecretFileError::Read { .. })
        ));
    }
}
