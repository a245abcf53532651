//! The authorization phase: the action a request needs on its repository
//! (zot's mapping), checked against the caller's grant.
//!
//! GET and HEAD need `read`; uploads need `create`; a manifest PUT needs
//! `create`, or `update` when its tag already exists; DELETE needs `delete`.
//! `GET /v2/` needs a caller unless anonymous callers may read somewhere.
//! The catalog is filtered rather than refused. A refused anonymous caller
//! gets 401 with a challenge (so clients log in); an authenticated one gets
//! 403 `DENIED`. Both wait `failDelay` first.

use crate::app::{Ctx, Gateway};
use crate::auth::Login;
use crate::endpoint::Endpoint;
use crate::error::ApiError;
use capstan_oci::access::Action;
use capstan_oci::{ErrorCode, Reference};
use capstan_proto::meta::v1::GetManifestRequest;

/// The token scope words of an action, for challenges.
fn scope_words(action: Action) -> &'static str {
    match action {
        Action::Read => "pull",
        Action::Delete => "delete",
        _ => "pull,push",
    }
}

/// 401 with a challenge for anonymous callers, 403 otherwise.
pub async fn refuse(gw: &Gateway, ctx: &Ctx, repo: Option<&str>, action: Action) -> ApiError {
    tokio::time::sleep(gw.authn.fail_delay).await;
    // Anonymous callers and token holders are sent (back) to log in or to
    // the token service for this scope; a user who logged in is refused.
    let mut e = if ctx.caller.is_anonymous() || ctx.caller.login == Login::Token {
        ApiError::code(ErrorCode::Unauthorized)
    } else {
        ApiError::code(ErrorCode::Denied)
    };
    if let Some(mut c) = gw.authn.challenge(&ctx.host, repo, scope_words(action)) {
        if ctx.caller.login == Login::Token {
            c.push_str(",error=\"insufficient_scope\"");
        }
        e = e.with_header("WWW-Authenticate", c);
    }
    tracing::info!(
        user = %ctx.caller.username,
        repo = repo.unwrap_or(""),
        action = %action,
        trace_id = %ctx.trace_id,
        "access refused"
    );
    e
}

/// Check `ctx.caller` may make this request.
pub async fn check(gw: &Gateway, ctx: &Ctx, ep: &Endpoint) -> Result<(), ApiError> {
    let caller = &ctx.caller;
    if caller.login == Login::Open {
        return Ok(());
    }
    let m = ctx.method.as_str();
    let (repo, action) = match ep {
        // `/v2/` always challenges anonymous callers, whatever they may
        // read: clients learn how to authenticate only from a 401 (docker
        // does not read challenges on a 200), and anonymous pulls go on
        // without credentials after it. The web UI (its header) is told
        // whether it may browse anonymously.
        Endpoint::Base if caller.is_anonymous() => {
            let may_browse = ctx.from_ui && caller.access.rules().allows_somewhere(Action::Read);
            return if may_browse {
                Ok(())
            } else {
                Err(refuse(gw, ctx, None, Action::Read).await)
            };
        }
        Endpoint::Base => return Ok(()),
        Endpoint::Catalog => {
            if caller.is_anonymous() && !caller.access.rules().allows_somewhere(Action::Read) {
                return Err(refuse(gw, ctx, None, Action::Read).await);
            }
            return Ok(());
        }
        Endpoint::Manifest { repo, reference } if m == "PUT" => {
            (repo.as_str(), put_action(gw, ctx, repo, reference).await?)
        }
        _ if m == "DELETE" => (ep.repo().unwrap_or_default(), Action::Delete),
        Endpoint::UploadStart { repo } => (repo.as_str(), Action::Create),
        Endpoint::Upload { repo, .. } if m == "PATCH" || m == "PUT" => {
            (repo.as_str(), Action::Create)
        }
        _ => (ep.repo().unwrap_or_default(), Action::Read),
    };
    if caller.can(repo, action) {
        Ok(())
    } else {
        Err(refuse(gw, ctx, Some(repo), action).await)
    }
}

/// `create` for new tags or a digest alone, `update` when a tag the push
/// sets (the reference, or a `?tag=` of a push by digest) already exists.
/// Tags are looked up only when the answer matters.
async fn put_action(
    gw: &Gateway,
    ctx: &Ctx,
    repo: &str,
    reference: &str,
) -> Result<Action, ApiError> {
    let create = ctx.caller.can(repo, Action::Create);
    let update = ctx.caller.can(repo, Action::Update);
    let tags: Vec<String> = match Reference::parse(reference) {
        Ok(Reference::Tag(_)) => vec![reference.to_string()],
        _ => crate::handlers::push_tags(ctx, reference),
    };
    // Too many tags is refused (414) before anything is stored: no lookups.
    let too_many = tags.len() > crate::handlers::MAX_PUSH_TAGS;
    if create == update || tags.is_empty() || too_many {
        return Ok(Action::Create);
    }
    for tag in tags {
        let exists = match gw
            .backends
            .meta_idempotent(|mut meta| {
                let req = ctx.rpc(GetManifestRequest {
                    repo: repo.into(),
                    reference: tag.clone(),
                    head: true,
                });
                async move { meta.get_manifest(req).await }
            })
            .await
        {
            Ok(_) => true,
            Err(status) => {
                let e = ApiError::from(status);
                match e.code {
                    ErrorCode::ManifestUnknown | ErrorCode::NameUnknown | ErrorCode::TagInvalid => {
                        false
                    }
                    _ => return Err(e),
                }
            }
        };
        if exists {
            return Ok(Action::Update);
        }
    }
    Ok(Action::Create)
}
