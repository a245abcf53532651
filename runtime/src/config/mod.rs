//! The configuration file: zot's layout (`http`, `storage`, `log`,
//! `extensions`, `scheduler`) so a zot user can bring their file, plus a
//! `services` section for distributed deployments.
//!
//! JSON and YAML are both read, and keys match whatever their case, as in
//! zot (`rootdirectory` is `rootDirectory`). `CAPSTAN_<SECTION>_<KEY>…`
//! environment variables override single values (`CAPSTAN_HTTP_PORT=5000`).
//! Unknown keys are reported as warnings; an invalid value is an error
//! naming its key.

pub mod auth;
mod casefold;
pub mod extensions;
pub mod retention;
pub mod storage_driver;

pub use auth::{AccessControlConfig, AuthConfig};
pub use extensions::{Extensions, SearchConfig, SyncConfig};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON or YAML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid value at `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// Distribution spec version announced (zot key; informational).
    #[serde(default)]
    pub dist_spec_version: Option<String>,
    /// Where and how bytes and metadata are stored.
    #[serde(default)]
    pub storage: StorageConfig,
    /// The HTTP listener of the gateway.
    #[serde(default)]
    pub http: HttpConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// zot extensions (sync, search, …); each role reads its own part.
    #[serde(default)]
    pub extensions: Option<Extensions>,
    /// zot's background task scheduler settings.
    #[serde(default)]
    pub scheduler: Option<serde_json::Value>,
    /// Addresses of the roles (Capstan; absent in embedded mode).
    #[serde(default)]
    pub services: ServicesConfig,
    /// zot's scale-out `cluster` (members, hashKey): reported as ignored;
    /// Capstan scales by running more replicas of each role.
    #[serde(default)]
    pub cluster: Option<serde_json::Value>,
    /// Old zot configurations' `version` (now `distSpecVersion`):
    /// informational, reported as ignored.
    #[serde(default)]
    pub version: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageConfig {
    /// Directory holding blobs, uploads and the embedded SQLite database.
    #[serde(default = "default_root")]
    pub root_directory: PathBuf,
    /// fsync blob bytes and directory entries before acknowledging a write.
    #[serde(default)]
    pub commit: bool,
    /// Write blob bytes with direct I/O (`O_DIRECT`), bypassing the page
    /// cache, where the filesystem supports it; otherwise, or when false,
    /// through the page cache (Capstan).
    #[serde(default = "yes")]
    pub direct_io: bool,
    /// With `directIo`, read each pushed blob once through the page cache
    /// after its commit, in the background and only while no push is
    /// writing, so that the pulls that usually follow a push are served
    /// from memory. Costs one more read of every pushed byte from the
    /// device; a write-mostly registry (a backup target) may turn it off
    /// (Capstan).
    #[serde(default = "yes")]
    pub warm_after_push: bool,
    /// zot's `dedupe`: Capstan always stores each digest once (blobs are
    /// content-addressed), so `false` is reported as ignored.
    #[serde(default)]
    pub dedupe: Option<bool>,
    /// zot's `gc` (default true): run garbage collection, which removes
    /// blob links that no manifest references and then the bytes of blobs
    /// that nothing links (see [`StorageConfig::gc_enabled`]).
    #[serde(default)]
    pub gc: Option<bool>,
    /// zot's `gcDelay` (default 1h): how long an unreferenced blob link,
    /// or a blob stored but never linked, is kept before garbage
    /// collection may remove it. A push must send its manifest within this
    /// time of its first blob upload (three quarters of it after a check
    /// for a blob it did not upload).
    #[serde(default, with = "opt_duration")]
    pub gc_delay: Option<Duration>,
    /// zot's `gcInterval` (default 1h): time between garbage collections;
    /// `0` runs none on a schedule (`capstan gc` still does).
    #[serde(default, with = "opt_duration")]
    pub gc_interval: Option<Duration>,
    /// zot's `storageDriver`: keep blob bytes in an S3-compatible bucket
    /// instead of under `rootDirectory` (see
    /// [`storage_driver::StorageDriverConfig`]). `rootDirectory` still
    /// holds the embedded SQLite database.
    #[serde(default)]
    pub storage_driver: Option<storage_driver::StorageDriverConfig>,
    /// Answer blob GETs with a 307 redirect to a presigned URL of the
    /// storage driver, so that clients fetch the bytes from the bucket
    /// directly (Capstan; needs `storageDriver`; never for `Range`
    /// requests).
    #[serde(default)]
    pub redirect_blob_url: bool,
    /// zot's `cacheDriver` (its dedupe cache). Capstan keeps what it needs
    /// in its own database: reported as ignored.
    #[serde(default)]
    pub cache_driver: Option<serde_json::Value>,
    /// zot's `remoteCache`: see `cacheDriver`.
    #[serde(default)]
    pub remote_cache: Option<serde_json::Value>,
    /// zot's `retention` policies (see [`retention::RetentionConfig`]),
    /// applied with garbage collection.
    #[serde(default)]
    pub retention: Option<retention::RetentionConfig>,
    /// zot's `subPaths`: repositories whose name's first component is a
    /// key's (`"/team"` holds `team/…`) keep their blobs in that entry's
    /// own directory or bucket (see [`SubPathConfig`]).
    #[serde(default)]
    pub sub_paths: BTreeMap<String, SubPathConfig>,
    /// zot's `hydrateBlobOnRead`: reported as ignored.
    #[serde(default)]
    pub hydrate_blob_on_read: Option<serde_json::Value>,
    /// Age after which an abandoned upload session is removed (Capstan).
    #[serde(default = "default_upload_expiry", with = "duration_str")]
    pub upload_expiry: Duration,
    /// Metadata database URL (`sqlite://…` or `postgres://…`); default is
    /// `meta.db` (SQLite) under `rootDirectory`.
    #[serde(default)]
    pub database: Option<String>,
}

