//! Criterion benchmarks of the in-process memory tier (`backend::Memory`, a byte-weighted quick_cache): Get of
//! a live entry, Get of an absent key, and Set (replacing an entry) across value sizes, with 10,000 entries
//! resident so that lookups walk a realistically populated table. The values are envelopes as the service
//! stores them; the figures exclude key rendering and the envelope codec (see the `codec` bench).
//!
//! Run with: `cargo bench -p cache-server --bench memory`
//! (smoke test, every benchmark once: `cargo bench -p cache-server --bench memory -- --test`).

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use cache_proto::pb;
use cache_server::envelope::{self, Codec, Header};
use cache_server::{Backend, Key, Keyspace, Memory, MemoryOptions};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::executor::block_on;

const VALUE_SIZES: [usize; 4] = [128, 1_024, 8_192, 65_536];
/// Entries resident during the measurements.
const RESIDENT_KEYS: usize = 10_000;
const TTL: Duration = Duration::from_secs(3600);

fn key(keyspace: &Keyspace, i: usize) -> Key {
    let proto = pb::CacheKey {
        r#type: pb::CacheType::Metadata as i32,
        id: format!("object-{i}"),
        ..Default::default()
    };
    keyspace.key(Some(&proto), "key").expect("valid key")
}

fn envelope(size: usize) -> Bytes {
    let header = Header {
        size_bytes: size as u64,
        expires_at_ms: u64::MAX / 2,
        ..Header::default()
    };
    envelope::encode(&header, Codec::None, &vec![0x5a; size])
}

/// A memory tier holding `RESIDENT_KEYS` entries of `size` bytes, sized like the server's default (1 GiB,
/// 64 MiB values), so that nothing is evicted during the benchmark.
fn filled(keys: &[Key], size: usize) -> Memory {
    let memory = Memory::new(MemoryOptions {
        capacity_bytes: 1 << 30,
        max_item_bytes: 65 << 20,
    });
    let value = envelope(size);
    for k in keys {
        let stored = block_on(memory.set(k, value.clone(), TTL, false)).expect("set");
        assert!(stored.stored);
    }
    memory
}

fn bench_memory(c: &mut Criterion) {
    let keyspace = Keyspace::new("cache", "default");
    let keys: Vec<Key> = (0..RESIDENT_KEYS).map(|i| key(&keyspace, i)).collect();
    let absent = key(&keyspace, RESIDENT_KEYS + 1);

    let mut group = c.benchmark_group("memory");
    group.sample_size(50);
    group.measurement_time(Duration::from_secs(2));
    for size in VALUE_SIZES {
        let memory = filled(&keys, size);
        let value = envelope(size);
        group.throughput(Throughput::Bytes(size as u64));
        // The Memory futures never wait, so `block_on` measures the tier, not an executor.
        group.bench_function(BenchmarkId::new("get_hit", size), |b| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 7919) % RESIDENT_KEYS;
                let hit = block_on(memory.get(black_box(&keys[i]))).unwrap();
                black_box(hit.expect("resident"))
            })
        });
        group.bench_function(BenchmarkId::new("get_miss", size), |b| {
            b.iter(|| block_on(memory.get(black_box(&absent))).unwrap())
        });
        group.bench_function(BenchmarkId::new("set_replace", size), |b| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 7919) % RESIDENT_KEYS;
                block_on(memory.set(black_box(&keys[i]), value.clone(), TTL, false)).unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("set_only_if_absent_live", size), |b| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 7919) % RESIDENT_KEYS;
                block_on(memory.set(black_box(&keys[i]), value.clone(), TTL, true)).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_memory);
criterion_main!(benches);
