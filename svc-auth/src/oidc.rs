//! Single sign-on (zot's `http.auth.openid`): OpenID Connect providers, and
//! GitHub's OAuth login. Both use the authorization-code flow with PKCE.
//! `begin` (after discovering an OpenID provider once) records the login in
//! progress beside the sessions, so any auth replica can finish it, and hands
//! back the provider URL; `finish` checks the state against the browser's
//! state cookie and exchanges the code. For OpenID it then verifies the ID
//! token (signature, audience, nonce) and reads the user name and groups from
//! the user info according to `claimMapping`; for GitHub the user is the
//! account's login and the groups are its organisations.

use crate::error::AuthError;
use crate::sessions::Sessions;
use capstan_runtime::config::auth::{OpenIdConfig, OpenIdProvider};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreProviderMetadata,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, UserInfoClaims,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// How long a browser may take at the provider.
const LOGIN_TTL: Duration = Duration::from_secs(600);

/// Claims beyond the standard ones (groups, custom user names).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
struct Extra {
    #[serde(flatten)]
    claims: BTreeMap<String, serde_json::Value>,
}
impl AdditionalClaims for Extra {}

#[derive(Debug, Clone)]
enum Kind {
    /// OpenID Connect, from the issuer's discovery document.
    Oidc { issuer: String },
    /// GitHub (or GitHub Enterprise) OAuth plus its REST API.
    GitHub {
        auth_url: String,
        token_url: String,
        api_url: String,
    },
}

#[derive(Debug, Clone)]
struct Provider {
    kind: Kind,
    client_id: String,
    client_secret: String,
    scopes: Vec<String>,
    username_claim: String,
    groups_claim: String,
}

/// A login between `begin` and `finish`.
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    provider: String,
    redirect_uri: String,
    pkce_verifier: String,
    nonce: String,
    callback_ui: String,
}

#[derive(Debug)]
pub struct Oidc {
    providers: HashMap<String, Provider>,
    allow_origins: Vec<String>,
    metadata: Mutex<HashMap<String, CoreProviderMetadata>>,
    http: openidconnect::reqwest::Client,
}

/// Who logged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    pub groups: Vec<String>,
    pub callback_ui: String,
}

fn unavailable(e: impl std::fmt::Display) -> AuthError {
    AuthError::Unavailable {
        what: "OpenID provider",
        message: e.to_string(),
    }
}

#[derive(Deserialize)]
struct Credentials {
    clientid: String,
    clientsecret: String,
}

