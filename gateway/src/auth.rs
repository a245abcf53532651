//! The authentication phase: who is calling, resolved once per request.
//!
//! A request carries at most one credential: `Authorization: Basic` (a
//! password or an API key), `Authorization: Bearer` (a token, checked here
//! against the issuer's public keys with no call), or the `session` cookie of
//! the web UI (only with the `X-ZOT-API-CLIENT: zot-ui` header, which a
//! cross-site form cannot send). svc-auth answers with a principal and its
//! grant; the answer is cached under a hash of the credential for the time
//! svc-auth allows (counted from when it was asked), and dropped at once
//! when svc-auth's `Watch` feed announces that the credential was revoked.
//! While that feed is down, cached answers live one second, so a revocation
//! still takes effect within a second on every gateway. A session's answer
//! lives at most a second in any case, and never past its stored record:
//! sessions can end outside Capstan, where no feed hears of it.
//!
//! Without `http.auth` and `http.accessControl` the registry is open and this
//! phase costs nothing.

use crate::error::ApiError;
use capstan_oci::ErrorCode;
use capstan_oci::access::{Action, Rules, Scoped};
use capstan_proto::ServiceError;
use capstan_proto::access::{TokenAccess, token_actions};
use capstan_proto::auth::v1::auth_service_client::AuthServiceClient;
use capstan_proto::auth::v1::{
    AnonymousRequest, AuthenticateRequest, BasicCredential, Principal, PublicKeysRequest,
    WatchRequest, authenticate_request::Credential, invalidation::What,
};
use capstan_runtime::Shutdown;
use capstan_runtime::config::Config;
use capstan_runtime::grpc::{Pool, Transport};
use parking_lot::{Mutex, RwLock};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Cached principals kept before the cache starts over.
const MAX_CACHED: usize = 50_000;
/// Cache lifetime while a revocation feed is down.
const DEGRADED_TTL: Duration = Duration::from_secs(1);
/// Least time between two fetches of the token keys.
const KEY_REFRESH: Duration = Duration::from_secs(5);

/// What the gateway reads from a verified token (`exp`, `nbf`, `aud` and
/// `iss` are checked by the validation itself); lenient, so external
/// issuers that omit optional claims are accepted.
#[derive(Debug, serde::Deserialize)]
struct CheckedClaims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    access: Vec<TokenAccess>,
}

/// Token verification keys by key id.
type KeySet = HashMap<String, Arc<jsonwebtoken::DecodingKey>>;

/// How the registry asks for credentials.
#[derive(Debug, Clone)]
pub enum Mode {
    /// No authentication and no access control: everyone may do everything.
    Open,
    /// `WWW-Authenticate: Basic realm="…"`.
    Basic { realm: String },
    /// `WWW-Authenticate: Bearer realm="…",service="…",scope="…"`.
    Bearer {
        realm: Option<String>,
        service: String,
        /// Public key of an external issuer (`http.auth.bearer.cert`); absent
        /// for Capstan's own token service.
        external: Option<Arc<jsonwebtoken::DecodingKey>>,
    },
}

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    Open,
    Anonymous,
    Password,
    ApiKey,
    Session,
    Token,
    Certificate,
}

/// The resolved caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Empty for anonymous callers.
    pub username: String,
    pub groups: Vec<String>,
    pub access: Scoped,
    /// svc-auth's name of the credential, for revocation.
    pub handle: String,
    pub may_manage_keys: bool,
    /// May list every repository (a token with `registry:catalog:*`).
    pub catalog_all: bool,
    pub login: Login,
    /// Where svc-auth knows the user from (handed back with new keys and
    /// sessions).
    pub source: String,
}

impl Caller {
    pub fn open() -> Self {
        Self {
            username: String::new(),
            groups: Vec::new(),
            access: Rules::unrestricted().within(&[]),
            handle: String::new(),
            may_manage_keys: false,
            catalog_all: true,
            login: Login::Open,
            source: String::new(),
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.username.is_empty()
    }

    pub fn can(&self, repo: &str, action: Action) -> bool {
        self.access.allows(repo, action)
    }

    fn from_principal(p: Principal, login: Login) -> Result<Self, ApiError> {
        let access = p
            .grant
            .unwrap_or_default()
            .to_scoped()
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("bad grant: {e}")))?;
        Ok(Self {
            catalog_all: false,
            login: if p.username.is_empty() {
                Login::Anonymous
            } else {
                login
            },
            username: p.username,
            groups: p.groups,
            access,
            handle: p.handle,
            may_manage_keys: p.may_manage_keys,
            source: p.source,
        })
    }
}

