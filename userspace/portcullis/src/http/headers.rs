//! Header rewriting between client and upstream: hop-by-hop fields removed (RFC 9110 §7.6.1), `Forwarded`
//! (RFC 7239) and the de facto `X-Forwarded-For` / `X-Forwarded-Proto` set from what this proxy saw.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

/// Fields that only concern one connection (RFC 9110 §7.6.1, plus the obsolete `Proxy-Connection` and
/// `Keep-Alive` that §7.6.1 names as commonly seen).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Whether an HTTP/1.1 request asks to switch protocols (`Connection: upgrade` with `Upgrade`).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_tokens(headers).any(|t| t == "upgrade")
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop fields: the fixed set and every field the `Connection` header names. With `upgrade`,
/// `Upgrade` survives and `Connection: upgrade` is set again (the hop to the upstream asks for it too).
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<String> = connection_tokens(headers).collect();
    for name in named {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes())
            && !(upgrade && name == header::UPGRADE)
        {
            headers.remove(name);
        }
    }
    let kept_upgrade = upgrade.then(|| headers.remove(header::UPGRADE)).flatten();
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(protocol) = kept_upgrade {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Sets `Forwarded`, `X-Forwarded-For` and `X-Forwarded-Proto` for a request from `client` for `host`.
/// Without `trusted`, the client's own values are dropped first: anyone can send them.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: SocketAddr,
    host: Option<&str>,
    trusted: bool,
) {
    if !trusted {
        headers.remove(header::FORWARDED);
        headers.remove(X_FORWARDED_FOR);
        headers.remove(X_FORWARDED_PROTO);
    }
    let ip = client.ip().to_canonical();
    let element = forwarded_element(ip, host);
    append(headers, header::FORWARDED, &element);
    append(headers, X_FORWARDED_FOR, &ip.to_string());
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    }
}

/// One `Forwarded` element (RFC 7239 §4): `for=192.0.2.1;proto=https;host=example.com`, an IPv6 node quoted
/// and bracketed (§6), a value that is not a token quoted (a host with a port).
pub fn forwarded_element(ip: IpAddr, host: Option<&str>) -> String {
    let node = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut element = format!("for={node};proto=https");
    if let Some(host) = host.filter(|h| h.bytes().all(is_qdtext) && !h.is_empty()) {
        if host.bytes().all(is_tchar) {
            element.push_str(&format!(";host={host}"));
        } else {
            element.push_str(&format!(";host=\"{host}\""));
        }
    }
    element
}

fn append(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let joined = match headers.get(&name).and_then(|v| v.to_str().ok()) {
        Some(previous) if !previous.is_empty() => format!("{previous}, {value}"),
        _ => value.to_owned(),
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(name, v);
    }
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Characters allowed inside a quoted string without escaping (RFC 9110 §5.6.4), printable ASCII only.
fn is_qdtext(b: u8) -> bool {
    (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_quotes_ipv6_and_hosts_with_ports() {
        let v4: IpAddr = [192, 0, 2, 1].into();
        assert_eq!(
            forwarded_element(v4, Some("example.com")),
            "for=192.0.2.1;proto=https;host=example.com"
        );
        let v6: IpAddr = "2001:db8::1".parse().unwrap_or(v4);
        assert_eq!(
            forwarded_element(v6, Some("example.com:8443")),
            "for=\"[2001:db8::1]\";proto=https;host=\"example.com:8443\""
        );
        assert_eq!(
            forwarded_element(v4, Some("a\"b")),
            "for=192.0.2.1;proto=https"
        );
    }

    #[test]
    fn incoming_forwarded_replaced_unless_trusted() {
        let client: SocketAddr = "192.0.2.7:5555".parse().unwrap_or(([0, 0, 0, 0], 0).into());
        let mut h = HeaderMap::new();
        h.insert(header::FORWARDED, HeaderValue::from_static("for=10.0.0.1"));
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        let mut trusted = h.clone();
        set_forwarded(&mut h, client, Some("a.test"), false);
        assert_eq!(
            h[header::FORWARDED],
            "for=192.0.2.7;proto=https;host=a.test"
        );
        assert_eq!(h[X_FORWARDED_FOR], "192.0.2.7");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        set_forwarded(&mut trusted, client, None, true);
        assert_eq!(
            trusted[header::FORWARDED],
            "for=10.0.0.1, for=192.0.2.7;proto=https"
        );
        assert_eq!(trusted[X_FORWARDED_FOR], "10.0.0.1, 192.0.2.7");
    }

    #[test]
    fn hop_by_hop_and_connection_named_fields_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let mut up = h.clone();
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        up.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, x-secret-hop"),
        );
        assert!(wants_upgrade(&up));
        remove_hop_by_hop(&mut up, true);
        assert_eq!(up[header::UPGRADE], "websocket");
        assert_eq!(up[header::CONNECTION], "upgrade");
        assert!(!up.contains_key("x-secret-hop"));
    }
}
