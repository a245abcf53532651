//! zot's `/zot/auth/*` endpoints: the token service (`token`), API keys
//! (`apikey`), logout, and single sign-on (`login`, `callback/<provider>`),
//! with zot's JSON field names.

use crate::app::{Ctx, Gateway, Reply};
use crate::auth::{AuthFailure, cookie, decode_basic};
use crate::error::ApiError;
use capstan_oci::ErrorCode;
use capstan_proto::auth::v1::{
    ApiKey, AuthenticateRequest, BasicCredential, BeginLoginRequest, CreateApiKeyRequest,
    DeleteSessionRequest, FinishLoginRequest, IssueTokenRequest, ListApiKeysRequest,
    RevokeApiKeyRequest, authenticate_request::Credential,
};
use pingora::protocols::http::ServerSession;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Largest API-key request body.
const MAX_BODY: usize = 64 * 1024;

/// zot's "no time" value.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The `/zot/auth/…` path suffixes this gateway answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZotAuth {
    Token,
    ApiKey,
    Logout,
    Login,
    /// The provider's return to this registry.
    Callback(String),
}

impl ZotAuth {
    pub fn parse(path: &str) -> Option<Self> {
        match path.strip_prefix("/zot/auth/")? {
            "token" => Some(ZotAuth::Token),
            "apikey" => Some(ZotAuth::ApiKey),
            "logout" => Some(ZotAuth::Logout),
            "login" => Some(ZotAuth::Login),
            other => {
                let p = other.strip_prefix("callback/")?;
                let ok = !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                ok.then(|| ZotAuth::Callback(p.to_string()))
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            ZotAuth::Token => "auth_token",
            ZotAuth::ApiKey => "auth_apikey",
            ZotAuth::Logout => "auth_logout",
            ZotAuth::Login => "auth_login",
            ZotAuth::Callback(_) => "auth_callback",
        }
    }

    pub fn allows(&self, method: &str) -> bool {
        match self {
            ZotAuth::Token | ZotAuth::Login | ZotAuth::Callback(_) => {
                matches!(method, "GET" | "HEAD")
            }
            ZotAuth::ApiKey => matches!(method, "GET" | "POST" | "DELETE"),
            ZotAuth::Logout => method == "POST",
        }
    }
}

/// Cookie binding a login in progress to the browser that started it.
const STATE_COOKIE: &str = "statecookie";

fn callback_url(gw: &Gateway, ctx: &Ctx, provider: &str) -> String {
    format!(
        "{}/zot/auth/callback/{provider}",
        gw.authn.base_url(&ctx.host)
    )
}

/// `GET /zot/auth/login?provider=…&callback_ui=…`: off to the provider.
pub async fn login(gw: &Gateway, ctx: &Ctx) -> Result<Reply, ApiError> {
    let mut client = client(gw)?;
    let provider = ctx
        .param("provider")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::new(ErrorCode::RequestInvalid, "missing provider"))?
        .to_string();
    let r = client
        .begin_login(ctx.rpc(BeginLoginRequest {
            redirect_uri: callback_url(gw, ctx, &provider),
            provider,
            callback_ui: ctx.param("callback_ui").unwrap_or("").to_string(),
        }))
        .await?
        .into_inner();
    let s = if gw.authn.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    Ok(Reply::new(302).header("Location", r.authorize_url).header(
        "Set-Cookie",
        format!(
            "{STATE_COOKIE}={}; Path=/zot/auth/callback; Max-Age=600; HttpOnly; SameSite=Lax{s}",
            r.state
        ),
    ))
}