/// Why a request has no caller.
#[derive(Debug)]
pub enum AuthFailure {
    /// Missing, wrong or expired credentials: 401 with a challenge.
    Unauthenticated,
    /// Malformed request (two Authorization headers): 400.
    BadRequest(&'static str),
    /// svc-auth or its stores are unreachable: never anonymous instead.
    Backend(ApiError),
}

#[derive(Debug)]
struct Entry {
    caller: Arc<Caller>,
    expires: Instant,
}

/// The gateway's authentication state.
#[derive(Debug)]
pub struct Authn {
    pub mode: Mode,
    /// svc-auth's replicas (none configured in open mode).
    clients: Pool<AuthServiceClient<Transport>>,
    cache: RwLock<HashMap<[u8; 32], Entry>>,
    anonymous: RwLock<Option<Entry>>,
    /// Revocation feeds currently live, out of `clients.len()`.
    live_feeds: AtomicUsize,
    /// Bumped by every invalidation: an answer fetched across one is not
    /// cached (it may predate the revocation).
    generation: std::sync::atomic::AtomicU64,
    /// JWKS of Capstan's token service: (kid → key), last fetch.
    token_keys: Mutex<(KeySet, Option<Instant>)>,
    issuer: Mutex<String>,
    /// `http.auth.failDelay`: every refused request waits this long.
    pub fail_delay: Duration,
    /// Mark cookies `Secure` (the gateway serves TLS).
    pub secure_cookies: bool,
    /// `http.externalUrl`: the registry's public URL behind a proxy.
    external_url: Option<String>,
    /// `accessControl.metrics.anonymousPolicy` holds `read`: callers
    /// without credentials may read `/metrics`.
    metrics_anonymous: bool,
    /// `accessControl.metrics.users`: who may read `/metrics`.
    metrics_users: Option<Vec<String>>,
}

impl Authn {
    /// The mode `config` asks for; `clients` reach svc-auth's replicas.
    pub fn new(
        config: &Config,
        clients: Pool<AuthServiceClient<Transport>>,
    ) -> anyhow::Result<Self> {
        let auth = config.http.auth.as_ref();
        let enabled = auth.is_some_and(|a| a.has_credentials() || a.bearer.is_some())
            || config.http.access_control.is_some()
            || config.http.tls.as_ref().is_some_and(|t| t.cacert.is_some());
        let realm = config
            .http
            .realm
            .clone()
            .unwrap_or_else(|| "capstan".to_string());
        let mode = match auth.and_then(|a| a.bearer.as_ref()) {
            Some(b) => Mode::Bearer {
                realm: b.realm.clone(),
                service: b.service.clone().unwrap_or_else(|| "capstan".to_string()),
                external: match &b.cert {
                    Some(path) => Some(Arc::new(external_key(path)?)),
                    None => None,
                },
            },
            None if enabled => Mode::Basic { realm },
            None => Mode::Open,
        };
        if !matches!(mode, Mode::Open) && !clients.is_configured() {
            anyhow::bail!(
                "authentication is configured but no auth service is reachable \
                 (services.auth.endpoints)"
            );
        }
        Ok(Self {
            mode,
            clients,
            cache: RwLock::new(HashMap::new()),
            anonymous: RwLock::new(None),
            live_feeds: AtomicUsize::new(0),
            generation: std::sync::atomic::AtomicU64::new(0),
            token_keys: Mutex::new((HashMap::new(), None)),
            issuer: Mutex::new(String::new()),
            fail_delay: Duration::from_secs(auth.map(|a| a.fail_delay).unwrap_or(0)),
            secure_cookies: config.http.tls.is_some(),
            external_url: config
                .http
                .external_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_string()),
            metrics_anonymous: config
                .http
                .access_control
                .as_ref()
                .and_then(|a| a.metrics.as_ref())
                .is_some_and(|m| m.anonymous_policy.iter().any(|a| a == "read")),
            // With access control, only the listed users (zot: none when
            // the list is absent); without it, any authenticated user.
            metrics_users: config.http.access_control.as_ref().map(|a| {
                a.metrics
                    .as_ref()
                    .map(|m| m.users.clone())
                    .unwrap_or_default()
            }),
        })
    }

