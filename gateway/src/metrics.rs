//! Prometheus metrics of the gateway, served at `GET /metrics`, with zot's
//! metric names where zot has one so existing dashboards keep working.

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
}
