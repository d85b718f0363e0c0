//! Path handling through a whole [`Gateway`]: examples of each spelling, and a property
//! test: for any byte string as a
//! request path, the API (and operation) chosen and the path sent upstream are those of
//! its normalized form, and agree with how a lenient upstream reads the path (parameters
//! dropped, every escape decoded, dot segments resolved; case folded where the API ignores
//! case), or the request is refused.
//!
//! The normal test run tries [`DEFAULT_CASES`] paths; `GW_PATH_FUZZ_CASES=N` raises the
//! count, and the `#[ignore]`d variant runs [`LONG_CASES`] by default:
//!
//! ```text
//! GW_PATH_FUZZ_CASES=1000000 cargo test -p gw-core --release --lib path_tests -- --ignored --nocapture
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Instant;

use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::net::TcpListener;

use super::*;
use crate::model::Format;

/// Paths tried by the normal test run.
const DEFAULT_CASES: u32 = 256;
/// Paths tried by the long variant unless `GW_PATH_FUZZ_CASES` says otherwise.
const LONG_CASES: u32 = 200_000;

/// One API of the fixed set: its context and whether it ignores case. The upstream's base
/// path is `/{tag}`, so the path the upstream receives names the API that sent it.
struct Api {
    tag: &'static str,
    context: &'static str,
    case_insensitive: bool,
    /// YAML lines appended to the spec.
    extra: &'static str,
}

const OPS: &str = "  operations:\n    - method: GET\n      path: /items/{id}\n      policies: [{name: response-headers, params: {set: {x-op: item}}}]\n    - method: GET\n      path: /items/admin\n      policies: [{name: response-headers, params: {set: {x-op: admin}}}]\n";

const CI_OPS: &str = "  caseInsensitive: true\n  operations:\n    - method: GET\n      path: /Items/{id}\n      policies: [{name: response-headers, params: {set: {x-op: item}}}]\n    - method: GET\n      path: /items/Admin\n      policies: [{name: response-headers, params: {set: {x-op: admin}}}]\n";

const APIS: [Api; 9] = [
    Api {
        tag: "root",
        context: "/",
        case_insensitive: false,
        extra: "",
    },
    Api {
        tag: "app",
        context: "/app",
        case_insensitive: false,
        extra: "",
    },
    Api {
        tag: "admin",
        context: "/app/admin",
        case_insensitive: false,
        extra: "",
    },
    Api {
        tag: "win",
        context: "/win",
        case_insensitive: true,
        extra: "  caseInsensitive: true\n",
    },
    Api {
        tag: "secure",
        context: "/win/Secure",
        case_insensitive: true,
        extra: "  caseInsensitive: true\n",
    },
    Api {
        tag: "wexact",
        context: "/win/exact",
        case_insensitive: false,
        extra: "",
    },
    Api {
        tag: "colon",
        context: "/a:b",
        case_insensitive: false,
        extra: "",
    },
    Api {
        tag: "ops",
        context: "/ops",
        case_insensitive: false,
        extra: OPS,
    },
    Api {
        tag: "ciops",
        context: "/ci-ops",
        case_insensitive: true,
        extra: CI_OPS,
    },
];

/// What a request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The gateway answered itself with this status (400, 404, 405).
    Refused(u16),
    /// The upstream of `tag` answered; the path it received; the operation (`x-op`).
    Served {
        tag: String,
        path: String,
        op: Option<String>,
    },
}

/// An upstream that answers with the path it received.
async fn echo_path() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let path = Bytes::copy_from_slice(req.uri().path().as_bytes());
                    Ok::<_, Infallible>(Response::new(Full::new(path)))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn gateway(upstream: SocketAddr) -> Gateway {
    let gw = Gateway::new(PolicyRegistry::builtin(), ProxyMetrics::unregistered());
    let registry = PolicyRegistry::builtin();
    let ctx = crate::model::ValidationContext {
        policies: Some(&registry),
    };
    let definitions = APIS.iter().map(|api| {
        let doc = format!(
            "apiVersion: gw/v1\nkind: Api\nmetadata: {{name: {}}}\nspec:\n  context: '{}'\n  upstream:\n    endpoints: [{{url: 'http://{upstream}/{}'}}]\n{}",
            api.tag, api.context, api.tag, api.extra
        );
        Arc::new(ApiDefinition::parse_with(doc.as_bytes(), Format::Yaml, &ctx).unwrap())
    });
    gw.apply(1, definitions).unwrap();
    gw
}

