//! The header names a policy may set, read or rename: any valid name but those the gateway
//! manages itself (framing, connection, `host`). Shared by the policies that name headers.

use http::HeaderName;

/// Headers the gateway manages itself: a policy may not touch them.
const MANAGED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
];

/// `name` as a header name a policy may use (`request_side`: on the request, where `host`
/// is the gateway's too), or why not.
pub(super) fn header_name(name: &str, request_side: bool) -> Result<HeaderName, String> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a header name"))?;
    if MANAGED.contains(&parsed.as_str()) {
        return Err(format!("{name:?} is managed by the gateway"));
    }
    if request_side && parsed == http::header::HOST {
        return Err("\"host\" is set by spec.upstream.hostHeader".to_string());
    }
    Ok(parsed)
}