/// One entry of zot's `storage.subPaths`: where the blobs of the
/// repositories under its key live. Metadata stays in the one database.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubPathConfig {
    /// The directory holding these repositories' blobs and uploads (unless
    /// `storageDriver` is set); it must not be another store's.
    #[serde(default, deserialize_with = "empty_path_is_none")]
    pub root_directory: Option<PathBuf>,
    /// An S3 bucket for these repositories' blobs instead of a directory.
    #[serde(default)]
    pub storage_driver: Option<storage_driver::StorageDriverConfig>,
    /// As `storage.commit`, for this store; the top level's when absent.
    #[serde(default)]
    pub commit: Option<bool>,
    /// zot's `dedupe`: as at the top level, each digest is stored once per
    /// store, so only `false` is reported as ignored.
    #[serde(default)]
    pub dedupe: Option<bool>,
    /// zot's `gc` for these repositories: whether a collection removes
    /// their unreferenced links and their store's unused blobs; the top
    /// level's `gc` when absent.
    #[serde(default)]
    pub gc: Option<bool>,
    /// zot's `gcDelay` for these repositories and their store (default
    /// 1h, as in zot).
    #[serde(default, with = "opt_duration")]
    pub gc_delay: Option<Duration>,
    /// zot's `gcInterval`: one collection covers every store, every
    /// `storage.gcInterval`, so this is reported as ignored.
    #[serde(default)]
    pub gc_interval: Option<serde_json::Value>,
    /// zot's `retention` for these repositories (the top level's policies
    /// do not apply to them; absent: no policy, so every tag is kept and
    /// untagged manifests go). Its `delay` defaults to this `gcDelay`.
    #[serde(default)]
    pub retention: Option<retention::RetentionConfig>,
    /// zot's dedupe caches: reported as ignored, as at the top level.
    #[serde(default)]
    pub cache_driver: Option<serde_json::Value>,
    #[serde(default)]
    pub remote_cache: Option<serde_json::Value>,
}

impl SubPathConfig {
    /// Keys given that have no effect, for `ignored_keys`.
    fn ignored(&self, key: &str) -> Vec<(String, &'static str)> {
        [
            (
                "gcInterval",
                self.gc_interval.is_some(),
                "one collection covers every store, every storage.gcInterval",
            ),
            (
                "dedupe",
                self.dedupe == Some(false),
                "blobs are content-addressed: each digest is always stored once",
            ),
            (
                "cacheDriver",
                self.cache_driver.is_some(),
                "zot's dedupe cache; Capstan keeps what it needs in its own database",
            ),
            (
                "remoteCache",
                self.remote_cache.is_some(),
                "zot's dedupe cache; Capstan keeps what it needs in its own database",
            ),
        ]
        .into_iter()
        .filter(|(_, set, _)| *set)
        .map(|(k, _, why)| (format!("storage.subPaths.{key}.{k}"), why))
        .chain(
            self.storage_driver
                .iter()
                .flat_map(|d| d.ignored())
                .map(|(k, why)| {
                    (
                        k.replacen("storage.", &format!("storage.subPaths.{key}."), 1),
                        why,
                    )
                }),
        )
        .collect()
    }
}

/// The `subPaths` entry a repository belongs to, as zot routes it: the
/// first component of a name with more than one (`team/app` → `team`);
/// names of one component belong to the top-level store.
pub fn route_prefix(repo: &str) -> Option<&str> {
    repo.split_once('/').map(|(first, _)| first)
}

/// Whether `name` is one component of a repository name as the OCI
/// distribution spec writes it (`[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`).
fn is_path_component(name: &str) -> bool {
    let b = name.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let sep = |c: u8| matches!(c, b'.' | b'_' | b'-');
    !b.is_empty()
        && alnum(b[0])
        && alnum(b[b.len() - 1])
        && b.iter().all(|&c| alnum(c) || sep(c))
        && !name.contains("..")
        && !name.contains("___")
        && !name.contains("._")
        && !name.contains("_.")
        && !name.contains(".-")
        && !name.contains("-.")
        && !name.contains("_-")
        && !name.contains("-_")
}

/// Garbage collection's settings for one store and its repositories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcScope {
    /// `gc`: collect at all.
    pub enabled: bool,
    /// `gcDelay`.
    pub delay: Duration,
}

/// zot's default `gcDelay`.
pub const DEFAULT_GC_DELAY: Duration = Duration::from_secs(3600);
/// zot's default `gcInterval`.
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(3600);

impl StorageConfig {
    /// The garbage collection settings of the store named `store` (a
    /// `subPaths` entry without slashes; `""` for the top level).
    pub fn gc_scope(&self, store: &str) -> GcScope {
        let top = GcScope {
            enabled: self.gc_enabled(),
            delay: self.gc_delay(),
        };
        match self.sub_path(store) {
            None => top,
            Some(sub) => GcScope {
                enabled: sub.gc.unwrap_or(top.enabled),
                delay: sub.gc_delay.unwrap_or(DEFAULT_GC_DELAY),
            },
        }
    }

    /// The garbage collection settings that apply to repository `repo`.
    pub fn gc_scope_of(&self, repo: &str) -> GcScope {
        self.gc_scope(self.store_of(repo).unwrap_or(""))
    }

    /// The `subPaths` entry named `store` (its key without slashes).
    pub fn sub_path(&self, store: &str) -> Option<&SubPathConfig> {
        if store.is_empty() {
            return None;
        }
        self.sub_paths
            .iter()
            .find(|(k, _)| k.trim_matches('/') == store)
            .map(|(_, v)| v)
    }

