//! The token check on the call path: `Auth::authenticate` for a valid bearer token among 10 (one SHA-256 and
//! ten constant-time comparisons), an unknown token, and the open caller (no tokens file). Goal: < 1 µs.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;

use cache_server::Keyspace;
use cache_server::auth::Auth;
use criterion::{Criterion, criterion_group, criterion_main};

fn hex(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let mut text = String::new();
    for i in 0..10 {
        text.push_str(&format!(
            "[[token]]\nname = \"t{i}\"\nsha256 = \"{}\"\ntenant = \"tenant-{i}\"\nscopes = [\"read\"]\n",
            hex(&format!("token-number-{i}-0123456789abcdef"))
        ));
    }
    std::fs::write(&file, text).unwrap();
    let auth = Auth::from_file("cache", "default", file).unwrap();
    let open = Auth::open(Keyspace::new("cache", "default"));
    let header = |token: &str| {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("authorization", format!("Bearer {token}").parse().unwrap());
        m
    };
    let valid = header("token-number-7-0123456789abcdef");
    let unknown = header("token-number-x-0123456789abcdef");
    let mut group = c.benchmark_group("authenticate");
    group.bench_function("valid token of 10", |b| {
        b.iter(|| black_box(auth.authenticate(black_box(&valid), None).is_ok()))
    });
    group.bench_function("unknown token", |b| {
        b.iter(|| black_box(auth.authenticate(black_box(&unknown), None).is_err()))
    });
    group.bench_function("open (no tokens file)", |b| {
        b.iter(|| black_box(open.authenticate(black_box(&valid), None).is_ok()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
