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
            "SELECT pull_count || '|' || pulled_at FROM manifest_pulls \
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

/// Push config + one layer and an image manifest (with `subject` when
/// given) to `repo` under `reference`; returns its digest and size.
async fn push_one(
    sb: &Sandbox,
    repo: &str,
    reference: &str,
    subject: Option<(&str, usize)>,
) -> (String, usize) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","ref":"{reference}"}}"#);
    let cd = sb.push_blob(repo, config.as_bytes()).await;
    let layer = crate::oci::random_bytes(100);
    let ld = sb.push_blob(repo, &layer).await;
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}],
    });
    if let Some((d, size)) = subject {
        m["subject"] = json!({"mediaType": OCI_MANIFEST, "digest": d, "size": size});
    }
    let size = serde_json::to_vec(&m).unwrap().len();
    (
        sb.put_manifest(repo, reference, OCI_MANIFEST, &m).await,
        size,
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Wait for the clock to pass a whole second, so the next push is younger.
async fn next_second() {
    let start = unix_now();
    while unix_now() == start {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The retention decisions a log holds, each from its message on, without
/// the dry-run field (which alone differs between a dry and a real run).
fn decisions(log: &str) -> Vec<String> {
    let mut out: Vec<String> = log
        .lines()
        .filter_map(|l| {
            [
                "applied policy",
                "removed untagged manifest",
                "removed manifest without reference",
            ]
            .iter()
            .find_map(|m| l.find(m).map(|i| &l[i..]))
        })
        .map(|l| {
            l.split_whitespace()
                .filter(|w| !w.starts_with("dry-run="))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    out.sort();
    out
}

/// (repo, tag or "", digest, reason) of every retention entry of a report.
fn retained(
    report: &serde_json::Value,
) -> std::collections::BTreeSet<(String, String, String, String)> {
    report["retention"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["repo"].as_str().unwrap().to_string(),
                e["tag"].as_str().unwrap_or("").to_string(),
                e["digest"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// zot's retention, end to end: `mostRecentlyPushedCount: 1` keeps exactly
/// the newest tag of its pattern (zot#3804); the untagged manifest it
/// leaves goes after `delay`, and so does a referrer whose subject went
/// (`deleteReferrers`); the platform manifests of a tagged index stay
/// (distribution#3178); a dry run changes nothing and reports exactly what
/// the real run then removes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_what_its_rules_say_and_the_dry_run_says_it_first() {
    let mut sb = Sandbox::start_with(json!({"storage": {
    "gcDelay": "2s", "gcInterval": "0s",
    "retention": {"delay": "2s", "policies": [{
        "repositories": ["app"], "deleteReferrers": true,
        "keepTags": [
            {"patterns": ["^v"], "mostRecentlyPushedCount": 1},
            {"patterns": ["^multi$"]}
        ]}]}}}))
    .await;
    let (old, old_size) = push_one(&sb, "app", "v1", None).await;
    let (sig, _) = push_one(&sb, "app", "sig", Some((&old, old_size))).await;
    // The signature was pushed by tag only to get it there; untag it.
    assert_eq!(sb.delete("/v2/app/manifests/sig").await.status(), 202);
    let (loose, _) = push_one(&sb, "app", "loose", None).await;
    assert_eq!(sb.delete("/v2/app/manifests/loose").await.status(), 202);
    // An index whose platform manifests are untagged.
    let (amd, amd_size) = push_one(&sb, "app", "amd", None).await;
    let (arm, arm_size) = push_one(&sb, "app", "arm", None).await;
    for t in ["amd", "arm"] {
        assert_eq!(
            sb.delete(&format!("/v2/app/manifests/{t}")).await.status(),
            202
        );
    }
    let index = json!({"schemaVersion": 2, "mediaType": crate::oci::OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": amd, "size": amd_size, "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": OCI_MANIFEST, "digest": arm, "size": arm_size, "platform": {"architecture": "arm64", "os": "linux"}}]});
    sb.put_manifest("app", "multi", crate::oci::OCI_INDEX, &index)
        .await;
    next_second().await;
    let (new, _) = push_one(&sb, "app", "v2", None).await;

    let expected = std::collections::BTreeSet::from([
        (
            "app".to_string(),
            "v1".to_string(),
            old.clone(),
            "didn't meet any tag retention rule".to_string(),
        ),
        (
            "app".into(),
            "".into(),
            old.clone(),
            "deleteUntagged".into(),
        ),
        (
            "app".into(),
            "".into(),
            loose.clone(),
            "deleteUntagged".into(),
        ),
        (
            "app".into(),
            "".into(),
            sig.clone(),
            "deleteReferrers".into(),
        ),
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (planned, planned_log) = loop {
        let (report, log) = crate::gc::gc_logged(&sb, true);
        if retained(&report) == expected {
            break (report, log);
        }
        assert!(
            Instant::now() < deadline,
            "retention never planned {expected:?}: {report}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Nothing changed.
    for r in ["v1", &loose] {
        assert_eq!(
            sb.head(&format!("/v2/app/manifests/{r}")).await.status(),
            200
        );
    }
    // The real run, with the registry stopped (its cache would not hear).
    sb.proc.kill();
    let (done, done_log) = crate::gc::gc_logged(&sb, false);
    sb.start_again().await;
    assert_eq!(retained(&done), retained(&planned));
    // The dry run logged exactly the decisions the real run then logged.
    let planned_lines = decisions(&planned_log);
    assert_eq!(planned_lines.len(), expected.len(), "{planned_log}");
    assert_eq!(planned_lines, decisions(&done_log));
    let sb = &sb;
    let status = |r: String| async move { sb.head(&r).await.status() };
    for gone in ["v1".to_string(), old, loose, sig] {
        assert_eq!(
            status(format!("/v2/app/manifests/{gone}")).await,
            404,
            "{gone}"
        );
    }
    for kept in ["v2".to_string(), new, "multi".into(), amd, arm] {
        assert_eq!(
            status(format!("/v2/app/manifests/{kept}")).await,
            200,
            "{kept}"
        );
    }
}

/// Tags that share one digest are deleted one by one, and the manifest
/// stays while a tag names it (harbor#8717).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_sharing_a_digest_are_deleted_one_by_one() {
    let sb = Sandbox::start().await;
    let (digest, m) = sb.push_image("shared", "a", 1).await;
    sb.put_manifest("shared", "b", OCI_MANIFEST, &m).await;
    assert_eq!(sb.delete("/v2/shared/manifests/a").await.status(), 202);
    assert_eq!(sb.head("/v2/shared/manifests/a").await.status(), 404);
    assert_eq!(sb.head("/v2/shared/manifests/b").await.status(), 200);
    assert_eq!(
        sb.head(&format!("/v2/shared/manifests/{digest}"))
            .await
            .status(),
        200
    );
    assert_eq!(sb.delete("/v2/shared/manifests/b").await.status(), 202);
    assert_eq!(
        sb.head(&format!("/v2/shared/manifests/{digest}"))
            .await
            .status(),
        200
    );
}

/// Retention run by the registry itself (every `gcInterval`) removes a tag
/// a client had just pulled: the gateway's manifest cache hears of it, and
/// the tag answers 404 rather than from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_retention_reaches_the_manifest_cache() {
    let sb = Sandbox::start_with(json!({"storage": {
        "gcDelay": "1s", "gcInterval": "1s",
        "retention": {"delay": "1s", "policies": [{
            "repositories": ["cached"],
            "keepTags": [{"patterns": ["^keep$"]}]}]}}}))
    .await;
    let (_, m) = sb.push_image("cached", "keep", 1).await;
    sb.put_manifest("cached", "drop", OCI_MANIFEST, &m).await;
    // Pulled, so the gateway caches it.
    assert_eq!(sb.get("/v2/cached/manifests/drop").await.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !sb
        .proc
        .log_text()
        .contains("didn't meet any tag 'patterns' rules")
    {
        assert!(Instant::now() < deadline, "retention never removed the tag");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The cache has no expiry: only the change feed can turn this to 404
    // (it reaches the gateway a moment after the commit).
    while sb.head("/v2/cached/manifests/drop").await.status() != 404 {
        assert!(
            Instant::now() < deadline,
            "the cache still serves the removed tag"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sb.head("/v2/cached/manifests/keep").await.status(), 200);
}
