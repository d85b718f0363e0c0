//! Routing: host, then context (longest prefix on segment boundaries).
//!
//! A [`Router`] is built once per configuration and only read on the request path; a lookup
//! of a path without `;` parameters, escapes of delimiters or (where an API ignores case)
//! upper-case letters allocates nothing. Operation matching inside an API is the API's own
//! business (see [`crate::gateway`]).
//!
//! Contexts are matched on the [`path::routing_form`] of the normalized path, the path its
//! upstream will serve: `/app/admin;x/users` reaches the API of `/app/admin`, never the one
//! of `/app`. A case-insensitive context also matches the [`path::case_fold`] of the path,
//! and a request that reaches one must reach it under every spelling a case-insensitive
//! server reads the same way: when another context (of any kind) matches the case fold of
//! the path better, the request is refused ([`PathError::CaseAmbiguous`]).

use std::borrow::Cow;
use std::collections::HashMap;

use crate::path::{self, PathError};

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
    /// The most segments a context has: a path is looked up by its first ones.
    max_segments: usize,
}

/// One value's place in a [`Router`].
#[derive(Debug, Clone)]
pub struct Entry<'a, T> {
    /// The hosts it serves; empty means any host.
    pub hosts: &'a [String],
    /// Its context (`/orders/v1`, or `/`), without a trailing `/`.
    pub context: &'a str,
    /// Whether the context matches ignoring case (see [`path::case_fold`]).
    pub case_insensitive: bool,
    /// The routed value.
    pub value: T,
}

/// A matched route: the value and how many bytes of the path its context covers.
#[derive(Debug)]
pub struct Match<'a, T> {
    /// The routed value.
    pub value: &'a T,
    /// Length of the context prefix in the path looked up (0 for the context `/`), `;`
    /// parameters and the spelling of the path included: `/app/admin;x` of
    /// `/app/admin;x/users` for the context `/app/admin`.
    pub context_len: usize,
}

#[derive(Debug, Clone)]
struct ContextTable<T> {
    /// Context as written -> index into `entries`.
    by_context: HashMap<Box<str>, usize>,
    /// [`path::case_fold`] of every context -> index into `entries`.
    folded: HashMap<Box<str>, usize>,
    entries: Vec<(T, bool)>,
    /// Whether a context of this table is case-insensitive.
    any_case_insensitive: bool,
}

impl<T> Default for ContextTable<T> {
    fn default() -> Self {
        Self {
            by_context: HashMap::new(),
            folded: HashMap::new(),
            entries: Vec::new(),
            any_case_insensitive: false,
        }
    }
}

/// A matched entry of a table: its index and the number of segments of its context.
type Hit = (usize, usize);

impl<T> ContextTable<T> {
    fn insert(&mut self, context: &str, case_insensitive: bool, value: T) {
        let index = self.entries.len();
        self.entries.push((value, case_insensitive));
        self.by_context.insert(context.into(), index);
        self.folded
            .insert(path::case_fold(context).as_ref().into(), index);
        self.any_case_insensitive |= case_insensitive;
    }

    /// The longest context that matches `form` (a routing form cut to the router's
    /// `max_segments`): as written, or case-folded for a case-insensitive one. `folded`
    /// is the case fold of `form`, made by the first table that needs it.
    fn lookup<'f>(&self, form: &'f str, folded: &mut Option<Cow<'f, str>>) -> Option<Hit> {
        if self.entries.is_empty() {
            return None;
        }
        // the case fold of `candidate`, shortened with it
        let mut folded_candidate: Option<&str> = if self.any_case_insensitive {
            let whole: &Cow<'f, str> = folded.get_or_insert_with(|| path::case_fold(form));
            Some(whole.as_ref())
        } else {
            None
        };
        let mut candidate = form;
        loop {
            if let Some(&index) = self.by_context.get(candidate) {
                return Some((index, segments(candidate)));
            }
            if let Some(current) = folded_candidate {
                if let Some(&index) = self.folded.get(current)
                    && self.entries[index].1
                {
                    return Some((index, segments(candidate)));
                }
                folded_candidate = Some(parent(current).unwrap_or("/"));
            }
            candidate = parent(candidate)?;
        }
    }

    /// The longest context, case-insensitive or not, that matches the case fold `folded`.
    fn lookup_folded(&self, folded: &str) -> Option<usize> {
        let mut candidate = folded;
        loop {
            if let Some(&index) = self.folded.get(candidate) {
                return Some(index);
            }
            candidate = parent(candidate)?;
        }
    }
}

/// `/a/b` -> `/a` -> `/` -> none.
fn parent(candidate: &str) -> Option<&str> {
    match candidate.rfind('/') {
        Some(0) if candidate.len() > 1 => Some("/"),
        Some(idx) if idx > 0 => Some(&candidate[..idx]),
        _ => None,
    }
}

/// The number of segments of a context (0 for `/`).
fn segments(context: &str) -> usize {
    if context == "/" {
        0
    } else {
        context.bytes().filter(|&b| b == b'/').count()
    }
}

