//! OCSP stapling: the DER response of `[[tls.certificates]] ocsp = "FILE"`, checked before it is stapled.
//!
//! The file is what `openssl ocsp -respout FILE` (or a renewal hook) writes: an `OCSPResponse` (RFC 6960
//! §4.2.1). It is read with its certificate, at start and on every reload (SIGHUP or a watched file change), and
//! stapled through rustls' `CertifiedKey::ocsp` (RFC 6066 §8) only when it says the certificate is good now:
//! `successful`, a basic response with a `SingleResponse` for the leaf's serial number, status `good`, and
//! `thisUpdate <= now < nextUpdate`. Anything else is logged and not stapled; the certificate is served either
//! way, since a client that wants a staple and gets none falls back to its own check.
//!
//! The response's signature is not verified here: the client verifies it against the issuer, and a response
//! we cannot vouch for costs the client nothing more than no staple. The parse is a bounds-checked DER walk of
//! operator-supplied bytes (never network bytes).

use std::path::{Path, PathBuf};

/// Largest OCSP response file read: real ones are 0.5 to 4 KiB.
const MAX_OCSP_FILE: u64 = 64 * 1024;

/// Clock skew allowed on `thisUpdate` (a response from a responder whose clock runs a little ahead).
const SKEW_SECS: i64 = 300;

/// Why an OCSP response is not stapled; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum OcspError {
    /// The file cannot be read.
    #[error("cannot read OCSP response {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The response is not what it must be.
    #[error("OCSP response {path} is not stapled: {reason}")]
    Refused {
        /// The file.
        path: PathBuf,
        /// What is wrong, for the operator.
        reason: String,
    },
}

/// When the first of the responses stapled to `certs` goes stale (its nextUpdate, Unix seconds; `now` if one
/// already is): then a reload drops it, or staples the renewed file.
pub fn earliest_next_update(certs: &[super::certs::LoadedCert], now: i64) -> Option<i64> {
    certs
        .iter()
        .filter_map(|c| {
            let der = c.key.ocsp.as_deref()?;
            let leaf = c.key.cert.first()?;
            let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
            check(der, parsed.raw_serial(), now).unwrap_or(Some(now))
        })
        .min()
}

/// Reads `path` and checks it for the certificate whose leaf is `leaf_der`, at `now` (Unix seconds).
///
/// # Errors
/// [`OcspError`] naming the file and what is wrong.
pub fn load(path: &Path, leaf_der: &[u8], now: i64) -> Result<Vec<u8>, OcspError> {
    let read_err = |reason: String| OcspError::Read {
        path: path.to_owned(),
        reason,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| read_err(e.to_string()))?
        .len();
    if len > MAX_OCSP_FILE {
        return Err(read_err(format!(
            "{len} bytes, more than the {MAX_OCSP_FILE} an OCSP response can be"
        )));
    }
    let der = std::fs::read(path).map_err(|e| read_err(e.to_string()))?;
    let serial = x509_parser::parse_x509_certificate(leaf_der)
        .map(|(_, c)| c.raw_serial().to_vec())
        .map_err(|e| OcspError::Refused {
            path: path.to_owned(),
            reason: format!("the certificate does not parse: {e}"),
        })?;
    check(&der, &serial, now).map_err(|reason| OcspError::Refused {
        path: path.to_owned(),
        reason: reason.to_owned(),
    })?;
    Ok(der)
}

/// Checks that `der` is a successful basic OCSP response saying the certificate with serial number `serial`
/// (the INTEGER's content octets) is good at `now`; its nextUpdate (Unix seconds), if it has one.
///
/// # Errors
/// What is wrong, for the operator.
pub fn check(der: &[u8], serial: &[u8], now: i64) -> Result<Option<i64>, &'static str> {
    const NOT_DER: &str = "not a DER OCSPResponse (openssl ocsp -respout writes one)";
    // OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED, responseBytes [0] EXPLICIT ResponseBytes OPTIONAL }
    let mut response = Der::new(Der::new(der).take(SEQUENCE).ok_or(NOT_DER)?);
    let status = response.take(ENUMERATED).ok_or(NOT_DER)?;
    if status != [0] {
        return Err("its responseStatus is not successful (0)");
    }
    let bytes = response.take(CONTEXT_0).ok_or("it has no responseBytes")?;
    // ResponseBytes ::= SEQUENCE { responseType OID, response OCTET STRING }
    let mut bytes = Der::new(Der::new(bytes).take(SEQUENCE).ok_or(NOT_DER)?);
    if bytes.take(OID).ok_or(NOT_DER)? != ID_PKIX_OCSP_BASIC {
        return Err("it is not a basic OCSP response (id-pkix-ocsp-basic)");
    }
    let basic = bytes.take(OCTET_STRING).ok_or(NOT_DER)?;
    // BasicOCSPResponse ::= SEQUENCE { tbsResponseData ResponseData, ... }
    let basic = Der::new(basic).take(SEQUENCE).ok_or(NOT_DER)?;
    let mut data = Der::new(Der::new(basic).take(SEQUENCE).ok_or(NOT_DER)?);
    // ResponseData ::= SEQUENCE { version [0] OPTIONAL, responderID [1] | [2], producedAt, responses, ... }
    if data.peek() == Some(CONTEXT_0) {
        data.take(CONTEXT_0).ok_or(NOT_DER)?;
    }
    data.any().ok_or(NOT_DER)?;
    data.take(GENERALIZED_TIME).ok_or(NOT_DER)?;
    let mut responses = Der::new(data.take(SEQUENCE).ok_or(NOT_DER)?);
    while !responses.is_empty() {
        let single = responses.take(SEQUENCE).ok_or(NOT_DER)?;
        if let Some(verdict) = single_response(single, serial, now)? {
            return verdict;
        }
    }
    Err("it holds no status for this certificate (another certificate's response?)")
}

