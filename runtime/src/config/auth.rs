//! `http.auth` and `http.accessControl`, typed with zot's key names so a zot
//! configuration reads unchanged. Only the shape is checked here; svc-auth
//! checks the meaning (action names, globs, consistency) at start-up and in
//! `capstan verify`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// How callers prove who they are (`http.auth`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthConfig {
    /// An htpasswd file of bcrypt entries; re-read when it changes.
    #[serde(default)]
    pub htpasswd: Option<HtpasswdConfig>,
    /// An LDAP directory; when set it is asked before htpasswd.
    #[serde(default)]
    pub ldap: Option<LdapConfig>,
    /// OpenID Connect login providers (single sign-on for the web UI).
    #[serde(default)]
    pub openid: Option<OpenIdConfig>,
    /// Bearer tokens: Capstan's own token service, or an external one
    /// whose signing certificate is given.
    #[serde(default)]
    pub bearer: Option<BearerConfig>,
    /// Let users create API keys (`/zot/auth/apikey`), usable as passwords.
    #[serde(default)]
    pub apikey: bool,
    /// Seconds every failed authentication waits before it is answered.
    #[serde(default)]
    pub fail_delay: u64,
    /// Where login sessions live: `{"name":"local"}` (default, under the
    /// storage root) or `{"name":"redis","url":…,"keyprefix":…}`.
    #[serde(default)]
    pub session_driver: Option<SessionDriverConfig>,
    /// zot's cookie-store key file; accepted for compatibility (Capstan's
    /// session cookies are random identifiers, not encrypted payloads).
    #[serde(default)]
    pub session_keys_file: Option<PathBuf>,
    /// Capstan: PEM PKCS#8 P-256 key that signs tokens. Replicas of the
    /// auth service must share it; generated under the storage root when
    /// absent.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// Capstan: SQL database of API keys (`sqlite://…` or `postgres://…`);
    /// default `auth.db` (SQLite) under the storage root.
    #[serde(default)]
    pub database: Option<String>,
    /// Capstan: seconds an issued token stays valid (default 300).
    #[serde(default = "default_token_ttl")]
    pub token_ttl: u64,
}

fn default_token_ttl() -> u64 {
    300
}

impl AuthConfig {
    /// Whether any way of authenticating is configured.
    pub fn has_credentials(&self) -> bool {
        self.htpasswd.is_some() || self.ldap.is_some() || self.openid.is_some()
    }
}

/// An LDAP directory (zot's keys). A user logs in by binding as the one
/// entry under `baseDN` whose `userAttribute` is the user name; the values of
/// `userGroupAttribute` are the user's groups.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct LdapConfig {
    /// Host name or IP address of the server.
    pub address: String,
    /// Port (default 389, or 636 for LDAPS).
    #[serde(default)]
    pub port: Option<u16>,
    /// Plain LDAP without TLS (zot's `insecure`).
    #[serde(default)]
    pub insecure: bool,
    /// Upgrade a plain connection with StartTLS.
    #[serde(default, rename = "startTLS")]
    pub start_tls: bool,
    /// Do not verify the server's certificate.
    #[serde(default, rename = "skipVerify")]
    pub skip_verify: bool,
    /// Search the whole subtree under `baseDN` rather than one level.
    #[serde(default, rename = "subtreeSearch")]
    pub subtree_search: bool,
    /// Where users are searched.
    #[serde(rename = "baseDN")]
    pub base_dn: String,
    /// Attribute holding the user name (default `uid`).
    #[serde(default, rename = "userAttribute")]
    pub user_attribute: Option<String>,
    /// Attribute whose values are the user's groups (e.g. `memberOf`).
    #[serde(default, rename = "userGroupAttribute")]
    pub user_group_attribute: Option<String>,
    /// Extra filter ANDed with the user match, e.g. `(objectClass=person)`.
    #[serde(default, rename = "userFilter")]
    pub user_filter: Option<String>,
    /// DN the search binds as (absent: an anonymous search).
    #[serde(default, rename = "bindDN")]
    pub bind_dn: Option<String>,
    /// Password of `bindDN`.
    #[serde(default, rename = "bindPassword")]
    pub bind_password: Option<String>,
    /// JSON file `{"bindDN": …, "bindPassword": …}` instead of the two keys.
    #[serde(default, rename = "credentialsFile")]
    pub credentials_file: Option<PathBuf>,
    /// Seconds a connection or query may take (default 5).
    #[serde(default, rename = "queryTimeout")]
    pub query_timeout: Option<u64>,
}