    /// The name of the `subPaths` entry whose store holds `repo`'s blobs
    /// (its key without slashes), or `None` for the top-level store.
    pub fn store_of(&self, repo: &str) -> Option<&str> {
        let first = route_prefix(repo)?;
        self.sub_paths
            .keys()
            .map(|k| k.trim_matches('/'))
            .find(|k| *k == first)
    }

    /// `gc`, defaulting to true as in zot.
    pub fn gc_enabled(&self) -> bool {
        self.gc.unwrap_or(true)
    }

    /// `gcDelay` or its default.
    pub fn gc_delay(&self) -> Duration {
        self.gc_delay.unwrap_or(DEFAULT_GC_DELAY)
    }

    /// `gcInterval` or its default; zero means no scheduled runs.
    pub fn gc_interval(&self) -> Duration {
        self.gc_interval.unwrap_or(DEFAULT_GC_INTERVAL)
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            root_directory: default_root(),
            commit: false,
            direct_io: true,
            warm_after_push: true,
            dedupe: None,
            gc: None,
            gc_delay: None,
            gc_interval: None,
            storage_driver: None,
            redirect_blob_url: false,
            cache_driver: None,
            remote_cache: None,
            retention: None,
            sub_paths: BTreeMap::new(),
            hydrate_blob_on_read: None,
            upload_expiry: default_upload_expiry(),
            database: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpConfig {
    /// Address the gateway binds.
    #[serde(default = "default_address")]
    pub address: String,
    /// Port the gateway binds; zot writes it as a string, a number works too.
    #[serde(default = "default_port", deserialize_with = "port")]
    pub port: u16,
    /// Serve HTTPS (with HTTP/2) instead of plain HTTP/1.1.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Realm of authentication challenges.
    #[serde(default)]
    pub realm: Option<String>,
    /// Public URL of the registry when it runs behind a proxy.
    #[serde(default)]
    pub external_url: Option<String>,
    /// Authentication (`htpasswd`, `ldap`, `openid`, `bearer`, `apikey`, …).
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Authorization policies.
    #[serde(default)]
    pub access_control: Option<AccessControlConfig>,
    /// zot 1.x's `ReadOnly`. `true` is refused (Capstan has no read-only
    /// mode: grant no create/update/delete in `accessControl` instead).
    #[serde(default)]
    pub read_only: Option<bool>,
    /// zot's `Ratelimit`: reported as ignored (no rate limiting yet).
    #[serde(default)]
    pub ratelimit: Option<serde_json::Value>,
    /// zot's `writeTimeout`: reported as ignored.
    #[serde(default)]
    pub write_timeout: Option<serde_json::Value>,
    /// zot compatibility switches (e.g. `docker2s2`); accepted, informational.
    #[serde(default)]
    pub compat: Option<serde_json::Value>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            address: default_address(),
            port: default_port(),
            tls: None,
            realm: None,
            external_url: None,
            auth: None,
            access_control: None,
            compat: None,
            read_only: None,
            ratelimit: None,
            write_timeout: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// CA bundle for client certificates (mutual TLS).
    #[serde(default)]
    pub cacert: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`, or a tracing filter.
    #[serde(default = "default_level")]
    pub level: String,
    /// File to append logs to; standard error when absent.
    #[serde(default)]
    pub output: Option<PathBuf>,
    /// Audit log file (zot key; accepted, not yet written).
    #[serde(default)]
    pub audit: Option<PathBuf>,
    /// `text` (default) or `json`.
    #[serde(default)]
    pub format: Option<String>,
    /// OpenTelemetry traces (Capstan): where to export them.
    #[serde(default)]
    pub traces: TracesConfig,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_level(),
            output: None,
            audit: None,
            format: None,
            traces: TracesConfig::default(),
        }
    }
}

/// `log.traces` (Capstan): OTLP export of every request's and call's spans.
/// The standard `OTEL_EXPORTER_OTLP_ENDPOINT` variable turns it on too.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TracesConfig {
    /// The OTLP/gRPC endpoint of a collector (`http://collector:4317`);
    /// takes precedence over `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// Where each role listens and where the others find it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicesConfig {
    #[serde(default)]
    pub blob: ServiceAddress,
    #[serde(default)]
    pub meta: ServiceAddress,
    #[serde(default)]
    pub auth: ServiceAddress,
    #[serde(default)]
    pub sync: ServiceAddress,
    /// The secret the roles of one deployment share: every gRPC call
    /// between them carries it, and a role refuses a call without it (the
    /// standard health service excepted). At least 16 characters. Not
    /// needed in embedded mode, where the roles bind no port.
    #[serde(default)]
    pub secret: Option<String>,
    /// A file holding the shared secret instead, one per line: the first
    /// is the one sent, every line is accepted. Re-read every few seconds,
    /// so a secret is rotated with no restart: add the new one as a second
    /// line everywhere, then make it the first, then drop the old one.
    #[serde(default, deserialize_with = "empty_path_is_none")]
    pub secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAddress {
    /// `host:port` this role binds when run on its own (`--role`).
    #[serde(default)]
    pub listen: Option<String>,
    /// gRPC URLs of the role's replicas (`http://host:port`), used by the
    /// gateway; requests are spread over them.
    #[serde(default)]
    pub endpoints: Vec<String>,
}

fn yes() -> bool {
    true
}
fn default_address() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    8080
}
fn default_level() -> String {
    "info".into()
}
fn default_upload_expiry() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// The default data directory: `$XDG_DATA_HOME/capstan`,
/// `$HOME/.local/share/capstan`, or `./capstan-data`.
pub fn default_root() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("capstan");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/capstan");
    }
    PathBuf::from("capstan-data")
}

fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum P {
        N(u64),
        S(String),
    }
    let n = match P::deserialize(d)? {
        P::N(n) => n,
        P::S(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| serde::de::Error::custom(format!("port {s:?} is not a number")))?,
    };
    u16::try_from(n).map_err(|_| serde::de::Error::custom(format!("port {n} is out of range")))
}

