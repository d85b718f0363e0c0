//! What the trace export is configured with: [`OtelConfig`], a plain struct that an embedder
//! fills (or `gw-runtime` from its flags), checked by [`OtelConfig::validate`] when the
//! export starts.

use std::fmt;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

/// The `service.name` of the spans when none is given.
pub const DEFAULT_SERVICE_NAME: &str = "gw-runtime";
/// How often queued spans are sent when fewer than a full batch are waiting.
pub const DEFAULT_BATCH_INTERVAL: Duration = Duration::from_secs(5);
/// The most spans one export request carries.
pub const DEFAULT_MAX_BATCH: usize = 512;
/// The most finished spans waiting to be exported; beyond it a span is dropped.
pub const DEFAULT_QUEUE_CAPACITY: usize = 2048;
/// The longest one export request may take, connection included.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest the final flush at shutdown may take.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// The request headers the exporter writes itself, or that frame the message: an
/// [`OtelHeader`] may not set them.
const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "proxy-connection",
];

/// Why the export cannot start with a configuration. No message quotes a header value or
/// the endpoint's user information.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OtelError {
    /// The endpoint is not a usable `http://` or `https://` URL.
    #[error("invalid OTLP endpoint: {0}")]
    Endpoint(String),
    /// An export header is malformed.
    #[error("invalid OTLP header: {0}")]
    Header(String),
    /// The sample ratio is not a number from 0 to 1.
    #[error("the sample ratio must be a number from 0 to 1, got {0}")]
    SampleRatio(f64),
    /// Another setting is out of its range.
    #[error("invalid trace export setting: {0}")]
    Setting(String),
}

/// A header sent with every export request, for a vendor's authentication: its value is a
/// secret, never shown by `Debug` nor in an error message.
#[derive(Clone, PartialEq, Eq)]
pub struct OtelHeader {
    name: HeaderName,
    value: HeaderValue,
}

impl fmt::Debug for OtelHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelHeader")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .finish()
    }
}

impl OtelHeader {
    /// A header from a name and a value.
    pub fn new(name: &str, value: &[u8]) -> Result<Self, OtelError> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| OtelError::Header(format!("{name:?} is not a valid header name")))?;
        if RESERVED_HEADERS.contains(&name.as_str()) {
            return Err(OtelError::Header(format!(
                "{name} is set by the exporter and cannot be replaced"
            )));
        }
        let mut value = HeaderValue::from_bytes(value).map_err(|_| {
            OtelError::Header(format!("the value of {name} is not a valid header value"))
        })?;
        value.set_sensitive(true);
        Ok(Self { name, value })
    }

    /// A header written `name=value`, as one entry of `OTEL_EXPORTER_OTLP_HEADERS`: blanks
    /// around the name and the value are ignored and the value is percent-decoded
    /// (`Bearer%20abc` is `Bearer abc`).
    pub fn parse(entry: &str) -> Result<Self, OtelError> {
        let Some((name, value)) = entry.split_once('=') else {
            return Err(OtelError::Header(
                "expected name=value (the value is not shown)".to_string(),
            ));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(OtelError::Header("a header has no name".to_string()));
        }
        let value: Vec<u8> = percent_encoding::percent_decode_str(value.trim()).collect();
        Self::new(name, &value)
    }

    /// The header's name.
    pub fn name(&self) -> &HeaderName {
        &self.name
    }

    /// The header's value (marked sensitive).
    pub(crate) fn value(&self) -> &HeaderValue {
        &self.value
    }
}

/// The trace export's settings. [`OtelConfig::new`] fills in the defaults; change the
/// public fields as needed, then hand it to [`crate::otel::Tracing::start`].
///
/// ```
/// use gw_core::otel::{OtelConfig, OtelHeader};
/// let mut config = OtelConfig::new("https://otlp.example.com:4318").unwrap();
/// config.service_instance_id = "edge-1".to_string();
/// config.sample_ratio = 0.25;
/// config.headers.push(OtelHeader::parse("x-api-key=secret").unwrap());
/// assert!(config.validate().is_ok());
/// assert_eq!(config.traces_url().as_str(), "https://otlp.example.com:4318/v1/traces");
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
///
/// `Debug` shows the endpoint as logs do (scheme, host, port and path: never its query or
/// user information, which could hold a credential) and no header value.
#[derive(Clone)]
pub struct OtelConfig {
    /// The OTLP/HTTP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`): spans are POSTed to
    /// `{endpoint}/v1/traces`.
    pub endpoint: url::Url,
    /// Headers sent with every export request (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: Vec<OtelHeader>,
    /// The resource's `service.name`.
    pub service_name: String,
    /// The resource's `service.version`.
    pub service_version: String,
    /// The resource's `service.instance.id` (a runtime sets its node id); left out when
    /// empty.
    pub service_instance_id: String,
    /// The share of new traces that are sampled, from 0 to 1. A request that comes with a
    /// valid `traceparent` follows its `sampled` flag instead.
    pub sample_ratio: f64,
    /// How often queued spans are sent when fewer than `max_batch` are waiting.
    pub batch_interval: Duration,
    /// The most spans one export request carries.
    pub max_batch: usize,
    /// The most finished spans waiting for export; beyond it spans are dropped and counted.
    pub queue_capacity: usize,
    /// The longest one export request may take.
    pub export_timeout: Duration,
    /// The longest the final flush may take at shutdown.
    pub shutdown_timeout: Duration,
}

