//! Coalesces concurrent calls into one Redis command (group commit).
//!
//! fred spends about as much CPU on each command (a `Command`, a trip through its router task, a response
//! channel) as the rest of a Get does. Under load, calls queue here while up to `max_in_flight` batches are
//! out, and each batch goes to Redis as one command (Gets: one `MGET`; Sets: one call of the Set script):
//! the per-command cost is paid once per batch, and Redis parses one command instead of many. An idle
//! server sends each call at once, in a batch of one, so coalescing adds no wait where there is nothing to
//! coalesce with. Calls in one batch are concurrent calls, so any order among them is a valid one.
//!
//! No task of its own (leader and followers): a call that finds a lane free sends its batch from its own
//! task; a call that finds every lane busy queues. When a batch is answered, the lane passes to the first
//! queued call, which sends everything queued behind it as the next batch. Each batch thus costs no
//! task wake-up or spawn beyond its callers' own, where a batching task cost a wake-up of that task and a
//! spawn per batch. A caller that goes away (a cancelled RPC) does not take its batch with it: a batch
//! being sent finishes on a task of its own, and a queued call is still sent with the others.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::backend::BackendError;

/// Runs one batch: one output per item, in order, or one error for the whole batch. Also given when the
/// batch's oldest call was made, so that time spent queued counts against the calls' budget.
pub type RunBatch<T, R> =
    Arc<dyn Fn(Vec<T>, Instant) -> BoxFuture<'static, Result<Vec<R>, BackendError>> + Send + Sync>;

/// What a queued call hears back.
enum Signal<T, R> {
    /// Its answer.
    Done(Result<R, BackendError>),
    /// A lane is its: send this batch, whose first member is the call itself.
    Lead(Batch<T, R>),
}

type Reply<T, R> = oneshot::Sender<Signal<T, R>>;

/// A call waiting in the queue.
struct Job<T, R> {
    item: T,
    queued: Instant,
    reply: Reply<T, R>,
}

/// One call of a batch; `reply` is `None` for a call whose caller went away.
struct Member<T, R> {
    item: T,
    reply: Option<Reply<T, R>>,
}

/// Calls sent together.
struct Batch<T, R> {
    oldest: Instant,
    members: Vec<Member<T, R>>,
}

struct State<T, R> {
    queue: VecDeque<Job<T, R>>,
    /// Lanes with no batch out. Never above zero while calls are queued.
    free_lanes: usize,
}

struct Shared<T, R> {
    state: Mutex<State<T, R>>,
    max_batch: usize,
    run: RunBatch<T, R>,
}

/// Sends concurrent calls in batches, at most `max_in_flight` batches out at once.
pub struct Coalescer<T, R> {
    shared: Arc<Shared<T, R>>,
}

impl<T: Send + 'static, R: Send + 'static> Coalescer<T, R> {
    /// A coalescer with at most `max_in_flight` batches out at once, each of at most `max_batch` calls.
    pub fn new(max_in_flight: usize, max_batch: usize, run: RunBatch<T, R>) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    free_lanes: max_in_flight.max(1),
                }),
                max_batch: max_batch.max(1),
                run,
            }),
        }
    }

    /// Sends `item` with the calls it can share a batch with, and waits for its answer.
    pub async fn call(&self, item: T) -> Result<R, BackendError> {
        let queued = Instant::now();
        // Decided under the lock, waited for outside it.
        let waiting = {
            let mut state = self.shared.state.lock();
            if state.free_lanes == 0 {
                let (reply, answer) = oneshot::channel();
                state.queue.push_back(Job {
                    item,
                    queued,
                    reply,
                });
                Err(answer)
            } else {
                state.free_lanes -= 1;
                Ok(item)
            }
        };
        match waiting {
            Ok(item) => {
                let batch = Batch {
                    oldest: queued,
                    members: vec![Member { item, reply: None }],
                };
                self.lead(batch).await
            }
            Err(answer) => match answer.await {
                Ok(Signal::Done(result)) => result,
                Ok(Signal::Lead(batch)) => self.lead(batch).await,
                Err(_) => Err(stopped()),
            },
        }
    }

    /// Sends `batch`, whose first member is the caller's own call, and answers that call.
    async fn lead(&self, mut batch: Batch<T, R>) -> Result<R, BackendError> {
        let (reply, answer) = oneshot::channel();
        batch.members[0].reply = Some(reply);
        Detach(Some(Box::pin(send(Arc::clone(&self.shared), batch)))).await;
        match answer.await {
            Ok(Signal::Done(result)) => result,
            _ => Err(stopped()),
        }
    }
}

fn stopped() -> BackendError {
    BackendError::Unavailable {
        tier: "redis",
        reason: "a batch stopped without an answer".into(),
    }
}

/// Sends one batch, passes its lane on, and answers its calls.
async fn send<T: Send + 'static, R: Send + 'static>(shared: Arc<Shared<T, R>>, batch: Batch<T, R>) {
    let (items, replies): (Vec<T>, Vec<_>) = batch
        .members
        .into_iter()
        .map(|member| (member.item, member.reply))
        .unzip();
    let lane = Lane(shared);
    let outcome = (lane.0.run)(items, batch.oldest).await;
    drop(lane);
    let error = match outcome {
        Ok(outputs) if outputs.len() == replies.len() => {
            for (reply, output) in replies.into_iter().zip(outputs) {
                if let Some(reply) = reply {
                    let _ = reply.send(Signal::Done(Ok(output)));
                }
            }
            return;
        }
        Ok(outputs) => BackendError::Internal {
            tier: "redis",
            reason: format!(
                "a batch of {} calls got {} answers",
                replies.len(),
                outputs.len()
            ),
        },
        Err(error) => error,
    };
    for reply in replies.into_iter().flatten() {
        let _ = reply.send(Signal::Done(Err(error.clone())));
    }
}

