//! The role end to end: `serve` on a real socket, called with the generated
//! client, errors decoded from the status detail.

use super::*;
use crate::testutil::{descriptor, image, image_with, sha256};
use capstan_oci::{ErrorCode, manifest::MAX_MANIFEST_BYTES, media};
use capstan_proto::ServiceError;
use capstan_proto::meta::v1::meta_service_client::MetaServiceClient;
use capstan_proto::meta::v1::*;
use capstan_runtime::grpc::Transport;
use serde_json::json;

struct Running {
    client: MetaServiceClient<Transport>,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    root: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    // A root that does not exist yet: serve creates it.
    let root = dir.path().join("root").join("nested");
    config.storage.root_directory = root.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { serve(&config, listener, shutdown).await }
    });
    let channel = grpc::connect(&format!("http://{addr}")).unwrap();
    let client = MetaServiceClient::new(channel)
        .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(grpc::MAX_MESSAGE_BYTES);
    Running {
        client,
        shutdown,
        task,
        root,
        _dir: dir,
    }
}

fn code(status: tonic::Status) -> ErrorCode {
    ServiceError::from_status(&status).code
}

fn put(repo: &str, reference: &str, content: &[u8]) -> PutManifestRequest {
    PutManifestRequest {
        repo: repo.into(),
        reference: reference.into(),
        content_type: media::OCI_MANIFEST.into(),
        content: content.to_vec().into(),
        allow_missing_children: false,
        tags: Vec::new(),
        tag_rule: 0,
        config: Default::default(),
    }
}

fn get(repo: &str, reference: &str, head: bool) -> GetManifestRequest {
    GetManifestRequest {
        repo: repo.into(),
        reference: reference.into(),
        head,
    }
}

