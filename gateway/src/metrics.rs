//! Prometheus metrics of the gateway, served at `GET /metrics`, with zot's
//! metric names where zot has one so existing dashboards keep working.

use capstan_proto::blob::v1::BlobMetricsResponse;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// zot: requests by method and status code.
    requests: IntCounterVec,
    /// zot: latency by method.
    latency: HistogramVec,
    /// zot: manifest pulls by repository.
    downloads: IntCounterVec,
    /// zot: manifest pushes by repository.
    uploads: IntCounterVec,
    /// Request and response body bytes.
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    /// Manifest reads answered from the gateway's cache, and not.
    cache_hits: IntCounter,
    cache_misses: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "zot_http_requests_total",
                "HTTP requests by method and status code",
            ),
            &["method", "code"],
        )
        .expect("metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "zot_http_method_latency_seconds",
                "HTTP request latency by method",
            )
            .buckets(vec![
                0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0,
            ]),
            &["method"],
        )
        .expect("metric");
        let downloads = IntCounterVec::new(
            Opts::new(
                "zot_repo_downloads_total",
                "manifest downloads by repository",
            ),
            &["repo"],
        )
        .expect("metric");
        let uploads = IntCounterVec::new(
            Opts::new("zot_repo_uploads_total", "manifest uploads by repository"),
            &["repo"],
        )
        .expect("metric");
        let bytes_in = IntCounter::new("capstan_http_received_bytes_total", "request body bytes")
            .expect("metric");
        let bytes_out = IntCounter::new("capstan_http_sent_bytes_total", "response body bytes")
            .expect("metric");
        let cache_hits = IntCounter::new(
            "capstan_manifest_cache_hits_total",
            "manifest reads answered from the gateway cache",
        )
        .expect("metric");
        let cache_misses = IntCounter::new(
            "capstan_manifest_cache_misses_total",
            "manifest reads that asked svc-meta",
        )
        .expect("metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(downloads.clone()),
            Box::new(uploads.clone()),
            Box::new(bytes_in.clone()),
            Box::new(bytes_out.clone()),
            Box::new(cache_hits.clone()),
            Box::new(cache_misses.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        Self {
            registry,
            requests,
            latency,
            downloads,
            uploads,
            bytes_in,
            bytes_out,
            cache_hits,
            cache_misses,
        }
    }

    /// Record one finished request.
    pub fn request(&self, method: &str, status: u16, seconds: f64, bytes_in: u64, bytes_out: u64) {
        self.requests
            .with_label_values(&[method, &status.to_string()])
            .inc();
        self.latency.with_label_values(&[method]).observe(seconds);
        self.bytes_in.inc_by(bytes_in);
        self.bytes_out.inc_by(bytes_out);
    }

    pub fn manifest_pulled(&self, repo: &str) {
        self.downloads.with_label_values(&[repo]).inc();
    }

    pub fn manifest_pushed(&self, repo: &str) {
        self.uploads.with_label_values(&[repo]).inc();
    }

    pub fn cache(&self, hit: bool) {
        if hit {
            self.cache_hits.inc();
        } else {
            self.cache_misses.inc();
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The counters of svc-blob replicas, by endpoint, in the text format (the
/// replicas' own numbers, so written out rather than kept in a registry):
/// reads by path, and pushed blobs warmed or left cold.
pub fn render_blob_reads(replicas: &[(String, BlobMetricsResponse)]) -> String {
    use std::fmt::Write as _;
    if replicas.is_empty() {
        return String::new();
    }
    let label = |replica: &str| replica.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::from(
        "# HELP capstan_blob_reads_total Blob reads by svc-blob replica and path: \
         direct I/O, or the page cache (hot blobs)\n\
         # TYPE capstan_blob_reads_total counter\n",
    );
    for (replica, m) in replicas {
        let replica = label(replica);
        for (path, n) in [("direct", m.reads_direct), ("cached", m.reads_cached)] {
            let _ = writeln!(
                out,
                "capstan_blob_reads_total{{replica=\"{replica}\",path=\"{path}\"}} {n}"
            );
        }
    }
    type Field = fn(&BlobMetricsResponse) -> u64;
    let warming: [(&str, &str, &str, Field); 6] = [
        (
            "capstan_blob_warmed_total",
            "Pushed blobs read into the page cache after their commit, by svc-blob replica",
            "counter",
            |m| m.blobs_warmed,
        ),
        (
            "capstan_blob_warm_skipped_total",
            "Pushed blobs left out of the page cache because the warming queue was full",
            "counter",
            |m| m.warm_skipped,
        ),
        (
            "capstan_blob_warm_failed_total",
            "Pushed blobs the warming thread could not read (deleted meanwhile, or an I/O error)",
            "counter",
            |m| m.warm_failed,
        ),
        (
            "capstan_blob_warm_pending",
            "Pushed blobs waiting to be read into the page cache, or being read",
            "gauge",
            |m| m.warm_pending,
        ),
        (
            "capstan_scrub_blobs_total",
            "Blobs scrub read again and checked against their digest, by svc-blob replica",
            "counter",
            |m| m.scrubbed,
        ),
        (
            "capstan_scrub_corrupt_blobs_total",
            "Blobs scrub found corrupt and took out of service, by svc-blob replica",
            "counter",
            |m| m.corrupt,
        ),
    ];
    for (name, help, kind, value) in warming {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (replica, m) in replicas {
            let _ = writeln!(out, "{name}{{replica=\"{}\"}} {}", label(replica), value(m));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_zot_names_with_labels() {
        let m = Metrics::new();
        m.request("GET", 200, 0.002, 0, 10);
        m.manifest_pulled("lib/app");
        m.manifest_pushed("lib/app");
        m.cache(true);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(r#"zot_http_requests_total{code="200",method="GET"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"zot_repo_downloads_total{repo="lib/app"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"zot_repo_uploads_total{repo="lib/app"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("capstan_manifest_cache_hits_total 1"),
            "{text}"
        );
        assert!(
            text.contains("zot_http_method_latency_seconds_bucket"),
            "{text}"
        );
    }

    #[test]
    fn blob_reads_are_labelled_by_replica_and_path() {
        assert_eq!(render_blob_reads(&[]), "");
        let replica = |reads_direct, reads_cached, blobs_warmed| BlobMetricsResponse {
            reads_direct,
            reads_cached,
            blobs_warmed,
            warm_skipped: 0,
            warm_failed: 0,
            warm_pending: 1,
            scrubbed: 0,
            corrupt: 0,
        };
        let text = render_blob_reads(&[
            ("http://10.0.0.1:9001".into(), replica(3, 1, 2)),
            ("http://10.0.0.2:9001".into(), replica(0, 7, 0)),
        ]);
        assert_eq!(
            text.matches("# TYPE capstan_blob_reads_total counter")
                .count(),
            1
        );
        for line in [
            r#"capstan_blob_reads_total{replica="http://10.0.0.1:9001",path="direct"} 3"#,
            r#"capstan_blob_reads_total{replica="http://10.0.0.1:9001",path="cached"} 1"#,
            r#"capstan_blob_reads_total{replica="http://10.0.0.2:9001",path="cached"} 7"#,
            r#"capstan_blob_warmed_total{replica="http://10.0.0.1:9001"} 2"#,
            r#"capstan_blob_warm_skipped_total{replica="http://10.0.0.2:9001"} 0"#,
            "# TYPE capstan_blob_warmed_total counter",
            r#"capstan_blob_warm_pending{replica="http://10.0.0.1:9001"} 1"#,
            "# TYPE capstan_blob_warm_pending gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
