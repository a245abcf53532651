//! Large blob pushes: one request body (`push-mono`) or POST + PATCH chunks +
//! PUT (`push-chunked`). The digest is computed in a first, unmeasured pass
//! over the same generated stream; the measured pass streams it again.

use crate::{
    cli::UploadMethod,
    content::Content,
    cpu::Meter,
    registry::{OCTET_STREAM, Registry, expect},
    report::{self, Figures, round},
};
use anyhow::{Result, bail};
use reqwest::{Body, StatusCode, header};
use serde_json::json;
use std::time::Instant;

fn prepare(seed: u64, size: u64) -> (Content, String, f64) {
    let content = Content::new(seed, size);
    let t = Instant::now();
    let digest = content.digest();
    (content, digest, t.elapsed().as_secs_f64())
}

pub async fn mono(
    reg: &Registry,
    repo: &str,
    size: u64,
    seed: u64,
    method: UploadMethod,
) -> Result<Figures> {
    let (content, digest, hash_s) = prepare(seed, size);
    let method = reg.resolve_method(repo, method).await?;
    let meter = Meter::start();
    reg.upload(repo, &digest, size, method, || {
        Body::wrap_stream(content.stream(0, size))
    })
    .await?;
    let m = meter.stop();
    let mut f = report::measured(m);
    report::throughput(&mut f, size, m);
    f.insert("method".into(), json!(format!("{method:?}").to_lowercase()));
    f.insert("repo".into(), json!(repo));
    f.insert("digest".into(), json!(digest));
    f.insert("hash_pass_s".into(), json!(round(hash_s, 3)));
    Ok(f)
}

/// `count` blobs of `size` bytes (seeds `seed`…), each pushed in one
/// request body the moment the previous one was acknowledged. Reports the
/// MiB/s over all of them and of each.
pub async fn back_to_back(
    reg: &Registry,
    repo: &str,
    size: u64,
    seed: u64,
    count: u64,
    method: UploadMethod,
) -> Result<Figures> {
    // Content and digests first: nothing but the pushes is timed.
    let blobs: Vec<_> = (seed..seed + count).map(|s| prepare(s, size)).collect();
    let method = reg.resolve_method(repo, method).await?;
    let meter = Meter::start();
    let mut each = Vec::new();
    for (content, digest, _) in &blobs {
        let t = Instant::now();
        reg.upload(repo, digest, size, method, || {
            Body::wrap_stream(content.stream(0, size))
        })
        .await?;
        let secs = t.elapsed().as_secs_f64().max(1e-9);
        each.push(round(size as f64 / (1024.0 * 1024.0) / secs, 1));
    }
    let m = meter.stop();
    let mut f = report::measured(m);
    report::throughput(&mut f, size * count, m);
    f.insert("method".into(), json!(format!("{method:?}").to_lowercase()));
    f.insert("count".into(), json!(count));
    f.insert("each_mib_per_s".into(), json!(each));
    Ok(f)
}

pub async fn chunked(
    reg: &Registry,
    repo: &str,
    size: u64,
    chunk: u64,
    seed: u64,
) -> Result<Figures> {
    if chunk == 0 {
        bail!("--chunk-mib must be at least 1");
    }
    let (content, digest, hash_s) = prepare(seed, size);
    let meter = Meter::start();
    let resp = reg
        .client
        .post(reg.url(&format!("/v2/{repo}/blobs/uploads/"))?)
        .header(header::CONTENT_LENGTH, 0)
        .send()
        .await?;
    let resp = expect(resp, &[StatusCode::ACCEPTED], "POST (open upload)").await?;
    let mut location = reg.location(&resp)?;
    let mut start = 0;
    let mut requests = 1;
    while start < size {
        let end = (start + chunk).min(size);
        let resp = reg
            .client
            .patch(location.clone())
            .header(header::CONTENT_RANGE, format!("{start}-{}", end - 1))
            .header(header::CONTENT_LENGTH, end - start)
            .header(header::CONTENT_TYPE, OCTET_STREAM)
            .body(Body::wrap_stream(content.stream(start, end)))
            .send()
            .await?;
        let what = format!("PATCH bytes {start}-{}", end - 1);
        let resp = expect(resp, &[StatusCode::ACCEPTED], &what).await?;
        // The registry must acknowledge exactly the bytes sent so far.
        if let Some(range) = resp.headers().get(header::RANGE) {
            let want = format!("0-{}", end - 1);
            if range.to_str().ok() != Some(want.as_str()) {
                bail!("{what}: registry answered Range {range:?}, expected {want:?}");
            }
        }
        location = reg.location(&resp)?;
        requests += 1;
        start = end;
    }
    location.query_pairs_mut().append_pair("digest", &digest);
    let resp = reg
        .client
        .put(location)
        .header(header::CONTENT_LENGTH, 0)
        .send()
        .await?;
    expect(resp, &[StatusCode::CREATED], "PUT ?digest= (close upload)").await?;
    requests += 1;
    let m = meter.stop();
    let mut f = report::measured(m);
    report::throughput(&mut f, size, m);
    f.insert("chunk_bytes".into(), json!(chunk));
    f.insert("requests".into(), json!(requests));
    f.insert("repo".into(), json!(repo));
    f.insert("digest".into(), json!(digest));
    f.insert("hash_pass_s".into(), json!(round(hash_s, 3)));
    Ok(f)
}
