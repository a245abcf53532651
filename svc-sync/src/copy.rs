//! Copying one image from an upstream into Capstan: the manifest (and, for
//! an index, every child first), then each blob the repository lacks —
//! linked when svc-blob already holds the digest, otherwise streamed from
//! the upstream into svc-blob in chunks (never held whole) — and the
//! manifest last, so a half-copied image is never visible. The manifests
//! that refer to it upstream (signatures, SBOMs) come along after it.
//!
//! A *lazy* copy (pull-through) stores the manifest without the blobs svc-blob
//! does not hold yet: each is fetched when a client first asks for it,
//! streamed to that client while it is stored ([`tee_blob`]).

use crate::error::SyncError;
use crate::upstream::Upstream;
use capstan_oci::{Digest, ParsedManifest, Reference};
use capstan_proto::blob::v1::{PutChunk, StatRequest};
use capstan_proto::direct::BlobClient;
use capstan_proto::meta::v1::meta_service_client::MetaServiceClient;
use capstan_proto::meta::v1::{LinkBlobRequest, PutManifestRequest, StatBlobRequest};
use capstan_runtime::grpc::CHUNK_BYTES;
use capstan_runtime::grpc::Transport;
use futures::StreamExt;
use std::future::Future;
use std::pin::Pin;

/// Where copies go.
#[derive(Debug, Clone)]
pub struct Stores {
    pub meta: MetaServiceClient<Transport>,
    pub blob: BlobClient<Transport>,
    /// Pass each image's config with its manifest, for search
    /// (`extensions.search` is on).
    pub configs: bool,
}

fn code(s: &tonic::Status) -> capstan_oci::ErrorCode {
    capstan_proto::ServiceError::from_status(s).code
}

/// How an image is copied.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// Of an index, only the children for these platforms (`os/arch[/variant]`;
    /// empty: all); the others are fetched when asked for.
    pub platforms: &'a [String],
    /// Store the manifest without the blobs svc-blob lacks (pull-through).
    pub lazy: bool,
    /// Keep Docker manifests as they are; otherwise they become OCI ones
    /// (and so get other digests), as zot does.
    pub preserve_digest: bool,
}

