//! What search shows of an image manifest, taken once at push from the
//! manifest and its config: platform, sizes, layers, history, the creation
//! time and the descriptive annotations (title, description, vendor, …).
//!
//! The config is a blob, which svc-meta does not hold; the gateway passes
//! its bytes with the push (`PutManifestRequest.config`). Both documents are
//! read leniently: a field that is missing or of another shape is left
//! empty rather than failing the push, since the manifest itself was
//! already validated and these facts only describe it. The rules follow
//! zot's search, so that its clients see the same values: an annotation of
//! the manifest wins over the config's label of the same meaning, and the
//! OCI key over the older label-schema one.

use crate::error::MetaError;
use capstan_oci::Digest;
use capstan_oci::manifest::{ManifestKind, ParsedManifest};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub use capstan_oci::manifest::MAX_CONFIG_BYTES;

/// The descriptive facts of one image manifest, stored as JSON beside it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Facts {
    /// Digest of the config blob.
    pub config_digest: String,
    /// Bytes of the config blob.
    pub config_size: u64,
    /// `os` of the config.
    pub os: String,
    /// `architecture` of the config, with `/variant` when it has one.
    pub arch: String,
    /// Bytes of the manifest, its config and its layers.
    pub size: u64,
    /// When the image was made (RFC 3339): the `created` annotation, else
    /// the config's `created`, else that of its last history entry.
    pub created: Option<String>,
    pub title: String,
    pub description: String,
    pub vendor: String,
    pub licenses: String,
    pub source: String,
    pub documentation: String,
    pub authors: String,
    pub labels: String,
    pub layers: Vec<Layer>,
    pub history: Vec<History>,
}

/// One layer: its digest and size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub digest: String,
    pub size: u64,
}

