//! Logs and traces.
//!
//! - Logs: `RUST_LOG` filter (default `info`), text or JSON lines on stderr, structured fields. Values and
//!   secrets are never logged anywhere in the server.
//! - Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, one span
//!   per RPC (a child of the caller's span when the call carries W3C `traceparent` metadata) with child spans
//!   for backend calls, exported over OTLP/gRPC in batches and flushed on shutdown. The exporter also honours
//!   the standard `OTEL_EXPORTER_OTLP_*` variables (headers, timeout, compression) and `OTEL_SERVICE_NAME`.
//!   When no endpoint is set (or `OTEL_SDK_DISABLED=true`) no span is even created: tracing costs nothing.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing::instrument::{Instrument as _, Instrumented};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::LogFormat;

/// The filter used when `RUST_LOG` is not set.
pub const DEFAULT_LOG_FILTER: &str = "info";

static TRACING_ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (checked before creating any span on the request path).
pub fn tracing_enabled() -> bool {
    TRACING_ENABLED.load(Ordering::Relaxed)
}

/// Where to export traces, from the standard OpenTelemetry environment variables; `None` when unset or
/// disabled.
pub fn otlp_endpoint(env: &HashMap<String, String>) -> Option<String> {
    if env
        .get("OTEL_SDK_DISABLED")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return None;
    }
    env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Installed telemetry; [`Telemetry::shutdown`] flushes spans still buffered.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the span exporter (off the async workers: the SDK blocks while flushing).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            TRACING_ENABLED.store(false, Ordering::Relaxed);
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = flushed {
                tracing::warn!(error = %e, "failed to flush traces on shutdown");
            }
        }
    }
}

/// Installs the global subscriber: logs, plus OTLP trace export when `otlp_endpoint` is given. Must run
/// inside a multi-threaded Tokio runtime when exporting. Later calls install nothing and return an inert
/// [`Telemetry`] (so tests may call it freely).
///
/// # Errors
/// Fails if the OTLP exporter cannot be built (e.g. an invalid endpoint URL).
pub fn init(
    format: LogFormat,
    service_name: &str,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<Telemetry> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt: Box<dyn tracing_subscriber::Layer<_> + Send + Sync> = match format {
        LogFormat::Text => Box::new(fmt),
        LogFormat::Json => Box::new(fmt.json().flatten_event(true)),
    };
    let provider = match otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(service_name.to_owned())
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("cache-server")));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    if !installed {
        return Ok(Telemetry::default());
    }
    if let Some(endpoint) = otlp_endpoint {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        TRACING_ENABLED.store(true, Ordering::Relaxed);
        tracing::info!(endpoint, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The span of one incoming gRPC call (for `Server::trace_fn`): a child of the caller's span when the
/// request carries W3C trace context. `Span::none()` when tracing is off.
pub fn grpc_span(request: &http::Request<()>) -> Span {
    if !tracing_enabled() {
        return Span::none();
    }
    let path = request.uri().path().trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc",
        otel.name = %path,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&HeaderExtractor(request.headers()))
    });
    let _ = span.set_parent(parent);
    span
}

/// Records the gRPC outcome on the current RPC span.
pub fn record_status(code: tonic::Code) {
    if tracing_enabled() {
        let span = Span::current();
        span.record("rpc.grpc.status_code", code as i32);
        if !matches!(code, tonic::Code::Ok | tonic::Code::InvalidArgument) {
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// Wraps a backend call in a child span named `name` (e.g. `backend.get`) when tracing is on.
pub fn traced<F: Future>(name: &'static str, future: F) -> Instrumented<F> {
    let span = if tracing_enabled() {
        tracing::info_span!("backend", otel.name = name, otel.kind = "client")
    } else {
        Span::none()
    };
    future.instrument(span)
}