impl fmt::Debug for OtelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelConfig")
            .field("endpoint", &shown_url(&self.endpoint))
            .field("headers", &self.headers)
            .field("service_name", &self.service_name)
            .field("service_version", &self.service_version)
            .field("service_instance_id", &self.service_instance_id)
            .field("sample_ratio", &self.sample_ratio)
            .field("batch_interval", &self.batch_interval)
            .field("max_batch", &self.max_batch)
            .field("queue_capacity", &self.queue_capacity)
            .field("export_timeout", &self.export_timeout)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish()
    }
}

impl OtelConfig {
    /// The settings for an endpoint (`http://collector:4318`), with the defaults.
    pub fn new(endpoint: &str) -> Result<Self, OtelError> {
        Ok(Self {
            endpoint: parse_endpoint(endpoint)?,
            headers: Vec::new(),
            service_name: DEFAULT_SERVICE_NAME.to_string(),
            service_version: env!("CARGO_PKG_VERSION").to_string(),
            service_instance_id: String::new(),
            sample_ratio: 1.0,
            batch_interval: DEFAULT_BATCH_INTERVAL,
            max_batch: DEFAULT_MAX_BATCH,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            export_timeout: DEFAULT_EXPORT_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        })
    }

    /// Every setting checked: the endpoint, the ratio and the ranges.
    pub fn validate(&self) -> Result<(), OtelError> {
        check_endpoint(&self.endpoint)?;
        check_sample_ratio(self.sample_ratio)?;
        if self.service_name.trim().is_empty() {
            return Err(OtelError::Setting("the service name is empty".to_string()));
        }
        if self.batch_interval < Duration::from_millis(10) {
            return Err(OtelError::Setting(
                "the batch interval must be at least 10ms".to_string(),
            ));
        }
        if !(1..=65_536).contains(&self.max_batch) {
            return Err(OtelError::Setting(
                "the batch size must be from 1 to 65536 spans".to_string(),
            ));
        }
        if self.queue_capacity < self.max_batch || self.queue_capacity > 1 << 20 {
            return Err(OtelError::Setting(
                "the queue must hold at least one batch and at most 1048576 spans".to_string(),
            ));
        }
        if self.export_timeout.is_zero() || self.shutdown_timeout.is_zero() {
            return Err(OtelError::Setting("timeouts must not be zero".to_string()));
        }
        Ok(())
    }

    /// Where spans are POSTed: the endpoint's path with `/v1/traces` appended (OTLP/HTTP's
    /// rule for `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn traces_url(&self) -> url::Url {
        let mut url = self.endpoint.clone();
        let path = format!("{}/v1/traces", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url
    }
}

/// An OTLP endpoint: an `http://` or `https://` URL with a host and no user information
/// (credentials go in [`OtelHeader`]s) and no fragment.
pub fn parse_endpoint(endpoint: &str) -> Result<url::Url, OtelError> {
    let url = url::Url::parse(endpoint.trim())
        .map_err(|e| OtelError::Endpoint(format!("not a URL ({e})")))?;
    check_endpoint(&url)?;
    Ok(url)
}

fn check_endpoint(url: &url::Url) -> Result<(), OtelError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(OtelError::Endpoint(
            "must be an http:// or https:// URL (OTLP/HTTP)".to_string(),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(OtelError::Endpoint(
            "must not carry a user name or password: send credentials as a header".to_string(),
        ));
    }
    if url.host().is_none() {
        return Err(OtelError::Endpoint("must name a host".to_string()));
    }
    if url.fragment().is_some() {
        return Err(OtelError::Endpoint("must not have a fragment".to_string()));
    }
    Ok(())
}

