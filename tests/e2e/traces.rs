//! Observability of a deployment: gateway, auth, meta and blob as
//! processes, each exporting its spans over OTLP/gRPC
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`) to a receiver this test runs (the OTLP
//! trace service, from the protocol's own definitions), and each serving
//! its own Prometheus `/metrics`. A push whose requests carry one
//! `traceparent`, as a tracing client sends it, is one trace with spans
//! from every role, and moves every role's call counters.

use crate::auth::htpasswd;
use crate::oci::*;
use crate::sandbox::{Process, basic_client, wait_readyz};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One span as received: its service, name, trace id, span id, parent.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    name: String,
    trace: String,
    span: String,
    parent: String,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in &request.get_ref().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    spans.push(Received {
                        service: service.clone(),
                        name: s.name.clone(),
                        trace: hex::encode(&s.trace_id),
                        span: hex::encode(&s.span_id),
                        parent: hex::encode(&s.parent_span_id),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A gRPC role exporting its spans to `otlp`.
fn traced_role(dir: &Path, config: &Path, role: &str, otlp: &str) -> Process {
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let log = dir.join(format!("{role}.log"));
    Process::role(config, role, "127.0.0.1:0", &log, &env)
}

/// A role's own `/metrics` (over HTTP/1.1, as Prometheus scrapes).
async fn scrape(role: &Process) -> String {
    let r = reqwest::Client::builder()
        .http1_only()
        .build()
        .unwrap()
        .get(format!("{}/metrics", role.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", role.url);
    r.text().await.unwrap()
}

/// Calls of `method` a scrape counts, whatever their code.
fn handled(text: &str, method: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.starts_with("grpc_server_handled_total{")
                && l.contains(&format!("grpc_method=\"{method}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_is_one_trace_with_spans_from_every_role_and_moves_their_metrics() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let dir = tempfile::tempdir().unwrap();
    let path = htpasswd(dir.path(), &[("alice", "pw")]);
    let base = json!({
        "storage": {"rootDirectory": dir.path().join("data")},
        "http": {"port": 0, "auth": {"htpasswd": {"path": path}}}
    });
    let cfg = dir.path().join("roles.json");
    std::fs::write(&cfg, serde_json::to_vec(&base).unwrap()).unwrap();
    let meta = traced_role(dir.path(), &cfg, "meta", &otlp);
    let blob = traced_role(dir.path(), &cfg, "blob", &otlp);
    let auth = traced_role(dir.path(), &cfg, "auth", &otlp);
    let mut gw_cfg = base.clone();
    gw_cfg["services"] = json!({"meta": {"endpoints": [meta.url]},
        "blob": {"endpoints": [blob.url]}, "auth": {"endpoints": [auth.url]}});
    let gw_path = dir.path().join("gateway.json");
    std::fs::write(&gw_path, serde_json::to_vec(&gw_cfg).unwrap()).unwrap();
    let gw = Process::spawn_env(
        &["-c", gw_path.to_str().unwrap(), "--role", "gateway"],
        &dir.path().join("gateway.log"),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let client = basic_client("alice", "pw");
    wait_readyz(&client, &gw.url).await;
    let counted = [
        (&meta, "PutManifest"),
        // Blob bytes go without gRPC framing, beside `Put` (proto::bulk).
        (&blob, "PutBytes"),
        (&auth, "Authenticate"),
    ];
    let mut before = Vec::new();
    for (role, method) in counted {
        before.push(handled(&scrape(role).await, method));
    }

    // One push, every request carrying the client's trace context.
    let trace = hex::encode(rand::random::<[u8; 16]>());
    let traceparent = format!("00-{trace}-{}-01", hex::encode(rand::random::<[u8; 8]>()));
    let layer = random_bytes(10_000);
    let config = b"{}".to_vec();
    for blob in [&layer, &config] {
        let r = client
            .post(format!(
                "{}/v2/traced/app/blobs/uploads/?digest={}",
                gw.url,
                sha256(blob)
            ))
            .header("traceparent", &traceparent)
            .body(blob.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(&layer), "size": layer.len()}]});
    let r = client
        .put(format!("{}/v2/traced/app/manifests/v1", gw.url))
        .header("Content-Type", OCI_MANIFEST)
        .header("traceparent", &traceparent)
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Each role counted its calls on its own /metrics.
    for ((role, method), before) in counted.into_iter().zip(before) {
        let text = scrape(role).await;
        assert!(
            handled(&text, method) > before,
            "{method} not counted by {}:\n{text}",
            role.url
        );
        assert!(
            text.contains("grpc_server_handling_seconds_bucket"),
            "{text}"
        );
    }
    assert!(scrape(&blob).await.contains("capstan_blob_reads_total"));

    // Every role's spans of that trace reach the receiver.
    let want = [
        "capstan-gateway",
        "capstan-auth",
        "capstan-meta",
        "capstan-blob",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let spans = loop {
        let spans: Vec<Received> = receiver
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace == trace)
            .cloned()
            .collect();
        let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
        if want.iter().all(|w| services.iter().any(|s| s.contains(w))) {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans of the push reached the receiver only from {services:?}: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The gateway's three requests are children of the client's span; each
    // role's call is a child of a span of the trace.
    let ids: BTreeMap<&str, &Received> = spans.iter().map(|s| (s.span.as_str(), s)).collect();
    let client_span = &traceparent[36..52];
    let requests: Vec<_> = spans
        .iter()
        .filter(|s| s.service.contains("capstan-gateway") && s.parent == client_span)
        .collect();
    assert_eq!(requests.len(), 3, "{spans:#?}");
    for s in spans
        .iter()
        .filter(|s| !s.service.contains("capstan-gateway"))
    {
        assert!(
            ids.contains_key(s.parent.as_str()),
            "{s:?} has no parent in the trace"
        );
    }
    assert!(
        spans
            .iter()
            .any(|s| s.name == "/capstan.meta.v1.MetaService/PutManifest"),
        "{spans:#?}"
    );
}
