//! Manifest and index parsing with the checks a registry applies on push.
//!
//! [`ParsedManifest::parse`] takes the request's Content-Type and the raw
//! bytes, decides what kind of manifest it is, validates it and extracts what
//! the namespace needs: the blobs and child manifests it references, its
//! `subject` and the fields the referrers API reports.

use crate::digest::Digest;
use crate::error::ErrorCode;
use crate::media;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use std::collections::BTreeMap;

/// Largest manifest accepted (the spec's recommended minimum limit).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Largest image config read for what search shows of an image; a larger
/// one is left unread (no real image config comes near it).
pub const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// The config descriptor's digest of an image manifest's `bytes`, if they
/// are one (read leniently: only `config.digest` matters).
pub fn config_digest(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Config {
        digest: String,
    }
    #[derive(serde::Deserialize)]
    struct Image {
        config: Config,
        #[allow(dead_code)]
        layers: serde::de::IgnoredAny,
    }
    serde_json::from_slice::<Image>(bytes)
        .ok()
        .map(|m| m.config.digest)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
    #[error("manifest invalid: {0}")]
    Invalid(String),
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedType(String),
}

impl ManifestError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ManifestError::TooLarge => ErrorCode::ManifestTooLarge,
            ManifestError::Invalid(_) | ManifestError::UnsupportedType(_) => {
                ErrorCode::ManifestInvalid
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest (OCI or Docker schema 2).
    Image,
    /// An index (OCI image index or Docker manifest list).
    Index,
}

/// What a registry needs to know of a pushed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedManifest {
    pub kind: ManifestKind,
    /// The manifest's media type (from its `mediaType` or the Content-Type).
    pub media_type: String,
    /// `artifactType`, or for an image manifest without one its config's media type.
    pub artifact_type: Option<String>,
    /// Blobs the manifest references that the registry must hold (config and
    /// layers, without foreign or non-distributable layers).
    pub blobs: Vec<Digest>,
    /// Child manifests of an index.
    pub manifests: Vec<Digest>,
    /// Digest of the `subject` descriptor.
    pub subject: Option<Digest>,
    pub annotations: BTreeMap<String, String>,
}

fn invalid(msg: impl Into<String>) -> ManifestError {
    ManifestError::Invalid(msg.into())
}

fn descriptor_digest(d: &Descriptor, what: &str) -> Result<Digest, ManifestError> {
    Digest::parse(d.digest().as_ref()).map_err(|e| invalid(format!("{what} digest: {e}")))
}

fn skipped_layer(d: &Descriptor) -> bool {
    let mt = d.media_type().to_string();
    mt == media::DOCKER_FOREIGN_LAYER || mt.starts_with(media::OCI_NONDISTRIBUTABLE_PREFIX)
}