impl Oidc {
    /// Check and prepare `c`; the error names the key at fault.
    pub fn new(c: &OpenIdConfig) -> Result<Self, String> {
        let mut providers = HashMap::new();
        for (name, p) in &c.providers {
            let key = format!("http.auth.openid.providers.{name}");
            providers.insert(name.clone(), provider(p, &key)?);
        }
        for o in &c.callback_allow_origins {
            if !(o.starts_with("https://") || o.starts_with("http://")) || o.ends_with('/') {
                return Err(format!(
                    "http.auth.openid.callbackAllowOrigins: {o:?} is not an origin (scheme://host[:port])"
                ));
            }
        }
        let http = openidconnect::reqwest::ClientBuilder::new()
            // Following redirects would let a provider point us anywhere.
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("http.auth.openid: {e}"))?;
        Ok(Self {
            providers,
            allow_origins: c.callback_allow_origins.clone(),
            metadata: Mutex::new(HashMap::new()),
            http,
        })
    }

    fn provider(&self, name: &str) -> Result<&Provider, AuthError> {
        self.providers
            .get(name)
            .ok_or_else(|| AuthError::Invalid(format!("unknown OpenID provider {name:?}")))
    }

    /// Only same-site paths or allow-listed origins: never an open redirect.
    fn check_callback(&self, ui: &str) -> Result<(), AuthError> {
        // Browsers drop tabs and newlines from a Location and read `\` as
        // `/`: `/%09/evil` would become `//evil`. Neither may appear.
        let clean = !ui.bytes().any(|b| b.is_ascii_control() || b == b'\\');
        let same_site = clean && ui.starts_with('/') && !ui.starts_with("//");
        let allowed = self.allow_origins.iter().any(|o| {
            ui == o
                || ui
                    .strip_prefix(o.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        });
        if ui.is_empty() || same_site || (clean && allowed) {
            Ok(())
        } else {
            Err(AuthError::Invalid(format!(
                "callback_ui {ui:?} is neither a path of this registry nor an allowed origin"
            )))
        }
    }

    async fn metadata(&self, name: &str, issuer: &str) -> Result<CoreProviderMetadata, AuthError> {
        if let Some(m) = self.metadata.lock().get(name) {
            return Ok(m.clone());
        }
        let issuer = IssuerUrl::new(issuer.to_string()).map_err(unavailable)?;
        let m = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(unavailable)?;
        self.metadata.lock().insert(name.to_string(), m.clone());
        Ok(m)
    }

    /// Where to send the browser, and the state to set as its cookie.
    pub async fn begin(
        &self,
        sessions: &Sessions,
        name: &str,
        redirect_uri: &str,
        callback_ui: &str,
    ) -> Result<(String, String), AuthError> {
        let p = self.provider(name)?;
        self.check_callback(callback_ui)?;
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|e| AuthError::Invalid(format!("redirect URI: {e}")))?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = match &p.kind {
            Kind::Oidc { issuer } => {
                let meta = self.metadata(name, issuer).await?;
                let client = CoreClient::from_provider_metadata(
                    meta,
                    ClientId::new(p.client_id.clone()),
                    Some(ClientSecret::new(p.client_secret.clone())),
                )
                .set_redirect_uri(redirect);
                let mut req = client.authorize_url(
                    CoreAuthenticationFlow::AuthorizationCode,
                    CsrfToken::new_random,
                    Nonce::new_random,
                );
                for s in &p.scopes {
                    req = req.add_scope(Scope::new(s.clone()));
                }
                req.set_pkce_challenge(challenge).url()
            }
            Kind::GitHub { .. } => {
                let client = github_client(p)?.set_redirect_uri(redirect);
                let mut req = client.authorize_url(CsrfToken::new_random);
                for s in &p.scopes {
                    req = req.add_scope(Scope::new(s.clone()));
                }
                let (url, state) = req.set_pkce_challenge(challenge).url();
                (url, state, Nonce::new(String::new()))
            }
        };
        let pending = Pending {
            provider: name.to_string(),
            redirect_uri: redirect_uri.to_string(),
            pkce_verifier: verifier.secret().clone(),
            nonce: nonce.secret().clone(),
            callback_ui: callback_ui.to_string(),
        };
        sessions
            .put_pending(
                state.secret(),
                &serde_json::to_string(&pending).expect("json"),
                LOGIN_TTL,
            )
            .await?;
        Ok((url.to_string(), state.secret().clone()))
    }

    /// Complete a login the provider sent back with `code`.
    pub async fn finish(
        &self,
        sessions: &Sessions,
        name: &str,
        redirect_uri: &str,
        code: &str,
        state: &str,
        state_cookie: &str,
    ) -> Result<Login, AuthError> {
        if state.is_empty() || !bool::from(state.as_bytes().ct_eq(state_cookie.as_bytes())) {
            return Err(AuthError::Unauthenticated(
                "login state does not match the browser's",
            ));
        }
        let pending: Pending = sessions
            .take_pending(state)
            .await?
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or(AuthError::Unauthenticated("unknown or expired login"))?;
        if pending.provider != name || pending.redirect_uri != redirect_uri {
            return Err(AuthError::Unauthenticated("login started elsewhere"));
        }
        let p = self.provider(name)?;
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|e| AuthError::Invalid(format!("redirect URI: {e}")))?;
        let issuer = match &p.kind {
            Kind::Oidc { issuer } => issuer,
            Kind::GitHub { api_url, .. } => {
                let token = github_client(p)?
                    .set_redirect_uri(redirect)
                    .exchange_code(AuthorizationCode::new(code.to_string()))
                    .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier))
                    .request_async(&self.http)
                    .await
                    .map_err(|e| {
                        tracing::info!(error = %e, "GitHub code exchange refused");
                        AuthError::Unauthenticated("code exchange refused")
                    })?;
                let (username, groups) = self
                    .github_user(api_url, token.access_token().secret())
                    .await?;
                return Ok(Login {
                    username,
                    groups,
                    callback_ui: pending.callback_ui,
                });
            }
        };
        let meta = self.metadata(name, issuer).await?;
        let client = CoreClient::from_provider_metadata(
            meta,
            ClientId::new(p.client_id.clone()),
            Some(ClientSecret::new(p.client_secret.clone())),
        )
        .set_redirect_uri(redirect);
        let token = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(unavailable)?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| {
                tracing::info!(error = %e, "OpenID code exchange refused");
                AuthError::Unauthenticated("code exchange refused")
            })?;
        let id_token = openidconnect::TokenResponse::id_token(&token)
            .ok_or(AuthError::Unauthenticated("no ID token"))?;
        let verifier = client.id_token_verifier();
        let claims = id_token
            .claims(&verifier, &Nonce::new(pending.nonce))
            .map_err(|e| {
                tracing::info!(error = %e, "OpenID ID token refused");
                AuthError::Unauthenticated("ID token refused")
            })?;
        let subject = claims.subject().as_str().to_string();
        let info: UserInfoClaims<Extra, CoreGenderClaim> = client
            .user_info(token.access_token().clone(), Some(claims.subject().clone()))
            .map_err(unavailable)?
            .request_async(&self.http)
            .await
            .map_err(unavailable)?;
        let username = match p.username_claim.as_str() {
            "sub" => Some(subject),
            // An address the provider has not verified names nobody.
            "email" => info
                .email()
                .filter(|_| info.email_verified() == Some(true))
                .map(|e| e.as_str().to_string()),
            "preferred_username" => info.preferred_username().map(|u| u.as_str().to_string()),
            other => info
                .additional_claims()
                .claims
                .get(other)
                .and_then(|v| v.as_str())
                .map(str::to_string),
        }
        .filter(|u| !u.is_empty())
        .ok_or(AuthError::Unauthenticated("the user-name claim is missing"))?;
        let groups = info
            .additional_claims()
            .claims
            .get(&p.groups_claim)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|g| g.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Login {
            username,
            groups,
            callback_ui: pending.callback_ui,
        })
    }
}