async fn outcome(gw: &Gateway, uri: &http::Uri) -> Outcome {
    let request = Request::builder()
        .uri(uri.clone())
        .header("host", "gw.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let conn = ConnInfo {
        peer: "127.0.0.1:40000".parse().unwrap(),
        secure: false,
    };
    let response = gw.handle(request, conn).await;
    let status = response.status();
    let op = response
        .headers()
        .get("x-op")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    if status != StatusCode::OK {
        return Outcome::Refused(status.as_u16());
    }
    let path = String::from_utf8_lossy(&body).into_owned();
    let tag = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    Outcome::Served { tag, path, op }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Every escape decoded; a `%` without two hex digits kept.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// A path as a lenient server reads it: segments without their `;` parameters, every
/// escape decoded, empty and `.` segments dropped, `..` resolved (Tomcat's order).
fn read(path: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for segment in path.split(|&b| b == b'/') {
        let name = segment.split(|&b| b == b';').next().unwrap_or_default();
        let decoded = percent_decode(name);
        match decoded.as_slice() {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            _ => out.push(decoded),
        }
    }
    out
}

/// A decoded segment as a case-insensitive server (IIS on NTFS) reads it.
fn fold(segment: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(segment.len());
    let mut i = 0;
    while i < segment.len() {
        let rest = &segment[i..];
        let (letter, len) = if rest.starts_with("ſ".as_bytes()) {
            (b's', 2)
        } else if rest.starts_with("\u{212a}".as_bytes()) {
            (b'k', 3)
        } else if rest.starts_with("İ".as_bytes()) || rest.starts_with("ı".as_bytes()) {
            (b'i', 2)
        } else {
            (rest[0].to_ascii_lowercase(), 1)
        };
        out.push(letter);
        i += len;
    }
    let end = out
        .iter()
        .rposition(|&b| b != b'.' && b != b' ')
        .map_or(0, |i| i + 1);
    if end > 0 {
        out.truncate(end);
    }
    out
}

fn folded(segments: &[Vec<u8>]) -> Vec<Vec<u8>> {
    segments.iter().map(|s| fold(s)).collect()
}

fn context_segments(context: &str) -> Vec<Vec<u8>> {
    read(context.as_bytes())
}

/// Whether `view` starts with `context`, compared as a case-insensitive server does when
/// `ignore_case`.
fn starts_with(view: &[Vec<u8>], context: &[Vec<u8>], ignore_case: bool) -> bool {
    context.len() <= view.len()
        && context.iter().zip(view).all(|(c, v)| {
            if ignore_case {
                fold(c) == fold(v)
            } else {
                c == v
            }
        })
}

/// The reader's view of a path, written back as a plain path: every byte that is not
/// unreserved or a delimiter a context may hold percent-encoded.
fn plain(view: &[Vec<u8>]) -> String {
    let mut out = String::new();
    for segment in view {
        out.push('/');
        for &b in segment {
            if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&b) {
                out.push(b as char);
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

use std::fmt::Write as _;

/// How many paths came to what.
#[derive(Debug, Default)]
struct Tally {
    /// Not a request target (hyper answers 400 before the gateway sees them).
    invalid: std::sync::atomic::AtomicU32,
    refused: std::sync::atomic::AtomicU32,
    served: std::sync::atomic::AtomicU32,
}

/// The checks for one path; `Ok` when the request is not a valid request target.
async fn check(gw: &Gateway, raw: &[u8], tally: &Tally) -> Result<(), TestCaseError> {
    use std::sync::atomic::Ordering::Relaxed;
    let target = http::Uri::try_from(raw)
        .ok()
        .filter(|uri| uri.scheme().is_none() && uri.authority().is_none());
    let Some(uri) = target else {
        tally.invalid.fetch_add(1, Relaxed);
        return Ok(());
    };
    let path = uri.path().to_string();
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let got = outcome(gw, &uri).await;
    match got {
        Outcome::Served { .. } => tally.served.fetch_add(1, Relaxed),
        Outcome::Refused(_) => tally.refused.fetch_add(1, Relaxed),
    };

    // 1. the normalized form: refused, or the same API, operation and upstream path
    let Ok(normal) = path::normalize(&path) else {
        prop_assert_eq!(&got, &Outcome::Refused(400), "{:?} is not normal", path);
        return Ok(());
    };
    let normal_uri: http::Uri = format!("{normal}{query}").parse().unwrap();
    let normal_got = outcome(gw, &normal_uri).await;
    prop_assert_eq!(
        &got,
        &normal_got,
        "{:?} and its normal form {:?}",
        path,
        normal
    );

    let Outcome::Served {
        tag,
        path: sent,
        op,
    } = &got
    else {
        return Ok(());
    };
    // 2. what the upstream believes: the chosen API's context is where the lenient reading
    // of the path starts, no longer context starts it (compared ignoring case if either
    // API does), and the upstream reads the rest of the path as the client's path read so
    let api = APIS.iter().find(|a| a.tag == tag).unwrap();
    let view = read(path.as_bytes());
    let context = context_segments(api.context);
    prop_assert!(
        starts_with(&view, &context, api.case_insensitive),
        "{:?} reached {} but reads as {:?}",
        path,
        tag,
        plain(&view)
    );
    for other in &APIS {
        let other_context = context_segments(other.context);
        if other_context.len() > context.len() {
            let ignore_case = api.case_insensitive || other.case_insensitive;
            prop_assert!(
                !starts_with(&view, &other_context, ignore_case),
                "{:?} reached {} but reads as the context of {}",
                path,
                tag,
                other.tag
            );
        }
    }
    let upstream_view = read(sent.as_bytes());
    let (expected, received) = (&view[context.len()..], &upstream_view[1..]);
    if api.case_insensitive {
        prop_assert_eq!(
            folded(expected),
            folded(received),
            "{:?} sent as {:?}",
            path,
            sent
        );
    } else {
        prop_assert_eq!(expected, received, "{:?} sent as {:?}", path, sent);
    }
    // 3. the operation: the protected one exactly when the rest reads as its path
    if let Some(op) = op {
        let admin: [&[u8]; 2] = [b"items", b"admin"];
        let is_admin = expected.len() == 2
            && expected.iter().zip(admin).all(|(s, a)| {
                if api.case_insensitive {
                    fold(s) == a
                } else {
                    s == a
                }
            });
        prop_assert_eq!(op == "admin", is_admin, "{:?} ran operation {}", path, op);
    }
    // 4. the path as the upstream reads it, written plainly, comes to the same
    let plain_uri: http::Uri = format!("{}{query}", plain(&view)).parse().unwrap();
    let plain_got = outcome(gw, &plain_uri).await;
    match (&got, &plain_got) {
        (
            Outcome::Served { tag, path, op },
            Outcome::Served {
                tag: plain_tag,
                path: plain_path,
                op: plain_op,
            },
        ) => {
            prop_assert_eq!(tag, plain_tag, "{:?} and {:?}", path, plain(&view));
            prop_assert_eq!(op, plain_op);
            let (a, b) = (read(path.as_bytes()), read(plain_path.as_bytes()));
            if api.case_insensitive {
                prop_assert_eq!(folded(&a), folded(&b));
            } else {
                prop_assert_eq!(a, b);
            }
        }
        (_, refused) => {
            prop_assert!(false, "{:?} served, its plain form {:?}", path, refused);
        }
    }
    // 5. an API that ignores case: the path in upper case reaches it too, or is refused
    if api.case_insensitive {
        let upper: http::Uri = raw.to_ascii_uppercase().as_slice().try_into().unwrap();
        match outcome(gw, &upper).await {
            Outcome::Served { tag: upper_tag, .. } => {
                prop_assert_eq!(&upper_tag, tag, "{:?} in upper case", path);
            }
            Outcome::Refused(status) => prop_assert_eq!(status, 400),
        }
    }
    Ok(())
}

/// Pieces that paths are made of: context names in several cases, dot segments,
/// parameters, escapes (of separators, dots, `;`, delimiters, letters outside ASCII that
/// fold to ASCII), and raw bytes.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    let words = prop::sample::select(vec![
        "/",
        "/",
        "/",
        "app",
        "APP",
        "App",
        "admin",
        "ADMIN",
        "aDmin",
        "win",
        "WIN",
        "secure",
        "Secure",
        "SECURE",
        "exact",
        "EXACT",
        "ops",
        "OPS",
        "ci-ops",
        "CI-OPS",
        "items",
        "ITEMS",
        "Items",
        "a:b",
        "a%3Ab",
        "a%3ab",
        "a",
        "b",
        ".",
        "..",
        "...",
        ";",
        ";x",
        ";x=1",
        "%2e",
        "%2E",
        "%2f",
        "%2F",
        "%5c",
        "\\",
        "%3b",
        "%3B",
        "%61",
        "%41",
        "%25",
        "%",
        "%2",
        "%20",
        "%C5%BF",
        "ſ",
        "%E2%84%AA",
        "%C4%B0",
        "%c4%b1",
        "?",
        "#",
        "x",
        "%00",
        "%ff",
        "//",
        "~",
        "%7E",
        "%3A",
        "%40",
        "@",
        "+",
        "%2B",
        "=",
    ])
    .prop_map(|s: &str| s.as_bytes().to_vec());
    prop_oneof![
        9 => words,
        1 => prop::collection::vec(any::<u8>(), 1..3),
    ]
}

/// A segment made from a context's or an operation's name, spelled in one of the ways
/// that servers read alike: another case, parameters, trailing dots or spaces, escapes of
/// its first character or of a delimiter, letters outside ASCII that fold to its own.
fn spelled_segment() -> impl Strategy<Value = Vec<u8>> {
    let names = prop::sample::select(vec![
        "app", "admin", "win", "secure", "exact", "a:b", "ops", "ci-ops", "items", "x", ".", "..",
        "...",
    ]);
    let cases = 0..3u8;
    let spellings = 0..6u8;
    let suffixes = prop::sample::select(vec![
        "", "", "", "", ";x", ";a=1", ".", "%20", "%2e", ";", "%3B", "..", ". ",
    ]);
    (names, cases, spellings, suffixes).prop_map(|(name, case, spelling, suffix)| {
        let mut text = match case {
            0 => name.to_string(),
            1 => name.to_ascii_uppercase(),
            _ => {
                let mut chars = name.chars();
                chars.next().map_or_else(String::new, |first| {
                    first.to_ascii_uppercase().to_string() + chars.as_str()
                })
            }
        };
        text = match spelling {
            // the first character escaped
            0 => text
                .bytes()
                .next()
                .map_or(text.clone(), |b| format!("%{b:02X}{}", &text[1..])),
            1 => text.replace(':', "%3A"),
            2 => text.replacen('s', "%C5%BF", 1),
            3 => text.replacen('i', "%C4%B1", 1),
            _ => text,
        };
        text.push_str(suffix);
        text.into_bytes()
    })
}

/// A path: segments joined by `/` (now and then `//` or nothing), or raw pieces.
fn raw_path() -> impl Strategy<Value = Vec<u8>> {
    let separator = prop::sample::select(vec!["/", "/", "/", "/", "/", "/", "//", ""]);
    let segment = prop_oneof![4 => spelled_segment(), 1 => piece()];
    prop::collection::vec((separator, segment), 0..7).prop_map(|parts| {
        let mut path = Vec::new();
        for (separator, segment) in parts {
            path.extend_from_slice(separator.as_bytes());
            path.extend(segment);
        }
        if path.first() != Some(&b'/') {
            path.insert(0, b'/');
        }
        path
    })
}

/// Runs `cases` paths (or `GW_PATH_FUZZ_CASES`) and prints the count and the time taken.
fn run(default_cases: u32) {
    let cases = std::env::var("GW_PATH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let gw = rt.block_on(async {
        let upstream = echo_path().await;
        gateway(upstream)
    });
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let started = Instant::now();
    let tally = Tally::default();
    let result = runner.run(&raw_path(), |raw| rt.block_on(check(&gw, &raw, &tally)));
    println!(
        "path fuzz: {cases} paths in {:.1} s ({tally:?})",
        started.elapsed().as_secs_f64()
    );
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

/// `(path, outcome)`: `Ok((upstream path, operation))`, or `Err(status)`.
type Expected<'a> = (&'a str, Result<(&'a str, Option<&'a str>), u16>);

