use super::*;
use crate::testutil::{
    descriptor, image, image_with, index, link_blobs, sha256, sqlite_url, temp_store_on,
};
use capstan_oci::{ErrorCode, media};
use capstan_proto::ServiceError;
use serde_json::json;

fn tag(t: &str) -> Reference {
    Reference::Tag(t.to_string())
}

fn by_digest(d: &Digest) -> Reference {
    Reference::Digest(d.clone())
}

fn code<T: std::fmt::Debug>(r: Result<T, MetaError>) -> ErrorCode {
    r.expect_err("expected an error").code()
}

fn page(items: &[&str], more: bool) -> Page {
    Page {
        items: items.iter().map(|s| s.to_string()).collect(),
        more,
    }
}

async fn count(store: &Store, sql: &'static str, repo: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(repo)
        .fetch_one(&store.pool)
        .await
        .unwrap()
}

async fn put_then_get_and_head_by_tag_and_digest(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let img = image("one");
    link_blobs(&store, "lib/app", &img).await;
    let out = store
        .put_manifest("lib/app", &tag("v1"), media::OCI_MANIFEST, &img.bytes)
        .await
        .unwrap();
    assert_eq!(out.digest, img.digest);
    assert_eq!(out.subject, None);

    for reference in [tag("v1"), by_digest(&img.digest)] {
        let got = store
            .get_manifest("lib/app", &reference, false)
            .await
            .unwrap();
        assert_eq!(got.digest, img.digest.to_string());
        assert_eq!(got.media_type, media::OCI_MANIFEST);
        assert_eq!(got.size, img.bytes.len() as u64);
        assert_eq!(got.content.as_deref(), Some(&img.bytes[..]));

        let head = store
            .get_manifest("lib/app", &reference, true)
            .await
            .unwrap();
        assert_eq!(head.content, None);
        assert_eq!(head.digest, img.digest.to_string());
        assert_eq!(head.size, img.bytes.len() as u64);
        assert_eq!(head.media_type, media::OCI_MANIFEST);
    }

    // Unknown tag, digest and repository.
    assert_eq!(
        code(store.get_manifest("lib/app", &tag("v2"), false).await),
        ErrorCode::ManifestUnknown
    );
    assert_eq!(
        code(
            store
                .get_manifest("lib/app", &by_digest(&sha256(b"no")), true)
                .await
        ),
        ErrorCode::ManifestUnknown
    );
    assert_eq!(
        code(store.get_manifest("lib/other", &tag("v1"), false).await),
        ErrorCode::ManifestUnknown
    );
    // The manifest's references were recorded for GC.
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM manifest_refs WHERE repo = $1",
            "lib/app"
        )
        .await,
        2
    );
}

async fn pushing_by_digest_stores_without_a_tag_and_is_idempotent(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let img = image("by-digest");
    link_blobs(&store, "r", &img).await;
    for _ in 0..2 {
        let out = store
            .put_manifest("r", &by_digest(&img.digest), "", &img.bytes)
            .await
            .unwrap();
        assert_eq!(out.digest, img.digest);
    }
    assert!(
        store
            .list_tags("r", None, "")
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM manifests WHERE repo = $1",
            "r"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM manifest_refs WHERE repo = $1",
            "r"
        )
        .await,
        2
    );
}

async fn a_push_by_digest_sets_its_tags_together_or_none(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let img = image("tagged-push");
    link_blobs(&store, "r", &img).await;
    let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let put = |t: Vec<String>| {
        let (store, img) = (&store, &img);
        async move {
            store
                .put_manifest_sparse(
                    "r",
                    &by_digest(&img.digest),
                    Push::any(&t),
                    "",
                    &img.bytes,
                    false,
                )
                .await
        }
    };
    let e = put(tags(&["a", "..bad"])).await;
    assert_eq!(code(e), ErrorCode::TagInvalid);
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM manifests WHERE repo = $1",
            "r"
        )
        .await,
        0,
        "nothing stored"
    );
    put(tags(&["a", "b"])).await.unwrap();
    assert_eq!(
        store.list_tags("r", None, "").await.unwrap(),
        page(&["a", "b"], false)
    );
    for t in ["a", "b"] {
        let m = store.get_manifest("r", &tag(t), true).await.unwrap();
        assert_eq!(m.digest, img.digest.to_string());
    }
}

async fn retagging_moves_the_tag(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let (a, b) = (image("a"), image("b"));
    link_blobs(&store, "r", &a).await;
    link_blobs(&store, "r", &b).await;
    store
        .put_manifest("r", &tag("latest"), "", &a.bytes)
        .await
        .unwrap();
    store
        .put_manifest("r", &tag("latest"), "", &b.bytes)
        .await
        .unwrap();
    let got = store.get_manifest("r", &tag("latest"), true).await.unwrap();
    assert_eq!(got.digest, b.digest.to_string());
    // The first manifest stays reachable by digest.
    assert!(
        store
            .get_manifest("r", &by_digest(&a.digest), true)
            .await
            .is_ok()
    );
    assert_eq!(
        store.list_tags("r", None, "").await.unwrap().items,
        ["latest"]
    );
}

async fn delete_by_tag_keeps_the_manifest(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let img = image("del-tag");
    link_blobs(&store, "r", &img).await;
    store
        .put_manifest("r", &tag("v1"), "", &img.bytes)
        .await
        .unwrap();
    store
        .put_manifest("r", &tag("v2"), "", &img.bytes)
        .await
        .unwrap();

    store.delete_manifest("r", &tag("v1"), false).await.unwrap();
    assert_eq!(
        code(store.get_manifest("r", &tag("v1"), false).await),
        ErrorCode::ManifestUnknown
    );
    assert!(store.get_manifest("r", &tag("v2"), false).await.is_ok());
    assert!(
        store
            .get_manifest("r", &by_digest(&img.digest), false)
            .await
            .is_ok()
    );
    assert_eq!(
        code(store.delete_manifest("r", &tag("v1"), false).await),
        ErrorCode::ManifestUnknown
    );
}

