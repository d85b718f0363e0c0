//! Request path normalization.
//!
//! Routing and every policy see the normalized path, and the upstream receives it, so a path
//! cannot be spelled in a way that reaches a route (or skips a policy) that its plain form
//! would not. Empty segments (`//`) and `.` segments are removed, `..` segments are resolved,
//! and spellings whose meaning depends on who decodes them are refused: encoded `/` and `\`
//! (`%2F`, `%5C`), a raw `\`, encoded dots that form a `.` or `..` segment, `.` or `..`
//! segments with `;` parameters (`..;`, which Java servers read as `..`), and `..` that climbs
//! above the root. Percent-encoded unreserved characters (letters, digits, `-._~`) are
//! decoded and other escapes are written with upper-case hex (RFC 3986, 6.2.2), so that
//! `/items/%61dmin` is `/items/admin` to routing and policies, as it is to the upstream.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("the path must start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hex digits. Decoding around it could make a new escape
    /// (`%%330` reads `%30` once decoded, and `0` twice), so that routing and the upstream
    /// would read different paths.
    #[error("'%' must be followed by two hex digits in the path")]
    InvalidEscape,
    /// `%2F` or `%5C`: a separator hidden from routing.
    #[error("encoded '/' or '\\' is not allowed in the path")]
    EncodedSeparator,
    /// A raw backslash, which some servers treat as a separator.
    #[error("'\\' is not allowed in the path")]
    Backslash,
    /// A segment that decodes to `.` or `..`.
    #[error("encoded '.' or '..' segments are not allowed in the path")]
    EncodedDotSegment,
    /// `..` would climb above the root.
    #[error("the path climbs above the root with '..'")]
    AboveRoot,
    /// A `.` or `..` segment with path parameters (`..;x`), which some servers (Tomcat,
    /// Spring) read as a plain `..` after routing.
    #[error("'.' or '..' segments with ';' parameters are not allowed in the path")]
    DotSegmentParameter,
}

/// Normalizes a request path; borrows when it is already normal.
///
/// ```
/// use gw_core::path::normalize;
/// assert_eq!(normalize("/a//b/./c/../d").unwrap(), "/a/b/d");
/// assert_eq!(normalize("/orders/v1/items").unwrap(), "/orders/v1/items");
/// assert!(normalize("/a/%2e%2e/admin").is_err());
/// assert!(normalize("/a%2Fb").is_err());
/// ```
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = path.as_bytes();
    if bytes.contains(&b'\\') {
        return Err(PathError::Backslash);
    }
    let mut decoded: Option<String> = None;
    if bytes.contains(&b'%') {
        check_encodings(path)?;
        decoded = normalize_escapes(path);
    }
    if bytes.contains(&b';') {
        check_parameters(path)?;
    }
    let Some(rewritten) = resolve_segments(decoded.as_deref().unwrap_or(path))? else {
        return Ok(decoded.map_or(Cow::Borrowed(path), Cow::Owned));
    };
    Ok(Cow::Owned(rewritten))
}

/// The path with `//`, `.` and `..` segments resolved; `None` when it has none.
fn resolve_segments(path: &str) -> Result<Option<String>, PathError> {
    if !needs_rewrite(path.as_bytes()) {
        return Ok(None);
    }
    let trailing_slash = path.len() > 1 && (path.ends_with('/') || ends_with_dot_segment(path));
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            other => segments.push(other),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || (trailing_slash && !segments.is_empty()) {
        out.push('/');
    }
    Ok(Some(out))
}

/// Decodes escapes of unreserved characters and upper-cases the hex of the others; `None`
/// when nothing changes.
fn normalize_escapes(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            )
        {
            let byte = h * 16 + l;
            let unreserved =
                byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~');
            let upper = [
                b'%',
                bytes[i + 1].to_ascii_uppercase(),
                bytes[i + 2].to_ascii_uppercase(),
            ];
            if unreserved || upper != bytes[i..i + 3] {
                let buffer = out.get_or_insert_with(|| bytes[..i].to_vec());
                if unreserved {
                    buffer.push(byte);
                } else {
                    buffer.extend_from_slice(&upper);
                }
            } else if let Some(buffer) = &mut out {
                buffer.extend_from_slice(&bytes[i..i + 3]);
            }
            i += 3;
            continue;
        }
        if let Some(buffer) = &mut out {
            buffer.push(bytes[i]);
        }
        i += 1;
    }
    // only ASCII was replaced by ASCII: still UTF-8
    out.map(|b| String::from_utf8(b).unwrap_or_else(|_| path.to_string()))
}

/// The path without the `;parameters` of its segments (`/items/admin;x=1` is
/// `/items/admin`), for matching operations: servers such as Tomcat drop them, so a policy
/// on `/items/admin` must not be skipped by adding one.
pub fn without_parameters(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(segment.split_once(';').map_or(segment, |(name, _)| name));
    }
    Cow::Owned(out)
}

/// Whether the path has `//`, a `.` or `..` segment.
fn needs_rewrite(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"//")
        || bytes
            .split(|&b| b == b'/')
            .any(|segment| segment == b"." || segment == b"..")
}

fn ends_with_dot_segment(path: &str) -> bool {
    path.ends_with("/.") || path.ends_with("/..")
}