/// Go-style duration strings (`"1h"`, `"90m"`, `"1h30m"`) or seconds.
mod duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum V {
            Secs(u64),
            S(String),
        }
        match V::deserialize(d)? {
            V::Secs(n) => Ok(Duration::from_secs(n)),
            V::S(s) => humantime::parse_duration(&s)
                .map_err(|e| serde::de::Error::custom(format!("duration {s:?}: {e}"))),
        }
    }
}

/// An optional path where `""` means none (zot writes
/// `"credentialsFile": ""` for "no file").
pub(crate) fn empty_path_is_none<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<PathBuf>, D::Error> {
    Ok(Option::<PathBuf>::deserialize(d)?.filter(|p| !p.as_os_str().is_empty()))
}

/// [`duration_str`] for an optional value.
mod opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_str::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "super::duration_str")] Duration);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

/// A parsed configuration plus the keys it did not recognise.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// Dotted paths of keys that no part of Capstan reads.
    pub unknown_keys: Vec<String>,
}

impl Loaded {
    /// Keys that are understood but have no effect here, with the reason
    /// (zot settings of its Go libraries, for instance).
    pub fn ignored_keys(&self) -> Vec<(String, &'static str)> {
        let mut out: Vec<(String, &'static str)> = Vec::new();
        let st = &self.config.storage;
        for (key, set, why) in [
            (
                "storage.dedupe",
                st.dedupe == Some(false),
                "blobs are content-addressed: each digest is always stored once",
            ),
            (
                "storage.cacheDriver",
                st.cache_driver.is_some(),
                "zot's dedupe cache; Capstan keeps what it needs in its own database",
            ),
            (
                "storage.remoteCache",
                st.remote_cache.is_some(),
                "zot's dedupe cache; Capstan keeps what it needs in its own database",
            ),
            (
                "scheduler",
                self.config.scheduler.is_some(),
                "zot's task scheduler settings have no counterpart here",
            ),
            (
                "storage.hydrateBlobOnRead",
                st.hydrate_blob_on_read.is_some(),
                "zot's lazy blob hydration has no counterpart here",
            ),
            (
                "cluster",
                self.config.cluster.is_some(),
                "zot's scale-out cluster; Capstan scales by running more replicas of \
                 each role behind its gateways (services)",
            ),
            (
                "version",
                self.config.version.is_some(),
                "informational (the old name of distSpecVersion)",
            ),
            (
                "http.Ratelimit",
                self.config.http.ratelimit.is_some(),
                "zot's rate limiting is not implemented yet",
            ),
            (
                "http.writeTimeout",
                self.config.http.write_timeout.is_some(),
                "no counterpart here; uploads have no fixed timeout",
            ),
        ] {
            if set {
                out.push((key.to_string(), why));
            }
        }
        if self
            .config
            .http
            .auth
            .as_ref()
            .is_some_and(|a| a.mtls.is_some())
        {
            out.push((
                "http.auth.mtls".into(),
                "zot's certificate identity settings; Capstan takes the certificate's \
                 CommonName",
            ));
        }
        if let Some(e) = &self.config.extensions {
            for (key, set, why) in [
                (
                    "search.cve",
                    e.search.as_ref().is_some_and(|s| s.cve.is_some()),
                    "Capstan scans for no vulnerabilities",
                ),
                ("ui", e.ui.is_some(), "zot's web UI is not implemented yet"),
                (
                    "lint",
                    e.lint.is_some(),
                    "zot's lint extension is not implemented",
                ),
                (
                    "trust",
                    e.trust.is_some(),
                    "zot's signature verification (trust) is not implemented",
                ),
                (
                    "mgmt",
                    e.mgmt.is_some(),
                    "/v2/_zot/ext/mgmt comes with extensions.search; this section is not read",
                ),
                (
                    "userprefs",
                    e.userprefs.is_some(),
                    "stars and bookmarks come with extensions.search; this section is not read",
                ),
                (
                    "metrics",
                    e.metrics.is_some(),
                    "the gateway always serves /metrics; this section's settings are not read",
                ),
                (
                    "sysconfig",
                    e.sysconfig.is_some(),
                    "zot's configuration API is not implemented",
                ),
                (
                    "sign",
                    e.sign.is_some(),
                    "zot's signing extension is not implemented",
                ),
                (
                    "events",
                    e.events.is_some(),
                    "zot's event sinks are not implemented",
                ),
            ] {
                if set {
                    out.push((format!("extensions.{key}"), why));
                }
            }
            if let Some(sync) = &e.sync {
                out.extend(sync.ignored());
            }
        }
        if let Some(d) = &st.storage_driver {
            out.extend(d.ignored());
        }
        for (key, sub) in &st.sub_paths {
            out.extend(sub.ignored(key));
        }
        if let Some(d) = self
            .config
            .http
            .auth
            .as_ref()
            .and_then(|a| a.session_driver.as_ref())
        {
            out.extend(d.ignored());
        }
        out
    }
}

impl Config {
    /// Read `path` (JSON or YAML), apply `CAPSTAN_…` overrides from `env`.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let value = parse_text(&text).map_err(|message| ConfigError::Syntax {
            path: path.to_path_buf(),
            message,
        })?;
        Self::from_value(value, env)
    }

    /// Embedded defaults plus `CAPSTAN_…` overrides.
    pub fn defaults(
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        Self::from_value(serde_json::json!({}), env)
    }

    pub fn from_value(
        mut value: serde_json::Value,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        for (k, v) in env {
            if let Some(rest) = k.strip_prefix("CAPSTAN_") {
                apply_override(&mut value, rest, &v);
            }
        }
        legacy_access_control(&mut value);
        let mut unknown_keys = Vec::new();
        // serde_ignored writes `?` for the inside of an Option.
        let mut on_ignored =
            |path: serde_ignored::Path<'_>| unknown_keys.push(path.to_string().replace("?.", ""));
        // zot matches keys without regard to case; so does Capstan.
        let de = serde_ignored::Deserializer::new(casefold::Folded(value), &mut on_ignored);
        let config: Config =
            serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Invalid {
                key: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        config.check()?;
        Ok(Loaded {
            config,
            unknown_keys,
        })
    }

    /// Cross-field checks that serde cannot express.
    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        };
        if self.http.address.parse::<std::net::IpAddr>().is_err()
            && self.http.address != "localhost"
        {
            return Err(invalid("http.address", "must be an IP address"));
        }
        if let Some(tls) = &self.http.tls {
            if tls.cert.as_os_str().is_empty() {
                return Err(invalid("http.tls.cert", "must name a PEM file"));
            }
            if tls.key.as_os_str().is_empty() {
                return Err(invalid("http.tls.key", "must name a PEM file"));
            }
        }
        for (name, svc) in [
            ("blob", &self.services.blob),
            ("meta", &self.services.meta),
            ("auth", &self.services.auth),
            ("sync", &self.services.sync),
        ] {
            for (i, e) in svc.endpoints.iter().enumerate() {
                if !(e.starts_with("http://") || e.starts_with("https://")) {
                    return Err(invalid(
                        &format!("services.{name}.endpoints[{i}]"),
                        "must be an http:// or https:// URL",
                    ));
                }
            }
            if let Some(l) = &svc.listen
                && l.parse::<std::net::SocketAddr>().is_err()
            {
                return Err(invalid(
                    &format!("services.{name}.listen"),
                    "must be host:port with an IP address",
                ));
            }
        }
        match (&self.services.secret, &self.services.secret_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "services.secretFile",
                    "set services.secret or services.secretFile, not both",
                ));
            }
            (Some(s), None) if s.len() < crate::grpc::secret::MIN_SECRET_LEN => {
                return Err(invalid(
                    "services.secret",
                    &format!(
                        "must be at least {} characters",
                        crate::grpc::secret::MIN_SECRET_LEN
                    ),
                ));
            }
            _ => {}
        }
        if self.http.read_only == Some(true) {
            return Err(invalid(
                "http.ReadOnly",
                "a read-only registry is not supported; grant no create, update or \
                 delete in http.accessControl instead",
            ));
        }
        if let Some((key, message)) = self
            .storage
            .storage_driver
            .as_ref()
            .and_then(|d| d.problem())
        {
            return Err(invalid(key, &message));
        }
        let mut roots = vec![self.storage.root_directory.clone()];
        for (key, sub) in &self.storage.sub_paths {
            let name = key.trim_matches('/');
            let at = format!("storage.subPaths.{key}");
            if !is_path_component(name) {
                return Err(invalid(
                    &at,
                    "a subpath names one repository path component, like \"/team\" \
                     (zot routes a repository by its first component)",
                ));
            }
            if let Some(d) = &sub.storage_driver {
                if let Some((k, message)) = d.problem() {
                    return Err(invalid(
                        &k.replacen("storage.", &format!("{at}."), 1),
                        &message,
                    ));
                }
                continue;
            }
            let Some(root) = &sub.root_directory else {
                return Err(invalid(&at, "needs rootDirectory or storageDriver"));
            };
            if roots.contains(root) {
                return Err(invalid(
                    &format!("{at}.rootDirectory"),
                    "must differ from storage.rootDirectory and from every other subpath's",
                ));
            }
            roots.push(root.clone());
        }
        if self.storage.redirect_blob_url && self.storage.storage_driver.is_none() {
            return Err(invalid(
                "storage.redirectBlobURL",
                "needs storage.storageDriver: blobs on the filesystem have no URL to redirect to",
            ));
        }
        if matches!(self.log.format.as_deref(), Some(f) if f != "text" && f != "json") {
            return Err(invalid("log.format", "must be \"text\" or \"json\""));
        }
        Ok(())
    }

    /// The metadata database URL.
    pub fn database_url(&self) -> String {
        self.storage.database.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.storage.root_directory.join("meta.db").display()
            )
        })
    }
}