/// A manifest as stored locally.
#[derive(Debug, Clone)]
pub struct Stored {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

/// Copy `reference` of upstream `from` into local `to`.
pub fn image<'a>(
    stores: &'a Stores,
    up: &'a Upstream,
    from: &'a str,
    to: &'a str,
    reference: &'a str,
    opts: Options<'a>,
) -> Pin<Box<dyn Future<Output = Result<Stored, SyncError>> + Send + 'a>> {
    Box::pin(async move {
        let m = up.manifest(from, reference).await?;
        let wanted = match Reference::parse(reference) {
            Ok(Reference::Digest(d)) => Some(d),
            _ => None,
        };
        let algorithm = wanted
            .as_ref()
            .map(|d| d.algorithm())
            .unwrap_or(capstan_oci::Algorithm::Sha256);
        let digest = Digest::of(algorithm, &m.bytes);
        if let Some(want) = wanted
            && want != digest
        {
            return Err(SyncError::Invalid(format!(
                "{from}@{reference} served content with digest {digest}"
            )));
        }
        let parsed = ParsedManifest::parse(&m.media_type, &m.bytes)
            .map_err(|e| SyncError::Invalid(format!("{from}:{reference}: {e}")))?;
        let convert = !opts.preserve_digest && is_docker(&m.media_type);
        // A converted index names converted children, which only exist
        // here: every child is copied then.
        let wanted = if convert {
            None
        } else {
            children_for(&m.bytes, opts.platforms)
        };
        let mut skipped = false;
        let mut children = std::collections::HashMap::new();
        for child in &parsed.manifests {
            let d = child.to_string();
            if wanted.as_ref().is_some_and(|w| !w.contains(&d)) {
                skipped = true;
                continue;
            }
            let stored = image(stores, up, from, to, &d, opts).await?;
            children.insert(d, stored);
        }
        for blob in &parsed.blobs {
            if !ensure_blob(stores, up, from, to, blob, opts.lazy).await? {
                skipped = true;
            }
        }
        let (media_type, bytes) = if convert {
            to_oci(&m.bytes, &children)
                .ok_or_else(|| SyncError::Invalid(format!("{from}:{reference}: cannot convert")))?
        } else {
            (m.media_type.clone(), m.bytes.clone())
        };
        let local = Digest::of(algorithm, &bytes);
        // The config, once stored here, for what search shows of the image.
        let config = match capstan_oci::manifest::config_digest(&bytes).filter(|_| stores.configs) {
            Some(d) => {
                let max = capstan_oci::manifest::MAX_CONFIG_BYTES as u64;
                stores
                    .blob
                    .clone()
                    .read_small(to, &d, max)
                    .await
                    .unwrap_or_default()
            }
            None => Default::default(),
        };
        // A converted manifest has a digest of its own.
        let local_ref = if convert && wanted_is_digest(reference) {
            local.to_string()
        } else {
            reference.to_string()
        };
        stores
            .meta
            .clone()
            .put_manifest(PutManifestRequest {
                repo: to.to_string(),
                reference: local_ref,
                content_type: media_type.clone(),
                content: bytes.clone(),
                allow_missing_children: skipped,
                tags: Vec::new(),
                tag_rule: 0,
                config,
            })
            .await?;
        tracing::info!(upstream_repo = from, repo = to, reference, digest = %local, converted = convert, "image synced");
        let d = digest.to_string();
        for (referrer, _) in up.referrers(from, &d).await? {
            if referrer != d {
                image(stores, up, from, to, &referrer, opts).await?;
            }
        }
        Ok(Stored {
            digest: local.to_string(),
            size: bytes.len() as u64,
            media_type,
        })
    })
}

fn wanted_is_digest(reference: &str) -> bool {
    matches!(Reference::parse(reference), Ok(Reference::Digest(_)))
}

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The digest a single (not list) manifest gets here: converted to OCI
/// unless `preserve_digest`. `None` for a Docker list (its digest depends on
/// its converted children).
pub fn local_digest(m: &crate::upstream::Manifest, preserve_digest: bool) -> Option<String> {
    if preserve_digest || !is_docker(&m.media_type) {
        return Some(Digest::of(capstan_oci::Algorithm::Sha256, &m.bytes).to_string());
    }
    if m.media_type == DOCKER_LIST {
        return None;
    }
    let (_, bytes) = to_oci(&m.bytes, &std::collections::HashMap::new())?;
    Some(Digest::of(capstan_oci::Algorithm::Sha256, &bytes).to_string())
}

fn is_docker(media_type: &str) -> bool {
    media_type == DOCKER_MANIFEST || media_type == DOCKER_LIST
}

/// The OCI media type standing for a Docker one (unchanged when none).
fn oci_type(media_type: &str) -> &str {
    match media_type {
        DOCKER_MANIFEST => capstan_oci::media::OCI_MANIFEST,
        DOCKER_LIST => capstan_oci::media::OCI_INDEX,
        "application/vnd.docker.container.image.v1+json" => {
            "application/vnd.oci.image.config.v1+json"
        }
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        }
        "application/vnd.docker.image.rootfs.diff.tar" => "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        }
        other => other,
    }
}

