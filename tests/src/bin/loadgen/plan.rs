//! The plan of a run: everything the workers share (what to send, and the limits that end the run).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cache_proto::pb;
use rand::rngs::SmallRng;

use crate::args::Args;
use crate::keys::KeyChooser;
use crate::mix::Mix;
use crate::sizes::SizeSpec;
use crate::values::ValuePool;

/// Everything the workers share.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) mix: Mix,
    pub(crate) keys: KeyChooser,
    pub(crate) key_count: u64,
    pub(crate) key_prefix: String,
    pub(crate) sizes: SizeSpec,
    pub(crate) values: ValuePool,
    pub(crate) compression: pb::Compression,
    pub(crate) ttl_seconds: u32,
    pub(crate) expect_size: Option<u64>,
    pub(crate) read_after_write: bool,
    /// Keys per call (GetMany / SetMany above 1).
    pub(crate) batch: u64,
    /// Measurement starts here (after the warm-up).
    pub(crate) measure_from: Instant,
    /// Measurement ends here (duration runs).
    pub(crate) deadline: Option<Instant>,
    /// Calls still to measure (request-count runs).
    pub(crate) remaining: Option<AtomicU64>,
    /// Payload still to move (`--max-bytes` runs).
    pub(crate) bytes_budget: Option<u64>,
    pub(crate) bytes_moved: AtomicU64,
    /// Interval between calls of one worker (open loop).
    pub(crate) interval: Option<Duration>,
}

impl Plan {
    /// The plan of a run of `args`, before the measurement starts (see [`Plan::begin`]).
    pub(crate) fn new(
        args: &Args,
        keys: KeyChooser,
        values: ValuePool,
        interval: Option<Duration>,
    ) -> Self {
        Plan {
            mix: args.mix,
            keys,
            key_count: args.keys,
            key_prefix: args.key_prefix.clone(),
            sizes: args.value_size,
            values,
            compression: args.compression.to_proto(),
            ttl_seconds: args.ttl_seconds,
            expect_size: args.expect_size(),
            read_after_write: args.read_after_write,
            batch: args.batch,
            measure_from: Instant::now(),
            deadline: None,
            remaining: None,
            bytes_budget: None,
            bytes_moved: AtomicU64::new(0),
            interval,
        }
    }

    /// Sets the run's limits for a start at `start`: measured from the end of the warm-up, until the duration,
    /// the request count or the payload budget runs out.
    pub(crate) fn begin(&mut self, args: &Args, start: Instant) {
        self.measure_from = start + args.warmup;
        self.deadline = args.duration_limit().map(|d| self.measure_from + d);
        self.remaining = args.requests.map(AtomicU64::new);
        self.bytes_budget = args.max_bytes;
    }

    /// The prefill sends Sets with the run's sizes and values but none of its limits.
    pub(crate) fn for_prefill(&self) -> Plan {
        Plan {
            mix: self.mix,
            keys: self.keys,
            key_count: self.key_count,
            key_prefix: self.key_prefix.clone(),
            sizes: self.sizes,
            values: self.values.clone(),
            compression: self.compression,
            ttl_seconds: self.ttl_seconds,
            expect_size: self.expect_size,
            read_after_write: false,
            batch: 1,
            measure_from: self.measure_from,
            deadline: None,
            remaining: None,
            bytes_budget: None,
            bytes_moved: AtomicU64::new(0),
            interval: None,
        }
    }

    pub(crate) fn cache_key(&self, index: u64) -> pb::CacheKey {
        pb::CacheKey {
            r#type: pb::CacheType::Metadata as i32,
            id: format!("{}-{index}", self.key_prefix),
            ..Default::default()
        }
    }

    pub(crate) fn set_request(&self, index: u64, rng: &mut SmallRng) -> pb::SetRequest {
        let size = self.sizes.sample(rng);
        pb::SetRequest {
            key: Some(self.cache_key(index)),
            value: self.values.value(size, rng),
            ttl_seconds: self.ttl_seconds,
            compression: self.compression as i32,
            ..Default::default()
        }
    }

    /// Claims the right to send one more measured call; false once the run is over.
    pub(crate) fn claim(&self, now: Instant) -> bool {
        if self.deadline.is_some_and(|d| now >= d) {
            return false;
        }
        if let Some(budget) = self.bytes_budget
            && self.bytes_moved.load(Ordering::Relaxed) >= budget
        {
            return false;
        }
        if now < self.measure_from {
            return true;
        }
        match &self.remaining {
            None => true,
            Some(remaining) => remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use rand::SeedableRng as _;

    use super::*;

    fn plan(argv: &[&str]) -> (Args, Plan) {
        let args = Args::try_parse_from(["loadgen"].iter().chain(argv)).unwrap();
        let keys = KeyChooser::new(args.keys, args.zipf).unwrap();
        let values = ValuePool::new(args.value_size.max(), false, 1);
        let plan = Plan::new(&args, keys, values, None);
        (args, plan)
    }

    #[test]
    fn request_count_runs_claim_that_many_measured_calls() {
        let (args, mut plan) = plan(&["--requests", "3", "--warmup", "1s"]);
        let start = Instant::now();
        plan.begin(&args, start);
        // Warm-up calls are not counted.
        assert!((0..10).all(|_| plan.claim(start)));
        let measured = start + Duration::from_secs(1);
        assert_eq!((0..10).filter(|_| plan.claim(measured)).count(), 3);
    }

    #[test]
    fn duration_and_byte_budget_end_the_run() {
        let (args, mut plan) = plan(&["--duration", "2s", "--max-bytes", "1k"]);
        let start = Instant::now();
        plan.begin(&args, start);
        assert!(plan.claim(start + Duration::from_secs(1)));
        assert!(!plan.claim(start + Duration::from_secs(2)));
        plan.bytes_moved.store(1024, Ordering::Relaxed);
        assert!(!plan.claim(start));
    }

    #[test]
    fn set_requests_carry_the_plan() {
        let (_, plan) = plan(&[
            "--value-size",
            "100",
            "--key-prefix",
            "t",
            "--ttl-seconds",
            "7",
        ]);
        let mut rng = SmallRng::seed_from_u64(1);
        let set = plan.set_request(42, &mut rng);
        assert_eq!(set.key.unwrap().id, "t-42");
        assert_eq!(set.value.len(), 100);
        assert_eq!(set.ttl_seconds, 7);
        assert_eq!(plan.expect_size, Some(100));
        let prefill = plan.for_prefill();
        assert!(prefill.deadline.is_none() && !prefill.read_after_write);
    }
}
