//! zot's search extension through the real binary: GraphQL over GET and
//! POST, answers limited to what the caller may read, the platform taken
//! from the config the gateway passed along with the push, stars with
//! zot's status codes, and the mgmt and discover documents.

use crate::auth::htpasswd;
use crate::oci::*;
use crate::sandbox::{Sandbox, basic_client};
use serde_json::{Value, json};

/// A registry with search on: admin may do anything, alice may read
/// `app/**`.
async fn registry() -> (tempfile::TempDir, Sandbox) {
    let dir = tempfile::tempdir().unwrap();
    let path = htpasswd(dir.path(), &[("admin", "pw"), ("alice", "pw")]);
    let cfg = json!({
        "http": {"auth": {"htpasswd": {"path": path}},
                 "accessControl": {
                     "repositories": {"app/**": {"policies": [
                         {"users": ["alice"], "actions": ["read"]}]}},
                     "adminPolicy": {"users": ["admin"],
                                     "actions": ["read", "create", "update", "delete"]}}},
        "extensions": {"search": {"enable": true}}
    });
    let sb = Sandbox::start_with_client(cfg, basic_client("admin", "pw")).await;
    (dir, sb)
}

/// Push an image whose config says `arch`/`variant` and names a vendor.
async fn push(sb: &Sandbox, repo: &str, tag: &str, arch: &str, variant: &str) -> String {
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "variant": variant, "os": "linux",
        "created": "2026-05-01T10:00:00Z",
        "config": {"Labels": {"org.opencontainers.image.vendor": "Acme"}},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap();
    let cd = sb.push_blob(repo, &config).await;
    let layer = random_bytes(500);
    let ld = sb.push_blob(repo, &layer).await;
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": ld, "size": layer.len()}],
        "annotations": {"org.opencontainers.image.title": format!("{repo} image")}
    });
    sb.put_manifest(repo, tag, OCI_MANIFEST, &m).await
}

async fn get_query(sb: &Sandbox, user: &str, query: &str) -> reqwest::Response {
    basic_client(user, "pw")
        .get(sb.url("/v2/_zot/ext/search"))
        .query(&[("query", query)])
        .send()
        .await
        .unwrap()
}

async fn json_of(r: reqwest::Response) -> Value {
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    assert!(v.get("errors").is_none(), "{v}");
    v["data"].clone()
}

