//! W3C trace context (`traceparent`): propagated to upstreams as the client sent it when it
//! is valid, made when it is missing or malformed, so that the upstream's traces of a
//! request can be tied together and to the gateway's access log.

use http::{HeaderMap, HeaderName, HeaderValue};

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Whether `value` is a valid `traceparent`: `<version>-<32 hex>-<16 hex>-<2 hex>`, lower
/// case, with a trace id and a span id that are not all zeros. Version `00` is exactly that;
/// a later version (but `ff`, which is invalid) is read by its first 55 characters when
/// what follows starts with `-` (W3C Trace Context, version compatibility).
pub fn is_valid(value: &[u8]) -> bool {
    let hex = |part: &[u8]| part.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if value.len() < 55 || !hex(&value[..2]) || &value[..2] == b"ff" || value[2] != b'-' {
        return false;
    }
    let later = &value[..2] != b"00";
    if value.len() > 55 && !(later && value[55] == b'-') {
        return false;
    }
    let value = &value[..55];
    if value[35] != b'-' || value[52] != b'-' {
        return false;
    }
    let hex = |part: &[u8]| part.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let (trace, span, flags) = (&value[3..35], &value[36..52], &value[53..55]);
    hex(trace)
        && hex(span)
        && hex(flags)
        && trace.iter().any(|&b| b != b'0')
        && span.iter().any(|&b| b != b'0')
}

/// A new `traceparent`, sampled, with random trace and span ids.
pub fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let trace: u128 = rand::random::<u128>().max(1);
    let span: u64 = rand::random::<u64>().max(1);
    // written in place: this runs for most requests
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-01";
    for (i, slot) in text[3..35].iter_mut().enumerate() {
        *slot = HEX[((trace >> (124 - 4 * i)) & 0xF) as usize];
    }
    for (i, slot) in text[36..52].iter_mut().enumerate() {
        *slot = HEX[((span >> (60 - 4 * i)) & 0xF) as usize];
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Keeps a valid `traceparent` (one header), or replaces it with a new one (and drops a
/// `tracestate` that belonged to the invalid one).
pub fn ensure(headers: &mut HeaderMap) {
    let mut values = headers.get_all(&TRACEPARENT).iter();
    let valid = match (values.next(), values.next()) {
        (Some(value), None) => is_valid(value.as_bytes()),
        _ => false,
    };
    if !valid {
        // a tracestate belongs to the trace of its traceparent: with a new trace, it goes
        headers.remove(&TRACESTATE);
        headers.insert(TRACEPARENT, generate());
    }
}

/// The trace id of a valid `traceparent` in `headers`.
pub fn trace_id(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(&TRACEPARENT)?;
    if !is_valid(value.as_bytes()) {
        return None;
    }
    value.to_str().ok().and_then(|v| v.get(3..35))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_values_pass_and_others_are_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(GOOD));
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=1"));
        ensure(&mut headers);
        assert_eq!(headers[&TRACEPARENT], GOOD);
        assert_eq!(headers[&TRACESTATE], "vendor=1");
        assert_eq!(trace_id(&headers), Some("4bf92f3577b34da6a3ce929d0e0e4736"));

        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(TRACEPARENT, HeaderValue::from_static(bad));
            headers.insert(TRACESTATE, HeaderValue::from_static("vendor=1"));
            ensure(&mut headers);
            let now = headers[&TRACEPARENT].as_bytes().to_vec();
            assert!(is_valid(&now), "{bad}");
            assert_ne!(now, bad.as_bytes());
            assert!(headers.get(&TRACESTATE).is_none(), "{bad}");
        }
        // a later version is kept, with what follows its first 55 characters
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(later));
        ensure(&mut headers);
        assert_eq!(headers[&TRACEPARENT], later);
        // a tracestate without a traceparent belongs to no trace
        let mut orphan = HeaderMap::new();
        orphan.insert(TRACESTATE, HeaderValue::from_static("vendor=1"));
        ensure(&mut orphan);
        assert!(orphan.get(&TRACESTATE).is_none());
        let mut empty = HeaderMap::new();
        ensure(&mut empty);
        assert!(is_valid(empty[&TRACEPARENT].as_bytes()));
        assert!(empty[&TRACEPARENT].to_str().unwrap().ends_with("-01"));
        // the ids are the hex of the random numbers, digit for digit
        let text = empty[&TRACEPARENT].to_str().unwrap();
        assert!(u128::from_str_radix(&text[3..35], 16).unwrap() > 0);
        let mut other = HeaderMap::new();
        ensure(&mut other);
        assert_ne!(empty[&TRACEPARENT], other[&TRACEPARENT]);
    }
}
