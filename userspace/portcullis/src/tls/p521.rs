//! Ephemeral ECDH on secp521r1 (P-521) for rustls, from aws-lc-rs.
//!
//! rustls' aws-lc-rs provider offers X25519MLKEM768, X25519, P-256 and P-384; OpenSSL's defaults (so nginx's and
//! HAProxy's) also accept P-521, and a client that offers only P-521 (`openssl s_client -groups P-521`, some
//! hardened or FIPS-profile clients) is legal (RFC 8446 §4.2.7). [`super::provider`] appends this group last:
//! it is chosen only when the client sends a P-521 key share and none for a group before it, or supports no
//! other group.

use aws_lc_rs::agreement::{self, EphemeralPrivateKey, PublicKey, UnparsedPublicKey};
use aws_lc_rs::rand::SystemRandom;
use rustls::crypto::{ActiveKeyExchange, GetRandomFailed, SharedSecret, SupportedKxGroup};
use rustls::{Error, NamedGroup, PeerMisbehaved};

/// The group, for `CryptoProvider::kx_groups`.
pub static SECP521R1: &dyn SupportedKxGroup = &Secp521r1;

#[derive(Debug)]
struct Secp521r1;

impl SupportedKxGroup for Secp521r1 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let private = EphemeralPrivateKey::generate(&agreement::ECDH_P521, &SystemRandom::new())
            .map_err(|_| GetRandomFailed)?;
        let public = private.compute_public_key().map_err(|_| GetRandomFailed)?;
        Ok(Box::new(Exchange { private, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::secp521r1
    }
}

/// One handshake's key pair.
struct Exchange {
    private: EphemeralPrivateKey,
    public: PublicKey,
}

impl ActiveKeyExchange for Exchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, Error> {
        // Uncompressed points only (RFC 8446 §4.2.8.2; TLS 1.2 negotiates nothing else with us), which
        // aws-lc-rs would not enforce: it also takes compressed ones. It checks the point is on the curve.
        if peer.first() != Some(&0x04) {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        let peer = UnparsedPublicKey::new(&agreement::ECDH_P521, peer);
        agreement::agree_ephemeral(self.private, peer, (), |secret| {
            Ok(SharedSecret::from(secret))
        })
        .map_err(|()| PeerMisbehaved::InvalidKeyShare.into())
    }

    fn pub_key(&self) -> &[u8] {
        self.public.as_ref()
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::secp521r1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_sides_agree_and_bad_points_are_refused() {
        let a = SECP521R1.start().expect("start");
        let b = SECP521R1.start().expect("start");
        assert_eq!(a.pub_key().len(), 133, "uncompressed P-521 point");
        let b_pub = b.pub_key().to_vec();
        let a_pub = a.pub_key().to_vec();
        let ab = a.complete(&b_pub).expect("agree");
        let ba = b.complete(&a_pub).expect("agree");
        assert_eq!(ab.secret_bytes(), ba.secret_bytes());
        assert_eq!(ab.secret_bytes().len(), 66);

        // Compressed form of a valid point, a point off the curve, and nothing.
        let mut compressed = vec![0x02 | (b_pub[132] & 1)];
        compressed.extend_from_slice(&b_pub[1..67]);
        let mut off_curve = b_pub.clone();
        off_curve[132] ^= 1;
        for bad in [compressed, off_curve, Vec::new()] {
            let c = SECP521R1.start().expect("start");
            assert!(c.complete(&bad).is_err(), "{bad:02x?}");
        }
    }
}