fn repo_names(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r["Name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn search_answers_graphql_for_what_the_caller_may_read() {
    let (_dir, sb) = registry().await;
    let web = push(&sb, "app/web", "v1", "arm64", "v8").await;
    push(&sb, "secret/db", "v1", "amd64", "").await;
    let all = r#"{ GlobalSearch(query: "") { Page { TotalCount }
                   Repos { Name Vendors Platforms { Os Arch } NewestImage { Tag Digest Title } } } }"#;

    // alice sees app/web only, with the platform its config gave.
    let d = json_of(get_query(&sb, "alice", all).await).await;
    let repos = &d["GlobalSearch"]["Repos"];
    assert_eq!(repo_names(repos), ["app/web"]);
    assert_eq!(d["GlobalSearch"]["Page"]["TotalCount"], 1);
    assert_eq!(
        repos[0]["Platforms"],
        json!([{"Os": "linux", "Arch": "arm64/v8"}])
    );
    assert_eq!(repos[0]["Vendors"], json!(["Acme"]));
    assert_eq!(
        repos[0]["NewestImage"],
        json!({"Tag": "v1", "Digest": web, "Title": "app/web image"})
    );
    // admin sees both.
    let d = json_of(get_query(&sb, "admin", all).await).await;
    assert_eq!(
        repo_names(&d["GlobalSearch"]["Repos"]),
        ["app/web", "secret/db"]
    );

    // POST with variables, as zot's UI sends it; right after the push.
    let r = basic_client("alice", "pw")
        .post(sb.url("/v2/_zot/ext/search"))
        .json(&json!({
            "query": "query List($repo: String!) { ImageList(repo: $repo) { Results { Tag LastUpdated Manifests { Platform { Arch } } } } }",
            "variables": {"repo": "app/web"},
            "operationName": "List"
        }))
        .send()
        .await
        .unwrap();
    let d = json_of(r).await;
    assert_eq!(
        d["ImageList"]["Results"],
        json!([{"Tag": "v1", "LastUpdated": "2026-05-01T10:00:00Z",
                "Manifests": [{"Platform": {"Arch": "arm64/v8"}}]}])
    );
    let d = json_of(
        get_query(
            &sb,
            "alice",
            r#"{ ImageList(repo: "secret/db") { Results { Tag } } }"#,
        )
        .await,
    )
    .await;
    assert_eq!(d["ImageList"]["Results"], json!([]));

    // No credentials: the usual challenge. No query: 422, as zot.
    let r = reqwest::Client::new()
        .get(sb.url("/v2/_zot/ext/search"))
        .query(&[("query", all)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = basic_client("alice", "pw")
        .get(sb.url("/v2/_zot/ext/search"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    // A query error is GraphQL's, in a 200.
    let r = get_query(&sb, "alice", r#"{ Image(image: "app/web") { Tag } }"#).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no reference provided"),
        "{v}"
    );
}

#[tokio::test]
async fn stars_and_bookmarks_follow_zots_status_codes() {
    let (_dir, sb) = registry().await;
    push(&sb, "app/web", "v1", "amd64", "").await;
    push(&sb, "secret/db", "v1", "amd64", "").await;
    let prefs = |user: &'static str, query: &'static str| {
        let url = sb.url(&format!("/v2/_zot/ext/userprefs?{query}"));
        async move {
            basic_client(user, "pw")
                .put(url)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(prefs("alice", "action=toggleStar&repo=app/web").await, 200);
    assert_eq!(
        prefs("alice", "action=toggleBookmark&repo=app/web").await,
        200
    );
    assert_eq!(prefs("admin", "action=toggleStar&repo=app/web").await, 200);
    assert_eq!(
        prefs("alice", "action=toggleStar&repo=secret/db").await,
        403
    );
    assert_eq!(prefs("alice", "action=toggleWhat&repo=app/web").await, 400);
    assert_eq!(prefs("alice", "action=toggleStar").await, 400);
    assert_eq!(prefs("alice", "action=toggleStar&repo=").await, 404);
    assert_eq!(
        prefs("admin", "action=toggleStar&repo=nowhere/x").await,
        404
    );
    let r = reqwest::Client::new()
        .put(sb.url("/v2/_zot/ext/userprefs?action=toggleStar&repo=app/web"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let q = r#"{ StarredRepos { Results { Name StarCount IsStarred IsBookmarked } }
                 BookmarkedRepos { Results { Name } } }"#;
    let d = json_of(get_query(&sb, "alice", q).await).await;
    assert_eq!(
        d["StarredRepos"]["Results"],
        json!([{"Name": "app/web", "StarCount": 2, "IsStarred": true, "IsBookmarked": true}])
    );
    assert_eq!(repo_names(&d["BookmarkedRepos"]["Results"]), ["app/web"]);
    // A second toggle takes the star back.
    assert_eq!(prefs("alice", "action=toggleStar&repo=app/web").await, 200);
    let d = json_of(get_query(&sb, "alice", q).await).await;
    assert_eq!(d["StarredRepos"]["Results"], json!([]));
}

#[tokio::test]
async fn mgmt_and_discover_describe_the_registry() {
    let (_dir, sb) = registry().await;
    // Both are open to anyone, as in zot.
    let anyone = reqwest::Client::new();
    let v: Value = anyone
        .get(sb.url("/v2/_zot/ext/mgmt"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["distSpecVersion"], "1.1.1");
    assert_eq!(v["http"], json!({"auth": {"htpasswd": {}}}));
    let v: Value = anyone
        .get(sb.url("/v2/_oci/ext/discover"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["extensions"][0]["name"], "_zot");
    assert_eq!(
        v["extensions"][0]["endpoints"],
        json!([
            "/v2/_zot/ext/search",
            "/v2/_zot/ext/userprefs",
            "/v2/_zot/ext/mgmt"
        ])
    );

    // Without extensions.search: none of it, and an empty list.
    let plain = Sandbox::start().await;
    for path in ["/v2/_zot/ext/search?query=%7B%7D", "/v2/_zot/ext/mgmt"] {
        let r = plain.get(path).await;
        assert_eq!(r.status(), 404, "{path}");
    }
    let v: Value = plain
        .get("/v2/_oci/ext/discover")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"extensions": []}));
}
