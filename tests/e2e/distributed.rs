//! Distributed mode: gateway, meta and two svc-blob replicas as separate
//! processes; a chunked upload alternates between the blob replicas; two
//! gateways stay current with each other's writes, through one meta or two
//! meta replicas sharing a Postgres.

use crate::oci::*;
use crate::sandbox::{Process, wait_readyz};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// Push `data` to `repo` through the gateway at `base` as a chunked upload
/// of `step`-byte PATCHes with Content-Range, then commit it; returns the
/// upload's id.
pub(crate) async fn chunked_upload(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    data: &[u8],
    step: usize,
) -> String {
    let r = client
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mut loc = r.headers()["location"].to_str().unwrap().to_string();
    let id = loc.rsplit('/').next().unwrap().to_string();
    for start in (0..data.len()).step_by(step) {
        let end = (start + step).min(data.len());
        let r = client
            .patch(format!("{base}{loc}"))
            .header("Content-Range", format!("{start}-{}", end - 1))
            .body(data[start..end].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        loc = r.headers()["location"].to_str().unwrap().to_string();
    }
    let r = client
        .put(format!("{base}{loc}?digest={}", sha256(data)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    id
}

/// How many writes to upload `id` a blob replica logged.
pub(crate) fn appends_to(replica: &Process, id: &str) -> usize {
    replica
        .log_text()
        .lines()
        .filter(|l| l.contains(id) && l.contains("append"))
        .count()
}

/// Start a gateway role for `meta` and `blobs` with its own config file.
fn gateway(dir: &Path, name: &str, meta: &[&str], blobs: &[&str]) -> Process {
    let cfg = dir.join(format!("{name}.json"));
    std::fs::write(
        &cfg,
        serde_json::to_vec(&json!({
            "storage": {"rootDirectory": dir.join("data")},
            "http": {"port": 0},
            "services": {"meta": {"endpoints": meta}, "blob": {"endpoints": blobs}}
        }))
        .unwrap(),
    )
    .unwrap();
    Process::spawn(
        &["-c", cfg.to_str().unwrap(), "--role", "gateway"],
        &dir.join(format!("{name}.log")),
    )
}

/// Start a gRPC role (`meta`, `blob`, …) on a port the OS picks; every role
/// of a test shares `dir/data`.
fn role(dir: &Path, role: &str, log: &str) -> Process {
    role_at(dir, role, "127.0.0.1:0", log)
}

/// [`role`] listening on `listen`.
pub(crate) fn role_at(dir: &Path, role: &str, listen: &str, log: &str) -> Process {
    let cfg = dir.join("config.json");
    if !cfg.exists() {
        std::fs::write(
            &cfg,
            serde_json::to_vec(&json!({"storage": {"rootDirectory": dir.join("data")}})).unwrap(),
        )
        .unwrap();
    }
    Process::role(&cfg, role, listen, &dir.join(log), &[])
}

#[tokio::test]
async fn chunked_upload_alternates_between_two_blob_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let meta = role(dir.path(), "meta", "meta.log");
    let blob_a = role(dir.path(), "blob", "blob-a.log");
    let blob_b = role(dir.path(), "blob", "blob-b.log");
    let gw = gateway(
        dir.path(),
        "gateway",
        &[&meta.url],
        &[&blob_a.url, &blob_b.url],
    );
    let client = reqwest::Client::new();
    wait_readyz(&client, &gw.url).await;
    wait_serving(&client, &gw, "blob", 2).await;

    let data = random_bytes(4 * 1024 * 1024 + 3);
    let d = sha256(&data);
    let id = chunked_upload(&client, &gw.url, "dist", &data, 1024 * 1024).await;
    // Both replicas appended to this upload.
    for replica in [&blob_a, &blob_b] {
        let appends = appends_to(replica, &id);
        assert!(
            appends >= 2,
            "replica {} appended {appends} times",
            replica.url
        );
    }
    // Served back intact, through either replica.
    for _ in 0..2 {
        let r = client
            .get(format!("{}/v2/dist/blobs/{d}", gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(sha256(&r.bytes().await.unwrap()), d);
    }
    drop(gw);
    drop(meta);
}

#[tokio::test]
async fn a_tag_moved_through_one_gateway_is_seen_through_another() {
    let dir = tempfile::tempdir().unwrap();
    let meta = role(dir.path(), "meta", "meta.log");
    let blob = role(dir.path(), "blob", "blob.log");
    let a = gateway(dir.path(), "gw-a", &[&meta.url], &[&blob.url]);
    let b = gateway(dir.path(), "gw-b", &[&meta.url], &[&blob.url]);
    moves_and_deletes_are_seen_across(&a, &b).await;
}

/// A Postgres of its own and two svc-meta replicas on it (storage root
/// `dir/data`, logs `dir/meta-N.log`).
pub(crate) async fn metas_on_postgres(dir: &Path) -> (capstan_testkit::Postgres, [Process; 2]) {
    let pg = tokio::task::spawn_blocking(capstan_testkit::Postgres::start)
        .await
        .unwrap();
    let url = pg.create_database("meta");
    let cfg = dir.join("pg.json");
    std::fs::write(
        &cfg,
        serde_json::to_vec(&json!({"storage": {
            "rootDirectory": dir.join("data"), "database": url}}))
        .unwrap(),
    )
    .unwrap();
    let meta = |log: &str| {
        let args = ["-c", cfg.to_str().unwrap(), "--role", "meta"];
        Process::spawn(
            &[&args[..], &["--listen", "127.0.0.1:0"]].concat(),
            &dir.join(log),
        )
    };
    (pg, [meta("meta-1.log"), meta("meta-2.log")])
}

/// Two svc-meta replicas on one Postgres, each behind its own gateway: a
/// gateway's manifest cache follows the other replica's writes, which its
/// own replica hears through Postgres.
#[tokio::test]
async fn two_meta_replicas_on_postgres_keep_every_gateway_current() {
    let dir = tempfile::tempdir().unwrap();
    let (_pg, [meta_1, meta_2]) = metas_on_postgres(dir.path()).await;
    let blob = role(dir.path(), "blob", "blob.log");
    let a = gateway(dir.path(), "gw-a", &[&meta_1.url], &[&blob.url]);
    let b = gateway(dir.path(), "gw-b", &[&meta_2.url], &[&blob.url]);
    moves_and_deletes_are_seen_across(&a, &b).await;
    // Nothing of the namespace went to the SQLite file of the storage root.
    assert!(!dir.path().join("data/meta.db").exists());
}

/// Push `latest` through `a`, read it through `b` (cached there), move it
/// through `a`, and see `b` follow; delete it through `b` and see `a`
/// follow.
async fn moves_and_deletes_are_seen_across(a: &Process, b: &Process) {
    let client = reqwest::Client::new();
    for g in [&a, &b] {
        wait_readyz(&client, &g.url).await;
    }
    let push = |gw: String, note: &'static str| {
        let client = client.clone();
        async move {
            let cfg = b"{}".to_vec();
            let d = sha256(&cfg);
            let r = client
                .post(format!("{gw}/v2/shared/blobs/uploads/?digest={d}"))
                .body(cfg)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            let m = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d, "size": 2},
                "layers": [], "annotations": {"note": note}}))
            .unwrap();
            let r = client
                .put(format!("{gw}/v2/shared/manifests/latest"))
                .header("Content-Type", OCI_MANIFEST)
                .body(m.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            sha256(&m)
        }
    };
    let digest_via = |gw: String| {
        let client = client.clone();
        async move {
            let r = client
                .get(format!("{gw}/v2/shared/manifests/latest"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.headers()["docker-content-digest"]
                .to_str()
                .unwrap()
                .to_string()
        }
    };
    let first = push(a.url.clone(), "first").await;
    // Read through B twice so B has it cached.
    assert_eq!(digest_via(b.url.clone()).await, first);
    assert_eq!(digest_via(b.url.clone()).await, first);
    let second = push(a.url.clone(), "second").await;
    // A reads its own write at once.
    assert_eq!(digest_via(a.url.clone()).await, second);
    // B follows through the change feed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = digest_via(b.url.clone()).await;
        if seen == second {
            break;
        }
        assert_eq!(seen, first);
        assert!(
            Instant::now() < deadline,
            "gateway B still serves the old tag"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Deleting through B is seen through A.
    let r = client
        .delete(format!("{}/v2/shared/manifests/latest", b.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client
            .get(format!("{}/v2/shared/manifests/latest", a.url))
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gateway A still serves a deleted tag"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait until the gateway's health checks find `n` replicas of `role`
/// serving (so that calls go round all of them).
pub(crate) async fn wait_serving(client: &reqwest::Client, gw: &Process, role: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = readyz(client, gw).await;
        if serving(&body, role) == n {
            return;
        }
        assert!(Instant::now() < deadline, "{role}: not {n} serving: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/readyz` as the gateway answers it: the JSON body and the status.
pub(crate) async fn readyz(client: &reqwest::Client, gw: &Process) -> (u16, serde_json::Value) {
    let r = client
        .get(format!("{}/readyz", gw.url))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// The serving replicas of `role` in a `/readyz` body.
pub(crate) fn serving(body: &serde_json::Value, role: &str) -> u64 {
    body["roles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == role)
        .and_then(|r| r["serving"].as_u64())
        .unwrap_or(0)
}

/// zot's probes (`/livez`, `/startupz`, `/readyz`) answer without
/// credentials; a blob replica killed is skipped once its health check
/// fails, so no blob GET fails from then on (issue 13's report: with one
/// of two blob replicas killed, every other blob GET failed); `/readyz`
/// turns 503 only when no replica of a role serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_blob_replica_is_skipped_and_readyz_follows_the_roles() {
    let dir = tempfile::tempdir().unwrap();
    let meta = role(dir.path(), "meta", "meta.log");
    let mut blob_a = role(dir.path(), "blob", "blob-a.log");
    let mut blob_b = role(dir.path(), "blob", "blob-b.log");
    let gw = gateway(
        dir.path(),
        "gateway",
        &[&meta.url],
        &[&blob_a.url, &blob_b.url],
    );
    let client = reqwest::Client::new();
    wait_readyz(&client, &gw.url).await;
    for probe in ["/livez", "/startupz"] {
        let r = client
            .get(format!("{}{probe}", gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{probe}");
    }
    let wait_for = |what: &'static str, want: fn(u16, &serde_json::Value) -> bool| {
        let (client, gw) = (&client, &gw);
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let (status, body) = readyz(client, gw).await;
                if want(status, &body) {
                    return body;
                }
                assert!(Instant::now() < deadline, "{what}: {status} {body}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for("ready with both blob replicas", |s, b| {
        s == 200 && serving(b, "blob") == 2 && serving(b, "meta") == 1
    })
    .await;

    let data = random_bytes(300_000);
    let d = sha256(&data);
    let r = client
        .post(format!("{}/v2/ha/app/blobs/uploads/?digest={d}", gw.url))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    blob_a.kill();
    wait_for("one blob replica left", |s, b| {
        s == 200 && serving(b, "blob") == 1
    })
    .await;
    for i in 0..20 {
        let r = client
            .get(format!("{}/v2/ha/app/blobs/{d}", gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {i} with one replica down");
        assert_eq!(r.bytes().await.unwrap(), data);
    }
    blob_b.kill();
    let body = wait_for("no blob replica", |s, _| s == 503).await;
    assert_eq!(serving(&body, "blob"), 0);
    let r = client
        .get(format!("{}/readyz", gw.url))
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("retry-after"));
}

/// A blob GET whose svc-blob replica dies mid-stream goes on from another
/// replica at the offset already sent: the client sees one uninterrupted,
/// intact response (issue 13). Four GETs are opened round the two replicas
/// and read a little; then one replica is killed with SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_get_survives_its_replica_dying_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let meta = role(dir.path(), "meta", "meta.log");
    let mut blob_a = role(dir.path(), "blob", "blob-a.log");
    let blob_b = role(dir.path(), "blob", "blob-b.log");
    let gw = gateway(
        dir.path(),
        "gateway",
        &[&meta.url],
        &[&blob_a.url, &blob_b.url],
    );
    let client = reqwest::Client::new();
    wait_readyz(&client, &gw.url).await;
    let data = random_bytes(64 * 1024 * 1024);
    let d = sha256(&data);
    let r = client
        .post(format!("{}/v2/ha/big/blobs/uploads/?digest={d}", gw.url))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut gets = Vec::new();
    for _ in 0..4 {
        let mut r = client
            .get(format!("{}/v2/ha/big/blobs/{d}", gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let first = r.chunk().await.unwrap().expect("a first chunk");
        gets.push((r, first.to_vec()));
    }
    blob_a.kill();
    for (mut r, mut got) in gets {
        while let Some(chunk) = r.chunk().await.expect("the response goes on") {
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got.len(), data.len());
        assert_eq!(sha256(&got), d, "the bytes changed on the way");
    }
    assert!(
        gw.log_text()
            .contains("blob stream broke; resuming from another replica"),
        "no stream was cut: the test did not test"
    );
    drop(blob_b);
}

/// Two meta replicas on one Postgres behind one gateway: with one killed,
/// reads go on at once on the other (a call to the dead one is made again
/// there), before any health check notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_on_when_a_meta_replica_dies() {
    let dir = tempfile::tempdir().unwrap();
    let (_pg, [mut meta_1, meta_2]) = metas_on_postgres(dir.path()).await;
    let blob = role(dir.path(), "blob", "blob.log");
    let gw = gateway(dir.path(), "gw", &[&meta_1.url, &meta_2.url], &[&blob.url]);
    let client = reqwest::Client::new();
    wait_readyz(&client, &gw.url).await;
    wait_serving(&client, &gw, "meta", 2).await;
    let data = random_bytes(1000);
    let d = sha256(&data);
    let r = client
        .post(format!("{}/v2/ha/meta/blobs/uploads/?digest={d}", gw.url))
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    meta_1.kill();
    // At once: the health checks have not noticed yet.
    for i in 0..20 {
        for path in [
            "/v2/_catalog".to_string(),
            "/v2/ha/meta/tags/list".to_string(),
            format!("/v2/ha/meta/blobs/{d}"),
        ] {
            let r = client
                .get(format!("{}{path}", gw.url))
                .send()
                .await
                .unwrap();
            let status = r.status();
            assert!(
                status == 200 || (path.contains("tags") && status == 404),
                "read {i} of {path}: {status} {}",
                r.text().await.unwrap()
            );
        }
    }
    drop(meta_2);
}
