//! The PROXY protocol v2 header (haproxy's proxy-protocol.txt §2.2), telling the upstream who the client is.
//!
//! We send the client and local addresses, the SNI as `PP2_TYPE_AUTHORITY`, the negotiated ALPN as
//! `PP2_TYPE_ALPN`, and a `PP2_TYPE_SSL` TLV with the TLS version, as HAProxy's `send-proxy-v2-ssl` does.

use std::net::SocketAddr;

/// The 12-byte v2 signature.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// TLV type: ALPN.
pub const PP2_TYPE_ALPN: u8 = 0x01;
/// TLV type: authority (SNI host name).
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;
/// TLV type: SSL information.
pub const PP2_TYPE_SSL: u8 = 0x20;
/// SSL sub-TLV: version string.
pub const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
/// SSL client flag: the client connected over SSL/TLS.
pub const PP2_CLIENT_SSL: u8 = 0x01;

/// What the header carries.
#[derive(Debug, Clone, Default)]
pub struct ProxyInfo<'a> {
    /// SNI host name.
    pub authority: Option<&'a str>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<&'a [u8]>,
    /// TLS version string, e.g. `TLSv1.3`.
    pub tls_version: Option<&'a str>,
}

/// Encodes the header for a TCP connection from `client` to `local`. Mixed address families (v4-mapped cases)
/// are sent as IPv6.
pub fn encode(client: SocketAddr, local: SocketAddr, info: &ProxyInfo<'_>) -> Vec<u8> {
    let mut addrs = Vec::with_capacity(36);
    let family = match (client, local) {
        (SocketAddr::V4(c), SocketAddr::V4(l)) => {
            addrs.extend_from_slice(&c.ip().octets());
            addrs.extend_from_slice(&l.ip().octets());
            addrs.extend_from_slice(&c.port().to_be_bytes());
            addrs.extend_from_slice(&l.port().to_be_bytes());
            0x11 // AF_INET, STREAM
        }
        (c, l) => {
            addrs.extend_from_slice(&v6(c.ip()).octets());
            addrs.extend_from_slice(&v6(l.ip()).octets());
            addrs.extend_from_slice(&c.port().to_be_bytes());
            addrs.extend_from_slice(&l.port().to_be_bytes());
            0x21 // AF_INET6, STREAM
        }
    };
    let mut tlvs = Vec::new();
    if let Some(alpn) = info.alpn {
        tlv(&mut tlvs, PP2_TYPE_ALPN, alpn);
    }
    if let Some(authority) = info.authority {
        tlv(&mut tlvs, PP2_TYPE_AUTHORITY, authority.as_bytes());
    }
    let mut ssl = vec![PP2_CLIENT_SSL, 0, 0, 0, 0]; // client flags, then verify = 0 (no client cert)
    if let Some(version) = info.tls_version {
        tlv(&mut ssl, PP2_SUBTYPE_SSL_VERSION, version.as_bytes());
    }
    tlv(&mut tlvs, PP2_TYPE_SSL, &ssl);

    let len = addrs.len() + tlvs.len();
    let mut out = Vec::with_capacity(16 + len);
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    out.push(family);
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&addrs);
    out.extend_from_slice(&tlvs);
    out
}

fn v6(ip: std::net::IpAddr) -> std::net::Ipv6Addr {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    }
}

fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    // Values we write are host names, ALPN ids and short strings: far below 64 KiB.
    let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value.get(..usize::from(len)).unwrap_or(value));
}

/// A decoded header (used by the demo upstream and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Client address.
    pub client: SocketAddr,
    /// Address the client connected to.
    pub local: SocketAddr,
    /// SNI.
    pub authority: Option<String>,
    /// ALPN.
    pub alpn: Option<Vec<u8>>,
    /// Header length in bytes (what to skip).
    pub len: usize,
}

/// Decodes a v2 header at the start of `buf`. `Ok(None)`: more bytes needed. `Err`: not a v2 PROXY header.
pub fn decode(buf: &[u8]) -> Result<Option<Decoded>, &'static str> {
    let prefix = buf.len().min(SIGNATURE.len());
    if buf.get(..prefix) != SIGNATURE.get(..prefix) {
        return Err("no PROXY v2 signature");
    }
    let Some(header) = buf.get(..16) else {
        return Ok(None);
    };
    let (ver_cmd, family) = (header[12], header[13]);
    if ver_cmd != 0x21 {
        return Err("unsupported PROXY version/command");
    }
    let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
    let Some(body) = buf.get(16..16 + len) else {
        return Ok(None);
    };
    let (client, local, rest) = match family {
        0x11 => {
            let a = body.get(..12).ok_or("short IPv4 address block")?;
            let ip = |o: usize| std::net::Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]);
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            (
                SocketAddr::from((ip(0), port(8))),
                SocketAddr::from((ip(4), port(10))),
                body.get(12..).unwrap_or_default(),
            )
        }
        0x21 => {
            let a = body.get(..36).ok_or("short IPv6 address block")?;
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&a[o..o + 16]);
                std::net::Ipv6Addr::from(b)
            };
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            (
                SocketAddr::from((ip(0), port(32))),
                SocketAddr::from((ip(16), port(34))),
                body.get(36..).unwrap_or_default(),
            )
        }
        _ => return Err("unsupported address family"),
    };
    let mut decoded = Decoded {
        client,
        local,
        authority: None,
        alpn: None,
        len: 16 + len,
    };
    let mut tlvs = rest;
    while let [kind, hi, lo, tail @ ..] = tlvs {
        let l = usize::from(u16::from_be_bytes([*hi, *lo]));
        let value = tail.get(..l).ok_or("TLV overruns header")?;
        match *kind {
            PP2_TYPE_ALPN => decoded.alpn = Some(value.to_vec()),
            PP2_TYPE_AUTHORITY => {
                decoded.authority = Some(String::from_utf8_lossy(value).into_owned())
            }
            _ => {}
        }
        tlvs = tail.get(l..).unwrap_or_default();
    }
    Ok(Some(decoded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_v4_and_v6() {
        for (c, l) in [
            ("192.0.2.1:40000", "198.51.100.2:443"),
            ("[2001:db8::1]:40000", "[2001:db8::2]:443"),
        ] {
            let (c, l): (SocketAddr, SocketAddr) =
                (c.parse().expect("addr"), l.parse().expect("addr"));
            let info = ProxyInfo {
                authority: Some("example.com"),
                alpn: Some(b"h2"),
                tls_version: Some("TLSv1.3"),
            };
            let bytes = encode(c, l, &info);
            let d = decode(&bytes).expect("valid").expect("complete");
            assert_eq!((d.client, d.local, d.len), (c, l, bytes.len()));
            assert_eq!(d.authority.as_deref(), Some("example.com"));
            assert_eq!(d.alpn.as_deref(), Some(&b"h2"[..]));
            for cut in 0..bytes.len() {
                assert_eq!(decode(&bytes[..cut]), Ok(None), "prefix {cut}");
            }
        }
    }

    #[test]
    fn rejects_non_proxy_bytes() {
        assert!(decode(b"GET / HTTP/1.1\r\n").is_err());
    }
}