async fn delete_by_digest_removes_manifest_tags_and_references(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let (img, other) = (image("del-digest"), image("kept"));
    link_blobs(&store, "r", &img).await;
    link_blobs(&store, "r", &other).await;
    store
        .put_manifest("r", &tag("v1"), "", &img.bytes)
        .await
        .unwrap();
    store
        .put_manifest("r", &tag("v2"), "", &img.bytes)
        .await
        .unwrap();
    store
        .put_manifest("r", &tag("keep"), "", &other.bytes)
        .await
        .unwrap();

    // With collision detection, two tags on the digest refuse the delete
    // and change nothing; the other manifest's single tag does not.
    assert_eq!(
        code(
            store
                .delete_manifest("r", &by_digest(&img.digest), true)
                .await
        ),
        ErrorCode::ManifestConflict
    );
    assert_eq!(store.list_tags("r", None, "").await.unwrap().items.len(), 3);
    store
        .delete_manifest("r", &by_digest(&img.digest), false)
        .await
        .unwrap();
    assert_eq!(
        code(store.get_manifest("r", &by_digest(&img.digest), true).await),
        ErrorCode::ManifestUnknown
    );
    assert_eq!(
        store.list_tags("r", None, "").await.unwrap().items,
        ["keep"]
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM manifest_refs WHERE repo = $1",
            "r"
        )
        .await,
        2,
        "only the kept manifest's references remain"
    );
    // Blob links are GC's business, not the delete's.
    assert_eq!(
        store.stat_blob("r", &img.blobs[0].0).await.unwrap(),
        img.blobs[0].1
    );
    assert_eq!(
        code(
            store
                .delete_manifest("r", &by_digest(&img.digest), false)
                .await
        ),
        ErrorCode::ManifestUnknown
    );
    assert_eq!(
        code(
            store
                .delete_manifest("nowhere", &by_digest(&img.digest), false)
                .await
        ),
        ErrorCode::ManifestUnknown
    );
}

async fn manifest_with_an_unlinked_blob_is_rejected_with_the_digest(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let img = image("unlinked");
    // Only the config is linked, the layer is not.
    let (config, size) = &img.blobs[0];
    store.link_blob("r", config, *size).await.unwrap();
    let err = store
        .put_manifest("r", &tag("v1"), "", &img.bytes)
        .await
        .unwrap_err();
    let layer = &img.blobs[1].0;
    assert!(matches!(&err, MetaError::ManifestBlobUnknown { digest } if digest == layer));
    let wire = ServiceError::from(err);
    assert_eq!(wire.code, ErrorCode::ManifestBlobUnknown);
    let detail: serde_json::Value = serde_json::from_str(&wire.detail_json).unwrap();
    assert_eq!(detail, json!({"digest": layer.to_string()}));
    // Nothing was written: no tag, no manifest.
    assert!(
        store
            .list_tags("r", None, "")
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        code(store.get_manifest("r", &by_digest(&img.digest), true).await),
        ErrorCode::ManifestUnknown
    );
    // A blob linked to another repository does not count.
    store.link_blob("other", layer, 1).await.unwrap();
    assert_eq!(
        code(store.put_manifest("r", &tag("v1"), "", &img.bytes).await),
        ErrorCode::ManifestBlobUnknown
    );
    // Linking it makes the push succeed.
    store.link_blob("r", layer, img.blobs[1].1).await.unwrap();
    assert!(
        store
            .put_manifest("r", &tag("v1"), "", &img.bytes)
            .await
            .is_ok()
    );
}

async fn index_needs_its_children_in_the_repository(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let (amd, arm) = (image("amd64"), image("arm64"));
    link_blobs(&store, "r", &amd).await;
    link_blobs(&store, "r", &arm).await;
    store
        .put_manifest("r", &by_digest(&amd.digest), "", &amd.bytes)
        .await
        .unwrap();
    let idx = index(&[&amd, &arm]);

    let err = store
        .put_manifest("r", &tag("multi"), media::OCI_INDEX, &idx)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MetaError::ManifestBlobUnknown { digest } if *digest == arm.digest),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::ManifestBlobUnknown);
    // A sparse index (svc-sync's platform filter) may name absent children.
    store
        .put_manifest_sparse(
            "r",
            &tag("sparse"),
            Push::default(),
            media::OCI_INDEX,
            &idx,
            true,
        )
        .await
        .unwrap();

    store
        .put_manifest("r", &by_digest(&arm.digest), "", &arm.bytes)
        .await
        .unwrap();
    let out = store
        .put_manifest("r", &tag("multi"), media::OCI_INDEX, &idx)
        .await
        .unwrap();
    assert_eq!(out.digest, sha256(&idx));
    let got = store.get_manifest("r", &tag("multi"), true).await.unwrap();
    assert_eq!(got.media_type, media::OCI_INDEX);
    let children: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM manifest_refs WHERE repo = $1 AND digest = $2 AND kind = 'manifest'",
    )
    .bind("r")
    .bind(out.digest.to_string())
    .fetch_one(&store.pool)
    .await
    .unwrap();
    assert_eq!(children, 2);
}

async fn digest_reference_must_match_the_content(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let img = image("mismatch");
    link_blobs(&store, "r", &img).await;
    let wrong = sha256(b"something else");
    assert_eq!(
        code(
            store
                .put_manifest("r", &by_digest(&wrong), "", &img.bytes)
                .await
        ),
        ErrorCode::DigestInvalid
    );
    assert_eq!(
        code(store.get_manifest("r", &by_digest(&img.digest), true).await),
        ErrorCode::ManifestUnknown
    );
    // A sha512 reference is checked with sha512.
    let d512 = Digest::of(Algorithm::Sha512, &img.bytes);
    let out = store
        .put_manifest("r", &by_digest(&d512), "", &img.bytes)
        .await
        .unwrap();
    assert_eq!(out.digest, d512);
    assert!(
        store
            .get_manifest("r", &by_digest(&d512), true)
            .await
            .is_ok()
    );
}

async fn bad_input_gets_the_right_code(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let img = image("bad");
    link_blobs(&store, "r", &img).await;
    assert_eq!(
        code(
            store
                .put_manifest("Bad/Name", &tag("v1"), "", &img.bytes)
                .await
        ),
        ErrorCode::NameInvalid
    );
    assert_eq!(
        code(store.put_manifest("r", &tag("v1"), "", b"not json").await),
        ErrorCode::ManifestInvalid
    );
    assert_eq!(
        code(
            store
                .put_manifest("r", &tag("v1"), "text/plain", &img.bytes)
                .await
        ),
        ErrorCode::ManifestInvalid
    );
    let huge = vec![b' '; MAX_MANIFEST_BYTES + 1];
    assert_eq!(
        code(store.put_manifest("r", &tag("v1"), "", &huge).await),
        ErrorCode::ManifestTooLarge
    );
    assert_eq!(
        code(store.list_tags("../x", None, "").await),
        ErrorCode::NameInvalid
    );
    assert_eq!(
        code(store.link_blob("r", &sha256(b"x"), u64::MAX).await),
        ErrorCode::SizeInvalid
    );
    assert_eq!(
        code(store.mount_blob("r", "UPPER", &sha256(b"x")).await),
        ErrorCode::NameInvalid
    );
}

