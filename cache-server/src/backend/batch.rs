//! Coalesces concurrent calls into one Redis command (group commit).
//!
//! fred spends about as much CPU on each command (a `Command`, a trip through its router task, a response
//! channel) as the rest of a Get does. Under load, calls queue here while up to `max_in_flight` batches are
//! out, and each batch goes to Redis as one command (Gets: one `MGET`; Sets: one call of the Set script):
//! the per-command cost is paid once per batch, and Redis parses one command instead of many. An idle
//! server sends each call at once, in a batch of one, so coalescing adds no wait where there is nothing to
//! coalesce with. Calls in one batch are concurrent calls, so any order among them is a valid one.

use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::BackendError;

/// Runs one batch: one output per item, in order, or one error for the whole batch. Also given when the
/// batch's oldest call was made, so that time spent queued counts against the calls' budget.
pub type RunBatch<T, R> =
    Arc<dyn Fn(Vec<T>, Instant) -> BoxFuture<'static, Result<Vec<R>, BackendError>> + Send + Sync>;

struct Job<T, R> {
    item: T,
    queued: Instant,
    reply: oneshot::Sender<Result<R, BackendError>>,
}

/// Hands calls to a task that sends them in batches.
pub struct Coalescer<T, R> {
    jobs: mpsc::UnboundedSender<Job<T, R>>,
}

impl<T: Send + 'static, R: Send + 'static> Coalescer<T, R> {
    /// Starts the batching task: at most `max_in_flight` batches out at once, each of at most `max_batch`
    /// items. The task ends when the coalescer is dropped and the last batch has answered.
    pub fn spawn(max_in_flight: usize, max_batch: usize, run: RunBatch<T, R>) -> Self {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job<T, R>>();
        let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
        tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                // Waiting for a free slot is what lets calls pile up into the next batch.
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let oldest = first.queued;
                let mut batch = vec![first];
                while batch.len() < max_batch {
                    match queue.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let (items, replies): (Vec<T>, Vec<_>) =
                    batch.into_iter().map(|job| (job.item, job.reply)).unzip();
                let sent = run(items, oldest);
                tokio::spawn(async move {
                    let outcome = sent.await;
                    drop(slot);
                    match outcome {
                        Ok(outputs) if outputs.len() == replies.len() => {
                            for (reply, output) in replies.into_iter().zip(outputs) {
                                let _ = reply.send(Ok(output));
                            }
                        }
                        Ok(outputs) => {
                            let error = BackendError::Internal {
                                tier: "redis",
                                reason: format!(
                                    "a batch of {} calls got {} answers",
                                    replies.len(),
                                    outputs.len()
                                ),
                            };
                            for reply in replies {
                                let _ = reply.send(Err(error.clone()));
                            }
                        }
                        Err(error) => {
                            for reply in replies {
                                let _ = reply.send(Err(error.clone()));
                            }
                        }
                    }
                });
            }
        });
        Self { jobs }
    }

    /// Queues `item` and waits for its batch's answer.
    pub async fn call(&self, item: T) -> Result<R, BackendError> {
        let (reply, answer) = oneshot::channel();
        let closed = || BackendError::Unavailable {
            tier: "redis",
            reason: "the batching task has stopped".into(),
        };
        let job = Job {
            item,
            queued: Instant::now(),
            reply,
        };
        self.jobs.send(job).map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_share_batches_and_get_their_own_answers() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&batches);
        let run: RunBatch<u32, u32> = Arc::new(move |items: Vec<u32>, _| {
            counted.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(items.into_iter().map(|i| i * 2).collect())
            })
        });
        let coalescer = Arc::new(Coalescer::spawn(1, 64, run));
        let calls = (0..50u32).map(|i| {
            let coalescer = Arc::clone(&coalescer);
            tokio::spawn(async move { (i, coalescer.call(i).await) })
        });
        for call in futures::future::join_all(calls).await {
            let (i, answer) = call.unwrap();
            assert_eq!(answer.unwrap(), i * 2);
        }
        let batches = batches.load(Ordering::Relaxed);
        assert!(
            (2..50).contains(&batches),
            "50 concurrent calls with one batch out at a time went in {batches} batches"
        );
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_calls() {
        let run: RunBatch<u32, u32> = Arc::new(|_items: Vec<u32>, _| {
            Box::pin(async {
                Err(BackendError::Timeout {
                    tier: "redis",
                    budget: Duration::from_millis(5),
                })
            })
        });
        let coalescer = Coalescer::spawn(2, 8, run);
        let (a, b) = tokio::join!(coalescer.call(1), coalescer.call(2));
        assert!(matches!(a, Err(BackendError::Timeout { .. })));
        assert!(matches!(b, Err(BackendError::Timeout { .. })));
    }

    #[tokio::test]
    async fn a_batch_with_the_wrong_number_of_answers_is_an_error_not_a_mixup() {
        let run: RunBatch<u32, u32> =
            Arc::new(|_items: Vec<u32>, _| Box::pin(async { Ok(vec![7]) }));
        let coalescer = Coalescer::spawn(1, 8, run);
        let (a, b) = tokio::join!(coalescer.call(1), coalescer.call(2));
        // Either both calls shared one batch (two items, one answer: both fail), or each went alone.
        match (a, b) {
            (Ok(7), Ok(7)) => {}
            (Err(BackendError::Internal { .. }), Err(BackendError::Internal { .. })) => {}
            other => panic!("unexpected answers {other:?}"),
        }
    }
}
