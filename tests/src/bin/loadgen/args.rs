//! The command line: every flag, what the flags make of a run (its limits, the open-loop interval, the expected
//! value size), and the parsing of durations.

use std::time::Duration;

use anyhow::bail;
use cache_proto::pb;
use clap::Parser;

use crate::conn::MAX_MESSAGE_BYTES;
use crate::mix::{Mix, Op};
use crate::sizes::{SizeSpec, parse_size};

/// End-to-end load generator for cache.v1.CacheService.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about, long_about = None)]
pub(crate) struct Args {
    /// Server address: host:port or http://host:port.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub(crate) addr: String,
    /// HTTP/2 connections (one tonic Channel each).
    #[arg(long, default_value_t = 8)]
    pub(crate) connections: usize,
    /// Calls in flight per connection.
    #[arg(long, default_value_t = 4)]
    pub(crate) concurrency: usize,
    /// How long to measure, e.g. 10s, 500ms, 2m (default 10s unless --requests or --max-bytes is given).
    #[arg(long, value_parser = parse_duration)]
    pub(crate) duration: Option<Duration>,
    /// How many calls to measure (instead of --duration).
    #[arg(long, conflicts_with = "duration")]
    pub(crate) requests: Option<u64>,
    /// Stop once this much logical payload has been moved, e.g. 512m (with or instead of --duration).
    #[arg(long, value_parser = parse_size)]
    pub(crate) max_bytes: Option<u64>,
    /// Load applied and discarded before measuring, e.g. 1s.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub(crate) warmup: Duration,
    /// Value size of Sets: fixed (`1024`, `1k`, `1m`) or a range `LO..HI[:lognormal|:uniform]` (lognormal
    /// by default: median at the geometric mean, LO and HI three standard deviations out, clamped).
    #[arg(long, default_value = "1k")]
    pub(crate) value_size: SizeSpec,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) keys: u64,
    /// Zipf skew exponent of key popularity (e.g. 0.99); uniform when absent.
    #[arg(long)]
    pub(crate) zipf: Option<f64>,
    /// Operation mix as weights, e.g. get=80,set=15,invalidate=5.
    #[arg(long, default_value = "get=80,set=20")]
    pub(crate) mix: Mix,
    /// Open-loop target rate in calls/s over all connections (closed loop when absent).
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Set every key once before measuring, so that Gets hit.
    #[arg(long)]
    pub(crate) prefill: bool,
    /// JSON-like values (compress ~5x) instead of random bytes (incompressible).
    #[arg(long)]
    pub(crate) compressible: bool,
    /// Compression requested on Set: auto, none, gzip or zstd.
    #[arg(long, value_enum, default_value = "auto")]
    pub(crate) compression: CompressionArg,
    /// TTL of Sets in seconds (0 = the type's default).
    #[arg(long, default_value_t = 0)]
    pub(crate) ttl_seconds: u32,
    /// Prefix of key ids: key i is `<prefix>-<i>` (cache type METADATA).
    #[arg(long, default_value = "lg")]
    pub(crate) key_prefix: String,
    /// After every successful Set, Get the key back (not measured) and count it as dropped if it is missing
    /// or has another size. Meaningful with one call in flight per key.
    #[arg(long)]
    pub(crate) read_after_write: bool,
    /// Count a Get hit whose value is not exactly this many bytes as a wrong-size answer (a fixed
    /// --value-size implies it).
    #[arg(long, value_parser = parse_size)]
    pub(crate) expect_size: Option<u64>,
    /// Fetch the server's Metrics after the run and include them in the report.
    #[arg(long)]
    pub(crate) server_metrics: bool,
    /// Only wait until grpc.health.v1 reports cache.v1.CacheService SERVING (polling every 2 ms, up to this
    /// long), print when that happened, and exit; non-zero if it did not happen in time.
    #[arg(long, value_parser = parse_duration)]
    pub(crate) wait_serving: Option<Duration>,
    /// Per-call deadline.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub(crate) timeout: Duration,
    /// Worker threads of the client runtime (default: one per core).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Keys per call: above 1, a Get is a GetMany and a Set a SetMany of this many consecutive keys (one call
    /// in the report; keys/s = calls/s x batch).
    #[arg(long, default_value_t = 1)]
    pub(crate) batch: u64,
    /// Random seed (keys, sizes, operations).
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    pub(crate) json: bool,
}

