//! OpenTelemetry: an OTLP trace receiver started by the test gets the server's spans, the span of an RPC is a
//! child of the caller's span (W3C `traceparent` metadata), and backend calls are child spans of the RPC.
//!
//! Its own test binary: the test installs the process-wide tracing subscriber, which any other test that
//! starts a server in the same process may already have installed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_proto::pb;
use cache_server::config::LogFormat;
use cache_tests::{TestServer, get_req, key, set_req};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_spans_reach_an_otlp_collector_as_children_of_the_callers_span() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let telemetry = cache_server::init_telemetry(
        LogFormat::Text,
        "cache-server-test",
        Some(&format!("http://{collector}")),
    )
    .expect("otlp exporter");
    assert!(cache_server::tracing_enabled());

    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let (trace_id, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let mut set = tonic::Request::new(set_req(key(pb::CacheType::Metadata, "traced"), &b"v"[..]));
    set.metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    client.set(set).await.unwrap();
    let mut get = tonic::Request::new(get_req(key(pb::CacheType::Metadata, "traced")));
    get.metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    assert!(client.get(get).await.unwrap().into_inner().found);
    server.shutdown().await;
    telemetry.shutdown().await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans = receiver.spans.lock().unwrap().clone();
        if spans.iter().any(|s| s.name == "backend.get") || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    for (rpc, backend) in [
        ("cache.v1.CacheService/Set", "backend.set"),
        ("cache.v1.CacheService/Get", "backend.get"),
    ] {
        let server_span = spans
            .iter()
            .find(|s| s.name == rpc)
            .unwrap_or_else(|| panic!("no {rpc} span among {names:?}"));
        assert_eq!(
            hex(&server_span.trace_id),
            trace_id,
            "the RPC joins the caller's trace"
        );
        assert_eq!(
            hex(&server_span.parent_span_id),
            caller_span,
            "the RPC span is a child of the caller's span"
        );
        let child = spans
            .iter()
            .find(|s| s.name == backend && s.parent_span_id == server_span.span_id)
            .unwrap_or_else(|| panic!("no {backend} child of {rpc} among {names:?}"));
        assert_eq!(child.trace_id, server_span.trace_id);
    }
}
