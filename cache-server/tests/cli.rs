//! The binary's exit codes, as docs/operations.md lists them: 64 for an invalid configuration (the message
//! names the culprit), 2 for a malformed flag, 1 when it cannot serve, 0 for `config-table`; and the
//! `health-check` subcommand's 1 when nothing answers.
//!
//! Being an integration test of this package, it also makes a plain `cargo test` build the `cache-server`
//! binary that the end-to-end tests of `tests/` start.

use std::net::TcpListener;
use std::process::{Command, Output};

fn server(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cache-server"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("cache-server runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_invalid_environment_variable_exits_64_naming_it() {
    let out = server(&[], &[("REDIS_PORT", "abc"), ("CACHE_BACKEND", "memory")]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("REDIS_PORT"), "{}", stderr(&out));
}

#[test]
fn an_inconsistent_setting_exits_64_naming_it() {
    // The memory tier must hold the largest value.
    let out = server(
        &["--backend", "memory"],
        &[
            ("CACHE_MAX_SIZE_MB", "1"),
            ("CACHE_MAX_VALUE_BYTES", "67108864"),
        ],
    );
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("max_size_mb"), "{}", stderr(&out));
}

#[test]
fn an_unknown_key_in_the_config_file_exits_64_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("cache.toml");
    std::fs::write(&file, "backend = \"memory\"\nmax_size_mbb = 10\n").expect("write");
    let out = server(&["--config", file.to_str().expect("utf-8 path")], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("max_size_mbb"), "{}", stderr(&out));
}

#[test]
fn a_malformed_flag_exits_2() {
    let out = server(&["--backend", "disk"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("disk"), "{}", stderr(&out));
}

#[test]
fn a_taken_listen_address_exits_1() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = server(
        &[
            "--backend",
            "memory",
            "--listen",
            &addr,
            "--metrics-listen",
            "off",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[test]
fn config_table_prints_every_setting_and_exits_0() {
    let out = server(&["config-table"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = String::from_utf8(out.stdout).expect("utf-8");
    for name in [
        "CACHE_LISTEN_ADDR",
        "CACHE_BACKEND",
        "REDIS_URL",
        "CACHE_MAX_SIZE_MB",
    ] {
        assert!(table.contains(name), "{name} missing from:\n{table}");
    }
}

#[test]
fn health_check_exits_1_when_nothing_answers() {
    // A port that was free a moment ago: nothing listens there.
    let addr = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let endpoint = format!("http://{addr}");
    let out = server(
        &["health-check", "--endpoint", &endpoint, "--timeout", "2s"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}
