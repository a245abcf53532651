//! zot's `storage.storageDriver`: where svc-blob keeps blob bytes when not
//! on the local filesystem. Capstan implements the `s3` driver (any
//! S3-compatible store) with zot's keys, which are the distribution
//! project's S3 driver parameters; keys of that driver Capstan does not act
//! on are reported as ignored, never silently taken.

use serde::{Deserialize, Serialize};

/// The smallest part S3 accepts in a multipart upload (all but the last).
pub const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
/// The smallest part used when `chunksize` is not set.
pub const DEFAULT_PART_BYTES: u64 = 8 * 1024 * 1024;

/// `storage.storageDriver`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageDriverConfig {
    /// The driver: only `s3` exists here.
    pub name: String,
    /// Key prefix inside the bucket under which everything is stored
    /// (zot's `rootdirectory`, e.g. `/zot`); the bucket's root if absent.
    #[serde(default)]
    pub root_directory: Option<String>,
    /// The bucket's region (`us-east-1` if absent and not in the AWS
    /// environment or profile).
    #[serde(default)]
    pub region: Option<String>,
    /// The S3 endpoint of a non-AWS store (`host:port`, or a URL);
    /// Amazon's regional endpoint if absent.
    #[serde(default)]
    pub region_endpoint: Option<String>,
    /// The bucket; it must exist.
    pub bucket: String,
    /// Address the bucket in the path (`endpoint/bucket/key`) rather than
    /// in the host name; most self-hosted stores need it.
    #[serde(default)]
    pub force_path_style: Option<bool>,
    /// With a `regionendpoint` of the form `host:port`, use HTTPS (default
    /// true) or plain HTTP.
    #[serde(default)]
    pub secure: Option<bool>,
    /// Skip verifying the store's TLS certificate. Accepted only as
    /// `false`: Capstan does not turn certificate checks off (add the
    /// store's CA to the machine's trust store instead).
    #[serde(default)]
    pub skip_verify: Option<bool>,
    /// Access key id; with `secretkey`. When absent, the standard AWS
    /// chain applies (`AWS_ACCESS_KEY_ID`…, profiles, web identity,
    /// container and instance credentials).
    #[serde(default)]
    pub access_key: Option<String>,
    /// Secret access key; with `accesskey`.
    #[serde(default)]
    pub secret_key: Option<String>,
    /// Session token of temporary credentials; with the keys above.
    #[serde(default)]
    pub session_token: Option<String>,
    /// The smallest part of a multipart upload, in bytes (default 8 MiB,
    /// at least 5 MiB). When a blob's length is known, parts grow so that
    /// it fits S3's 10,000 parts; when it is not (a chunked request body),
    /// they are at least 16 MiB, enough for 156 GiB. Each upload in
    /// progress holds up to two parts in memory.
    #[serde(default)]
    pub chunk_size: Option<u64>,
    /// Parameters of the distribution S3 driver that Capstan does not act
    /// on (server-side encryption, storage class, ACLs, tuning): accepted
    /// and reported as ignored.
    #[serde(default)]
    pub encrypt: Option<serde_json::Value>,
    #[serde(default)]
    pub key_id: Option<serde_json::Value>,
    #[serde(default)]
    pub storage_class: Option<serde_json::Value>,
    #[serde(default)]
    pub object_acl: Option<serde_json::Value>,
    #[serde(default)]
    pub v4_auth: Option<serde_json::Value>,
    #[serde(default)]
    pub user_agent: Option<serde_json::Value>,
    #[serde(default)]
    pub use_dual_stack: Option<serde_json::Value>,
    #[serde(default)]
    pub accelerate: Option<serde_json::Value>,
    #[serde(default)]
    pub log_level: Option<serde_json::Value>,
    #[serde(default)]
    pub multipart_copy_chunk_size: Option<serde_json::Value>,
    #[serde(default)]
    pub multipart_copy_max_concurrency: Option<serde_json::Value>,
    #[serde(default)]
    pub multipart_copy_threshold_size: Option<serde_json::Value>,
}

impl StorageDriverConfig {
    /// The key prefix, without leading or trailing slashes (empty: the
    /// bucket's root).
    pub fn prefix(&self) -> String {
        self.root_directory
            .as_deref()
            .unwrap_or("")
            .trim_matches('/')
            .to_string()
    }

    /// The endpoint URL, if one is set: `regionendpoint` as given when it
    /// has a scheme, else `http(s)://` by `secure`.
    pub fn endpoint_url(&self) -> Option<String> {
        let e = self.region_endpoint.as_deref()?.trim();
        if e.is_empty() {
            return None;
        }
        if e.starts_with("http://") || e.starts_with("https://") {
            return Some(e.trim_end_matches('/').to_string());
        }
        let scheme = if self.secure.unwrap_or(true) {
            "https"
        } else {
            "http"
        };
        Some(format!("{scheme}://{}", e.trim_end_matches('/')))
    }

