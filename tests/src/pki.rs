//! A throwaway PKI for tests: one CA and two server certificates, ECDSA P-256 for `ecdsa.test` and RSA-2048
//! for `rsa.test`, written as PEM files, so clients can verify for real instead of skipping verification.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// Paths of the generated files.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate (trust anchor for clients).
    pub ca: PathBuf,
    /// ECDSA server certificate and key, for `ecdsa.test`.
    pub ecdsa: (PathBuf, PathBuf),
    /// RSA server certificate and key, for `rsa.test`.
    pub rsa: (PathBuf, PathBuf),
}

impl Pki {
    /// Generates everything into `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<Pki> {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "portcullis test CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_cert.pem())?;

        let leaf = |name: &str,
                    alg: &'static rcgen::SignatureAlgorithm|
         -> anyhow::Result<(PathBuf, PathBuf)> {
            let key =
                KeyPair::generate_for(alg).with_context(|| format!("generating the {name} key"))?;
            let params = CertificateParams::new(vec![name.to_owned()])?;
            let cert = params.signed_by(&key, &issuer)?;
            let (c, k) = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            );
            std::fs::write(&c, cert.pem())?;
            std::fs::write(&k, key.serialize_pem())?;
            Ok((c, k))
        };
        Ok(Pki {
            ecdsa: leaf("ecdsa.test", &rcgen::PKCS_ECDSA_P256_SHA256)?,
            rsa: leaf("rsa.test", &rcgen::PKCS_RSA_SHA256)?,
            ca,
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
