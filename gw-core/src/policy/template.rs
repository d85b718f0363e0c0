//! Header value templates: `${consumer.name}`, `${request.id}`, `${client.ip}` and the
//! like, parsed when the policy is built and rendered per request.

use std::fmt::Write as _;

use http::{HeaderName, HeaderValue, Request};

use super::{Consumer, PolicyContext, RequestId};
use crate::gateway::ConnInfo;

/// The variables a template may use, for error messages and docs.
pub(crate) const VARIABLES: &[&str] = &[
    "api.name",
    "request.id",
    "request.method",
    "request.path",
    "request.host",
    "client.ip",
    "consumer.name",
    "header.<name>",
];

/// A rendered value: on the stack up to [`Rendered::INLINE`] bytes, on the heap beyond.
struct Rendered {
    inline: [u8; Rendered::INLINE],
    len: usize,
    spilled: Vec<u8>,
}

impl Default for Rendered {
    fn default() -> Self {
        Self {
            inline: [0; Self::INLINE],
            len: 0,
            spilled: Vec::new(),
        }
    }
}

impl Rendered {
    const INLINE: usize = 128;

    fn extend_from_slice(&mut self, bytes: &[u8]) {
        if self.spilled.is_empty() && self.len + bytes.len() <= Self::INLINE {
            self.inline[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
            return;
        }
        if self.spilled.is_empty() {
            self.spilled.extend_from_slice(&self.inline[..self.len]);
        }
        self.spilled.extend_from_slice(bytes);
    }

    /// The header value: the stack bytes copied once, or the spilled buffer handed over.
    fn into_value(self) -> Option<HeaderValue> {
        if self.spilled.is_empty() {
            HeaderValue::from_bytes(&self.inline[..self.len]).ok()
        } else {
            HeaderValue::from_maybe_shared(bytes::Bytes::from(self.spilled)).ok()
        }
    }
}

impl std::fmt::Write for Rendered {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        self.extend_from_slice(text.as_bytes());
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    RequestId,
    Method,
    Path,
    Host,
    ClientIp,
    ConsumerName,
    Header(HeaderName),
}

/// A header value with `${variable}` placeholders. A template without variables is a
/// constant, rendered once when the policy is built. A variable with no value for a request
/// (no consumer, no such header) renders as the empty string.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
    constant: Option<HeaderValue>,
}

impl Template {
    /// Parses `text`; `${api.name}` is resolved from `ctx` now.
    pub fn parse(text: &str, ctx: &PolicyContext<'_>) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            literal.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("unclosed \"${{\" in {text:?}"))?;
            let name = &after[..end];
            let part = match name {
                "api.name" => Part::Literal(ctx.api.to_string()),
                "request.id" => Part::RequestId,
                "request.method" => Part::Method,
                "request.path" => Part::Path,
                "request.host" => Part::Host,
                "client.ip" => Part::ClientIp,
                "consumer.name" => Part::ConsumerName,
                other => match other.strip_prefix("header.") {
                    Some(header) => Part::Header(
                        HeaderName::from_bytes(header.as_bytes())
                            .map_err(|_| format!("{header:?} is not a header name"))?,
                    ),
                    None => {
                        return Err(format!(
                            "unknown variable \"${{{other}}}\"; known: {}",
                            VARIABLES.join(", ")
                        ));
                    }
                },
            };
            match part {
                Part::Literal(text) => literal.push_str(&text),
                part => {
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(part);
                }
            }
            rest = &after[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        let constant = match parts.as_slice() {
            [] => Some(HeaderValue::from_static("")),
            [Part::Literal(text)] => Some(
                HeaderValue::from_str(text)
                    .map_err(|_| format!("{text:?} is not a valid header value"))?,
            ),
            _ => None,
        };
        if constant.is_none() {
            for part in &parts {
                if let Part::Literal(text) = part
                    && HeaderValue::from_str(text).is_err()
                {
                    return Err(format!("{text:?} is not a valid header value"));
                }
            }
        }
        Ok(Self { parts, constant })
    }

    /// The value when it is the same for every request.
    pub fn constant(&self) -> Option<&HeaderValue> {
        self.constant.as_ref()
    }

    /// The value for `request`; `None` when the result is not a valid header value.
    pub fn render<B>(&self, request: &Request<B>) -> Option<HeaderValue> {
        if let Some(constant) = &self.constant {
            return Some(constant.clone());
        }
        // rendered on the stack, then copied once into the value
        let mut out = Rendered::default();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.extend_from_slice(text.as_bytes()),
                Part::RequestId => {
                    if let Some(id) = request.extensions().get::<RequestId>() {
                        out.extend_from_slice(id.0.as_bytes());
                    }
                }
                Part::Method => out.extend_from_slice(request.method().as_str().as_bytes()),
                Part::Path => out.extend_from_slice(request.uri().path().as_bytes()),
                Part::Host => {
                    if let Some(host) = crate::router::request_host(request) {
                        out.extend_from_slice(host.as_bytes());
                    }
                }
                Part::ClientIp => {
                    if let Some(conn) = request.extensions().get::<ConnInfo>() {
                        let _ = write!(out, "{}", conn.peer.ip().to_canonical());
                    }
                }
                Part::ConsumerName => {
                    if let Some(consumer) = request.extensions().get::<Consumer>() {
                        out.extend_from_slice(consumer.name.as_bytes());
                    }
                }
                Part::Header(name) => {
                    if let Some(value) = request.headers().get(name) {
                        out.extend_from_slice(value.as_bytes());
                    }
                }
            }
        }
        out.into_value()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::body;

