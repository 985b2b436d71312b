//! The work: the workers and their calls, and the prefill.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cache_proto::pb;
use cache_proto::pb::cache_service_client::CacheServiceClient;
use rand::SeedableRng as _;
use rand::rngs::SmallRng;
use tonic::transport::Channel;

use crate::mix::Op;
use crate::plan::Plan;
use cache_server::code_name;

use crate::stats::Stats;

/// Runs `per_connection` workers on each client until the plan's limits end the run; what they measured.
pub(crate) async fn measure(
    clients: &[CacheServiceClient<Channel>],
    plan: &Arc<Plan>,
    per_connection: usize,
    seed: u64,
    start: Instant,
) -> anyhow::Result<Stats> {
    let workers = clients.len() * per_connection;
    let mut tasks = Vec::with_capacity(workers);
    for (c, client) in clients.iter().enumerate() {
        for slot in 0..per_connection {
            let w = c * per_connection + slot;
            let seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (w as u64 + 1);
            // Open loop: spread the workers' first slots over one interval.
            let first_slot = start
                + plan
                    .interval
                    .map_or(Duration::ZERO, |i| i * w as u32 / workers as u32);
            tasks.push(tokio::spawn(worker(
                client.clone(),
                plan.clone(),
                seed,
                first_slot,
            )));
        }
    }
    let mut stats = Stats::new();
    for task in tasks {
        stats.merge(&task.await.context("a worker panicked")?);
    }
    Ok(stats)
}

/// One worker: calls one after another (closed loop) or on its schedule (open loop) until the run is over.
async fn worker(
    mut client: CacheServiceClient<Channel>,
    plan: Arc<Plan>,
    seed: u64,
    first_slot: Instant,
) -> Stats {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut stats = Stats::new();
    let mut next_slot = first_slot;
    loop {
        let intended = match plan.interval {
            Some(interval) => {
                tokio::time::sleep_until(next_slot.into()).await;
                let slot = next_slot;
                next_slot += interval;
                slot
            }
            None => Instant::now(),
        };
        if !plan.claim(Instant::now()) {
            break;
        }
        let op = plan.mix.pick(&mut rng);
        let index = plan.keys.pick(&mut rng);
        let outcome = call(&mut client, &plan, op, index, &mut rng).await;
        let done = Instant::now();
        let moved = match &outcome {
            Ok(o) => o.payload_bytes,
            Err(_) => 0,
        };
        plan.bytes_moved.fetch_add(moved, Ordering::Relaxed);
        if intended < plan.measure_from {
            continue;
        }
        let micros = done.duration_since(intended).as_micros() as u64;
        stats.latency[op.index()].saturating_record(micros.max(1));
        match outcome {
            Ok(o) => {
                stats.payload_bytes += o.payload_bytes;
                match o.found {
                    Some(true) => stats.hits += 1,
                    Some(false) => stats.misses += 1,
                    None => {}
                }
                stats.wrong_size += u64::from(o.wrong_size);
                stats.dropped += u64::from(o.dropped);
                stats.not_stored += u64::from(o.not_stored);
            }
            Err(status) => *stats.errors.entry(code_name(status.code())).or_default() += 1,
        }
    }
    stats
}

/// What one successful call found.
#[derive(Debug, Default)]
struct Outcome {
    payload_bytes: u64,
    /// Get: hit or miss.
    found: Option<bool>,
    wrong_size: bool,
    dropped: bool,
    not_stored: bool,
}

async fn call(
    client: &mut CacheServiceClient<Channel>,
    plan: &Plan,
    op: Op,
    index: u64,
    rng: &mut SmallRng,
) -> Result<Outcome, tonic::Status> {
    match op {
        Op::Get if plan.batch > 1 => {
            let requests = (0..plan.batch)
                .map(|i| pb::GetRequest {
                    key: Some(plan.cache_key((index + i) % plan.key_count)),
                    ..Default::default()
                })
                .collect();
            let response = client
                .get_many(pb::GetManyRequest { requests })
                .await?
                .into_inner();
            let found = response.responses.iter().all(|r| r.found);
            let wrong_size = response
                .responses
                .iter()
                .any(|r| r.found && plan.expect_size.is_some_and(|n| n != r.value.len() as u64));
            Ok(Outcome {
                payload_bytes: response
                    .responses
                    .iter()
                    .map(|r| r.value.len() as u64)
                    .sum(),
                found: Some(found),
                wrong_size,
                ..Outcome::default()
            })
        }
        Op::Set if plan.batch > 1 => {
            let requests: Vec<pb::SetRequest> = (0..plan.batch)
                .map(|i| plan.set_request((index + i) % plan.key_count, rng))
                .collect();
            let len = requests.iter().map(|r| r.value.len() as u64).sum();
            let response = client
                .set_many(pb::SetManyRequest { requests })
                .await?
                .into_inner();
            Ok(Outcome {
                payload_bytes: len,
                not_stored: response.responses.iter().any(|r| !r.stored),
                ..Outcome::default()
            })
        }
        Op::Get => {
            let request = pb::GetRequest {
                key: Some(plan.cache_key(index)),
                ..Default::default()
            };
            let response = client.get(request).await?.into_inner();
            let len = response.value.len() as u64;
            Ok(Outcome {
                payload_bytes: len,
                found: Some(response.found),
                wrong_size: response.found && plan.expect_size.is_some_and(|n| n != len),
                ..Outcome::default()
            })
        }
        Op::Set => {
            let request = plan.set_request(index, rng);
            let len = request.value.len() as u64;
            let response = client.set(request).await?.into_inner();
            let mut outcome = Outcome {
                payload_bytes: len,
                not_stored: !response.stored,
                ..Outcome::default()
            };
            if plan.read_after_write && response.stored {
                let back = client
                    .get(pb::GetRequest {
                        key: Some(plan.cache_key(index)),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                outcome.dropped = !back.found || back.value.len() as u64 != len;
            }
            Ok(outcome)
        }
        Op::Invalidate => {
            let request = pb::InvalidateRequest {
                target: Some(pb::invalidate_request::Target::Key(plan.cache_key(index))),
            };
            client.invalidate(request).await?;
            Ok(Outcome::default())
        }
    }
}

/// Sets every key once (not measured). Returns (keys stored, errors by code).
pub(crate) async fn prefill(
    clients: &[CacheServiceClient<Channel>],
    plan: Arc<Plan>,
    per_connection: usize,
    seed: u64,
) -> (u64, BTreeMap<&'static str, u64>) {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        for slot in 0..per_connection {
            let (mut client, plan, next) = (client.clone(), plan.clone(), next.clone());
            let seed = seed ^ ((c * per_connection + slot) as u64).wrapping_mul(0x9E37_79B9);
            tasks.push(tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(seed);
                let (mut stored, mut errors) = (0u64, BTreeMap::<&'static str, u64>::new());
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= plan.key_count {
                        break;
                    }
                    match client.set(plan.set_request(index, &mut rng)).await {
                        Ok(_) => stored += 1,
                        Err(s) => *errors.entry(code_name(s.code())).or_default() += 1,
                    }
                }
                (stored, errors)
            }));
        }
    }
    let mut total = (0u64, BTreeMap::new());
    for task in tasks {
        if let Ok((stored, errors)) = task.await {
            total.0 += stored;
            for (code, n) in errors {
                *total.1.entry(code).or_default() += n;
            }
        }
    }
    total
}
