//! W3C trace context (`traceparent`): propagated to upstreams as the client sent it when it
//! is valid, made when it is missing or malformed, so that the upstream's traces of a
//! request can be tied together and to the gateway's access log.

use http::{HeaderMap, HeaderName, HeaderValue};

pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

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
    let trace: u128 = rand::random::<u128>().max(1);
    let span: u64 = rand::random::<u64>().max(1);
    TraceParent {
        trace_id: trace,
        parent_id: span,
        flags: TraceParent::SAMPLED,
    }
    .to_header()
}

/// The fields of a valid `traceparent`, as numbers.
///
/// ```
/// use gw_core::trace::TraceParent;
/// let parent = TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
/// assert!(parent.sampled());
/// // the gateway's own span: same trace, its span id as the parent-id, sampled or not
/// let child = parent.child(0x1122_3344_5566_7788, false);
/// assert_eq!(child.to_header(), "00-4bf92f3577b34da6a3ce929d0e0e4736-1122334455667788-00");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id (never zero).
    pub trace_id: u128,
    /// The id of the caller's span, the parent of the next one (never zero).
    pub parent_id: u64,
    /// The trace flags.
    pub flags: u8,
}

impl TraceParent {
    /// The `sampled` flag: the caller may have recorded its span.
    pub const SAMPLED: u8 = 0x01;
    /// The `random` flag (Trace Context level 2): the trace id is random.
    pub const RANDOM: u8 = 0x02;

    /// The fields of a valid `traceparent` value ([`is_valid`]); a later version is read by
    /// its first 55 characters.
    pub fn parse(value: &[u8]) -> Option<Self> {
        if !is_valid(value) {
            return None;
        }
        let text = std::str::from_utf8(&value[..55]).ok()?;
        Some(Self {
            trace_id: u128::from_str_radix(&text[3..35], 16).ok()?,
            parent_id: u64::from_str_radix(&text[36..52], 16).ok()?,
            flags: u8::from_str_radix(&text[53..55], 16).ok()?,
        })
    }

    /// The request's trace context: its one valid `traceparent`, if it has exactly one.
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        single(headers).and_then(|value| Self::parse(value.as_bytes()))
    }

    /// Whether the caller sampled the trace.
    pub fn sampled(&self) -> bool {
        self.flags & Self::SAMPLED != 0
    }

    /// The context to pass on from a span `span_id` of the same trace: `span_id` as the
    /// parent-id, the `sampled` flag as given, the `random` flag kept, and the flags this
    /// version does not define cleared (W3C Trace Context: vendors set them to zero).
    #[must_use]
    pub fn child(&self, span_id: u64, sampled: bool) -> Self {
        let flags = (self.flags & Self::RANDOM) | if sampled { Self::SAMPLED } else { 0 };
        Self {
            trace_id: self.trace_id,
            parent_id: span_id,
            flags,
        }
    }

    /// The `traceparent` value, version `00`.
    pub fn to_header(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        // written in place: this runs for most requests
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        for (i, slot) in text[3..35].iter_mut().enumerate() {
            *slot = HEX[((self.trace_id >> (124 - 4 * i)) & 0xF) as usize];
        }
        for (i, slot) in text[36..52].iter_mut().enumerate() {
            *slot = HEX[((self.parent_id >> (60 - 4 * i)) & 0xF) as usize];
        }
        text[53] = HEX[usize::from(self.flags >> 4)];
        text[54] = HEX[usize::from(self.flags & 0xF)];
        HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// The request's `traceparent` when it has exactly one.
fn single(headers: &HeaderMap) -> Option<&HeaderValue> {
    let mut values = headers.get_all(&TRACEPARENT).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => Some(value),
        _ => None,
    }
}

/// Keeps a valid `traceparent` (one header), or replaces it with a new one (and drops a
/// `tracestate` that belonged to the invalid one).
pub fn ensure(headers: &mut HeaderMap) {
    let valid = single(headers).is_some_and(|value| is_valid(value.as_bytes()));
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

    #[test]
    fn a_child_keeps_the_trace_and_names_the_new_parent() {
        let parent = TraceParent::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(parent.trace_id, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        assert_eq!(parent.parent_id, 0x00f0_67aa_0ba9_02b7);
        assert!(parent.sampled());
        assert_eq!(parent.to_header(), GOOD);

        let child = parent.child(0xabcd, true);
        assert_eq!(
            child.to_header(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-000000000000abcd-01"
        );
        assert_eq!(
            parent.child(u64::MAX, false).to_header(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-ffffffffffffffff-00"
        );
        // the random flag is kept; flags this version does not define are cleared
        let flagged =
            TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff").unwrap();
        assert_eq!(flagged.child(1, false).flags, TraceParent::RANDOM);
        assert_eq!(
            flagged.child(1, true).flags,
            TraceParent::RANDOM | TraceParent::SAMPLED
        );
        // a later version is continued as version 00, without what it added
        let later = TraceParent::parse(
            b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
        )
        .unwrap();
        assert_eq!(
            later.child(2, true).to_header(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000002-01"
        );
        // invalid values, and two traceparent headers, give no context
        assert!(
            TraceParent::parse(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01")
                .is_none()
        );
        let mut two = HeaderMap::new();
        two.append(TRACEPARENT, HeaderValue::from_static(GOOD));
        two.append(TRACEPARENT, HeaderValue::from_static(GOOD));
        assert!(TraceParent::of(&two).is_none());
        two.remove(TRACEPARENT);
        two.insert(TRACEPARENT, HeaderValue::from_static(GOOD));
        assert_eq!(TraceParent::of(&two), Some(parent));
    }
}