    pub fn is_open(&self) -> bool {
        matches!(self.mode, Mode::Open)
    }

    /// Whether `caller` may read `/metrics`.
    pub fn may_read_metrics(&self, caller: &Caller) -> bool {
        caller.login == Login::Open
            || (caller.is_anonymous() && self.metrics_anonymous)
            || (!caller.is_anonymous()
                && self
                    .metrics_users
                    .as_ref()
                    .is_none_or(|users| users.contains(&caller.username)))
    }

    /// One svc-auth client, round-robin (`None` when none is
    /// configured). While no replica is known, its calls fail UNAVAILABLE.
    pub fn client(&self) -> Option<AuthServiceClient<Transport>> {
        self.clients.is_configured().then(|| self.clients.client())
    }

    /// How long an answer of svc-auth may be reused: what it grants, and
    /// no more than [`DEGRADED_TTL`] while a revocation feed is down.
    fn ttl(&self, p: &Principal) -> Duration {
        // An svc-auth older than `cache_millis` sends only whole seconds.
        let granted = match (p.cache_millis, p.cache_seconds) {
            (0, secs) => Duration::from_secs(u64::from(secs)),
            (ms, _) => Duration::from_millis(u64::from(ms)),
        };
        if self.live_feeds.load(Ordering::Acquire) < self.clients.len() {
            DEGRADED_TTL.min(granted)
        } else {
            granted
        }
    }

    /// This registry's URL as the client sees it: `http.externalUrl`, or
    /// the scheme and the `Host` it addressed.
    pub fn base_url(&self, host: &str) -> String {
        match &self.external_url {
            Some(u) => u.clone(),
            None => {
                let scheme = if self.secure_cookies { "https" } else { "http" };
                format!("{scheme}://{host}")
            }
        }
    }

    /// The `WWW-Authenticate` value for a request (to `host`) about `repo`
    /// needing `actions` (token scope words).
    pub fn challenge(&self, host: &str, repo: Option<&str>, actions: &str) -> Option<String> {
        match &self.mode {
            Mode::Open => None,
            Mode::Basic { realm } => Some(format!("Basic realm=\"{realm}\"")),
            Mode::Bearer { realm, service, .. } => {
                let realm = realm
                    .clone()
                    .unwrap_or_else(|| format!("{}/zot/auth/token", self.base_url(host)));
                let scope = match repo {
                    Some(r) => format!("repository:{r}:{actions}"),
                    None => String::new(),
                };
                Some(format!(
                    "Bearer realm=\"{realm}\",service=\"{service}\",scope=\"{scope}\""
                ))
            }
        }
    }

    /// Resolve the caller from the request headers, or from the client
    /// certificate (`client_cn`) when they carry no credential.
    pub async fn resolve(
        &self,
        headers: &http::HeaderMap,
        client_cn: Option<&str>,
        trace: &crate::app::Ctx,
    ) -> Result<Arc<Caller>, AuthFailure> {
        if self.is_open() {
            return Ok(Arc::new(Caller::open()));
        }
        let mut auths = headers.get_all(http::header::AUTHORIZATION).iter();
        let first = auths.next();
        if auths.next().is_some() {
            return Err(AuthFailure::BadRequest("several Authorization headers"));
        }
        if let Some(value) = first {
            let value = value.to_str().map_err(|_| AuthFailure::Unauthenticated)?;
            let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
            let rest = rest.trim();
            if scheme.eq_ignore_ascii_case("basic") {
                let Some((user, pass)) = decode_basic(rest) else {
                    return Err(AuthFailure::Unauthenticated);
                };
                if !(user.is_empty() && pass.is_empty()) {
                    let login = if pass.starts_with("zak_") {
                        Login::ApiKey
                    } else {
                        Login::Password
                    };
                    let cred = Credential::Basic(BasicCredential {
                        username: user,
                        password: pass,
                    });
                    return self.cached(b"basic", value, cred, login, trace).await;
                }
            } else if scheme.eq_ignore_ascii_case("bearer") {
                return self.bearer(rest, trace).await;
            } else {
                return Err(AuthFailure::Unauthenticated);
            }
        }
        let ui = headers
            .get("x-zot-api-client")
            .is_some_and(|v| v.as_bytes() == b"zot-ui");
        if ui && let Some(session) = cookie(headers, "session") {
            let cred = Credential::Session(session.clone());
            return self
                .cached(b"session", &session, cred, Login::Session, trace)
                .await;
        }
        if let Some(cn) = client_cn {
            let cred = Credential::ClientCertificate(cn.to_string());
            return self
                .cached(b"cert", cn, cred, Login::Certificate, trace)
                .await;
        }
        self.anonymous(trace).await
    }

