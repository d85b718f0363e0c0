//! Routing: host, then context (longest prefix on segment boundaries).
//!
//! A [`Router`] is built once per configuration and only read on the request path; a lookup
//! allocates nothing. Operation matching inside an API is the API's own business (see
//! [`crate::gateway`]).

use std::collections::HashMap;

/// Maps `(host, context)` to a value.
///
/// Hosts are matched exactly first, then by wildcard (`*.example.com` matches any name that
/// ends in `.example.com`, longest suffix first), and a path that no host-specific API serves
/// falls back to the APIs that serve any host.
#[derive(Debug, Clone)]
pub struct Router<T> {
    exact: HashMap<Box<str>, ContextTable<T>>,
    /// `(".example.com", table)`, longest suffix first.
    wildcard: Vec<(Box<str>, ContextTable<T>)>,
    any: ContextTable<T>,
}

/// A matched route: the value and how many bytes of the path its context covers.
#[derive(Debug)]
pub struct Match<'a, T> {
    /// The routed value.
    pub value: &'a T,
    /// Length of the context prefix in the path (0 for the context `/`).
    pub context_len: usize,
}

#[derive(Debug, Clone)]
struct ContextTable<T> {
    by_context: HashMap<Box<str>, T>,
}

impl<T> Default for ContextTable<T> {
    fn default() -> Self {
        Self {
            by_context: HashMap::new(),
        }
    }
}

impl<T> ContextTable<T> {
    fn lookup<'a>(&'a self, path: &str) -> Option<Match<'a, T>> {
        if self.by_context.is_empty() {
            return None;
        }
        let mut candidate = path;
        loop {
            if let Some(value) = self.by_context.get(candidate) {
                let context_len = if candidate == "/" { 0 } else { candidate.len() };
                return Some(Match { value, context_len });
            }
            match candidate.rfind('/') {
                Some(0) if candidate.len() > 1 => candidate = "/",
                Some(idx) if idx > 0 => candidate = &candidate[..idx],
                _ => return None,
            }
        }
    }
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: Vec::new(),
            any: ContextTable::default(),
        }
    }
}

impl<T: Clone> Router<T> {
    /// Builds a router from `(hosts, context, value)` entries; empty `hosts` means any host.
    /// Later entries replace earlier ones on the same host and context: callers check for
    /// collisions first (see [`crate::model::check_collisions`]).
    pub fn build<'a>(entries: impl IntoIterator<Item = (&'a [String], &'a str, T)>) -> Self {
        let mut router = Self::default();
        for (hosts, context, value) in entries {
            if hosts.is_empty() {
                router.any.by_context.insert(context.into(), value);
                continue;
            }
            for host in hosts {
                let table = if let Some(suffix) = host.strip_prefix('*') {
                    match router.wildcard.iter_mut().find(|(s, _)| &**s == suffix) {
                        Some((_, table)) => table,
                        None => {
                            router
                                .wildcard
                                .push((suffix.into(), ContextTable::default()));
                            &mut router.wildcard.last_mut().expect("just pushed").1
                        }
                    }
                } else {
                    router.exact.entry(host.as_str().into()).or_default()
                };
                table.by_context.insert(context.into(), value.clone());
            }
        }
        router
            .wildcard
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        router
    }
}

impl<T> Router<T> {
    /// Finds the API for a host (lower case, without port) and a normalized path.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<Match<'_, T>> {
        if let Some(host) = host {
            if let Some(found) = self.exact.get(host).and_then(|t| t.lookup(path)) {
                return Some(found);
            }
            for (suffix, table) in &self.wildcard {
                if host.len() > suffix.len()
                    && host.ends_with(&**suffix)
                    && let Some(found) = table.lookup(path)
                {
                    return Some(found);
                }
            }
        }
        self.any.lookup(path)
    }
}

/// The host a request is for: the URI authority (HTTP/2, absolute-form) or the `Host`
/// header, without the port, in lower case. Borrows unless the name has upper case letters.
pub fn request_host<B>(req: &http::Request<B>) -> Option<std::borrow::Cow<'_, str>> {
    let raw = match req.uri().host() {
        Some(host) => host,
        None => {
            let value = req.headers().get(http::header::HOST)?.to_str().ok()?;
            strip_port(value)
        }
    };
    let raw = raw.trim_end_matches('.');
    if !is_host_name(raw) {
        // not a name or an address: no host (`evil.com?.example.com` must not match
        // `*.example.com`, nor be echoed by `${request.host}`)
        return None;
    }
    if raw.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(std::borrow::Cow::Owned(raw.to_ascii_lowercase()))
    } else {
        Some(std::borrow::Cow::Borrowed(raw))
    }
}