async fn tags_are_paginated_in_byte_order(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let img = image("tags");
    link_blobs(&store, "r", &img).await;
    for t in ["d", "b", "B", "e", "a", "c"] {
        store
            .put_manifest("r", &tag(t), "", &img.bytes)
            .await
            .unwrap();
    }
    let all = store.list_tags("r", None, "").await.unwrap();
    assert_eq!(all.items, ["B", "a", "b", "c", "d", "e"]);
    assert!(!all.more);

    let p = store.list_tags("r", Some(2), "").await.unwrap();
    assert_eq!(p, page(&["B", "a"], true));
    let p = store.list_tags("r", Some(2), "a").await.unwrap();
    assert_eq!(p, page(&["b", "c"], true));
    let p = store.list_tags("r", Some(2), "c").await.unwrap();
    assert_eq!(p, page(&["d", "e"], false));
    let p = store.list_tags("r", Some(10), "bb").await.unwrap();
    assert_eq!(p, page(&["c", "d", "e"], false));
    let p = store.list_tags("r", None, "e").await.unwrap();
    assert_eq!(p, Page::default());
    let p = store.list_tags("r", Some(0), "").await.unwrap();
    assert_eq!((p.items.len(), p.more), (0, true));
    let p = store.list_tags("r", Some(0), "e").await.unwrap();
    assert_eq!((p.items.len(), p.more), (0, false));

    assert_eq!(
        code(store.list_tags("unknown", None, "").await),
        ErrorCode::NameUnknown
    );
    // A repository that exists but has no tags lists nothing.
    store.link_blob("empty", &sha256(b"e"), 1).await.unwrap();
    assert_eq!(
        store.list_tags("empty", Some(5), "").await.unwrap(),
        Page::default()
    );
}

async fn catalog_is_paginated(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    assert_eq!(store.catalog(None, "").await.unwrap(), Page::default());
    for repo in ["zeta", "alpha/one", "alpha", "mid"] {
        store
            .link_blob(repo, &sha256(repo.as_bytes()), 3)
            .await
            .unwrap();
    }
    let all = store.catalog(None, "").await.unwrap();
    assert_eq!(all.items, ["alpha", "alpha/one", "mid", "zeta"]);
    assert!(!all.more);
    let p = store.catalog(Some(3), "").await.unwrap();
    assert_eq!(p, page(&["alpha", "alpha/one", "mid"], true));
    let p = store.catalog(Some(3), "mid").await.unwrap();
    assert_eq!(p, page(&["zeta"], false));
    let p = store.catalog(Some(1), "alpha").await.unwrap();
    assert_eq!(p, page(&["alpha/one"], true));
    let p = store.catalog(Some(0), "").await.unwrap();
    assert_eq!((p.items.len(), p.more), (0, true));
}

async fn referrers_with_and_without_artifact_type_filter(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let subject = image("subject");
    link_blobs(&store, "r", &subject).await;
    store
        .put_manifest("r", &tag("v1"), "", &subject.bytes)
        .await
        .unwrap();

    let sig = image_with("sig", |v| {
        v["artifactType"] = json!("application/vnd.example.signature");
        v["subject"] = descriptor(&subject);
        v["annotations"] = json!({"org.example.signer": "alice"});
    });
    // No artifactType: the config media type is reported.
    let sbom = image_with("sbom", |v| {
        v["config"]["mediaType"] = json!("application/vnd.example.sbom");
        v["subject"] = descriptor(&subject);
    });
    let unrelated = image("unrelated");
    for img in [&sig, &sbom, &unrelated] {
        link_blobs(&store, "r", img).await;
        let out = store
            .put_manifest("r", &by_digest(&img.digest), "", &img.bytes)
            .await
            .unwrap();
        if std::ptr::eq(img, &unrelated) {
            assert_eq!(out.subject, None);
        } else {
            assert_eq!(out.subject.as_ref(), Some(&subject.digest));
        }
    }

    let all = store.referrers("r", &subject.digest, None).await.unwrap();
    let mut digests: Vec<&str> = all.iter().map(|r| r.digest.as_str()).collect();
    digests.sort();
    let mut want = vec![sig.digest.to_string(), sbom.digest.to_string()];
    want.sort();
    assert_eq!(digests, want);

    let sigs = store
        .referrers(
            "r",
            &subject.digest,
            Some("application/vnd.example.signature"),
        )
        .await
        .unwrap();
    assert_eq!(sigs.len(), 1);
    let s = &sigs[0];
    assert_eq!(s.digest, sig.digest.to_string());
    assert_eq!(s.media_type, media::OCI_MANIFEST);
    assert_eq!(s.size, sig.bytes.len() as u64);
    assert_eq!(
        s.artifact_type.as_deref(),
        Some("application/vnd.example.signature")
    );
    assert_eq!(
        s.annotations.get("org.example.signer").map(String::as_str),
        Some("alice")
    );

    let sboms = store
        .referrers("r", &subject.digest, Some("application/vnd.example.sbom"))
        .await
        .unwrap();
    assert_eq!(sboms.len(), 1);
    assert_eq!(sboms[0].digest, sbom.digest.to_string());
    assert!(sboms[0].annotations.is_empty());

    assert!(
        store
            .referrers("r", &subject.digest, Some("application/none"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .referrers("r", &unrelated.digest, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .referrers("nope", &subject.digest, None)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn link_stat_unlink_and_mount(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let d = sha256(b"blob");
    assert_eq!(code(store.stat_blob("a", &d).await), ErrorCode::BlobUnknown);
    store.link_blob("a", &d, 4).await.unwrap();
    store.link_blob("a", &d, 4).await.unwrap();
    assert_eq!(store.stat_blob("a", &d).await.unwrap(), 4);
    assert_eq!(code(store.stat_blob("b", &d).await), ErrorCode::BlobUnknown);

    assert_eq!(store.mount_blob("b", "a", &d).await.unwrap(), Some(4));
    assert_eq!(store.stat_blob("b", &d).await.unwrap(), 4);
    // Mounting from a repository that does not hold the blob does nothing.
    assert_eq!(store.mount_blob("c", "nowhere", &d).await.unwrap(), None);
    assert_eq!(code(store.stat_blob("c", &d).await), ErrorCode::BlobUnknown);
    assert_eq!(store.catalog(None, "").await.unwrap().items, ["a", "b"]);

    store.unlink_blob("a", &d).await.unwrap();
    assert_eq!(code(store.stat_blob("a", &d).await), ErrorCode::BlobUnknown);
    assert_eq!(
        code(store.unlink_blob("a", &d).await),
        ErrorCode::BlobUnknown
    );
    // The mounted link is independent of its source.
    assert_eq!(store.stat_blob("b", &d).await.unwrap(), 4);
    assert_eq!(store.mount_blob("a", "a", &d).await.unwrap(), None);
}

async fn concurrent_pushes_to_one_tag_leave_one_consistent_winner(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let images: Vec<_> = (0..20).map(|i| image(&format!("racer-{i}"))).collect();
    for img in &images {
        link_blobs(&store, "race", img).await;
    }
    let tasks: Vec<_> = images
        .iter()
        .map(|img| {
            let store = store.clone();
            let bytes = img.bytes.clone();
            tokio::spawn(async move {
                store
                    .put_manifest("race", &Reference::Tag("hot".into()), "", &bytes)
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let winner = store
        .get_manifest("race", &tag("hot"), false)
        .await
        .unwrap();
    let img = images
        .iter()
        .find(|i| i.digest.to_string() == winner.digest)
        .expect("the tag points at one of the pushed manifests");
    assert_eq!(winner.content.as_deref(), Some(&img.bytes[..]));
    let page = store.list_tags("race", None, "").await.unwrap();
    assert_eq!(page.items, ["hot"]);
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM manifests WHERE repo = $1",
            "race"
        )
        .await,
        20
    );
}

#[tokio::test]
async fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let img = image("persist");
    {
        let store = Store::open(&url).await.unwrap();
        link_blobs(&store, "r", &img).await;
        store
            .put_manifest("r", &tag("v1"), "", &img.bytes)
            .await
            .unwrap();
        store.close().await;
    }
    let store = Store::open(&url).await.unwrap();
    let got = store.get_manifest("r", &tag("v1"), false).await.unwrap();
    assert_eq!(got.content.as_deref(), Some(&img.bytes[..]));
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(sync, 2, "synchronous=FULL");
    let fks: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(fks, 1);
}

#[tokio::test]
async fn a_locked_database_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let store = Store::open_with_timeout(&url, Duration::from_millis(100))
        .await
        .unwrap();
    let other = Store::open(&url).await.unwrap();
    // Another writer holds the write lock.
    let holder = other.pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let err = store.link_blob("r", &sha256(b"x"), 1).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    holder.rollback().await.unwrap();
    // Once released, writes go through.
    store.link_blob("r", &sha256(b"x"), 1).await.unwrap();
}

#[tokio::test]
async fn a_sqlite_url_with_parameters_still_creates_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("new").join("meta.db");
    let store = Store::open(&format!("sqlite://{}?cache=private", file.display()))
        .await
        .unwrap();
    store.link_blob("r", &sha256(b"x"), 1).await.unwrap();
    assert!(file.exists());
}

#[tokio::test]
async fn only_sqlite_and_postgres_urls_are_accepted() {
    let err = Store::open("mysql://localhost/meta").await.unwrap_err();
    assert!(matches!(err, MetaError::UnsupportedDatabase(s) if s == "mysql"));
    assert_eq!(Backend::of("postgresql://h/db").unwrap(), Backend::Postgres);
    assert_eq!(Backend::of("sqlite::memory:").unwrap(), Backend::Sqlite);
}

#[tokio::test]
async fn an_in_memory_database_is_shared_by_the_pool() {
    let store = Store::open("sqlite::memory:").await.unwrap();
    let img = image("memory");
    link_blobs(&store, "r", &img).await;
    store
        .put_manifest("r", &tag("v1"), "", &img.bytes)
        .await
        .unwrap();
    // Reads from several connections at once see the same database.
    let reads: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.get_manifest("r", &tag("v1"), true).await })
        })
        .collect();
    for r in reads {
        assert_eq!(r.await.unwrap().unwrap().digest, img.digest.to_string());
    }
}

