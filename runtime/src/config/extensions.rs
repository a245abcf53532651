//! `extensions`: zot's optional features. `sync` is typed (svc-sync reads
//! it); the others are accepted so a zot file loads, are not run, and are
//! reported as ignored (`Loaded::ignored_keys`).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// `extensions.scrub`: every `interval`, svc-blob reads every stored blob
/// again and checks it against its digest; a corrupt one is taken out of
/// service (see the README).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScrubConfig {
    /// On unless set false (the section's presence turns it on, as in zot).
    #[serde(default)]
    pub enable: Option<bool>,
    /// Time between the starts of two passes (default 24h, as in zot).
    #[serde(default, with = "super::opt_duration")]
    pub interval: Option<Duration>,
}

impl ScrubConfig {
    /// Whether scrubbing runs.
    pub fn enabled(&self) -> bool {
        self.enable.unwrap_or(true)
    }

    /// `interval` or zot's default, 24h.
    pub fn interval(&self) -> Duration {
        self.interval.unwrap_or(Duration::from_secs(24 * 3600))
    }
}

/// `extensions.search`, zot's keys.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct SearchConfig {
    /// On unless `false` (zot: a present section is on by default).
    #[serde(default)]
    pub enable: Option<bool>,
    /// zot's vulnerability scanning; reported as ignored (Capstan scans
    /// nothing).
    #[serde(default)]
    pub cve: Option<serde_json::Value>,
}

impl SearchConfig {
    pub fn enabled(&self) -> bool {
        self.enable != Some(false)
    }
}

impl Extensions {
    /// Whether zot's search extension is on.
    pub fn search_enabled(&self) -> bool {
        self.search.as_ref().is_some_and(SearchConfig::enabled)
    }
}

/// The `extensions` section.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Extensions {
    /// Mirroring and pull-through from upstream registries.
    #[serde(default)]
    pub sync: Option<SyncConfig>,
    /// zot's search extension: GraphQL at `/v2/_zot/ext/search`, with
    /// `/v2/_zot/ext/userprefs`, `/v2/_zot/ext/mgmt` and
    /// `/v2/_oci/ext/discover`.
    #[serde(default)]
    pub search: Option<SearchConfig>,
    /// zot's scrub extension: re-hash stored blobs periodically.
    #[serde(default)]
    pub scrub: Option<ScrubConfig>,
    /// zot's metrics extension; Capstan always serves `/metrics`, so its
    /// settings are reported as ignored.
    #[serde(default)]
    pub metrics: Option<serde_json::Value>,
    /// zot's web UI; reported as ignored.
    #[serde(default)]
    pub ui: Option<serde_json::Value>,
    /// zot's lint extension; reported as ignored.
    #[serde(default)]
    pub lint: Option<serde_json::Value>,
    /// zot's signature verification; reported as ignored.
    #[serde(default)]
    pub trust: Option<serde_json::Value>,
    /// zot's management API; reported as ignored.
    #[serde(default)]
    pub mgmt: Option<serde_json::Value>,
    /// zot's user preferences; reported as ignored.
    #[serde(default)]
    pub userprefs: Option<serde_json::Value>,
    /// zot's configuration API; reported as ignored.
    #[serde(default)]
    pub sysconfig: Option<serde_json::Value>,
    /// zot's signing; reported as ignored.
    #[serde(default)]
    pub sign: Option<serde_json::Value>,
    /// zot's event sinks; reported as ignored.
    #[serde(default)]
    pub events: Option<serde_json::Value>,
}

/// `extensions.sync`, exactly zot's keys.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncConfig {
    /// Run sync at all (default true when the section is present).
    #[serde(default)]
    pub enable: Option<bool>,
    /// JSON file `{"host:port": {"username": …, "password": …}}`.
    #[serde(default, deserialize_with = "super::empty_path_is_none")]
    pub credentials_file: Option<PathBuf>,
    /// zot's staging directory; accepted (Capstan streams into svc-blob).
    #[serde(default)]
    pub download_dir: Option<PathBuf>,
    /// The upstream registries.
    #[serde(default)]
    pub registries: Vec<SyncRegistry>,
    /// zot's streaming sync switches: reported as ignored (Capstan's
    /// pull-through always streams).
    #[serde(default)]
    pub enable_streaming: Option<serde_json::Value>,
    /// See `enableStreaming`.
    #[serde(default)]
    pub enable_stream: Option<serde_json::Value>,
    /// zot's `asyncManifest`: reported as ignored.
    #[serde(default)]
    pub async_manifest: Option<serde_json::Value>,
}

impl SyncConfig {
    pub fn enabled(&self) -> bool {
        self.enable.unwrap_or(true)
    }
}

