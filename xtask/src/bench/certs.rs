//! The certificates every server uses: one ECDSA P-256 and one RSA-2048, self-signed for `localhost`, made with
//! the openssl CLI under `target/bench/certs/` (reused when present).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::cmd;

/// Which key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA P-256.
    Ecdsa,
    /// RSA-2048.
    Rsa,
    /// RSA-4096: a signature costs the server several milliseconds, the client's verification a fraction of
    /// one, so one client core can offer many times what one server core can sign.
    Rsa4096,
}

impl KeyType {
    /// File stem and label.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Ecdsa => "ecdsa",
            KeyType::Rsa => "rsa2048",
            KeyType::Rsa4096 => "rsa4096",
        }
    }
}

/// A certificate and its key as PEM files, and both in one file (HAProxy's `crt`).
#[derive(Clone, Debug)]
pub struct Cert {
    /// The key type.
    pub key_type: KeyType,
    /// Certificate PEM.
    pub cert: PathBuf,
    /// Private key PEM (PKCS#8).
    pub key: PathBuf,
    /// Certificate then key.
    pub combined: PathBuf,
}

/// Makes (or reuses) the certificate of `key_type` under `out/certs`.
pub fn ensure(out: &Path, key_type: KeyType) -> Result<Cert> {
    let dir = out.join("certs");
    std::fs::create_dir_all(&dir)?;
    let name = key_type.name();
    let cert = Cert {
        key_type,
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
        combined: dir.join(format!("{name}.combined.pem")),
    };
    if !cert.combined.is_file() {
        let mut c = Command::new("openssl");
        c.args([
            "req",
            "-x509",
            "-nodes",
            "-days",
            "365",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost"]);
        match key_type {
            KeyType::Ecdsa => c.args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
            KeyType::Rsa => c.args(["-newkey", "rsa:2048"]),
            KeyType::Rsa4096 => c.args(["-newkey", "rsa:4096"]),
        };
        c.arg("-keyout").arg(&cert.key).arg("-out").arg(&cert.cert);
        cmd::run(&mut c).context("making the benchmark certificate with openssl")?;
        let combined = format!(
            "{}{}",
            std::fs::read_to_string(&cert.cert)?,
            std::fs::read_to_string(&cert.key)?
        );
        std::fs::write(&cert.combined, combined)?;
    }
    // portcullis refuses a key file that group or others may read (as nginx's and HAProxy's users should).
    for private in [&cert.key, &cert.combined] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(private, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 600 {}", private.display()))?;
    }
    Ok(cert)
}
