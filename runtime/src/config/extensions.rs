//! `extensions`: zot's optional features. `sync` is typed (svc-sync reads
//! it); the others are accepted so a zot file loads, are not run, and are
//! reported as ignored (`Loaded::ignored_keys`).

use serde::{Deserialize, Deserializer, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// The `extensions` section.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Extensions {
    /// Mirroring and pull-through from upstream registries.
    #[serde(default)]
    pub sync: Option<SyncConfig>,
    /// zot's search extension; reported as ignored.
    #[serde(default)]
    pub search: Option<serde_json::Value>,
    /// zot's scrub extension; reported as ignored.
    #[serde(default)]
    pub scrub: Option<serde_json::Value>,
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
}

/// `extensions.sync`, exactly zot's keys.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncConfig {
    /// Run sync at all (default true when the section is present).
    #[serde(default)]
    pub enable: Option<bool>,
    /// JSON file `{"host:port": {"username": …, "password": …}}`.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// zot's staging directory; accepted (Capstan streams into svc-blob).
    #[serde(default)]
    pub download_dir: Option<PathBuf>,
    /// The upstream registries.
    #[serde(default)]
    pub registries: Vec<SyncRegistry>,
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
    #[serde(default, deserialize_with = "opt_duration")]
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
    #[serde(default, deserialize_with = "opt_duration")]
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

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        Secs(u64),
        S(String),
    }
    match Option::<V>::deserialize(d)? {
        None => Ok(None),
        Some(V::Secs(n)) => Ok(Some(Duration::from_secs(n))),
        Some(V::S(s)) => humantime::parse_duration(&s)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("duration {s:?}: {e}"))),
    }
}