/// A Docker manifest or list rewritten as OCI: media types mapped, and a
/// list's entries pointing at the converted `children`.
fn to_oci(
    bytes: &[u8],
    children: &std::collections::HashMap<String, Stored>,
) -> Option<(String, bytes::Bytes)> {
    let mut v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let media = oci_type(v["mediaType"].as_str()?).to_string();
    v["mediaType"] = media.clone().into();
    let set = |d: &mut serde_json::Value| {
        if let Some(t) = d["mediaType"].as_str() {
            d["mediaType"] = oci_type(t).to_string().into();
        }
    };
    if let Some(c) = v.get_mut("config") {
        set(c);
    }
    for l in v
        .get_mut("layers")
        .and_then(|l| l.as_array_mut())
        .into_iter()
        .flatten()
    {
        set(l);
    }
    for m in v
        .get_mut("manifests")
        .and_then(|l| l.as_array_mut())
        .into_iter()
        .flatten()
    {
        let old = m["digest"].as_str()?.to_string();
        let new = children.get(&old)?;
        m["digest"] = new.digest.clone().into();
        m["size"] = new.size.into();
        m["mediaType"] = new.media_type.clone().into();
    }
    let out = serde_json::to_vec(&v).ok()?;
    Some((media, out.into()))
}

/// Artifact types of signatures: Notary v2 and cosign (as a referrer).
const SIGNATURE_TYPES: &[&str] = &[
    "application/vnd.cncf.notary.signature",
    "application/vnd.dev.cosign.artifact.sig.v1+json",
];