async fn link_all(client: &mut MetaServiceClient<Transport>, repo: &str, img: &testutil::Image) {
    for (d, size) in &img.blobs {
        client
            .link_blob(LinkBlobRequest {
                repo: repo.into(),
                digest: d.to_string(),
                size: *size,
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn serves_the_namespace_over_grpc() {
    let Running {
        mut client,
        shutdown,
        task,
        root,
        _dir,
    } = start().await;
    let img = image("grpc");

    // Structured error detail survives the trip.
    let status = client
        .put_manifest(put("app", "v1", &img.bytes))
        .await
        .unwrap_err();
    let err = ServiceError::from_status(&status);
    assert_eq!(err.code, ErrorCode::ManifestBlobUnknown);
    let detail: serde_json::Value = serde_json::from_str(&err.detail_json).unwrap();
    assert_eq!(detail["digest"], img.blobs[0].0.to_string());

    link_all(&mut client, "app", &img).await;
    let out = client
        .put_manifest(put("app", "v1", &img.bytes))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.digest, img.digest.to_string());
    assert_eq!(out.subject, "");

    let got = client
        .get_manifest(get("app", "v1", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&got.content[..], &img.bytes[..]);
    assert_eq!(got.media_type, media::OCI_MANIFEST);
    assert_eq!(got.digest, img.digest.to_string());
    let head = client
        .get_manifest(get("app", &img.digest.to_string(), true))
        .await
        .unwrap()
        .into_inner();
    assert!(head.content.is_empty());
    assert_eq!(head.size, img.bytes.len() as u64);
    assert_eq!(head.digest, img.digest.to_string());

    // A referrer with annotations.
    let sig = image_with("grpc-sig", |v| {
        v["artifactType"] = json!("application/x-sig");
        v["subject"] = descriptor(&img);
        v["annotations"] = json!({"k": "v"});
    });
    link_all(&mut client, "app", &sig).await;
    let out = client
        .put_manifest(put("app", &sig.digest.to_string(), &sig.bytes))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.subject, img.digest.to_string());
    let refs = client
        .referrers(ReferrersRequest {
            repo: "app".into(),
            digest: img.digest.to_string(),
            artifact_type: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .manifests;
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].digest, sig.digest.to_string());
    assert_eq!(refs[0].artifact_type, "application/x-sig");
    assert_eq!(refs[0].annotations.get("k").map(String::as_str), Some("v"));
    let filtered = client
        .referrers(ReferrersRequest {
            repo: "app".into(),
            digest: img.digest.to_string(),
            artifact_type: "application/other".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(filtered.manifests.is_empty());

    let tags = client
        .list_tags(ListTagsRequest {
            repo: "app".into(),
            n: Some(1),
            last: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((tags.tags, tags.more), (vec!["v1".to_string()], false));

    let mounted = client
        .mount_blob(MountBlobRequest {
            repo: "copy".into(),
            from: "app".into(),
            digest: img.blobs[1].0.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(mounted.mounted);
    assert_eq!(mounted.size, img.blobs[1].1);
    let stat = client
        .stat_blob(StatBlobRequest {
            repo: "copy".into(),
            digest: img.blobs[1].0.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stat.size, img.blobs[1].1);
    let not_mounted = client
        .mount_blob(MountBlobRequest {
            repo: "copy".into(),
            from: "app".into(),
            digest: sha256(b"absent").to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!not_mounted.mounted);
    let catalog = client
        .catalog(CatalogRequest {
            n: None,
            last: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(catalog.repositories, ["app", "copy"]);
    client
        .unlink_blob(UnlinkBlobRequest {
            repo: "copy".into(),
            digest: img.blobs[1].0.to_string(),
        })
        .await
        .unwrap();

    // Every bad input maps to its code.
    let s = client
        .get_manifest(get("Bad", "v1", false))
        .await
        .unwrap_err();
    assert_eq!(code(s), ErrorCode::NameInvalid);
    let s = client
        .get_manifest(get("app", "sha256:zz", false))
        .await
        .unwrap_err();
    assert_eq!(code(s), ErrorCode::DigestInvalid);
    let s = client
        .get_manifest(get("app", "-tag", false))
        .await
        .unwrap_err();
    assert_eq!(code(s), ErrorCode::TagInvalid);
    let s = client
        .get_manifest(get("app", "v9", false))
        .await
        .unwrap_err();
    assert_eq!(code(s), ErrorCode::ManifestUnknown);
    let s = client
        .list_tags(ListTagsRequest {
            repo: "ghost".into(),
            n: None,
            last: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(s), ErrorCode::NameUnknown);
    let s = client
        .stat_blob(StatBlobRequest {
            repo: "copy".into(),
            digest: img.blobs[1].0.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(s), ErrorCode::BlobUnknown);
    let s = client
        .put_manifest(put("app", &sha256(b"other").to_string(), &img.bytes))
        .await
        .unwrap_err();
    assert_eq!(code(s), ErrorCode::DigestInvalid);

    client
        .delete_manifest(DeleteManifestRequest {
            repo: "app".into(),
            reference: img.digest.to_string(),
            detect_collision: false,
        })
        .await
        .unwrap();
    let s = client
        .get_manifest(get("app", "v1", true))
        .await
        .unwrap_err();
    assert_eq!(code(s), ErrorCode::ManifestUnknown);

    assert!(root.join("meta.db").is_file());
    shutdown.trigger();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_manifest_at_the_size_limit_fits_in_a_message() {
    let Running {
        mut client,
        shutdown,
        task,
        ..
    } = start().await;
    let base = image("big");
    let pad = MAX_MANIFEST_BYTES - base.bytes.len() - r#","annotations":{"p":""}"#.len();
    let big = image_with("big", |v| {
        v["annotations"] = json!({"p": "x".repeat(pad)});
    });
    assert_eq!(big.bytes.len(), MAX_MANIFEST_BYTES);
    link_all(&mut client, "big", &big).await;
    client
        .put_manifest(put("big", "v1", &big.bytes))
        .await
        .unwrap();
    let got = client
        .get_manifest(get("big", "v1", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.content.len(), MAX_MANIFEST_BYTES);

    let mut too_big = big.bytes.clone();
    too_big.push(b' ');
    let s = client
        .put_manifest(put("big", "v2", &too_big))
        .await
        .unwrap_err();
    assert_eq!(code(s), ErrorCode::ManifestTooLarge);

    shutdown.trigger();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn serve_fails_on_an_unusable_database() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.storage.root_directory = dir.path().to_path_buf();
    config.storage.database = Some("mysql://localhost/meta".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = serve(&config, listener, Shutdown::new()).await.unwrap_err();
    assert!(format!("{err:#}").contains("mysql"), "{err:#}");
}

#[tokio::test]
async fn watch_reports_committed_manifest_changes() {
    let mut r = start().await;
    let mut feed = r.client.watch(WatchRequest {}).await.unwrap().into_inner();
    // The first message says the subscription is live.
    assert_eq!(feed.message().await.unwrap().unwrap().repo, "");
    let img = image("watched");
    for (d, size) in &img.blobs {
        r.client
            .link_blob(LinkBlobRequest {
                repo: "w/repo".into(),
                digest: d.to_string(),
                size: *size,
            })
            .await
            .unwrap();
    }
    r.client
        .put_manifest(put("w/repo", "v1", &img.bytes))
        .await
        .unwrap();
    assert_eq!(feed.message().await.unwrap().unwrap().repo, "w/repo");
    // A failed push changes nothing and says nothing; the next change is the delete.
    assert!(
        r.client
            .put_manifest(put("w/repo", "v2", b"{"))
            .await
            .is_err()
    );
    r.client
        .delete_manifest(DeleteManifestRequest {
            repo: "w/repo".into(),
            reference: "v1".into(),
            detect_collision: false,
        })
        .await
        .unwrap();
    assert_eq!(feed.message().await.unwrap().unwrap().repo, "w/repo");
    // Shutting down ends the feed and the server, open stream or not.
    r.shutdown.trigger();
    assert!(feed.message().await.map(|m| m.is_none()).unwrap_or(true));
    tokio::time::timeout(std::time::Duration::from_secs(10), r.task)
        .await
        .expect("server stopped despite an open watch")
        .unwrap()
        .unwrap();
}
