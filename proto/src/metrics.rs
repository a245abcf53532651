//! svc-blob's counters in Prometheus text form, as svc-blob serves them on
//! its own `/metrics` and as the gateway adds them (every replica's) to
//! its `/metrics`.

use crate::blob::v1::BlobMetricsResponse;

/// The counters of svc-blob replicas, by endpoint, in the text format (the
/// replicas' own numbers, so written out rather than kept in a registry):
/// reads by path, and pushed blobs warmed or left cold.
pub fn render_blob(replicas: &[(String, BlobMetricsResponse)]) -> String {
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
    fn blob_reads_are_labelled_by_replica_and_path() {
        assert_eq!(render_blob(&[]), "");
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
        let text = render_blob(&[
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