/// Whether upstream image `digest` of `from` is signed: a signature among
/// its referrers, or cosign's `sha256-<hex>.sig` tag.
pub async fn is_signed(up: &Upstream, from: &str, digest: &str) -> Result<bool, SyncError> {
    let referrers = up.referrers(from, digest).await?;
    if referrers
        .iter()
        .any(|(_, t)| SIGNATURE_TYPES.contains(&t.as_str()))
    {
        return Ok(true);
    }
    let tag = format!("{}.sig", digest.replacen(':', "-", 1));
    match up.manifest(from, &tag).await {
        Ok(_) => Ok(true),
        Err(SyncError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The children of an index whose platform is one of `platforms`; `None`
/// when every child is wanted (no filter, or not an index). Children without
/// a platform (attestations and the like) are kept.
fn children_for(index: &[u8], platforms: &[String]) -> Option<Vec<String>> {
    if platforms.is_empty() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(index).ok()?;
    let list = v["manifests"].as_array()?;
    Some(
        list.iter()
            .filter(|m| {
                let p = &m["platform"];
                let (Some(os), Some(arch)) = (p["os"].as_str(), p["architecture"].as_str()) else {
                    return true;
                };
                let name = format!("{os}/{arch}");
                let full = p["variant"]
                    .as_str()
                    .map(|variant| format!("{name}/{variant}"));
                platforms
                    .iter()
                    .any(|w| *w == name || Some(w) == full.as_ref())
            })
            .filter_map(|m| m["digest"].as_str().map(str::to_string))
            .collect(),
    )
}

/// Make `digest` readable in `to`: nothing when it is, a link when svc-blob
/// has it, otherwise a streamed copy — or, when `lazy`, nothing yet (false).
async fn ensure_blob(
    stores: &Stores,
    up: &Upstream,
    from: &str,
    to: &str,
    digest: &Digest,
    lazy: bool,
) -> Result<bool, SyncError> {
    let d = digest.to_string();
    match stores
        .meta
        .clone()
        .stat_blob(StatBlobRequest {
            repo: to.to_string(),
            digest: d.clone(),
        })
        .await
    {
        Ok(_) => return Ok(true),
        Err(s)
            if matches!(
                code(&s),
                capstan_oci::ErrorCode::BlobUnknown | capstan_oci::ErrorCode::NameUnknown
            ) => {}
        Err(s) => return Err(s.into()),
    }
    let size = match stores
        .blob
        .clone()
        .stat(StatRequest {
            digest: d.clone(),
            // Linked next without a store: a collection under way keeps it.
            keep: true,
            repo: to.to_string(),
        })
        .await
    {
        Ok(r) => r.into_inner().size,
        Err(s) if code(&s) == capstan_oci::ErrorCode::BlobUnknown => {
            if lazy {
                return Ok(false);
            }
            copy_blob(stores, up, from, to, &d).await?
        }
        Err(s) => return Err(s.into()),
    };
    stores
        .meta
        .clone()
        .link_blob(LinkBlobRequest {
            repo: to.to_string(),
            digest: d,
            size,
        })
        .await?;
    Ok(true)
}

/// Stream blob `digest` from the upstream into svc-blob, which verifies it.
async fn copy_blob(
    stores: &Stores,
    up: &Upstream,
    from: &str,
    to: &str,
    digest: &str,
) -> Result<u64, SyncError> {
    let r = up.blob(from, digest).await?;
    store_stream(stores, r, from, to, digest, None).await
}

/// Stream blob `digest` of upstream `from` into svc-blob and link it to
/// `to`, handing every chunk to `client` on the way. The copy goes on when
/// the client goes away; an upstream failure reaches the client as an error
/// and leaves nothing stored.
pub async fn tee_blob(
    stores: Stores,
    response: reqwest::Response,
    from: String,
    to: String,
    digest: String,
    client: ClientTx,
) -> Result<u64, SyncError> {
    let size = store_stream(&stores, response, &from, &to, &digest, Some(&client)).await?;
    stores
        .meta
        .clone()
        .link_blob(LinkBlobRequest {
            repo: to.clone(),
            digest: digest.clone(),
            size,
        })
        .await?;
    tracing::info!(upstream_repo = %from, repo = %to, digest = %digest, size, "blob synced");
    Ok(size)
}

/// Upstream pieces at least this large are stored and streamed as they
/// are; smaller ones are gathered first.
const PASS_THROUGH_BYTES: usize = 128 * 1024;

/// Where a pull-through blob's bytes go on their way to the store.
pub type ClientTx =
    tokio::sync::mpsc::Sender<Result<capstan_proto::blob::v1::ReadChunk, tonic::Status>>;

/// The bytes of `response` into svc-blob `Put` (≤ one gRPC chunk at a time,
/// never the whole blob), each chunk also to `client` while it listens; an
/// upstream failure cancels the put (svc-blob keeps nothing) and reaches the
/// client as an error.
async fn store_stream(
    stores: &Stores,
    response: reqwest::Response,
    from: &str,
    to: &str,
    digest: &str,
    client: Option<&ClientTx>,
) -> Result<u64, SyncError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<PutChunk>(4);
    let put = {
        let mut blob = stores.blob.clone();
        tokio::spawn(async move {
            blob.put(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        })
    };
    let length = response.content_length();
    let mut body = response.bytes_stream();
    let mut first = true;
    let mut client = client;
    let mut failed: Option<SyncError> = None;
    // The network hands over pieces of a few KiB to a few hundred KiB. Small
    // ones are gathered into chunks of up to CHUNK_BYTES so each message,
    // hash and write step carries a useful amount of bytes; a piece that is
    // large enough by itself goes on as it is, without being copied.
    let mut pending = bytes::BytesMut::new();
    let mut ended = false;
    'pump: while !ended {
        let mut whole = None;
        match body.next().await {
            Some(Ok(c)) if pending.is_empty() && c.len() >= PASS_THROUGH_BYTES => {
                if c.len() > CHUNK_BYTES {
                    // Keep every message within one chunk: the rest is
                    // gathered as usual (no copy for the part split off).
                    let mut c = c;
                    whole = Some(c.split_to(CHUNK_BYTES));
                    pending.reserve(CHUNK_BYTES.max(c.len()));
                    pending.extend_from_slice(&c);
                } else {
                    whole = Some(c);
                }
            }
            Some(Ok(c)) => {
                if pending.capacity() - pending.len() < c.len() {
                    // A whole chunk's room at once: growing by doubling
                    // would copy the bytes again.
                    pending.reserve(CHUNK_BYTES.max(c.len()));
                }
                pending.extend_from_slice(&c);
            }
            Some(Err(e)) => {
                failed = Some(SyncError::Unavailable(format!("{from}@{digest}: {e}")));
                break;
            }
            None => ended = true,
        }
        loop {
            let data = match whole.take() {
                Some(data) => data,
                None if pending.len() >= CHUNK_BYTES || (ended && !pending.is_empty()) => {
                    let take = pending.len().min(CHUNK_BYTES);
                    pending.split_to(take).freeze()
                }
                None => break,
            };
            let msg = PutChunk {
                digest: if first {
                    digest.to_string()
                } else {
                    String::new()
                },
                data: data.clone(),
                length: if first { length } else { None },
                repo: if first { to.to_string() } else { String::new() },
            };
            first = false;
            if tx.send(msg).await.is_err() {
                // svc-blob ended the call; its answer says why.
                break 'pump;
            }
            if let Some(c) = client
                && c.send(Ok(capstan_proto::blob::v1::ReadChunk { data }))
                    .await
                    .is_err()
            {
                client = None; // gone: keep storing
            }
        }
    }
    if first && failed.is_none() {
        // An empty blob still names its digest.
        let _ = tx
            .send(PutChunk {
                digest: digest.to_string(),
                data: bytes::Bytes::new(),
                length: Some(0),
                repo: to.to_string(),
            })
            .await;
    }
    if let Some(e) = failed {
        // Cancel the put before `tx` goes: svc-blob must see a cancelled
        // call, not a stream that ended (it would hash the partial bytes
        // only to refuse them).
        put.abort();
        let _ = put.await;
        if let Some(c) = client {
            let _ = c.send(Err(e.clone().into())).await;
        }
        return Err(e);
    }
    drop(tx);
    match put.await {
        Ok(Ok(r)) => Ok(r.into_inner().size),
        Ok(Err(status)) => {
            if let Some(c) = client {
                let _ = c.send(Err(status.clone())).await;
            }
            Err(status.into())
        }
        Err(e) => Err(SyncError::Unavailable(format!("blob store task: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_manifests_and_lists_become_oci() {
        let m = serde_json::json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:c", "size": 1},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": "sha256:l", "size": 2}]});
        let (t, b) = to_oci(m.to_string().as_bytes(), &Default::default()).unwrap();
        assert_eq!(t, capstan_oci::media::OCI_MANIFEST);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v["config"]["mediaType"],
            "application/vnd.oci.image.config.v1+json"
        );
        assert_eq!(
            v["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(v["layers"][0]["digest"], "sha256:l");
        let list = serde_json::json!({"schemaVersion": 2, "mediaType": DOCKER_LIST,
            "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": "sha256:old", "size": 9,
                           "platform": {"os": "linux", "architecture": "amd64"}}]});
        let children = std::collections::HashMap::from([(
            "sha256:old".to_string(),
            Stored {
                digest: "sha256:new".into(),
                size: 7,
                media_type: capstan_oci::media::OCI_MANIFEST.into(),
            },
        )]);
        let (t, b) = to_oci(list.to_string().as_bytes(), &children).unwrap();
        assert_eq!(t, capstan_oci::media::OCI_INDEX);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["manifests"][0]["digest"], "sha256:new");
        assert_eq!(v["manifests"][0]["size"], 7);
        assert_eq!(v["manifests"][0]["platform"]["architecture"], "amd64");
        // A child that was not converted makes the list unconvertible.
        assert!(to_oci(list.to_string().as_bytes(), &Default::default()).is_none());
    }

    #[test]
    fn platform_filters_pick_index_children() {
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [
            {"digest": "sha256:aa", "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": "sha256:bb", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"digest": "sha256:cc", "platform": {"os": "windows", "architecture": "amd64"}},
            {"digest": "sha256:dd"}
        ]})
        .to_string();
        assert_eq!(children_for(index.as_bytes(), &[]), None);
        assert_eq!(
            children_for(index.as_bytes(), &["linux/amd64".into()]).unwrap(),
            vec!["sha256:aa", "sha256:dd"]
        );
        assert_eq!(
            children_for(
                index.as_bytes(),
                &["linux/arm64/v8".into(), "linux/arm64".into()]
            )
            .unwrap(),
            vec!["sha256:bb", "sha256:dd"]
        );
    }
}