async fn concurrent_links_all_land_through_group_commit(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let d = sha256(format!("blob {i}").as_bytes());
            store
                .link_blob(&format!("group/r{}", i % 4), &d, i)
                .await
                .map(|()| d)
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let d = t.await.unwrap().unwrap();
        let repo = format!("group/r{}", i % 4);
        assert_eq!(store.stat_blob(&repo, &d).await.unwrap(), i as u64);
    }
    let page = store.catalog(None, "").await.unwrap();
    assert_eq!(
        page.items,
        vec!["group/r0", "group/r1", "group/r2", "group/r3"]
    );
    // A bad link fails alone; it does not take its neighbours with it.
    let bad = store
        .link_blob("Bad Name", &sha256(b"x"), 1)
        .await
        .unwrap_err();
    assert_eq!(bad.code(), ErrorCode::NameInvalid);
}

/// As if every blob link, and its garbage collection entry, were made at
/// the Unix epoch.
async fn make_every_link_old(store: &Store) {
    for backdate in [
        "UPDATE blob_links SET created_at = 0",
        "UPDATE gc_links SET queued_at = 0",
    ] {
        sqlx::query(backdate).execute(&store.pool).await.unwrap();
    }
}

/// Garbage collection's mark: a blob shared by two repositories keeps the
/// link a manifest needs when the other repository's goes; young links and
/// relinked ones are spared; a dry run changes nothing and lists exactly
/// what the real run then removes; once nothing links a blob, its digest
/// is garbage until svc-blob says it dealt with it.
async fn collection_takes_only_unreferenced_old_links(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let img = image("shared");
    let (config, layer) = (img.blobs[0].0.clone(), img.blobs[1].0.clone());
    link_blobs(&store, "one", &img).await;
    link_blobs(&store, "two", &img).await;
    store
        .put_manifest("one", &tag("v1"), "", &img.bytes)
        .await
        .unwrap();
    // Everything was linked within the last hour: nothing is old enough.
    let hour_ago = super::now() - 3600;
    assert_eq!(
        store.collect(hour_ago, 100, false).await.unwrap(),
        Collection::default()
    );
    // With a cutoff in the future every link is old: only `two`'s go,
    // since `one`'s manifest references both blobs.
    let later = super::now() + 10;
    let planned = store.collect(later, 100, true).await.unwrap();
    let mut names: Vec<(&str, String)> = planned
        .links
        .iter()
        .map(|c| (c.repo.as_str(), c.digest.clone()))
        .collect();
    names.sort();
    let mut expected = vec![("two", config.to_string()), ("two", layer.to_string())];
    expected.sort();
    assert_eq!(names, expected);
    assert!(planned.garbage.is_empty(), "{planned:?}");
    // The dry run changed nothing; the real run removes what it listed.
    assert_eq!(
        store.stat_blob("two", &layer).await.unwrap(),
        img.blobs[1].1
    );
    assert_eq!(store.collect(later, 100, false).await.unwrap(), planned);
    assert_eq!(
        code(store.stat_blob("two", &layer).await),
        ErrorCode::BlobUnknown
    );
    assert_eq!(
        store.stat_blob("one", &layer).await.unwrap(),
        img.blobs[1].1
    );
    // Referenced links left the queue: a second run finds nothing.
    assert_eq!(
        store.collect(later, 100, false).await.unwrap(),
        Collection::default()
    );
    let orphan = sha256(b"never linked");
    assert_eq!(
        store
            .unreferenced(&[config.clone(), layer.clone(), orphan.clone()])
            .await
            .unwrap(),
        vec![orphan.clone()]
    );
    // Deleting the manifest queues its links again; one made again since
    // is young and stays.
    store
        .delete_manifest("one", &by_digest(&img.digest), false)
        .await
        .unwrap();
    make_every_link_old(&store).await;
    store
        .link_blob("one", &config, img.blobs[0].1)
        .await
        .unwrap();
    let just_now = super::now() - 1;
    // The dry run, from plain reads, predicts the step: the link and the
    // digest that then has no link left.
    let predicted = store.collect(just_now, 100, true).await.unwrap();
    let taken = store.collect(just_now, 100, false).await.unwrap();
    assert_eq!(predicted.links, taken.links);
    let digests = |c: &Collection| {
        c.garbage
            .iter()
            .map(|g| g.digest.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(digests(&predicted), digests(&taken));
    assert_eq!(
        taken.links,
        vec![CollectedLink {
            repo: "one".into(),
            digest: layer.to_string(),
            size: img.blobs[1].1,
        }]
    );
    assert_eq!(
        taken
            .garbage
            .iter()
            .map(|g| g.digest.as_str())
            .collect::<Vec<_>>(),
        [layer.to_string()]
    );
    // Garbage stays listed until svc-blob is done with it.
    assert_eq!(
        store.collect(just_now, 100, false).await.unwrap().garbage,
        taken.garbage
    );
    store.forget_garbage(&taken.garbage).await.unwrap();
    assert_eq!(
        store.collect(just_now, 100, false).await.unwrap(),
        Collection::default()
    );
    // The limit bounds one step.
    assert_eq!(
        store.collect(later, 0, false).await.unwrap(),
        Collection::default()
    );
    let one = store.collect(later, 1, false).await.unwrap();
    assert_eq!((one.links.len(), one.garbage.len()), (1, 1));
    assert!(one.more, "a step at its limit says another may find more");
    assert_eq!(one.garbage[0].digest, config.to_string());
    // A linked-again digest is no garbage: its entry goes unreported.
    store
        .link_blob("three", &config, img.blobs[0].1)
        .await
        .unwrap();
    assert_eq!(
        store.collect(hour_ago, 100, false).await.unwrap(),
        Collection::default()
    );
    assert!(
        store
            .unreferenced(std::slice::from_ref(&config))
            .await
            .unwrap()
            .is_empty()
    );
    // Unlinking queues the digest at once.
    store.unlink_blob("three", &config).await.unwrap();
    let unlinked = store.collect(hour_ago, 100, false).await.unwrap();
    assert!(unlinked.links.is_empty());
    assert_eq!(unlinked.garbage.len(), 1);
    assert_eq!(unlinked.garbage[0].digest, config.to_string());
}

/// A blob unlinked while a manifest still names it becomes garbage once
/// that manifest goes (it was neither linked nor queued by then).
async fn a_blob_unlinked_under_a_manifest_is_collected_after_it(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let img = image("unlinked");
    link_blobs(&store, "r", &img).await;
    store
        .put_manifest("r", &tag("v1"), "", &img.bytes)
        .await
        .unwrap();
    let layer = &img.blobs[1].0;
    store.unlink_blob("r", layer).await.unwrap();
    let later = super::now() + 10;
    // Still named by the manifest: no garbage.
    assert!(
        store
            .collect(later, 100, false)
            .await
            .unwrap()
            .garbage
            .is_empty()
    );
    store
        .delete_manifest("r", &by_digest(&img.digest), false)
        .await
        .unwrap();
    let after = store.collect(later, 100, false).await.unwrap();
    let garbage: BTreeSet<String> = after.garbage.iter().map(|g| g.digest.clone()).collect();
    assert!(garbage.contains(&layer.to_string()), "{after:?}");
}

/// Pulls reported by gateways add up per manifest, keep the latest time,
/// and are dropped for a manifest that is gone.
async fn pulls_add_up_per_manifest(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let img = image("pulled");
    link_blobs(&store, "r", &img).await;
    store
        .put_manifest("r", &tag("v1"), "", &img.bytes)
        .await
        .unwrap();
    assert_eq!(store.pull_stats("r", &img.digest).await.unwrap(), (0, None));
    let d = img.digest.to_string();
    store
        .record_pulls(&[
            ("r".into(), d.clone(), 3, 100),
            ("r".into(), sha256(b"gone").to_string(), 5, 100),
        ])
        .await
        .unwrap();
    // Another gateway's report, with an older last pull.
    store
        .record_pulls(&[("r".into(), d.clone(), 2, 50)])
        .await
        .unwrap();
    assert_eq!(
        store.pull_stats("r", &img.digest).await.unwrap(),
        (5, Some(100))
    );
    store.record_pulls(&[]).await.unwrap();
}

/// A blob whose bytes are lost is unlinked everywhere; manifests that name
/// it stay, and linking it again (a push uploading it) heals them.
async fn a_lost_blob_is_unlinked_everywhere(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let img = image("lost");
    for repo in ["a", "b"] {
        link_blobs(&store, repo, &img).await;
    }
    store
        .put_manifest("a", &tag("v1"), "", &img.bytes)
        .await
        .unwrap();
    let layer = &img.blobs[1].0;
    assert_eq!(store.forget_blob(layer).await.unwrap(), 2);
    for repo in ["a", "b"] {
        assert_eq!(
            code(store.stat_blob(repo, layer).await),
            ErrorCode::BlobUnknown
        );
    }
    assert!(store.get_manifest("a", &tag("v1"), true).await.is_ok());
    store.link_blob("a", layer, img.blobs[1].1).await.unwrap();
    assert_eq!(store.stat_blob("a", layer).await.unwrap(), img.blobs[1].1);
    assert_eq!(store.forget_blob(&sha256(b"none")).await.unwrap(), 0);
}

/// A lookup of an old unreferenced link (a push checking for a blob it
/// will not upload again) makes it young, so that garbage collection
/// leaves it to the manifest that follows (distribution#3045); a
/// referenced link is left as it is.
async fn a_blob_lookup_renews_an_old_unreferenced_link(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let store = store.with_gc_delay(Duration::from_secs(4));
    let img = image("renew");
    link_blobs(&store, "r", &img).await;
    link_blobs(&store, "kept", &img).await;
    store
        .put_manifest("kept", &tag("v1"), "", &img.bytes)
        .await
        .unwrap();
    make_every_link_old(&store).await;
    let layer = &img.blobs[1].0;
    for repo in ["r", "kept"] {
        assert_eq!(store.stat_blob(repo, layer).await.unwrap(), img.blobs[1].1);
    }
    let created = |repo: &'static str| {
        sqlx::query_scalar::<_, i64>(
            "SELECT created_at FROM blob_links WHERE repo = $1 AND digest = $2",
        )
        .bind(repo)
        .bind(layer.to_string())
        .fetch_one(&store.pool)
    };
    assert!(created("r").await.unwrap() >= super::now() - 60);
    assert_eq!(created("kept").await.unwrap(), 0);
    let taken = store.collect(super::now() - 1, 100, false).await.unwrap();
    assert_eq!(
        taken
            .links
            .iter()
            .map(|l| (l.repo.as_str(), l.digest.clone()))
            .collect::<Vec<_>>(),
        [("r", img.blobs[0].0.to_string())]
    );
    assert_eq!(store.stat_blob("r", layer).await.unwrap(), img.blobs[1].1);
}

/// What search shows of a push is stored with it: an image's facts from
/// its manifest and config, an index's platforms from its children; a
/// manifest pushed without its config gets the rest when pushed again
/// with it.
async fn a_push_records_what_search_shows(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let (amd, arm) = (image("amd64"), image("arm64"));
    for img in [&amd, &arm] {
        link_blobs(&store, "r", img).await;
    }
    let config = |arch: &str, created: &str| {
        serde_json::to_vec(&serde_json::json!({
            "os": "linux", "architecture": arch, "created": created,
            "config": {"Labels": {"org.opencontainers.image.vendor": "Acme"}}
        }))
        .unwrap()
    };
    let push = |img: &crate::testutil::Image, config: Option<Vec<u8>>| {
        let (store, bytes) = (&store, img.bytes.clone());
        let digest = img.digest.clone();
        async move {
            let push = Push {
                config: config.as_deref(),
                ..Push::default()
            };
            store
                .put_manifest_sparse("r", &by_digest(&digest), push, "", &bytes, false)
                .await
                .unwrap();
        }
    };
    type Row = (Option<String>, Option<String>, Option<i64>);
    let row = |digest: String| {
        let store = &store;
        async move {
            sqlx::query_as::<_, Row>(
                "SELECT facts, platforms, made_at FROM manifests WHERE repo = 'r' AND digest = $1",
            )
            .bind(digest)
            .fetch_one(&store.pool)
            .await
            .unwrap()
        }
    };
    push(&amd, Some(config("amd64", "2026-01-01T00:00:00Z"))).await;
    let (facts, platforms, made_at) = row(amd.digest.to_string()).await;
    let facts: crate::facts::Facts = serde_json::from_str(&facts.unwrap()).unwrap();
    assert_eq!((facts.os.as_str(), facts.arch.as_str()), ("linux", "amd64"));
    assert_eq!(facts.vendor, "Acme");
    assert_eq!(facts.config_digest, amd.blobs[0].0.to_string());
    assert_eq!(platforms.as_deref(), Some("linux/amd64"));
    assert_eq!(made_at, Some(1_767_225_600));

    // Without its config: the manifest's facts only, then the rest.
    push(&arm, None).await;
    let (facts, platforms, _) = row(arm.digest.to_string()).await;
    let facts: crate::facts::Facts = serde_json::from_str(&facts.unwrap()).unwrap();
    assert_eq!((facts.os.as_str(), platforms), ("", None));
    push(&arm, Some(config("arm64", "2026-02-01T00:00:00Z"))).await;
    let (facts, platforms, made_at) = row(arm.digest.to_string()).await;
    let facts: crate::facts::Facts = serde_json::from_str(&facts.unwrap()).unwrap();
    assert_eq!(facts.arch, "arm64");
    assert_eq!(platforms.as_deref(), Some("linux/arm64"));
    assert_eq!(made_at, Some(1_769_904_000));
    // Once complete, they stay: a third push changes nothing.
    push(&arm, Some(config("riscv64", "2026-03-01T00:00:00Z"))).await;
    assert_eq!(
        row(arm.digest.to_string()).await.1.as_deref(),
        Some("linux/arm64")
    );

    let idx = index(&[&amd, &arm]);
    let out = store
        .put_manifest("r", &tag("multi"), media::OCI_INDEX, &idx)
        .await
        .unwrap();
    let (facts, platforms, made_at) = row(out.digest.to_string()).await;
    assert_eq!(facts, None);
    assert_eq!(platforms.as_deref(), Some("linux/amd64,linux/arm64"));
    // The newest child's time.
    assert_eq!(made_at, Some(1_769_904_000));
}

/// The reads search is built on choose tagged images by repository, tag
/// prefix, tag text and digest text (an index by its children's digests
/// too), see signatures, add up pulls and stars, and show one manifest and
/// an index's children; stars and bookmarks toggle per user.
async fn search_reads_choose_images_and_add_up_figures(backend: Backend) {
    use crate::store::search::{Mark, Select};
    let (_db, store) = temp_store_on(backend).await;
    let (amd, arm, cli) = (image("amd64"), image("arm64"), image("cli"));
    for img in [&amd, &arm] {
        link_blobs(&store, "app/web", img).await;
        store
            .put_manifest("app/web", &by_digest(&img.digest), "", &img.bytes)
            .await
            .unwrap();
    }
    store
        .put_manifest("app/web", &tag("v1"), "", &amd.bytes)
        .await
        .unwrap();
    let idx = index(&[&amd, &arm]);
    let multi = store
        .put_manifest("app/web", &tag("v1.1"), media::OCI_INDEX, &idx)
        .await
        .unwrap()
        .digest
        .to_string();
    link_blobs(&store, "tools/cli", &cli).await;
    store
        .put_manifest("tools/cli", &tag("stable"), "", &cli.bytes)
        .await
        .unwrap();
    let sig = image_with("sig", |v| {
        v["artifactType"] = json!("application/vnd.dev.cosign.artifact.sig.v1+json");
        v["subject"] = descriptor(&cli);
    });
    link_blobs(&store, "tools/cli", &sig).await;
    store
        .put_manifest("tools/cli", &by_digest(&sig.digest), "", &sig.bytes)
        .await
        .unwrap();
    store
        .record_pulls(&[("app/web".into(), amd.digest.to_string(), 3, 1_000)])
        .await
        .unwrap();

    async fn chosen(store: &Store, select: Select<'_>) -> Vec<(String, String, bool)> {
        let mut v: Vec<(String, String, bool)> = store
            .tagged(select)
            .await
            .unwrap()
            .into_iter()
            .map(|t| (t.repo, t.tag, t.signed))
            .collect();
        v.sort();
        v
    }
    let row = |r: &str, t: &str, signed| (r.to_string(), t.to_string(), signed);
    let web_v1 = row("app/web", "v1", false);
    let web_v11 = row("app/web", "v1.1", false);
    let cli_stable = row("tools/cli", "stable", true);
    assert_eq!(
        chosen(&store, Select::All).await,
        [web_v1.clone(), web_v11.clone(), cli_stable.clone()]
    );
    assert_eq!(
        chosen(&store, Select::Repo("app/web")).await,
        [web_v1.clone(), web_v11.clone()]
    );
    assert_eq!(chosen(&store, Select::Repo("app")).await, []);
    assert_eq!(
        chosen(
            &store,
            Select::TagPrefix {
                repo: "app/web",
                prefix: "v1."
            }
        )
        .await,
        std::slice::from_ref(&web_v11)
    );
    assert_eq!(
        chosen(&store, Select::TagContains("tab")).await,
        std::slice::from_ref(&cli_stable)
    );
    // Case-sensitive, on both backends.
    assert_eq!(chosen(&store, Select::TagContains("TAB")).await, []);
    // A layer of the arm64 image: only the index holds it, as a child.
    let arm_layer = arm.blobs[1].0.to_string();
    assert_eq!(
        chosen(&store, Select::Digest(&arm_layer[..20])).await,
        std::slice::from_ref(&web_v11)
    );
    // The amd64 manifest: tagged itself, and a child of the index.
    let amd_digest = amd.digest.to_string();
    assert_eq!(
        chosen(&store, Select::Digest(&amd_digest[7..30])).await,
        [web_v1.clone(), web_v11.clone()]
    );

    let tagged = store.tagged(Select::Repo("app/web")).await.unwrap();
    let v1 = tagged.iter().find(|t| t.tag == "v1").unwrap();
    assert_eq!((v1.downloads, v1.pulled_at), (3, Some(1_000)));
    assert_eq!(v1.digest, amd_digest);

    // Stars and bookmarks.
    assert!(
        store
            .toggle_mark("alice", Mark::Star, "app/web")
            .await
            .unwrap()
    );
    assert!(
        !store
            .toggle_mark("alice", Mark::Star, "app/web")
            .await
            .unwrap()
    );
    assert!(
        store
            .toggle_mark("alice", Mark::Star, "app/web")
            .await
            .unwrap()
    );
    assert!(
        store
            .toggle_mark("bob", Mark::Star, "app/web")
            .await
            .unwrap()
    );
    assert!(
        store
            .toggle_mark("alice", Mark::Bookmark, "tools/cli")
            .await
            .unwrap()
    );
    assert_eq!(
        code(store.toggle_mark("alice", Mark::Star, "absent").await),
        ErrorCode::NameUnknown
    );
    assert_eq!(
        store.marked("alice", Mark::Star).await.unwrap(),
        ["app/web"]
    );
    assert_eq!(
        store.marked("alice", Mark::Bookmark).await.unwrap(),
        ["tools/cli"]
    );
    assert!(store.marked("carol", Mark::Star).await.unwrap().is_empty());

    let mut figures = store.repo_figures().await.unwrap();
    figures.sort_by(|a, b| a.name.cmp(&b.name));
    let summary: Vec<(&str, u64, u64)> = figures
        .iter()
        .map(|f| (f.name.as_str(), f.downloads, f.stars))
        .collect();
    assert_eq!(summary, [("app/web", 3, 2), ("tools/cli", 0, 0)]);

    let shown = store.shown("app/web", &multi).await.unwrap().unwrap();
    assert_eq!(shown.media_type, media::OCI_INDEX);
    assert_eq!(shown.facts, None);
    let mut children: Vec<String> = store
        .shown_children("app/web", &multi)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.digest)
        .collect();
    children.sort();
    let mut want = vec![amd_digest.clone(), arm.digest.to_string()];
    want.sort();
    assert_eq!(children, want);
    let cli_shown = store
        .shown("tools/cli", &cli.digest.to_string())
        .await
        .unwrap()
        .unwrap();
    assert!(cli_shown.signed);
    assert!(cli_shown.facts.is_some());
    assert_eq!(store.shown("tools/cli", &multi).await.unwrap(), None);
}

