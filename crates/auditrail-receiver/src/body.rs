//! Reading a request body under the in-flight account, for both
//! transports: every byte a client has sent is counted against
//! `max_in_flight_bytes` as it arrives, so that many slow or large bodies
//! at once are refused with a retry hint instead of filling memory.

use std::fmt;

use axum::body::{Bytes, HttpBody};
use http_body_util::BodyExt;

use crate::ingest::{BodyAccount, IngestError};

/// Why a body could not be read whole.
#[derive(Debug)]
pub(crate) enum BodyError<E> {
    /// Longer than the limit it was read with.
    TooLarge,
    /// The in-flight account has no room for it (`IngestError::Busy`).
    Busy(IngestError),
    /// The connection failed while it was read.
    Unreadable(E),
}

impl<E: fmt::Display> fmt::Display for BodyError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::TooLarge => f.write_str("the body is too large"),
            BodyError::Busy(e) => e.fmt(f),
            BodyError::Unreadable(e) => write!(f, "the body could not be read: {e}"),
        }
    }
}

/// Reads the whole body, at most `max` bytes, holding what it has read in
/// `account` as it arrives. A body that announces its length (HTTP
/// `Content-Length`, `announced`) holds all of it from the start: the
/// buffer is made that large at once.
pub(crate) async fn read_body<B>(
    body: B,
    max: usize,
    announced: Option<u64>,
    account: &mut BodyAccount,
) -> Result<Bytes, BodyError<B::Error>>
where
    B: HttpBody<Data = Bytes>,
{
    let mut read = match announced {
        // Refused once `max` bytes of it have arrived, not before: a client
        // still writing its body when the server answers and closes gets
        // a broken pipe instead of the 413 that says why.
        Some(length) if length > max as u64 => bytes::BytesMut::new(),
        Some(length) => {
            account.hold(length).map_err(BodyError::Busy)?;
            bytes::BytesMut::with_capacity(length as usize)
        }
        None => bytes::BytesMut::new(),
    };
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Unreadable)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let total = read.len() + data.len();
        if total > max {
            return Err(BodyError::TooLarge);
        }
        // What arrived, not the buffer's capacity: the capacity it doubles
        // into is address space until the bytes are written.
        account.hold(total as u64).map_err(BodyError::Busy)?;
        read.extend_from_slice(&data);
    }
    Ok(read.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use tokio::sync::Semaphore;

    fn account(budget: &Arc<Semaphore>) -> BodyAccount {
        BodyAccount::new(budget.clone(), 0)
    }

    fn body_of(chunks: &[&'static [u8]]) -> axum::body::Body {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        axum::body::Body::from_stream(futures_util::stream::iter(chunks))
    }

    #[tokio::test]
    async fn a_body_is_read_whole_and_held_in_the_account() {
        let budget = BodyAccount::budget(64 << 10);
        let mut account = account(&budget);
        let body = body_of(&[&[1; 3000], &[2; 3000]]);
        let read = read_body(body, 1 << 20, None, &mut account).await.unwrap();
        assert_eq!(read.len(), 6000);
        assert!(account.held_bytes() >= 6000);
    }

    #[tokio::test]
    async fn bodies_that_together_pass_the_budget_are_refused_as_busy() {
        let budget = BodyAccount::budget(16 << 10);
        let mut first = account(&budget);
        let held = read_body(body_of(&[&[0; 10_000]]), 1 << 20, None, &mut first).await;
        assert!(held.is_ok());
        let mut second = account(&budget);
        let refused = read_body(body_of(&[&[0; 10_000]]), 1 << 20, None, &mut second).await;
        assert!(
            matches!(refused, Err(BodyError::Busy(IngestError::Busy { .. }))),
            "{refused:?}"
        );
        // The first body's bytes come back once it is gone.
        drop(first);
        let mut third = account(&budget);
        assert!(
            read_body(body_of(&[&[0; 10_000]]), 1 << 20, None, &mut third)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn an_announced_length_is_held_before_a_byte_arrives() {
        let budget = BodyAccount::budget(16 << 10);
        let mut promised = account(&budget);
        let body = body_of(&[&[0; 100]]);
        let read = read_body(body, 1 << 20, Some(12_000), &mut promised).await;
        assert_eq!(read.unwrap().len(), 100);
        assert!(promised.held_bytes() >= 12_000);
        let mut next = account(&budget);
        assert!(matches!(
            read_body(body_of(&[&[0; 100]]), 1 << 20, Some(8000), &mut next).await,
            Err(BodyError::Busy(_))
        ));
        assert!(matches!(
            read_body(body_of(&[&[0; 1001]]), 1000, Some(1001), &mut next).await,
            Err(BodyError::TooLarge)
        ));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_too_large() {
        let budget = BodyAccount::budget(1 << 20);
        let read = read_body(
            body_of(&[&[0; 600], &[0; 600]]),
            1000,
            None,
            &mut account(&budget),
        )
        .await;
        assert!(matches!(read, Err(BodyError::TooLarge)), "{read:?}");
    }
}
