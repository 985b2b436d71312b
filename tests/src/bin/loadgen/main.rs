//! `loadgen`: an end-to-end load generator for `cache.v1.CacheService`, modelled on fred's `bin/benchmark`.
//!
//! It opens `--connections` HTTP/2 connections (one tonic `Channel` each: a channel is one connection, and
//! one connection caps throughput, see docs/benchmarks.md) and keeps `--concurrency` calls in flight on each. Every
//! call picks an operation from `--mix`, a key from a key space of `--keys` keys (uniform, or zipf with
//! `--zipf S`), and for Set a value whose size is fixed or drawn from a distribution (`--value-size 1k..8m`).
//! Values are slices of one pre-generated buffer (random bytes, or JSON-like text with `--compressible`), so
//! generating them costs nothing per call.
//!
//! Closed loop by default (a worker sends its next call when the previous one answers); with `--rate` the
//! load is open loop: every worker has a fixed schedule and latency is measured from the *intended* start, so
//! a stalled server shows up in the percentiles instead of silently lowering the offered load (coordinated
//! omission).
//!
//! It reports throughput (calls/s, and MB/s of logical payload: value bytes sent by Set plus value bytes
//! received by Get hits, 1 MB = 10^6 bytes), latency percentiles from an HDR histogram (p50/p90/p99/p999),
//! errors by gRPC code, and the Get hit ratio; `--json` prints one JSON object instead.
//!
//! ```text
//! cargo run --release -p cache-tests --bin loadgen -- --addr 127.0.0.1:50051 \
//!     --connections 50 --concurrency 1 --duration 10s --value-size 1k --keys 1000 --prefill --mix get=100
//! ```
//!
//! Tuning caveats: the generator needs CPU too. On a small machine it competes with the server it measures,
//! so compare figures only against a baseline measured in the same run with the same flags (this is what
//! `scripts/bench-compare` does). Use `--threads` to pin its runtime size.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use cache_proto::pb;
use cache_proto::pb::cache_service_client::CacheServiceClient;
use clap::Parser;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};

/// Largest gRPC message sent or accepted (values up to 64 MiB plus envelope metadata).
const MAX_MESSAGE_BYTES: usize = 128 << 20;
/// Highest latency the histograms track, in microseconds (a minute).
const MAX_LATENCY_US: u64 = 60_000_000;
/// The health service name the cache server reports for its main service.
const SERVICE_NAME: &str = "cache.v1.CacheService";