/// A push's tag rule is applied in its transaction: a caller who may only
/// create cannot move a tag, one who may only update cannot set a new one,
/// and a refused push stores nothing.
async fn the_tag_rule_is_decided_in_the_push(backend: Backend) {
    let (_db, store) = temp_store_on(backend).await;
    let (first, second) = (image("first"), image("second"));
    for img in [&first, &second] {
        link_blobs(&store, "r", img).await;
    }
    let put = |img: &crate::testutil::Image, reference: Reference, rule: TagRule| {
        let (store, bytes) = (&store, img.bytes.clone());
        async move {
            let push = Push {
                tags: &[],
                rule,
                config: None,
            };
            store
                .put_manifest_sparse("r", &reference, push, "", &bytes, false)
                .await
        }
    };
    // Update only: no tag exists yet, so nothing may be set.
    let e = put(&first, tag("v1"), TagRule::ExistingOnly).await;
    assert_eq!(code(e), ErrorCode::Denied);
    // Create only: a new tag is fine, moving it is not.
    put(&first, tag("v1"), TagRule::NewOnly).await.unwrap();
    let e = put(&second, tag("v1"), TagRule::NewOnly).await;
    assert_eq!(code(e), ErrorCode::Denied);
    let manifests = "SELECT COUNT(*) FROM manifests WHERE repo = $1";
    assert_eq!(
        count(&store, manifests, "r").await,
        1,
        "the refused push stored nothing"
    );
    let v1 = store.get_manifest("r", &tag("v1"), true).await.unwrap();
    assert_eq!(v1.digest, first.digest.to_string());
    // Update only, on the tag that exists: moved.
    put(&second, tag("v1"), TagRule::ExistingOnly)
        .await
        .unwrap();
    let v1 = store.get_manifest("r", &tag("v1"), true).await.unwrap();
    assert_eq!(v1.digest, second.digest.to_string());
    // A push by digest that sets no tag follows no tag rule.
    put(&first, by_digest(&first.digest), TagRule::ExistingOnly)
        .await
        .unwrap();
}