    fn cache_key(kind: &[u8], secret: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(kind);
        h.update([0]);
        h.update(secret.as_bytes());
        h.finalize().into()
    }

    /// Drop the cached session `id` (this gateway logged it out; the
    /// others hear it from the revocation feed).
    pub fn forget_session(&self, id: &str) {
        self.cache.write().remove(&Self::cache_key(b"session", id));
    }

    /// Drop every cached principal of API key `id`.
    pub fn forget_key(&self, id: &str) {
        self.apply(What::Handle(format!("key:{id}")));
    }

    async fn cached(
        &self,
        kind: &[u8],
        secret: &str,
        cred: Credential,
        login: Login,
        ctx: &crate::app::Ctx,
    ) -> Result<Arc<Caller>, AuthFailure> {
        let key = Self::cache_key(kind, secret);
        if let Some(e) = self.cache.read().get(&key)
            && e.expires > Instant::now()
        {
            return Ok(e.caller.clone());
        }
        let generation = self.generation.load(Ordering::Acquire);
        // Reuse is counted from before the question: svc-auth read its
        // stores after this instant, so an answer never outlives them by
        // more than what it grants, however long it took to arrive.
        let asked = Instant::now();
        let mut client = self.client().ok_or(AuthFailure::Unauthenticated)?;
        let principal = match client
            .authenticate(ctx.rpc(AuthenticateRequest {
                credential: Some(cred),
            }))
            .await
        {
            Ok(p) => p.into_inner(),
            Err(status) => {
                let e = ServiceError::from_status(&status);
                return Err(match e.code {
                    ErrorCode::Unauthorized => AuthFailure::Unauthenticated,
                    _ => AuthFailure::Backend(e.into()),
                });
            }
        };
        let expires = asked + self.ttl(&principal);
        let caller =
            Arc::new(Caller::from_principal(principal, login).map_err(AuthFailure::Backend)?);
        let mut cache = self.cache.write();
        if self.generation.load(Ordering::Acquire) != generation || expires <= Instant::now() {
            return Ok(caller);
        }
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(
            key,
            Entry {
                caller: caller.clone(),
                expires,
            },
        );
        Ok(caller)
    }

    async fn anonymous(&self, ctx: &crate::app::Ctx) -> Result<Arc<Caller>, AuthFailure> {
        if let Some(e) = &*self.anonymous.read()
            && e.expires > Instant::now()
        {
            return Ok(e.caller.clone());
        }
        let asked = Instant::now();
        let mut client = self.client().ok_or(AuthFailure::Unauthenticated)?;
        let p = client
            .anonymous(ctx.rpc(AnonymousRequest {}))
            .await
            .map_err(|s| AuthFailure::Backend(s.into()))?
            .into_inner();
        let expires = asked + self.ttl(&p);
        let caller =
            Arc::new(Caller::from_principal(p, Login::Anonymous).map_err(AuthFailure::Backend)?);
        *self.anonymous.write() = Some(Entry {
            caller: caller.clone(),
            expires,
        });
        Ok(caller)
    }

