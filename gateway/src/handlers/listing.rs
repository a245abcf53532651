//! Listings: tags (with `n`/`last` pagination and `Link`), the catalog, and
//! the referrers API with its `artifactType` filter.

use super::parse_digest;
use crate::app::{Ctx, Gateway, Reply};
use crate::error::ApiError;
use capstan_oci::access::Action;
use capstan_oci::{ErrorCode, media};
use capstan_proto::meta::v1::{CatalogRequest, ListTagsRequest, ReferrersRequest};

/// `n` as a page size; a non-number is PAGINATION_NUMBER_INVALID.
fn page_size(ctx: &Ctx) -> Result<Option<u32>, ApiError> {
    ctx.param("n")
        .map(|n| {
            n.parse::<u32>()
                .map_err(|_| ApiError::code(ErrorCode::PaginationNumberInvalid))
        })
        .transpose()
}

fn next_link(path: &str, n: Option<u32>, last: Option<&String>, more: bool) -> Option<String> {
    let (true, Some(n), Some(last)) = (more, n, last) else {
        return None;
    };
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("n", &n.to_string())
        .append_pair("last", last)
        .finish();
    Some(format!("<{path}?{q}>; rel=\"next\""))
}

pub async fn tags(gw: &Gateway, ctx: &Ctx, repo: &str) -> Result<Reply, ApiError> {
    let n = page_size(ctx)?;
    let r = gw
        .backends
        .meta_idempotent(|mut meta| {
            let req = ctx.rpc(ListTagsRequest {
                repo: repo.into(),
                n,
                last: ctx.param("last").unwrap_or("").into(),
            });
            async move { meta.list_tags(req).await }
        })
        .await?
        .into_inner();
    let link = next_link(&format!("/v2/{repo}/tags/list"), n, r.tags.last(), r.more);
    let mut reply = Reply::json(200, &serde_json::json!({"name": repo, "tags": r.tags}));
    if let Some(l) = link {
        reply = reply.header("Link", l);
    }
    Ok(reply)
}

/// Repositories fetched per call while filtering the catalog.
const CATALOG_BATCH: u32 = 1000;

pub async fn catalog(gw: &Gateway, ctx: &Ctx) -> Result<Reply, ApiError> {
    let n = page_size(ctx)?;
    let mut last = ctx.param("last").unwrap_or("").to_string();
    let mut repos = Vec::new();
    let mut more;
    if ctx.caller.catalog_all {
        let r = gw
            .backends
            .meta_idempotent(|mut meta| {
                let req = ctx.rpc(CatalogRequest {
                    n,
                    last: last.clone(),
                });
                async move { meta.catalog(req).await }
            })
            .await?
            .into_inner();
        repos = r.repositories;
        more = r.more;
    } else {
        // Only what the caller may read: page through and filter.
        loop {
            let r = gw
                .backends
                .meta_idempotent(|mut meta| {
                    let req = ctx.rpc(CatalogRequest {
                        n: Some(CATALOG_BATCH),
                        last: last.clone(),
                    });
                    async move { meta.catalog(req).await }
                })
                .await?
                .into_inner();
            more = r.more;
            for repo in r.repositories {
                last.clone_from(&repo);
                if !ctx.caller.can(&repo, Action::Read) {
                    continue;
                }
                if n.is_some_and(|n| repos.len() as u32 >= n) {
                    more = true;
                    break;
                }
                repos.push(repo);
            }
            let full = n.is_some_and(|n| repos.len() as u32 >= n);
            if !more || full {
                break;
            }
        }
    }
    let link = next_link("/v2/_catalog", n, repos.last(), more);
    let mut reply = Reply::json(200, &serde_json::json!({"repositories": repos}));
    if let Some(l) = link {
        reply = reply.header("Link", l);
    }
    Ok(reply)
}

pub async fn referrers(
    gw: &Gateway,
    ctx: &Ctx,
    repo: &str,
    digest: &str,
) -> Result<Reply, ApiError> {
    let d = parse_digest(digest)?;
    let artifact_type = ctx.param("artifactType").unwrap_or("").to_string();
    let r = gw
        .backends
        .meta_idempotent(|mut meta| {
            let req = ctx.rpc(ReferrersRequest {
                repo: repo.into(),
                digest: d.to_string(),
                artifact_type: artifact_type.clone(),
            });
            async move { meta.referrers(req).await }
        })
        .await?
        .into_inner();
    let manifests: Vec<serde_json::Value> = r
        .manifests
        .into_iter()
        .map(|m| {
            let mut v = serde_json::json!({
                "mediaType": m.media_type,
                "digest": m.digest,
                "size": m.size,
            });
            if !m.artifact_type.is_empty() {
                v["artifactType"] = m.artifact_type.into();
            }
            if !m.annotations.is_empty() {
                v["annotations"] = serde_json::json!(m.annotations);
            }
            v
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": manifests,
    });
    let mut reply = Reply::bytes(
        200,
        media::OCI_INDEX,
        serde_json::to_vec(&index).expect("json").into(),
    );
    if !artifact_type.is_empty() {
        reply = reply.header("OCI-Filters-Applied", "artifactType");
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::next_link;

    #[test]
    fn link_only_when_more_and_paged() {
        let last = "v2".to_string();
        assert_eq!(
            next_link("/v2/r/tags/list", Some(2), Some(&last), true).as_deref(),
            Some("</v2/r/tags/list?n=2&last=v2>; rel=\"next\"")
        );
        assert_eq!(
            next_link("/v2/r/tags/list", Some(2), Some(&last), false),
            None
        );
        assert_eq!(next_link("/v2/r/tags/list", None, Some(&last), true), None);
    }
}