fn check_encodings(path: &str) -> Result<(), PathError> {
    let bytes = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        let Some([a, b]) = bytes.get(i + 1..i + 3) else {
            return Err(PathError::InvalidEscape);
        };
        match (hex_value(*a), hex_value(*b)) {
            (Some(2), Some(0xF)) | (Some(5), Some(0xC)) => {
                return Err(PathError::EncodedSeparator);
            }
            (Some(_), Some(_)) => {}
            _ => return Err(PathError::InvalidEscape),
        }
    }
    for segment in path.split('/') {
        if segment.contains('%') && decodes_to_dots(segment) {
            return Err(PathError::EncodedDotSegment);
        }
    }
    Ok(())
}

/// Refuses segments like `..;x` and `.;x`: their meaning depends on the upstream.
fn check_parameters(path: &str) -> Result<(), PathError> {
    for segment in path.split('/') {
        if let Some((name, _)) = segment.split_once(';')
            && (name == "." || name == ".." || (name.contains('%') && decodes_to_dots(name)))
        {
            return Err(PathError::DotSegmentParameter);
        }
    }
    Ok(())
}

/// Whether a segment is made only of `.` and `%2e` and decodes to `.` or `..`.
fn decodes_to_dots(segment: &str) -> bool {
    let mut rest = segment;
    let mut dots = 0;
    while !rest.is_empty() {
        if let Some(tail) = rest.strip_prefix('.') {
            rest = tail;
        } else if rest
            .as_bytes()
            .get(..3)
            .is_some_and(|b| b.eq_ignore_ascii_case(b"%2e"))
        {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    (1..=2).contains(&dots)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/a", Ok("/a")),
            ("/a/", Ok("/a/")),
            ("//a", Ok("/a")),
            ("/a//b", Ok("/a/b")),
            ("/a/./b", Ok("/a/b")),
            ("/a/b/..", Ok("/a/")),
            ("/a/b/../c", Ok("/a/c")),
            ("/a/.", Ok("/a/")),
            ("/..", Err(PathError::AboveRoot)),
            ("/a/../..", Err(PathError::AboveRoot)),
            ("/a%2fb", Err(PathError::EncodedSeparator)),
            ("/a%2Fb", Err(PathError::EncodedSeparator)),
            ("/a%5cb", Err(PathError::EncodedSeparator)),
            ("/a\\b", Err(PathError::Backslash)),
            ("/a/%2e%2e/b", Err(PathError::EncodedDotSegment)),
            ("/a/.%2E/b", Err(PathError::EncodedDotSegment)),
            ("/a/%2e/b", Err(PathError::EncodedDotSegment)),
            ("/a/file%2etxt", Ok("/a/file.txt")),
            ("/a/%20b", Ok("/a/%20b")),
            ("/%%330", Err(PathError::InvalidEscape)),
            ("/a%", Err(PathError::InvalidEscape)),
            ("/a%2", Err(PathError::InvalidEscape)),
            ("/a%zz", Err(PathError::InvalidEscape)),
            ("/a/...", Ok("/a/...")),
            ("/a/..;/admin", Err(PathError::DotSegmentParameter)),
            ("/a/..;x=1/admin", Err(PathError::DotSegmentParameter)),
            ("/a/.;/b", Err(PathError::DotSegmentParameter)),
            ("/a/%2e%2e;/b", Err(PathError::DotSegmentParameter)),
            ("/a/b;v=1/c", Ok("/a/b;v=1/c")),
            ("relative", Err(PathError::NotAbsolute)),
        ];
        for (input, expected) in cases {
            let got = normalize(input).map(Cow::into_owned);
            let expected = expected.map(str::to_string);
            assert_eq!(got, expected, "normalize({input:?})");
        }
    }

    proptest! {
        /// A normalized path is a fixed point and never contains a segment that routing
        /// would read differently from the upstream.
        #[test]
        fn normalized_is_stable(segments in proptest::collection::vec(
            prop_oneof![
                Just(String::new()), Just(".".to_string()), Just("..".to_string()),
                "[a-z%0-9.]{1,6}",
            ], 0..8)) {
            let path = format!("/{}", segments.join("/"));
            if let Ok(normal) = normalize(&path) {
                let again = normalize(&normal).unwrap();
                prop_assert_eq!(&again, &normal);
                prop_assert!(!normal.contains("//"));
                let dot_segment = |s: &str| {
                    let name = s.split(';').next().unwrap_or(s);
                    name == "." || name == ".."
                };
                prop_assert!(!normal.split('/').any(dot_segment));
            }
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(normalize("/items/%61dmin").unwrap(), "/items/admin");
        assert_eq!(normalize("/a/%7euser/%2d").unwrap(), "/a/~user/-");
        assert_eq!(normalize("/a%20b/%c3%a9").unwrap(), "/a%20b/%C3%A9");
        assert!(matches!(normalize("/a%20b").unwrap(), Cow::Borrowed(_)));
        assert_eq!(normalize("/a/%61/../b").unwrap(), "/a/b");
        assert_eq!(normalize("/a/b%2e/c").unwrap(), "/a/b./c");
        // a malformed escape is refused, not kept: decoding around it could make a new one
        assert_eq!(normalize("/a%zz"), Err(PathError::InvalidEscape));
        // still refused, as before
        assert!(normalize("/a/%2e%2e/b").is_err());
        assert!(normalize("/a%2fb").is_err());
    }

    #[test]
    fn parameters_are_ignored_for_matching() {
        assert_eq!(without_parameters("/items/admin;x=1"), "/items/admin");
        assert_eq!(without_parameters("/a;p/b;q=1;r/c"), "/a/b/c");
        assert!(matches!(without_parameters("/plain"), Cow::Borrowed(_)));
    }
}