    /// Verify a bearer token locally.
    async fn bearer(&self, token: &str, ctx: &crate::app::Ctx) -> Result<Arc<Caller>, AuthFailure> {
        let Mode::Bearer {
            service, external, ..
        } = &self.mode
        else {
            return Err(AuthFailure::Unauthenticated);
        };
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| AuthFailure::Unauthenticated)?;
        let (key, issuer) = match external {
            Some(k) => (k.clone(), None),
            None => {
                let kid = header.kid.clone().ok_or(AuthFailure::Unauthenticated)?;
                let key = self.token_key(&kid, ctx).await?;
                (key, Some(self.issuer.lock().clone()))
            }
        };
        // Capstan signs ES256 only; an external key's family bounds the
        // algorithm (jsonwebtoken refuses a key of another family).
        let alg = if issuer.is_some() {
            jsonwebtoken::Algorithm::ES256
        } else {
            header.alg
        };
        let mut v = jsonwebtoken::Validation::new(alg);
        v.leeway = 30;
        v.validate_nbf = true;
        v.set_audience(&[service]);
        if let Some(iss) = &issuer {
            v.set_issuer(&[iss]);
        }
        let data = jsonwebtoken::decode::<CheckedClaims>(token, &key, &v)
            .map_err(|_| AuthFailure::Unauthenticated)?;
        let claims = data.claims;
        let external = external.is_some();
        let mut catalog_all = false;
        // One entry per repository: several scopes for one name add up.
        let mut by_repo: std::collections::BTreeMap<String, capstan_oci::access::Actions> =
            Default::default();
        for a in &claims.access {
            match a.kind.as_str() {
                "repository" if capstan_oci::validate_repository(&a.name).is_ok() => {
                    let e = by_repo.entry(a.name.clone()).or_default();
                    *e = e.union(token_actions(&a.actions, external));
                }
                "registry" if a.name == "catalog" => {
                    catalog_all = a.actions.iter().any(|x| x == "*");
                }
                _ => {}
            }
        }
        let access = Rules::new(by_repo, capstan_oci::access::Actions::NONE)
            .map_err(|_| AuthFailure::Unauthenticated)?
            .within(&[]);
        Ok(Arc::new(Caller {
            username: claims.sub,
            groups: Vec::new(),
            access,
            handle: String::new(),
            may_manage_keys: false,
            catalog_all,
            login: Login::Token,
            source: String::new(),
        }))
    }

    async fn token_key(
        &self,
        kid: &str,
        ctx: &crate::app::Ctx,
    ) -> Result<Arc<jsonwebtoken::DecodingKey>, AuthFailure> {
        {
            let keys = self.token_keys.lock();
            if let Some(k) = keys.0.get(kid) {
                return Ok(k.clone());
            }
            if keys.1.is_some_and(|t| t.elapsed() < KEY_REFRESH) {
                return Err(AuthFailure::Unauthenticated);
            }
        }
        let mut client = self.client().ok_or(AuthFailure::Unauthenticated)?;
        let r = client
            .public_keys(ctx.rpc(PublicKeysRequest {}))
            .await
            .map_err(|s| AuthFailure::Backend(s.into()))?
            .into_inner();
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&r.jwks).map_err(|e| {
            AuthFailure::Backend(ApiError::new(ErrorCode::Internal, format!("jwks: {e}")))
        })?;
        let mut map = HashMap::new();
        for jwk in &set.keys {
            if let (Some(id), Ok(k)) =
                (&jwk.common.key_id, jsonwebtoken::DecodingKey::from_jwk(jwk))
            {
                map.insert(id.clone(), Arc::new(k));
            }
        }
        *self.issuer.lock() = r.issuer;
        let mut keys = self.token_keys.lock();
        *keys = (map, Some(Instant::now()));
        keys.0.get(kid).cloned().ok_or(AuthFailure::Unauthenticated)
    }

    fn apply(&self, what: What) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        match what {
            What::All(_) => {
                self.cache.write().clear();
                *self.anonymous.write() = None;
            }
            What::Handle(h) => {
                self.cache.write().retain(|_, e| e.caller.handle != h);
            }
        }
    }

    /// Drop everything cached (a feed was lost or re-established).
    fn clear(&self) {
        self.apply(What::All(true));
    }
}

