//! svc-auth owns who a caller is and what it may do: htpasswd credentials
//! (re-read on change), login sessions (local files or Redis), API keys (SQL),
//! the distribution token service (ES256 JWTs, published as JWKS), and the
//! access-control decisions of zot's `accessControl`, handed to gateways as
//! per-principal grants. Revoked credentials are announced on a `Watch` feed
//! so gateways drop them at once. It talks to the rest of Capstan only
//! through the gRPC contract in `proto/`.

pub mod apikeys;
pub mod error;
pub mod htpasswd;
pub mod ldap;
pub mod oidc;
pub mod policy;
pub mod redis_conn;
pub mod service;
pub mod sessions;
pub mod tokens;

use capstan_proto::auth::v1::{
    Invalidation, auth_service_server::AuthServiceServer, invalidation::What,
};
use capstan_runtime::config::auth::AuthConfig;
use capstan_runtime::{Config, Shutdown, grpc};
use service::{AuthCore, AuthServiceImpl};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use error::AuthError as Error;

/// `iss` of the tokens Capstan signs (configure distribution's
/// `auth.token.issuer` with it).
pub const TOKEN_ISSUER: &str = "capstan";

/// How often the htpasswd file is checked for changes in the background.
const HTPASSWD_POLL: Duration = Duration::from_secs(1);
/// How often expired local sessions are removed.
const SESSION_SWEEP: Duration = Duration::from_secs(3600);

/// The auth service's private directory under the storage root.
pub fn data_dir(config: &Config) -> PathBuf {
    config.storage.root_directory.join("_auth")
}

/// Check the meaning of the auth configuration (the shape is checked when
/// it is read). The message names the key at fault.
pub fn check_config(config: &Config) -> Result<(), String> {
    let policy = policy::Policy::new(config.http.access_control.as_ref())?;
    let default = AuthConfig::default();
    let auth = config.http.auth.as_ref().unwrap_or(&default);
    let can_log_in =
        auth.has_credentials() || config.http.tls.as_ref().is_some_and(|t| t.cacert.is_some());
    if policy.is_configured() && !can_log_in && !policy.only_anonymous() && auth.bearer.is_none() {
        return Err(
            "http.accessControl: policies for users need an authentication method \
                    (http.auth.htpasswd); without one only anonymousPolicy entries apply"
                .into(),
        );
    }
    if let Some(bad) = config
        .http
        .access_control
        .as_ref()
        .and_then(|a| a.metrics.as_ref())
        .and_then(|m| m.anonymous_policy.iter().find(|a| *a != "read"))
    {
        return Err(format!(
            "http.accessControl.metrics.anonymousPolicy: {bad:?} is not an action on \
             metrics (only \"read\")"
        ));
    }
    if let Some(o) = &auth.openid {
        oidc::Oidc::new(o)?;
    }
    if auth.apikey && !auth.has_credentials() {
        return Err(
            "http.auth.apikey: API keys belong to users, so a login method \
                    (http.auth.htpasswd) is needed"
                .into(),
        );
    }
    if let Some(d) = &auth.session_driver {
        match d.name.as_str() {
            "local" => {}
            "redis" => {
                redis_conn::Options::from_config(d)?;
            }
            other => {
                return Err(format!(
                    "http.auth.sessionDriver.name: {other:?} is not a session driver \
                     (\"local\" or \"redis\")"
                ));
            }
        }
    }
    if let Some(b) = &auth.bearer {
        if b.oidc.is_some() {
            return Err(
                "http.auth.bearer.oidc: zot's OIDC workload-identity tokens are not \
                 supported yet (Capstan accepts its own tokens, or an issuer's with \
                 bearer.cert)"
                    .into(),
            );
        }
        if b.cert.is_some() && b.realm.is_none() {
            return Err(
                "http.auth.bearer.realm: an external token issuer (bearer.cert) \
                        needs the realm clients fetch tokens from"
                    .into(),
            );
        }
        if b.cert.is_none()
            && !auth.has_credentials()
            && policy.is_configured()
            && !policy.only_anonymous()
        {
            return Err(
                "http.auth.bearer: Capstan's token service needs a login method \
                        (http.auth.htpasswd) to issue user tokens"
                    .into(),
            );
        }
    }
    if let Some(l) = &auth.ldap {
        ldap::Ldap::new(l)?;
    }
    if auth.fail_delay > 60 {
        return Err("http.auth.failDelay: at most 60 seconds".into());
    }
    if let Some(db) = &auth.database
        && !(db.starts_with("sqlite:")
            || db.starts_with("postgres:")
            || db.starts_with("postgresql:"))
    {
        return Err("http.auth.database: must be a sqlite:// or postgres:// URL".into());
    }
    Ok(())
}