/// End-to-end load generator for cache.v1.CacheService.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about, long_about = None)]
struct Args {
    /// Server address: host:port or http://host:port.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// HTTP/2 connections (one tonic Channel each).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Calls in flight per connection.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// How long to measure, e.g. 10s, 500ms, 2m (default 10s unless --requests or --max-bytes is given).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// How many calls to measure (instead of --duration).
    #[arg(long, conflicts_with = "duration")]
    requests: Option<u64>,
    /// Stop once this much logical payload has been moved, e.g. 512m (with or instead of --duration).
    #[arg(long, value_parser = parse_size)]
    max_bytes: Option<u64>,
    /// Load applied and discarded before measuring, e.g. 1s.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    warmup: Duration,
    /// Value size of Sets: fixed (`1024`, `1k`, `1m`) or a range `LO..HI[:lognormal|:uniform]` (lognormal
    /// by default: median at the geometric mean, LO and HI three standard deviations out, clamped).
    #[arg(long, default_value = "1k")]
    value_size: SizeSpec,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Zipf skew exponent of key popularity (e.g. 0.99); uniform when absent.
    #[arg(long)]
    zipf: Option<f64>,
    /// Operation mix as weights, e.g. get=80,set=15,invalidate=5.
    #[arg(long, default_value = "get=80,set=20")]
    mix: Mix,
    /// Open-loop target rate in calls/s over all connections (closed loop when absent).
    #[arg(long)]
    rate: Option<f64>,
    /// Set every key once before measuring, so that Gets hit.
    #[arg(long)]
    prefill: bool,
    /// JSON-like values (compress ~5x) instead of random bytes (incompressible).
    #[arg(long)]
    compressible: bool,
    /// Compression requested on Set: auto, none, gzip or zstd.
    #[arg(long, value_enum, default_value = "auto")]
    compression: CompressionArg,
    /// TTL of Sets in seconds (0 = the type's default).
    #[arg(long, default_value_t = 0)]
    ttl_seconds: u32,
    /// Prefix of key ids: key i is `<prefix>-<i>` (cache type METADATA).
    #[arg(long, default_value = "lg")]
    key_prefix: String,
    /// After every successful Set, Get the key back (not measured) and count it as dropped if it is missing
    /// or has another size. Meaningful with one call in flight per key.
    #[arg(long)]
    read_after_write: bool,
    /// Count a Get hit whose value is not exactly this many bytes as a wrong-size answer (a fixed
    /// --value-size implies it).
    #[arg(long, value_parser = parse_size)]
    expect_size: Option<u64>,
    /// Fetch the server's Metrics after the run and include them in the report.
    #[arg(long)]
    server_metrics: bool,
    /// Only wait until grpc.health.v1 reports cache.v1.CacheService SERVING (polling every 2 ms, up to this
    /// long), print when that happened, and exit; non-zero if it did not happen in time.
    #[arg(long, value_parser = parse_duration)]
    wait_serving: Option<Duration>,
    /// Per-call deadline.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    timeout: Duration,
    /// Worker threads of the client runtime (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Random seed (keys, sizes, operations).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
}

/// The `compression` field of Sets.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CompressionArg {
    Auto,
    None,
    Gzip,
    Zstd,
}

impl CompressionArg {
    fn to_proto(self) -> pb::Compression {
        match self {
            Self::Auto => pb::Compression::Auto,
            Self::None => pb::Compression::None,
            Self::Gzip => pb::Compression::Gzip,
            Self::Zstd => pb::Compression::Zstd,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Flag parsing
// ---------------------------------------------------------------------------------------------------------

/// `10s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let seconds = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" => n / 1e6,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("`{s}` is not a duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `1024`, `1k`, `1KiB`, `1.5m`, `8MB`: binary units (k = 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 1024, 1k, 8m)"))?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use k, m or g)")),
    };
    if !n.is_finite() || n < 0.0 {
        return Err(format!("`{s}` is not a size"));
    }
    Ok((n * scale as f64).round() as u64)
}

/// How Set value sizes are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SizeSpec {
    Fixed(u64),
    Uniform { lo: u64, hi: u64 },
    LogNormal { lo: u64, hi: u64 },
}

impl SizeSpec {
    fn max(&self) -> u64 {
        match *self {
            Self::Fixed(n) => n,
            Self::Uniform { hi, .. } | Self::LogNormal { hi, .. } => hi,
        }
    }