impl Oidc {
    /// The GitHub login and organisations of the token's owner.
    async fn github_user(
        &self,
        api: &str,
        token: &str,
    ) -> Result<(String, Vec<String>), AuthError> {
        #[derive(Deserialize)]
        struct Account {
            login: String,
        }
        let get = |path: &str| {
            self.http
                .get(format!("{api}{path}"))
                .bearer_auth(token)
                .header("Accept", "application/vnd.github+json")
                .header("User-Agent", "capstan")
                .send()
        };
        let r = get("/user").await.map_err(unavailable)?;
        if !r.status().is_success() {
            tracing::info!(status = %r.status(), "GitHub refused the token");
            return Err(AuthError::Unauthenticated("GitHub refused the token"));
        }
        let user: Account =
            serde_json::from_slice(&r.bytes().await.map_err(unavailable)?).map_err(unavailable)?;
        let r = get("/user/orgs").await.map_err(unavailable)?;
        let orgs: Vec<Account> = if r.status().is_success() {
            serde_json::from_slice(&r.bytes().await.map_err(unavailable)?).map_err(unavailable)?
        } else {
            Vec::new()
        };
        if user.login.is_empty() {
            return Err(AuthError::Unauthenticated("GitHub account without a login"));
        }
        Ok((user.login, orgs.into_iter().map(|o| o.login).collect()))
    }
}

type GitHubClient = oauth2::basic::BasicClient<
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

fn github_client(p: &Provider) -> Result<GitHubClient, AuthError> {
    let Kind::GitHub {
        auth_url,
        token_url,
        ..
    } = &p.kind
    else {
        return Err(AuthError::Invalid("not a GitHub provider".into()));
    };
    let bad = |e: oauth2::url::ParseError| AuthError::Invalid(format!("GitHub URL: {e}"));
    Ok(
        oauth2::basic::BasicClient::new(ClientId::new(p.client_id.clone()))
            .set_client_secret(ClientSecret::new(p.client_secret.clone()))
            .set_auth_uri(oauth2::AuthUrl::new(auth_url.clone()).map_err(bad)?)
            .set_token_uri(oauth2::TokenUrl::new(token_url.clone()).map_err(bad)?),
    )
}

