//! Handlers, one module per endpoint family. Each returns a [`Reply`] or an
//! [`ApiError`]; errors from the backends arrive already typed.

pub(crate) mod blobs;
mod listing;
mod manifests;
pub use manifests::{MAX_PUSH_TAGS, push_tags};
mod uploads;
pub mod zot_auth;
pub mod zot_ext;

use crate::app::{Ctx, Gateway, Reply};
use crate::endpoint::Endpoint;
use crate::error::ApiError;
use capstan_oci::{Digest, ErrorCode};
use pingora::protocols::http::ServerSession;

pub async fn handle(
    gw: &Gateway,
    ctx: &Ctx,
    ep: &Endpoint,
    session: &mut ServerSession,
) -> Result<Reply, ApiError> {
    let m = ctx.method.as_str();
    match ep {
        Endpoint::Base => Ok(Reply::json(200, &serde_json::json!({}))),
        Endpoint::Catalog => listing::catalog(gw, ctx).await,
        Endpoint::Tags { repo } => listing::tags(gw, ctx, repo).await,
        Endpoint::Referrers { repo, digest } => listing::referrers(gw, ctx, repo, digest).await,
        Endpoint::Manifest { repo, reference } => match m {
            "PUT" => manifests::put(gw, ctx, session, repo, reference).await,
            "DELETE" => manifests::delete(gw, ctx, repo, reference).await,
            _ => manifests::get(gw, ctx, repo, reference).await,
        },
        Endpoint::Blob { repo, digest } => match m {
            "DELETE" => blobs::delete(gw, ctx, repo, digest).await,
            _ => blobs::get(gw, ctx, session, repo, digest).await,
        },
        Endpoint::UploadStart { repo } => uploads::start(gw, ctx, session, repo).await,
        Endpoint::Upload { repo, id } => match m {
            "PATCH" => uploads::patch(gw, ctx, session, repo, id).await,
            "PUT" => uploads::finish(gw, ctx, session, repo, id).await,
            "DELETE" => uploads::cancel(gw, ctx, repo, id).await,
            _ => uploads::status(gw, ctx, repo, id).await,
        },
    }
}

/// The answer when pull-through could not help: the local miss `local`
/// when no upstream has it either, the upstream's trouble otherwise.
fn pull_through_error(local: ApiError, status: tonic::Status) -> ApiError {
    let e = ApiError::from(status);
    if e.code == ErrorCode::ManifestUnknown {
        local
    } else {
        e
    }
}

/// A digest from a URL or query parameter; DIGEST_INVALID otherwise.
fn parse_digest(s: &str) -> Result<Digest, ApiError> {
    Digest::parse(s).map_err(|e| ApiError::new(ErrorCode::DigestInvalid, e.to_string()))
}
