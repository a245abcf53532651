//! Small images: a ~200 B config blob, one 4 KiB layer and an OCI manifest
//! PUT by tag, pushed many at a time (`small-images`) or once,
//! deterministically, to seed the manifest-read scenario (`seed-manifest`).

use crate::{
    cli::UploadMethod,
    content::digest_of,
    cpu::Meter,
    registry::{Registry, bytes_body, expect},
    report::{self, Figures, round},
};
use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use rand::{RngCore, SeedableRng, rngs::SmallRng};
use reqwest::{StatusCode, header};
use serde_json::json;
use std::{path::Path, time::Instant};

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const LAYER_SIZE: usize = 4096;

#[derive(Debug)]
struct Image {
    config: Vec<u8>,
    layer: Vec<u8>,
    manifest: Vec<u8>,
}

impl Image {
    fn new(label: &str, rng: &mut impl RngCore) -> Self {
        let mut layer = vec![0u8; LAYER_SIZE];
        rng.fill_bytes(&mut layer);
        let layer_digest = digest_of(&layer);
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Labels": { "capstan.bench": label } },
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        }))
        .unwrap_or_default();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": { "mediaType": CONFIG_TYPE, "digest": digest_of(&config), "size": config.len() },
            "layers": [{ "mediaType": LAYER_TYPE, "digest": layer_digest, "size": layer.len() }],
        }))
        .unwrap_or_default();
        Self {
            config,
            layer,
            manifest,
        }
    }

    /// Push both blobs, then the manifest by tag; returns the manifest digest.
    async fn push(
        &self,
        reg: &Registry,
        repo: &str,
        tag: &str,
        method: UploadMethod,
    ) -> Result<String> {
        for blob in [&self.config, &self.layer] {
            let digest = digest_of(blob);
            reg.upload(repo, &digest, blob.len() as u64, method, || {
                bytes_body(blob)
            })
            .await?;
        }
        let digest = digest_of(&self.manifest);
        let resp = reg
            .client
            .put(reg.url(&format!("/v2/{repo}/manifests/{tag}"))?)
            .header(header::CONTENT_TYPE, MANIFEST_TYPE)
            .body(self.manifest.clone())
            .send()
            .await?;
        let resp = expect(resp, &[StatusCode::CREATED], "PUT manifest").await?;
        if let Some(got) = resp.headers().get("docker-content-digest")
            && got.to_str().ok() != Some(digest.as_str())
        {
            bail!("PUT manifest: Docker-Content-Digest {got:?}, expected {digest}");
        }
        Ok(digest)
    }
}

pub async fn images(
    reg: &Registry,
    repo: &str,
    count: usize,
    concurrency: usize,
    method: UploadMethod,
) -> Result<Figures> {
    let method = reg.resolve_method(repo, method).await?;
    let nonce: u64 = rand::random();
    let mut rng = SmallRng::seed_from_u64(nonce);
    let images: Vec<Image> = (0..count)
        .map(|i| Image::new(&format!("{nonce:016x}-{i}"), &mut rng))
        .collect();
    let meter = Meter::start();
    let results: Vec<(f64, Result<String>)> = futures::stream::iter(images.iter().enumerate())
        .map(|(i, image)| async move {
            let t = Instant::now();
            let r = image.push(reg, repo, &format!("i{i}"), method).await;
            (t.elapsed().as_secs_f64(), r)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let m = meter.stop();
    let mut latencies: Vec<f64> = results.iter().map(|(t, _)| *t).collect();
    latencies.sort_by(f64::total_cmp);
    let failures: Vec<&anyhow::Error> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    if let Some(first) = failures.first() {
        bail!(
            "{} of {count} images failed; first: {first:#}",
            failures.len()
        );
    }
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
    };
    let mut f = report::measured(m);
    f.insert("images".into(), json!(count));
    f.insert("concurrency".into(), json!(concurrency));
    f.insert("method".into(), json!(format!("{method:?}").to_lowercase()));
    f.insert(
        "images_per_s".into(),
        json!(round(count as f64 / m.seconds.max(1e-9), 1)),
    );
    f.insert("p50_ms".into(), json!(pct(0.5).map(|s| round(s * 1e3, 1))));
    f.insert("p99_ms".into(), json!(pct(0.99).map(|s| round(s * 1e3, 1))));
    f.insert(
        "max_ms".into(),
        json!(latencies.last().map(|s| round(s * 1e3, 1))),
    );
    Ok(f)
}

/// Push `count` distinct 64-byte blobs to `repo` and reference none of them.
pub async fn orphans(
    reg: &Registry,
    repo: &str,
    count: usize,
    concurrency: usize,
) -> Result<Figures> {
    let method = reg.resolve_method(repo, UploadMethod::Auto).await?;
    let nonce: u64 = rand::random();
    let meter = Meter::start();
    let failures = futures::stream::iter(0..count)
        .map(|i| async move {
            let blob = format!("capstan-bench orphan {nonce:016x} {i:012}").into_bytes();
            let digest = digest_of(&blob);
            reg.upload(repo, &digest, blob.len() as u64, method, || {
                bytes_body(&blob)
            })
            .await
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|r| async move { r.err() })
        .collect::<Vec<_>>()
        .await;
    let m = meter.stop();
    if let Some(first) = failures.first() {
        bail!(
            "{} of {count} blobs failed; first: {first:#}",
            failures.len()
        );
    }
    let mut f = report::measured(m);
    f.insert("blobs".into(), json!(count));
    f.insert("concurrency".into(), json!(concurrency));
    f.insert(
        "blobs_per_s".into(),
        json!(round(count as f64 / m.seconds.max(1e-9), 1)),
    );
    Ok(f)
}

pub async fn seed(reg: &Registry, repo: &str, tag: &str, out: Option<&Path>) -> Result<Figures> {
    let image = Image::new("capstan-bench seed", &mut SmallRng::seed_from_u64(42));
    let method = reg.resolve_method(repo, UploadMethod::Auto).await?;
    let meter = Meter::start();
    let digest = image.push(reg, repo, tag, method).await?;
    let m = meter.stop();
    // Read it back by tag: the bytes served must be the bytes pushed.
    let resp = reg
        .client
        .get(reg.url(&format!("/v2/{repo}/manifests/{tag}"))?)
        .header(header::ACCEPT, MANIFEST_TYPE)
        .send()
        .await?;
    let resp = expect(resp, &[StatusCode::OK], "GET manifest by tag").await?;
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let served = resp.bytes().await?;
    if served.as_ref() != image.manifest.as_slice() {
        return Err(anyhow!(
            "GET manifest by tag returned {} bytes differing from the {} pushed",
            served.len(),
            image.manifest.len()
        ));
    }
    if let Some(out) = out {
        std::fs::write(out, &image.manifest).with_context(|| format!("write {}", out.display()))?;
    }
    let mut f = report::measured(m);
    f.insert("repo".into(), json!(repo));
    f.insert("tag".into(), json!(tag));
    f.insert("digest".into(), json!(digest));
    f.insert("size".into(), json!(image.manifest.len()));
    f.insert("content_type".into(), json!(content_type));
    Ok(f)
}