impl Args {
    /// Refuses flags that cannot make a run.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        if self.connections == 0 || self.concurrency == 0 {
            bail!("--connections and --concurrency must be at least 1");
        }
        if self.keys == 0 {
            bail!("--keys must be at least 1");
        }
        if !(1..=1000).contains(&self.batch) {
            bail!("--batch must be between 1 and 1000 (the server's batch limit)");
        }
        if self.mix.weights[Op::Set.index()] > 0 || self.prefill {
            let max = self.value_size.max();
            if max > (MAX_MESSAGE_BYTES as u64) - (1 << 20) {
                bail!(
                    "--value-size above {} bytes is not supported",
                    MAX_MESSAGE_BYTES - (1 << 20)
                );
            }
        }
        Ok(())
    }

    /// How long to measure: `--duration`, or 10 s when no other limit (`--requests`, `--max-bytes`) is given.
    pub(crate) fn duration_limit(&self) -> Option<Duration> {
        match (self.duration, self.requests, self.max_bytes) {
            (Some(d), _, _) => Some(d),
            (None, None, None) => Some(Duration::from_secs(10)),
            _ => None,
        }
    }

    /// Open loop: the interval between two calls of one worker, so that all of them together send `--rate`
    /// calls/s. `None`: closed loop.
    pub(crate) fn interval(&self) -> anyhow::Result<Option<Duration>> {
        let workers = self.connections * self.concurrency;
        match self.rate {
            Some(rate) if rate > 0.0 => Ok(Some(Duration::from_secs_f64(workers as f64 / rate))),
            Some(_) => bail!("--rate must be positive"),
            None => Ok(None),
        }
    }

    /// The size every Get hit must have: `--expect-size`, or a fixed `--value-size`.
    pub(crate) fn expect_size(&self) -> Option<u64> {
        self.expect_size.or(match self.value_size {
            SizeSpec::Fixed(n) => Some(n),
            _ => None,
        })
    }
}

/// The `compression` field of Sets.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum CompressionArg {
    Auto,
    None,
    Gzip,
    Zstd,
}

impl CompressionArg {
    pub(crate) fn to_proto(self) -> pb::Compression {
        match self {
            Self::Auto => pb::Compression::Auto,
            Self::None => pb::Compression::None,
            Self::Gzip => pb::Compression::Gzip,
            Self::Zstd => pb::Compression::Zstd,
        }
    }
}

/// A duration flag: whatever `humantime` reads (`10s`, `500ms`, `2m`, `1h`, `1.5s`, `1m 30s`), or a bare number
/// of seconds (`2`, `0.5`), which `humantime` refuses for anything but `0`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return s
            .parse::<f64>()
            .ok()
            .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
            .ok_or_else(|| format!("`{s}` is not a duration (e.g. 10s, 500ms, 2m)"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration (e.g. 10s, 500ms, 2m): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn bare_numbers_are_seconds() {
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration(" 3 "), Ok(Duration::from_secs(3)));
        assert!(parse_duration("1.2.3").is_err());
        assert!(parse_duration(".").is_err());
    }

    #[test]
    fn flags_parse_with_their_defaults() {
        let args = Args::try_parse_from(["loadgen", "--zipf", "0.99", "--duration", "3"]).unwrap();
        assert_eq!(args.duration, Some(Duration::from_secs(3)));
        assert_eq!(args.warmup, Duration::ZERO);
        assert_eq!(args.timeout, Duration::from_secs(10));
        assert_eq!(args.zipf, Some(0.99));
        assert_eq!(args.value_size, SizeSpec::Fixed(1024));
        assert!(Args::try_parse_from(["loadgen", "--duration", "1s", "--requests", "5"]).is_err());
    }

    fn args(argv: &[&str]) -> Args {
        Args::try_parse_from(["loadgen"].iter().chain(argv)).unwrap()
    }

    #[test]
    fn ten_seconds_unless_another_limit_is_given() {
        assert_eq!(args(&[]).duration_limit(), Some(Duration::from_secs(10)));
        assert_eq!(
            args(&["--duration", "3s"]).duration_limit(),
            Some(Duration::from_secs(3))
        );
        assert_eq!(args(&["--requests", "5"]).duration_limit(), None);
        assert_eq!(args(&["--max-bytes", "1m"]).duration_limit(), None);
        assert_eq!(
            args(&["--max-bytes", "1m", "--duration", "2s"]).duration_limit(),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn rate_spreads_over_every_worker() {
        let a = args(&["--connections", "2", "--concurrency", "5", "--rate", "100"]);
        assert_eq!(a.interval().unwrap(), Some(Duration::from_millis(100)));
        assert_eq!(args(&[]).interval().unwrap(), None);
        assert!(args(&["--rate", "0"]).interval().is_err());
    }

    #[test]
    fn impossible_runs_are_refused() {
        assert!(args(&[]).check().is_ok());
        assert!(args(&["--connections", "0"]).check().is_err());
        assert!(args(&["--keys", "0"]).check().is_err());
        assert!(args(&["--value-size", "200m"]).check().is_err());
        // Values are only sent by Sets and the prefill.
        assert!(
            args(&["--value-size", "200m", "--mix", "get=1"])
                .check()
                .is_ok()
        );
    }

    #[test]
    fn a_fixed_value_size_is_the_expected_size() {
        assert_eq!(args(&["--value-size", "2k"]).expect_size(), Some(2048));
        assert_eq!(args(&["--value-size", "1k..2k"]).expect_size(), None);
        assert_eq!(
            args(&["--value-size", "1k..2k", "--expect-size", "5"]).expect_size(),
            Some(5)
        );
    }
}