/// The path cut to its first `n` segments (`/` for none).
fn first_segments(path: &str, n: usize) -> &str {
    if n == 0 {
        return "/";
    }
    match path.match_indices('/').nth(n) {
        Some((end, _)) => &path[..end],
        None => path,
    }
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: Vec::new(),
            any: ContextTable::default(),
            max_segments: 0,
        }
    }
}

impl<T: Clone> Router<T> {
    /// Builds a router. Later entries replace earlier ones on the same host and context:
    /// callers check for collisions first (see [`crate::model::check_collisions`], which
    /// also refuses two contexts of a host whose [`path::case_fold`]s are equal).
    pub fn build<'a>(entries: impl IntoIterator<Item = Entry<'a, T>>) -> Self {
        let mut router = Self::default();
        for entry in entries {
            router.max_segments = router.max_segments.max(segments(entry.context));
            let (context, ci) = (entry.context, entry.case_insensitive);
            if entry.hosts.is_empty() {
                router.any.insert(context, ci, entry.value);
                continue;
            }
            for host in entry.hosts {
                let table = if let Some(suffix) = host.strip_prefix('*') {
                    let found = router.wildcard.iter().position(|(s, _)| &**s == suffix);
                    let at = found.unwrap_or_else(|| {
                        router
                            .wildcard
                            .push((suffix.into(), ContextTable::default()));
                        router.wildcard.len() - 1
                    });
                    &mut router.wildcard[at].1
                } else {
                    router.exact.entry(host.as_str().into()).or_default()
                };
                table.insert(context, ci, entry.value.clone());
            }
        }
        router
            .wildcard
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        router
    }
}

impl<T> Router<T> {
    /// The tables a request for `host` is looked up in, in order.
    fn tables<'s, 'h>(
        &'s self,
        host: Option<&'h str>,
    ) -> impl Iterator<Item = &'s ContextTable<T>> + use<'s, 'h, T> {
        let exact = host.and_then(|host| self.exact.get(host));
        let wildcard = self.wildcard.iter().filter_map(move |(suffix, table)| {
            let host = host?;
            (host.len() > suffix.len() && host.ends_with(&**suffix)).then_some(table)
        });
        exact
            .into_iter()
            .chain(wildcard)
            .chain(std::iter::once(&self.any))
    }

    /// Finds the API for a host (lower case, without port) and a normalized path
    /// ([`path::normalize`]). The context is matched on the path's
    /// [`path::routing_form`]; a case-insensitive one on its [`path::case_fold`] too.
    ///
    /// # Errors
    ///
    /// [`PathError::CaseAmbiguous`] when the path reaches a case-insensitive context while
    /// another context matches its case fold better.
    pub fn lookup(
        &self,
        host: Option<&str>,
        path: &str,
    ) -> Result<Option<Match<'_, T>>, PathError> {
        let form = path::routing_form(path);
        let form = first_segments(&form, self.max_segments);
        let mut folded = None;
        let found = self
            .tables(host)
            .enumerate()
            .find_map(|(at, table)| Some((at, table, table.lookup(form, &mut folded)?)));
        let Some((at, table, (index, context_segments))) = found else {
            return Ok(None);
        };
        let (value, case_insensitive) = &table.entries[index];
        if *case_insensitive {
            let folded = folded.unwrap_or_else(|| path::case_fold(form));
            let best = self
                .tables(host)
                .enumerate()
                .find_map(|(at, table)| Some((at, table.lookup_folded(&folded)?)));
            if best != Some((at, index)) {
                return Err(PathError::CaseAmbiguous);
            }
        }
        Ok(Some(Match {
            value,
            context_len: segment_end(path, context_segments),
        }))
    }
}

