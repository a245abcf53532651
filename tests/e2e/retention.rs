//! Retention's inputs and `storage.retention` against the real binary.

use crate::oci::OCI_MANIFEST;
use crate::sandbox::Sandbox;
use serde_json::json;
use std::time::{Duration, Instant};

/// `SELECT pull_count, pulled_at` of a manifest, read from the sandbox's
/// SQLite database with the `sqlite3` client.
fn pull_stats(sb: &Sandbox, repo: &str, digest: &str) -> (u64, Option<i64>) {
    let db = sb.dir.path().join("data/meta.db");
    let out = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(format!(
            "SELECT pull_count || '|' || COALESCE(pulled_at, '') FROM manifests \
             WHERE repo = '{repo}' AND digest = '{digest}'"
        ))
        .output()
        .expect("sqlite3");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (count, at) = text.split_once('|').unwrap_or(("0", ""));
    (count.parse().unwrap_or(0), at.parse().ok())
}

/// Pulls answered from the gateway's manifest cache still reach svc-meta,
/// by tag and by digest; a HEAD is no pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_answered_from_the_cache_are_counted_in_svc_meta() {
    let sb = Sandbox::start_with(json!({})).await;
    let (digest, _) = sb.push_image("counted", "v1", 1).await;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for reference in ["v1", "v1", "v1", &digest, &digest] {
        let r = sb
            .client
            .get(sb.url(&format!("/v2/counted/manifests/{reference}")))
            .header("Accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(sb.head("/v2/counted/manifests/v1").await.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (count, at) = pull_stats(&sb, "counted", &digest);
        if count == 5 {
            assert!(at.is_some_and(|t| t >= started), "pulled_at {at:?}");
            break;
        }
        assert!(count < 5, "{count} pulls counted for 5 GETs and a HEAD");
        assert!(Instant::now() < deadline, "pulls not reported: {count}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
