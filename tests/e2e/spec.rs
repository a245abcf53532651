//! The distribution-spec v1.1 API over HTTP against a whole registry:
//! every endpoint, with the bad inputs the spec assigns 4xx codes to.

use crate::oci::*;
use crate::sandbox::Sandbox;
use serde_json::{Value, json};

#[tokio::test]
async fn base_endpoint_and_unknown_paths() {
    let sb = Sandbox::start().await;
    let r = sb.get("/v2/").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    let r = sb.get("/v2/a/nothing-here").await;
    assert_eq!(r.status(), 404);
    let r = sb.get("/v2/UPPER/tags/list").await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "NAME_INVALID");
    let r = sb.get("/v2/a/../b/tags/list").await;
    assert_ne!(r.status(), 200);
    let r = sb.post("/v2/a/manifests/x").await;
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn monolithic_upload_then_head_get_and_ranges() {
    let sb = Sandbox::start().await;
    let data = random_bytes(100_000);
    let d = sb.push_blob("lib/app", &data).await;

    let r = sb.head(&format!("/v2/lib/app/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "100000");
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());

    let r = sb.get(&format!("/v2/lib/app/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);

    let r = sb
        .client
        .get(sb.url(&format!("/v2/lib/app/blobs/{d}")))
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 10-19/100000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[10..20]);

    let r = sb
        .client
        .get(sb.url(&format!("/v2/lib/app/blobs/{d}")))
        .header("Range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[99_995..]);

    let r = sb
        .client
        .get(sb.url(&format!("/v2/lib/app/blobs/{d}")))
        .header("Range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */100000");

    // Not linked to another repository: invisible there.
    let r = sb.get(&format!("/v2/other/blobs/{d}")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");

    // Bad digests.
    let r = sb.get("/v2/lib/app/blobs/sha256:abc").await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let wrong = sha256(b"something else");
    let r = sb
        .client
        .post(sb.url(&format!("/v2/lib/app/blobs/uploads/?digest={wrong}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = sb.head(&format!("/v2/lib/app/blobs/{wrong}")).await;
    assert_eq!(r.status(), 404);

    // Delete unlinks it from the repository.
    let r = sb.delete(&format!("/v2/lib/app/blobs/{d}")).await;
    assert_eq!(r.status(), 202);
    let r = sb.head(&format!("/v2/lib/app/blobs/{d}")).await;
    assert_eq!(r.status(), 404);
    let r = sb.delete(&format!("/v2/lib/app/blobs/{d}")).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn empty_blob_and_sha512() {
    let sb = Sandbox::start().await;
    let d = sb.push_blob("r", b"").await;
    let r = sb.get(&format!("/v2/r/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 0);

    let data = random_bytes(70_000);
    let d512 = sha512(&data);
    let r = sb
        .client
        .post(sb.url(&format!("/v2/r/blobs/uploads/?digest={d512}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["docker-content-digest"], d512.as_str());
    let r = sb.get(&format!("/v2/r/blobs/{d512}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);
}

fn location(r: &reqwest::Response) -> String {
    r.headers()["location"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn post_put_and_chunked_uploads() {
    let sb = Sandbox::start().await;
    let data = random_bytes(3 * 1024 * 1024 + 17);
    let d = sha256(&data);

    // POST then PUT with the whole body.
    let r = sb.post("/v2/up/blobs/uploads/").await;
    assert_eq!(r.status(), 202);
    let loc = location(&r);
    assert!(r.headers().contains_key("docker-upload-uuid"));
    let r = sb
        .client
        .put(sb.url(&format!("{loc}?digest={d}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(location(&r), format!("/v2/up/blobs/{d}"));

    // Chunked: three PATCHes with Content-Range, status, then PUT.
    let r = sb.post("/v2/up/blobs/uploads/").await;
    let loc = location(&r);
    let cuts = [0, 1_000_000, 2_500_000, data.len()];
    for w in cuts.windows(2) {
        let r = sb
            .client
            .patch(sb.url(&loc))
            .header("Content-Type", "application/octet-stream")
            .header("Content-Range", format!("{}-{}", w[0], w[1] - 1))
            .body(data[w[0]..w[1]].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        assert_eq!(r.headers()["range"], format!("0-{}", w[1] - 1).as_str());
    }
    let r = sb.get(&loc).await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["range"],
        format!("0-{}", data.len() - 1).as_str()
    );

    // A repeated (out-of-order) chunk is refused with 416.
    let r = sb
        .client
        .patch(sb.url(&loc))
        .header("Content-Range", "0-9")
        .body(data[0..10].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);

    // Wrong digest on PUT: 400, nothing becomes visible.
    let wrong = sha256(b"nope");
    let r = sb
        .client
        .put(sb.url(&format!("{loc}?digest={wrong}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = sb.head(&format!("/v2/up/blobs/{wrong}")).await;
    assert_eq!(r.status(), 404);

    // A fresh chunked upload committed correctly.
    let r = sb.post("/v2/up/blobs/uploads/").await;
    let loc = location(&r);
    let r = sb
        .client
        .patch(sb.url(&loc))
        .header("Content-Range", format!("0-{}", 999))
        .body(data[..1000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = location(&r);
    let r = sb
        .client
        .put(sb.url(&format!("{loc}?digest={d}")))
        .header("Content-Range", format!("1000-{}", data.len() - 1))
        .body(data[1000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = sb.get(&format!("/v2/up/blobs/{d}")).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);

    // PUT without digest.
    let r = sb.post("/v2/up/blobs/uploads/").await;
    let loc = location(&r);
    let r = sb.client.put(sb.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");

    // Cancel, then the session is gone.
    let r = sb.delete(&loc).await;
    assert_eq!(r.status(), 204);
    let r = sb.get(&loc).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn unknown_and_malicious_upload_ids() {
    let sb = Sandbox::start().await;
    for id in [
        "00000000-0000-4000-8000-000000000000",
        "not-a-uuid",
        "..%2F..%2Fetc",
        "%2e%2e",
    ] {
        let r = sb.get(&format!("/v2/r/blobs/uploads/{id}")).await;
        assert!(
            r.status() == 404 || r.status() == 400,
            "{id}: {}",
            r.status()
        );
        let r = sb
            .client
            .patch(sb.url(&format!("/v2/r/blobs/uploads/{id}")))
            .body("x")
            .send()
            .await
            .unwrap();
        assert!(
            r.status() == 404 || r.status() == 400,
            "{id}: {}",
            r.status()
        );
    }
    let r = sb
        .get("/v2/r/blobs/uploads/00000000-0000-4000-8000-000000000000")
        .await;
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn cross_repository_mount() {
    let sb = Sandbox::start().await;
    let data = random_bytes(5000);
    let d = sb.push_blob("src/repo", &data).await;
    let r = sb
        .client
        .post(sb.url(&format!(
            "/v2/dst/repo/blobs/uploads/?mount={d}&from=src/repo"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(location(&r), format!("/v2/dst/repo/blobs/{d}"));
    let r = sb.get(&format!("/v2/dst/repo/blobs/{d}")).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);
    // Not in the source: a new upload session instead.
    let other = sha256(b"absent");
    let r = sb
        .client
        .post(sb.url(&format!(
            "/v2/dst/repo/blobs/uploads/?mount={other}&from=src/repo"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(location(&r).starts_with("/v2/dst/repo/blobs/uploads/"));
}

#[tokio::test]
async fn manifests_by_tag_and_digest() {
    let sb = Sandbox::start().await;
    let (d, m) = sb.push_image("img", "v1", 2).await;
    let body = serde_json::to_vec(&m).unwrap();

    for reference in ["v1", d.as_str()] {
        let r = sb.get(&format!("/v2/img/manifests/{reference}")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], OCI_MANIFEST);
        assert_eq!(r.headers()["docker-content-digest"], d.as_str());
        assert_eq!(r.bytes().await.unwrap().as_ref(), &body[..]);
        let r = sb.head(&format!("/v2/img/manifests/{reference}")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-length"],
            body.len().to_string().as_str()
        );
    }
    let r = sb.get("/v2/img/manifests/nope").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    // A reference no tag or digest can have (the conformance suite's
    // ".INVALID_MANIFEST_NAME") is not found when read, invalid when written.
    let r = sb.get("/v2/img/manifests/.INVALID_MANIFEST_NAME").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = sb.head("/v2/img/manifests/.INVALID_MANIFEST_NAME").await;
    assert_eq!(r.status(), 404);
    let r = sb
        .put_manifest_raw("img", ".INVALID_MANIFEST_NAME", OCI_MANIFEST, &body)
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "TAG_INVALID");

    // Push by digest.
    let r = sb.put_manifest_raw("img", &d, OCI_MANIFEST, &body).await;
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("oci-tag").is_none());
    // Push by digest with tags: set together, each echoed as OCI-Tag.
    let r = sb
        .put_manifest_raw(
            "img",
            &format!("{d}?tag=t1&tag=t2&tag=t1"),
            OCI_MANIFEST,
            &body,
        )
        .await;
    assert_eq!(r.status(), 201);
    let echoed: Vec<&str> = r
        .headers()
        .get_all("oci-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(echoed, ["t1", "t2"]);
    for t in ["t1", "t2"] {
        let r = sb.get(&format!("/v2/img/manifests/{t}")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    }
    // One bad tag sets none of them.
    let r = sb
        .put_manifest_raw("img", &format!("{d}?tag=t3&tag=-bad"), OCI_MANIFEST, &body)
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "TAG_INVALID");
    assert_eq!(sb.get("/v2/img/manifests/t3").await.status(), 404);
    // More tags than one request may carry.
    let many: String = (0..47).map(|i| format!("tag=m{i}&")).collect();
    let r = sb
        .put_manifest_raw("img", &format!("{d}?{many}"), OCI_MANIFEST, &body)
        .await;
    assert_eq!(r.status(), 414);
    assert_eq!(sb.get("/v2/img/manifests/m0").await.status(), 404);
    // Digest reference that does not match the body.
    let r = sb
        .put_manifest_raw("img", &sha256(b"x"), OCI_MANIFEST, &body)
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");

    // Delete the tag: the manifest stays reachable by digest.
    let r = sb.delete("/v2/img/manifests/v1").await;
    assert_eq!(r.status(), 202);
    let r = sb.get("/v2/img/manifests/v1").await;
    assert_eq!(r.status(), 404);
    let r = sb.get(&format!("/v2/img/manifests/{d}")).await;
    assert_eq!(r.status(), 200);
    // Delete by digest.
    let r = sb.delete(&format!("/v2/img/manifests/{d}")).await;
    assert_eq!(r.status(), 202);
    let r = sb.get(&format!("/v2/img/manifests/{d}")).await;
    assert_eq!(r.status(), 404);
    let r = sb.delete(&format!("/v2/img/manifests/{d}")).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn bad_manifests_are_refused_without_side_effects() {
    let sb = Sandbox::start().await;
    let cfg = sb.push_blob("bad", b"{}").await;
    let missing = sha256(b"never uploaded");
    let m = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": missing, "size": 5}]
    });
    let r = sb
        .put_manifest_raw("bad", "t", OCI_MANIFEST, &serde_json::to_vec(&m).unwrap())
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");

    let r = sb
        .put_manifest_raw("bad", "t", OCI_MANIFEST, b"{not json")
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");

    // mediaType in the body contradicting Content-Type.
    let m = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []});
    let r = sb
        .put_manifest_raw("bad", "t", OCI_MANIFEST, &serde_json::to_vec(&m).unwrap())
        .await;
    assert_eq!(r.status(), 400);

    // Over 4 MiB.
    let big = vec![b' '; 4 * 1024 * 1024 + 1];
    let r = sb.put_manifest_raw("bad", "t", OCI_MANIFEST, &big).await;
    assert_eq!(r.status(), 413);

    // Invalid tag.
    let m = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []});
    let r = sb
        .put_manifest_raw(
            "bad",
            "-bad-tag",
            OCI_INDEX,
            &serde_json::to_vec(&m).unwrap(),
        )
        .await;
    assert_eq!(r.status(), 400);

    // Index referencing an unknown manifest.
    let m = json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": missing, "size": 10}]});
    let r = sb
        .put_manifest_raw("bad", "t", OCI_INDEX, &serde_json::to_vec(&m).unwrap())
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");

    // Nothing got tagged.
    let r = sb.get("/v2/bad/manifests/t").await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn docker_schema2_manifest_list_and_oci_index() {
    let sb = Sandbox::start().await;
    let cfg = sb.push_blob("multi", br#"{"architecture":"arm64"}"#).await;
    let layer = random_bytes(300);
    let ld = sb.push_blob("multi", &layer).await;
    let m = json!({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cfg, "size": 24},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": ld, "size": 300}]
    });
    let md = sb.put_manifest("multi", "arm", DOCKER_MANIFEST, &m).await;
    let size = serde_json::to_vec(&m).unwrap().len();
    let list = json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "digest": md, "size": size, "platform": {"architecture": "arm64", "os": "linux"}}
    ]});
    sb.put_manifest("multi", "list", DOCKER_LIST, &list).await;
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "digest": md, "size": size, "platform": {"architecture": "arm64", "os": "linux"}}
    ]});
    sb.put_manifest("multi", "index", OCI_INDEX, &index).await;
    let r = sb.get("/v2/multi/manifests/list").await;
    assert_eq!(r.headers()["content-type"], DOCKER_LIST);
    let r = sb.get("/v2/multi/manifests/arm").await;
    assert_eq!(r.headers()["content-type"], DOCKER_MANIFEST);
}

#[tokio::test]
async fn tag_and_catalog_pagination() {
    let sb = Sandbox::start().await;
    let (_, m) = sb.push_image("pages", "a", 0).await;
    for t in ["b", "c", "d", "e"] {
        sb.put_manifest("pages", t, OCI_MANIFEST, &m).await;
    }
    let r = sb.get("/v2/pages/tags/list").await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"name": "pages", "tags": ["a", "b", "c", "d", "e"]})
    );

    let r = sb.get("/v2/pages/tags/list?n=2").await;
    assert_eq!(
        r.headers()["link"],
        "</v2/pages/tags/list?n=2&last=b>; rel=\"next\""
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(["a", "b"]));
    let r = sb.get("/v2/pages/tags/list?n=2&last=d").await;
    assert!(!r.headers().contains_key("link"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(["e"]));
    let r = sb.get("/v2/pages/tags/list?n=0").await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!([]));
    let r = sb.get("/v2/pages/tags/list?n=x").await;
    assert_eq!(r.status(), 400);
    let r = sb.get("/v2/missing/tags/list").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");

    for repo in ["x/one", "x/two", "y"] {
        sb.push_blob(repo, b"z").await;
    }
    let r = sb.get("/v2/_catalog").await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["repositories"], json!(["pages", "x/one", "x/two", "y"]));
    let r = sb.get("/v2/_catalog?n=2").await;
    assert_eq!(
        r.headers()["link"],
        "</v2/_catalog?n=2&last=x%2Fone>; rel=\"next\""
    );
    let r = sb.get("/v2/_catalog?n=2&last=x/one").await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["repositories"], json!(["x/two", "y"]));
}

#[tokio::test]
async fn referrers_api_with_subject_and_filter() {
    let sb = Sandbox::start().await;
    let (subject, m) = sb.push_image("app", "v1", 1).await;
    let subject_size = serde_json::to_vec(&m).unwrap().len();
    let empty = sb.push_blob("app", b"{}").await;
    let mut digests = Vec::new();
    for (atype, note) in [
        ("application/vnd.example.sig", "s1"),
        ("application/vnd.example.sbom", "b1"),
    ] {
        let art = json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": atype,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_size},
            "annotations": {"note": note}
        });
        let body = serde_json::to_vec(&art).unwrap();
        let r = sb
            .put_manifest_raw("app", &sha256(&body), OCI_MANIFEST, &body)
            .await;
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["oci-subject"], subject.as_str());
        digests.push(sha256(&body));
    }
    let r = sb.get(&format!("/v2/app/referrers/{subject}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], OCI_INDEX);
    assert!(!r.headers().contains_key("oci-filters-applied"));
    let v: Value = r.json().await.unwrap();
    let listed = manifest_digests(&v);
    assert_eq!(listed.len(), 2);
    for d in &digests {
        assert!(listed.contains(d));
    }
    let r = sb
        .client
        .get(sb.url(&format!(
            "/v2/app/referrers/{subject}?artifactType=application/vnd.example.sbom"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["oci-filters-applied"], "artifactType");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["digest"], digests[1].as_str());
    assert_eq!(
        v["manifests"][0]["artifactType"],
        "application/vnd.example.sbom"
    );
    assert_eq!(v["manifests"][0]["annotations"]["note"], "b1");

    // Unknown subject: an empty index, not an error.
    let r = sb.get(&format!("/v2/app/referrers/{}", sha256(b"q"))).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"], json!([]));
    let r = sb.get("/v2/app/referrers/sha256:zz").await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn concurrent_writers_to_one_tag_leave_one_winner() {
    let sb = std::sync::Arc::new(Sandbox::start().await);
    let cfg = sb.push_blob("race", b"{}").await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let sb = sb.clone();
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": 2},
                "layers": [], "annotations": {"i": i.to_string()}});
            sb.put_manifest("race", "latest", OCI_MANIFEST, &m).await
        }));
    }
    let mut pushed = Vec::new();
    for t in tasks {
        pushed.push(t.await.unwrap());
    }
    let r = sb.get("/v2/race/manifests/latest").await;
    assert_eq!(r.status(), 200);
    let winner = r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    let body = r.bytes().await.unwrap();
    assert_eq!(sha256(&body), winner);
    assert!(pushed.contains(&winner));
    let v: Value = sb.get("/v2/race/tags/list").await.json().await.unwrap();
    assert_eq!(v["tags"], json!(["latest"]));
}

#[tokio::test]
async fn acknowledged_writes_survive_a_crash() {
    let mut sb = Sandbox::start_with(json!({"storage": {"commit": true}})).await;
    let (d, m) = sb.push_image("durable", "v1", 2).await;
    // An upload in progress keeps its bytes too.
    let part = random_bytes(10_000);
    let r = sb.post("/v2/durable/blobs/uploads/").await;
    let loc = location(&r);
    let r = sb
        .client
        .patch(sb.url(&loc))
        .body(part.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = location(&r);

    sb.crash_and_restart().await;

    let r = sb.get("/v2/durable/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    for layer in m["layers"].as_array().unwrap() {
        let ld = layer["digest"].as_str().unwrap();
        let r = sb.get(&format!("/v2/durable/blobs/{ld}")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(sha256(&r.bytes().await.unwrap()), ld);
    }
    let r = sb.get(&loc).await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], "0-9999");
    let r = sb
        .client
        .put(sb.url(&format!("{loc}?digest={}", sha256(&part))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn a_client_that_disconnects_mid_chunk_leaves_no_partial_bytes() {
    use tokio::io::AsyncWriteExt;
    let sb = Sandbox::start().await;
    let r = sb.post("/v2/cut/blobs/uploads/").await;
    let loc = location(&r);
    let mut conn = tokio::net::TcpStream::connect(sb.host()).await.unwrap();
    let head = format!(
        "PATCH {loc} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: 3000000\r\n\r\n",
        sb.host()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&random_bytes(1_500_000)).await.unwrap();
    conn.flush().await.unwrap();
    drop(conn);
    // The interrupted chunk is not counted: the upload is still empty, and
    // stays usable.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = sb.get(&loc).await;
        assert_eq!(r.status(), 204);
        // The gateway may still be tearing the aborted call down; the state
        // must never show the partial bytes.
        assert_eq!(r.headers()["range"], "0-0");
        let data = random_bytes(1000);
        let r = sb
            .client
            .patch(sb.url(&loc))
            .header("Content-Range", "0-999")
            .body(data.clone())
            .send()
            .await
            .unwrap();
        if r.status() == 202 {
            let r = sb
                .client
                .put(sb.url(&format!("{loc}?digest={}", sha256(&data))))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            break;
        }
        // Only "being written by another request" is acceptable while the
        // aborted call unwinds.
        assert_eq!(r.status(), 400, "{}", r.text().await.unwrap());
        assert!(std::time::Instant::now() < deadline, "upload stayed locked");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn an_upload_belongs_to_the_repository_it_was_started_in() {
    let sb = Sandbox::start().await;
    let data = random_bytes(1000);
    let d = sha256(&data);
    let r = sb.post("/v2/mine/blobs/uploads/").await;
    let loc = location(&r);
    let id = loc.rsplit('/').next().unwrap().to_string();
    let other = format!("/v2/theirs/blobs/uploads/{id}");
    // Through another repository the upload does not exist.
    let r = sb.get(&other).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    let r = sb
        .client
        .patch(sb.url(&other))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = sb
        .client
        .put(sb.url(&format!("{other}?digest={d}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = sb.delete(&other).await;
    assert_eq!(r.status(), 404);
    let r = sb.head(&format!("/v2/theirs/blobs/{d}")).await;
    assert_eq!(r.status(), 404);
    // Its own repository completes it.
    let r = sb
        .client
        .put(sb.url(&format!("{loc}?digest={d}")))
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = sb.head(&format!("/v2/mine/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn metrics_count_requests_and_manifest_traffic() {
    let sb = Sandbox::start().await;
    sb.push_image("observed", "v1", 1).await;
    let value = |text: &str, series: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let gets = r#"zot_http_requests_total{code="200",method="GET"}"#;
    let before = sb.get("/metrics").await.text().await.unwrap();
    for _ in 0..3 {
        let r = sb.get("/v2/observed/manifests/v1").await;
        assert_eq!(r.status(), 200);
    }
    let text = sb.get("/metrics").await.text().await.unwrap();
    // Three manifest GETs plus the first /metrics read.
    assert_eq!(value(&text, gets) - value(&before, gets), 4, "{text}");
    assert_eq!(
        value(&text, r#"zot_repo_downloads_total{repo="observed"}"#),
        3,
        "{text}"
    );
    assert_eq!(
        value(&text, r#"zot_repo_uploads_total{repo="observed"}"#),
        1,
        "{text}"
    );
    assert_eq!(
        value(&text, r#"zot_http_requests_total{code="201",method="PUT"}"#),
        1,
        "{text}"
    );

    // svc-blob's counters. A pushed blob (larger than what is written
    // through the page cache anyway) is read into the page cache after its
    // commit, so even its first read is served from there.
    let sum = |text: &str, prefix: &str, label: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(prefix) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let reads = |text: &str, path: &str| {
        sum(
            text,
            "capstan_blob_reads_total{",
            &format!("path=\"{path}\""),
        )
    };
    let blob = vec![7u8; 100_000];
    let d = sb.push_blob("observed", &blob).await;
    let mut text = String::new();
    for _ in 0..500 {
        text = sb.get("/metrics").await.text().await.unwrap();
        if sum(&text, "capstan_blob_warmed_total{", "") >= 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(sum(&text, "capstan_blob_warmed_total{", ""), 1, "{text}");
    assert_eq!(
        sum(&text, "capstan_blob_warm_skipped_total{", ""),
        0,
        "{text}"
    );
    for gauge in [
        "capstan_blob_warm_failed_total{",
        "capstan_blob_warm_pending{",
    ] {
        assert_eq!(sum(&text, gauge, ""), 0, "{text}");
    }
    let before = (reads(&text, "direct"), reads(&text, "cached"));
    for _ in 0..2 {
        let r = sb.get(&format!("/v2/observed/blobs/{d}")).await;
        assert_eq!(r.bytes().await.unwrap().as_ref(), &blob[..]);
    }
    let text = sb.get("/metrics").await.text().await.unwrap();
    assert_eq!(reads(&text, "direct"), before.0, "{text}");
    assert_eq!(reads(&text, "cached"), before.1 + 2, "{text}");
}
