//! The Metrics RPC's answer: the server's counters and the backend's state, in `cache.v1` terms.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

use cache_proto::pb;

use super::Inner;
use super::entry::timestamp;
use crate::backend::now_ms;
use crate::config::BackendMode;
use crate::error::code_name;
use crate::metrics::{self, Rpc};

impl Inner {
    pub(super) fn metrics_response(&self) -> pb::MetricsResponse {
        let m = &self.metrics;
        let stats = self.backend.stats();
        let (hits, misses) = m.hits_misses();
        let (get, set) = (&m.rpc(Rpc::Get).latency, &m.rpc(Rpc::Set).latency);
        let handled = get.count() + set.count();
        let logical = m.logical_bytes.load(Relaxed);
        let stored = m.stored_bytes.load(Relaxed);
        let memory_mode = self.config.backend == BackendMode::Memory;
        let total_entries = if memory_mode {
            stats.memory_entries
        } else {
            stats.redis_entries.unwrap_or(stats.memory_entries)
        };
        let total_size_bytes = if memory_mode {
            stats.memory_bytes
        } else {
            logical
        };
        let by_type = crate::keys::CacheType::ALL
            .iter()
            .filter_map(|&t| {
                let c = m.of(t);
                let row = pb::TypeMetrics {
                    r#type: t.to_proto() as i32,
                    hits: c.hits.load(Relaxed),
                    misses: c.misses.load(Relaxed),
                    sets: c.sets.load(Relaxed),
                    invalidations: c.invalidations.load(Relaxed),
                    bytes_set: c.bytes_set.load(Relaxed),
                };
                (row.hits + row.misses + row.sets + row.invalidations > 0).then_some(row)
            })
            .collect();
        let errors_by_code = |count: &dyn Fn(usize) -> u64| -> HashMap<String, u64> {
            (0..crate::metrics::CODES)
                .filter_map(|code| {
                    let n = count(code);
                    (n > 0).then(|| (code_name(tonic::Code::from_i32(code as i32)).to_owned(), n))
                })
                .collect()
        };
        let rpcs = Rpc::ALL
            .iter()
            .filter_map(|&rpc| {
                let c = m.rpc(rpc);
                let count = c.latency.count();
                (count > 0).then(|| pb::RpcMetrics {
                    rpc: rpc.name().to_owned(),
                    count,
                    p50_ms: c.latency.quantile(0.50) * 1000.0,
                    p95_ms: c.latency.quantile(0.95) * 1000.0,
                    p99_ms: c.latency.quantile(0.99) * 1000.0,
                    errors_by_code: errors_by_code(&|code| c.errors[code].load(Relaxed)),
                })
            })
            .collect();
        pb::MetricsResponse {
            metrics: Some(pb::CacheMetrics {
                total_entries,
                total_size_bytes,
                hit_count: hits,
                miss_count: misses,
                hit_rate: if hits + misses == 0 {
                    0.0
                } else {
                    hits as f64 / (hits + misses) as f64
                },
                avg_response_time_ms: if handled == 0 {
                    0.0
                } else {
                    (get.sum() + set.sum()) / handled as f64 * 1000.0
                },
                compression_ratio: if stored == 0 {
                    1.0
                } else {
                    logical as f64 / stored as f64
                },
                memory_usage_mb: metrics::resident_bytes() as f64 / (1024.0 * 1024.0),
                last_updated: Some(timestamp(now_ms())),
                redis_connected: stats.redis_connected,
                memory_cache_size: stats.memory_bytes,
                redis_memory_usage: stats.redis_memory_bytes,
                memory_cache_entries: stats.memory_entries,
                memory_cache_capacity: stats.memory_capacity,
            }),
            mode: self.config.backend.as_str().to_owned(),
            uptime_seconds: m.uptime().as_secs(),
            by_type,
            corrupt_entries: m.corrupt.load(Relaxed),
            fallback_active: stats.fallback_active,
            fallback_served: stats.fallback_served,
            invalidations_replayed: stats.invalidations_replayed,
            compression_saved_bytes: logical.saturating_sub(stored),
            memory_rejected: stats.memory_rejected,
            set_count: m.by_type.iter().map(|c| c.sets.load(Relaxed)).sum(),
            invalidated_count: m.invalidated.load(Relaxed),
            errors_by_code: errors_by_code(&|code| m.errors_with(code)),
            rpcs,
            redis_down_seconds: stats.redis_down_seconds,
            redis_state: match (memory_mode, stats.redis_unusable, stats.redis_connected) {
                (true, ..) => String::new(),
                (false, Some(_), _) => "unusable".to_owned(),
                (false, None, true) => "up".to_owned(),
                (false, None, false) => "outage".to_owned(),
            },
            redis_unusable_reason: stats.redis_unusable.unwrap_or_default().to_owned(),
            redis_invalidated_reads: stats.redis_invalidated_reads,
            redis_repaired_keys: stats.redis_repaired_keys,
            redis_foreign_members: stats.redis_foreign_members,
            redis_history_flushes: stats.redis_history_flushes,
            redis_late_sets: stats.redis_late_sets,
        }
    }
}