async fn expect(gw: &Gateway, table: &[Expected<'_>]) {
    let mut failures = Vec::new();
    for &(path, expected) in table {
        let got = outcome(gw, &path.parse().unwrap()).await;
        let matches = match (&got, expected) {
            (Outcome::Served { path: sent, op, .. }, Ok((want, want_op))) => {
                sent == want && op.as_deref() == want_op
            }
            (Outcome::Refused(status), Err(want)) => *status == want,
            _ => false,
        };
        if !matches {
            failures.push(format!("{path}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn path_parameters_and_escapes_reach_the_api_the_upstream_serves() {
    let gw = gateway(echo_path().await);
    expect(
        &gw,
        &[
            ("/app/admin/users", Ok(("/admin/users", None))),
            // a servlet container drops `;x` and serves /app/admin/users
            ("/app/admin;x/users", Ok(("/admin/users", None))),
            (
                "/app;v=1/admin;jsessionid=2/users;p",
                Ok(("/admin/users;p", None)),
            ),
            ("/app/admin;x", Ok(("/admin", None))),
            ("/app/adminx;y/z", Ok(("/app/adminx;y/z", None))),
            // an encoded `;` has no one meaning; a segment of parameters alone reads `//`
            ("/app/admin%3Bx/users", Err(400)),
            ("/app/admin%3bx/users", Err(400)),
            ("/app/;x/admin/users", Err(400)),
            // delimiters a context may hold are matched decoded
            ("/a%3Ab/x", Ok(("/colon/x", None))),
            ("/a:b;p/x", Ok(("/colon/x", None))),
            // operations too, and the literal segments go on as the API spells them
            (
                "/ops/items/admin;x",
                Ok(("/ops/items/admin;x", Some("admin"))),
            ),
            (
                "/ops/items/%61dmin",
                Ok(("/ops/items/admin", Some("admin"))),
            ),
            ("/ops/items;v=2/7", Ok(("/ops/items;v=2/7", Some("item")))),
            ("/ops/items/a%3Ab", Ok(("/ops/items/a%3Ab", Some("item")))),
        ],
    )
    .await;
}

#[tokio::test]
async fn case_insensitive_apis_match_as_a_case_insensitive_upstream_reads() {
    let gw = gateway(echo_path().await);
    expect(
        &gw,
        &[
            ("/win/x", Ok(("/win/x", None))),
            ("/WIN/X", Ok(("/win/X", None))),
            ("/win/secure/x", Ok(("/secure/x", None))),
            ("/Win/SECURE./x", Ok(("/secure/x", None))),
            ("/win/%C5%BFecure%20/x", Ok(("/secure/x", None))),
            ("/win/exact/x", Ok(("/wexact/x", None))),
            // the upstream of /win would serve /win/exact/x: refused
            ("/win/EXACT/x", Err(400)),
            ("/WIN/exact./x", Err(400)),
            // an exact API stays exact
            ("/APP/ADMIN/users", Ok(("/root/APP/ADMIN/users", None))),
            // operations of a case-insensitive API, respelled as the API spells them
            ("/ci-ops/items/7", Ok(("/ciops/Items/7", Some("item")))),
            ("/CI-OPS/ITEMS/Abc", Ok(("/ciops/Items/Abc", Some("item")))),
            (
                "/ci-ops/ITEMS/ADMIN.",
                Ok(("/ciops/items/Admin", Some("admin"))),
            ),
            (
                "/ci-ops/items/adm%C4%B1n",
                Ok(("/ciops/items/Admin", Some("admin"))),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn rewrite_reads_the_path_as_routing_did() {
    let upstream = echo_path().await;
    let gw = Gateway::new(PolicyRegistry::builtin(), ProxyMetrics::unregistered());
    let doc = format!(
        "apiVersion: gw/v1\nkind: Api\nmetadata: {{name: rw}}\nspec:\n  context: /rw\n  caseInsensitive: true\n  upstream:\n    endpoints: [{{url: 'http://{upstream}/rw'}}]\n  operations:\n    - method: GET\n      path: /items/{{id}}\n      policies: [{{name: rewrite, params: {{path: '/v2/{{id}}'}}}}]\n"
    );
    let registry = PolicyRegistry::builtin();
    let ctx = crate::model::ValidationContext {
        policies: Some(&registry),
    };
    let api = ApiDefinition::parse_with(doc.as_bytes(), Format::Yaml, &ctx).unwrap();
    gw.apply(1, [Arc::new(api)]).unwrap();
    expect(
        &gw,
        &[
            ("/rw/items/7", Ok(("/rw/v2/7", None))),
            ("/rw;a/items;b/7", Ok(("/rw/v2/7", None))),
            ("/RW/ITEMS./Seven", Ok(("/rw/v2/Seven", None))),
        ],
    )
    .await;
}

#[test]
fn paths_route_as_their_upstream_reads_them() {
    run(DEFAULT_CASES);
}

/// The same for a long time: `cargo test -p gw-core --release --lib path_tests --
/// --ignored --nocapture`.
#[test]
#[ignore = "long-running; run by hand"]
fn paths_route_as_their_upstream_reads_them_long() {
    run(LONG_CASES);
}