/// An endpoint as logs show it: `scheme://host:port/path`, without user information or
/// query (either could hold a credential); `<not a URL>` for a value that does not parse.
///
/// ```
/// assert_eq!(
///     gw_core::otel::redact_endpoint("https://me:pw@otlp.example.com:4318/otlp?key=secret"),
///     "https://otlp.example.com:4318/otlp"
/// );
/// ```
pub fn redact_endpoint(endpoint: &str) -> String {
    url::Url::parse(endpoint.trim())
        .map_or_else(|_| "<not a URL>".to_string(), |url| shown_url(&url))
}

/// `scheme://host:port/path` of a URL.
fn shown_url(url: &url::Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        &url[url::Position::BeforeHost..url::Position::AfterPort],
        url.path()
    )
}

/// A sample ratio: a number from 0 to 1.
pub fn check_sample_ratio(ratio: f64) -> Result<f64, OtelError> {
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(OtelError::SampleRatio(ratio))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_traces_path_and_bad_ones_are_refused() {
        let url = |e: &str| OtelConfig::new(e).unwrap().traces_url().to_string();
        assert_eq!(
            url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            url("http://127.0.0.1:4318/"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            url("https://otlp.example.com/otlp/"),
            "https://otlp.example.com/otlp/v1/traces"
        );
        for (bad, reason) in [
            ("collector:4318", "http:// or https://"),
            ("127.0.0.1:4318", "not a URL"),
            ("grpc://collector:4317", "http:// or https://"),
            ("http://user:s3cr3t@collector:4318", "user name or password"),
            ("http://collector:4318/#x", "fragment"),
            ("not a url", "not a URL"),
        ] {
            assert_refused(OtelConfig::new(bad), bad, reason);
        }
    }

    /// `result` is an error that gives `reason` and does not quote the secret in `input`.
    fn assert_refused<T: std::fmt::Debug>(result: Result<T, OtelError>, input: &str, reason: &str) {
        let err = result.unwrap_err().to_string();
        assert!(err.contains(reason), "{input}: {err}");
        assert!(!err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn headers_are_decoded_checked_and_never_shown() {
        let header = OtelHeader::parse(" Authorization = Bearer%20s3cr3t%2C1 ").unwrap();
        assert_eq!(header.name(), "authorization");
        assert_eq!(header.value(), "Bearer s3cr3t,1");
        assert!(header.value().is_sensitive());
        let shown = format!("{header:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");

        for (bad, reason) in [
            ("no-equals-s3cr3t", "expected name=value"),
            ("=s3cr3t", "no name"),
            ("bad name=s3cr3t", "not a valid header name"),
            ("x-key=s3cr3t%0A", "not a valid header value"),
            ("content-type=s3cr3t", "set by the exporter"),
            ("Host=s3cr3t", "set by the exporter"),
        ] {
            assert_refused(OtelHeader::parse(bad), bad, reason);
        }
    }

    #[test]
    fn debug_shows_neither_the_query_nor_user_information() {
        let mut config =
            OtelConfig::new("https://otlp.example.com:4318/otlp?token=s3cr3t").unwrap();
        // validate refuses user information, but the field is public
        config.endpoint =
            url::Url::parse("https://me:s3cr3t@otlp.example.com:4318/otlp?token=s3cr3t").unwrap();
        config
            .headers
            .push(OtelHeader::parse("x-api-key=s3cr3t").unwrap());
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(
            shown.contains("\"https://otlp.example.com:4318/otlp\""),
            "{shown}"
        );
        assert!(shown.contains("x-api-key"), "{shown}");
        assert_eq!(redact_endpoint("http://[::1]:4318"), "http://[::1]:4318/");
        assert_eq!(redact_endpoint("s3cr3t"), "<not a URL>");
    }

    #[test]
    fn settings_are_range_checked() {
        let base = OtelConfig::new("http://127.0.0.1:4318").unwrap();
        assert!(base.validate().is_ok());
        for ratio in [0.0, 0.5, 1.0] {
            assert_eq!(check_sample_ratio(ratio), Ok(ratio));
        }
        for ratio in [-0.1, 1.01, f64::NAN, f64::INFINITY] {
            let mut config = base.clone();
            config.sample_ratio = ratio;
            assert!(matches!(config.validate(), Err(OtelError::SampleRatio(_))));
        }
        let broken: [fn(&mut OtelConfig); 5] = [
            |c| c.batch_interval = Duration::ZERO,
            |c| c.max_batch = 0,
            |c| c.queue_capacity = c.max_batch - 1,
            |c| c.export_timeout = Duration::ZERO,
            |c| c.service_name = " ".to_string(),
        ];
        for change in broken {
            let mut config = base.clone();
            change(&mut config);
            assert!(matches!(config.validate(), Err(OtelError::Setting(_))));
        }
    }
}
