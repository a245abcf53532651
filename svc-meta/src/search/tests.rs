//! The GraphQL queries over a seeded store, answer by answer: three
//! repositories, one of which the caller may not read; an image, a
//! two-platform index, a signed image, a base image and one built on it.

use super::*;
use crate::store::Push;
use crate::testutil::{Image, link_blobs, sha256, temp_store};
use capstan_oci::access::{Actions, Rules};
use capstan_oci::{Reference, media};
use serde_json::{Value, json};

/// An image whose config is real JSON (`config`), with one layer per entry
/// of `layers`.
fn image(config: Value, layers: &[&str], annotations: Value) -> (Image, Vec<u8>) {
    let config = serde_json::to_vec(&config).unwrap();
    let mut blobs = vec![(sha256(&config), config.len() as u64)];
    for l in layers {
        blobs.push((sha256(l.as_bytes()), l.len() as u64));
    }
    let layers: Vec<Value> = blobs[1..]
        .iter()
        .map(|(d, s)| {
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                   "digest": d.to_string(), "size": s})
        })
        .collect();
    let v = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": blobs[0].0.to_string(), "size": blobs[0].1},
        "layers": layers,
        "annotations": annotations,
    });
    let bytes = serde_json::to_vec(&v).unwrap();
    (
        Image {
            digest: sha256(&bytes),
            bytes,
            blobs,
        },
        config,
    )
}

fn config(os: &str, arch: &str, variant: &str, created: &str) -> Value {
    json!({"os": os, "architecture": arch, "variant": variant, "created": created,
           "config": {"Labels": {"org.opencontainers.image.vendor": "Acme"}},
           "history": [{"created": created, "created_by": "ADD rootfs"}]})
}

async fn push(store: &Store, repo: &str, reference: &str, img: &Image, config: &[u8]) {
    link_blobs(store, repo, img).await;
    let reference = Reference::parse(reference).unwrap();
    let push = Push {
        config: Some(config),
        ..Push::default()
    };
    store
        .put_manifest_sparse(repo, &reference, push, "", &img.bytes, false)
        .await
        .unwrap();
}

struct Seeded {
    _dir: tempfile::TempDir,
    store: Store,
    schema: SearchSchema,
    amd: Image,
    arm: Image,
    cli: Image,
    index: String,
}

async fn seeded() -> Seeded {
    let (dir, store) = temp_store().await;
    let (amd, amd_cfg) = image(
        config("linux", "amd64", "", "2026-01-01T00:00:00Z"),
        &["base layer", "web layer"],
        json!({"org.opencontainers.image.title": "Web"}),
    );
    let (arm, arm_cfg) = image(
        config("linux", "arm64", "v8", "2026-02-01T00:00:00Z"),
        &["arm layer"],
        json!({}),
    );
    push(&store, "app/web", &amd.digest.to_string(), &amd, &amd_cfg).await;
    push(&store, "app/web", &arm.digest.to_string(), &arm, &arm_cfg).await;
    push(&store, "app/web", "v1", &amd, &amd_cfg).await;
    let children: Vec<Value> = [&amd, &arm]
        .iter()
        .map(|i| {
            json!({"mediaType": media::OCI_MANIFEST, "digest": i.digest.to_string(),
                   "size": i.bytes.len()})
        })
        .collect();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": children,
        "annotations": {"org.opencontainers.image.description": "multi-arch web"},
    }))
    .unwrap();
    let index_digest = store
        .put_manifest(
            "app/web",
            &Reference::parse("v1.1").unwrap(),
            media::OCI_INDEX,
            &index,
        )
        .await
        .unwrap()
        .digest
        .to_string();

    let (base, base_cfg) = image(
        config("linux", "amd64", "", "2025-01-01T00:00:00Z"),
        &["base layer"],
        json!({}),
    );
    push(&store, "tools/base", "1", &base, &base_cfg).await;
    let (cli, cli_cfg) = image(
        config("linux", "amd64", "", "2025-06-01T00:00:00Z"),
        &["cli layer"],
        json!({}),
    );
    push(&store, "tools/cli", "stable", &cli, &cli_cfg).await;
    let (sig, sig_cfg) = image(json!({}), &["signature"], json!({}));
    let mut sig_json: Value = serde_json::from_slice(&sig.bytes).unwrap();
    sig_json["artifactType"] = json!("application/vnd.dev.cosign.artifact.sig.v1+json");
    sig_json["subject"] = json!({"mediaType": media::OCI_MANIFEST,
        "digest": cli.digest.to_string(), "size": cli.bytes.len()});
    let sig_bytes = serde_json::to_vec(&sig_json).unwrap();
    let sig = Image {
        digest: sha256(&sig_bytes),
        bytes: sig_bytes,
        blobs: sig.blobs,
    };
    push(&store, "tools/cli", &sig.digest.to_string(), &sig, &sig_cfg).await;
    store
        .record_pulls(&[("tools/cli".into(), cli.digest.to_string(), 5, 1_000)])
        .await
        .unwrap();

    let (db, db_cfg) = image(
        config("linux", "amd64", "", "2026-03-01T00:00:00Z"),
        &["web layer"],
        json!({}),
    );
    push(&store, "secret/db", "v9", &db, &db_cfg).await;
    Seeded {
        _dir: dir,
        schema: schema(store.clone()),
        store,
        amd,
        arm,
        cli,
        index: index_digest,
    }
}