/// Each test above runs once on SQLite and once on a Postgres of its own.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await
                }
            )*
        }
    };
}

/// `storage.subPaths` entries with their own `gcDelay` or `gc: false`:
/// each repository's link is collected on its store's schedule, and a
/// store that does not collect keeps its links.
async fn each_store_collects_links_on_its_own_delay(backend: Backend) {
    let storage = capstan_runtime::config::Config::from_value(
        json!({"storage": {"rootDirectory": "/srv/top", "gcDelay": "100s", "subPaths": {
            "/slow": {"rootDirectory": "/srv/slow", "gcDelay": "1000s"},
            "/frozen": {"rootDirectory": "/srv/frozen", "gc": false}}}}),
        Vec::new(),
    )
    .unwrap()
    .config
    .storage;
    let (_db, store) = temp_store_on(backend).await;
    let store = store.with_gc_scopes(GcScopes::new(&storage));
    let blob = sha256(b"orphan");
    for repo in ["app", "slow/app", "frozen/app"] {
        store.link_blob(repo, &blob, 6).await.unwrap();
    }
    let repos =
        |c: &Collection| -> Vec<String> { c.links.iter().map(|l| l.repo.clone()).collect() };
    let at = super::now();
    // 200 s on (the top level's cutoff is 100 s back from then): only the
    // top level's link is old enough.
    let planned = store.collect(at + 100, 100, true).await.unwrap();
    assert_eq!(repos(&planned), ["app"]);
    assert_eq!(store.collect(at + 100, 100, false).await.unwrap(), planned);
    // 1,100 s on: the slow store's too.
    let done = store.collect(at + 1000, 100, false).await.unwrap();
    assert_eq!(repos(&done), ["slow/app"]);
    // Much later: the frozen store's link leaves the queue and stays.
    let done = store.collect(at + 100_000, 100, false).await.unwrap();
    assert!(done.links.is_empty(), "{done:?}");
    assert_eq!(store.stat_blob("frozen/app", &blob).await.unwrap(), 6);
    assert_eq!(
        store.collect(at + 100_000, 100, false).await.unwrap(),
        Collection::default()
    );
}

