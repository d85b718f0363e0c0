//! Header rewriting between the client and the upstream.

use std::fmt::Write as _;

use http::Uri;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::gateway::ConnInfo;

/// Headers that describe one hop and must not be forwarded (RFC 9110 section 7.6.1), plus
/// the non-standard ones that proxies commonly strip.
/// How many names [`HOP_BY_HOP`] lists.
const HOP_COUNT: usize = 7;

const HOP_BY_HOP: [HeaderName; HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The host the client asked for: the `Host` header, or the authority of an HTTP/2 or
/// absolute-form request.
pub(super) fn original_host(headers: &HeaderMap, uri: &Uri) -> Option<HeaderValue> {
    headers.get(header::HOST).cloned().or_else(|| {
        uri.authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

/// Removes hop-by-hop headers (and those the `Connection` header names) and
/// `Transfer-Encoding`, which the client connection sets for itself.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let mut named: Vec<HeaderName> = Vec::new();
    for value in &headers.get_all(header::CONNECTION) {
        let value = value.as_bytes();
        // the common values name no other header: nothing to collect (and no allocation)
        if value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close") {
            continue;
        }
        named.extend(
            value
                .split(|&b| b == b',')
                .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok()),
        );
    }
    for name in named {
        headers.remove(name);
    }
    // one pass to find the hop-by-hop headers present (usually none, or `Connection`), then
    // remove only those: each removal is a hash lookup
    let mut present = [false; HOP_COUNT + 1];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[i] = true;
        } else if name == header::TRANSFER_ENCODING {
            present[HOP_COUNT] = true;
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present[i] {
            headers.remove(name);
        }
    }
    if present[HOP_COUNT] {
        headers.remove(header::TRANSFER_ENCODING);
    }
}

/// Prepares the headers of a request for the upstream: hop-by-hop headers removed, `Host`
/// left to the client (the upstream's authority), `X-Forwarded-For` appended with the
/// client address, `X-Forwarded-Proto` and `X-Forwarded-Host` set. For an HTTP/2 upstream
/// (`h2`), `TE: trailers` is kept: it is how a gRPC client says it understands trailers (in
/// HTTP/1.1, TE is hop-by-hop like the others).
pub(super) fn prepare_request(
    headers: &mut HeaderMap,
    conn: Option<&ConnInfo>,
    original_host: Option<HeaderValue>,
    h2: bool,
) {
    let te_trailers = h2
        && headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    remove_hop_by_hop(headers);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    headers.remove(header::HOST);
    if let Some(conn) = conn {
        let ip = IpText::of(conn.peer.ip());
        // every X-Forwarded-For line, in order, then the client's address
        let mut joined = Vec::new();
        for line in &headers.get_all(&X_FORWARDED_FOR) {
            let line = line.as_bytes().trim_ascii();
            if !line.is_empty() {
                joined.extend_from_slice(line);
                joined.extend_from_slice(b", ");
            }
        }
        let value = if joined.is_empty() {
            HeaderValue::from_bytes(ip.as_bytes())
        } else {
            joined.extend_from_slice(ip.as_bytes());
            HeaderValue::from_maybe_shared(bytes::Bytes::from(joined))
        };
        if let Ok(value) = value {
            headers.insert(X_FORWARDED_FOR, value);
        }
        let proto = if conn.secure { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if let Some(host) = original_host {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

/// An IP address as text, formatted without allocating (the longest, an IPv6 address with
/// an embedded IPv4 one, is 45 bytes).
struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl Default for IpText {
    fn default() -> Self {
        Self {
            buf: [0; 48],
            len: 0,
        }
    }
}

impl IpText {
    /// The text of `ip`; IPv4 without the formatting machinery (it is on every request).
    fn of(ip: std::net::IpAddr) -> Self {
        let mut text = Self::default();
        match ip {
            std::net::IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            std::net::IpAddr::V6(v6) => {
                let _ = write!(text, "{v6}");
            }
        }
        text
    }

    fn push(&mut self, byte: u8) {
        self.buf[self.len] = byte;
        self.len += 1;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The `Upgrade` value of a request that asks to switch to WebSocket (HTTP/1.1 `Connection:
/// upgrade` with `Upgrade: websocket`). Other protocols are not tunnelled: `h2c` in
/// particular would let a client talk to the upstream past routing and policies.
pub(super) fn upgrade_of(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    let upgrade = headers.get(header::UPGRADE)?;
    (wants && upgrade.as_bytes().eq_ignore_ascii_case(b"websocket")).then(|| upgrade.clone())
}

/// Puts back the two headers of a protocol switch, which the hop-by-hop rules removed.
pub(super) fn set_upgrade(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade);
}

/// Prepares the headers of an upstream response for the client.
pub(super) fn prepare_response(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn ip_text() {
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "192.168.100.255",
            "127.0.0.1",
            "::1",
            "2001:db8::7",
        ] {
            let parsed: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::of(parsed).as_bytes(), ip.as_bytes());
        }
    }

    #[test]
    fn request_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::HOST, HeaderValue::from_static("gw.example"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        let conn = ConnInfo {
            peer: "192.0.2.7:5555".parse::<SocketAddr>().unwrap(),
            secure: false,
        };
        let host = original_host(&h, &Uri::from_static("/"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        let mut for_h2 = h.clone();
        prepare_request(&mut for_h2, Some(&conn), host.clone(), true);
        assert_eq!(for_h2[header::TE], "trailers");
        prepare_request(&mut h, Some(&conn), host, false);
        assert!(h.get(header::TE).is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::HOST).is_none());
        assert!(h.get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 192.0.2.7");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "gw.example");
        assert_eq!(h["x-kept"], "yes");
    }
}