/// `http.auth.openid`: login through OpenID Connect providers.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct OpenIdConfig {
    /// Providers by name (`oidc`, or any name with an `issuer`); the name is
    /// the `provider` parameter of `/zot/auth/login` and the last segment of
    /// the callback path.
    #[serde(default)]
    pub providers: BTreeMap<String, OpenIdProvider>,
    /// Absolute origins (`https://ui.example.org`) that `callback_ui` may
    /// send the browser to after login; relative paths are always allowed.
    #[serde(default, rename = "callbackAllowOrigins")]
    pub callback_allow_origins: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct OpenIdProvider {
    /// Display name (zot's; informational).
    #[serde(default)]
    pub name: Option<String>,
    /// Issuer URL; its `/.well-known/openid-configuration` is read.
    #[serde(default)]
    pub issuer: Option<String>,
    /// OAuth client id registered with the provider.
    #[serde(default)]
    pub clientid: Option<String>,
    /// OAuth client secret.
    #[serde(default)]
    pub clientsecret: Option<String>,
    /// JSON file `{"clientid": …, "clientsecret": …}` instead of the two keys.
    #[serde(default, rename = "credentialsFile")]
    pub credentials_file: Option<PathBuf>,
    /// Scopes to ask for (default `openid`, `profile`, `email`, `groups`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Which claims name the user and list the groups.
    #[serde(default, rename = "claimMapping")]
    pub claim_mapping: Option<ClaimMapping>,
    /// zot's key file for some providers; accepted.
    #[serde(default)]
    pub keypath: Option<PathBuf>,
    /// `github` (GitHub Enterprise): OAuth authorization URL (default
    /// `https://github.com/login/oauth/authorize`).
    #[serde(default)]
    pub authurl: Option<String>,
    /// `github`: OAuth token URL (default
    /// `https://github.com/login/oauth/access_token`).
    #[serde(default)]
    pub tokenurl: Option<String>,
    /// `github` (Capstan): REST API base (default `https://api.github.com`).
    #[serde(default)]
    pub apiurl: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ClaimMapping {
    /// Claim holding the user name (default `email`).
    #[serde(default)]
    pub username: Option<String>,
    /// Claim holding the list of groups (default `groups`).
    #[serde(default)]
    pub groups: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct HtpasswdConfig {
    /// The htpasswd file (`user:$2y$…` lines, bcrypt only).
    pub path: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct BearerConfig {
    /// URL of the token service clients are sent to. Defaults to this
    /// registry's `/zot/auth/token` when Capstan issues the tokens.
    #[serde(default)]
    pub realm: Option<String>,
    /// The `service` (token audience) clients ask tokens for.
    #[serde(default)]
    pub service: Option<String>,
    /// PEM certificate (or public key) of an external token issuer. Absent:
    /// tokens come from Capstan's auth service and are checked against the
    /// keys it publishes.
    #[serde(default)]
    pub cert: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct SessionDriverConfig {
    /// `local` or `redis`.
    pub name: String,
    /// Redis URL (`redis://host:port/db`), for `redis`.
    #[serde(default)]
    pub url: Option<String>,
    /// Prefix of session keys in Redis (default `zotsession`).
    #[serde(default)]
    pub keyprefix: Option<String>,
}

/// Who may do what (`http.accessControl`), exactly zot's layout.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessControlConfig {
    /// Named groups of users: `{"dev": {"users": ["alice"]}}`.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupConfig>,
    /// Policies keyed by repository glob; the longest matching glob decides.
    #[serde(default)]
    pub repositories: BTreeMap<String, PolicyGroup>,
    /// Actions some users or groups hold on every repository.
    #[serde(default)]
    pub admin_policy: Option<Policy>,
    /// Who may read `/metrics` when authentication is on: `{"users": […]}`;
    /// absent, any authenticated user.
    #[serde(default)]
    pub metrics: Option<GroupConfig>,
}

impl AccessControlConfig {
    /// Whether any repository grants something to anonymous callers.
    pub fn anonymous_policy_exists(&self) -> bool {
        self.repositories
            .values()
            .any(|g| !g.anonymous_policy.is_empty())
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct GroupConfig {
    /// Members of the group.
    #[serde(default)]
    pub users: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyGroup {
    /// Grants to named users and groups.
    #[serde(default)]
    pub policies: Vec<Policy>,
    /// Actions of every authenticated caller.
    #[serde(default)]
    pub default_policy: Vec<String>,
    /// Actions of callers without credentials.
    #[serde(default)]
    pub anonymous_policy: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Policy {
    /// Users the policy applies to.
    #[serde(default)]
    pub users: Vec<String>,
    /// Groups the policy applies to.
    #[serde(default)]
    pub groups: Vec<String>,
    /// `read`, `create`, `update`, `delete`, `detectManifestCollision`.
    #[serde(default)]
    pub actions: Vec<String>,
}
