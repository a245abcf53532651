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
    /// zot's `mtls` identity settings: reported as ignored (the client
    /// certificate's CommonName names the user).
    #[serde(default)]
    pub mtls: Option<serde_json::Value>,
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
    #[serde(
        default,
        deserialize_with = "super::empty_path_is_none",
        rename = "credentialsFile"
    )]
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
    #[serde(
        default,
        deserialize_with = "super::empty_path_is_none",
        rename = "credentialsFile"
    )]
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
    /// zot's OIDC workload-identity tokens (`issuer`, `audiences`,
    /// `claimMapping`): not supported yet, so a configuration with it is
    /// refused rather than run without the identities it expects.
    #[serde(default)]
    pub oidc: Option<serde_json::Value>,
    /// PEM certificate (or public key) of an external token issuer. Absent:
    /// tokens come from Capstan's auth service and are checked against the
    /// keys it publishes.
    #[serde(default)]
    pub cert: Option<PathBuf>,
}

/// `http.auth.sessionDriver`: where login sessions live. zot's keys: `name`
/// and, for `redis`, the options of zot's Redis client (go-redis's
/// `UniversalOptions`), so a zot file reads unchanged.
///
/// Which Redis is used follows zot: a `url` names one server (or, with
/// `addr=` query parameters, a cluster); otherwise `master_name` selects
/// Redis Sentinel with `addr` listing the sentinels, and without it one
/// `addr` is one server and several are a cluster. Options that only tune
/// go-redis's connection pool have no counterpart here and are reported as
/// ignored ([`SessionDriverConfig::ignored`]).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct SessionDriverConfig {
    /// `local` or `redis`.
    pub name: String,
    /// Redis URL: `redis://[user:password@]host:port[/db]` or
    /// `redis+unix:///path[?db=N]`, `?protocol=3` for RESP3;
    /// `?addr=host:port` parameters (zot's cluster URL) add cluster nodes.
    /// As in zot, when `url` is set the other connection keys are not read.
    #[serde(default)]
    pub url: Option<String>,
    /// Prefix of session keys in Redis (default `zotsession`).
    #[serde(default)]
    pub keyprefix: Option<String>,
    /// `host:port` of the server, of cluster nodes, or (with
    /// `master_name`) of the sentinels; one string or a list.
    #[serde(default)]
    pub addr: Option<OneOrMany>,
    /// Database number (not with a cluster, which has only 0).
    #[serde(default)]
    pub db: Option<i64>,
    /// ACL user name of the Redis servers.
    #[serde(default)]
    pub username: Option<String>,
    /// Password of the Redis servers.
    #[serde(default)]
    pub password: Option<String>,
    /// RESP version: 2 or 3.
    #[serde(default)]
    pub protocol: Option<u8>,
    /// go-redis's `CLIENT SETNAME` (reported as ignored: the Rust client
    /// cannot name the connections it re-opens).
    #[serde(default)]
    pub client_name: Option<serde_json::Value>,
    /// Redis Sentinel: the monitored master's name; `addr` then lists the
    /// sentinels, and the master they name is followed across failovers.
    #[serde(default)]
    pub master_name: Option<String>,
    /// ACL user name of the sentinels.
    #[serde(default)]
    pub sentinel_username: Option<String>,
    /// Password of the sentinels.
    #[serde(default)]
    pub sentinel_password: Option<String>,
    /// Reconnection attempts before a call fails (one server).
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Least pause between reconnection attempts.
    #[serde(default, with = "super::opt_duration")]
    pub min_retry_backoff: Option<std::time::Duration>,
    /// Longest pause between reconnection attempts.
    #[serde(default, with = "super::opt_duration")]
    pub max_retry_backoff: Option<std::time::Duration>,
    /// Longest time a connection may take to open (default 1 s).
    #[serde(default, with = "super::opt_duration")]
    pub dial_timeout: Option<std::time::Duration>,
    /// Longest wait for an answer (default 1 s). The Rust client has one
    /// timeout per command, so the larger of this and `write_timeout` is it.
    #[serde(default, with = "super::opt_duration")]
    pub read_timeout: Option<std::time::Duration>,
    /// See `read_timeout`.
    #[serde(default, with = "super::opt_duration")]
    pub write_timeout: Option<std::time::Duration>,
    /// Cluster: how many times a call is retried after a redirection or a
    /// failed node (default 2).
    #[serde(default)]
    pub max_redirects: Option<u32>,
    /// go-redis only (reported as ignored).
    #[serde(default)]
    pub context_timeout_enabled: Option<serde_json::Value>,
    /// go-redis's pool (reported as ignored: one multiplexed connection
    /// per server carries every call here).
    #[serde(default)]
    pub pool_fifo: Option<serde_json::Value>,
    /// See `pool_fifo`.
    #[serde(default)]
    pub pool_size: Option<serde_json::Value>,
    /// See `pool_fifo`.
    #[serde(default)]
    pub pool_timeout: Option<serde_json::Value>,
    /// See `pool_fifo`.
    #[serde(default)]
    pub min_idle_conns: Option<serde_json::Value>,
    /// See `pool_fifo`.
    #[serde(default)]
    pub max_idle_conns: Option<serde_json::Value>,
    /// See `pool_fifo`.
    #[serde(default)]
    pub max_active_conns: Option<serde_json::Value>,
    /// See `pool_fifo`.
    #[serde(default)]
    pub conn_max_idle_time: Option<serde_json::Value>,
    /// See `pool_fifo`.
    #[serde(default)]
    pub conn_max_lifetime: Option<serde_json::Value>,
    /// Reads from replicas (reported as ignored: sessions are read from
    /// masters, so that a logout is seen at once).
    #[serde(default)]
    pub read_only: Option<serde_json::Value>,
    /// See `read_only`.
    #[serde(default)]
    pub route_by_latency: Option<serde_json::Value>,
    /// See `read_only`.
    #[serde(default)]
    pub route_randomly: Option<serde_json::Value>,
    /// go-redis's `CLIENT SETINFO` (reported as ignored).
    #[serde(default)]
    pub disable_identity: Option<serde_json::Value>,
    /// See `disable_identity`.
    #[serde(default)]
    pub identity_suffix: Option<serde_json::Value>,
    /// go-redis only (reported as ignored; use `protocol`).
    #[serde(default)]
    pub unstable_resp3: Option<serde_json::Value>,
}

