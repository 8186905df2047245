//! Why a ClientHello was judged malformed.

use core::fmt;

/// A precise reason why the bytes a client sent first are not a well-formed TLS ClientHello.
///
/// Returned only when the bytes that *are* present prove the problem: a prefix of a valid
/// ClientHello is never malformed (see [`parse`](super::parse)). The discriminants are stable and
/// dense from 0, so the enum can index a per-CPU counter array of [`Malformed::COUNT`] slots;
/// [`Malformed::name`] is the metric label.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// The first record's content type is not handshake (22): plaintext HTTP, an SSLv2-style
    /// hello, or another protocol on the TLS port. Or a record after it is of another type
    /// (ChangeCipherSpec, alert, application data) before the ClientHello's last byte: RFC 8446
    /// §5.1, "Handshake messages MUST NOT be interleaved with other record types".
    NotHandshakeRecord = 0,
    /// A record's legacy_record_version is not 0x03XX (SSLv3/TLS), nor one of the few others rustls takes
    /// (0x0002, and the DTLS versions 0xFEFF, 0xFEFD, 0xFEFC): the first record's, or that of a record
    /// carrying the rest of the ClientHello.
    BadRecordVersion = 1,
    /// A record carrying the ClientHello is empty; RFC 8446 §5.1 forbids zero-length handshake
    /// fragments.
    EmptyRecord = 2,
    /// A record carrying the ClientHello is longer than [`MAX_RECORD_LEN`](super::MAX_RECORD_LEN).
    RecordTooLong = 3,
    /// The handshake message is not a ClientHello (type 1).
    NotClientHello = 4,
    /// The ClientHello's 24-bit length exceeds [`MAX_HELLO_LEN`](super::MAX_HELLO_LEN).
    HandshakeTooLong = 5,
    /// The handshake length disagrees with the records (they carry bytes after the ClientHello,
    /// in the first record or in the handshake records after it) or with the ClientHello's own
    /// fields (one runs past its end).
    HandshakeLengthMismatch = 6,
    /// legacy_version's major byte is not 3: not a TLS or SSLv3 version.
    BadLegacyVersion = 7,
    /// legacy_session_id is longer than 32 bytes (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2).
    SessionIdTooLong = 8,
    /// The cipher_suites vector has an odd byte length; suites are 2 bytes each.
    CipherSuitesOddLength = 9,
    /// The cipher_suites vector is empty; its minimum length is 2 (`<2..2^16-2>`).
    CipherSuitesEmpty = 10,
    /// The compression_methods vector is empty; its minimum length is 1.
    CompressionMethodsEmpty = 11,
    /// compression_methods lacks the null method (0), which RFC 5246 §7.4.1.2 requires.
    CompressionNullMissing = 12,
    /// The extensions block length does not match the bytes left in the ClientHello.
    ExtensionsLengthMismatch = 13,
    /// An extension header or body runs past the end of the extensions block.
    ExtensionFramingBroken = 14,
    /// More than [`MAX_EXTENSIONS`](super::MAX_EXTENSIONS) extensions.
    TooManyExtensions = 15,
    /// The same extension type appears twice (RFC 8446 §4.2); checked for types 0..=63.
    DuplicateExtension = 16,
    /// pre_shared_key is not the last extension (RFC 8446 §4.2.11).
    PskNotLast = 17,
    /// server_name is not a well-framed ServerNameList (RFC 6066 §3): wrong list length, empty
    /// list or host name, a name past the list end, or two host names.
    BadSniFraming = 18,
    /// supported_versions has a wrong list length, an odd length or no versions (RFC 8446 §4.2.1).
    BadSupportedVersions = 19,
    /// supported_groups has a wrong list length, an odd length or no groups (RFC 8446 §4.2.7).
    BadSupportedGroups = 20,
    /// key_share has a wrong list length, an entry past the list end, or an empty key
    /// (RFC 8446 §4.2.8).
    BadKeyShare = 21,
    /// pre_shared_key's identities/binders vectors do not frame the extension (RFC 8446 §4.2.11).
    BadPskFraming = 22,
    /// early_data in a ClientHello carries a body; it must be empty (RFC 8446 §4.2.10).
    BadEarlyData = 23,
    /// pre_shared_key without psk_key_exchange_modes (RFC 8446 §4.2.9: clients MUST send both).
    PskWithoutKeyExchangeModes = 24,
    /// early_data without pre_shared_key: 0-RTT needs a PSK (RFC 8446 §4.2.10).
    EarlyDataWithoutPsk = 25,
}

impl Malformed {
    /// Number of reasons: the length of a counter array indexed by `reason as u32`.
    pub const COUNT: usize = 26;

    /// Every reason in discriminant order, for registering one metric label each.
    pub const ALL: [Malformed; Self::COUNT] = [
        Self::NotHandshakeRecord,
        Self::BadRecordVersion,
        Self::EmptyRecord,
        Self::RecordTooLong,
        Self::NotClientHello,
        Self::HandshakeTooLong,
        Self::HandshakeLengthMismatch,
        Self::BadLegacyVersion,
        Self::SessionIdTooLong,
        Self::CipherSuitesOddLength,
        Self::CipherSuitesEmpty,
        Self::CompressionMethodsEmpty,
        Self::CompressionNullMissing,
        Self::ExtensionsLengthMismatch,
        Self::ExtensionFramingBroken,
        Self::TooManyExtensions,
        Self::DuplicateExtension,
        Self::PskNotLast,
        Self::BadSniFraming,
        Self::BadSupportedVersions,
        Self::BadSupportedGroups,
        Self::BadKeyShare,
        Self::BadPskFraming,
        Self::BadEarlyData,
        Self::PskWithoutKeyExchangeModes,
        Self::EarlyDataWithoutPsk,
    ];

