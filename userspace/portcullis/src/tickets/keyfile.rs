//! The key directory on disk (documented in `deploy/ticket-keys.md`).
//!
//! - `*.toml`: a portcullis key file, self-describing so one atomic rename publishes a key together with its
//!   window (no key/sidecar race):
//!   ```toml
//!   version = 1
//!   name = "<32 hex digits>"          # 16 bytes, public (first bytes of every ticket)
//!   secret = "<64 hex digits>"        # 32 bytes, AES-256-GCM
//!   encrypt_from = "2026-11-23T00:00:00Z"
//!   decrypt_until = "2026-11-24T06:00:00Z"
//!   ```
//! - any other name: an nginx-style raw file (`ssl_session_ticket_key`) of 48 or 80 random bytes, for
//!   migration: bytes 0..16 are the name, the rest feed HKDF-SHA256 for our AES-256-GCM key (so the files are
//!   accepted, but tickets nginx issued are not). In file-name order, the first encrypts, the rest decrypt.
//! - names starting with `.` are ignored (editors' and our own temporary files, Kubernetes' `..data`), as are
//!   directories. Symlinks are followed.
//! - every key file must be unreadable by group and others (mode 0600 or 0400) and owned by root or the
//!   daemon's user; it is opened once for those checks, its size and its read (`secret_file`).

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use super::key::{KeyKind, KeyName, NAME_LEN, SECRET_LEN, TicketKey, hex, unhex};
use super::keyset::KeySetError;
use crate::secret_file::{self, SecretFile};

/// Largest portcullis key file read.
const MAX_TOML: u64 = 4096;
/// Salt of the HKDF that turns an nginx key file into our AES-256-GCM key.
const NGINX_SALT: &[u8] = b"portcullis nginx ticket key v1";

