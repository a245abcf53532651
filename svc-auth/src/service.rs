//! The gRPC face of svc-auth: credentials in, principals and grants out;
//! sessions, API keys and tokens; a feed of revoked credentials.

use crate::apikeys::{ApiKeys, NewKey};
use crate::error::AuthError;
use crate::htpasswd::Htpasswd;
use crate::policy::Policy;
use crate::sessions::{SESSION_TTL, Sessions, session_hash, until};
use crate::tokens::Signer;
use capstan_oci::access::{Action, Pattern};
use capstan_proto::access::{Scope, TokenAccess, TokenClaims};
use capstan_proto::auth::v1::{
    self as pb, AnonymousRequest, AuthenticateRequest, BeginLoginRequest, BeginLoginResponse,
    CreateApiKeyRequest, CreateApiKeyResponse, CreateSessionRequest, CreateSessionResponse,
    DeleteSessionRequest, DeleteSessionResponse, FinishLoginRequest, FinishLoginResponse, Grant,
    InfoRequest, InfoResponse, Invalidation, IssueTokenRequest, IssueTokenResponse,
    ListApiKeysRequest, ListApiKeysResponse, Principal, PublicKeysRequest, PublicKeysResponse,
    RevokeApiKeyRequest, RevokeApiKeyResponse, WatchRequest, authenticate_request::Credential,
    invalidation::What,
};
use capstan_runtime::Shutdown;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// How long a gateway may reuse an authenticated principal. Revocations
/// reach it sooner through `Watch`.
const PRINCIPAL_CACHE: Duration = Duration::from_secs(60);
/// How long a gateway may reuse a session's principal: a session ends when
/// its record leaves the store, which may happen outside Capstan (another
/// registry sharing the Redis logs it out, an operator deletes the key or
/// cuts its TTL, Redis is flushed), and so is heard of by no feed. This is
/// the bound on how long such a session still works (the README states it).
pub const SESSION_RECHECK: Duration = Duration::from_secs(1);
/// How long a gateway may reuse the anonymous principal.
const ANONYMOUS_CACHE: Duration = Duration::from_secs(30);

/// Everything the service decides with.
#[derive(Debug)]
pub struct AuthCore {
    pub policy: Policy,
    pub htpasswd: Option<Arc<Htpasswd>>,
    /// Asked before htpasswd when configured.
    pub ldap: Option<crate::ldap::Ldap>,
    /// OpenID Connect providers for browser logins.
    pub oidc: Option<crate::oidc::Oidc>,
    pub sessions: Sessions,
    /// Present when `http.auth.apikey` is on.
    pub keys: Option<ApiKeys>,
    pub signer: Signer,
    /// `iss` of issued tokens.
    pub issuer: String,
    pub token_ttl: Duration,
    pub methods: Vec<String>,
    pub invalidations: broadcast::Sender<Invalidation>,
}

