//! The report: a text table, or one JSON object with `--json`.
//!
//! Throughput is calls/s and MB/s of logical payload (value bytes sent by Set plus value bytes received by Get
//! hits, 1 MB = 10^6 bytes); latency percentiles come from the HDR histograms. `extra` holds the `prefill` and
//! `server` parts (null when absent).

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::args::Args;
use crate::mix::Op;
use crate::stats::Stats;

/// Prints the report of a run that measured `stats` over `elapsed` seconds.
pub(crate) fn print(args: &Args, stats: &Stats, elapsed: f64, extra: &Value) {
    let all = stats.all_latency();
    if args.json {
        println!("{}", json_report(args, stats, &all, elapsed, extra));
    } else {
        print_text(args, stats, &all, elapsed, extra);
    }
}

/// Percentiles, max and mean of `h` in microseconds; null when it is empty.
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

/// The text report.
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

/// The JSON report (`--json`). Scripts read it: keep its keys.
fn json_report(
    args: &Args,
    stats: &Stats,
    all: &Histogram<u64>,
    elapsed: f64,
    extra: &Value,
) -> Value {
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
    json!({
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
        "latency_us": latency_json(all),
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
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn json_report_has_the_keys_scripts_read() {
        let args = Args::try_parse_from(["loadgen", "--json"]).unwrap();
        let mut stats = Stats::new();
        stats.latency[Op::Get.index()].record(1500).unwrap();
        stats.hits = 1;
        let extra = json!({ "prefill": null, "server": null });
        let report = json_report(&args, &stats, &stats.all_latency(), 2.0, &extra);
        for key in [
            "addr",
            "connections",
            "concurrency",
            "open_loop_rate",
            "value_size",
            "compressible",
            "elapsed_s",
            "calls",
            "rps",
            "payload_bytes",
            "mbps",
            "latency_us",
            "ops",
            "errors",
            "error_count",
            "hits",
            "misses",
            "hit_ratio",
            "wrong_size",
            "dropped",
            "not_stored",
            "prefill",
            "server",
        ] {
            assert!(report.get(key).is_some(), "no {key} in {report}");
        }
        assert_eq!(report["rps"], json!(0.5));
        assert_eq!(report["hit_ratio"], json!(1.0));
        assert_eq!(report["ops"]["get"]["calls"], json!(1));
        assert!(report["ops"].get("set").is_none());
        let p50 = report["latency_us"]["p50"].as_u64().unwrap();
        assert!((1499..=1501).contains(&p50), "p50 {p50}");
    }

    #[test]
    fn empty_histograms_report_null_latency() {
        assert_eq!(latency_json(&Stats::new().latency[0]), Value::Null);
    }
}
