//! zot's extension endpoints that come with `extensions.search`: the
//! GraphQL search (`/v2/_zot/ext/search`, answered by svc-meta), stars and
//! bookmarks (`/v2/_zot/ext/userprefs`), the stripped configuration
//! clients read (`/v2/_zot/ext/mgmt`) and the OCI extension list
//! (`/v2/_oci/ext/discover`).

use crate::app::{Ctx, Gateway, Reply};
use crate::body::{self, BodyError};
use crate::error::ApiError;
use bytes::Bytes;
use capstan_oci::ErrorCode;
use capstan_oci::access::Action;
use capstan_proto::auth::v1::Grant;
use capstan_proto::meta::v1::{SearchRequest, ToggleMarkRequest};
use capstan_runtime::config::Config;
use pingora::protocols::http::ServerSession;
use serde_json::json;

/// Largest GraphQL request body.
const MAX_QUERY_BODY: usize = 1024 * 1024;

/// The extension paths this gateway answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZotExt {
    Search,
    UserPrefs,
    Mgmt,
    Discover,
}

impl ZotExt {
    pub fn parse(path: &str) -> Option<Self> {
        match path.trim_end_matches('/') {
            "/v2/_zot/ext/search" => Some(ZotExt::Search),
            "/v2/_zot/ext/userprefs" => Some(ZotExt::UserPrefs),
            "/v2/_zot/ext/mgmt" => Some(ZotExt::Mgmt),
            "/v2/_oci/ext/discover" => Some(ZotExt::Discover),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ZotExt::Search => "ext_search",
            ZotExt::UserPrefs => "ext_userprefs",
            ZotExt::Mgmt => "ext_mgmt",
            ZotExt::Discover => "ext_discover",
        }
    }

    pub fn allows(self, method: &str) -> bool {
        match self {
            ZotExt::Search => matches!(method, "GET" | "POST"),
            ZotExt::UserPrefs => method == "PUT",
            ZotExt::Mgmt | ZotExt::Discover => matches!(method, "GET" | "HEAD"),
        }
    }
}

/// What the extensions answer that does not change while the process runs.
#[derive(Debug, Clone)]
pub struct Extensions {
    /// `extensions.search` is on.
    pub search: bool,
    /// The body of `/v2/_zot/ext/mgmt`.
    pub mgmt: Bytes,
    /// The body of `/v2/_oci/ext/discover`.
    pub discover: Bytes,
}

impl Extensions {
    /// From the configuration, as zot strips it: which ways to sign in
    /// there are (never a path, secret or directory detail).
    pub fn of(config: &Config) -> Self {
        let search = config
            .extensions
            .as_ref()
            .is_some_and(|e| e.search_enabled());
        let mut auth = serde_json::Map::new();
        if let Some(a) = config.http.auth.as_ref() {
            if a.htpasswd.is_some() || a.ldap.is_some() {
                auth.insert("htpasswd".into(), json!({}));
            }
            if let Some(b) = &a.bearer {
                auth.insert(
                    "bearer".into(),
                    json!({"realm": b.realm.clone().unwrap_or_default(),
                           "service": b.service.clone().unwrap_or_default()}),
                );
            }
            if let Some(o) = a.openid.as_ref().filter(|o| !o.providers.is_empty()) {
                let providers: serde_json::Map<String, serde_json::Value> = o
                    .providers
                    .iter()
                    .map(|(k, p)| {
                        let name = p.name.clone().map(|n| json!({"name": n}));
                        (k.clone(), name.unwrap_or_else(|| json!({})))
                    })
                    .collect();
                auth.insert("openid".into(), json!({"providers": providers}));
            }
            if a.apikey {
                auth.insert("apikey".into(), json!(true));
            }
        }
        let mut http = serde_json::Map::new();
        if config.http.auth.is_some() {
            http.insert("auth".into(), serde_json::Value::Object(auth));
        }
        let mgmt = json!({
            "distSpecVersion": "1.1.1",
            "commit": "",
            "releaseTag": concat!("capstan-", env!("CARGO_PKG_VERSION")),
            "binaryType": "-search-userprefs-mgmt",
            "http": http,
        });
        let endpoints: Vec<&str> = if search {
            vec![
                "/v2/_zot/ext/search",
                "/v2/_zot/ext/userprefs",
                "/v2/_zot/ext/mgmt",
            ]
        } else {
            Vec::new()
        };
        let discover = if endpoints.is_empty() {
            json!({"extensions": []})
        } else {
            json!({"extensions": [{
                "name": "_zot",
                "url": "https://github.com/project-zot/zot/blob/main/pkg/extensions/_zot.md",
                "description": "zot registry extensions",
                "endpoints": endpoints,
            }]})
        };
        Self {
            search,
            mgmt: Bytes::from(mgmt.to_string()),
            discover: Bytes::from(discover.to_string()),
        }
    }
}