fn provider(p: &OpenIdProvider, key: &str) -> Result<Provider, String> {
    let github = p.issuer.as_deref().is_none_or(str::is_empty) && key.ends_with(".github");
    let kind = if github {
        Kind::GitHub {
            auth_url: p
                .authurl
                .clone()
                .unwrap_or_else(|| "https://github.com/login/oauth/authorize".into()),
            token_url: p
                .tokenurl
                .clone()
                .unwrap_or_else(|| "https://github.com/login/oauth/access_token".into()),
            api_url: p
                .apiurl
                .clone()
                .unwrap_or_else(|| "https://api.github.com".into())
                .trim_end_matches('/')
                .to_string(),
        }
    } else {
        Kind::Oidc {
            issuer: p
                .issuer
                .clone()
                .filter(|i| !i.is_empty())
                .ok_or_else(|| format!("{key}.issuer: required"))?,
        }
    };
    let (client_id, client_secret) = match &p.credentials_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("{key}.credentialsFile {}: {e}", path.display()))?;
            let c: Credentials = serde_json::from_str(&text).map_err(|e| {
                format!(
                    "{key}.credentialsFile {}: expected {{\"clientid\", \"clientsecret\"}}: {e}",
                    path.display()
                )
            })?;
            (c.clientid, c.clientsecret)
        }
        None => (
            p.clientid.clone().unwrap_or_default(),
            p.clientsecret.clone().unwrap_or_default(),
        ),
    };
    if client_id.is_empty() {
        return Err(format!("{key}.clientid: required"));
    }
    let mut scopes = match (&kind, p.scopes.is_empty()) {
        (_, false) => p.scopes.clone(),
        (Kind::GitHub { .. }, true) => vec!["read:org".into(), "read:user".into()],
        (Kind::Oidc { .. }, true) => {
            vec![
                "openid".into(),
                "profile".into(),
                "email".into(),
                "groups".into(),
            ]
        }
    };
    if matches!(kind, Kind::Oidc { .. }) {
        scopes.retain(|s| s != "openid"); // always sent by the flow
    }
    let mapping = p.claim_mapping.clone().unwrap_or_default();
    Ok(Provider {
        kind,
        client_id,
        client_secret,
        scopes,
        username_claim: mapping.username.unwrap_or_else(|| "email".into()),
        groups_claim: mapping.groups.unwrap_or_else(|| "groups".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oidc(v: serde_json::Value) -> Result<Oidc, String> {
        Oidc::new(&serde_json::from_value(v).unwrap())
    }

    #[test]
    fn providers_need_an_issuer_and_a_client() {
        let err = oidc(serde_json::json!({"providers": {"corp": {"clientid": "x"}}})).unwrap_err();
        assert!(err.contains("providers.corp.issuer"), "{err}");
        let gh = oidc(serde_json::json!({"providers": {"github": {"clientid": "x"}}})).unwrap();
        let p = gh.provider("github").unwrap();
        assert!(
            matches!(&p.kind, Kind::GitHub { api_url, .. } if api_url == "https://api.github.com")
        );
        assert_eq!(p.scopes, vec!["read:org", "read:user"]);
        let err =
            oidc(serde_json::json!({"providers": {"oidc": {"issuer": "https://i"}}})).unwrap_err();
        assert!(err.contains("clientid"), "{err}");
        let o = oidc(
            serde_json::json!({"providers": {"oidc": {"issuer": "https://i", "clientid": "c",
            "claimMapping": {"username": "preferred_username"}}}}),
        )
        .unwrap();
        let p = o.provider("oidc").unwrap();
        assert_eq!(p.username_claim, "preferred_username");
        assert_eq!(p.groups_claim, "groups");
        assert_eq!(p.scopes, vec!["profile", "email", "groups"]);
        assert!(matches!(o.provider("other"), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn callbacks_are_paths_or_allowed_origins() {
        let o = oidc(serde_json::json!({"providers": {}, "callbackAllowOrigins": ["https://ui.example.org"]})).unwrap();
        for ok in [
            "",
            "/",
            "/home?x=1",
            "https://ui.example.org",
            "https://ui.example.org/after",
        ] {
            assert!(o.check_callback(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/\t/evil.example",
            "/\n/evil.example",
            "/a\\b",
            "//evil.example",
            "/\\evil.example",
            "https://evil.example/",
            "https://ui.example.org.evil.example/",
            "javascript:alert(1)",
            "https://ui.example.orgx",
        ] {
            assert!(o.check_callback(bad).is_err(), "{bad}");
        }
        let err = oidc(serde_json::json!({"callbackAllowOrigins": ["https://ui.example.org/"]}))
            .unwrap_err();
        assert!(err.contains("callbackAllowOrigins"), "{err}");
    }
}