    fn ctx() -> PolicyContext<'static> {
        PolicyContext {
            consumers: crate::consumers::ConsumerStore::empty(),
            api: "orders",
            context: "/orders",
            operation: None,
        }
    }

    #[test]
    fn constants_are_rendered_once() {
        let t = Template::parse("api=${api.name}", &ctx()).unwrap();
        assert_eq!(t.constant().unwrap(), "api=orders");
        assert_eq!(Template::parse("", &ctx()).unwrap().constant().unwrap(), "");
    }

    #[test]
    fn variables_render_per_request() {
        let t = Template::parse(
            "${consumer.name}|${client.ip}|${request.method} ${request.path}|${header.x-a}|${request.id}",
            &ctx(),
        )
        .unwrap();
        assert!(t.constant().is_none());
        let mut request = Request::builder()
            .method("POST")
            .uri("/orders/1?q")
            .header("x-a", "b")
            .body(body::empty())
            .unwrap();
        assert_eq!(t.render(&request).unwrap(), "||POST /orders/1|b|");
        request.extensions_mut().insert(Consumer {
            name: Arc::from("alice"),
            groups: Arc::from(vec!["gold".to_string()]),
            credential: None,
        });
        request.extensions_mut().insert(ConnInfo {
            peer: "[::ffff:192.0.2.1]:5000".parse().unwrap(),
            secure: false,
        });
        request
            .extensions_mut()
            .insert(RequestId(HeaderValue::from_static("r-1")));
        assert_eq!(
            t.render(&request).unwrap(),
            "alice|192.0.2.1|POST /orders/1|b|r-1"
        );
    }

    /// Values longer than the stack buffer render whole, whichever part crosses it.
    #[test]
    fn long_values_render_whole() {
        let t = Template::parse("${header.x-a}-${request.path}", &ctx()).unwrap();
        for (header, path) in [(100, 100), (127, 1), (128, 1), (10, 300), (0, 2000)] {
            let request = Request::builder()
                .uri(format!("/{}", "p".repeat(path)))
                .header("x-a", "h".repeat(header))
                .body(body::empty())
                .unwrap();
            let expected = format!("{}-/{}", "h".repeat(header), "p".repeat(path));
            assert_eq!(t.render(&request).unwrap(), expected.as_str());
        }
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(
            Template::parse("${nope}", &ctx())
                .unwrap_err()
                .contains("unknown variable")
        );
        assert!(
            Template::parse("${client.ip", &ctx())
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(Template::parse("a\nb", &ctx()).is_err());
        assert!(Template::parse("${header.bad name}", &ctx()).is_err());
        assert!(Template::parse("x\n${client.ip}", &ctx()).is_err());
    }
}