/// zot's older layout of `http.accessControl` puts the repository globs
/// beside `adminPolicy` instead of under `repositories` (its examples still
/// do): move them there, so their policies apply rather than being dropped
/// as unknown keys.
fn legacy_access_control(root: &mut serde_json::Value) {
    fn field<'a>(
        v: &'a mut serde_json::Value,
        name: &str,
    ) -> Option<&'a mut serde_json::Map<String, serde_json::Value>> {
        let map = v.as_object_mut()?;
        let key = map.keys().find(|k| k.eq_ignore_ascii_case(name))?.clone();
        map.get_mut(&key)?.as_object_mut()
    }
    let Some(http) = field(root, "http") else {
        return;
    };
    let key = http
        .keys()
        .find(|k| k.eq_ignore_ascii_case("accessControl"))
        .cloned();
    let Some(ac) = key
        .and_then(|k| http.get_mut(&k))
        .and_then(|v| v.as_object_mut())
    else {
        return;
    };
    const KNOWN: [&str; 4] = ["groups", "repositories", "adminPolicy", "metrics"];
    let globs: Vec<String> = ac
        .keys()
        .filter(|k| !KNOWN.iter().any(|known| known.eq_ignore_ascii_case(k)))
        .cloned()
        .collect();
    if globs.is_empty() {
        return;
    }
    let repos_key = ac
        .keys()
        .find(|k| k.eq_ignore_ascii_case("repositories"))
        .cloned()
        .unwrap_or_else(|| "repositories".to_string());
    let mut moved = serde_json::Map::new();
    for g in globs {
        if let Some(v) = ac.remove(&g) {
            moved.insert(g, v);
        }
    }
    let repos = ac
        .entry(repos_key)
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    if let Some(repos) = repos.as_object_mut() {
        for (g, v) in moved {
            repos.entry(g).or_insert(v);
        }
    }
}