/// alice, who may read `app/**` and `tools/**` and delete in `app/**`.
fn alice() -> Caller {
    let read = Actions::parse(&["read"]).unwrap();
    let delete = Actions::parse(&["read", "delete"]).unwrap();
    Caller {
        username: "alice".into(),
        access: Rules::new([("app/**", delete), ("tools/**", read)], Actions::NONE)
            .unwrap()
            .within(&[]),
    }
}

async fn run(s: &Seeded, caller: Caller, query: &str) -> Value {
    let out = execute(&s.schema, query, "", "", caller).await;
    serde_json::from_slice(&out).unwrap()
}

/// `data` of a query that must succeed.
async fn data(s: &Seeded, query: &str) -> Value {
    let v = run(s, alice(), query).await;
    assert!(v.get("errors").is_none(), "{query}: {v}");
    v["data"].clone()
}

/// The error message of a query that must fail.
async fn error(s: &Seeded, query: &str) -> String {
    let v = run(s, alice(), query).await;
    v["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `repo:tag` of each image of a list.
fn images(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}:{}",
                i["RepoName"].as_str().unwrap(),
                i["Tag"].as_str().unwrap()
            )
        })
        .collect()
}

fn names(v: &Value, field: &str) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x[field].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn global_search_finds_repositories_by_name_with_their_summaries() {
    let s = seeded().await;
    assert!(
        s.store
            .toggle_mark("alice", crate::store::search::Mark::Star, "app/web")
            .await
            .unwrap()
    );
    let d = data(
        &s,
        r#"{ GlobalSearch(query: "web") { Page { TotalCount ItemCount }
              Images { Tag } Layers { Digest }
              Repos { Name Rank LastUpdated Size DownloadCount StarCount IsStarred IsBookmarked
                      Vendors Platforms { Os Arch } NewestImage { Tag Digest } } } }"#,
    )
    .await;
    let g = &d["GlobalSearch"];
    assert_eq!(g["Page"], json!({"TotalCount": 1, "ItemCount": 1}));
    assert_eq!(g["Images"], json!([]));
    assert_eq!(g["Layers"], json!([]));
    let web = &g["Repos"][0];
    assert_eq!(web["Name"], "app/web");
    assert_eq!(web["Rank"], 1);
    assert_eq!(web["LastUpdated"], "2026-02-01T00:00:00Z");
    assert_eq!(web["DownloadCount"], 0);
    assert_eq!(
        (web["StarCount"].clone(), web["IsStarred"].clone()),
        (json!(1), json!(true))
    );
    assert_eq!(web["IsBookmarked"], false);
    assert_eq!(web["Vendors"], json!(["Acme"]));
    assert_eq!(
        web["Platforms"],
        json!([{"Os": "linux", "Arch": "amd64"}, {"Os": "linux", "Arch": "arm64/v8"}])
    );
    // The index is the newest image: its newest child was made last.
    assert_eq!(web["NewestImage"]["Tag"], "v1.1");
    assert_eq!(web["NewestImage"]["Digest"], s.index.as_str());
    // Manifests, configs and layers, each counted once.
    let mut sizes = std::collections::HashMap::new();
    for img in [&s.amd, &s.arm] {
        sizes.insert(img.digest.to_string(), img.bytes.len() as u64);
        for (d, n) in &img.blobs {
            sizes.insert(d.to_string(), *n);
        }
    }
    let index_size = s
        .store
        .shown("app/web", &s.index)
        .await
        .unwrap()
        .unwrap()
        .size;
    let want: u64 = sizes.values().sum::<u64>() + index_size;
    assert_eq!(web["Size"], want.to_string());

    // The empty query lists every readable repository, by relevance then
    // name; the unreadable one never.
    let d = data(&s, r#"{ GlobalSearch(query: "") { Repos { Name Rank } } }"#).await;
    assert_eq!(
        names(&d["GlobalSearch"]["Repos"], "Name"),
        ["app/web", "tools/base", "tools/cli"]
    );
    let d = data(
        &s,
        r#"{ GlobalSearch(query: "db") { Page { TotalCount } Repos { Name } } }"#,
    )
    .await;
    assert_eq!(d["GlobalSearch"]["Page"]["TotalCount"], 0);
}