/// `GET /zot/auth/callback/<provider>?code=…&state=…`: the session, then
/// back to the UI (`201` when the login named no UI page, as zot).
pub async fn callback(
    gw: &Gateway,
    ctx: &Ctx,
    session: &ServerSession,
    provider: &str,
) -> Result<Reply, ApiError> {
    let mut client = client(gw)?;
    if let Some(err) = ctx.param("error") {
        tracing::info!(provider, error = err, "OpenID provider refused the login");
        return Err(unauthenticated(gw).await);
    }
    let state_cookie = cookie(&session.req_header().headers, STATE_COOKIE).unwrap_or_default();
    let r = client
        .finish_login(ctx.rpc(FinishLoginRequest {
            provider: provider.to_string(),
            redirect_uri: callback_url(gw, ctx, provider),
            code: ctx.param("code").unwrap_or("").to_string(),
            state: ctx.param("state").unwrap_or("").to_string(),
            state_cookie,
        }))
        .await;
    let r = match r {
        Ok(r) => r.into_inner(),
        Err(status) => {
            let e = ApiError::from(status);
            if e.code == ErrorCode::Unauthorized {
                return Err(unauthenticated(gw).await);
            }
            return Err(e);
        }
    };
    let mut reply = if r.callback_ui.is_empty() {
        Reply::new(201)
    } else {
        Reply::new(302).header("Location", r.callback_ui.clone())
    };
    let secure = gw.authn.secure_cookies;
    for c in session_cookies(&r.session, &r.username, r.max_age_seconds, secure) {
        reply = reply.header("Set-Cookie", c);
    }
    let s = if secure { "; Secure" } else { "" };
    reply = reply.header(
        "Set-Cookie",
        format!("{STATE_COOKIE}=; Path=/zot/auth/callback; Max-Age=0; HttpOnly; SameSite=Lax{s}"),
    );
    Ok(reply)
}

fn client(
    gw: &Gateway,
) -> Result<
    capstan_proto::auth::v1::auth_service_client::AuthServiceClient<
        capstan_runtime::grpc::Transport,
    >,
    ApiError,
> {
    gw.authn.client().ok_or_else(ApiError::not_found_route)
}

/// `GET /zot/auth/token?service=…&scope=…`: a signed token for the scopes
/// the caller's credentials (or none: anonymous) allow.
pub async fn token(gw: &Gateway, ctx: &Ctx, session: &ServerSession) -> Result<Reply, ApiError> {
    let mut client = client(gw)?;
    let req = session.req_header();
    let mut auths = req.headers.get_all(http::header::AUTHORIZATION).iter();
    let first = auths.next();
    if auths.next().is_some() {
        return Err(ApiError::new(
            ErrorCode::RequestInvalid,
            "several Authorization headers",
        ));
    }
    let first = match first.map(|v| v.to_str()) {
        Some(Err(_)) => return Err(unauthenticated(gw).await),
        Some(Ok(v)) => Some(v),
        None => None,
    };
    let credential = match first {
        Some(v) => {
            let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
            let parsed = scheme
                .eq_ignore_ascii_case("basic")
                .then(|| decode_basic(rest.trim()))
                .flatten();
            match parsed {
                Some((u, p)) if !(u.is_empty() && p.is_empty()) => Some(AuthenticateRequest {
                    credential: Some(Credential::Basic(BasicCredential {
                        username: u,
                        password: p,
                    })),
                }),
                Some(_) => None,
                None => return Err(unauthenticated(gw).await),
            }
        }
        None => None,
    };
    let scopes: Vec<String> = req
        .uri
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.into_owned())
                .collect()
        })
        .unwrap_or_default();
    let service = ctx.param("service").unwrap_or_default().to_string();
    let r = client
        .issue_token(ctx.rpc(IssueTokenRequest {
            credential,
            service,
            scopes,
        }))
        .await;
    let t = match r {
        Ok(t) => t.into_inner(),
        Err(status) => {
            let e = ApiError::from(status);
            if e.code == ErrorCode::Unauthorized {
                return Err(unauthenticated(gw).await);
            }
            return Err(e);
        }
    };
    Ok(Reply::json(
        200,
        &serde_json::json!({
            "token": t.token,
            "access_token": t.token,
            "expires_in": t.expires_in,
            "issued_at": t.issued_at,
        }),
    ))
}