on_every_backend!(
    each_store_collects_links_on_its_own_delay,
    put_then_get_and_head_by_tag_and_digest,
    pushing_by_digest_stores_without_a_tag_and_is_idempotent,
    a_push_by_digest_sets_its_tags_together_or_none,
    the_tag_rule_is_decided_in_the_push,
    a_push_records_what_search_shows,
    search_reads_choose_images_and_add_up_figures,
    retagging_moves_the_tag,
    delete_by_tag_keeps_the_manifest,
    delete_by_digest_removes_manifest_tags_and_references,
    manifest_with_an_unlinked_blob_is_rejected_with_the_digest,
    index_needs_its_children_in_the_repository,
    digest_reference_must_match_the_content,
    bad_input_gets_the_right_code,
    tags_are_paginated_in_byte_order,
    catalog_is_paginated,
    referrers_with_and_without_artifact_type_filter,
    link_stat_unlink_and_mount,
    concurrent_pushes_to_one_tag_leave_one_consistent_winner,
    concurrent_links_all_land_through_group_commit,
    collection_takes_only_unreferenced_old_links,
    a_blob_lookup_renews_an_old_unreferenced_link,
    a_blob_unlinked_under_a_manifest_is_collected_after_it,
    pulls_add_up_per_manifest,
    a_lost_blob_is_unlinked_everywhere,
);

