//! Request path normalization.
//!
//! Routing and every policy see the normalized path, and the upstream receives it, so a path
//! cannot be spelled in a way that reaches a route (or skips a policy) that its plain form
//! would not. Empty segments (`//`) and `.` segments are removed, `..` segments are resolved,
//! and spellings whose meaning depends on who decodes them are refused: encoded `/` and `\`
//! (`%2F`, `%5C`), a raw `\`, encoded dots that form a `.` or `..` segment, `.` or `..`
//! segments with `;` parameters (`..;`, which Java servers read as `..`), segments made only
//! of parameters (`/;x/`, which they read as `//`), encoded `;` (`%3B`, which some servers
//! decode before they drop parameters and others after), and `..` that climbs above the
//! root. Percent-encoded unreserved characters (letters, digits, `-._~`) are decoded and
//! other escapes are written with upper-case hex (RFC 3986, 6.2.2), so that
//! `/items/%61dmin` is `/items/admin` to routing and policies, as it is to the upstream.
//!
//! Routing then reads the normalized path in its [`routing_form`]: without the `;`
//! parameters of its segments (servlet containers drop them) and with the escapes of the
//! characters a context may hold decoded (most servers decode them), so that a context is
//! matched on the path its upstream will serve. An API that ignores case matches on the
//! [`case_fold`] of that form, the path as a case-insensitive server (IIS) reads it.

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
    /// A segment made only of `;` parameters (`/a/;x/b`): a server that drops parameters
    /// reads an empty segment there (`/a//b`), and then `/a/b`.
    #[error("segments made only of ';' parameters are not allowed in the path")]
    ParameterOnlySegment,
    /// `%3B`: some servers decode it before they drop `;` parameters, others after, so
    /// that the segment it is in has no one meaning.
    #[error("encoded ';' is not allowed in the path")]
    EncodedSemicolon,
    /// The path reaches an API or operation that ignores case, while read as a
    /// case-insensitive server reads it ([`case_fold`]) it would reach another one: its
    /// upstream could serve the other's resources without the other's policies.
    #[error("the path reaches a different API or operation when its case is ignored")]
    CaseAmbiguous,
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

/// The characters a context or an operation path may hold that normalization leaves
/// percent-encoded (RFC 3986 sub-delims without `;`, and `:` and `@`).
fn is_routed_delimiter(byte: u8) -> bool {
    matches!(
        byte,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
    )
}

/// The byte an escape at `i` (`%XX`) stands for, if there is one there.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    if bytes.get(i) != Some(&b'%') {
        return None;
    }
    let high = hex_value(*bytes.get(i + 1)?)?;
    let low = hex_value(*bytes.get(i + 2)?)?;
    Some(high * 16 + low)
}

/// A normalized path as routing reads it: without the `;parameters` of its segments, and
/// with the escapes of the characters a context or operation path may hold
/// (`!$&'()*+,=:@`) decoded. Servlet containers drop parameters, and most servers decode
/// escapes before they route, so this is the path an upstream serves: `/app/admin;x/users`
/// and `/app/admin%3Ax` are `/app/admin/users` and `/app/admin:x`. Segments keep their
/// number and order (a segment of parameters alone, or an encoded `/`, is refused by
/// [`normalize`]). Borrows when there is nothing to change.
///
/// ```
/// use gw_core::path::routing_form;
/// assert_eq!(routing_form("/app/admin;jsessionid=1/users"), "/app/admin/users");
/// assert_eq!(routing_form("/items/a%3Ab%40c"), "/items/a:b@c");
/// assert_eq!(routing_form("/items/a%20b"), "/items/a%20b");
/// ```
pub fn routing_form(path: &str) -> Cow<'_, str> {
    let bytes = path.as_bytes();
    let decodes = |i: usize| escape_at(bytes, i).is_some_and(is_routed_delimiter);
    let changes = bytes.contains(&b';')
        || (bytes.contains(&b'%') && (0..bytes.len()).any(|i| bytes[i] == b'%' && decodes(i)));
    if !changes {
        return Cow::Borrowed(path);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut in_parameters = false;
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'/' {
            in_parameters = false;
        } else if byte == b';' {
            in_parameters = true;
        }
        if in_parameters {
            i += 1;
            continue;
        }
        match escape_at(bytes, i).filter(|&b| is_routed_delimiter(b)) {
            Some(decoded) => {
                out.push(decoded);
                i += 3;
            }
            None => {
                out.push(byte);
                i += 1;
            }
        }
    }
    // whole parameters (up to an ASCII '/') went, and ASCII escapes became ASCII: UTF-8
    Cow::Owned(String::from_utf8(out).unwrap_or_else(|_| path.to_string()))
}