    /// `chunksize` or its default.
    pub fn part_bytes(&self) -> u64 {
        self.chunk_size.unwrap_or(DEFAULT_PART_BYTES)
    }

    /// What is wrong with this section, if anything: `(key, message)`.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.name != "s3" {
            return Some((
                "storage.storageDriver.name",
                format!(
                    "storage driver {:?} is not supported; only \"s3\" is",
                    self.name
                ),
            ));
        }
        if self.bucket.trim().is_empty() {
            return Some(("storage.storageDriver.bucket", "must name a bucket".into()));
        }
        if self.access_key.is_some() != self.secret_key.is_some() {
            return Some((
                "storage.storageDriver.accesskey",
                "accesskey and secretkey go together".into(),
            ));
        }
        if self.skip_verify == Some(true) {
            return Some((
                "storage.storageDriver.skipverify",
                "turning TLS verification off is not supported; add the store's CA \
                 to the machine's trust store instead"
                    .into(),
            ));
        }
        if self.chunk_size.is_some_and(|c| c < MIN_PART_BYTES) {
            return Some((
                "storage.storageDriver.chunksize",
                format!("must be at least {MIN_PART_BYTES} bytes (5 MiB), S3's smallest part"),
            ));
        }
        if let Some(e) = self.endpoint_url()
            && e.parse::<http::Uri>().is_err()
        {
            return Some((
                "storage.storageDriver.regionendpoint",
                format!("{e:?} is not a URL"),
            ));
        }
        None
    }

    /// Keys given that have no effect, for `ignored_keys`.
    pub fn ignored(&self) -> Vec<(String, &'static str)> {
        let why = "a distribution S3 driver parameter Capstan does not act on";
        [
            ("encrypt", self.encrypt.is_some()),
            ("keyid", self.key_id.is_some()),
            ("storageclass", self.storage_class.is_some()),
            ("objectacl", self.object_acl.is_some()),
            ("v4auth", self.v4_auth.is_some()),
            ("useragent", self.user_agent.is_some()),
            ("usedualstack", self.use_dual_stack.is_some()),
            ("accelerate", self.accelerate.is_some()),
            ("loglevel", self.log_level.is_some()),
            (
                "multipartcopychunksize",
                self.multipart_copy_chunk_size.is_some(),
            ),
            (
                "multipartcopymaxconcurrency",
                self.multipart_copy_max_concurrency.is_some(),
            ),
            (
                "multipartcopythresholdsize",
                self.multipart_copy_threshold_size.is_some(),
            ),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| (format!("storage.storageDriver.{k}"), why))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> StorageDriverConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn endpoint_follows_secure_unless_it_has_a_scheme() {
        let base = serde_json::json!({"name": "s3", "bucket": "b"});
        let mut c = parse(base.clone());
        assert_eq!(c.endpoint_url(), None);
        c.region_endpoint = Some("localhost:9000".into());
        assert_eq!(c.endpoint_url().unwrap(), "https://localhost:9000");
        c.secure = Some(false);
        assert_eq!(c.endpoint_url().unwrap(), "http://localhost:9000");
        c.region_endpoint = Some("https://s3.example.com/".into());
        assert_eq!(c.endpoint_url().unwrap(), "https://s3.example.com");
    }

    #[test]
    fn prefix_drops_slashes() {
        let mut c = parse(serde_json::json!({"name": "s3", "bucket": "b"}));
        assert_eq!(c.prefix(), "");
        c.root_directory = Some("/zot/".into());
        assert_eq!(c.prefix(), "zot");
        c.root_directory = Some("/a/b".into());
        assert_eq!(c.prefix(), "a/b");
    }

    #[test]
    fn problems_name_their_key() {
        let ok = serde_json::json!({"name": "s3", "bucket": "b"});
        assert!(parse(ok.clone()).problem().is_none());
        for (patch, key) in [
            (
                serde_json::json!({"name": "gcs"}),
                "storage.storageDriver.name",
            ),
            (
                serde_json::json!({"bucket": " "}),
                "storage.storageDriver.bucket",
            ),
            (
                serde_json::json!({"accessKey": "a"}),
                "storage.storageDriver.accesskey",
            ),
            (
                serde_json::json!({"skipVerify": true}),
                "storage.storageDriver.skipverify",
            ),
            (
                serde_json::json!({"chunkSize": 1024}),
                "storage.storageDriver.chunksize",
            ),
        ] {
            let mut v = ok.clone();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            assert_eq!(parse(v).problem().map(|p| p.0), Some(key), "{patch}");
        }
    }
}