/// The next change `rx` hears, within a generous limit.
async fn next_change(rx: &mut tokio::sync::broadcast::Receiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("a change within a minute")
        .expect("an open feed")
}

/// Two svc-meta replicas on one Postgres: each sees the other's writes at
/// once, hears of them on its change feed, and concurrent tag moves from
/// both leave one consistent winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_one_postgres() {
    let (_pg, url) = crate::testutil::postgres_db().await;
    let a = Store::open(&url).await.unwrap();
    let b = Store::open(&url).await.unwrap();
    let mut heard_by_b = b.subscribe();
    let mut heard_by_a = a.subscribe();
    let img = image("replicated");
    link_blobs(&a, "shared", &img).await;
    // A link is visible to the other replica (no feed needed: no cache).
    assert_eq!(
        b.stat_blob("shared", &img.blobs[0].0).await.unwrap(),
        img.blobs[0].1
    );
    a.put_manifest("shared", &tag("v1"), "", &img.bytes)
        .await
        .unwrap();
    assert_eq!(next_change(&mut heard_by_b).await, "shared");
    assert_eq!(next_change(&mut heard_by_a).await, "shared");
    let got = b.get_manifest("shared", &tag("v1"), false).await.unwrap();
    assert_eq!(got.digest, img.digest.to_string());

    // Tag moves from both replicas at once: one winner, every manifest
    // stored, and the feed reports each commit.
    let images: Vec<_> = (0..16).map(|i| image(&format!("mover-{i}"))).collect();
    for img in &images {
        link_blobs(&a, "shared", img).await;
    }
    let tasks: Vec<_> = images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let bytes = img.bytes.clone();
            tokio::spawn(async move {
                store
                    .put_manifest_sparse(
                        "shared",
                        &Reference::Tag("latest".into()),
                        Push::any(&["stable".to_string(), format!("t{i}")]),
                        "",
                        &bytes,
                        false,
                    )
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for _ in 0..16 {
        assert_eq!(next_change(&mut heard_by_b).await, "shared");
    }
    let latest = a
        .get_manifest("shared", &tag("latest"), true)
        .await
        .unwrap();
    let stable = b
        .get_manifest("shared", &tag("stable"), true)
        .await
        .unwrap();
    assert_eq!(latest.digest, stable.digest, "both tags moved together");
    let tags = b.list_tags("shared", None, "").await.unwrap();
    assert_eq!(tags.items.len(), 16 + 3, "{:?}", tags.items);

    // A delete on one replica is seen and heard on the other.
    b.delete_manifest("shared", &tag("v1"), false)
        .await
        .unwrap();
    assert_eq!(next_change(&mut heard_by_a).await, "shared");
    assert_eq!(
        code(a.get_manifest("shared", &tag("v1"), true).await),
        ErrorCode::ManifestUnknown
    );
}

/// A replica whose listening connection is cut tells its subscribers to
/// drop everything, then hears changes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_change_feed_says_so_and_comes_back() {
    let (_pg, url) = crate::testutil::postgres_db().await;
    let a = Store::open(&url).await.unwrap();
    let b = Store::open(&url).await.unwrap();
    let mut heard = b.subscribe();
    let cut: Vec<i32> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid)::int FROM pg_stat_activity \
         WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()",
    )
    .fetch_all(&a.pool)
    .await
    .unwrap();
    assert_eq!(cut.len(), 2, "each replica listens on one connection");
    assert_eq!(next_change(&mut heard).await, "", "told to drop everything");
    // Changes committed after the listener is back are heard. The listener
    // reconnects on its own; keep writing until a change comes through.
    let img = image("after the cut");
    link_blobs(&a, "back", &img).await;
    let limit = std::time::Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    loop {
        n += 1;
        a.put_manifest("back", &tag(&format!("t{n}")), "", &img.bytes)
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_millis(500), heard.recv()).await;
        if let Ok(Ok(repo)) = got
            && repo == "back"
        {
            break;
        }
        assert!(
            std::time::Instant::now() < limit,
            "the feed never came back"
        );
    }
}

/// A replica whose listener cannot reconnect for a while (the database
/// refuses new connections) tells its subscribers to drop everything once
/// it listens again — after the changes it missed, not before them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_down_for_a_while_says_so_when_it_is_back() {
    let (pg, url) = crate::testutil::postgres_db().await;
    let admin = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let a = Store::open(&url).await.unwrap();
    let b = Store::open(&url).await.unwrap();
    let mut heard = b.subscribe();
    let img = image("missed");
    link_blobs(&a, "missed", &img).await;
    sqlx::query("ALTER DATABASE meta ALLOW_CONNECTIONS false")
        .execute(&admin)
        .await
        .unwrap();
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = 'meta' AND query LIKE 'LISTEN %'",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(cut.len(), 2, "each replica listens on one connection");
    // A commits on a connection it already had; B cannot hear it.
    a.put_manifest("missed", &tag("x"), "", &img.bytes)
        .await
        .unwrap();
    while let Ok(stale) = heard.try_recv() {
        assert_ne!(stale, "missed", "B's listener was cut before the change");
    }
    sqlx::query("ALTER DATABASE meta ALLOW_CONNECTIONS true")
        .execute(&admin)
        .await
        .unwrap();
    assert_eq!(
        next_change(&mut heard).await,
        "",
        "told to drop everything once listening again"
    );
    // And it hears the next change.
    a.put_manifest("missed", &tag("y"), "", &img.bytes)
        .await
        .unwrap();
    loop {
        match next_change(&mut heard).await.as_str() {
            "missed" => break,
            "" => {}
            other => panic!("unexpected change {other}"),
        }
    }
}