#[tokio::test]
async fn an_image_and_an_index_are_summarised_field_by_field() {
    let s = seeded().await;
    let d = data(
        &s,
        r#"{ ImageList(repo: "app/web", requestedPage: {sortBy: ALPHABETIC_ASC}) {
              Page { TotalCount ItemCount }
              Results { RepoName Tag Digest MediaType Size LastUpdated Title Vendor Description
                        IsSigned DownloadCount Vulnerabilities { MaxSeverity Count }
                        Manifests { Digest ConfigDigest Size Platform { Os Arch }
                                    Layers { Digest Size } History { Layer { Digest }
                                    HistoryDescription { Created CreatedBy EmptyLayer } } } } } }"#,
    )
    .await;
    let list = &d["ImageList"];
    assert_eq!(list["Page"], json!({"TotalCount": 2, "ItemCount": 2}));
    let v1 = &list["Results"][0];
    assert_eq!(v1["Tag"], "v1");
    assert_eq!(v1["RepoName"], "app/web");
    assert_eq!(v1["Digest"], s.amd.digest.to_string());
    assert_eq!(v1["MediaType"], media::OCI_MANIFEST);
    assert_eq!(v1["Title"], "Web");
    assert_eq!(v1["Vendor"], "Acme");
    assert_eq!(v1["LastUpdated"], "2026-01-01T00:00:00Z");
    assert_eq!(v1["IsSigned"], false);
    assert_eq!(
        v1["Vulnerabilities"],
        json!({"MaxSeverity": "", "Count": 0})
    );
    let amd_size = s.amd.bytes.len() as u64 + s.amd.blobs.iter().map(|(_, n)| n).sum::<u64>();
    assert_eq!(v1["Size"], amd_size.to_string());
    let m = &v1["Manifests"][0];
    assert_eq!(m["ConfigDigest"], s.amd.blobs[0].0.to_string());
    assert_eq!(m["Platform"], json!({"Os": "linux", "Arch": "amd64"}));
    assert_eq!(
        names(&m["Layers"], "Digest"),
        [s.amd.blobs[1].0.to_string(), s.amd.blobs[2].0.to_string()]
    );
    assert_eq!(m["Layers"][0]["Size"], "10");
    assert_eq!(
        m["History"][0],
        json!({"Layer": {"Digest": s.amd.blobs[1].0.to_string()},
               "HistoryDescription": {"Created": "2026-01-01T00:00:00Z",
                                      "CreatedBy": "ADD rootfs", "EmptyLayer": false}})
    );

    let v11 = &list["Results"][1];
    assert_eq!(v11["Tag"], "v1.1");
    assert_eq!(v11["MediaType"], media::OCI_INDEX);
    assert_eq!(v11["Description"], "multi-arch web");
    // The first child's (by digest) facts stand in for the index's own.
    assert_eq!(v11["Vendor"], "Acme");
    assert_eq!(v11["LastUpdated"], "2026-02-01T00:00:00Z");
    let arm_size = s.arm.bytes.len() as u64 + s.arm.blobs.iter().map(|(_, n)| n).sum::<u64>();
    assert_eq!(v11["Size"], (amd_size + arm_size).to_string());
    let mut platforms: Vec<String> = v11["Manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Platform"]["Arch"].as_str().unwrap().to_string())
        .collect();
    platforms.sort();
    assert_eq!(platforms, ["amd64", "arm64/v8"]);

    // One image by name, and the expanded repository.
    let d = data(
        &s,
        r#"{ Image(image: "tools/cli:stable") { Tag IsSigned DownloadCount
        LastPullTimestamp SignatureInfo { Tool } Referrers { ArtifactType Digest } } }"#,
    )
    .await;
    let cli = &d["Image"];
    assert_eq!(cli["IsSigned"], true);
    assert_eq!(cli["DownloadCount"], 5);
    assert_eq!(cli["LastPullTimestamp"], "1970-01-01T00:16:40Z");
    assert_eq!(cli["SignatureInfo"], json!([{"Tool": "cosign"}]));
    assert_eq!(
        cli["Referrers"][0]["ArtifactType"],
        "application/vnd.dev.cosign.artifact.sig.v1+json"
    );
    let d = data(
        &s,
        r#"{ ExpandedRepoInfo(repo: "app/web") { Images { Tag IsDeletable }
        Summary { Name NewestImage { Tag } } } }"#,
    )
    .await;
    let info = &d["ExpandedRepoInfo"];
    // Newest first.
    assert_eq!(names(&info["Images"], "Tag"), ["v1.1", "v1"]);
    assert_eq!(info["Images"][0]["IsDeletable"], true);
    assert_eq!(info["Summary"]["Name"], "app/web");
    let d = data(
        &s,
        r#"{ ExpandedRepoInfo(repo: "tools/cli") { Images { IsDeletable } } }"#,
    )
    .await;
    assert_eq!(d["ExpandedRepoInfo"]["Images"][0]["IsDeletable"], false);
    let d = data(
        &s,
        r#"{ Referrers(repo: "tools/cli", digest: "DIGEST", type: ["x"]) { Digest } }"#
            .replace("DIGEST", &s.cli.digest.to_string())
            .as_str(),
    )
    .await;
    assert_eq!(d["Referrers"], json!([]));
}

