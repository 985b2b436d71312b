//! Test logging: one tracing subscriber per test binary.

/// Installs a tracing subscriber once per test binary: `RUST_LOG` filter (default `warn`), output captured by
/// the test harness. Later calls do nothing.
pub fn trace_init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}