fn parse_text(text: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str(text) {
        Ok(v) => Ok(v),
        Err(json_err) => serde_yaml::from_str::<serde_json::Value>(text)
            .map_err(|yaml_err| format!("as JSON: {json_err}; as YAML: {yaml_err}")),
    }
}

/// `HTTP_PORT=5000` sets `http.port`; keys match case-insensitively and
/// missing objects are created. The value is read as JSON when it parses
/// (numbers, booleans, arrays), otherwise as a string.
fn apply_override(root: &mut serde_json::Value, path: &str, raw: &str) {
    let parts: Vec<String> = path.split('_').map(|p| p.to_ascii_lowercase()).collect();
    let mut cur = root;
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = serde_json::Value::Object(Default::default());
        }
        let map = cur.as_object_mut().expect("object");
        let key = map
            .keys()
            .find(|k| k.to_ascii_lowercase() == *part)
            .cloned()
            .unwrap_or_else(|| camel_case_guess(part));
        if i + 1 == parts.len() {
            let v =
                serde_json::from_str(raw).unwrap_or_else(|_| serde_json::Value::String(raw.into()));
            map.insert(key, v);
            return;
        }
        cur = map
            .entry(key)
            .or_insert(serde_json::Value::Object(Default::default()));
    }
}

/// Keys zot spells in camelCase that an environment variable writes in one word.
fn camel_case_guess(lower: &str) -> String {
    const KNOWN: &[&str] = &[
        "rootDirectory",
        "gcDelay",
        "uploadExpiry",
        "directIo",
        "warmAfterPush",
        "externalUrl",
        "accessControl",
        "distSpecVersion",
        "failDelay",
        "sessionDriver",
    ];
    KNOWN
        .iter()
        .find(|k| k.to_ascii_lowercase() == lower)
        .map(|k| k.to_string())
        .unwrap_or_else(|| lower.to_string())
}

/// Sorted map helper for callers that print effective settings.
pub fn summary(config: &Config) -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    m.insert(
        "http",
        format!("{}:{}", config.http.address, config.http.port),
    );
    m.insert("tls", config.http.tls.is_some().to_string());
    m.insert("root", config.storage.root_directory.display().to_string());
    if let Some(d) = &config.storage.storage_driver {
        m.insert(
            "blobs",
            format!(
                "s3://{}/{} at {}",
                d.bucket,
                d.prefix(),
                d.endpoint_url().unwrap_or_else(|| "AWS".into())
            ),
        );
    }
    m.insert("database", redact_password(&config.database_url()));
    let st = &config.storage;
    m.insert(
        "gc",
        if !st.gc_enabled() {
            "off".to_string()
        } else if st.gc_interval().is_zero() {
            format!(
                "on demand (capstan gc), delay {}",
                humantime::format_duration(st.gc_delay())
            )
        } else {
            format!(
                "every {}, delay {}",
                humantime::format_duration(st.gc_interval()),
                humantime::format_duration(st.gc_delay())
            )
        },
    );
    if let Some(endpoint) = &config.log.traces.endpoint {
        m.insert("traces", format!("OTLP/gRPC to {endpoint}"));
    }
    m
}