impl ParsedManifest {
    /// Parse `bytes` pushed with `content_type` (may be empty).
    pub fn parse(content_type: &str, bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge);
        }
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| invalid("manifest must be a JSON object"))?;
        let declared = match obj.get("mediaType") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(invalid("mediaType must be a string")),
        };
        let header = media::essence(content_type);
        let header = (!header.is_empty()).then_some(header);
        if let (Some(d), Some(h)) = (declared, header)
            && d != h
        {
            return Err(invalid(format!(
                "mediaType {d:?} does not match Content-Type {h:?}"
            )));
        }
        let media_type = match declared.or(header) {
            Some(t) => t.to_string(),
            // No type anywhere: an OCI manifest or index by shape.
            None if obj.contains_key("manifests") => media::OCI_INDEX.to_string(),
            None => media::OCI_MANIFEST.to_string(),
        };
        if obj.get("schemaVersion").and_then(|v| v.as_u64()) != Some(2) {
            if media_type == media::DOCKER_MANIFEST_V1
                || media_type == media::DOCKER_MANIFEST_V1_SIGNED
            {
                return Err(ManifestError::UnsupportedType(media_type));
            }
            return Err(invalid("schemaVersion must be 2"));
        }
        match media_type.as_str() {
            media::OCI_MANIFEST | media::DOCKER_MANIFEST => Self::image(media_type, value),
            media::OCI_INDEX | media::DOCKER_MANIFEST_LIST => Self::index(media_type, value),
            _ => Err(ManifestError::UnsupportedType(media_type)),
        }
    }

    fn image(media_type: String, value: serde_json::Value) -> Result<Self, ManifestError> {
        let m: ImageManifest = serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
        let mut blobs = vec![descriptor_digest(m.config(), "config")?];
        for layer in m.layers() {
            let d = descriptor_digest(layer, "layer")?;
            if !skipped_layer(layer) {
                blobs.push(d);
            }
        }
        let artifact_type = m
            .artifact_type()
            .as_ref()
            .map(|t| t.to_string())
            .or_else(|| Some(m.config().media_type().to_string()));
        Ok(Self {
            kind: ManifestKind::Image,
            media_type,
            artifact_type,
            blobs,
            manifests: Vec::new(),
            subject: m
                .subject()
                .as_ref()
                .map(|s| descriptor_digest(s, "subject"))
                .transpose()?,
            annotations: m
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        })
    }

    fn index(media_type: String, value: serde_json::Value) -> Result<Self, ManifestError> {
        let i: ImageIndex = serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
        let manifests = i
            .manifests()
            .iter()
            .map(|d| descriptor_digest(d, "manifest"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            kind: ManifestKind::Index,
            media_type,
            artifact_type: i.artifact_type().as_ref().map(|t| t.to_string()),
            blobs: Vec::new(),
            manifests,
            subject: i
                .subject()
                .as_ref()
                .map(|s| descriptor_digest(s, "subject"))
                .transpose()?,
            annotations: i
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;
    use serde_json::json;

    fn d(s: &str) -> String {
        Digest::of(Algorithm::Sha256, s.as_bytes()).to_string()
    }

    fn image_json(media_type: Option<&str>) -> serde_json::Value {
        let mut v = json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d("c"), "size": 1},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d("l1"), "size": 2},
                {"mediaType": media::DOCKER_FOREIGN_LAYER, "digest": d("f"), "size": 3, "urls": ["https://x"]}
            ],
            "annotations": {"a": "b"}
        });
        if let Some(mt) = media_type {
            v["mediaType"] = json!(mt);
        }
        v
    }

    #[test]
    fn image_manifest_lists_config_and_layers_but_not_foreign_layers() {
        let body = serde_json::to_vec(&image_json(Some(media::OCI_MANIFEST))).unwrap();
        let p = ParsedManifest::parse(media::OCI_MANIFEST, &body).unwrap();
        assert_eq!(p.kind, ManifestKind::Image);
        let blobs: Vec<String> = p.blobs.iter().map(|b| b.to_string()).collect();
        assert_eq!(blobs, vec![d("c"), d("l1")]);
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        assert_eq!(p.annotations.get("a").map(String::as_str), Some("b"));
        assert_eq!(p.subject, None);
    }

    #[test]
    fn media_type_comes_from_body_or_header_and_must_agree() {
        let body = serde_json::to_vec(&image_json(None)).unwrap();
        let p = ParsedManifest::parse(media::DOCKER_MANIFEST, &body).unwrap();
        assert_eq!(p.media_type, media::DOCKER_MANIFEST);
        let p = ParsedManifest::parse("", &body).unwrap();
        assert_eq!(p.media_type, media::OCI_MANIFEST);
        let body = serde_json::to_vec(&image_json(Some(media::OCI_MANIFEST))).unwrap();
        assert!(matches!(
            ParsedManifest::parse(media::DOCKER_MANIFEST, &body),
            Err(ManifestError::Invalid(_))
        ));
    }

    #[test]
    fn index_with_subject_and_artifact_type() {
        let body = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "artifactType": "application/x-test",
            "manifests": [{"mediaType": media::OCI_MANIFEST, "digest": d("m1"), "size": 10}],
            "subject": {"mediaType": media::OCI_MANIFEST, "digest": d("s"), "size": 5}
        }))
        .unwrap();
        let p = ParsedManifest::parse(media::OCI_INDEX, &body).unwrap();
        assert_eq!(p.kind, ManifestKind::Index);
        assert_eq!(p.manifests.len(), 1);
        assert_eq!(p.subject.unwrap().to_string(), d("s"));
        assert_eq!(p.artifact_type.as_deref(), Some("application/x-test"));
    }

    #[test]
    fn rejects_bad_manifests() {
        let too_big = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert_eq!(
            ParsedManifest::parse("", &too_big),
            Err(ManifestError::TooLarge)
        );
        assert!(ParsedManifest::parse(media::OCI_MANIFEST, b"not json").is_err());
        assert!(ParsedManifest::parse(media::OCI_MANIFEST, b"[]").is_err());
        let mut v = image_json(None);
        v["schemaVersion"] = json!(1);
        let body = serde_json::to_vec(&v).unwrap();
        assert!(ParsedManifest::parse(media::OCI_MANIFEST, &body).is_err());
        let mut v = image_json(None);
        v["config"]["digest"] = json!("sha256:short");
        let body = serde_json::to_vec(&v).unwrap();
        assert!(ParsedManifest::parse(media::OCI_MANIFEST, &body).is_err());
        let mut v = image_json(None);
        v.as_object_mut().unwrap().remove("config");
        let body = serde_json::to_vec(&v).unwrap();
        assert!(ParsedManifest::parse(media::OCI_MANIFEST, &body).is_err());
        let body = serde_json::to_vec(&image_json(None)).unwrap();
        assert!(matches!(
            ParsedManifest::parse("text/plain", &body),
            Err(ManifestError::UnsupportedType(_))
        ));
    }
}
