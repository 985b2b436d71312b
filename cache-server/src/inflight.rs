//! The memory budget for work in flight (`CACHE_MAX_INFLIGHT_MB`): one number bounds what calls hold beside
//! the memory tier — a Set's decoded value while it is compressed and stored, a Get's decompressed value and
//! its encoded reply until the reply has left for the client.
//!
//! A call asks for its bytes before it makes them: a Get knows its reply's size from the envelope header
//! before it decompresses anything, a GetMany sums its items first. A call that would exceed the budget waits
//! up to [`WAIT`] for others to finish, then fails with `RESOURCE_EXHAUSTED` (retry later); a call that could
//! never fit (more than the whole budget) fails at once. A reply's permit travels in the response's extensions
//! to [`hold_until_sent`], which keeps it with the response body: a client that never reads its replies pins
//! at most the budget, not the server's memory.
//!
//! Amounts below [`UNCOUNTED_BYTES`] are not counted (no semaphore, no boxed body on the hot path of small
//! calls); they are bounded by the HTTP/2 stream and connection limits instead (docs/operations.md).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// How long a call waits for room in the budget before it fails with `RESOURCE_EXHAUSTED`.
pub const WAIT: Duration = Duration::from_millis(500);
/// Amounts below this are not counted.
pub const UNCOUNTED_BYTES: u64 = 16 << 10;
/// The budget counts in units of this many bytes (a semaphore holds at most `u32::MAX >> 3` permits).
const UNIT: u64 = 1 << 10;

/// Why the budget refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Exhausted {
    /// More than the whole budget.
    #[error(
        "this call needs {needed} bytes in flight, more than the server's whole in-flight budget of {budget} bytes (CACHE_MAX_INFLIGHT_MB); ask for less per call"
    )]
    NeverFits {
        /// Bytes the call asked for.
        needed: u64,
        /// The budget.
        budget: u64,
    },
    /// Other calls held the budget for longer than [`WAIT`].
    #[error(
        "the server's in-flight budget ({budget} bytes, CACHE_MAX_INFLIGHT_MB) stayed full for {WAIT:?}: retry later"
    )]
    Busy {
        /// The budget.
        budget: u64,
    },
}

/// The budget, shared by every call.
#[derive(Debug)]
pub struct Budget {
    permits: Arc<Semaphore>,
    units: u32,
}

/// Bytes held in the budget; released when dropped.
#[derive(Debug)]
pub struct Permit {
    _held: OwnedSemaphorePermit,
}

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Self {
        let units = (bytes / UNIT).clamp(1, u64::from(u32::MAX >> 3)) as u32;
        Self {
            permits: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    /// The budget in bytes.
    pub fn bytes(&self) -> u64 {
        u64::from(self.units) * UNIT
    }

    /// Bytes held now.
    pub fn in_use(&self) -> u64 {
        (u64::from(self.units) - self.permits.available_permits() as u64) * UNIT
    }

    /// Holds `bytes` (nothing below [`UNCOUNTED_BYTES`]), waiting up to [`WAIT`] for room.
    pub async fn acquire(&self, bytes: u64) -> Result<Option<Permit>, Exhausted> {
        if bytes < UNCOUNTED_BYTES {
            return Ok(None);
        }
        let units = bytes.div_ceil(UNIT);
        if units > u64::from(self.units) {
            return Err(Exhausted::NeverFits {
                needed: bytes,
                budget: self.bytes(),
            });
        }
        let units = units as u32;
        match self.permits.clone().try_acquire_many_owned(units) {
            Ok(permit) => Ok(Some(Permit { _held: permit })),
            Err(TryAcquireError::NoPermits) => {
                match tokio::time::timeout(WAIT, self.permits.clone().acquire_many_owned(units))
                    .await
                {
                    Ok(Ok(permit)) => Ok(Some(Permit { _held: permit })),
                    // The semaphore is never closed; a timeout is a full budget.
                    _ => Err(Exhausted::Busy {
                        budget: self.bytes(),
                    }),
                }
            }
            Err(TryAcquireError::Closed) => Err(Exhausted::Busy {
                budget: self.bytes(),
            }),
        }
    }
}

/// A reply's permit, in the response's extensions until [`hold_until_sent`] moves it to the body (extensions
/// must be `Clone`: the permit is shared, and released when the last holder drops it).
#[derive(Debug, Clone)]
pub struct ReplyPermit {
    _permit: Arc<Permit>,
}

impl ReplyPermit {
    /// Wraps a reply's permit for the response's extensions.
    pub fn new(permit: Permit) -> Self {
        Self {
            _permit: Arc::new(permit),
        }
    }
}

/// Moves a reply's permit from the response's extensions to its body, which releases it when the body has
/// been sent (or dropped: the client went away). Responses without one pass unchanged.
pub fn hold_until_sent(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    match response.extensions_mut().remove::<ReplyPermit>() {
        Some(permit) => response.map(|body| {
            tonic::body::Body::new(Held {
                body,
                _permit: permit,
            })
        }),
        None => response,
    }
}

/// A response body and the permit of the bytes it holds.
struct Held {
    body: tonic::body::Body,
    _permit: ReplyPermit,
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn small_amounts_are_not_counted() {
        let budget = Budget::new(1 << 20);
        assert!(budget.acquire(UNCOUNTED_BYTES - 1).await.unwrap().is_none());
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_call_larger_than_the_budget_fails_at_once() {
        let budget = Budget::new(1 << 20);
        let started = std::time::Instant::now();
        assert!(matches!(
            budget.acquire(2 << 20).await,
            Err(Exhausted::NeverFits { .. })
        ));
        assert!(started.elapsed() < WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_budget_waits_then_fails_and_frees_on_drop() {
        let budget = Budget::new(1 << 20);
        let held = budget.acquire(1 << 20).await.unwrap().expect("counted");
        assert_eq!(budget.in_use(), 1 << 20);
        assert!(matches!(
            budget.acquire(64 << 10).await,
            Err(Exhausted::Busy { .. })
        ));
        drop(held);
        assert_eq!(budget.in_use(), 0);
        assert!(budget.acquire(64 << 10).await.unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_call_gets_room_when_another_finishes() {
        let budget = Arc::new(Budget::new(1 << 20));
        let held = budget.acquire(1 << 20).await.unwrap();
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.acquire(512 << 10).await.map(|p| p.is_some()) })
        };
        tokio::time::sleep(WAIT / 2).await;
        drop(held);
        assert!(waiter.await.unwrap().unwrap());
    }
}