/// A lane taken by a batch being sent: passed on when dropped, so that even a batch that panics frees it.
struct Lane<T: Send + 'static, R: Send + 'static>(Arc<Shared<T, R>>);

impl<T: Send + 'static, R: Send + 'static> Drop for Lane<T, R> {
    fn drop(&mut self) {
        pass_lane(&self.0);
    }
}

/// Hands a lane whose batch was answered to the first queued call that is still waiting, with the calls
/// queued behind it; frees the lane if nothing is queued. If every queued caller has gone away, their calls
/// are sent from a task of their own.
fn pass_lane<T: Send + 'static, R: Send + 'static>(shared: &Arc<Shared<T, R>>) {
    let mut batch = {
        let mut state = shared.state.lock();
        if state.queue.is_empty() {
            state.free_lanes += 1;
            return;
        }
        let take = state.queue.len().min(shared.max_batch);
        // The queue is in arrival order: its first call is the batch's oldest.
        let oldest = state.queue[0].queued;
        let members = state
            .queue
            .drain(..take)
            .map(|job| Member {
                item: job.item,
                reply: Some(job.reply),
            })
            .collect();
        Batch { oldest, members }
    };
    for i in 0..batch.members.len() {
        batch.members.swap(0, i);
        let Some(reply) = batch.members[0].reply.take() else {
            continue;
        };
        match reply.send(Signal::Lead(batch)) {
            Ok(()) => return,
            // That caller went away: its call stays in the batch, unanswered.
            Err(Signal::Lead(returned)) => batch = returned,
            Err(Signal::Done(_)) => unreachable!("a lead sent comes back as a lead"),
        }
    }
    spawn_detached(Box::pin(send(Arc::clone(shared), batch)));
}

/// Polls a batch's sending in place, and moves it to a task of its own if the caller goes away first: the
/// lane and the other callers wait for it.
struct Detach(Option<BoxFuture<'static, ()>>);

impl Future for Detach {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(sending) = self.0.as_mut() {
            ready!(sending.as_mut().poll(cx));
            self.0 = None;
        }
        Poll::Ready(())
    }
}

impl Drop for Detach {
    fn drop(&mut self) {
        if let Some(sending) = self.0.take() {
            spawn_detached(sending);
        }
    }
}

/// Runs `sending` on the current runtime; dropped if there is none (the process is shutting down).
fn spawn_detached(sending: BoxFuture<'static, ()>) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        drop(runtime.spawn(sending));
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
        let coalescer = Arc::new(Coalescer::new(1, 64, run));
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
        let coalescer = Coalescer::new(2, 8, run);
        let (a, b) = tokio::join!(coalescer.call(1), coalescer.call(2));
        assert!(matches!(a, Err(BackendError::Timeout { .. })));
        assert!(matches!(b, Err(BackendError::Timeout { .. })));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_goes_away_leaves_its_batch_and_lane_working() {
        let sent = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&sent);
        let run: RunBatch<u32, u32> = Arc::new(move |items: Vec<u32>, _| {
            let counted = Arc::clone(&counted);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                counted.fetch_add(items.len(), Ordering::Relaxed);
                Ok(items.into_iter().map(|i| i + 1).collect())
            })
        });
        let coalescer = Arc::new(Coalescer::new(1, 8, run));
        // The leader gives up while its batch is out; two calls queued behind it, one of which also gives up.
        let leader = {
            let coalescer = Arc::clone(&coalescer);
            tokio::spawn(async move { coalescer.call(1).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let quitter = {
            let coalescer = Arc::clone(&coalescer);
            tokio::spawn(async move { coalescer.call(2).await })
        };
        let stayer = {
            let coalescer = Arc::clone(&coalescer);
            tokio::spawn(async move { coalescer.call(3).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        leader.abort();
        quitter.abort();
        assert_eq!(stayer.await.unwrap().unwrap(), 4);
        // Every call was sent, the abandoned ones included, and the lane is free again.
        assert_eq!(sent.load(Ordering::Relaxed), 3);
        let again = tokio::time::timeout(Duration::from_secs(5), coalescer.call(9)).await;
        assert_eq!(again.expect("the lane was freed").unwrap(), 10);
    }

    #[tokio::test]
    async fn a_batch_with_the_wrong_number_of_answers_is_an_error_not_a_mixup() {
        let run: RunBatch<u32, u32> =
            Arc::new(|_items: Vec<u32>, _| Box::pin(async { Ok(vec![7]) }));
        let coalescer = Coalescer::new(1, 8, run);
        let (a, b) = tokio::join!(coalescer.call(1), coalescer.call(2));
        // Either both calls shared one batch (two items, one answer: both fail), or each went alone.
        match (a, b) {
            (Ok(7), Ok(7)) => {}
            (Err(BackendError::Internal { .. }), Err(BackendError::Internal { .. })) => {}
            other => panic!("unexpected answers {other:?}"),
        }
    }
}