/// One upstream (several URLs of one registry, tried in order).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncRegistry {
    /// Base URLs (`https://host:port`); the next one is tried when one fails.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Fetch images on demand when a pull misses locally.
    #[serde(default)]
    pub on_demand: bool,
    /// Mirror `content` periodically at this interval (absent: never).
    #[serde(default, with = "super::opt_duration")]
    pub poll_interval: Option<Duration>,
    /// Verify the upstream's TLS certificate (default true).
    #[serde(default)]
    pub tls_verify: Option<bool>,
    /// Directory with `ca.crt` (and `*.crt`) trusted for this upstream.
    #[serde(default)]
    pub cert_dir: Option<PathBuf>,
    /// Attempts after a failure before giving up (default 3).
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Pause between attempts (default 5s).
    #[serde(default, with = "super::opt_duration")]
    pub retry_delay: Option<Duration>,
    /// Only sync images that carry a signature (a Notary or cosign
    /// referrer, or cosign's `sha256-<hex>.sig` tag).
    #[serde(default)]
    pub only_signed: bool,
    /// Keep Docker manifests as they are (same digest); by default they are
    /// converted to OCI (other digests), as zot does.
    #[serde(default)]
    pub preserve_digest: bool,
    /// What to sync and where to put it; empty: everything, same names.
    #[serde(default)]
    pub content: Vec<SyncContent>,
    /// Capstan: only these platforms (`linux/amd64`) of multi-platform
    /// images; empty: all.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// zot's `syncTimeout`: reported as ignored.
    #[serde(default)]
    pub sync_timeout: Option<serde_json::Value>,
    /// zot's credential helpers (`ecr`, …): reported as ignored; give
    /// credentials in `credentialsFile`.
    #[serde(default)]
    pub credential_helper: Option<serde_json::Value>,
    /// See `credentialHelper`.
    #[serde(default)]
    pub credential_helper_config: Option<serde_json::Value>,
    /// zot's OAuth2 credential helper: reported as ignored.
    #[serde(default)]
    pub oauth2_credential_helper: Option<serde_json::Value>,
    /// zot's streaming settings: reported as ignored (pull-through always
    /// streams).
    #[serde(default)]
    pub stream: Option<serde_json::Value>,
    /// See `stream`.
    #[serde(default)]
    pub stream_cache: Option<serde_json::Value>,
    /// See `stream`.
    #[serde(default)]
    pub max_concurrent_streams: Option<serde_json::Value>,
}

impl SyncConfig {
    /// Keys set but without effect, with the reason.
    pub fn ignored(&self) -> Vec<(String, &'static str)> {
        const STREAM: &str = "Capstan's pull-through always streams";
        let mut out = Vec::new();
        for (key, set, why) in [
            ("enableStreaming", self.enable_streaming.is_some(), STREAM),
            ("enableStream", self.enable_stream.is_some(), STREAM),
            (
                "asyncManifest",
                self.async_manifest.is_some(),
                "zot's asynchronous manifest sync has no counterpart here",
            ),
        ] {
            if set {
                out.push((format!("extensions.sync.{key}"), why));
            }
        }
        for (i, r) in self.registries.iter().enumerate() {
            for (key, set, why) in [
                (
                    "syncTimeout",
                    r.sync_timeout.is_some(),
                    "no counterpart here",
                ),
                (
                    "credentialHelper",
                    r.credential_helper.is_some(),
                    "credential helpers are not implemented; use credentialsFile",
                ),
                (
                    "credentialHelperConfig",
                    r.credential_helper_config.is_some(),
                    "credential helpers are not implemented; use credentialsFile",
                ),
                (
                    "oauth2CredentialHelper",
                    r.oauth2_credential_helper.is_some(),
                    "OAuth2 credential helpers are not implemented; use credentialsFile",
                ),
                ("stream", r.stream.is_some(), STREAM),
                ("streamCache", r.stream_cache.is_some(), STREAM),
                (
                    "maxConcurrentStreams",
                    r.max_concurrent_streams.is_some(),
                    STREAM,
                ),
            ] {
                if set {
                    out.push((format!("extensions.sync.registries.{i}.{key}"), why));
                }
            }
        }
        out
    }
}

impl SyncRegistry {
    pub fn tls_verify(&self) -> bool {
        self.tls_verify.unwrap_or(true)
    }

    pub fn max_retries(&self) -> u32 {
        self.max_retries.unwrap_or(3)
    }

    pub fn retry_delay(&self) -> Duration {
        self.retry_delay.unwrap_or(Duration::from_secs(5))
    }
}

/// A selection of upstream repositories.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncContent {
    /// Upstream repository name or glob (`*` one level, `**` any depth).
    pub prefix: String,
    /// Which tags.
    #[serde(default)]
    pub tags: Option<SyncTags>,
    /// Local repository path to put them under (default: the same name).
    #[serde(default)]
    pub destination: Option<String>,
    /// Drop the prefix's fixed part from names under `destination`.
    #[serde(default)]
    pub strip_prefix: bool,
}

/// Tag filters of a content entry.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncTags {
    /// Keep tags matching this regular expression.
    #[serde(default)]
    pub regex: Option<String>,
    /// Drop tags matching this regular expression.
    #[serde(default)]
    pub exclude_regex: Option<String>,
    /// Keep only semantic-version tags.
    #[serde(default)]
    pub semver: bool,
}
