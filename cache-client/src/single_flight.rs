//! Per-process single-flight: concurrent `get_or_compute` calls for one key share one leader's work.
//!
//! The leader publishes its outcome (value or error) through a `watch` channel and removes the flight when it
//! is dropped, whether it finished or was cancelled. Followers that see the channel close without an outcome
//! (the leader was cancelled) join again: one of them becomes the new leader. Nothing outlives the flight, so
//! errors are never cached.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

/// A leader's outcome, type-erased: the [`FlightKey`] includes the concrete type, so a follower's downcast
/// always matches.
pub(crate) type Outcome = std::sync::Arc<dyn Any + Send + Sync>;

/// What identifies one flight: the encoded `CacheKey` (deterministic: `Struct` fields are sorted), the model
/// hash the caller asked for, and the Rust type of the outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct FlightKey {
    pub(crate) key: Vec<u8>,
    pub(crate) model_hash: String,
    pub(crate) output: TypeId,
}

#[derive(Debug)]
struct Flight {
    id: u64,
    outcome_rx: watch::Receiver<Option<Outcome>>,
}

/// The flights in progress of one client (shared by its clones).
#[derive(Debug, Default)]
pub(crate) struct SingleFlight {
    flights: Mutex<HashMap<FlightKey, Flight>>,
    next_id: AtomicU64,
}

/// The caller's part in a flight.
pub(crate) enum Role<'a> {
    /// Do the work, then [`Leader::publish`].
    Leader(Leader<'a>),
    /// Wait for the leader's outcome; `None` from [`follow`] means the leader went away without one.
    Follower(watch::Receiver<Option<Outcome>>),
}

impl SingleFlight {
    fn lock(&self) -> MutexGuard<'_, HashMap<FlightKey, Flight>> {
        // The map is consistent after every statement; a panic elsewhere cannot leave it half-updated.
        self.flights.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins the flight for `key`, starting it if none is in progress.
    pub(crate) fn join(&self, key: &FlightKey) -> Role<'_> {
        let mut flights = self.lock();
        if let Some(flight) = flights.get(key) {
            return Role::Follower(flight.outcome_rx.clone());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (outcome_tx, outcome_rx) = watch::channel(None);
        flights.insert(key.clone(), Flight { id, outcome_rx });
        Role::Leader(Leader {
            group: self,
            key: key.clone(),
            id,
            outcome_tx,
        })
    }

    /// How many flights are in progress.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Waits for the leader's outcome. `None`: the leader was dropped before publishing one.
pub(crate) async fn follow(mut outcome_rx: watch::Receiver<Option<Outcome>>) -> Option<Outcome> {
    let outcome = outcome_rx.wait_for(Option::is_some).await.ok()?;
    outcome.clone()
}

/// The caller doing the work of a flight. Dropping it ends the flight: later callers start a new one.
pub(crate) struct Leader<'a> {
    group: &'a SingleFlight,
    key: FlightKey,
    id: u64,
    outcome_tx: watch::Sender<Option<Outcome>>,
}

impl Leader<'_> {
    /// Hands the outcome to every follower, current and joining until this leader is dropped.
    pub(crate) fn publish(&self, outcome: Outcome) {
        self.outcome_tx.send_replace(Some(outcome));
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut flights = self.group.lock();
        if flights.get(&self.key).is_some_and(|f| f.id == self.id) {
            flights.remove(&self.key);
        }
        // `outcome_tx` drops after this: followers still waiting without an outcome see the channel close.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(name: &str) -> FlightKey {
        FlightKey {
            key: name.as_bytes().to_vec(),
            model_hash: String::new(),
            output: TypeId::of::<u32>(),
        }
    }

    #[tokio::test]
    async fn followers_receive_the_leaders_outcome_and_the_flight_ends_with_the_leader() {
        let group = SingleFlight::default();
        let Role::Leader(leader) = group.join(&key("a")) else {
            panic!("first caller leads")
        };
        let Role::Follower(rx) = group.join(&key("a")) else {
            panic!("second caller follows")
        };
        assert!(
            matches!(group.join(&key("b")), Role::Leader(_)),
            "other keys fly alone"
        );
        leader.publish(Arc::new(7u32));
        let outcome = follow(rx).await.expect("an outcome");
        assert_eq!(outcome.downcast_ref::<u32>(), Some(&7));
        drop(leader);
        assert_eq!(group.len(), 0);
        assert!(matches!(group.join(&key("a")), Role::Leader(_)));
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_its_followers_without_an_outcome() {
        let group = SingleFlight::default();
        let Role::Leader(leader) = group.join(&key("a")) else {
            panic!("first caller leads")
        };
        let Role::Follower(rx) = group.join(&key("a")) else {
            panic!("second caller follows")
        };
        drop(leader);
        assert!(follow(rx).await.is_none());
        assert!(matches!(group.join(&key("a")), Role::Leader(_)));
    }
}