/// One `SingleResponse`: `None` when it is about another serial number, else the verdict (the outer error is a
/// malformed response, the inner one a verdict on our certificate).
fn single_response(
    der: &[u8],
    serial: &[u8],
    now: i64,
) -> Result<Option<Result<Option<i64>, &'static str>>, &'static str> {
    const NOT_DER: &str = "a SingleResponse is not DER";
    // SingleResponse ::= SEQUENCE { certID CertID, certStatus, thisUpdate, nextUpdate [0] EXPLICIT OPTIONAL, ...}
    let mut single = Der::new(der);
    let mut cert_id = Der::new(single.take(SEQUENCE).ok_or(NOT_DER)?);
    // CertID ::= SEQUENCE { hashAlgorithm, issuerNameHash, issuerKeyHash, serialNumber INTEGER }
    cert_id.take(SEQUENCE).ok_or(NOT_DER)?;
    cert_id.take(OCTET_STRING).ok_or(NOT_DER)?;
    cert_id.take(OCTET_STRING).ok_or(NOT_DER)?;
    if cert_id.take(INTEGER).ok_or(NOT_DER)? != serial {
        return Ok(None);
    }
    let status = single.peek().ok_or(NOT_DER)?;
    single.any().ok_or(NOT_DER)?;
    let this_update = generalized_time(single.take(GENERALIZED_TIME).ok_or(NOT_DER)?)
        .ok_or("its thisUpdate is not a GeneralizedTime")?;
    let next_update = match single.peek() {
        Some(CONTEXT_0) => {
            let inner = single.take(CONTEXT_0).ok_or(NOT_DER)?;
            let t = Der::new(inner).take(GENERALIZED_TIME).ok_or(NOT_DER)?;
            Some(generalized_time(t).ok_or("its nextUpdate is not a GeneralizedTime")?)
        }
        _ => None,
    };
    let verdict = match status {
        GOOD => {
            if this_update > now.saturating_add(SKEW_SECS) {
                Err("its thisUpdate is in the future (check the clock)")
            } else if next_update.is_some_and(|n| n <= now) {
                Err("it has expired (nextUpdate has passed): fetch a new one")
            } else {
                Ok(next_update)
            }
        }
        REVOKED => Err("it says the certificate is REVOKED: replace the certificate"),
        _ => Err("it says the certificate's status is unknown to the responder"),
    };
    Ok(Some(verdict))
}

const SEQUENCE: u8 = 0x30;
const ENUMERATED: u8 = 0x0a;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const GENERALIZED_TIME: u8 = 0x18;
const CONTEXT_0: u8 = 0xa0;
/// `CertStatus` choices (RFC 6960 §4.2.1): good `[0] IMPLICIT NULL`, revoked `[1] IMPLICIT RevokedInfo`.
const GOOD: u8 = 0x80;
const REVOKED: u8 = 0xa1;
/// 1.3.6.1.5.5.7.48.1.1, the content octets.
const ID_PKIX_OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];

/// A cursor over DER TLVs (single-byte tags, definite lengths up to 4 length octets).
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    /// The next TLV, whatever its tag: its tag and content.
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let (octets, after) = rest.split_at_checked(n)?;
            rest = after;
            octets
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        };
        let (content, after) = rest.split_at_checked(len)?;
        self.0 = after;
        Some((tag, content))
    }

    /// The next TLV's content when its tag is `tag`.
    fn take(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next()? {
            (t, content) if t == tag => Some(content),
            _ => None,
        }
    }

    /// Skips the next TLV.
    fn any(&mut self) -> Option<()> {
        self.next().map(|_| ())
    }
}