/// The methods named in the configuration, for `Info`.
fn configured_methods(auth: &AuthConfig) -> Vec<String> {
    let mut m = Vec::new();
    for (name, on) in [
        ("apikey", auth.apikey),
        ("bearer", auth.bearer.is_some()),
        ("htpasswd", auth.htpasswd.is_some()),
        ("ldap", auth.ldap.is_some()),
        ("openid", auth.openid.is_some()),
    ] {
        if on {
            m.push(name.to_string());
        }
    }
    m
}

/// Build the service state from `config`.
pub async fn core(config: &Config) -> anyhow::Result<AuthCore> {
    check_config(config).map_err(anyhow::Error::msg)?;
    let default = AuthConfig::default();
    let auth = config.http.auth.as_ref().unwrap_or(&default);
    let dir = data_dir(config);
    std::fs::create_dir_all(&dir)?;
    let policy =
        policy::Policy::new(config.http.access_control.as_ref()).map_err(anyhow::Error::msg)?;
    let htpasswd =
        match &auth.htpasswd {
            Some(h) => Some(htpasswd::Htpasswd::load(&h.path).map_err(|e| {
                anyhow::anyhow!("http.auth.htpasswd.path {}: {e}", h.path.display())
            })?),
            None => None,
        };
    let ldap = match &auth.ldap {
        Some(l) => Some(ldap::Ldap::new(l).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let oidc = match &auth.openid {
        Some(o) => Some(oidc::Oidc::new(o).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let sessions = match &auth.session_driver {
        Some(d) if d.name == "redis" => sessions::Sessions::redis(
            &redis_conn::Options::from_config(d).map_err(anyhow::Error::msg)?,
            d.keyprefix.as_deref().unwrap_or("zotsession"),
        )?,
        _ => sessions::Sessions::local(&dir.join("sessions"))?,
    };
    // zot turns API keys on with OpenID: browser users need them for CLIs.
    let keys = if auth.apikey || auth.openid.is_some() {
        let url = auth.database.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                config.storage.root_directory.join("auth.db").display()
            )
        });
        // A Postgres that does not answer yet does not stop the role.
        let keys = if url.starts_with("postgres") {
            apikeys::ApiKeys::open_lazily(&url)
        } else {
            apikeys::ApiKeys::open(&url).await
        };
        Some(keys.map_err(|e| anyhow::anyhow!("http.auth.database: {e}"))?)
    } else {
        None
    };
    let signer = tokens::Signer::load_or_create(auth.signing_key.as_deref(), &dir)
        .map_err(|e| anyhow::anyhow!("http.auth.signingKey: {e}"))?;
    let (invalidations, _) = tokio::sync::broadcast::channel(256);
    Ok(AuthCore {
        policy,
        htpasswd,
        ldap,
        oidc,
        sessions,
        keys,
        signer,
        issuer: TOKEN_ISSUER.to_string(),
        token_ttl: Duration::from_secs(auth.token_ttl.max(1)),
        methods: configured_methods(auth),
        invalidations,
    })
}

/// Serve the role on `listener` until `shutdown`.
pub async fn serve(
    config: &Config,
    listen: impl Into<grpc::Listen>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listen = listen.into();
    let core = Arc::new(core(config).await?);
    spawn_housekeeping(core.clone(), shutdown.clone());
    let svc = AuthServiceImpl {
        core,
        shutdown: shutdown.clone(),
    };
    let health = grpc::health_service(&["capstan.auth.v1.AuthService"]).await;
    let routes = tonic::service::Routes::new(health).add_service(AuthServiceServer::new(svc));
    tracing::info!(addr = %listen.describe(), "auth service listening");
    grpc::serve(routes, listen, grpc::RoleMetrics::new("auth"), shutdown).await?;
    Ok(())
}

/// Watch the htpasswd file (a change drops every cached principal on the
/// gateways) and sweep expired local sessions, until shutdown.
fn spawn_housekeeping(core: Arc<AuthCore>, shutdown: Shutdown) {
    tokio::spawn(async move {
        let mut poll = tokio::time::interval(HTPASSWD_POLL);
        let mut sweep = tokio::time::interval(SESSION_SWEEP);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = poll.tick() => {
                    if let Some(h) = &core.htpasswd && h.refresh() {
                        let _ = core.invalidations.send(Invalidation { what: Some(What::All(true)) });
                    }
                }
                _ = sweep.tick() => {
                    let n = core.sessions.sweep().await;
                    if n > 0 {
                        tracing::info!(removed = n, "expired sessions removed");
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests;
