//! Loading certificate chains and keys from PEM files, and the self-signed certificate used on embedded
//! defaults.
//!
//! Every error names the file at fault and what is wrong with it: these are operator errors (exit code 2).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A certificate could not be loaded; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A PEM file could not be read or holds no usable item.
    #[error("cannot load {what} from {path}: {reason}")]
    File {
        /// `certificate chain` or `private key`.
        what: &'static str,
        /// The file at fault.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The private key file is refused before it is parsed (owner, mode, size) or cannot be read.
    #[error("unusable private key: {0}")]
    KeyFile(#[from] crate::secret_file::SecretFileError),
    /// The key does not belong to the certificate, or is of an unsupported type.
    #[error("certificate {cert} and key {key} do not go together: {reason}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// Generating or storing the self-signed certificate failed.
    #[error("cannot create the self-signed certificate in {dir}: {reason}")]
    SelfSigned {
        /// The state directory.
        dir: PathBuf,
        /// What went wrong; usually permissions on the state directory.
        reason: String,
    },
}

/// A loaded certificate with the names it answers for.
#[derive(Debug)]
pub struct LoadedCert {
    /// The chain and signing key, ready for rustls.
    pub key: Arc<CertifiedKey>,
    /// DNS names (possibly `*.` wildcards) from the config or from the certificate's subjectAltName.
    pub names: Vec<String>,
    /// Where it came from, for logs.
    pub source: PathBuf,
}

/// Largest private key file read: a PEM RSA-8192 key is under 7 KiB.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Loads a chain and key, checks that they match, and collects the names the certificate is for:
/// `server_names` when given, else the DNS subjectAltNames of the leaf. The key file must be owned by root or
/// the daemon's user and private (`secret_file`); our copies of its bytes are zeroized once loaded (the copy
/// handed to the crypto provider is dropped there: aws-lc's own key object is cleansed when freed).
pub fn load(
    cert_path: &Path,
    key_path: &Path,
    server_names: &[String],
    provider: &CryptoProvider,
) -> Result<LoadedCert, CertError> {
    let chain = read_chain(cert_path)?;
    let pem = crate::secret_file::read(key_path, MAX_KEY_FILE)?;
    let mut key = PrivateKeyDer::from_pem_slice(&pem.bytes).map_err(|e| CertError::File {
        what: "private key",
        path: key_path.to_owned(),
        reason: pem_reason(&e),
    })?;
    let names = if server_names.is_empty() {
        match chain.first() {
            Some(leaf) => dns_names(leaf),
            None => Vec::new(),
        }
    } else {
        server_names.to_vec()
    };
    let certified = CertifiedKey::from_der(chain, key.clone_key(), provider);
    zeroize::Zeroize::zeroize(&mut key);
    let certified = certified.map_err(|e| CertError::Mismatch {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
        source: cert_path.to_owned(),
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let file_err = |reason: String| CertError::File {
        what: "certificate chain",
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(pem_reason(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(pem_reason(&e)))?;
    if chain.is_empty() {
        return Err(file_err("no CERTIFICATE block found".to_owned()));
    }
    Ok(chain)
}

fn pem_reason(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => {
            "no PEM item of the expected type found".to_owned()
        }
        other => format!("{other:?}"),
    }
}

/// The DNS names in a certificate's subjectAltName extension. A certificate that cannot be parsed yields no
/// names (it can still serve as the default certificate).
fn dns_names(leaf: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// Paths of the self-signed certificate inside the state directory.
pub fn self_signed_paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = state_dir.join("self-signed");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Returns the self-signed ECDSA P-256 certificate for `localhost` and `127.0.0.1`, generating it on first
/// use. The key file is created with mode 0600 and is never logged.
pub fn ensure_self_signed(state_dir: &Path) -> Result<(PathBuf, PathBuf), CertError> {
    let (cert_path, key_path) = self_signed_paths(state_dir);
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let fail = |reason: String| CertError::SelfSigned {
        dir: state_dir.to_owned(),
        reason,
    };
    let dir = cert_path.parent().unwrap_or(state_dir);
    fs::create_dir_all(dir).map_err(|e| fail(format!("create {}: {e}", dir.display())))?;
    // The state dir may hold keys: keep it private even if umask is lax.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| fail(format!("chmod {}: {e}", dir.display())))?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| fail(format!("key generation: {e}")))?;
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(|e| fail(format!("certificate parameters: {e}")))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis self-signed");
    let cert = params
        .self_signed(&key)
        .map_err(|e| fail(format!("signing: {e}")))?;
    // Write the key first and the certificate last: the certificate's presence marks a complete pair.
    write_private(
        &key_path,
        zeroize::Zeroizing::new(key.serialize_pem()).as_bytes(),
    )
    .map_err(|e| fail(format!("write {}: {e}", key_path.display())))?;
    fs::write(&cert_path, cert.pem())
        .map_err(|e| fail(format!("write {}: {e}", cert_path.display())))?;
    tracing::info!(cert = %cert_path.display(), "generated self-signed ECDSA P-256 certificate for localhost");
    Ok((cert_path, key_path))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> CryptoProvider {
        rustls::crypto::aws_lc_rs::default_provider()
    }

    fn tempdir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("portcullis-certs-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn self_signed_is_generated_once_and_loads() {
        let dir = tempdir("gen");
        let (c1, k1) = ensure_self_signed(&dir).expect("generate");
        let before = fs::read(&c1).expect("read cert");
        let (c2, _) = ensure_self_signed(&dir).expect("reuse");
        assert_eq!(
            before,
            fs::read(&c2).expect("read cert"),
            "regenerated on second start"
        );
        let mode = fs::metadata(&k1).expect("stat key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = load(&c1, &k1, &[], &provider()).expect("load");
        assert_eq!(loaded.names, vec!["localhost".to_owned()]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempdir("err");
        fs::create_dir_all(&dir).expect("mkdir");
        let missing = dir.join("missing.pem");
        let err = load(&missing, &missing, &[], &provider()).expect_err("missing");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let garbage = dir.join("garbage.pem");
        fs::write(&garbage, "not pem").expect("write");
        let err = load(&garbage, &garbage, &[], &provider()).expect_err("garbage");
        assert!(err.to_string().contains("garbage.pem"), "{err}");

        // A key that belongs to another certificate.
        // A key file others may read is refused, naming the file and the mode.
        let (c0, k0) = ensure_self_signed(&dir.join("open")).expect("generate");
        fs::set_permissions(&k0, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load(&c0, &k0, &[], &provider()).expect_err("world-readable key");
        let text = err.to_string();
        assert!(text.contains("key.pem") && text.contains("0644"), "{text}");

        let (c1, _) = ensure_self_signed(&dir.join("a")).expect("a");
        let (_, k2) = ensure_self_signed(&dir.join("b")).expect("b");
        let err = load(&c1, &k2, &[], &provider()).expect_err("mismatch");
        assert!(matches!(err, CertError::Mismatch { .. }), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }
}