/// Follow one svc-auth replica's revocation feed until shutdown.
pub async fn follow(
    authn: Arc<Authn>,
    mut client: AuthServiceClient<Transport>,
    shutdown: Shutdown,
) {
    let mut pause = Duration::from_millis(100);
    while !shutdown.is_triggered() {
        let feed = tokio::select! {
            _ = shutdown.wait() => break,
            f = client.watch(WatchRequest {}) => f,
        };
        if let Ok(feed) = feed {
            // Subscribed: nothing revoked from now on can be missed, but
            // something may have been while the feed was down.
            authn.clear();
            authn.live_feeds.fetch_add(1, Ordering::AcqRel);
            pause = Duration::from_millis(100);
            let mut feed = feed.into_inner();
            loop {
                let msg = tokio::select! {
                    _ = shutdown.wait() => break,
                    m = feed.message() => m,
                };
                match msg {
                    Ok(Some(inv)) => {
                        if let Some(w) = inv.what {
                            authn.apply(w);
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            authn.live_feeds.fetch_sub(1, Ordering::AcqRel);
            authn.clear();
            tracing::debug!("auth revocation feed lost");
        }
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// The public key of a DER certificate, as a token verifying key.
fn certificate_key(der: &[u8]) -> anyhow::Result<jsonwebtoken::DecodingKey> {
    use x509_parser::public_key::PublicKey;
    let (_, cert) = x509_parser::parse_x509_certificate(der)?;
    let spki = cert.public_key();
    match spki.parsed()? {
        PublicKey::EC(point) => Ok(jsonwebtoken::DecodingKey::from_ec_der(point.data())),
        PublicKey::RSA(_) => Ok(jsonwebtoken::DecodingKey::from_rsa_der(
            &spki.subject_public_key.data,
        )),
        _ if spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 => Ok(
            jsonwebtoken::DecodingKey::from_ed_der(&spki.subject_public_key.data),
        ),
        _ => anyhow::bail!("the certificate's key is not EC, RSA or Ed25519"),
    }
}

/// `user:password` from the base64 part of a Basic header.
pub fn decode_basic(b64: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// The value of cookie `name`.
pub fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The verifying key of an external token issuer: a PEM certificate, a PEM
/// public key (EC, RSA or Ed25519) or a JWKS document with one key.
fn external_key(path: &std::path::Path) -> anyhow::Result<jsonwebtoken::DecodingKey> {
    let text = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("http.auth.bearer.cert {}: {e}", path.display()))?;
    if let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(&text)
        && pem.label == "CERTIFICATE"
    {
        return certificate_key(&pem.contents)
            .map_err(|e| anyhow::anyhow!("http.auth.bearer.cert {}: {e}", path.display()));
    }
    if let Ok(set) = serde_json::from_slice::<jsonwebtoken::jwk::JwkSet>(&text)
        && let [jwk] = set.keys.as_slice()
    {
        return Ok(jsonwebtoken::DecodingKey::from_jwk(jwk)?);
    }
    jsonwebtoken::DecodingKey::from_ec_pem(&text)
        .or_else(|_| jsonwebtoken::DecodingKey::from_rsa_pem(&text))
        .or_else(|_| jsonwebtoken::DecodingKey::from_ed_pem(&text))
        .map_err(|_| {
            anyhow::anyhow!(
                "http.auth.bearer.cert {}: not a PEM public key or a one-key JWKS",
                path.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_decode() {
        assert_eq!(
            decode_basic("YWxpY2U6cHc6d2l0aDpjb2xvbnM="),
            Some(("alice".into(), "pw:with:colons".into()))
        );
        assert_eq!(decode_basic("Og=="), Some((String::new(), String::new())));
        assert_eq!(decode_basic("!!"), None);
        assert_eq!(decode_basic("YWxpY2U="), None); // no colon
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = http::HeaderMap::new();
        h.append("cookie", "a=1; session=abc".parse().unwrap());
        h.append("cookie", "user=alice".parse().unwrap());
        assert_eq!(cookie(&h, "session").as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "user").as_deref(), Some("alice"));
        assert_eq!(cookie(&h, "sess"), None);
    }
}