    fn sample(&self, rng: &mut SmallRng) -> u64 {
        match *self {
            Self::Fixed(n) => n,
            Self::Uniform { lo, hi } => rng.random_range(lo..=hi),
            Self::LogNormal { lo, hi } => {
                let (ln_lo, ln_hi) = ((lo.max(1) as f64).ln(), (hi.max(1) as f64).ln());
                let (mu, sigma) = ((ln_lo + ln_hi) / 2.0, (ln_hi - ln_lo) / 6.0);
                // Box-Muller: one standard normal from two uniforms.
                let (u1, u2): (f64, f64) =
                    (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                ((mu + sigma * z).exp().round() as u64).clamp(lo, hi)
            }
        }
    }
}

impl FromStr for SizeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (range, dist) = match s.split_once(':') {
            Some((range, dist)) => (range, Some(dist)),
            None => (s, None),
        };
        let Some((lo, hi)) = range.split_once("..") else {
            if dist.is_some() {
                return Err("a distribution needs a range, e.g. 1k..8m:uniform".to_owned());
            }
            return parse_size(range).map(Self::Fixed);
        };
        let (lo, hi) = (parse_size(lo)?, parse_size(hi)?);
        if lo > hi {
            return Err(format!("`{s}`: the low end is above the high end"));
        }
        match dist.unwrap_or("lognormal") {
            "lognormal" => Ok(Self::LogNormal { lo, hi }),
            "uniform" => Ok(Self::Uniform { lo, hi }),
            other => Err(format!(
                "unknown distribution `{other}` (lognormal or uniform)"
            )),
        }
    }
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Fixed(n) => write!(f, "{n}"),
            Self::Uniform { lo, hi } => write!(f, "{lo}..{hi}:uniform"),
            Self::LogNormal { lo, hi } => write!(f, "{lo}..{hi}:lognormal"),
        }
    }
}

/// The operations the generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Get,
    Set,
    Invalidate,
}

impl Op {
    const ALL: [Op; 3] = [Op::Get, Op::Set, Op::Invalidate];

    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Invalidate => "invalidate",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Operation weights, e.g. `get=80,set=15,invalidate=5`.
#[derive(Debug, Clone, Copy)]
struct Mix {
    weights: [u32; 3],
}

impl Mix {
    fn pick(&self, rng: &mut SmallRng) -> Op {
        let total: u32 = self.weights.iter().sum();
        let mut roll = rng.random_range(0..total);
        for op in Op::ALL {
            if roll < self.weights[op.index()] {
                return op;
            }
            roll -= self.weights[op.index()];
        }
        Op::Get
    }
}

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut weights = [0u32; 3];
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected op=weight"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: the weight must be a whole number"))?;
            let op = match name.trim() {
                "get" => Op::Get,
                "set" => Op::Set,
                "invalidate" => Op::Invalidate,
                other => return Err(format!("unknown op `{other}` (get, set, invalidate)")),
            };
            weights[op.index()] = weight;
        }
        if weights.iter().sum::<u32>() == 0 {
            return Err("the mix needs at least one positive weight".to_owned());
        }
        Ok(Self { weights })
    }
}

// ---------------------------------------------------------------------------------------------------------
// Key popularity
// ---------------------------------------------------------------------------------------------------------

/// Zipf over ranks `1..=n` by rejection-inversion (Hörmann and Derflinger, as in `rand_distr` 0.4): O(1)
/// memory and time whatever the key space.
#[derive(Debug, Clone, Copy)]
struct Zipf {
    n: f64,
    s: f64,
    t: f64,
    q: f64,
}

impl Zipf {
    fn new(n: u64, s: f64) -> anyhow::Result<Self> {
        if !(s.is_finite() && s >= 0.0) || n == 0 {
            bail!("--zipf needs an exponent >= 0 and at least one key");
        }
        let n = n as f64;
        let q = if s == 1.0 { 0.0 } else { 1.0 / (1.0 - s) };
        let t = if s == 1.0 {
            1.0 + n.ln()
        } else {
            (n.powf(1.0 - s) - s) * q
        };
        Ok(Self { n, s, t, q })
    }

    fn inv_cdf(&self, p: f64) -> f64 {
        let pt = p * self.t;
        if pt <= 1.0 {
            pt
        } else if self.s == 1.0 {
            (pt - 1.0).exp()
        } else {
            (pt * (1.0 - self.s) + self.s).powf(self.q)
        }
    }