/// The length of the first `n` segments of `path` (0 for none).
fn segment_end(path: &str, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    path.match_indices('/')
        .nth(n)
        .map_or(path.len(), |(end, _)| end)
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
pub(crate) fn is_host_name(host: &str) -> bool {
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

    /// An entry whose context matches exactly.
    fn e<'a, T>(hosts: &'a [String], context: &'a str, value: T) -> Entry<'a, T> {
        Entry {
            hosts,
            context,
            case_insensitive: false,
            value,
        }
    }

    /// An entry whose context matches ignoring case.
    fn ci<'a, T>(hosts: &'a [String], context: &'a str, value: T) -> Entry<'a, T> {
        Entry {
            case_insensitive: true,
            ..e(hosts, context, value)
        }
    }

    fn router() -> Router<&'static str> {
        let any: &[String] = &[];
        let example = ["api.example.com".to_string()];
        let wild = ["*.example.com".to_string()];
        Router::build([
            e(any, "/orders", "orders"),
            e(any, "/orders/v1", "orders-v1"),
            e(any, "/", "root"),
            e(&example[..], "/orders", "example-orders"),
            e(&wild[..], "/wild", "wild"),
        ])
    }

    fn hit(
        r: &Router<&'static str>,
        host: Option<&str>,
        path: &str,
    ) -> Option<(&'static str, usize)> {
        r.lookup(host, path)
            .unwrap()
            .map(|m| (*m.value, m.context_len))
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
        let r = Router::build([e(any, "/a", 1)]);
        assert!(r.lookup(None, "/b").unwrap().is_none());
        assert!(r.lookup(None, "/").unwrap().is_none());
        assert_eq!(
            r.lookup(None, "/a/").unwrap().map(|m| m.context_len),
            Some(2)
        );
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
            let r = Router::build(contexts.iter().map(|c| e(any, c, *c)));
            if let Some(m) = r.lookup(None, &path).unwrap() {
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
                .unwrap()
                .map(|m| *m.value),
            Some("root")
        );
    }

    #[test]
    fn contexts_match_the_path_without_parameters() {
        let any: &[String] = &[];
        let r = Router::build([
            e(any, "/app", "app"),
            e(any, "/app/admin", "admin"),
            e(any, "/a:b", "colon"),
        ]);
        let cases = [
            ("/app/admin/users", Some(("admin", 10))),
            ("/app/admin;x/users", Some(("admin", 12))),
            ("/app;v=1/admin;x=2;y/users;z", Some(("admin", 20))),
            ("/app;x/other", Some(("app", 6))),
            ("/app/admin;x", Some(("admin", 12))),
            ("/app/adminx;y/z", Some(("app", 4))),
            ("/a%3Ab/x", Some(("colon", 6))),
            ("/a:b;p/x", Some(("colon", 6))),
            ("/nothing", None),
        ];
        for (path, expected) in cases {
            assert_eq!(hit(&r, None, path), expected, "{path}");
        }
    }

    #[test]
    fn case_insensitive_contexts_match_the_case_fold() {
        let any: &[String] = &[];
        let r = Router::build([
            e(any, "/", "root"),
            e(any, "/app", "app"),
            ci(any, "/app/admin", "admin"),
            ci(any, "/win", "win"),
            e(any, "/win/Exact", "exact-under-ci"),
        ]);
        assert_eq!(hit(&r, None, "/app/admin/x"), Some(("admin", 10)));
        assert_eq!(hit(&r, None, "/app/ADMIN/x"), Some(("admin", 10)));
        assert_eq!(hit(&r, None, "/APP/Admin/x"), Some(("admin", 10)));
        assert_eq!(hit(&r, None, "/app/admin./x"), Some(("admin", 11)));
        assert_eq!(hit(&r, None, "/app/admin%20;x/x"), Some(("admin", 15)));
        assert_eq!(hit(&r, None, "/app/adm%C4%B1n/x"), Some(("admin", 15)));
        // an exact context stays exact
        assert_eq!(hit(&r, None, "/APP/x"), Some(("root", 0)));
        // under a case-insensitive context, a spelling that a case-insensitive server reads
        // as another context is refused
        assert_eq!(hit(&r, None, "/win/Exact/x"), Some(("exact-under-ci", 10)));
        assert_eq!(hit(&r, None, "/WIN/x"), Some(("win", 4)));
        assert_eq!(
            r.lookup(None, "/win/exact/x").unwrap_err(),
            PathError::CaseAmbiguous
        );
        assert_eq!(
            r.lookup(None, "/WIN/EXACT./x").unwrap_err(),
            PathError::CaseAmbiguous
        );
    }

    #[test]
    fn a_host_table_that_matches_the_case_fold_comes_first() {
        let any: &[String] = &[];
        let host = ["api.example.com".to_string()];
        let r = Router::build([
            ci(any, "/app", "any-app"),
            e(&host[..], "/app/Admin", "host-admin"),
        ]);
        assert_eq!(
            hit(&r, Some("api.example.com"), "/app/Admin/x"),
            Some(("host-admin", 10))
        );
        assert_eq!(
            hit(&r, Some("other.example"), "/app/admin/x"),
            Some(("any-app", 4))
        );
        // on the host, the host's API would serve the case fold: refused
        assert_eq!(
            r.lookup(Some("api.example.com"), "/app/admin/x")
                .unwrap_err(),
            PathError::CaseAmbiguous
        );
    }

    #[test]
    fn long_paths_are_looked_up_by_their_first_segments() {
        let any: &[String] = &[];
        let r = Router::build([e(any, "/a/b", "ab")]);
        let long = format!("/a/b{}", "/x".repeat(2000));
        assert_eq!(hit(&r, None, &long), Some(("ab", 4)));
        assert_eq!(hit(&r, None, "/a"), None);
        assert_eq!(first_segments("/a/b/c", 2), "/a/b");
        assert_eq!(first_segments("/a/b/c", 0), "/");
        assert_eq!(first_segments("/a", 5), "/a");
        assert_eq!(segment_end("/a;x/b", 1), 4);
        assert_eq!(segment_end("/a;x/b", 2), 6);
    }
}
