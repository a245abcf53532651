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
    let mut check = match content {
        Some(content) => Check::xxh3(content, digest, expect_size).await?,
        None => Check::sha256(),
    };
    let meter = Meter::start();
    let resp = reg
        .client
        .get(reg.url(&format!("/v2/{repo}/blobs/{digest}"))?)
        .send()
        .await?;
    let resp = expect(resp, &[StatusCode::OK], "GET blob").await?;
    let first_byte = meter.stop().seconds;
    let mut received = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        received += chunk.len() as u64;
        check.feed(chunk).await?;
    }
    let verified = check.finish(digest).await;
    let m = meter.stop();
    if received != expect_size {
        bail!("GET blob: received {received} bytes, expected {expect_size}");
    }
    let verified = verified?;
    let mut f = report::measured(m);
    report::throughput(&mut f, received, m);
    f.insert("first_byte_s".into(), json!(round(first_byte, 4)));
    f.insert("digest".into(), json!(digest));
    f.insert("verified".into(), json!(verified));
    Ok(f)
}

/// How the bytes received are verified.
enum Check {
    /// XXH3 of the known content, inline.
    Xxh3 {
        hasher: Box<xxhash_rust::xxh3::Xxh3>,
        want: u64,
    },
    /// SHA-256 on its own thread, so that reading the socket never waits
    /// for it.
    Sha256 {
        tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
        hashed: tokio::task::JoinHandle<String>,
    },
}

impl Check {
    /// Check first (unmeasured) that `content` is the blob `digest`.
    async fn xxh3(content: Content, digest: &str, expect_size: u64) -> Result<Self> {
        if content.size != expect_size {
            bail!(
                "the content's size {} is not the expected {expect_size}",
                content.size
            );
        }
        let (expected, want) =
            tokio::task::spawn_blocking(move || (content.digest(), content.xxh3())).await?;
        if expected != digest {
            bail!("the seeded content hashes to {expected}, not {digest}");
        }
        Ok(Check::Xxh3 {
            hasher: Box::new(xxhash_rust::xxh3::Xxh3::new()),
            want,
        })
    }

    fn sha256() -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(256);
        let hashed = tokio::task::spawn_blocking(move || {
            let mut hasher = Sha256::new();
            while let Some(chunk) = rx.blocking_recv() {
                hasher.update(&chunk);
            }
            format!("sha256:{}", hex::encode(hasher.finalize()))
        });
        Check::Sha256 { tx, hashed }
    }

    async fn feed(&mut self, chunk: bytes::Bytes) -> Result<()> {
        match self {
            Check::Xxh3 { hasher, .. } => hasher.update(&chunk),
            Check::Sha256 { tx, .. } => {
                if tx.send(chunk).await.is_err() {
                    bail!("GET blob: the hashing thread stopped");
                }
            }
        }
        Ok(())
    }

    /// Verify everything fed against `digest`; what was checked.
    async fn finish(self, digest: &str) -> Result<&'static str> {
        match self {
            Check::Xxh3 { hasher, want } => {
                if hasher.digest() != want {
                    bail!(
                        "GET blob: the bytes received differ from the content pushed as {digest}"
                    );
                }
                Ok("xxh3 of the seeded content")
            }
            Check::Sha256 { tx, hashed } => {
                drop(tx);
                let got = hashed.await?;
                if got != digest {
                    bail!("GET blob: content hashes to {got}, expected {digest}");
                }
                Ok("sha256")
            }
        }
    }
}