/// 401 for bad credentials at the token endpoint, after `failDelay`.
async fn unauthenticated(gw: &Gateway) -> ApiError {
    tokio::time::sleep(gw.authn.fail_delay).await;
    let realm = match &gw.authn.mode {
        crate::auth::Mode::Basic { realm } => realm.clone(),
        _ => "capstan".to_string(),
    };
    ApiError::code(ErrorCode::Unauthorized)
        .with_header("WWW-Authenticate", format!("Basic realm=\"{realm}\""))
}

/// The auth failure of a request as its HTTP answer.
pub async fn failure(gw: &Gateway, ctx: &Ctx, f: AuthFailure, repo: Option<&str>) -> ApiError {
    match f {
        AuthFailure::BadRequest(m) => ApiError::new(ErrorCode::RequestInvalid, m),
        AuthFailure::Backend(e) => e,
        AuthFailure::Unauthenticated => {
            tokio::time::sleep(gw.authn.fail_delay).await;
            let mut e = ApiError::code(ErrorCode::Unauthorized);
            if let Some(c) = gw.authn.challenge(&ctx.host, repo, "pull") {
                e = e.with_header("WWW-Authenticate", c);
            }
            e
        }
    }
}

fn rfc3339(unix: i64) -> String {
    if unix == 0 {
        return ZERO_TIME.to_string();
    }
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ZERO_TIME.to_string())
}