#[tokio::test]
async fn tags_digests_and_filters_choose_images() {
    let s = seeded().await;
    let tags = |d: &Value| images(&d["GlobalSearch"]["Images"]);
    let q = |text: &str, filter: &str| {
        format!(
            r#"{{ GlobalSearch(query: "{text}", filter: {{{filter}}}) {{ Page {{ TotalCount }}
                 Repos {{ Name }} Images {{ RepoName Tag Manifests {{ Platform {{ Arch }} }} }} }} }}"#
        )
    };
    let d = data(&s, &q("app/web:", "")).await;
    assert_eq!(tags(&d), ["app/web:v1", "app/web:v1.1"]);
    assert_eq!(d["GlobalSearch"]["Repos"], Value::Null);
    let d = data(&s, &q("APP/web:v1.", "")).await;
    assert_eq!(tags(&d), ["app/web:v1.1"]);
    let d = data(&s, &q(":stab", "")).await;
    assert_eq!(tags(&d), ["tools/cli:stable"]);
    // The arm64 image is only a child of the index.
    let arm = s.arm.digest.to_string();
    let d = data(&s, &q(&arm[..20], "")).await;
    assert_eq!(tags(&d), ["app/web:v1.1"]);
    // A layer shared with the unreadable repository finds only readable tags.
    let d = data(
        &s,
        &format!(
            r#"{{ ImageListForDigest(id: "{}") {{ Results {{ RepoName Tag }} }} }}"#,
            s.amd.blobs[2].0
        ),
    )
    .await;
    let found = images(&d["ImageListForDigest"]["Results"]);
    assert_eq!(found, ["app/web:v1", "app/web:v1.1"]);

    // Platform filters: the index is kept, with only its matching child.
    let d = data(&s, &q("app/web:", r#"Arch: ["ARM64/v8"]"#)).await;
    assert_eq!(tags(&d), ["app/web:v1.1"]);
    assert_eq!(
        d["GlobalSearch"]["Images"][0]["Manifests"],
        json!([{"Platform": {"Arch": "arm64/v8"}}])
    );
    let d = data(&s, &q("", "HasToBeSigned: true")).await;
    assert_eq!(names(&d["GlobalSearch"]["Repos"], "Name"), ["tools/cli"]);
    let d = data(&s, &q("", r#"Os: ["windows"]"#)).await;
    assert_eq!(d["GlobalSearch"]["Page"]["TotalCount"], 0);
}

#[tokio::test]
async fn paging_sorting_and_errors_follow_zot() {
    let s = seeded().await;
    let page = |p: &str| {
        format!(
            r#"{{ ImageList(repo: "", requestedPage: {{{p}}}) {{ Page {{ TotalCount ItemCount }} Results {{ RepoName Tag }} }} }}"#
        )
    };
    let list = |d: &Value| images(&d["ImageList"]["Results"]);
    let d = data(&s, &page("")).await;
    assert_eq!(
        list(&d),
        [
            "app/web:v1",
            "app/web:v1.1",
            "tools/base:1",
            "tools/cli:stable"
        ]
    );
    let d = data(&s, &page("limit: 2, offset: 1, sortBy: ALPHABETIC_DSC")).await;
    assert_eq!(
        d["ImageList"]["Page"],
        json!({"TotalCount": 4, "ItemCount": 2})
    );
    assert_eq!(list(&d), ["tools/base:1", "app/web:v1.1"]);
    let d = data(&s, &page("offset: 1")).await;
    assert_eq!(
        d["ImageList"]["Page"],
        json!({"TotalCount": 4, "ItemCount": 0})
    );
    let d = data(&s, &page("limit: 1, sortBy: DOWNLOADS")).await;
    assert_eq!(list(&d), ["tools/cli:stable"]);
    let d = data(&s, &page("limit: 1, sortBy: UPDATE_TIME")).await;
    assert_eq!(list(&d), ["app/web:v1.1"]);
    assert!(
        error(&s, &page("sortBy: STARS"))
            .await
            .contains("not supported")
    );
    assert!(error(&s, &page("limit: -1")).await.contains("negative"));

    let d = data(&s, r#"{ RepoListWithNewestImage { Results { Name } } }"#).await;
    // Newest first.
    assert_eq!(
        names(&d["RepoListWithNewestImage"]["Results"], "Name"),
        ["app/web", "tools/cli", "tools/base"]
    );
    assert!(
        error(&s, r#"{ Image(image: "app/web") { Tag } }"#)
            .await
            .contains("no reference")
    );
    assert!(
        error(&s, r#"{ Image(image: "app/web:v7") { Tag } }"#)
            .await
            .contains("can't find image")
    );
    assert!(
        error(&s, r#"{ Image(image: "nope/x:v1") { Tag } }"#)
            .await
            .contains("not found")
    );
    assert!(
        error(
            &s,
            r#"{ GlobalSearch(query: ":") { Page { TotalCount } } }"#
        )
        .await
        .contains("invalid search query")
    );
    assert!(
        error(
            &s,
            &format!(
                r#"{{ GlobalSearch(query: "{}") {{ Page {{ TotalCount }} }} }}"#,
                "x".repeat(300)
            )
        )
        .await
        .contains("max string size")
    );
}

#[tokio::test]
async fn a_repository_the_caller_may_not_read_is_in_no_answer() {
    let s = seeded().await;
    for query in [
        r#"{ GlobalSearch(query: "") { Repos { Name } } }"#,
        r#"{ GlobalSearch(query: ":v") { Images { RepoName } } }"#,
        r#"{ GlobalSearch(query: "secret/db:") { Images { RepoName } } }"#,
        r#"{ ImageList(repo: "") { Results { RepoName } } }"#,
        r#"{ ImageList(repo: "secret/db") { Results { RepoName } } }"#,
        r#"{ RepoListWithNewestImage { Results { Name } } }"#,
        r#"{ ExpandedRepoInfo(repo: "secret/db") { Images { RepoName } Summary { Name } } }"#,
        r#"{ Image(image: "secret/db:v9") { RepoName } }"#,
        r#"{ BaseImageList(image: "secret/db:v9") { Results { RepoName } } }"#,
        r#"{ DerivedImageList(image: "tools/base:1") { Results { RepoName } } }"#,
        r#"{ StarredRepos { Results { Name } } }"#,
    ] {
        let v = run(&s, alice(), query).await;
        assert!(!v.to_string().contains("secret"), "{query}: {v}");
    }
    let v = run(
        &s,
        alice(),
        r#"{ ExpandedRepoInfo(repo: "secret/db") { Images { Tag } Summary { Name } } }"#,
    )
    .await;
    assert_eq!(
        v["data"]["ExpandedRepoInfo"],
        json!({"Images": null, "Summary": null})
    );
    // Anonymous, with no rights at all: nothing anywhere.
    let v = run(
        &s,
        Caller::default(),
        r#"{ GlobalSearch(query: "") { Page { TotalCount } } }"#,
    )
    .await;
    assert_eq!(v["data"]["GlobalSearch"]["Page"]["TotalCount"], 0);
}

#[tokio::test]
async fn base_and_derived_images_share_layers() {
    let s = seeded().await;
    // tools/base:1 has "base layer"; app/web:v1 (amd64) has it and more.
    let d = data(
        &s,
        r#"{ DerivedImageList(image: "tools/base:1") { Results { RepoName Tag } } }"#,
    )
    .await;
    let found = images(&d["DerivedImageList"]["Results"]);
    assert_eq!(found, ["app/web:v1.1", "app/web:v1"]);
    let d = data(
        &s,
        r#"{ BaseImageList(image: "app/web:v1") { Results { RepoName Tag } } }"#,
    )
    .await;
    assert_eq!(names(&d["BaseImageList"]["Results"], "Tag"), ["1"]);
}

#[tokio::test]
async fn stars_and_bookmarks_are_the_callers_own() {
    let s = seeded().await;
    use crate::store::search::Mark;
    s.store
        .toggle_mark("alice", Mark::Star, "tools/cli")
        .await
        .unwrap();
    s.store
        .toggle_mark("alice", Mark::Bookmark, "app/web")
        .await
        .unwrap();
    s.store
        .toggle_mark("alice", Mark::Star, "secret/db")
        .await
        .unwrap();
    s.store
        .toggle_mark("bob", Mark::Star, "app/web")
        .await
        .unwrap();
    let d = data(
        &s,
        r#"{ StarredRepos { Results { Name IsStarred StarCount } }
                          BookmarkedRepos { Results { Name IsBookmarked } } }"#,
    )
    .await;
    assert_eq!(
        d["StarredRepos"]["Results"],
        json!([{"Name": "tools/cli", "IsStarred": true, "StarCount": 1}])
    );
    assert_eq!(
        d["BookmarkedRepos"]["Results"],
        json!([{"Name": "app/web", "IsBookmarked": true}])
    );
    let d = data(
        &s,
        r#"{ GlobalSearch(query: "", filter: {IsStarred: true}) { Repos { Name } } }"#,
    )
    .await;
    assert_eq!(names(&d["GlobalSearch"]["Repos"], "Name"), ["tools/cli"]);
    let d = data(&s, r#"{ GlobalSearch(query: "", requestedPage: {sortBy: STARS}) { Repos { Name StarCount } } }"#).await;
    assert_eq!(d["GlobalSearch"]["Repos"][0]["Name"], "app/web");
    let v = run(
        &s,
        Caller::default(),
        r#"{ StarredRepos { Results { Name } } }"#,
    )
    .await;
    assert_eq!(v["data"]["StarredRepos"]["Results"], json!([]));
}

/// zli checks the schema before each command with an introspection query
/// whose `__schema()` has empty parentheses (Go's parser takes them), and
/// compares each query's argument names in order.
#[tokio::test]
async fn zlis_introspection_query_is_answered() {
    let s = seeded().await;
    let q = "{ __schema() { queryType { fields { name args { name } type { name kind } } __typename } \
             types { name fields { name } } } }";
    let d = data(&s, q).await;
    let fields = d["__schema"]["queryType"]["fields"].as_array().unwrap();
    let args_of = |name: &str| -> Vec<String> {
        let f = fields.iter().find(|f| f["name"] == name).unwrap();
        names(&f["args"], "name")
    };
    assert_eq!(
        args_of("GlobalSearch"),
        ["query", "filter", "requestedPage"]
    );
    assert_eq!(args_of("ImageList"), ["repo", "requestedPage"]);
    assert_eq!(
        args_of("DerivedImageList"),
        ["image", "digest", "requestedPage"]
    );
    assert_eq!(args_of("Referrers"), ["repo", "digest", "type"]);
    let types = names(&d["__schema"]["types"], "name");
    for t in [
        "PaginatedImagesResult",
        "GlobalSearchResult",
        "Referrer",
        "RepoInfo",
    ] {
        assert!(types.iter().any(|n| n == t), "{t}");
    }
}
