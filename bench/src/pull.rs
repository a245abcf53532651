//! Blob pull: GET streaming, hashing as the bytes arrive, then verify size and digest.

use crate::{
    cpu::Meter,
    registry::{Registry, expect},
    report::{self, Figures, round},
};
use anyhow::{Result, bail};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::json;
use sha2::{Digest, Sha256};

pub async fn blob(reg: &Registry, repo: &str, digest: &str, expect_size: u64) -> Result<Figures> {
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
    f.insert("verified".into(), json!(true));
    Ok(f)
}