fn key_json(k: &ApiKey, secret: Option<&str>) -> serde_json::Value {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut v = serde_json::json!({
        "uuid": k.id,
        "label": k.label,
        "scopes": k.scopes,
        "createdAt": rfc3339(k.created_at),
        "expirationDate": rfc3339(k.expires_at),
        "isExpired": k.expires_at != 0 && k.expires_at <= now,
        "lastUsed": rfc3339(k.last_used),
        "creatorUa": k.creator_ua,
        "generatedBy": k.generated_by,
        "createdBy": k.created_by,
    });
    if let Some(s) = secret {
        v["apiKey"] = serde_json::Value::String(s.to_string());
    }
    v
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewKeyBody {
    #[serde(default)]
    label: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    expiration_date: Option<String>,
}

/// `/zot/auth/apikey`: POST creates (201, the key shown once), GET lists,
/// DELETE `?id=` revokes. Only for callers who logged in with a password,
/// a session or a certificate.
pub async fn apikey(
    gw: &Gateway,
    ctx: &Ctx,
    session: &mut ServerSession,
) -> Result<Reply, ApiError> {
    let mut client = client(gw)?;
    let caller = &ctx.caller;
    if caller.is_anonymous() {
        return Err(failure(gw, ctx, AuthFailure::Unauthenticated, None).await);
    }
    if !caller.may_manage_keys {
        return Err(ApiError::new(
            ErrorCode::Denied,
            "API keys are managed after logging in with a password or a session",
        ));
    }
    let owner = caller.username.clone();
    match ctx.method.as_str() {
        "POST" => {
            let raw = crate::body::read_limited(session, MAX_BODY)
                .await
                .map_err(|e| ApiError::new(ErrorCode::RequestInvalid, e.to_string()))?;
            let body: NewKeyBody = serde_json::from_slice(&raw).map_err(|e| {
                ApiError::new(
                    ErrorCode::RequestInvalid,
                    format!("bad API key request: {e}"),
                )
            })?;
            let expires_at = match body.expiration_date.as_deref() {
                None | Some("") => 0,
                Some(s) => OffsetDateTime::parse(s, &Rfc3339)
                    .map_err(|e| {
                        ApiError::new(
                            ErrorCode::RequestInvalid,
                            format!("expirationDate {s:?} is not an RFC 3339 time: {e}"),
                        )
                    })?
                    .unix_timestamp(),
            };
            let ua = session
                .req_header()
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let r = client
                .create_api_key(ctx.rpc(CreateApiKeyRequest {
                    owner,
                    groups: caller.groups.clone(),
                    label: body.label,
                    scopes: body.scopes,
                    expires_at,
                    creator_ua: ua,
                    generated_by: "manual".into(),
                    source: caller.source.clone(),
                }))
                .await?
                .into_inner();
            let key = r.key.unwrap_or_default();
            Ok(Reply::json(201, &key_json(&key, Some(&r.secret))))
        }
        "DELETE" => {
            let id = ctx
                .param("id")
                .filter(|s| !s.is_empty())
                .ok_or_else(|| ApiError::new(ErrorCode::RequestInvalid, "missing id"))?
                .to_string();
            client
                .revoke_api_key(ctx.rpc(RevokeApiKeyRequest {
                    owner,
                    id: id.clone(),
                }))
                .await?;
            gw.authn.forget_key(&id);
            Ok(Reply::new(200))
        }
        _ => {
            let keys = client
                .list_api_keys(ctx.rpc(ListApiKeysRequest { owner }))
                .await?
                .into_inner()
                .keys;
            let list: Vec<_> = keys.iter().map(|k| key_json(k, None)).collect();
            Ok(Reply::json(200, &serde_json::json!({ "apiKeys": list })))
        }
    }
}

/// `POST /zot/auth/logout`: end the session and clear its cookies.
pub async fn logout(gw: &Gateway, ctx: &Ctx, session: &ServerSession) -> Result<Reply, ApiError> {
    let mut client = client(gw)?;
    if let Some(id) = cookie(&session.req_header().headers, "session") {
        client
            .delete_session(ctx.rpc(DeleteSessionRequest {
                session: id.clone(),
            }))
            .await?;
        gw.authn.forget_session(&id);
    }
    let mut reply = Reply::new(200);
    for c in clear_cookies(gw.authn.secure_cookies) {
        reply = reply.header("Set-Cookie", c);
    }
    Ok(reply)
}

/// `Set-Cookie` values starting a session for `user`.
pub fn session_cookies(id: &str, user: &str, max_age: u32, secure: bool) -> [String; 2] {
    let s = if secure { "; Secure" } else { "" };
    [
        format!("session={id}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{s}"),
        format!("user={user}; Path=/; Max-Age={max_age}; SameSite=Lax{s}"),
    ]
}

fn clear_cookies(secure: bool) -> [String; 2] {
    let s = if secure { "; Secure" } else { "" };
    [
        format!("session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{s}"),
        format!("user=; Path=/; Max-Age=0; SameSite=Lax{s}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_methods() {
        assert_eq!(ZotAuth::parse("/zot/auth/token"), Some(ZotAuth::Token));
        assert_eq!(ZotAuth::parse("/zot/auth/apikey"), Some(ZotAuth::ApiKey));
        assert_eq!(ZotAuth::parse("/zot/auth/logout"), Some(ZotAuth::Logout));
        assert_eq!(ZotAuth::parse("/zot/auth/other"), None);
        assert_eq!(ZotAuth::parse("/zot/auth/login"), Some(ZotAuth::Login));
        assert_eq!(
            ZotAuth::parse("/zot/auth/callback/oidc"),
            Some(ZotAuth::Callback("oidc".into()))
        );
        assert_eq!(ZotAuth::parse("/zot/auth/callback/"), None);
        assert_eq!(ZotAuth::parse("/zot/auth/callback/a/b"), None);
        assert_eq!(ZotAuth::parse("/v2/"), None);
        assert!(ZotAuth::Logout.allows("POST") && !ZotAuth::Logout.allows("GET"));
        assert!(ZotAuth::ApiKey.allows("DELETE"));
    }

    #[test]
    fn times_use_rfc3339_and_zot_zero() {
        assert_eq!(rfc3339(0), ZERO_TIME);
        assert_eq!(rfc3339(86_400), "1970-01-02T00:00:00Z");
    }

    #[test]
    fn cookies_are_http_only_lax_and_secure_under_tls() {
        let [s, u] = session_cookies("abc", "alice", 7200, true);
        assert!(s.starts_with("session=abc;") && s.contains("HttpOnly"));
        assert!(s.contains("SameSite=Lax") && s.contains("Max-Age=7200") && s.ends_with("Secure"));
        assert!(!u.contains("HttpOnly"));
        let [s, _] = session_cookies("abc", "alice", 7200, false);
        assert!(!s.contains("Secure"));
    }
}
