//! Blob pull: GET streaming, checking the bytes as they arrive, then verify
//! size and content. Given the generated content the blob was pushed from,
//! the client first checks that it hashes to the digest (unmeasured), then
//! verifies the bytes received with XXH3 of that content, which costs it
//! ~0.02 s per 256 MiB; otherwise it computes SHA-256 on a thread of its
//! own, which costs 0.17 s per 256 MiB and bounds the pull on a small
//! machine whose cores the servers share.

use crate::{
    content::Content,
    cpu::Meter,
    registry::{Registry, expect},
    report::{self, Figures, round},
};
use anyhow::{Result, bail};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::json;
use sha2::{Digest, Sha256};

pub async fn blob(
    reg: &Registry,
    repo: &str,
    digest: &str,
    expect_size: u64,
    content: Option<Content>,
) -> Result<Figures> {
    match content {
        Some(content) => checked(reg, repo, digest, expect_size, content).await,
        None => hashed(reg, repo, digest, expect_size).await,
    }
}

/// Verify with XXH3 of the known content.
async fn checked(
    reg: &Registry,
    repo: &str,
    digest: &str,
    expect_size: u64,
    content: Content,
) -> Result<Figures> {
    if content.size != expect_size {
        bail!(
            "the content's size {} is not the expected {expect_size}",
            content.size
        );
    }
    let (expected, sum) =
        tokio::task::spawn_blocking(move || (content.digest(), content.xxh3())).await?;
    if expected != digest {
        bail!("the seeded content hashes to {expected}, not {digest}");
    }
    let meter = Meter::start();
    let resp = reg
        .client
        .get(reg.url(&format!("/v2/{repo}/blobs/{digest}"))?)
        .send()
        .await?;
    let resp = expect(resp, &[StatusCode::OK], "GET blob").await?;
    let first_byte = meter.stop().seconds;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut received = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        received += chunk.len() as u64;
        h.update(&chunk);
    }
    let m = meter.stop();
    if received != expect_size {
        bail!("GET blob: received {received} bytes, expected {expect_size}");
    }
    if h.digest() != sum {
        bail!("GET blob: the bytes received differ from the content pushed as {digest}");
    }
    let mut f = report::measured(m);
    report::throughput(&mut f, received, m);
    f.insert("first_byte_s".into(), json!(round(first_byte, 4)));
    f.insert("digest".into(), json!(digest));
    f.insert("verified".into(), json!("xxh3 of the seeded content"));
    Ok(f)
}

/// Verify with SHA-256 of the bytes received.
async fn hashed(reg: &Registry, repo: &str, digest: &str, expect_size: u64) -> Result<Figures> {
    let meter = Meter::start();
    let resp = reg
        .client
        .get(reg.url(&format!("/v2/{repo}/blobs/{digest}"))?)
        .send()
        .await?;
    let resp = expect(resp, &[StatusCode::OK], "GET blob").await?;
    let first_byte = meter.stop().seconds;
    // Hash on its own thread so that reading the socket never waits for SHA-256.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(256);
    let hasher = tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256::new();
        while let Some(chunk) = rx.blocking_recv() {
            hasher.update(&chunk);
        }
        format!("sha256:{}", hex::encode(hasher.finalize()))
    });
    let mut received = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        received += chunk.len() as u64;
        if tx.send(chunk).await.is_err() {
            bail!("GET blob: the hashing thread stopped");
        }
    }
    drop(tx);
    let got = hasher.await?;
    let m = meter.stop();
    if received != expect_size {
        bail!("GET blob: received {received} bytes, expected {expect_size}");
    }
    if got != digest {
        bail!("GET blob: content hashes to {got}, expected {digest}");
    }
    let mut f = report::measured(m);
    report::throughput(&mut f, received, m);
    f.insert("first_byte_s".into(), json!(round(first_byte, 4)));
    f.insert("digest".into(), json!(digest));
    f.insert("verified".into(), json!("sha256"));
    Ok(f)
}