/// Who authenticated, before policy is applied.
#[derive(Debug, Clone)]
struct Identity {
    username: String,
    groups: Vec<String>,
    scopes: Vec<String>,
    handle: String,
    may_manage_keys: bool,
    /// How long a gateway may reuse the answer: the credential's own end
    /// or the cache limit of its kind, whichever comes first.
    reuse: Duration,
    /// Where the user is known (Principal.source).
    source: String,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl AuthCore {
    /// Groups of `user`: those it came with (LDAP, session, key) plus the
    /// configuration's, without repeats.
    fn groups(&self, user: &str, given: &[String]) -> Vec<String> {
        let mut g: Vec<String> = given.to_vec();
        for c in self.policy.groups_of(user) {
            if !g.contains(&c) {
                g.push(c);
            }
        }
        g
    }

    /// A key or session of an htpasswd user ends when the user leaves the
    /// file (other sources cannot be asked without the user's password).
    fn still_known(&self, user: &str, source: &str) -> Result<(), AuthError> {
        match (&self.htpasswd, source) {
            (Some(h), "htpasswd") if !h.has_user(user) => Err(AuthError::Unauthenticated(
                "the owner left the htpasswd file",
            )),
            _ => Ok(()),
        }
    }

    async fn identify(&self, cred: &Credential) -> Result<Identity, AuthError> {
        match cred {
            Credential::Basic(b) => {
                if b.password.starts_with(crate::apikeys::KEY_PREFIX)
                    && let Some(keys) = &self.keys
                {
                    let k = keys.authenticate(&b.username, &b.password).await?;
                    self.still_known(&k.owner, &k.source)?;
                    return Ok(Identity {
                        groups: self.groups(&k.owner, &k.groups),
                        username: k.owner,
                        scopes: k.scopes,
                        handle: format!("key:{}", k.id),
                        may_manage_keys: false,
                        reuse: match k.expires_at {
                            t if t > 0 => PRINCIPAL_CACHE.min(until(t as u64)),
                            _ => PRINCIPAL_CACHE,
                        },
                        source: k.source,
                    });
                }
                if let Some(l) = &self.ldap {
                    match l.login(&b.username, &b.password).await {
                        Ok((name, ldap_groups)) => {
                            return Ok(Identity {
                                groups: self.groups(&name, &ldap_groups),
                                username: name,
                                scopes: vec![],
                                handle: String::new(),
                                may_manage_keys: self.keys.is_some(),
                                reuse: PRINCIPAL_CACHE,
                                source: "ldap".into(),
                            });
                        }
                        // htpasswd may still know the user (local accounts).
                        Err(AuthError::Unauthenticated(_)) if self.htpasswd.is_some() => {}
                        Err(e @ AuthError::Unavailable { .. }) if self.htpasswd.is_some() => {
                            tracing::warn!(error = %e, "LDAP unreachable; trying htpasswd");
                        }
                        Err(e) => return Err(e),
                    }
                }
                let Some(h) = &self.htpasswd else {
                    return Err(AuthError::Unauthenticated("no password method configured"));
                };
                if b.username.is_empty() || !h.verify(&b.username, &b.password).await {
                    return Err(AuthError::Unauthenticated("wrong user or password"));
                }
                Ok(Identity {
                    groups: self.groups(&b.username, &[]),
                    username: b.username.clone(),
                    scopes: vec![],
                    handle: String::new(),
                    may_manage_keys: self.keys.is_some(),
                    reuse: PRINCIPAL_CACHE,
                    source: "htpasswd".into(),
                })
            }
            Credential::Session(id) => {
                let live = self
                    .sessions
                    .get(id)
                    .await?
                    .ok_or(AuthError::Unauthenticated("unknown or expired session"))?;
                let s = live.session;
                self.still_known(&s.username, &s.source)?;
                Ok(Identity {
                    groups: self.groups(&s.username, &s.groups),
                    username: s.username,
                    scopes: vec![],
                    handle: format!("session:{}", session_hash(id)),
                    may_manage_keys: self.keys.is_some(),
                    reuse: SESSION_RECHECK.min(live.remaining),
                    source: s.source,
                })
            }
            Credential::ClientCertificate(cn) => {
                if cn.is_empty() {
                    return Err(AuthError::Unauthenticated(
                        "certificate without a CommonName",
                    ));
                }
                Ok(Identity {
                    groups: self.groups(cn, &[]),
                    username: cn.clone(),
                    scopes: vec![],
                    handle: String::new(),
                    may_manage_keys: self.keys.is_some(),
                    reuse: PRINCIPAL_CACHE,
                    source: "certificate".into(),
                })
            }
        }
    }

    fn principal(&self, id: Identity) -> Principal {
        let rules = self.policy.rules(Some(&id.username), &id.groups);
        Principal {
            grant: Some(Grant::from_rules(&rules, &id.scopes)),
            username: id.username,
            groups: id.groups,
            cache_seconds: id.reuse.as_secs() as u32,
            cache_millis: id.reuse.as_millis() as u32,
            handle: id.handle,
            may_manage_keys: id.may_manage_keys,
            source: id.source,
        }
    }

    pub fn anonymous(&self) -> Principal {
        Principal {
            grant: Some(Grant::from_rules(&self.policy.rules(None, &[]), &[])),
            cache_seconds: ANONYMOUS_CACHE.as_secs() as u32,
            cache_millis: ANONYMOUS_CACHE.as_millis() as u32,
            ..Default::default()
        }
    }

    pub async fn authenticate(&self, req: &AuthenticateRequest) -> Result<Principal, AuthError> {
        let cred = req
            .credential
            .as_ref()
            .ok_or(AuthError::Unauthenticated("no credential"))?;
        let id = self.identify(cred).await?;
        Ok(self.principal(id))
    }

    /// The groups worth storing with a key or session: those that came
    /// from outside (LDAP, OpenID). The configuration's are looked up at
    /// each use, so editing `accessControl.groups` takes effect at once.
    fn external_groups(&self, user: &str, groups: &[String]) -> Vec<String> {
        let configured = self.policy.groups_of(user);
        groups
            .iter()
            .filter(|g| !configured.contains(g))
            .cloned()
            .collect()
    }

    fn invalidate(&self, what: What) {
        // No subscriber is fine: nobody caches anything yet.
        let _ = self.invalidations.send(Invalidation { what: Some(what) });
    }

    /// Sign a token for `req`'s scopes, granting what the policy allows.
    pub async fn issue_token(
        &self,
        req: &IssueTokenRequest,
    ) -> Result<IssueTokenResponse, AuthError> {
        let (subject, scoped) = match &req.credential {
            Some(c) => {
                let p = self.authenticate(c).await?;
                let scoped = p.grant.unwrap_or_default().to_scoped();
                (p.username, scoped)
            }
            None => (
                String::new(),
                self.anonymous().grant.unwrap_or_default().to_scoped(),
            ),
        };
        let scoped = scoped.map_err(|e| AuthError::Signing(e.to_string()))?;
        let mut access = Vec::new();
        for raw in &req.scopes {
            for one in raw.split(' ').filter(|s| !s.is_empty()) {
                let scope = Scope::parse(one)
                    .ok_or_else(|| AuthError::Invalid(format!("malformed scope {one:?}")))?;
                let granted = match scope.kind.as_str() {
                    "repository" => {
                        if capstan_oci::validate_repository(&scope.name).is_err() {
                            return Err(AuthError::Invalid(format!(
                                "invalid repository name in scope {one:?}"
                            )));
                        }
                        let held = scoped.actions(&scope.name);
                        let want_all = scope.actions.iter().any(|a| a == "*");
                        let mut out = Vec::new();
                        let mut give = |name: &str, action: Action| {
                            let asked = want_all || scope.actions.iter().any(|a| a == name);
                            if asked && held.contains(action) {
                                out.push(name.to_string());
                            }
                        };
                        give("pull", Action::Read);
                        give("push", Action::Create);
                        give("delete", Action::Delete);
                        // Capstan's own: moving an existing tag.
                        if held.contains(Action::Update)
                            && (want_all || scope.actions.iter().any(|a| a == "push"))
                        {
                            out.push("update".to_string());
                        }
                        out
                    }
                    // The whole catalog: only for those who read everywhere.
                    "registry" if scope.name == "catalog" => {
                        if scoped.rules().everywhere().contains(Action::Read) {
                            vec!["*".to_string()]
                        } else {
                            vec![]
                        }
                    }
                    _ => vec![],
                };
                access.push(TokenAccess {
                    kind: scope.kind,
                    name: scope.name,
                    actions: granted,
                });
            }
        }
        let t = now();
        let claims = TokenClaims {
            iss: self.issuer.clone(),
            sub: subject,
            aud: req.service.clone(),
            exp: t + self.token_ttl.as_secs(),
            nbf: t.saturating_sub(5),
            iat: t,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            access,
        };
        let token = self.signer.sign(&claims)?;
        Ok(IssueTokenResponse {
            token,
            expires_in: self.token_ttl.as_secs() as u32,
            issued_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        })
    }
}

/// The AuthService implementation.
#[derive(Debug, Clone)]
pub struct AuthServiceImpl {
    pub core: Arc<AuthCore>,
    pub shutdown: Shutdown,
}

fn keys_of(core: &AuthCore) -> Result<&ApiKeys, AuthError> {
    core.keys
        .as_ref()
        .ok_or(AuthError::Disabled("http.auth.apikey"))
}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for AuthServiceImpl {
    async fn info(&self, _r: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            methods: self.core.methods.clone(),
        }))
    }

    async fn authenticate(
        &self,
        r: Request<AuthenticateRequest>,
    ) -> Result<Response<Principal>, Status> {
        match self.core.authenticate(r.get_ref()).await {
            Ok(p) => Ok(Response::new(p)),
            Err(e) => {
                tracing::info!(reason = %e, "authentication refused");
                Err(e.into())
            }
        }
    }

    async fn anonymous(
        &self,
        _r: Request<AnonymousRequest>,
    ) -> Result<Response<Principal>, Status> {
        Ok(Response::new(self.core.anonymous()))
    }

    async fn create_session(
        &self,
        r: Request<CreateSessionRequest>,
    ) -> Result<Response<CreateSessionResponse>, Status> {
        let r = r.into_inner();
        if r.username.is_empty() {
            return Err(AuthError::Invalid("a session needs a user".into()).into());
        }
        let groups = self.core.external_groups(&r.username, &r.groups);
        let session = self
            .core
            .sessions
            .create(&r.username, &groups, &r.source)
            .await?;
        Ok(Response::new(CreateSessionResponse {
            session,
            max_age_seconds: SESSION_TTL.as_secs() as u32,
        }))
    }

    async fn begin_login(
        &self,
        r: Request<BeginLoginRequest>,
    ) -> Result<Response<BeginLoginResponse>, Status> {
        let oidc = self
            .core
            .oidc
            .as_ref()
            .ok_or(AuthError::Disabled("http.auth.openid"))?;
        let r = r.get_ref();
        let (authorize_url, state) = oidc
            .begin(
                &self.core.sessions,
                &r.provider,
                &r.redirect_uri,
                &r.callback_ui,
            )
            .await?;
        Ok(Response::new(BeginLoginResponse {
            authorize_url,
            state,
        }))
    }

    async fn finish_login(
        &self,
        r: Request<FinishLoginRequest>,
    ) -> Result<Response<FinishLoginResponse>, Status> {
        let oidc = self
            .core
            .oidc
            .as_ref()
            .ok_or(AuthError::Disabled("http.auth.openid"))?;
        let r = r.get_ref();
        let login = match oidc
            .finish(
                &self.core.sessions,
                &r.provider,
                &r.redirect_uri,
                &r.code,
                &r.state,
                &r.state_cookie,
            )
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::info!(provider = %r.provider, reason = %e, "OpenID login refused");
                return Err(e.into());
            }
        };
        let groups = self.core.external_groups(&login.username, &login.groups);
        let session = self
            .core
            .sessions
            .create(&login.username, &groups, "openid")
            .await?;
        tracing::info!(provider = %r.provider, user = %login.username, "OpenID login");
        Ok(Response::new(FinishLoginResponse {
            session,
            max_age_seconds: SESSION_TTL.as_secs() as u32,
            username: login.username,
            callback_ui: login.callback_ui,
        }))
    }

    async fn delete_session(
        &self,
        r: Request<DeleteSessionRequest>,
    ) -> Result<Response<DeleteSessionResponse>, Status> {
        let id = &r.get_ref().session;
        self.core.sessions.delete(id).await?;
        self.core
            .invalidate(What::Handle(format!("session:{}", session_hash(id))));
        Ok(Response::new(DeleteSessionResponse {}))
    }

    async fn create_api_key(
        &self,
        r: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        let keys = keys_of(&self.core)?;
        let r = r.into_inner();
        if r.owner.is_empty() {
            return Err(AuthError::Denied("anonymous callers have no API keys".into()).into());
        }
        for s in &r.scopes {
            Pattern::new(s).map_err(|e| AuthError::Invalid(format!("scope {s:?}: {e}")))?;
        }
        if r.expires_at != 0 && r.expires_at <= now() as i64 {
            return Err(AuthError::Invalid("expirationDate is in the past".into()).into());
        }
        let (key, secret) = keys
            .create(NewKey {
                groups: self.core.external_groups(&r.owner, &r.groups),
                owner: r.owner,
                label: r.label,
                scopes: r.scopes,
                expires_at: r.expires_at,
                creator_ua: r.creator_ua,
                generated_by: r.generated_by,
                source: r.source,
            })
            .await?;
        tracing::info!(owner = %key.created_by, key_id = %key.id, "API key created");
        Ok(Response::new(CreateApiKeyResponse {
            key: Some(key),
            secret,
        }))
    }

    async fn list_api_keys(
        &self,
        r: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        let keys = keys_of(&self.core)?.list(&r.get_ref().owner).await?;
        Ok(Response::new(ListApiKeysResponse { keys }))
    }

    async fn revoke_api_key(
        &self,
        r: Request<RevokeApiKeyRequest>,
    ) -> Result<Response<RevokeApiKeyResponse>, Status> {
        let r = r.into_inner();
        keys_of(&self.core)?.revoke(&r.owner, &r.id).await?;
        self.core.invalidate(What::Handle(format!("key:{}", r.id)));
        tracing::info!(owner = %r.owner, key_id = %r.id, "API key revoked");
        Ok(Response::new(RevokeApiKeyResponse {}))
    }

    async fn issue_token(
        &self,
        r: Request<IssueTokenRequest>,
    ) -> Result<Response<IssueTokenResponse>, Status> {
        Ok(Response::new(self.core.issue_token(r.get_ref()).await?))
    }

    async fn public_keys(
        &self,
        _r: Request<PublicKeysRequest>,
    ) -> Result<Response<PublicKeysResponse>, Status> {
        Ok(Response::new(PublicKeysResponse {
            jwks: self.core.signer.jwks().to_string(),
            issuer: self.core.issuer.clone(),
        }))
    }

    type WatchStream = ReceiverStream<Result<Invalidation, Status>>;

    async fn watch(
        &self,
        _r: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut rx = self.core.invalidations.subscribe();
        let (tx, out) = tokio::sync::mpsc::channel(16);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let what = tokio::select! {
                    _ = shutdown.wait() => return,
                    got = rx.recv() => match got {
                        Ok(i) => i,
                        // Fell behind: the subscriber must drop everything.
                        Err(broadcast::error::RecvError::Lagged(_)) => Invalidation { what: Some(What::All(true)) },
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                if tx.send(Ok(what)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }
}
