//! Header rewriting between the client and the upstream.
//!
//! On arrival ([`arrive`]), before any policy runs: the hop-by-hop headers and those that
//! `Connection` names are removed, and what they said (a WebSocket upgrade, `TE: trailers`)
//! is kept in an [`Arrival`], with whether the peer is a trusted proxy and who the client
//! is. On the way to the upstream ([`prepare_request`]): the hop-by-hop headers are removed
//! again (a policy may have set one; `Connection` names nothing then), and the forwarding
//! headers (`X-Forwarded-For`, `-Proto`, `-Host`, `X-Real-IP`, `Forwarded`) are written
//! from what the gateway knows, extending those of a trusted proxy and replacing anyone
//! else's.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::Uri;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::arrival::Arrival;
use crate::gateway::ConnInfo;
use crate::policy::{Cidr, UNKNOWN_CLIENT, client_ip};

/// How many names [`HOP_BY_HOP`] lists.
const HOP_COUNT: usize = 7;

/// Headers that describe one hop and must not be forwarded (RFC 9110 section 7.6.1), plus
/// the non-standard ones that proxies commonly strip.
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
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// How many names [`PROXY_CLAIMS`] lists.
const CLAIM_COUNT: usize = 8;

/// Other headers by which a proxy tells its upstream about the original request, which some
/// frameworks believe: Symfony, Laminas and IIS route on `X-Original-URL` and
/// `X-Rewrite-URL`, Spring and others build links from `X-Forwarded-Prefix` and
/// `X-Forwarded-Port`. A peer that is not a trusted proxy may not send them: they are
/// removed on arrival (a policy may set them after).
const PROXY_CLAIMS: [HeaderName; CLAIM_COUNT] = [
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-original-host"),
];

/// The host the request is for, as `host[:port]`, for `X-Forwarded-Host`, `Forwarded`
/// and `hostHeader: preserve`: the authority of the request target when it has one
/// (HTTP/2, or an absolute-form target, where RFC 9112 says to ignore `Host`), otherwise
/// the `Host` header; the one routing used ([`crate::router::request_host`]). `None` when
/// it is not a host name or address with an optional port.
pub(super) fn original_host(headers: &HeaderMap, uri: &Uri) -> Option<HeaderValue> {
    if let Some(authority) = uri.authority() {
        let raw = authority.as_str();
        // user information is no part of the host
        let raw = raw.rsplit_once('@').map_or(raw, |(_, host)| host);
        return is_host_and_port(raw)
            .then(|| HeaderValue::from_str(raw).ok())
            .flatten();
    }
    let value = headers.get(header::HOST)?;
    is_host_and_port(value.to_str().ok()?).then(|| value.clone())
}