    /// The reason whose discriminant is `index`, or `None` past the last one.
    pub const fn from_index(index: u32) -> Option<Malformed> {
        if index as usize >= Self::COUNT {
            return None;
        }
        Some(Self::ALL[index as usize])
    }

    /// The snake_case metric label, e.g. `"psk_not_last"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::NotHandshakeRecord => "not_handshake_record",
            Self::BadRecordVersion => "bad_record_version",
            Self::EmptyRecord => "empty_record",
            Self::RecordTooLong => "record_too_long",
            Self::NotClientHello => "not_client_hello",
            Self::HandshakeTooLong => "handshake_too_long",
            Self::HandshakeLengthMismatch => "handshake_length_mismatch",
            Self::BadLegacyVersion => "bad_legacy_version",
            Self::SessionIdTooLong => "session_id_too_long",
            Self::CipherSuitesOddLength => "cipher_suites_odd_length",
            Self::CipherSuitesEmpty => "cipher_suites_empty",
            Self::CompressionMethodsEmpty => "compression_methods_empty",
            Self::CompressionNullMissing => "compression_null_missing",
            Self::ExtensionsLengthMismatch => "extensions_length_mismatch",
            Self::ExtensionFramingBroken => "extension_framing_broken",
            Self::TooManyExtensions => "too_many_extensions",
            Self::DuplicateExtension => "duplicate_extension",
            Self::PskNotLast => "psk_not_last",
            Self::BadSniFraming => "bad_sni_framing",
            Self::BadSupportedVersions => "bad_supported_versions",
            Self::BadSupportedGroups => "bad_supported_groups",
            Self::BadKeyShare => "bad_key_share",
            Self::BadPskFraming => "bad_psk_framing",
            Self::BadEarlyData => "bad_early_data",
            Self::PskWithoutKeyExchangeModes => "psk_without_key_exchange_modes",
            Self::EarlyDataWithoutPsk => "early_data_without_psk",
        }
    }

    /// A one-line description for operators: what the client sent that is wrong.
    pub const fn description(self) -> &'static str {
        match self {
            Self::NotHandshakeRecord => {
                "a TLS record carrying the ClientHello is not a handshake record (content type 22)"
            }
            Self::BadRecordVersion => "TLS record version is not 3.x (nor one rustls takes)",
            Self::EmptyRecord => "TLS handshake record has length 0",
            Self::RecordTooLong => "TLS record is longer than 2^14 + 2048 bytes",
            Self::NotClientHello => "first handshake message is not a ClientHello",
            Self::HandshakeTooLong => "ClientHello length exceeds 65535 bytes",
            Self::HandshakeLengthMismatch => {
                "ClientHello length disagrees with its records or with its own fields"
            }
            Self::BadLegacyVersion => "ClientHello legacy_version is not 3.x",
            Self::SessionIdTooLong => "ClientHello legacy_session_id is longer than 32 bytes",
            Self::CipherSuitesOddLength => "ClientHello cipher_suites has an odd byte length",
            Self::CipherSuitesEmpty => "ClientHello offers no cipher suites",
            Self::CompressionMethodsEmpty => "ClientHello offers no compression methods",
            Self::CompressionNullMissing => "ClientHello compression methods lack null (0)",
            Self::ExtensionsLengthMismatch => {
                "ClientHello extensions length disagrees with the bytes left in the message"
            }
            Self::ExtensionFramingBroken => {
                "a ClientHello extension runs past the extensions block"
            }
            Self::TooManyExtensions => "ClientHello has more than 64 extensions",
            Self::DuplicateExtension => "ClientHello repeats an extension type",
            Self::PskNotLast => "pre_shared_key is not the last ClientHello extension",
            Self::BadSniFraming => "server_name extension is not a well-framed ServerNameList",
            Self::BadSupportedVersions => "supported_versions extension is badly framed or empty",
            Self::BadSupportedGroups => "supported_groups extension is badly framed or empty",
            Self::BadKeyShare => "key_share extension is badly framed or has an empty key",
            Self::BadPskFraming => "pre_shared_key identities/binders are badly framed",
            Self::BadEarlyData => "early_data extension in a ClientHello is not empty",
            Self::PskWithoutKeyExchangeModes => {
                "pre_shared_key offered without psk_key_exchange_modes"
            }
            Self::EarlyDataWithoutPsk => "early_data offered without pre_shared_key",
        }
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

#[cfg(test)]
mod tests {
    use super::Malformed;

    #[test]
    fn all_is_dense_and_in_discriminant_order() {
        for (index, reason) in Malformed::ALL.iter().enumerate() {
            assert_eq!(
                *reason as u32 as usize, index,
                "{reason:?} is out of place in ALL"
            );
        }
    }

    #[test]
    fn names_are_unique_snake_case() {
        for (index, reason) in Malformed::ALL.iter().enumerate() {
            let name = reason.name();
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name} is not snake_case"
            );
            for other in Malformed::ALL.iter().skip(index + 1) {
                assert_ne!(name, other.name(), "two reasons share a metric label");
            }
        }
    }
}