/// Letters outside ASCII whose simple case mapping is an ASCII letter, as UTF-8 bytes and
/// as escapes, with that letter: a case-insensitive server may read `ſ` (U+017F) as `s`,
/// the Kelvin sign (U+212A) as `k`, and `İ` (U+0130) and `ı` (U+0131) as `i`.
const ASCII_FOLDING: [(&[u8], u8); 8] = [
    (b"\xC5\xBF", b's'),
    (b"%C5%BF", b's'),
    (b"\xE2\x84\xAA", b'k'),
    (b"%E2%84%AA", b'k'),
    (b"\xC4\xB0", b'i'),
    (b"%C4%B0", b'i'),
    (b"\xC4\xB1", b'i'),
    (b"%C4%B1", b'i'),
];

/// A routing form as a case-insensitive server (IIS on NTFS) reads it: ASCII letters in
/// lower case, the letters of `ASCII_FOLDING` as the ASCII letter they fold to, and
/// trailing dots and spaces (`%20`) of each segment removed, as Windows removes them from
/// file names (a segment of nothing else is kept). Segments keep their number and order.
/// Borrows when there is nothing to change.
///
/// ```
/// use gw_core::path::case_fold;
/// assert_eq!(case_fold("/App/ADMIN./users%20"), "/app/admin/users");
/// assert_eq!(case_fold("/api/%C5%BFecrets"), "/api/secrets");
/// assert_eq!(case_fold("/app/..."), "/app/...");
/// ```
pub fn case_fold(path: &str) -> Cow<'_, str> {
    if !path.split('/').any(segment_folds) {
        return Cow::Borrowed(path);
    }
    let mut out = Vec::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        fold_segment(segment.as_bytes(), &mut out);
    }
    // ASCII for ASCII, and whole UTF-8 sequences for ASCII letters: still UTF-8
    Cow::Owned(String::from_utf8(out).unwrap_or_else(|_| path.to_string()))
}

/// Whether [`case_fold`] changes a segment.
fn segment_folds(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let may_hold_folding = !bytes.is_ascii() || bytes.contains(&b'%');
    bytes.iter().any(u8::is_ascii_uppercase)
        || trimmed_len(bytes) != bytes.len()
        || (may_hold_folding && (0..bytes.len()).any(|i| folding_at(bytes, i).is_some()))
}

/// The ASCII letter a sequence of [`ASCII_FOLDING`] at `i` folds to, and its length.
fn folding_at(bytes: &[u8], i: usize) -> Option<(u8, usize)> {
    ASCII_FOLDING
        .iter()
        .find(|(sequence, _)| bytes[i..].starts_with(sequence))
        .map(|(sequence, letter)| (*letter, sequence.len()))
}

/// The length of a segment without its trailing dots and `%20`s; the whole length when
/// nothing else would be left.
fn trimmed_len(segment: &[u8]) -> usize {
    let mut end = segment.len();
    loop {
        if end >= 1 && segment[end - 1] == b'.' {
            end -= 1;
        } else if end >= 3 && segment[end - 3..end].eq_ignore_ascii_case(b"%20") {
            end -= 3;
        } else {
            break;
        }
    }
    if end == 0 { segment.len() } else { end }
}

fn fold_segment(segment: &[u8], out: &mut Vec<u8>) {
    let segment = &segment[..trimmed_len(segment)];
    let mut i = 0;
    while i < segment.len() {
        if let Some((letter, len)) = folding_at(segment, i) {
            out.push(letter);
            i += len;
        } else {
            out.push(segment[i].to_ascii_lowercase());
            i += 1;
        }
    }
}

