//! Criterion benchmarks of the per-request CPU work outside the backends: rendering a storage key from a
//! `CacheKey`, encoding and decoding the stored envelope (128 B to 16 MiB), and the compression paths (zstd and
//! gzip, compress and decompress) on JSON-like values, which is what exports look like.
//!
//! Compare envelope encode/decode against a plain `memcpy` of the same size (the `copy` rows): the envelope
//! costs one copy of the payload plus two CRC-32C passes on encode, one CRC pass and no copy on decode.
//!
//! Run with: `cargo bench -p cache-server --bench codec`
//! (one group: `cargo bench -p cache-server --bench codec -- envelope_decode`;
//! smoke test, every benchmark once: `cargo bench -p cache-server --bench codec -- --test`).

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use cache_proto::pb;
use cache_server::Keyspace;
use cache_server::envelope::{self, Codec, CompressionPolicy, CompressionRequest, Header};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// Envelope sizes: small settings up to the largest exports.
const ENVELOPE_SIZES: [usize; 6] = [128, 1_024, 8_192, 65_536, 1 << 20, 16 << 20];
/// Compression sizes: below, at and well above the default AUTO threshold (1 MiB).
const COMPRESSION_SIZES: [usize; 4] = [1_024, 65_536, 1 << 20, 8 << 20];

/// Deterministic JSON-like bytes (records with repeated field names and varying values), compressing about
/// 5–6× with zstd like real JSON exports (docs/benchmarks.md, "The load generator").
fn json_like(len: usize) -> Bytes {
    let mut out = Vec::with_capacity(len + 256);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    out.push(b'[');
    let mut record = 0u64;
    while out.len() < len {
        let r = next();
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
    Bytes::from(out)
}

fn header(size: usize) -> Header {
    Header {
        created_at_ms: 1_760_000_000_000,
        expires_at_ms: 1_760_086_400_000,
        size_bytes: size as u64,
        content_type: "application/json".to_owned(),
        model_hash: "3f2a9c".to_owned(),
        metadata: vec![("source".to_owned(), "exporter".to_owned())],
        export_options_json: r#"{"precision":3}"#.to_owned(),
    }
}

fn label(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{}MiB", s >> 20),
        s if s >= 1 << 10 => format!("{}KiB", s >> 10),
        s => format!("{s}B"),
    }
}

/// Fewer samples for multi-MiB inputs, so a full run stays in minutes.
fn tune_for(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    size: usize,
) {
    if size >= 1 << 20 {
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(3));
    } else {
        group.sample_size(50);
        group.measurement_time(Duration::from_secs(2));
    }
}

fn bench_keys(c: &mut Criterion) {
    let keyspace = Keyspace::new("cache", "default");
    let metadata = pb::CacheKey {
        r#type: pb::CacheType::Metadata as i32,
        id: "object-1234567".to_owned(),
        user_id: "user-42".to_owned(),
        ..Default::default()
    };
    let options = prost_types::Struct {
        fields: [
            ("precision", prost_types::value::Kind::NumberValue(3.0)),
            ("units", prost_types::value::Kind::StringValue("mm".into())),
            ("lod", prost_types::value::Kind::NumberValue(300.0)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), prost_types::Value { kind: Some(v) }))
        .collect(),
    };
    let export = pb::CacheKey {
        r#type: pb::CacheType::ExportResult as i32,
        id: "model:with:colons".to_owned(),
        format: "ifc".to_owned(),
        options: Some(options),
        user_id: "user-42".to_owned(),
        project_id: "project-7".to_owned(),
    };
    let mut group = c.benchmark_group("key_render");
    group.throughput(Throughput::Elements(1));
    group.bench_function("metadata", |b| {
        b.iter(|| keyspace.key(Some(black_box(&metadata)), "key").unwrap())
    });
    group.bench_function("export_with_options", |b| {
        b.iter(|| keyspace.key(Some(black_box(&export)), "key").unwrap())
    });
    group.finish();
}

fn bench_envelope(c: &mut Criterion) {
    let mut encode = c.benchmark_group("envelope_encode");
    for size in ENVELOPE_SIZES {
        let payload = json_like(size);
        let header = header(size);
        tune_for(&mut encode, size);
        encode.throughput(Throughput::Bytes(size as u64));
        encode.bench_with_input(BenchmarkId::new("encode", label(size)), &payload, |b, p| {
            b.iter(|| envelope::encode(black_box(&header), Codec::None, black_box(p)))
        });
        encode.bench_with_input(BenchmarkId::new("copy", label(size)), &payload, |b, p| {
            b.iter(|| Bytes::copy_from_slice(black_box(p)))
        });
    }
    encode.finish();

    let mut decode = c.benchmark_group("envelope_decode");
    for size in ENVELOPE_SIZES {
        let envelope = envelope::encode(&header(size), Codec::None, &json_like(size));
        tune_for(&mut decode, size);
        decode.throughput(Throughput::Bytes(size as u64));
        decode.bench_with_input(
            BenchmarkId::new("decode", label(size)),
            &envelope,
            |b, e| {
                // Cloning `Bytes` is a reference-count bump: the measured work is the checks and the header parse.
                b.iter(|| envelope::decode(black_box(e.clone())).unwrap())
            },
        );
    }
    decode.finish();
}

fn bench_compression(c: &mut Criterion) {
    let policy = CompressionPolicy::default();
    let requests = [
        ("zstd", CompressionRequest::Zstd),
        ("gzip", CompressionRequest::Gzip),
    ];
    let mut compress = c.benchmark_group("compress");
    for size in COMPRESSION_SIZES {
        let value = json_like(size);
        tune_for(&mut compress, size);
        compress.throughput(Throughput::Bytes(size as u64));
        for (name, request) in requests {
            compress.bench_with_input(BenchmarkId::new(name, label(size)), &value, |b, v| {
                b.iter(|| envelope::compress(black_box(v), request, &policy))
            });
        }
        // The server's level is 3; level 1 is what a Set-heavy deployment could trade ratio for.
        let level_1 = CompressionPolicy {
            zstd_level: 1,
            ..policy
        };
        compress.bench_with_input(BenchmarkId::new("zstd-1", label(size)), &value, |b, v| {
            b.iter(|| envelope::compress(black_box(v), CompressionRequest::Zstd, &level_1))
        });
        // AUTO is what most callers send: below the threshold it must cost nothing (a reference-count bump).
        compress.bench_with_input(BenchmarkId::new("auto", label(size)), &value, |b, v| {
            b.iter(|| envelope::compress(black_box(v), CompressionRequest::Auto, &policy))
        });
    }
    compress.finish();

    let mut decompress = c.benchmark_group("decompress");
    for size in COMPRESSION_SIZES {
        let value = json_like(size);
        tune_for(&mut decompress, size);
        decompress.throughput(Throughput::Bytes(size as u64));
        for (name, request) in requests {
            let (codec, stored) = envelope::compress(&value, request, &policy);
            assert_ne!(
                codec,
                Codec::None,
                "{name} must compress JSON-like {size} B"
            );
            decompress.bench_with_input(BenchmarkId::new(name, label(size)), &stored, |b, s| {
                b.iter(|| envelope::decompress(codec, black_box(s), size as u64, &policy).unwrap())
            });
        }
    }
    decompress.finish();
}

criterion_group!(benches, bench_keys, bench_envelope, bench_compression);
criterion_main!(benches);
