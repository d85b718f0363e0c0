//! The request's deadline: the time its upstream response headers are allowed, from the
//! start of the upstream call, retries included. Waiting for a connection and waiting for
//! the answer are both bounded by it; a retry gets what is left, not a new timeout.

use std::future::IntoFuture;
use std::time::Duration;

use http::Extensions;
use tokio::time::{Instant, Timeout};

use super::endpoint::EndpointState;
use crate::error::GatewayError;
use crate::extensions::RequestTimeout;

/// When a request's upstream call must have its response headers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadline {
    at: Instant,
    /// The timeout it was set from, for the error.
    timeout: Duration,
}

impl Deadline {
    /// The timeout of a request: its own ([`RequestTimeout`]), else the upstream's.
    pub(super) fn timeout_of(extensions: &Extensions, default: Duration) -> Duration {
        extensions.get::<RequestTimeout>().map_or(default, |t| t.0)
    }

    /// A deadline `timeout` from now.
    pub(super) fn start(timeout: Duration) -> Self {
        Self {
            at: Instant::now() + timeout,
            timeout,
        }
    }

    /// The timeout the deadline was set from.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `work`, ended with an error at the deadline.
    pub(super) fn bound<F: IntoFuture>(&self, work: F) -> Timeout<F::IntoFuture> {
        tokio::time::timeout_at(self.at, work)
    }

    /// The error of a request whose deadline passed while it waited on `endpoint`.
    pub(super) fn passed(&self, endpoint: &EndpointState) -> GatewayError {
        GatewayError::UpstreamTimeout {
            endpoint: endpoint.target.authority.to_string(),
            timeout_ms: self.timeout.as_millis(),
        }
    }
}
