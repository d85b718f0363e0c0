//! The body type that flows through per-route stacks.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

/// The error type inside tower stacks.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming request or response body.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body into [`Body`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    boxed(Full::new(bytes.into()))
}

/// An empty body.
pub fn empty() -> Body {
    boxed(http_body_util::Empty::new())
}

/// Whether `error`, or an error it was caused by, is a body exceeding its size limit
/// ([`http_body_util::Limited`]).
pub fn is_length_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = error.source();
    }
    false
}

/// `body`, failing with [`http_body_util::LengthLimitError`] once it exceeds `limit` bytes:
/// [`Limited`], boxed.
pub fn limited(body: Body, limit: u64) -> Body {
    boxed(Limited::new(body, limit))
}

pin_project_lite::pin_project! {
    /// A body of any type that fails once more than its limit has been read, with an error
    /// that [`is_length_limit`] recognizes (a boxed [`http_body_util::LengthLimitError`]).
    /// gw's rescue answers that error with 413 `payload_too_large`, and axum's extractors
    /// answer it with 413 too. Other errors of the body are passed on, boxed.
    ///
    /// The request body that [`RequestSizeLimit`](crate::policy::sizelimit::RequestSizeLimit)
    /// hands to its inner service, and (boxed, by [`limited`]) the one gw's own stacks use.
    #[derive(Debug)]
    pub struct Limited<B> {
        #[pin]
        inner: http_body_util::Limited<B>,
    }
}

impl<B> Limited<B> {
    /// `body`, limited to `limit` bytes.
    pub fn new(body: B, limit: u64) -> Self {
        Self {
            inner: http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)),
        }
    }
}

impl<B> http_body::Body for Limited<B>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, BoxError>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