    /// A rank in `0..n` (0 the most popular).
    fn sample(&self, rng: &mut SmallRng) -> u64 {
        loop {
            let inv_b = self.inv_cdf(rng.random());
            let x = (inv_b + 1.0).floor();
            let mut ratio = x.powf(-self.s);
            if x > 1.0 {
                ratio *= inv_b.powf(self.s);
            }
            if rng.random::<f64>() < ratio {
                return (x.min(self.n) as u64).saturating_sub(1);
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum KeyChooser {
    Uniform(u64),
    Zipf(Zipf),
}

impl KeyChooser {
    fn pick(&self, rng: &mut SmallRng) -> u64 {
        match self {
            Self::Uniform(n) => rng.random_range(0..*n),
            Self::Zipf(z) => z.sample(rng),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------------------

/// One buffer that every value is a zero-copy slice of.
#[derive(Debug, Clone)]
struct ValuePool {
    buffer: Bytes,
}

impl ValuePool {
    fn new(max_value: u64, compressible: bool, seed: u64) -> Self {
        // Slack beyond the largest value so that equal-sized values still differ (random offsets).
        let len = max_value as usize + 64 * 1024;
        let buffer = if compressible {
            json_like(len, seed)
        } else {
            let mut rng = SmallRng::seed_from_u64(seed ^ 0xA5A5);
            let mut buf = vec![0u8; len];
            rng.fill(&mut buf[..]);
            buf
        };
        Self {
            buffer: Bytes::from(buffer),
        }
    }

    fn value(&self, size: u64, rng: &mut SmallRng) -> Bytes {
        let size = size as usize;
        let offset = rng.random_range(0..=self.buffer.len() - size);
        self.buffer.slice(offset..offset + size)
    }
}

/// JSON-like records (repeated field names, varying values): zstd-3 compresses them about 5–6×, like real
/// JSON exports (docs/benchmarks.md, "The load generator").
fn json_like(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(len + 256);
    out.push(b'[');
    let mut record = 0u64;
    while out.len() < len {
        let r: u64 = rng.random();
        let line = format!(
            r#"{{"id":{record},"guid":"{:016x}","name":"element-{}","type":"{}","level":{},"area":{}.{:02},"tags":["{}","{}"],"visible":{}}},"#,
            r,
            r % 10_000,
            ["IfcWall", "IfcSlab", "IfcDoor", "IfcWindow", "IfcBeam"][(r >> 8) as usize % 5],
            (r >> 16) % 40,
            (r >> 24) % 1000,
            (r >> 32) % 100,
            ["structural", "interior", "exterior", "load-bearing"][(r >> 40) as usize % 4],
            ["phase-1", "phase-2", "demolished"][(r >> 48) as usize % 3],
            r & 1 == 0,
        );
        out.extend_from_slice(line.as_bytes());
        record += 1;
    }
    out.truncate(len);
    out
}

// ---------------------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------------------

/// What one worker measured.
#[derive(Debug)]
struct Stats {
    /// Latency per operation, in microseconds.
    latency: [Histogram<u64>; 3],
    /// Failed calls by gRPC code name (also counted in `latency`: a failure still took time).
    errors: BTreeMap<&'static str, u64>,
    hits: u64,
    misses: u64,
    /// Get hits whose value had an unexpected size.
    wrong_size: u64,
    /// Sets that answered stored = true whose value could not be read back right after.
    dropped: u64,
    /// Sets that answered stored = false.
    not_stored: u64,
    /// Logical payload: value bytes sent by Sets and received by Get hits.
    payload_bytes: u64,
}

impl Stats {
    fn new() -> Self {
        let histogram =
            || Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds");
        Self {
            latency: [histogram(), histogram(), histogram()],
            errors: BTreeMap::new(),
            hits: 0,
            misses: 0,
            wrong_size: 0,
            dropped: 0,
            not_stored: 0,
            payload_bytes: 0,
        }
    }

    fn merge(&mut self, other: &Stats) {
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            mine.add(theirs).expect("histograms share bounds");
        }
        for (code, n) in &other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        self.hits += other.hits;
        self.misses += other.misses;
        self.wrong_size += other.wrong_size;
        self.dropped += other.dropped;
        self.not_stored += other.not_stored;
        self.payload_bytes += other.payload_bytes;
    }

    fn calls(&self) -> u64 {
        self.latency.iter().map(Histogram::len).sum()
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Screaming-snake gRPC code names, as in the gRPC spec and the server's `errors_by_code`.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

// ---------------------------------------------------------------------------------------------------------
// Workers
// ---------------------------------------------------------------------------------------------------------

/// Everything the workers share.
#[derive(Debug)]
struct Plan {
    mix: Mix,
    keys: KeyChooser,
    key_count: u64,
    key_prefix: String,
    sizes: SizeSpec,
    values: ValuePool,
    compression: pb::Compression,
    ttl_seconds: u32,
    expect_size: Option<u64>,
    read_after_write: bool,
    /// Measurement starts here (after the warm-up).
    measure_from: Instant,
    /// Measurement ends here (duration runs).
    deadline: Option<Instant>,
    /// Calls still to measure (request-count runs).
    remaining: Option<AtomicU64>,
    /// Payload still to move (`--max-bytes` runs).
    bytes_budget: Option<u64>,
    bytes_moved: AtomicU64,
    /// Interval between calls of one worker (open loop).
    interval: Option<Duration>,
}

impl Plan {
    fn cache_key(&self, index: u64) -> pb::CacheKey {
        pb::CacheKey {
            r#type: pb::CacheType::Metadata as i32,
            id: format!("{}-{index}", self.key_prefix),
            ..Default::default()
        }
    }

    fn set_request(&self, index: u64, rng: &mut SmallRng) -> pb::SetRequest {
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
    fn claim(&self, now: Instant) -> bool {
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
async fn prefill(
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

// ---------------------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------------------

fn endpoint(addr: &str, timeout: Duration) -> anyhow::Result<Endpoint> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Ok(Endpoint::from_shared(uri)
        .with_context(|| format!("invalid address {addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        // Windows large enough that multi-MiB values are not flow-control bound on loopback.
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20))
}

async fn connect(endpoint: &Endpoint) -> anyhow::Result<CacheServiceClient<Channel>> {
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("failed to connect to {}", endpoint.uri()))?;
    Ok(CacheServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Polls health until SERVING; returns the wall-clock time it was first seen.
async fn wait_serving(endpoint: &Endpoint, within: Duration) -> anyhow::Result<SystemTime> {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let started = Instant::now();
    let endpoint = endpoint.clone().connect_timeout(Duration::from_millis(100));
    let mut last_error = String::from("never connected");
    while started.elapsed() < within {
        match endpoint.connect().await {
            Ok(channel) => {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                while started.elapsed() < within {
                    let check = health.check(HealthCheckRequest {
                        service: SERVICE_NAME.to_owned(),
                    });
                    match check.await {
                        Ok(r) if r.get_ref().status() == ServingStatus::Serving => {
                            return Ok(SystemTime::now());
                        }
                        Ok(r) => last_error = format!("health says {:?}", r.get_ref().status()),
                        Err(s) => {
                            last_error = format!("health check failed: {s}");
                            if s.code() == tonic::Code::Unavailable {
                                break;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Err(e) => last_error = format!("connect failed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bail!("{SERVICE_NAME} was not SERVING within {within:?}: {last_error}")
}

async fn server_metrics(client: &mut CacheServiceClient<Channel>) -> Value {
    match client.metrics(pb::MetricsRequest {}).await {
        Ok(r) => {
            let r = r.into_inner();
            let m = r.metrics.unwrap_or_default();
            json!({
                "mode": r.mode,
                "hit_rate": m.hit_rate,
                "total_entries": m.total_entries,
                "memory_usage_mb": m.memory_usage_mb,
                "memory_cache_size": m.memory_cache_size,
                "memory_cache_entries": m.memory_cache_entries,
                "memory_cache_capacity": m.memory_cache_capacity,
                "memory_rejected": r.memory_rejected,
                "redis_memory_usage": m.redis_memory_usage,
                "compression_ratio": m.compression_ratio,
                "errors_by_code": r.errors_by_code,
            })
        }
        Err(s) => json!({ "error": code_name(s.code()), "message": s.message() }),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------------------

fn latency_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": h.mean(),
    })
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn print_text(args: &Args, stats: &Stats, all: &Histogram<u64>, elapsed: f64, extra: &Value) {
    let calls = stats.calls();
    let mode = match args.rate {
        Some(r) => format!("open loop at {r} calls/s"),
        None => "closed loop".to_owned(),
    };
    println!(
        "loadgen → {}: {} connections × {} in flight, {mode}, {:.2} s measured, values {} B{}",
        args.addr,
        args.connections,
        args.concurrency,
        elapsed,
        args.value_size,
        if args.compressible {
            " (JSON-like)"
        } else {
            ""
        }
    );
    println!(
        "{:<11} {:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "op", "calls", "calls/s", "MB/s", "p50 ms", "p90 ms", "p99 ms", "p999 ms", "max ms"
    );
    let row = |name: &str, h: &Histogram<u64>, mbps: Option<f64>| {
        if h.is_empty() {
            return;
        }
        println!(
            "{:<11} {:>10} {:>11.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            name,
            h.len(),
            h.len() as f64 / elapsed,
            mbps.map_or_else(String::new, |m| format!("{m:.1}")),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
        );
    };
    for op in Op::ALL {
        row(op.name(), &stats.latency[op.index()], None);
    }
    row("all", all, Some(stats.payload_bytes as f64 / elapsed / 1e6));
    if stats.hits + stats.misses > 0 {
        println!(
            "hit ratio: {:.2} % ({} hits, {} misses)",
            100.0 * stats.hits as f64 / (stats.hits + stats.misses) as f64,
            stats.hits,
            stats.misses
        );
    }
    if stats.errors.is_empty() {
        println!("errors: none ({calls} calls)");
    } else {
        let list: Vec<String> = stats
            .errors
            .iter()
            .map(|(c, n)| format!("{c}={n}"))
            .collect();
        println!(
            "errors: {} of {calls} calls: {}",
            stats.error_count(),
            list.join(" ")
        );
    }
    for (label, n) in [
        ("wrong-size Get answers", stats.wrong_size),
        ("Sets not readable right after (dropped)", stats.dropped),
        ("Sets answered stored=false", stats.not_stored),
    ] {
        if n > 0 {
            println!("{label}: {n}");
        }
    }
    if let Some(p) = extra.get("prefill").filter(|p| !p.is_null()) {
        println!("prefill: {p}");
    }
    if let Some(s) = extra.get("server").filter(|s| !s.is_null()) {
        println!("server metrics: {s}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------------------

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let endpoint = endpoint(&args.addr, args.timeout)?;
    if let Some(within) = args.wait_serving {
        let waited_from = SystemTime::now();
        let at = wait_serving(&endpoint, within).await?;
        let at_ns = at.duration_since(UNIX_EPOCH)?.as_nanos();
        let waited_ms = at
            .duration_since(waited_from)
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3;
        if args.json {
            println!(
                "{}",
                json!({ "serving_unix_ns": at_ns as u64, "waited_ms": waited_ms })
            );
        } else {
            println!("{SERVICE_NAME} SERVING after {waited_ms:.1} ms of polling");
        }
        return Ok(());
    }
    if args.connections == 0 || args.concurrency == 0 {
        bail!("--connections and --concurrency must be at least 1");
    }
    if args.keys == 0 {
        bail!("--keys must be at least 1");
    }
    if args.mix.weights[Op::Set.index()] > 0 || args.prefill {
        let max = args.value_size.max();
        if max > (MAX_MESSAGE_BYTES as u64) - (1 << 20) {
            bail!(
                "--value-size above {} bytes is not supported",
                MAX_MESSAGE_BYTES - (1 << 20)
            );
        }
    }
    let keys = match args.zipf {
        Some(s) => KeyChooser::Zipf(Zipf::new(args.keys, s)?),
        None => KeyChooser::Uniform(args.keys),
    };
    let duration = match (args.duration, args.requests, args.max_bytes) {
        (Some(d), _, _) => Some(d),
        (None, None, None) => Some(Duration::from_secs(10)),
        _ => None,
    };
    let workers = args.connections * args.concurrency;
    let interval = match args.rate {
        Some(rate) if rate > 0.0 => Some(Duration::from_secs_f64(workers as f64 / rate)),
        Some(_) => bail!("--rate must be positive"),
        None => None,
    };
    let expect_size = args.expect_size.or(match args.value_size {
        SizeSpec::Fixed(n) => Some(n),
        _ => None,
    });

    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        clients.push(connect(&endpoint).await?);
    }
    let values = ValuePool::new(args.value_size.max(), args.compressible, args.seed);
    let mut plan = Plan {
        mix: args.mix,
        keys,
        key_count: args.keys,
        key_prefix: args.key_prefix.clone(),
        sizes: args.value_size,
        values,
        compression: args.compression.to_proto(),
        ttl_seconds: args.ttl_seconds,
        expect_size,
        read_after_write: args.read_after_write,
        measure_from: Instant::now(),
        deadline: None,
        remaining: None,
        bytes_budget: None,
        bytes_moved: AtomicU64::new(0),
        interval,
    };

    let mut extra = json!({ "prefill": null, "server": null });
    if args.prefill {
        let started = Instant::now();
        let (stored, errors) = prefill(
            &clients,
            Arc::new(plan_clone_for_prefill(&plan)),
            args.concurrency,
            args.seed,
        )
        .await;
        extra["prefill"] = json!({
            "keys": stored,
            "errors": errors,
            "seconds": started.elapsed().as_secs_f64(),
        });
    }

    let start = Instant::now();
    plan.measure_from = start + args.warmup;
    plan.deadline = duration.map(|d| plan.measure_from + d);
    plan.remaining = args.requests.map(AtomicU64::new);
    plan.bytes_budget = args.max_bytes;
    let plan = Arc::new(plan);

    let mut tasks = Vec::with_capacity(workers);
    for (c, client) in clients.iter().enumerate() {
        for slot in 0..args.concurrency {
            let w = c * args.concurrency + slot;
            let seed = args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (w as u64 + 1);
            // Open loop: spread the workers' first slots over one interval.
            let first_slot =
                start + interval.map_or(Duration::ZERO, |i| i * w as u32 / workers as u32);
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
    let elapsed = Instant::now()
        .saturating_duration_since(plan.measure_from)
        .as_secs_f64()
        .max(1e-9);

    if args.server_metrics {
        extra["server"] = server_metrics(&mut clients[0]).await;
    }
    let mut all = Stats::new().latency[0].clone();
    for h in &stats.latency {
        all.add(h).expect("histograms share bounds");
    }
    if args.json {
        let ops: serde_json::Map<String, Value> = Op::ALL
            .iter()
            .filter(|op| !stats.latency[op.index()].is_empty())
            .map(|&op| {
                let h = &stats.latency[op.index()];
                (
                    op.name().to_owned(),
                    json!({ "calls": h.len(), "rps": h.len() as f64 / elapsed, "latency_us": latency_json(h) }),
                )
            })
            .collect();
        let lookups = stats.hits + stats.misses;
        let report = json!({
            "addr": args.addr,
            "connections": args.connections,
            "concurrency": args.concurrency,
            "open_loop_rate": args.rate,
            "value_size": args.value_size.to_string(),
            "compressible": args.compressible,
            "elapsed_s": elapsed,
            "calls": stats.calls(),
            "rps": stats.calls() as f64 / elapsed,
            "payload_bytes": stats.payload_bytes,
            "mbps": stats.payload_bytes as f64 / elapsed / 1e6,
            "latency_us": latency_json(&all),
            "ops": ops,
            "errors": stats.errors,
            "error_count": stats.error_count(),
            "hits": stats.hits,
            "misses": stats.misses,
            "hit_ratio": if lookups == 0 { Value::Null } else { json!(stats.hits as f64 / lookups as f64) },
            "wrong_size": stats.wrong_size,
            "dropped": stats.dropped,
            "not_stored": stats.not_stored,
            "prefill": extra["prefill"],
            "server": extra["server"],
        });
        println!("{report}");
    } else {
        print_text(&args, &stats, &all, elapsed, &extra);
    }
    Ok(())
}

/// The prefill sends Sets with the run's sizes and values but none of its limits.
fn plan_clone_for_prefill(plan: &Plan) -> Plan {
    Plan {
        mix: plan.mix,
        keys: plan.keys,
        key_count: plan.key_count,
        key_prefix: plan.key_prefix.clone(),
        sizes: plan.sizes,
        values: plan.values.clone(),
        compression: plan.compression,
        ttl_seconds: plan.ttl_seconds,
        expect_size: plan.expect_size,
        read_after_write: false,
        measure_from: plan.measure_from,
        deadline: None,
        remaining: None,
        bytes_budget: None,
        bytes_moved: AtomicU64::new(0),
        interval: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("1.5m"), Ok(3 << 19));
        assert!(parse_size("1x").is_err());
    }

    #[test]
    fn size_specs_parse_fixed_and_ranges() {
        assert_eq!("1k".parse(), Ok(SizeSpec::Fixed(1024)));
        assert_eq!(
            "1k..8m".parse(),
            Ok(SizeSpec::LogNormal {
                lo: 1024,
                hi: 8 << 20
            })
        );
        assert_eq!(
            "1k..2k:uniform".parse(),
            Ok(SizeSpec::Uniform { lo: 1024, hi: 2048 })
        );
        assert!("8m..1k".parse::<SizeSpec>().is_err());
        assert!("1k:uniform".parse::<SizeSpec>().is_err());
    }

    #[test]
    fn sampled_sizes_stay_in_range() {
        let mut rng = SmallRng::seed_from_u64(7);
        for spec in [
            SizeSpec::LogNormal {
                lo: 1024,
                hi: 8 << 20,
            },
            SizeSpec::Uniform { lo: 10, hi: 20 },
        ] {
            for _ in 0..10_000 {
                let n = spec.sample(&mut rng);
                assert!(
                    (spec_lo(spec)..=spec.max()).contains(&n),
                    "{n} outside {spec}"
                );
            }
        }
    }

    fn spec_lo(spec: SizeSpec) -> u64 {
        match spec {
            SizeSpec::Fixed(n) => n,
            SizeSpec::Uniform { lo, .. } | SizeSpec::LogNormal { lo, .. } => lo,
        }
    }

    #[test]
    fn mix_parses_and_picks_only_weighted_ops() {
        let mix: Mix = "get=80,set=15,invalidate=5".parse().unwrap();
        assert_eq!(mix.weights, [80, 15, 5]);
        let only_sets: Mix = "set=1".parse().unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        assert!((0..1000).all(|_| only_sets.pick(&mut rng) == Op::Set));
        assert!("get=0".parse::<Mix>().is_err());
        assert!("read=5".parse::<Mix>().is_err());
    }

    #[test]
    fn zipf_favours_low_ranks_and_stays_in_range() {
        let zipf = Zipf::new(1000, 1.1).unwrap();
        let mut rng = SmallRng::seed_from_u64(3);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[zipf.sample(&mut rng) as usize] += 1;
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[500]);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5 parsecs").is_err());
    }
}