/// Why a key directory cannot be used. Each names the file at fault and what to do.
#[derive(Debug, thiserror::Error)]
pub enum KeyDirError {
    /// The directory cannot be listed.
    #[error("cannot read ticket key dir {dir}: {source}; the daemon needs read access")]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key file cannot be read.
    #[error("cannot read ticket key file {file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key file can be read by group or others.
    #[error(
        "ticket key file {file} has mode {mode:04o}: group/world access to a key file is refused; chmod 600 it"
    )]
    Permissions {
        /// The file.
        file: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file owned by someone other than root or the daemon's user.
    #[error(
        "ticket key file {file} is owned by uid {owner}: a key file must be owned by root or by the daemon's user (uid {daemon}); chown it"
    )]
    Owner {
        /// The file.
        file: PathBuf,
        /// Its owner.
        owner: u32,
        /// The daemon's effective uid.
        daemon: u32,
    },
    /// A raw key file of the wrong size.
    #[error(
        "ticket key file {file} is {len} bytes: an nginx-style key file has 48 or 80 bytes, a portcullis key file ends in .toml"
    )]
    Size {
        /// The file.
        file: PathBuf,
        /// Its size.
        len: u64,
    },
    /// A portcullis key file that does not parse.
    #[error("ticket key file {file} is invalid: {reason}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The files are fine one by one, but not as a set.
    #[error("ticket key dir {dir}: {source}")]
    Set {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: KeySetError,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeFile {
    version: u32,
    name: String,
    secret: String,
    encrypt_from: String,
    decrypt_until: String,
}

impl Drop for NativeFile {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

/// Reads every key in `dir`, expired ones included (the caller filters).
pub fn read_dir(dir: &Path) -> Result<Vec<TicketKey>, KeyDirError> {
    let read_dir_err = |source| KeyDirError::ReadDir {
        dir: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir_err)? {
        let entry = entry.map_err(read_dir_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::metadata(&path).map_err(|source| KeyDirError::Read {
            file: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            continue;
        }
        files.push((name, path, meta));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut keys = Vec::new();
    let mut first_raw = true;
    for (name, path, _) in files {
        let native = name.ends_with(".toml");
        let file = read_secret(&path, native)?;
        let since = file.meta.modified().unwrap_or_else(|_| SystemTime::now());
        keys.push(parse(&path, &file.bytes, name, first_raw, since)?);
        if !native {
            first_raw = false;
        }
    }
    Ok(keys)
}

/// One open of a key file: owner, mode and size checked on it, then its bytes (zeroized on drop).
fn read_secret(path: &Path, native: bool) -> Result<SecretFile, KeyDirError> {
    use crate::secret_file::SecretFileError as E;
    // A raw file's size is checked exactly after the read (48 or 80 bytes); anything larger is not one.
    let max = if native { MAX_TOML } else { 80 };
    secret_file::read(path, max).map_err(|e| match e {
        E::Read { path, source } => KeyDirError::Read { file: path, source },
        E::Mode { path, mode } => KeyDirError::Permissions { file: path, mode },
        E::Owner {
            path,
            owner,
            daemon,
        } => KeyDirError::Owner {
            file: path,
            owner,
            daemon,
        },
        E::Shape { path, what } if native => KeyDirError::Parse {
            file: path,
            reason: format!("{what} (a portcullis key file is at most {MAX_TOML} bytes)"),
        },
        E::Shape { path, .. } => {
            let len = std::fs::metadata(&path).map_or(0, |m| m.len());
            KeyDirError::Size { file: path, len }
        }
    })
}

/// Parses the contents of key file `file` (at `path`, for messages): a portcullis key file when the name ends
/// in `.toml`, else an nginx-style raw key (`primary`: the first raw file in name order; `since`: its mtime).
/// Never panics on any bytes (fuzzed: `userspace/portcullis/fuzz`).
///
/// # Errors
/// What is wrong with the contents, naming the file; never quoting the secret.
pub fn parse(
    path: &Path,
    bytes: &[u8],
    file: String,
    primary: bool,
    since: SystemTime,
) -> Result<TicketKey, KeyDirError> {
    if file.ends_with(".toml") {
        read_native(path, bytes, file)
    } else {
        read_raw(path, bytes, file, primary, since)
    }
}

fn read_native(path: &Path, bytes: &[u8], file: String) -> Result<TicketKey, KeyDirError> {
    let parse_err = |reason: String| KeyDirError::Parse {
        file: path.to_owned(),
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| parse_err("not UTF-8".into()))?;
    // The parser's message could quote the secret line: report only where it failed.
    let parsed: NativeFile = toml::from_str(text).map_err(|e| {
        parse_err(match e.span() {
            Some(span) => format!(
                "not a portcullis key file (TOML error at byte {}; expected version, name, secret, encrypt_from, decrypt_until)",
                span.start
            ),
            None => "not a portcullis key file (expected version, name, secret, encrypt_from, decrypt_until)".into(),
        })
    })?;
    if parsed.version != 1 {
        return Err(parse_err(format!(
            "version {} is not supported (this build reads version 1)",
            parsed.version
        )));
    }
    let name = unhex::<NAME_LEN>(&parsed.name)
        .ok_or_else(|| parse_err("`name` must be 32 hex digits (16 bytes)".into()))?;
    let secret = Zeroizing::new(
        unhex::<SECRET_LEN>(&parsed.secret)
            .ok_or_else(|| parse_err("`secret` must be 64 hex digits (32 bytes)".into()))?,
    );
    let time = |field: &str, value: &str| {
        humantime::parse_rfc3339(value)
            .map_err(|e| parse_err(format!("`{field}` is not an RFC 3339 UTC time: {e}")))
    };
    let from = time("encrypt_from", &parsed.encrypt_from)?;
    let until = time("decrypt_until", &parsed.decrypt_until)?;
    if until <= from {
        return Err(parse_err(
            "`decrypt_until` must be after `encrypt_from`".into(),
        ));
    }
    Ok(TicketKey::new(
        KeyName(name),
        secret,
        KeyKind::Windowed,
        (Some(from), Some(until)),
        from,
        file,
    ))
}

fn read_raw(
    path: &Path,
    bytes: &[u8],
    file: String,
    primary: bool,
    since: SystemTime,
) -> Result<TicketKey, KeyDirError> {
    let size_err = |len| KeyDirError::Size {
        file: path.to_owned(),
        len,
    };
    let (name, rest) = bytes
        .split_at_checked(NAME_LEN)
        .ok_or_else(|| size_err(bytes.len() as u64))?;
    if rest.len() != 32 && rest.len() != 64 {
        return Err(size_err(bytes.len() as u64));
    }
    let name: [u8; NAME_LEN] = name.try_into().map_err(|_| size_err(bytes.len() as u64))?;
    let secret = derive_from_nginx(rest).ok_or_else(|| KeyDirError::Parse {
        file: path.to_owned(),
        reason: "key derivation failed".into(),
    })?;
    Ok(TicketKey::new(
        KeyName(name),
        secret,
        KeyKind::Unwindowed { primary },
        (None, None),
        since,
        file,
    ))
}

fn derive_from_nginx(material: &[u8]) -> Option<Zeroizing<[u8; SECRET_LEN]>> {
    use ring::hkdf;
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, NGINX_SALT).extract(material);
    let mut out = Zeroizing::new([0u8; SECRET_LEN]);
    prk.expand(&[b"aes-256-gcm"], hkdf::HKDF_SHA256)
        .ok()?
        .fill(&mut out[..])
        .ok()?;
    Some(out)
}

/// Per visible entry: name, size, mtime (s, ns), inode, mode.
pub type Fingerprint = Vec<(String, u64, i64, i64, u64, u32)>;

/// A cheap summary of the directory (names, sizes, mtimes, inodes, modes of visible entries, symlinks
/// followed): when it changes, the directory is read again.
pub fn fingerprint(dir: &Path) -> std::io::Result<Fingerprint> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let m = std::fs::metadata(entry.path());
        let (len, mt, mtn, ino, mode) = match m {
            Ok(m) => (m.len(), m.mtime(), m.mtime_nsec(), m.ino(), m.mode()),
            Err(_) => (u64::MAX, 0, 0, 0, 0),
        };
        out.push((name, len, mt, mtn, ino, mode));
    }
    out.sort();
    Ok(out)
}

/// Writes `key` (windowed) into `dir` as a portcullis key file, mode 0600, atomically (temporary dot-file,
/// fsync, rename), and returns its path. The file name sorts by `encrypt_from`.
pub fn write_native(dir: &Path, key: &TicketKey) -> std::io::Result<PathBuf> {
    let (Some(from), Some(until)) = (key.encrypt_from, key.decrypt_until) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "only windowed keys are written",
        ));
    };
    let from_text = humantime::format_rfc3339_seconds(from).to_string();
    let compact: String = from_text
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let file = format!("{compact}-{}.toml", &key.name.hex()[..8]);
    let text = Zeroizing::new(format!(
        "# portcullis session-ticket key. SECRET: mode 0600, never commit or log it.\n\
         # Encrypts from encrypt_from (the newest begun key wins), decrypts until decrypt_until.\n\
         version = 1\n\
         name = \"{}\"\n\
         secret = \"{}\"\n\
         encrypt_from = \"{from_text}\"\n\
         decrypt_until = \"{}\"\n",
        key.name.hex(),
        Zeroizing::new(hex(key.secret())).as_str(),
        humantime::format_rfc3339_seconds(until),
    ));
    let tmp = dir.join(format!(".{file}.tmp"));
    let path = dir.join(&file);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = f.write_all(text.as_bytes()).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir()
                .join(format!("portcullis-keyfile-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("mkdir");
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn write(dir: &Path, name: &str, bytes: &[u8], mode: u32) {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn windowed(from: SystemTime) -> TicketKey {
        let r = TicketKey::random(false).expect("rng");
        TicketKey::new(
            r.name,
            Zeroizing::new(*r.secret()),
            KeyKind::Windowed,
            (Some(from), Some(from + Duration::from_secs(86400))),
            from,
            String::new(),
        )
    }

    #[test]
    fn native_files_round_trip() {
        let d = Dir::new("native");
        let from = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let k = windowed(from);
        let path = write_native(&d.0, &k).expect("write");
        assert_eq!(
            std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        assert!(path.to_string_lossy().ends_with(".toml"));
        let keys = read_dir(&d.0).expect("read");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].name, k.name);
        assert_eq!(keys[0].secret(), k.secret());
        assert_eq!(keys[0].encrypt_from, Some(from));
        assert_eq!(keys[0].kind, KeyKind::Windowed);
    }

    #[test]
    fn nginx_files_are_accepted_first_encrypts() {
        let d = Dir::new("nginx");
        write(&d.0, "a-current.key", &[1u8; 80], 0o600);
        write(&d.0, "b-previous.key", &[2u8; 48], 0o400);
        write(&d.0, ".editor.swp", b"ignored", 0o644);
        std::fs::create_dir(d.0.join("..data")).expect("mkdir");
        let keys = read_dir(&d.0).expect("read");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].name.0, [1u8; 16]);
        assert_eq!(keys[0].kind, KeyKind::Unwindowed { primary: true });
        assert_eq!(keys[1].kind, KeyKind::Unwindowed { primary: false });
        // Deterministic derivation: two nodes reading the same file agree.
        assert_eq!(read_dir(&d.0).expect("read")[0].secret(), keys[0].secret());
        assert_ne!(keys[0].secret(), &[1u8; 32]);
    }

    #[test]
    fn bad_files_are_named() {
        let cases: [(&str, &[u8], u32, &str); 5] = [
            ("k", &[0u8; 47], 0o600, "48 or 80 bytes"),
            ("k", &[0u8; 48], 0o640, "mode 0640"),
            ("k", &[0u8; 80], 0o604, "mode 0604"),
            ("k.toml", b"version = 1\nname = \"zz\"\n", 0o600, "not a portcullis key file"),
            (
                "k.toml",
                b"version = 1\nname = \"00000000000000000000000000000000\"\nsecret = \"00\"\nencrypt_from = \"2026-01-01T00:00:00Z\"\ndecrypt_until = \"2026-01-02T00:00:00Z\"\n",
                0o600,
                "`secret` must be 64 hex digits",
            ),
        ];
        for (i, (name, bytes, mode, want)) in cases.into_iter().enumerate() {
            let d = Dir::new(&format!("bad{i}"));
            write(&d.0, name, bytes, mode);
            let err = read_dir(&d.0).expect_err(want).to_string();
            assert!(err.contains(want), "{want}: {err}");
            assert!(err.contains(name), "{err}");
        }
        let err = read_dir(Path::new("/nonexistent/portcullis-keys"))
            .expect_err("missing")
            .to_string();
        assert!(err.contains("cannot read ticket key dir"), "{err}");
    }
}