/// One entry of the config's history, with the layer it made (none for an
/// empty layer, or when the history lists more layers than the manifest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct History {
    pub layer: Option<Layer>,
    pub created: Option<String>,
    pub created_by: String,
    pub author: String,
    pub comment: String,
    pub empty_layer: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Descriptor {
    digest: String,
    size: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Config {
    os: String,
    architecture: String,
    variant: String,
    created: Option<String>,
    author: String,
    config: ConfigBody,
    history: Vec<ConfigHistory>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ConfigBody {
    #[serde(rename = "Labels")]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ConfigHistory {
    created: Option<String>,
    created_by: String,
    author: String,
    comment: String,
    empty_layer: bool,
}

/// Annotation (and label) keys of each descriptive fact: the OCI key, then
/// the label-schema key of the same meaning.
const CREATED: [&str; 2] = [
    "org.opencontainers.image.created",
    "org.label-schema.build-date",
];
const TITLE: [&str; 2] = ["org.opencontainers.image.title", "org.label-schema.name"];
const DESCRIPTION: [&str; 2] = [
    "org.opencontainers.image.description",
    "org.label-schema.description",
];
const VENDOR: [&str; 2] = ["org.opencontainers.image.vendor", "org.label-schema.vendor"];
const LICENSES: [&str; 2] = [
    "org.opencontainers.image.licenses",
    "org.label-schema.license",
];
const SOURCE: [&str; 2] = [
    "org.opencontainers.image.source",
    "org.label-schema.vcs-url",
];
const DOCUMENTATION: [&str; 2] = [
    "org.opencontainers.image.documentation",
    "org.label-schema.usage",
];
const AUTHORS: [&str; 1] = ["org.opencontainers.image.authors"];
const LABELS: [&str; 1] = ["org.label-schema.labels"];

/// What a push stores for search beside the manifest (the columns of
/// `manifests` the search migration added).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Described {
    /// [`Facts`] as JSON, for an image manifest.
    pub facts: Option<String>,
    /// `os/arch[/variant]` of each platform, joined by commas.
    pub platforms: Option<String>,
    /// When the image was made, in Unix seconds.
    pub made_at: Option<i64>,
}

/// Unix seconds of an RFC 3339 time.
pub fn unix_seconds(rfc3339: &str) -> Option<i64> {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(time::OffsetDateTime::unix_timestamp)
}

/// `os/arch` of `facts`, when either is known.
fn platform(facts: &Facts) -> Option<String> {
    (!facts.os.is_empty() || !facts.arch.is_empty()).then(|| format!("{}/{}", facts.os, facts.arch))
}

/// What to store for search of the manifest `parsed` (bytes `content`),
/// pushed at `at` with `config` (an image's) or its `children` (an index's,
/// read in the push's transaction `tx`; those not stored are skipped).
pub async fn describe(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    repo: &str,
    parsed: &ParsedManifest,
    content: &[u8],
    config: Option<&[u8]>,
    children: &[&Digest],
    at: i64,
) -> Result<Described, MetaError> {
    let created = CREATED
        .iter()
        .filter_map(|k| parsed.annotations.get(*k))
        .find_map(|v| unix_seconds(v));
    match parsed.kind {
        ManifestKind::Image => {
            let Some(facts) = of_image(content, config) else {
                return Ok(Described::default());
            };
            let made_at = facts
                .created
                .as_deref()
                .and_then(unix_seconds)
                .unwrap_or(at);
            Ok(Described {
                platforms: platform(&facts),
                facts: Some(
                    serde_json::to_string(&facts).map_err(|e| MetaError::Corrupt(e.to_string()))?,
                ),
                made_at: Some(made_at),
            })
        }
        ManifestKind::Index => {
            let mut platforms = BTreeSet::new();
            let mut newest: Option<i64> = None;
            for child in children {
                let row: Option<(Option<String>, Option<i64>)> = sqlx::query_as(
                    "SELECT platforms, made_at FROM manifests WHERE repo = $1 AND digest = $2",
                )
                .bind(repo)
                .bind(child.to_string())
                .fetch_optional(&mut **tx)
                .await?;
                let Some((p, made)) = row else { continue };
                platforms.extend(
                    p.iter()
                        .flat_map(|p| p.split(','))
                        .filter(|p| !p.is_empty())
                        .map(str::to_string),
                );
                newest = newest.max(made);
            }
            Ok(Described {
                facts: None,
                platforms: (!platforms.is_empty())
                    .then(|| platforms.into_iter().collect::<Vec<_>>().join(",")),
                made_at: Some(created.or(newest).unwrap_or(at)),
            })
        }
    }
}

/// The first non-empty value of `keys` in `map`.
fn lookup(map: &BTreeMap<String, String>, keys: &[&str]) -> String {
    keys.iter()
        .filter_map(|k| map.get(*k))
        .find(|v| !v.is_empty())
        .cloned()
        .unwrap_or_default()
}

/// `keys` from the annotations, else from the labels.
fn described(
    annotations: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
    keys: &[&str],
) -> String {
    let v = lookup(annotations, keys);
    if v.is_empty() {
        lookup(labels, keys)
    } else {
        v
    }
}

/// The facts of the image manifest `manifest`, with its `config` when the
/// caller had it. `None` when `manifest` is not a JSON object.
pub fn of_image(manifest: &[u8], config: Option<&[u8]>) -> Option<Facts> {
    // Objects only (serde would take a JSON array as a struct's fields).
    let object = |b: &[u8]| b.trim_ascii_start().starts_with(b"{");
    let m: Manifest = object(manifest)
        .then(|| serde_json::from_slice(manifest).ok())
        .flatten()?;
    let c: Config = config
        .filter(|c| c.len() <= MAX_CONFIG_BYTES && object(c))
        .and_then(|c| serde_json::from_slice(c).ok())
        .unwrap_or_default();
    let labels = c.config.labels.clone().unwrap_or_default();
    let a = &m.annotations;
    let layers: Vec<Layer> = m
        .layers
        .iter()
        .map(|l| Layer {
            digest: l.digest.clone(),
            size: l.size,
        })
        .collect();
    let size = (manifest.len() as u64)
        .saturating_add(m.config.size)
        .saturating_add(layers.iter().map(|l| l.size).fold(0, u64::saturating_add));
    let created = Some(described(a, &labels, &CREATED))
        .filter(|s| !s.is_empty())
        .or_else(|| c.created.clone().filter(|s| !s.is_empty()))
        .or_else(|| c.history.last().and_then(|h| h.created.clone()));
    let mut authors = described(a, &labels, &AUTHORS);
    if authors.is_empty() {
        authors = c.author.clone();
    }
    Some(Facts {
        config_digest: m.config.digest.clone(),
        config_size: m.config.size,
        os: c.os.clone(),
        arch: if c.variant.is_empty() {
            c.architecture.clone()
        } else {
            format!("{}/{}", c.architecture, c.variant)
        },
        size,
        created,
        title: described(a, &labels, &TITLE),
        description: described(a, &labels, &DESCRIPTION),
        vendor: described(a, &labels, &VENDOR),
        licenses: described(a, &labels, &LICENSES),
        source: described(a, &labels, &SOURCE),
        documentation: described(a, &labels, &DOCUMENTATION),
        authors,
        labels: described(a, &labels, &LABELS),
        history: history(&c.history, &layers),
        layers,
    })
}

/// The history entries paired with the layers they made: one per entry,
/// a non-empty one taking the next layer. Without a history, one entry
/// per layer with nothing else known.
fn history(entries: &[ConfigHistory], layers: &[Layer]) -> Vec<History> {
    if entries.is_empty() {
        return layers
            .iter()
            .map(|l| History {
                layer: Some(l.clone()),
                ..History::default()
            })
            .collect();
    }
    let mut next = layers.iter();
    entries
        .iter()
        .map(|h| History {
            layer: if h.empty_layer {
                None
            } else {
                next.next().cloned()
            },
            created: h.created.clone(),
            created_by: h.created_by.clone(),
            author: h.author.clone(),
            comment: h.comment.clone(),
            empty_layer: h.empty_layer,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bytes(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn manifest(annotations: serde_json::Value) -> Vec<u8> {
        bytes(json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": "sha256:cfg", "size": 100},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:l1", "size": 1000},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:l2", "size": 20}
            ],
            "annotations": annotations
        }))
    }

    #[test]
    fn platform_sizes_layers_and_history_come_from_manifest_and_config() {
        let m = manifest(json!({}));
        let config = bytes(json!({
            "os": "linux", "architecture": "arm64", "variant": "v8",
            "created": "2026-01-02T03:04:05Z",
            "author": "config author",
            "rootfs": {"type": "layers", "diff_ids": []},
            "history": [
                {"created": "2026-01-01T00:00:00Z", "created_by": "ADD rootfs"},
                {"created": "2026-01-01T00:00:01Z", "created_by": "ENV X=1", "empty_layer": true},
                {"created": "2026-01-02T00:00:00Z", "created_by": "RUN make", "comment": "built"}
            ]
        }));
        let f = of_image(&m, Some(&config)).unwrap();
        assert_eq!(f.config_digest, "sha256:cfg");
        assert_eq!((f.os.as_str(), f.arch.as_str()), ("linux", "arm64/v8"));
        assert_eq!(f.size, m.len() as u64 + 100 + 1000 + 20);
        assert_eq!(f.created.as_deref(), Some("2026-01-02T03:04:05Z"));
        assert_eq!(f.authors, "config author");
        let l = |d: &str, size| Layer {
            digest: d.into(),
            size,
        };
        assert_eq!(f.layers, vec![l("sha256:l1", 1000), l("sha256:l2", 20)]);
        let made: Vec<_> = f
            .history
            .iter()
            .map(|h| (h.layer.clone(), h.created_by.as_str(), h.empty_layer))
            .collect();
        assert_eq!(
            made,
            vec![
                (Some(l("sha256:l1", 1000)), "ADD rootfs", false),
                (None, "ENV X=1", true),
                (Some(l("sha256:l2", 20)), "RUN make", false),
            ]
        );
        assert_eq!(f.history[2].comment, "built");
    }

    #[test]
    fn annotations_win_over_labels_and_oci_keys_over_label_schema() {
        let m = manifest(json!({
            "org.opencontainers.image.title": "From the manifest",
            "org.label-schema.description": "old-style description",
            "org.opencontainers.image.vendor": "",
            "org.opencontainers.image.created": "2025-05-05T05:05:05Z"
        }));
        let config = bytes(json!({
            "os": "linux", "architecture": "amd64",
            "created": "2026-01-02T03:04:05Z",
            "config": {"Labels": {
                "org.opencontainers.image.title": "From the labels",
                "org.opencontainers.image.vendor": "Label Vendor",
                "org.label-schema.vcs-url": "https://example.test/src",
                "org.opencontainers.image.licenses": "Apache-2.0",
                "org.opencontainers.image.authors": "Label Author"
            }}
        }));
        let f = of_image(&m, Some(&config)).unwrap();
        assert_eq!(f.title, "From the manifest");
        assert_eq!(f.description, "old-style description");
        // An empty annotation does not hide the label.
        assert_eq!(f.vendor, "Label Vendor");
        assert_eq!(f.source, "https://example.test/src");
        assert_eq!(f.licenses, "Apache-2.0");
        assert_eq!(f.authors, "Label Author");
        assert_eq!(f.created.as_deref(), Some("2025-05-05T05:05:05Z"));
        assert_eq!(f.arch, "amd64");
        assert_eq!(f.documentation, "");
    }

    #[test]
    fn without_a_usable_config_the_manifest_still_gives_its_facts() {
        let m = manifest(json!({"org.opencontainers.image.description": "d"}));
        for config in [None, Some(&b"not json"[..]), Some(&b"[1,2]"[..])] {
            let f = of_image(&m, config).unwrap();
            assert_eq!(f.description, "d");
            assert_eq!((f.os.as_str(), f.arch.as_str()), ("", ""));
            assert_eq!(f.size, m.len() as u64 + 1120);
            assert_eq!(f.created, None);
            // One history entry per layer when the config gives none.
            assert_eq!(f.history.len(), 2);
            assert!(f.history.iter().all(|h| h.layer.is_some()));
        }
        let huge = vec![b' '; MAX_CONFIG_BYTES + 1];
        assert_eq!(of_image(&m, Some(&huge)).unwrap().os, "");
        assert!(of_image(b"[]", None).is_none());
        assert!(of_image(b"nope", None).is_none());
    }

    #[test]
    fn the_last_history_entry_dates_an_image_without_created() {
        let config = bytes(json!({
            "os": "linux", "architecture": "amd64",
            "history": [{"created": "2024-01-01T00:00:00Z"}, {"created": "2024-02-02T00:00:00Z"}]
        }));
        let f = of_image(&manifest(json!({})), Some(&config)).unwrap();
        assert_eq!(f.created.as_deref(), Some("2024-02-02T00:00:00Z"));
        // More history than layers: the extra entries have no layer.
        let config = bytes(json!({"history": [{}, {}, {}]}));
        let f = of_image(&manifest(json!({})), Some(&config)).unwrap();
        assert_eq!(
            f.history
                .iter()
                .map(|h| h.layer.is_some())
                .collect::<Vec<_>>(),
            [true, true, false]
        );
    }
}
