//! Manifests by tag or digest: PUT (validated by svc-meta), GET, HEAD, DELETE.

use crate::app::{Body, Ctx, Gateway, Reply};
use crate::body::{self, BodyError};
use crate::cache::Cached;
use crate::error::ApiError;
use capstan_oci::manifest::MAX_MANIFEST_BYTES;
use capstan_oci::{ErrorCode, Reference};
use capstan_proto::meta::v1::{
    DeleteManifestRequest, GetManifestRequest, PutManifestRequest, TagRule,
};
use capstan_proto::sync::v1::SyncImageRequest;
use capstan_runtime::grpc::Pool;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

/// Most `?tag=` parameters one push by digest may carry (zot's limit: what
/// fits an 8 KiB request line; the spec asks for at least 10).
pub const MAX_PUSH_TAGS: usize = 46;

/// The tags a push by digest names to set with it (`?tag=a&tag=b`), each
/// once, in order; none for a push by tag. Authorization and the push both
/// go by this list.
pub fn push_tags(ctx: &Ctx, reference: &str) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    if matches!(Reference::parse(reference), Ok(Reference::Digest(_))) {
        for t in &ctx.tags {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
    }
    tags
}

pub async fn put(
    gw: &Gateway,
    ctx: &Ctx,
    session: &mut ServerSession,
    repo: &str,
    reference: &str,
) -> Result<Reply, ApiError> {
    // The tags are set in the manifest's transaction and echoed as `OCI-Tag`.
    let tags = push_tags(ctx, reference);
    if tags.len() > MAX_PUSH_TAGS {
        let mut e = ApiError::new(
            ErrorCode::TagInvalid,
            format!("more than {MAX_PUSH_TAGS} tag parameters"),
        );
        e.status = Some(414);
        return Err(e);
    }
    let content_type = session
        .req_header()
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let content = body::read_limited(session, MAX_MANIFEST_BYTES)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(_) => ApiError::code(ErrorCode::ManifestTooLarge),
            other => ApiError::new(ErrorCode::ManifestInvalid, other.to_string()),
        })?;
    let rule = crate::authz::tag_rule(ctx, repo);
    // An image's config, for what search shows of it (platform, history,
    // labels), when search is on. Useful, not required: without it the
    // push goes on.
    let config = match capstan_oci::manifest::config_digest(&content).filter(|_| gw.ext.search) {
        Some(digest) => {
            let max = capstan_oci::manifest::MAX_CONFIG_BYTES as u64;
            gw.backends
                .blob()
                .read_small(repo, &digest, max)
                .await
                .unwrap_or_default()
        }
        None => bytes::Bytes::new(),
    };
    let put = gw
        .backends
        .meta_pool()
        .unsent(|mut meta| {
            let req = ctx.rpc(PutManifestRequest {
                repo: repo.into(),
                reference: reference.into(),
                content_type: content_type.clone(),
                content: content.clone(),
                allow_missing_children: false,
                tags: tags.clone(),
                tag_rule: rule.into(),
                config: config.clone(),
            });
            async move { meta.put_manifest(req).await }
        })
        .await;
    let r = match put {
        Ok(r) => r.into_inner(),
        Err(status) => {
            let e = ApiError::from(status);
            if e.code == ErrorCode::Denied && rule != TagRule::Any {
                return Err(crate::authz::tag_refusal(gw, ctx, repo, rule).await);
            }
            return Err(e);
        }
    };
    gw.manifests.invalidate(repo);
    gw.metrics.manifest_pushed(repo);
    let mut reply = Reply::new(201)
        .header("Location", format!("/v2/{repo}/manifests/{}", r.digest))
        .header("Docker-Content-Digest", r.digest);
    if !r.subject.is_empty() {
        reply = reply.header("OCI-Subject", r.subject);
    }
    for tag in tags {
        reply = reply.header("OCI-Tag", tag);
    }
    Ok(reply)
}

pub async fn get(gw: &Gateway, ctx: &Ctx, repo: &str, reference: &str) -> Result<Reply, ApiError> {
    // A reference that is neither a valid tag nor a digest names nothing
    // that could exist: not found (as distribution answers, and as the OCI
    // conformance suite requires), not a malformed request. Writes refuse it
    // with TAG_INVALID.
    if Reference::parse(reference).is_err() {
        return Err(ApiError::code(ErrorCode::ManifestUnknown));
    }
    if let Some(m) = gw.manifests.get(repo, reference) {
        gw.metrics.cache(true);
        return Ok(manifest_reply(gw, ctx, repo, &m));
    }
    gw.metrics.cache(false);
    let epoch = gw.manifests.epoch();
    let fetch = || {
        gw.backends.meta_idempotent(|mut meta| {
            let req = ctx.rpc(GetManifestRequest {
                repo: repo.into(),
                reference: reference.into(),
                // The whole manifest even for HEAD, so it can be cached.
                head: false,
            });
            async move { meta.get_manifest(req).await }
        })
    };
    let r = match fetch().await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            let e = ApiError::from(status);
            let missing = matches!(e.code, ErrorCode::ManifestUnknown | ErrorCode::NameUnknown);
            let Some(mut sync) = gw.sync.as_ref().map(Pool::client).filter(|_| missing) else {
                return Err(e);
            };
            // Pull-through: the on-demand upstream fetches and stores it.
            sync.sync_image(ctx.rpc(SyncImageRequest {
                repo: repo.into(),
                reference: reference.into(),
            }))
            .await
            .map_err(|s| super::pull_through_error(e, s))?;
            fetch().await?.into_inner()
        }
    };
    let m = Arc::new(Cached {
        digest: r.digest,
        media_type: r.media_type,
        content: r.content,
    });
    gw.manifests.insert(epoch, repo, reference, m.clone());
    Ok(manifest_reply(gw, ctx, repo, &m))
}

fn manifest_reply(gw: &Gateway, ctx: &Ctx, repo: &str, m: &Cached) -> Reply {
    if !ctx.is_head {
        gw.metrics.manifest_pulled(repo);
        gw.pulls.record(repo, &m.digest);
    }
    let mut reply = Reply::new(200)
        .header("Content-Type", m.media_type.clone())
        .header("Docker-Content-Digest", m.digest.clone())
        .header("ETag", format!("\"{}\"", m.digest));
    reply.body = if ctx.is_head {
        Body::Head {
            len: m.content.len() as u64,
        }
    } else {
        Body::Bytes(m.content.clone())
    };
    reply
}

pub async fn delete(
    gw: &Gateway,
    ctx: &Ctx,
    repo: &str,
    reference: &str,
) -> Result<Reply, ApiError> {
    let detect_collision = ctx
        .caller
        .can(repo, capstan_oci::access::Action::DetectManifestCollision);
    gw.backends
        .meta_pool()
        .unsent(|mut meta| {
            let req = ctx.rpc(DeleteManifestRequest {
                repo: repo.into(),
                reference: reference.into(),
                detect_collision,
            });
            async move { meta.delete_manifest(req).await }
        })
        .await?;
    gw.manifests.invalidate(repo);
    Ok(Reply::new(202))
}