/// `url` with its password (in `user:password@`, or a `password=` query
/// parameter) replaced by `***`, for printing.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or_default();
            format!("{name}:***@{host}")
        }
        _ => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn printed_database_urls_hide_passwords() {
        assert_eq!(
            redact_password("postgres://meta:s3cr@t@db:5432/meta?sslmode=require"),
            "postgres://meta:***@db:5432/meta?sslmode=require"
        );
        assert_eq!(
            redact_password("postgres://meta@db/meta"),
            "postgres://meta@db/meta"
        );
        assert_eq!(
            redact_password("postgres://db/meta?user=m&password=pw&sslmode=require"),
            "postgres://db/meta?user=m&password=***&sslmode=require"
        );
        assert_eq!(
            redact_password("sqlite:///var/lib/capstan/meta.db?mode=rwc"),
            "sqlite:///var/lib/capstan/meta.db?mode=rwc"
        );
    }

    fn load(v: serde_json::Value) -> Result<Loaded, ConfigError> {
        Config::from_value(v, Vec::<(String, String)>::new())
    }

    #[test]
    fn reads_a_zot_style_config_with_string_port() {
        let l = load(json!({
            "distSpecVersion": "1.1.0",
            "storage": {"rootDirectory": "/tmp/zot", "commit": true, "gcDelay": "2h"},
            "http": {"address": "0.0.0.0", "port": "5000"},
            "log": {"level": "debug"}
        }))
        .unwrap();
        assert_eq!(l.config.http.port, 5000);
        assert_eq!(l.config.http.address, "0.0.0.0");
        assert!(l.config.storage.commit);
        assert_eq!(l.config.storage.gc_delay, Some(Duration::from_secs(7200)));
        assert_eq!(l.config.storage.root_directory, PathBuf::from("/tmp/zot"));
        assert!(l.unknown_keys.is_empty(), "{:?}", l.unknown_keys);
    }

    #[test]
    fn numeric_port_and_yaml_work() {
        let v = parse_text("http:\n  port: 9000\nstorage:\n  rootDirectory: /x\n").unwrap();
        let l = load(v).unwrap();
        assert_eq!(l.config.http.port, 9000);
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = load(json!({"http": {"port": "eighty"}})).unwrap_err();
        assert!(err.to_string().contains("http.port"), "{err}");
        let err = load(json!({"http": {"port": 70000}})).unwrap_err();
        assert!(err.to_string().contains("http.port"), "{err}");
        let err = load(json!({"storage": {"commit": "maybe"}})).unwrap_err();
        assert!(err.to_string().contains("storage.commit"), "{err}");
        let err = load(json!({"services": {"blob": {"endpoints": ["127.0.0.1:1"]}}})).unwrap_err();
        assert!(
            err.to_string().contains("services.blob.endpoints[0]"),
            "{err}"
        );
    }

    #[test]
    fn zot_auth_sections_are_typed() {
        let l = load(json!({"http": {
            "auth": {"htpasswd": {"path": "/etc/htpasswd"}, "failDelay": 2, "apikey": true,
                     "sessionDriver": {"name": "redis", "url": "redis://r:6379", "keyprefix": "p"}},
            "accessControl": {
                "groups": {"dev": {"users": ["alice"]}},
                "repositories": {"**": {"policies": [{"users": ["bob"], "groups": ["dev"], "actions": ["read"]}],
                                        "defaultPolicy": ["read"], "anonymousPolicy": []}},
                "adminPolicy": {"users": ["admin"], "actions": ["read", "delete"]}
            }}}))
        .unwrap();
        assert!(l.unknown_keys.is_empty(), "{:?}", l.unknown_keys);
        let auth = l.config.http.auth.unwrap();
        assert_eq!(auth.fail_delay, 2);
        assert!(auth.apikey && auth.has_credentials());
        assert_eq!(auth.session_driver.unwrap().keyprefix.as_deref(), Some("p"));
        let ac = l.config.http.access_control.unwrap();
        assert_eq!(ac.groups["dev"].users, vec!["alice"]);
        assert_eq!(ac.repositories["**"].policies[0].groups, vec!["dev"]);
        assert!(!ac.anonymous_policy_exists());
    }

    #[test]
    fn ldap_and_client_certificate_sections_are_typed() {
        assert!(load(json!({"http": {"tls": {"cert": "c", "key": "k", "cacert": "ca"}}})).is_ok());
        let l = load(
            json!({"http": {"auth": {"ldap": {"address": "ldap", "port": 389,
            "startTLS": true, "baseDN": "ou=people,dc=x", "userAttribute": "uid",
            "userGroupAttribute": "memberOf", "credentialsFile": "/c.json", "subtreeSearch": true,
            "skipVerify": false}}}}),
        )
        .unwrap();
        assert!(l.unknown_keys.is_empty(), "{:?}", l.unknown_keys);
        assert_eq!(
            l.config.http.auth.unwrap().ldap.unwrap().base_dn,
            "ou=people,dc=x"
        );
    }

    #[test]
    fn zot_sync_sections_are_typed() {
        let l = load(json!({"extensions": {"search": {"enable": true}, "sync": {
            "enable": true, "credentialsFile": "/etc/zot/creds.json",
            "registries": [{"urls": ["https://a", "https://b"], "onDemand": true,
                "pollInterval": "6h", "tlsVerify": false, "certDir": "/c", "maxRetries": 5,
                "retryDelay": "30s", "onlySigned": false, "preserveDigest": true,
                "content": [{"prefix": "/repo/**", "destination": "/local", "stripPrefix": true,
                    "tags": {"regex": "4.*", "excludeRegex": ".*-rc", "semver": true}}]}]}}}))
        .unwrap();
        assert!(l.unknown_keys.is_empty(), "{:?}", l.unknown_keys);
        let sync = l.config.extensions.unwrap().sync.unwrap();
        let r = &sync.registries[0];
        assert_eq!(r.poll_interval, Some(Duration::from_secs(6 * 3600)));
        assert_eq!(r.retry_delay(), Duration::from_secs(30));
        assert!(!r.tls_verify() && r.on_demand && r.preserve_digest);
        assert_eq!(
            r.content[0].tags.as_ref().unwrap().exclude_regex.as_deref(),
            Some(".*-rc")
        );
        let err = load(json!({"extensions": {"sync": {"registries": [{"pollInterval": "soon"}]}}}))
            .unwrap_err();
        assert!(err.to_string().contains("pollInterval"), "{err}");
    }

    #[test]
    fn unknown_keys_are_reported() {
        let l = load(
            json!({"http": {"prot": 1, "auth": {"htpasswd": {"path": "/p", "x": 1}}},
            "bogus": true}),
        )
        .unwrap();
        let mut keys = l.unknown_keys.clone();
        keys.sort();
        assert_eq!(keys, ["bogus", "http.auth.htpasswd.x", "http.prot"]);
    }

    #[test]
    fn zot_keys_without_effect_are_reported_as_ignored() {
        let l = load(
            json!({"storage": {"gc": true, "gcDelay": "2h", "gcInterval": "1h",
            "dedupe": true, "retention": {"policies": []},
            "subPaths": {"/a": {"rootDirectory": "/srv/a", "gcInterval": "1h"}},
            "storageDriver": {"name": "s3", "rootdirectory": "/zot", "region": "us-east-2",
                "regionendpoint": "localhost:4566", "bucket": "zot-storage",
                "forcepathstyle": true, "secure": false, "skipverify": false,
                "storageclass": "STANDARD"}},
            "extensions": {"search": {"enable": true}, "ui": {"enable": true},
                "sync": {"enable": false}},
            "scheduler": {"NumWorkers": 3}}),
        )
        .unwrap();
        assert!(l.unknown_keys.is_empty(), "{:?}", l.unknown_keys);
        let keys: Vec<String> = l.ignored_keys().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "scheduler",
                "extensions.ui",
                "storage.storageDriver.storageclass",
                "storage.subPaths./a.gcInterval",
            ]
        );
        let d = l.config.storage.storage_driver.as_ref().unwrap();
        assert_eq!(d.prefix(), "zot");
        assert_eq!(d.endpoint_url().unwrap(), "http://localhost:4566");
        assert_eq!(d.force_path_style, Some(true));
        // A driver Capstan lacks, or a bucketless one, is an error.
        let err = load(json!({"storage": {"storageDriver": {"name": "gcs", "bucket": "b"}}}))
            .unwrap_err();
        assert!(err.to_string().contains("storageDriver.name"), "{err}");
        let err = load(json!({"storage": {"redirectBlobURL": true}})).unwrap_err();
        assert!(err.to_string().contains("redirectBlobURL"), "{err}");
        // dedupe: true is what Capstan does anyway; false is not.
        let l = load(json!({"storage": {"dedupe": false}})).unwrap();
        assert_eq!(l.ignored_keys()[0].0, "storage.dedupe");
        assert!(load(json!({})).unwrap().ignored_keys().is_empty());
    }

    #[test]
    fn subpaths_route_by_first_component_and_need_a_store_of_their_own() {
        let l = load(
            json!({"storage": {"rootDirectory": "/srv/top", "subPaths": {
            "/team": {"rootDirectory": "/srv/team"},
            "/cloud": {"storageDriver": {"name": "s3", "bucket": "b"}}}}}),
        )
        .unwrap();
        let st = &l.config.storage;
        assert_eq!(st.store_of("team/app"), Some("team"));
        assert_eq!(st.store_of("cloud/a/b"), Some("cloud"));
        assert_eq!(st.store_of("team"), None);
        assert_eq!(st.store_of("other/team/app"), None);
        assert_eq!(st.store_of("teams/app"), None);
        // Each store's collection settings: the entry's, else gc as at the
        // top level and gcDelay zot's default.
        let l = load(
            json!({"storage": {"rootDirectory": "/srv/top", "gcDelay": "2h",
            "subPaths": {
                "/keep": {"rootDirectory": "/srv/keep", "gc": false},
                "/slow": {"rootDirectory": "/srv/slow", "gcDelay": "3h"},
                "/plain": {"rootDirectory": "/srv/plain"}}}}),
        )
        .unwrap();
        let st = &l.config.storage;
        let scope = |repo: &str| st.gc_scope_of(repo);
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert_eq!((scope("app").enabled, scope("app").delay), (true, h(2)));
        assert!(!scope("keep/app").enabled);
        assert_eq!(
            (scope("slow/app").enabled, scope("slow/app").delay),
            (true, h(3))
        );
        assert_eq!(scope("plain/app").delay, DEFAULT_GC_DELAY);
        for (sub, key) in [
            (json!({"/a": {}}), "storage.subPaths./a"),
            (
                json!({"/a/b": {"rootDirectory": "/x"}}),
                "storage.subPaths./a/b",
            ),
            (
                json!({"/A": {"rootDirectory": "/x"}}),
                "storage.subPaths./A",
            ),
            (
                json!({"/a": {"rootDirectory": "/srv/top"}}),
                "storage.subPaths./a.rootDirectory",
            ),
            (
                json!({"/a": {"rootDirectory": "/x"}, "/b": {"rootDirectory": "/x"}}),
                "storage.subPaths./b.rootDirectory",
            ),
            (
                json!({"/a": {"storageDriver": {"name": "s3", "bucket": ""}}}),
                "storage.subPaths./a.storageDriver.bucket",
            ),
        ] {
            let err = load(json!({"storage": {"rootDirectory": "/srv/top", "subPaths": sub}}))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
    }

    #[test]
    fn zots_older_access_control_layout_is_read() {
        let l = load(json!({"http": {"accessControl": {
            "**": {"anonymousPolicy": ["read"]},
            "infra/**": {"defaultPolicy": ["read"]},
            "repositories": {"team/**": {"defaultPolicy": ["read", "create"]}},
            "adminPolicy": {"users": ["admin"], "actions": ["read"]}}}}))
        .unwrap();
        assert!(l.unknown_keys.is_empty(), "{:?}", l.unknown_keys);
        let ac = l.config.http.access_control.unwrap();
        let globs: Vec<&str> = ac.repositories.keys().map(String::as_str).collect();
        assert_eq!(globs, ["**", "infra/**", "team/**"]);
        assert_eq!(ac.admin_policy.unwrap().users, ["admin"]);
    }

    #[test]
    fn keys_match_whatever_their_case_as_in_zot() {
        // zot's YAML example writes LDAP keys in lower case.
        let l = load(
            json!({"Storage": {"rootdirectory": "/srv/r", "GCDelay": "2h"},
            "http": {"auth": {"ldap": {"address": "ldap", "basedn": "dc=x",
                "subtreesearch": true, "userattribute": "uid"}}}}),
        )
        .unwrap();
        assert!(l.unknown_keys.is_empty(), "{:?}", l.unknown_keys);
        assert_eq!(l.config.storage.root_directory, PathBuf::from("/srv/r"));
        assert_eq!(l.config.storage.gc_delay, Some(Duration::from_secs(7200)));
        let ldap = l.config.http.auth.unwrap().ldap.unwrap();
        assert_eq!(ldap.base_dn, "dc=x");
        assert!(ldap.subtree_search);
        assert_eq!(ldap.user_attribute.as_deref(), Some("uid"));
    }

    #[test]
    fn environment_overrides_values() {
        let env = vec![
            ("CAPSTAN_HTTP_PORT".to_string(), "6000".to_string()),
            (
                "CAPSTAN_STORAGE_ROOTDIRECTORY".to_string(),
                "/srv/r".to_string(),
            ),
            ("OTHER".to_string(), "x".to_string()),
        ];
        let l = Config::from_value(json!({"http": {"port": "5000"}}), env).unwrap();
        assert_eq!(l.config.http.port, 6000);
        assert_eq!(l.config.storage.root_directory, PathBuf::from("/srv/r"));
    }
}