/// `YYYYMMDDHHMMSS[.fff]Z` to Unix seconds.
fn generalized_time(text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?;
    let text = text.strip_suffix('Z')?;
    let whole = text.split('.').next()?;
    if whole.len() != 14 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| whole.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, min, s) = (num(8..10)?, num(10..12)?, num(12..14)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || h > 23 || min > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400 + h * 3600 + min * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if content.len() < 0x80 {
            out.push(content.len() as u8);
        } else {
            out.push(0x82);
            out.extend_from_slice(&(content.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(content);
        out
    }

    /// A basic OCSP response for `serial` with `status` (a whole TLV) and the given times.
    fn response(
        status_code: u8,
        serial: &[u8],
        status: &[u8],
        this: &str,
        next: Option<&str>,
    ) -> Vec<u8> {
        let cert_id = [
            tlv(SEQUENCE, &tlv(OID, &[0x2b, 0x0e, 0x03, 0x02, 0x1a])),
            tlv(OCTET_STRING, &[1; 20]),
            tlv(OCTET_STRING, &[2; 20]),
            tlv(INTEGER, serial),
        ]
        .concat();
        let mut single = [
            tlv(SEQUENCE, &cert_id),
            status.to_vec(),
            tlv(GENERALIZED_TIME, this.as_bytes()),
        ]
        .concat();
        if let Some(next) = next {
            single.extend(tlv(CONTEXT_0, &tlv(GENERALIZED_TIME, next.as_bytes())));
        }
        let data = [
            tlv(0xa2, &tlv(OCTET_STRING, &[3; 20])),
            tlv(GENERALIZED_TIME, this.as_bytes()),
            tlv(SEQUENCE, &tlv(SEQUENCE, &single)),
        ]
        .concat();
        let basic = tlv(
            SEQUENCE,
            &[
                tlv(SEQUENCE, &data),
                tlv(SEQUENCE, &tlv(OID, &[0x2a])),
                tlv(0x03, &[0, 9, 9]),
            ]
            .concat(),
        );
        let bytes = tlv(
            SEQUENCE,
            &[tlv(OID, ID_PKIX_OCSP_BASIC), tlv(OCTET_STRING, &basic)].concat(),
        );
        tlv(
            SEQUENCE,
            &[tlv(ENUMERATED, &[status_code]), tlv(CONTEXT_0, &bytes)].concat(),
        )
    }

    #[test]
    fn generalized_times_convert_to_unix_seconds() {
        assert_eq!(generalized_time(b"19700101000000Z"), Some(0));
        assert_eq!(generalized_time(b"20000301000000Z"), Some(951_868_800));
        assert_eq!(generalized_time(b"20261206120000.5Z"), Some(1_796_558_400));
        for bad in [
            &b"2026120612000Z"[..],
            b"20261306120000Z",
            b"20261206120000",
            b"",
        ] {
            assert_eq!(generalized_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_a_current_good_response_for_this_serial_is_stapled() {
        let now = generalized_time(b"20261206120000Z").expect("time");
        let good = tlv(GOOD, &[]);
        let (this, next) = ("20261206000000Z", Some("20261213000000Z"));
        let serial = [0x01, 0x23];
        assert_eq!(
            check(&response(0, &serial, &good, this, next), &serial, now),
            Ok(generalized_time(b"20261213000000Z"))
        );
        assert_eq!(
            check(&response(0, &serial, &good, this, None), &serial, now),
            Ok(None)
        );
        let refused: [(&str, Vec<u8>); 7] = [
            ("other serial", response(0, &[0x02], &good, this, next)),
            (
                "expired",
                response(
                    0,
                    &serial,
                    &good,
                    "20261120000000Z",
                    Some("20261127000000Z"),
                ),
            ),
            (
                "future",
                response(0, &serial, &good, "20261207000000Z", next),
            ),
            (
                "revoked",
                response(
                    0,
                    &serial,
                    &tlv(REVOKED, &tlv(GENERALIZED_TIME, b"20261101000000Z")),
                    this,
                    next,
                ),
            ),
            ("unknown", response(0, &serial, &tlv(0x82, &[]), this, next)),
            ("tryLater", response(3, &serial, &good, this, next)),
            ("garbage", b"not der at all".to_vec()),
        ];
        for (what, der) in refused {
            assert!(check(&der, &serial, now).is_err(), "{what} was accepted");
        }
        // Every truncation is refused, none panics.
        let whole = response(0, &serial, &good, this, next);
        for n in 0..whole.len() {
            assert!(
                check(whole.get(..n).unwrap_or_default(), &serial, now).is_err(),
                "{n}"
            );
        }
    }

    /// `openssl ocsp -index ... -rsigner ca.pem -reqin req.der -respout resp.der -ndays 1` (OpenSSL 3.0): good,
    /// serial 22c7...048a, produced and thisUpdate 2026-12-06 16:57:51, nextUpdate a day later.
    const OPENSSL_RESPONSE: &[&str] = &[
        "3082028e0a0100a08202873082028306092b0601050507300101048202743082027030819ba10f300d310b30090603550403",
        "0c026361180f32303236313230363136353735315a30773075304d300906052b0e03021a0500041411048cd20cb3592307d0",
        "19fd0889562b62d3649204145ee25e0e5a5876fc0a0d1d1c8b4d104e2ac1c170021422c7858a0680a41f3393dbca857d0c17",
        "3b27048a8000180f32303236313230363136353735315aa011180f32303236313230373136353735315a300a06082a8648ce",
        "3d0403020348003045022070c4d24087e4d941aa4cab18ef633edb5812a212eac88600fc33199b329e761c022100cd595416",
        "bb4d61005457c197bed95bfdbff5d8b0ac5c69373c68e8986ed1c3d4a0820178308201743082017030820115a00302010202",
        "1474bca1751064b4d4741ea69d2da78f730d9560b4300a06082a8648ce3d040302300d310b300906035504030c026361301e",
        "170d3236313230363136353735315a170d3236313230383136353735315a300d310b300906035504030c0263613059301306",
        "072a8648ce3d020106082a8648ce3d030107034200043ea576fcdb8e0fa72178d8a49e16d1e962b4f88cacba4f88f54fbe59",
        "08a872df848db0e9ff7738c4b8613cbf0e1f168405d564d1ea208338894295bc125882e6a3533051301d0603551d0e041604",
        "145ee25e0e5a5876fc0a0d1d1c8b4d104e2ac1c170301f0603551d230418301680145ee25e0e5a5876fc0a0d1d1c8b4d104e",
        "2ac1c170300f0603551d130101ff040530030101ff300a06082a8648ce3d04030203490030460221009630249a86601889b0",
        "049883f7d57bb5619adea1dacf4caf48d2d9c4ac1ec925022100ce3411e66a1e4701cedf388279bff1e9f7dd62db310edac5",
        "ad91522134ec63b9",
    ];

    #[test]
    fn a_response_written_by_openssl_is_read() {
        let hex: String = OPENSSL_RESPONSE.concat();
        let der: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16).expect("hex"))
            .collect();
        let serial = [
            0x22, 0xc7, 0x85, 0x8a, 0x06, 0x80, 0xa4, 0x1f, 0x33, 0x93, 0xdb, 0xca, 0x85, 0x7d,
            0x0c, 0x17, 0x3b, 0x27, 0x04, 0x8a,
        ];
        let produced = 1_796_576_271;
        assert_eq!(check(&der, &serial, produced), Ok(Some(produced + 86_400)));
        assert!(check(&der, &serial, produced + 3600).is_ok());
        assert!(
            check(&der, &serial, produced + 86_400).is_err(),
            "past nextUpdate"
        );
        assert!(
            check(&der, &serial[1..], produced).is_err(),
            "another serial"
        );
    }

    #[test]
    fn the_earliest_next_update_of_the_staples_is_when_a_reload_is_due() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).expect("params");
        params.serial_number = Some(rcgen::SerialNumber::from(vec![0x01, 0x23]));
        let cert = params.self_signed(&key).expect("cert");
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let certified =
            rustls::sign::CertifiedKey::from_der(vec![cert.der().clone()], der, &provider)
                .expect("pair");
        let stapled = |ocsp: Option<Vec<u8>>| super::super::certs::LoadedCert {
            key: std::sync::Arc::new(rustls::sign::CertifiedKey {
                ocsp,
                ..certified.clone()
            }),
            names: Vec::new(),
            source: PathBuf::from("test"),
        };
        let now = generalized_time(b"20261206120000Z").expect("time");
        let good = tlv(GOOD, &[]);
        let week = response(
            0,
            &[0x01, 0x23],
            &good,
            "20261206000000Z",
            Some("20261213000000Z"),
        );
        let day = response(
            0,
            &[0x01, 0x23],
            &good,
            "20261206000000Z",
            Some("20261207000000Z"),
        );
        let certs = [
            stapled(Some(week)),
            stapled(None),
            stapled(Some(day.clone())),
        ];
        assert_eq!(
            earliest_next_update(&certs, now),
            generalized_time(b"20261207000000Z")
        );
        assert_eq!(
            earliest_next_update(&certs[1..2], now),
            None,
            "no staple, no deadline"
        );
        // Already stale: due now.
        let later = generalized_time(b"20261208000000Z").expect("time");
        assert_eq!(
            earliest_next_update(&[stapled(Some(day))], later),
            Some(later)
        );
    }
}