/// Whether `raw` is a host name or an IP address (`[v6]`), with an optional port.
fn is_host_and_port(raw: &str) -> bool {
    let (host, port) = match raw.rfind(':') {
        Some(colon) if !raw[colon..].contains(']') => (&raw[..colon], Some(&raw[colon + 1..])),
        _ => (raw, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    port_ok && crate::router::is_host_name(host.trim_end_matches('.'))
}

/// Headers that a `Connection` header may not have removed on arrival: the gateway routes
/// and frames the message with them, and sets them for the upstream itself.
fn kept_on_arrival(name: &HeaderName) -> bool {
    name == header::HOST || name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING
}

/// Removes the headers the `Connection` header names (`keep-alive` and `close`, the common
/// values, name none: nothing is allocated for them); on `arrival`, not those the gateway
/// needs ([`kept_on_arrival`]).
fn remove_named_by_connection(headers: &mut HeaderMap, arrival: bool) {
    let mut named: Vec<HeaderName> = Vec::new();
    for value in &headers.get_all(header::CONNECTION) {
        let value = value.as_bytes();
        if value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close") {
            continue;
        }
        named.extend(
            value
                .split(|&b| b == b',')
                .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
                .filter(|name| !(arrival && kept_on_arrival(name))),
        );
    }
    for name in named {
        headers.remove(name);
    }
}

/// Removes the hop-by-hop headers (not the ones `Connection` names), and
/// `Transfer-Encoding` too when `transfer_encoding`.
fn remove_hop_headers(headers: &mut HeaderMap, transfer_encoding: bool) {
    // one pass to find the hop-by-hop headers present (usually none, or `Connection`), then
    // remove only those: each removal is a hash lookup
    let mut present = [false; HOP_COUNT + 1];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[i] = true;
        } else if name == header::TRANSFER_ENCODING {
            present[HOP_COUNT] = transfer_encoding;
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

/// Takes a request's hop-by-hop headers off on arrival, before any policy sees it: those
/// `Connection` names (but `Host`, `Content-Length` and `Transfer-Encoding`, which the
/// gateway needs and sets for the upstream itself) and the hop-by-hop ones, keeping what
/// they said in the returned [`Arrival`]; and from a peer that is not a trusted proxy, the
/// [`PROXY_CLAIMS`]. `peer` is the connection's peer (if known); `trusted` the gateway's
/// trusted proxies. Allocates nothing for a request without a `Connection` header that
/// names another header.
pub(crate) fn arrive(headers: &mut HeaderMap, peer: Option<IpAddr>, trusted: &[Cidr]) -> Arrival {
    let websocket = wants_websocket(headers);
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if headers.contains_key(header::CONNECTION) {
        remove_named_by_connection(headers, true);
    }
    remove_hop_headers(headers, false);
    let peer = peer.map(|ip| ip.to_canonical());
    let trusted_peer = peer.is_some_and(|ip| trusted.iter().any(|c| c.contains(ip)));
    if !trusted_peer {
        remove_proxy_claims(headers);
    }
    let client = match peer {
        Some(ip) if trusted_peer => Some(client_ip(headers, ip, trusted)),
        other => other,
    }
    .filter(|ip| *ip != UNKNOWN_CLIENT);
    Arrival {
        websocket,
        te_trailers,
        trusted_peer,
        client,
    }
}

/// Removes the [`PROXY_CLAIMS`] present: one pass over the names, then a removal for each
/// one found (usually none).
fn remove_proxy_claims(headers: &mut HeaderMap) {
    let mut present = [false; CLAIM_COUNT];
    let mut any = false;
    for name in headers.keys() {
        if let Some(i) = PROXY_CLAIMS.iter().position(|claim| claim == name) {
            present[i] = true;
            any = true;
        }
    }
    if any {
        for (i, name) in PROXY_CLAIMS.iter().enumerate() {
            if present[i] {
                headers.remove(name);
            }
        }
    }
}

/// Prepares the headers of a request for the upstream: hop-by-hop headers removed (again:
/// a policy may have set one), `Host` left to the client (the upstream's authority), and
/// the forwarding headers written from what the gateway knows:
///
/// - from a trusted proxy ([`Arrival::trusted_peer`]): `X-Forwarded-For` appended with the
///   peer's address, `X-Forwarded-Proto` and `X-Forwarded-Host` kept (set when missing),
///   `Forwarded` appended with an element for this hop, `X-Real-IP` the client as
///   [`client_ip`] finds it (removed when unknown);
/// - from anyone else: `X-Forwarded-For` and `X-Real-IP` the peer's address alone (a
///   client must not plant addresses that upstreams read from the left),
///   `X-Forwarded-Proto` the connection's scheme, `X-Forwarded-Host` the host the request
///   was routed on (`host`, see [`original_host`]), `Forwarded`
///   `for=...;proto=...;host=...` (RFC 7239).
///
/// For an HTTP/2 upstream (`h2`), `TE: trailers` is sent when the client sent it: it is how
/// a gRPC client says it understands trailers (in HTTP/1.1, TE is hop-by-hop like the
/// others).
pub(super) fn prepare_request(
    headers: &mut HeaderMap,
    conn: Option<&ConnInfo>,
    arrival: &Arrival,
    host: Option<HeaderValue>,
    h2: bool,
) {
    remove_hop_headers(headers, true);
    if h2 && arrival.te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    headers.remove(header::HOST);
    let Some(conn) = conn else {
        // nothing known of the client: nothing said of it, and nothing a client said passed
        for name in [
            X_FORWARDED_FOR,
            X_FORWARDED_PROTO,
            X_REAL_IP,
            header::FORWARDED,
        ] {
            headers.remove(name);
        }
        set_or_remove(headers, X_FORWARDED_HOST, host);
        return;
    };
    let peer = IpText::of(conn.peer.ip().to_canonical());
    let proto = if conn.secure { "https" } else { "http" };
    let element = forwarded_element(&peer, proto, host.as_ref());
    if arrival.trusted_peer {
        append_forwarded_for(headers, &peer);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if !headers.contains_key(&X_FORWARDED_HOST) {
            set_or_remove(headers, X_FORWARDED_HOST, host);
        }
        append_line(headers, &header::FORWARDED, element);
        let client = arrival
            .client
            .and_then(|ip| HeaderValue::from_bytes(IpText::of(ip).as_bytes()).ok());
        set_or_remove(headers, X_REAL_IP, client);
    } else {
        match HeaderValue::from_bytes(peer.as_bytes()) {
            Ok(value) => {
                headers.insert(X_FORWARDED_FOR, value.clone());
                headers.insert(X_REAL_IP, value);
            }
            Err(_) => {
                headers.remove(X_FORWARDED_FOR);
                headers.remove(X_REAL_IP);
            }
        }
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        set_or_remove(headers, X_FORWARDED_HOST, host);
        set_or_remove(headers, header::FORWARDED, element);
    }
}

fn set_or_remove(headers: &mut HeaderMap, name: HeaderName, value: Option<HeaderValue>) {
    match value {
        Some(value) => {
            headers.insert(name, value);
        }
        None => {
            headers.remove(name);
        }
    }
}

/// Every `X-Forwarded-For` line, in order, then the peer's address, as one line.
fn append_forwarded_for(headers: &mut HeaderMap, peer: &IpText) {
    let value = HeaderValue::from_bytes(peer.as_bytes()).ok();
    append_line(headers, &X_FORWARDED_FOR, value);
}

/// Every line of `name`, joined in order with `, `, then `last`, as one line (`last` alone
/// when there is none).
fn append_line(headers: &mut HeaderMap, name: &HeaderName, last: Option<HeaderValue>) {
    let Some(last) = last else {
        return;
    };
    let mut joined = Vec::new();
    for line in &headers.get_all(name) {
        let line = line.as_bytes().trim_ascii();
        if !line.is_empty() {
            joined.extend_from_slice(line);
            joined.extend_from_slice(b", ");
        }
    }
    let value = if joined.is_empty() {
        Ok(last)
    } else {
        joined.extend_from_slice(last.as_bytes());
        HeaderValue::from_maybe_shared(bytes::Bytes::from(joined))
    };
    if let Ok(value) = value {
        headers.insert(name.clone(), value);
    }
}

/// This hop's element of `Forwarded` (RFC 7239): `for=192.0.2.7;proto=http;host=api.example`,
/// an IPv6 address quoted and bracketed (`for="[2001:db8::7]"`), a host with a port quoted.
fn forwarded_element(
    peer: &IpText,
    proto: &str,
    host: Option<&HeaderValue>,
) -> Option<HeaderValue> {
    let mut text = Vec::with_capacity(64);
    text.extend_from_slice(b"for=");
    if peer.as_bytes().contains(&b':') {
        text.extend_from_slice(b"\"[");
        text.extend_from_slice(peer.as_bytes());
        text.extend_from_slice(b"]\"");
    } else {
        text.extend_from_slice(peer.as_bytes());
    }
    text.extend_from_slice(b";proto=");
    text.extend_from_slice(proto.as_bytes());
    if let Some(host) = host {
        let host = host.as_bytes();
        let token = host
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        text.extend_from_slice(b";host=");
        if token {
            text.extend_from_slice(host);
        } else {
            // a host and port, or an IPv6 address: quoted (no '"' or '\\' in a host)
            text.push(b'"');
            text.extend_from_slice(host);
            text.push(b'"');
        }
    }
    HeaderValue::from_maybe_shared(bytes::Bytes::from(text)).ok()
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

/// Whether a request asks to switch to WebSocket (HTTP/1.1 `Connection: upgrade` with
/// `Upgrade: websocket`). Other protocols are not tunnelled: `h2c` in particular would let
/// a client talk to the upstream past routing and policies.
fn wants_websocket(headers: &HeaderMap) -> bool {
    let Some(upgrade) = headers.get(header::UPGRADE) else {
        return false;
    };
    upgrade.as_bytes().eq_ignore_ascii_case(b"websocket")
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
}

/// The `Upgrade` value to send again for a request that asked to switch to WebSocket on
/// arrival ([`Arrival::websocket`]).
pub(super) fn upgrade_of(arrival: &Arrival) -> Option<HeaderValue> {
    arrival
        .websocket
        .then(|| HeaderValue::from_static("websocket"))
}

/// Puts back the two headers of a protocol switch, which the hop-by-hop rules removed.
pub(super) fn set_upgrade(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade);
}

/// Prepares the headers of an upstream response for the client: the hop-by-hop headers,
/// those the upstream's `Connection` names, and `Transfer-Encoding` removed.
pub(super) fn prepare_response(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        remove_named_by_connection(headers, false);
    }
    remove_hop_headers(headers, true);
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

    fn conn(peer: &str) -> ConnInfo {
        ConnInfo {
            peer: peer.parse::<SocketAddr>().unwrap(),
            secure: false,
        }
    }

    fn trusted() -> Vec<Cidr> {
        vec!["10.0.0.0/8".parse().unwrap()]
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
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        h.insert("x-original-url", HeaderValue::from_static("/admin"));
        h.insert("x-forwarded-prefix", HeaderValue::from_static("/evil"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        let conn = conn("192.0.2.7:5555");
        let host = original_host(&h, &Uri::from_static("/"));
        let arrival = arrive(&mut h, Some(conn.peer.ip()), &trusted());
        // on arrival: the hop-by-hop headers and those Connection names are gone, what
        // they said is kept; the framing headers stay for the gateway
        assert!(arrival.te_trailers && !arrival.websocket && !arrival.trusted_peer);
        assert_eq!(arrival.client, Some(conn.peer.ip()));
        for gone in [
            "connection",
            "x-secret-hop",
            "keep-alive",
            "te",
            "x-original-url",
            "x-forwarded-prefix",
        ] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        assert!(h.get(header::HOST).is_some() && h.get(header::TRANSFER_ENCODING).is_some());

        let mut for_h2 = h.clone();
        prepare_request(&mut for_h2, Some(&conn), &arrival, host.clone(), true);
        assert_eq!(for_h2[header::TE], "trailers");
        prepare_request(&mut h, Some(&conn), &arrival, host, false);
        assert!(h.get(header::TE).is_none());
        assert!(h.get(header::HOST).is_none());
        assert!(h.get(header::TRANSFER_ENCODING).is_none());
        // an untrusted peer: nothing the client said of itself passes
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-real-ip"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "gw.example");
        assert_eq!(h["forwarded"], "for=192.0.2.7;proto=http;host=gw.example");
        assert_eq!(h.get_all("forwarded").iter().count(), 1);
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn a_trusted_proxy_is_believed_and_extended() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("gw.internal:8080"));
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.9"),
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-host", HeaderValue::from_static("api.example"));
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert(
            "forwarded",
            HeaderValue::from_static("for=203.0.113.9;proto=https;host=api.example"),
        );
        h.insert("x-forwarded-prefix", HeaderValue::from_static("/api"));
        let conn = conn("10.1.2.3:4444");
        let host = original_host(&h, &Uri::from_static("/"));
        let arrival = arrive(&mut h, Some(conn.peer.ip()), &trusted());
        assert!(arrival.trusted_peer);
        assert_eq!(arrival.client, Some("203.0.113.9".parse().unwrap()));
        assert_eq!(h["x-forwarded-prefix"], "/api");
        prepare_request(&mut h, Some(&conn), &arrival, host, false);
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 203.0.113.9, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.example");
        assert_eq!(h["x-real-ip"], "203.0.113.9");
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.9;proto=https;host=api.example, for=10.1.2.3;proto=http;host=\"gw.internal:8080\""
        );

        // a trusted proxy that does not say who the client is: no X-Real-IP at all
        let mut bare = HeaderMap::new();
        bare.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        let arrival = arrive(&mut bare, Some(conn.peer.ip()), &trusted());
        assert_eq!(arrival.client, None);
        prepare_request(&mut bare, Some(&conn), &arrival, None, false);
        assert!(bare.get("x-real-ip").is_none());
        assert_eq!(bare["x-forwarded-for"], "10.1.2.3");
        assert_eq!(bare["forwarded"], "for=10.1.2.3;proto=http");
    }

    #[test]
    fn forwarded_quotes_ipv6_and_hosts_with_ports() {
        let mut h = HeaderMap::new();
        let v6 = ConnInfo {
            peer: "[2001:db8::7]:443".parse().unwrap(),
            secure: true,
        };
        let arrival = arrive(&mut h, Some(v6.peer.ip()), &[]);
        let host = HeaderValue::from_static("[::1]:8443");
        prepare_request(&mut h, Some(&v6), &arrival, Some(host), false);
        assert_eq!(
            h["forwarded"],
            "for=\"[2001:db8::7]\";proto=https;host=\"[::1]:8443\""
        );
        assert_eq!(h["x-forwarded-for"], "2001:db8::7");
        assert_eq!(h["x-forwarded-proto"], "https");
        // an IPv4 client on a dual-stack listener is written as IPv4
        let mut h = HeaderMap::new();
        let mapped = conn("[::ffff:192.0.2.9]:1");
        let arrival = arrive(&mut h, Some(mapped.peer.ip()), &[]);
        prepare_request(&mut h, Some(&mapped), &arrival, None, false);
        assert_eq!(h["x-forwarded-for"], "192.0.2.9");
        assert_eq!(h["forwarded"], "for=192.0.2.9;proto=http");
    }

    #[test]
    fn the_forwarded_host_is_the_one_routing_used() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("evil.example"));
        // absolute-form (or HTTP/2): the target's authority, never the Host header
        let absolute = Uri::from_static("http://api.example.test:8080/x");
        assert_eq!(
            original_host(&h, &absolute).unwrap(),
            "api.example.test:8080"
        );
        let with_user = Uri::from_static("http://user@api.example.test/x");
        assert_eq!(original_host(&h, &with_user).unwrap(), "api.example.test");
        assert_eq!(
            original_host(&h, &Uri::from_static("/x")).unwrap(),
            "evil.example"
        );
        for junk in [
            "evil.com?.example.com",
            "a@b",
            "host:port",
            "[::1",
            "x:123456",
        ] {
            h.insert(header::HOST, HeaderValue::from_static(junk));
            assert_eq!(original_host(&h, &Uri::from_static("/x")), None, "{junk}");
        }
        for good in ["[::1]:80", "[::1]", "example.com.", "10.0.0.1:8080"] {
            h.insert(header::HOST, HeaderValue::from_static(good));
            assert!(
                original_host(&h, &Uri::from_static("/x")).is_some(),
                "{good}"
            );
        }
    }

    #[test]
    fn arrival_detects_websocket_and_keeps_what_the_gateway_needs() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, x-consumer, host, content-length"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert("x-consumer", HeaderValue::from_static("forged"));
        h.insert(header::HOST, HeaderValue::from_static("gw.example"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        let arrival = arrive(&mut h, None, &[]);
        assert!(arrival.websocket);
        assert_eq!(upgrade_of(&arrival).unwrap(), "websocket");
        assert!(h.get("x-consumer").is_none() && h.get(header::UPGRADE).is_none());
        assert!(h.get(header::HOST).is_some() && h.get(header::CONTENT_LENGTH).is_some());
        // h2c is no WebSocket; neither is Upgrade without Connection: upgrade
        for (connection, upgrade) in [("upgrade", "h2c"), ("keep-alive", "websocket")] {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(connection));
            h.insert(header::UPGRADE, HeaderValue::from_static(upgrade));
            assert!(
                !arrive(&mut h, None, &[]).websocket,
                "{connection} {upgrade}"
            );
        }
        // a header a policy sets after arrival survives the upstream side, even if it is
        // named by a Connection header a policy (wrongly) set
        let mut later = HeaderMap::new();
        later.insert(header::CONNECTION, HeaderValue::from_static("x-consumer"));
        later.insert("x-consumer", HeaderValue::from_static("alice"));
        prepare_request(&mut later, None, &Arrival::default(), None, false);
        assert_eq!(later["x-consumer"], "alice");
        assert!(later.get(header::CONNECTION).is_none());
    }
}
