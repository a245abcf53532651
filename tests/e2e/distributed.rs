//! Distributed mode: gateway, meta and two svc-blob replicas as separate
//! processes; a chunked upload alternates between the blob replicas.

use crate::oci::*;
use crate::sandbox::{Process, wait_ready};
use serde_json::json;

#[tokio::test]
async fn chunked_upload_alternates_between_two_blob_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        serde_json::to_vec(&json!({"storage": {"rootDirectory": dir.path().join("data")}}))
            .unwrap(),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let role = |r: &str, log: &str| {
        Process::spawn(
            &["-c", c, "--role", r, "--listen", "127.0.0.1:0"],
            &dir.path().join(log),
        )
    };
    let meta = role("meta", "meta.log");
    let blob_a = role("blob", "blob-a.log");
    let blob_b = role("blob", "blob-b.log");
    let gw_cfg = dir.path().join("gateway.json");
    std::fs::write(
        &gw_cfg,
        serde_json::to_vec(&json!({
            "storage": {"rootDirectory": dir.path().join("data")},
            "http": {"port": 0},
            "services": {
                "meta": {"endpoints": [meta.url]},
                "blob": {"endpoints": [blob_a.url, blob_b.url]}
            }
        }))
        .unwrap(),
    )
    .unwrap();
    let gw = Process::spawn(
        &["-c", gw_cfg.to_str().unwrap(), "--role", "gateway"],
        &dir.path().join("gateway.log"),
    );
    let client = reqwest::Client::new();
    wait_ready(&client, &format!("{}/v2/", gw.url)).await;

    let data = random_bytes(4 * 1024 * 1024 + 3);
    let d = sha256(&data);
    let r = client
        .post(format!("{}/v2/dist/blobs/uploads/", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mut loc = r.headers()["location"].to_str().unwrap().to_string();
    let id = loc.rsplit('/').next().unwrap().to_string();
    let step = 1024 * 1024;
    for start in (0..data.len()).step_by(step) {
        let end = (start + step).min(data.len());
        let r = client
            .patch(format!("{}{loc}", gw.url))
            .header("Content-Range", format!("{start}-{}", end - 1))
            .body(data[start..end].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        loc = r.headers()["location"].to_str().unwrap().to_string();
    }
    let r = client
        .put(format!("{}{loc}?digest={d}", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    // Both replicas appended to this upload.
    for replica in [&blob_a, &blob_b] {
        let log = replica.log_text();
        let appends = log
            .lines()
            .filter(|l| l.contains(&id) && l.contains("append"))
            .count();
        assert!(
            appends >= 2,
            "replica {} appended {appends} times:\n{log}",
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
