//! The authority a request names, and the requests a server must refuse for it (400).
//!
//! - HTTP/1.1 without a `Host` field, any request with more than one, or one whose value is not
//!   `host[:port]` (RFC 9112 §3.2; RFC 9110 §7.2 leaves no room for userinfo): refused. Two `Host` fields
//!   are how requests get routed by one server and served by another.
//! - Absolute-form targets (`GET http://a.example/ HTTP/1.1`): the target's authority wins and the `Host`
//!   field is ignored (RFC 9112 §3.2.2); the upstream gets the target's authority as `Host`.
//! - h2: `:authority`, or a `Host` field without it; both, naming different hosts: refused (RFC 9113 §8.3.1).
//! - An empty `Host` (a target without authority, RFC 9110 §7.2), HTTP/1.0 without one, h2 without either:
//!   no authority; the upstream then gets its own address as `Host`.

use http::uri::Authority;
use http::{HeaderValue, Request, Version, header};

/// Why a request's host was refused: the `cause` in the 400's body and the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// HTTP/1.1 without `Host`.
    Missing,
    /// More than one `Host` field.
    Multiple,
    /// A `Host` value that is not `host[:port]`.
    Invalid,
    /// h2 `:authority` and `Host` name different hosts.
    Mismatch,
}

impl HostError {
    /// The cause label.
    pub fn cause(self) -> &'static str {
        match self {
            Self::Missing => "missing_host",
            Self::Multiple => "multiple_host",
            Self::Invalid => "invalid_host",
            Self::Mismatch => "host_mismatch",
        }
    }
}

/// The authority `req` names (module docs), or why it is refused.
pub fn authority<B>(req: &Request<B>) -> Result<Option<Authority>, HostError> {
    let mut fields = req.headers().get_all(header::HOST).iter();
    let field = fields.next();
    if fields.next().is_some() {
        return Err(HostError::Multiple);
    }
    let host = field.map(parse).transpose()?.flatten();
    match (req.uri().authority(), host) {
        (Some(target), Some(host)) if req.version() == Version::HTTP_2 && !same(target, &host) => {
            Err(HostError::Mismatch)
        }
        (Some(target), _) => Ok(Some(target.clone())),
        (None, Some(host)) => Ok(Some(host)),
        (None, None) if req.version() == Version::HTTP_11 && field.is_none() => {
            Err(HostError::Missing)
        }
        (None, None) => Ok(None),
    }
}

/// A `Host` value: `None` when empty.
fn parse(value: &HeaderValue) -> Result<Option<Authority>, HostError> {
    let text = value.to_str().map_err(|_| HostError::Invalid)?;
    if text.is_empty() {
        return Ok(None);
    }
    if text.contains('@') {
        return Err(HostError::Invalid);
    }
    // The http crate takes any characters after the colon; a port is digits (RFC 3986 §3.2.3), and an IPv6
    // literal is bracketed, so a colon outside brackets starts the port.
    let port = match text.strip_prefix('[') {
        Some(rest) => match rest.split_once(']').ok_or(HostError::Invalid)?.1 {
            "" => None,
            after => Some(after.strip_prefix(':').ok_or(HostError::Invalid)?),
        },
        None => text.split_once(':').map(|(_, port)| port),
    };
    if port.is_some_and(|p| !p.is_empty() && p.parse::<u16>().is_err()) {
        return Err(HostError::Invalid);
    }
    text.parse::<Authority>()
        .map(Some)
        .map_err(|_| HostError::Invalid)
}

/// The same host and port, names compared without case; no port is 443 (these are https requests).
fn same(a: &Authority, b: &Authority) -> bool {
    a.host().eq_ignore_ascii_case(b.host())
        && a.port_u16().unwrap_or(443) == b.port_u16().unwrap_or(443)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&[u8]]) -> Request<()> {
        let mut r = Request::builder().version(version).uri(uri);
        for h in hosts {
            r = r.header(header::HOST, HeaderValue::from_bytes(h).expect("value"));
        }
        r.body(()).expect("request")
    }

    fn named(r: &Request<()>) -> Result<Option<String>, HostError> {
        authority(r).map(|a| a.map(|a| a.as_str().to_owned()))
    }

    #[test]
    fn host_rules() {
        use HostError::*;
        let v11 = Version::HTTP_11;
        /// Version, target, Host fields, what `authority` says.
        type Case<'a> = (
            Version,
            &'a str,
            &'a [&'a [u8]],
            Result<Option<&'a str>, HostError>,
        );
        let cases: &[Case] = &[
            (v11, "/", &[b"a.example"], Ok(Some("a.example"))),
            (v11, "/", &[b"a.example:8443"], Ok(Some("a.example:8443"))),
            (
                v11,
                "/",
                &[b"[2001:db8::1]:443"],
                Ok(Some("[2001:db8::1]:443")),
            ),
            (v11, "/", &[], Err(Missing)),
            (v11, "/", &[b""], Ok(None)),
            (v11, "/", &[b"a.example", b"b.example"], Err(Multiple)),
            (v11, "/", &[b"a.example", b"a.example"], Err(Multiple)),
            (v11, "/", &[b"user@a.example"], Err(Invalid)),
            (v11, "/", &[b"a.example:port"], Err(Invalid)),
            (v11, "/", &[b"a.example:1:2"], Err(Invalid)),
            (v11, "/", &[b"a.example:70000"], Err(Invalid)),
            (v11, "/", &[b"[2001:db8::1]x"], Err(Invalid)),
            (v11, "/", &[b"2001:db8::1"], Err(Invalid)),
            (v11, "/", &[b"a example"], Err(Invalid)),
            (v11, "/", &[b"a.example/path"], Err(Invalid)),
            (v11, "/", &[b"\xff"], Err(Invalid)),
            // Absolute form: the target's authority, whatever Host says (or whether it is there).
            (
                v11,
                "http://t.example/p",
                &[b"h.example"],
                Ok(Some("t.example")),
            ),
            (v11, "http://t.example/p", &[], Ok(Some("t.example"))),
            (v11, "http://t.example/p", &[b"a", b"b"], Err(Multiple)),
            (Version::HTTP_10, "/", &[], Ok(None)),
            (
                Version::HTTP_10,
                "/",
                &[b"a.example"],
                Ok(Some("a.example")),
            ),
            (
                Version::HTTP_2,
                "https://a.example/",
                &[],
                Ok(Some("a.example")),
            ),
            (
                Version::HTTP_2,
                "https://a.example/",
                &[b"A.EXAMPLE:443"],
                Ok(Some("a.example")),
            ),
            (
                Version::HTTP_2,
                "https://a.example/",
                &[b"b.example"],
                Err(Mismatch),
            ),
            (
                Version::HTTP_2,
                "https://a.example/",
                &[b"a.example:8443"],
                Err(Mismatch),
            ),
            (Version::HTTP_2, "/", &[b"a.example"], Ok(Some("a.example"))),
            (Version::HTTP_2, "/", &[], Ok(None)),
        ];
        for (version, uri, hosts, want) in cases {
            let got = named(&req(*version, uri, hosts));
            let want = want.map(|o| o.map(str::to_owned));
            assert_eq!(got, want, "{version:?} {uri} {hosts:?}");
        }
    }
}