/// Whether `host` is a DNS name (letters, digits, `-`, `_`, `.`) or an IP address
/// (`[v6]` in brackets).
fn is_host_name(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port; a bracket that never closes is kept whole (and matches no host)
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn router() -> Router<&'static str> {
        let any: &[String] = &[];
        let example = ["api.example.com".to_string()];
        let wild = ["*.example.com".to_string()];
        Router::build([
            (any, "/orders", "orders"),
            (any, "/orders/v1", "orders-v1"),
            (any, "/", "root"),
            (&example[..], "/orders", "example-orders"),
            (&wild[..], "/wild", "wild"),
        ])
    }

    fn hit(
        r: &Router<&'static str>,
        host: Option<&str>,
        path: &str,
    ) -> Option<(&'static str, usize)> {
        r.lookup(host, path).map(|m| (*m.value, m.context_len))
    }

    #[test]
    fn longest_context_wins_on_segment_boundaries() {
        let r = router();
        assert_eq!(hit(&r, None, "/orders/v1/items"), Some(("orders-v1", 10)));
        assert_eq!(hit(&r, None, "/orders/v1"), Some(("orders-v1", 10)));
        assert_eq!(hit(&r, None, "/orders/v2"), Some(("orders", 7)));
        assert_eq!(hit(&r, None, "/ordersx"), Some(("root", 0)));
        assert_eq!(hit(&r, None, "/"), Some(("root", 0)));
    }

    #[test]
    fn host_specific_then_wildcard_then_any() {
        let r = router();
        assert_eq!(
            hit(&r, Some("api.example.com"), "/orders/1"),
            Some(("example-orders", 7))
        );
        assert_eq!(hit(&r, Some("api.example.com"), "/wild"), Some(("wild", 5)));
        assert_eq!(hit(&r, Some("other.com"), "/orders/1"), Some(("orders", 7)));
        assert_eq!(hit(&r, Some("x.example.com"), "/wild/a"), Some(("wild", 5)));
        // the wildcard needs a label before the suffix
        assert_eq!(hit(&r, Some("example.com"), "/wild"), Some(("root", 0)));
        assert_eq!(
            hit(&r, Some("api.example.com"), "/nothing"),
            Some(("root", 0))
        );
    }

    #[test]
    fn no_match_without_root() {
        let any: &[String] = &[];
        let r = Router::build([(any, "/a", 1)]);
        assert!(r.lookup(None, "/b").is_none());
        assert!(r.lookup(None, "/").is_none());
        assert_eq!(r.lookup(None, "/a/").map(|m| m.context_len), Some(2));
    }

    #[test]
    fn host_header_parsing() {
        let req = |host: &str| {
            http::Request::builder()
                .uri("/")
                .header("host", host)
                .body(())
                .unwrap()
        };
        assert_eq!(
            request_host(&req("Api.Example.com:8080")).as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            request_host(&req("example.com.")).as_deref(),
            Some("example.com")
        );
        assert_eq!(request_host(&req("[::1]:80")).as_deref(), Some("[::1]"));
        assert_eq!(request_host(&req("[")).as_deref(), None);
        assert_eq!(request_host(&req("[::1")).as_deref(), None);
        let h2 = http::Request::builder()
            .uri("http://h2.example/x")
            .body(())
            .unwrap();
        assert_eq!(request_host(&h2).as_deref(), Some("h2.example"));
    }

    proptest! {
        /// Any Host header the HTTP parser lets through yields a host, without panicking.
        #[test]
        fn host_parsing_never_panics(host in "[ -~]{0,40}") {
            if let Ok(value) = http::HeaderValue::from_str(&host) {
                let req = http::Request::builder().uri("/").header("host", value).body(()).unwrap();
                let _ = request_host(&req);
            }
        }

        /// The matched context is always a prefix of the path that ends on a segment
        /// boundary.
        #[test]
        fn match_is_a_segment_prefix(path in "(/[a-c]{1,2}){0,5}/?") {
            let path = if path.is_empty() { "/".to_string() } else { path };
            let any: &[String] = &[];
            let contexts = ["/a", "/a/b", "/b/c/a", "/c"];
            let r = Router::build(contexts.iter().map(|c| (any, *c, *c)));
            if let Some(m) = r.lookup(None, &path) {
                prop_assert!(path.starts_with(*m.value));
                let rest = &path[m.context_len..];
                prop_assert!(rest.is_empty() || rest.starts_with('/'));
            }
        }
    }

    #[test]
    fn hosts_that_are_not_names_are_no_hosts() {
        let host = |value: &str| {
            let request = http::Request::builder()
                .uri("/x")
                .header("host", value)
                .body(())
                .unwrap();
            request_host(&request).map(std::borrow::Cow::into_owned)
        };
        assert_eq!(
            host("API.Example.com:8080").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(host("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(host("evil.com?.example.com"), None);
        assert_eq!(host("evil.com/.example.com"), None);
        assert_eq!(host("a@b.example.com"), None);
        assert_eq!(host("[nope]"), None);
        // routed as a request without a host: to the APIs of any host, never the wildcard's
        let r = router();
        assert_eq!(
            r.lookup(host("evil.com?.example.com").as_deref(), "/wild")
                .map(|m| *m.value),
            Some("root")
        );
    }
}