/// One string or a list of them (zot accepts both for `addr`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The entries; a single string may hold several separated by spaces
    /// or commas.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => s
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

impl SessionDriverConfig {
    /// Keys that are set but have no effect, each with the reason, as
    /// paths under `http.auth.sessionDriver`.
    pub fn ignored(&self) -> Vec<(String, &'static str)> {
        const POOL: &str = "go-redis connection pool setting; Capstan keeps one \
                            multiplexed connection per Redis server";
        const REPLICA: &str = "sessions are always read from masters, so that a logout \
                               or a deleted key is seen at once";
        const GO: &str = "go-redis client setting with no counterpart here";
        let keys: [(&str, bool, &'static str); 15] = [
            ("client_name", self.client_name.is_some(), GO),
            (
                "context_timeout_enabled",
                self.context_timeout_enabled.is_some(),
                GO,
            ),
            ("pool_fifo", self.pool_fifo.is_some(), POOL),
            ("pool_size", self.pool_size.is_some(), POOL),
            ("pool_timeout", self.pool_timeout.is_some(), POOL),
            ("min_idle_conns", self.min_idle_conns.is_some(), POOL),
            ("max_idle_conns", self.max_idle_conns.is_some(), POOL),
            ("max_active_conns", self.max_active_conns.is_some(), POOL),
            (
                "conn_max_idle_time",
                self.conn_max_idle_time.is_some(),
                POOL,
            ),
            ("conn_max_lifetime", self.conn_max_lifetime.is_some(), POOL),
            ("read_only", self.read_only.is_some(), REPLICA),
            ("route_by_latency", self.route_by_latency.is_some(), REPLICA),
            ("route_randomly", self.route_randomly.is_some(), REPLICA),
            ("disable_identity", self.disable_identity.is_some(), GO),
            ("identity_suffix", self.identity_suffix.is_some(), GO),
        ];
        let mut out: Vec<(String, &'static str)> = keys
            .into_iter()
            .filter(|(_, set, _)| *set)
            .map(|(k, _, why)| (format!("http.auth.sessionDriver.{k}"), why))
            .collect();
        if self.unstable_resp3.is_some() {
            out.push((
                "http.auth.sessionDriver.unstable_resp3".into(),
                "go-redis client setting; `protocol: 3` selects RESP3",
            ));
        }
        if let Some(url) = &self.url {
            // zot reads nothing else when a URL is given.
            for (k, set) in [
                ("addr", self.addr.is_some()),
                ("db", self.db.is_some()),
                ("username", self.username.is_some()),
                ("password", self.password.is_some()),
                ("protocol", self.protocol.is_some()),
                ("master_name", self.master_name.is_some()),
                ("sentinel_username", self.sentinel_username.is_some()),
                ("sentinel_password", self.sentinel_password.is_some()),
                ("max_retries", self.max_retries.is_some()),
                ("min_retry_backoff", self.min_retry_backoff.is_some()),
                ("max_retry_backoff", self.max_retry_backoff.is_some()),
                ("dial_timeout", self.dial_timeout.is_some()),
                ("read_timeout", self.read_timeout.is_some()),
                ("write_timeout", self.write_timeout.is_some()),
                ("max_redirects", self.max_redirects.is_some()),
            ] {
                if set {
                    out.push((
                        format!("http.auth.sessionDriver.{k}"),
                        "`url` is set, and as in zot the URL alone says how to connect",
                    ));
                }
            }
            // go-redis reads many options from the URL's query; the Rust
            // client reads `protocol` and (for sockets) `db`, `user`, `pass`.
            if let Some((_, query)) = url.split_once('?') {
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let key = pair.split_once('=').map_or(pair, |(k, _)| k);
                    if !matches!(key, "addr" | "protocol" | "db" | "user" | "pass") {
                        out.push((
                            format!("http.auth.sessionDriver.url?{key}"),
                            "go-redis URL option with no counterpart here",
                        ));
                    }
                }
            }
        }
        if self.name != "redis" {
            // A local driver reads none of the Redis keys.
            for (k, set) in [
                ("url", self.url.is_some()),
                ("keyprefix", self.keyprefix.is_some()),
                ("addr", self.addr.is_some()),
                ("master_name", self.master_name.is_some()),
            ] {
                if set {
                    out.push((
                        format!("http.auth.sessionDriver.{k}"),
                        "only the redis session driver reads it",
                    ));
                }
            }
        }
        out
    }
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
    /// Who may read `/metrics` when authentication is on: `{"users": […]}`,
    /// and `"anonymousPolicy": ["read"]` for callers without credentials.
    #[serde(default)]
    pub metrics: Option<MetricsAccess>,
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

/// `http.accessControl.metrics`: who reads `/metrics`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsAccess {
    /// Users who may read them.
    #[serde(default)]
    pub users: Vec<String>,
    /// `["read"]`: callers without credentials may read them too (zot).
    #[serde(default)]
    pub anonymous_policy: Vec<String>,
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
