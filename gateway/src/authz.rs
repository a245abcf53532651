//! The authorization phase: the action a request needs on its repository
//! (zot's mapping), checked against the caller's grant.
//!
//! GET and HEAD need `read`; uploads need `create`; a manifest PUT needs
//! `create`, or `update` when its tag already exists (decided by svc-meta
//! in the push's transaction, see [`tag_rule`]); DELETE needs `delete`.
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
use capstan_proto::meta::v1::TagRule;

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
            // A push that sets tags, by a caller who may create or update:
            // which of its tags may exist is decided in the push's own
            // transaction ([`tag_rule`]).
            if sets_tags(ctx, reference)
                && (caller.can(repo, Action::Create) || caller.can(repo, Action::Update))
            {
                return Ok(());
            }
            (repo.as_str(), Action::Create)
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

/// Whether a manifest PUT sets tags: its reference is a tag, or it is a
/// push by digest with (not too many) `?tag=` parameters.
fn sets_tags(ctx: &Ctx, reference: &str) -> bool {
    match Reference::parse(reference) {
        Ok(Reference::Tag(_)) => true,
        _ => {
            let tags = crate::handlers::push_tags(ctx, reference);
            !tags.is_empty() && tags.len() <= crate::handlers::MAX_PUSH_TAGS
        }
    }
}

/// Which of the tags a push sets may exist already, as zot decides it:
/// moving a tag needs `update`, setting a new one `create`. svc-meta
/// applies the rule in the push's transaction and answers `DENIED` when
/// the push breaks it; [`tag_refusal`] turns that into the usual refusal.
pub fn tag_rule(ctx: &Ctx, repo: &str) -> TagRule {
    if ctx.caller.login == Login::Open {
        return TagRule::Any;
    }
    match (
        ctx.caller.can(repo, Action::Create),
        ctx.caller.can(repo, Action::Update),
    ) {
        (true, false) => TagRule::NewOnly,
        (false, true) => TagRule::ExistingOnly,
        _ => TagRule::Any,
    }
}

/// The refusal of a push svc-meta refused under `rule`: the action it
/// would have needed.
pub async fn tag_refusal(gw: &Gateway, ctx: &Ctx, repo: &str, rule: TagRule) -> ApiError {
    let needed = match rule {
        TagRule::NewOnly => Action::Update,
        _ => Action::Create,
    };
    refuse(gw, ctx, Some(repo), needed).await
}