/// `path` (a path under a context, as normalized) with each segment that an operation's
/// literal segment matched spelled as the operation's `template` spells it, parameters
/// kept: `/ITEMS;v=1/7` is `/items;v=1/7` for `/items/{id}`. `None` when every segment is
/// spelled so already (or the two do not have the same segments, which routing rules out).
pub(crate) fn respell(path: &str, template: &str) -> Option<String> {
    if template == "/" || path.split('/').count() != template.split('/').count() {
        return None;
    }
    let differs = |(segment, literal): (&str, &str)| {
        !literal.starts_with('{') && segment.split(';').next() != Some(literal)
    };
    if !path.split('/').zip(template.split('/')).any(differs) {
        return None;
    }
    let mut out = String::with_capacity(path.len() + 8);
    for (i, (segment, literal)) in path.split('/').zip(template.split('/')).enumerate() {
        if i > 0 {
            out.push('/');
        }
        if differs((segment, literal)) {
            out.push_str(literal);
            if let Some((_, parameters)) = segment.split_once(';') {
                out.push(';');
                out.push_str(parameters);
            }
        } else {
            out.push_str(segment);
        }
    }
    Some(out)
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
            (Some(3), Some(0xB)) => return Err(PathError::EncodedSemicolon),
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

/// Refuses segments like `..;x`, `.;x` and `;x`: their meaning depends on the upstream.
fn check_parameters(path: &str) -> Result<(), PathError> {
    for segment in path.split('/') {
        if let Some((name, _)) = segment.split_once(';') {
            if name.is_empty() {
                return Err(PathError::ParameterOnlySegment);
            }
            if name == "." || name == ".." || (name.contains('%') && decodes_to_dots(name)) {
                return Err(PathError::DotSegmentParameter);
            }
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
            ("/a/;x/b", Err(PathError::ParameterOnlySegment)),
            ("/a/;", Err(PathError::ParameterOnlySegment)),
            ("/;x", Err(PathError::ParameterOnlySegment)),
            ("/a/b;/c", Ok("/a/b;/c")),
            ("/a/admin%3Bx/b", Err(PathError::EncodedSemicolon)),
            ("/a/admin%3bx/b", Err(PathError::EncodedSemicolon)),
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
    fn routing_reads_the_path_without_parameters_and_with_delimiters_decoded() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/app/admin;x/users", "/app/admin/users"),
            ("/app;a=1;b/admin;c/", "/app/admin/"),
            ("/items/a%3Ab%40c%2B", "/items/a:b@c+"),
            ("/items/a%20b%25%41", "/items/a%20b%25%41"),
            ("/items/%21%24%26%27%28%29%2A%2C%3D", "/items/!$&'()*,="),
            ("/x;p%3Aq/y", "/x/y"),
        ];
        for (path, form) in cases {
            assert_eq!(routing_form(path), form, "{path}");
        }
        assert!(matches!(routing_form("/a/b%20c"), Cow::Borrowed(_)));
    }

    #[test]
    fn case_fold_reads_as_a_case_insensitive_server() {
        let cases = [
            ("/", "/"),
            ("/app/admin", "/app/admin"),
            ("/APP/Admin/Users", "/app/admin/users"),
            ("/app/admin./x", "/app/admin/x"),
            ("/app/admin.%20../x", "/app/admin/x"),
            ("/app/.../x", "/app/.../x"),
            ("/app/%20/x", "/app/%20/x"),
            ("/api/%C5%BFecrets", "/api/secrets"),
            ("/api/\u{17f}ecrets", "/api/secrets"),
            ("/api/%E2%84%AAeys", "/api/keys"),
            ("/%C4%B0D/%C4%B1d", "/id/id"),
            ("/caf%C3%A9/%C3%89", "/caf%c3%a9/%c3%89"),
            ("/a/", "/a/"),
        ];
        for (path, folded) in cases {
            assert_eq!(case_fold(path), folded, "{path}");
        }
        assert!(matches!(case_fold("/a/b%20c"), Cow::Borrowed(_)));
    }

    proptest! {
        /// The routing form and the case fold keep the segments: their number, and where
        /// an empty one is.
        #[test]
        fn forms_keep_the_segments(segments in proptest::collection::vec(
            "[a-zA-Z.;=:%0-9ſ]{0,6}", 1..6)) {
            let path = format!("/{}", segments.join("/"));
            if let Ok(normal) = normalize(&path) {
                let form = routing_form(&normal);
                let folded = case_fold(&form);
                let count = |p: &str| p.matches('/').count();
                prop_assert_eq!(count(&form), count(&normal));
                prop_assert_eq!(count(&folded), count(&normal));
                prop_assert!(!form.contains(';'));
                prop_assert_eq!(case_fold(&folded), folded.clone());
            }
        }
    }

    #[test]
    fn respelled_as_the_operation() {
        assert_eq!(respell("/items/7", "/items/{id}"), None);
        assert_eq!(respell("/items;v=1/7", "/items/{id}"), None);
        assert_eq!(
            respell("/ITEMS;v=1/Abc", "/items/{id}").as_deref(),
            Some("/items;v=1/Abc")
        );
        assert_eq!(respell("/a%3Ab/x.", "/a:b/x").as_deref(), Some("/a:b/x"));
        assert_eq!(respell("/", "/"), None);
        assert_eq!(respell("/a/b", "/a"), None);
    }

    #[test]
    fn parameters_are_ignored_for_matching() {
        assert_eq!(without_parameters("/items/admin;x=1"), "/items/admin");
        assert_eq!(without_parameters("/a;p/b;q=1;r/c"), "/a/b/c");
        assert!(matches!(without_parameters("/plain"), Cow::Borrowed(_)));
    }
}