/// The GraphQL request of a GET (`query`, `variables`, `operationName`
/// parameters) or a POST (a JSON body with those fields).
async fn graphql_request(
    ctx: &Ctx,
    session: &mut ServerSession,
) -> Result<(String, String, String), ApiError> {
    let unprocessable = |msg: &str| {
        let mut e = ApiError::new(ErrorCode::Unsupported, msg.to_string());
        e.status = Some(422);
        e
    };
    if ctx.method == "GET" {
        let query = ctx
            .param("query")
            .ok_or_else(|| unprocessable("no query document supplied"))?;
        return Ok((
            query.to_string(),
            ctx.param("variables").unwrap_or("").to_string(),
            ctx.param("operationName").unwrap_or("").to_string(),
        ));
    }
    let body = body::read_limited(session, MAX_QUERY_BODY)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(_) => ApiError::code(ErrorCode::SizeInvalid),
            other => ApiError::new(ErrorCode::Unsupported, other.to_string()),
        })?;
    #[derive(serde::Deserialize)]
    struct Posted {
        query: Option<String>,
        #[serde(default)]
        variables: Option<serde_json::Value>,
        #[serde(default, rename = "operationName")]
        operation_name: Option<String>,
    }
    let posted: Posted = serde_json::from_slice(&body)
        .map_err(|e| unprocessable(&format!("the body is not a GraphQL request: {e}")))?;
    let query = posted
        .query
        .ok_or_else(|| unprocessable("no query document supplied"))?;
    let variables = match posted.variables {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(v) => v.to_string(),
    };
    Ok((query, variables, posted.operation_name.unwrap_or_default()))
}

/// `/v2/_zot/ext/search`: the caller's GraphQL request, run by svc-meta
/// over what they may read.
pub async fn search(
    gw: &Gateway,
    ctx: &Ctx,
    session: &mut ServerSession,
) -> Result<Reply, ApiError> {
    let (query, variables, operation_name) = graphql_request(ctx, session).await?;
    let access = &ctx.caller.access;
    let grant = Grant::from_rules(access.rules(), &access.scope_texts());
    let json = gw
        .backends
        .meta_idempotent(|mut meta| {
            let req = ctx.rpc(SearchRequest {
                query: query.clone(),
                variables: variables.clone(),
                operation_name: operation_name.clone(),
                username: ctx.caller.username.clone(),
                grant: Some(grant.clone()),
            });
            async move { meta.search(req).await }
        })
        .await?
        .into_inner()
        .json;
    Ok(Reply::bytes(200, "application/json", json.into()))
}

/// `PUT /v2/_zot/ext/userprefs?action=toggleStar|toggleBookmark&repo=…`,
/// with zot's status codes: 400 for a bad action or no `repo`, 404 for an
/// empty or unknown one, 403 for an anonymous caller or a repository they
/// may not read.
pub async fn userprefs(gw: &Gateway, ctx: &Ctx) -> Result<Reply, ApiError> {
    let status = |code: u16| {
        let mut e = ApiError::code(ErrorCode::Unsupported);
        e.status = Some(code);
        e
    };
    let kind = match ctx.param("action") {
        Some("toggleStar") => "star",
        Some("toggleBookmark") => "bookmark",
        _ => return Err(status(400)),
    };
    let repo = ctx.param("repo").ok_or_else(|| status(400))?;
    if repo.is_empty() {
        return Err(status(404));
    }
    if ctx.caller.is_anonymous() || !ctx.caller.can(repo, Action::Read) {
        return Err(status(403));
    }
    let toggled = gw
        .backends
        .meta_pool()
        .unsent(|mut meta| {
            let req = ctx.rpc(ToggleMarkRequest {
                username: ctx.caller.username.clone(),
                kind: kind.to_string(),
                repo: repo.to_string(),
            });
            async move { meta.toggle_mark(req).await }
        })
        .await;
    match toggled {
        Ok(_) => Ok(Reply::new(200)),
        Err(s) => {
            let e = ApiError::from(s);
            if e.code == ErrorCode::NameUnknown || e.code == ErrorCode::NameInvalid {
                Err(status(404))
            } else {
                Err(e)
            }
        }
    }
}
