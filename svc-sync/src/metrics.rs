//! Sync progress per upstream, in Prometheus form: images and blobs copied,
//! bytes, failures, and when the last success was. The gateway serves these
//! with its own metrics (`SyncService.Metrics`).

use prometheus::{Encoder as _, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct SyncMetrics {
    registry: Registry,
    images: IntCounterVec,
    blobs: IntCounterVec,
    bytes: IntCounterVec,
    failures: IntCounterVec,
    last_success: IntGaugeVec,
}

impl SyncMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &["upstream"]).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let images = counter(
            "capstan_sync_images_total",
            "Images (manifests) copied from the upstream",
        );
        let blobs = counter("capstan_sync_blobs_total", "Blobs copied from the upstream");
        let bytes = counter(
            "capstan_sync_bytes_total",
            "Blob bytes copied from the upstream",
        );
        let failures = counter(
            "capstan_sync_failures_total",
            "Failed syncs (pull-through or mirror rounds)",
        );
        let last_success = IntGaugeVec::new(
            Opts::new(
                "capstan_sync_last_success_timestamp_seconds",
                "Unix time of the last successful sync from the upstream",
            ),
            &["upstream"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(last_success.clone()))
            .expect("unique metric");
        Self {
            registry,
            images,
            blobs,
            bytes,
            failures,
            last_success,
        }
    }

    fn touch(&self, upstream: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        self.last_success.with_label_values(&[upstream]).set(now);
    }

    pub fn image(&self, upstream: &str, n: u64) {
        self.images.with_label_values(&[upstream]).inc_by(n);
        self.touch(upstream);
    }

    pub fn blob(&self, upstream: &str, bytes: u64) {
        self.blobs.with_label_values(&[upstream]).inc();
        self.bytes.with_label_values(&[upstream]).inc_by(bytes);
        self.touch(upstream);
    }

    pub fn failure(&self, upstream: &str) {
        self.failures.with_label_values(&[upstream]).inc();
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl Default for SyncMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_upstream() {
        let m = SyncMetrics::new();
        m.image("https://a", 2);
        m.blob("https://a", 100);
        m.failure("https://b");
        let text = m.render();
        assert!(
            text.contains("capstan_sync_images_total{upstream=\"https://a\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("capstan_sync_bytes_total{upstream=\"https://a\"} 100"),
            "{text}"
        );
        assert!(
            text.contains("capstan_sync_failures_total{upstream=\"https://b\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("capstan_sync_last_success_timestamp_seconds{upstream=\"https://a\"}")
        );
    }
}
