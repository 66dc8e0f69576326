//! A request body that must arrive whole by a deadline.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

type BoxError = Box<dyn StdError + Send + Sync>;

/// A request body that fails with [`BodyTimeout`] once its deadline has passed.
///
/// The deadline is fixed when the request arrives: unlike tower-http's `TimeoutBody`, whose
/// clock restarts at every frame, a body trickled a byte at a time cannot outlive it. The
/// timer is made at the first read, so a request whose body is never read costs none.
pub struct DeadlineBody<B> {
    inner: B,
    deadline: Instant,
    bound: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> DeadlineBody<B> {
    /// `inner`, to be read whole within `bound` from now.
    pub fn new(inner: B, bound: Duration) -> Self {
        DeadlineBody {
            inner,
            deadline: Instant::now() + bound,
            bound,
            timer: None,
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.bound)))));
        }
        Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map(|frame| frame.map(|result| result.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that did not arrive within its bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyTimeout(pub Duration);

impl fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the request body did not arrive within {:?}", self.0)
    }
}

impl StdError for BodyTimeout {}

impl BodyTimeout {
    /// The body timeout behind `error` (itself or any of its sources), if there is one.
    pub fn find(error: &(dyn StdError + 'static)) -> Option<BodyTimeout> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(timeout) = error.downcast_ref::<BodyTimeout>() {
                return Some(*timeout);
            }
            next = error.source();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use axum::body::{Body as AxumBody, Bytes, to_bytes};

    use super::*;

    /// A body that never sends anything.
    struct Silent;

    impl Body for Silent {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_body_not_there_by_the_deadline_fails_with_body_timeout() {
        let body = AxumBody::new(DeadlineBody::new(Silent, Duration::from_millis(20)));
        let read = tokio::time::timeout(Duration::from_secs(5), to_bytes(body, usize::MAX))
            .await
            .expect("the deadline ends the read");
        let error = read.unwrap_err();
        assert_eq!(
            BodyTimeout::find(&error),
            Some(BodyTimeout(Duration::from_millis(20))),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_body_there_in_time_is_read_as_is() {
        let inner = AxumBody::from("{}");
        let body = AxumBody::new(DeadlineBody::new(inner, Duration::from_secs(10)));
        assert_eq!(to_bytes(body, usize::MAX).await.unwrap(), "{}");
    }

    #[test]
    fn other_errors_are_not_timeouts() {
        let error = std::io::Error::other("reset");
        assert_eq!(BodyTimeout::find(&error), None);
    }
}
