//! A throwaway PKI for tests: one CA and two server certificates, ECDSA P-256 for `ecdsa.test` and RSA (2048
//! bits unless asked otherwise) for `rsa.test`, written as PEM files, so clients can verify for real instead of skipping verification.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, RsaKeySize};

/// Paths of the generated files.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate (trust anchor for clients).
    pub ca: PathBuf,
    /// The CA's private key (PEM), e.g. to sign OCSP responses with `openssl ocsp -rkey`.
    pub ca_key: PathBuf,
    /// ECDSA server certificate and key, for `ecdsa.test`.
    pub ecdsa: (PathBuf, PathBuf),
    /// RSA server certificate and key, for `rsa.test`.
    pub rsa: (PathBuf, PathBuf),
}

impl Pki {
    /// Generates everything into `dir`, with an RSA-2048 key for `rsa.test`.
    pub fn generate(dir: &Path) -> anyhow::Result<Pki> {
        Self::generate_with_rsa(dir, RsaKeySize::_2048)
    }

    /// Generates everything into `dir`, with an RSA key of `rsa_bits` for `rsa.test` (a 4096-bit key makes
    /// the server's signature about five times dearer than a 2048-bit one while the client's verification
    /// stays cheap: how a test overloads a server from one client).
    pub fn generate_with_rsa(dir: &Path, rsa_bits: RsaKeySize) -> anyhow::Result<Pki> {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "portcullis test CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca_key_path = dir.join("ca.key");
        std::fs::write(&ca_key_path, ca_key.serialize_pem())?;
        let issuer = Issuer::new(ca_params, ca_key);
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_cert.pem())?;

        let leaf = |name: &str, key: KeyPair| -> anyhow::Result<(PathBuf, PathBuf)> {
            let params = CertificateParams::new(vec![name.to_owned()])?;
            let cert = params.signed_by(&key, &issuer)?;
            let (c, k) = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            );
            std::fs::write(&c, cert.pem())?;
            std::fs::write(&k, key.serialize_pem())?;
            // The daemon refuses key files that group or others may read.
            std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            Ok((c, k))
        };
        Ok(Pki {
            ecdsa: leaf(
                "ecdsa.test",
                KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .context("generating the ECDSA key")?,
            )?,
            rsa: leaf(
                "rsa.test",
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rsa_bits)
                    .context("generating the RSA key")?,
            )?,
            ca,
            ca_key: ca_key_path,
        })
    }

    /// A `[tls]` config section serving both certificates (ECDSA first, so it is the default).
    pub fn tls_section(&self, extra: &str) -> String {
        format!(
            "[tls]\n{extra}\n[[tls.certificates]]\ncert = {:?}\nkey = {:?}\n[[tls.certificates]]\ncert = {:?}\nkey = {:?}\n",
            self.ecdsa.0, self.ecdsa.1, self.rsa.0, self.rsa.1
        )
    }
}
