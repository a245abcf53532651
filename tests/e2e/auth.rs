//! Authentication and authorization through the real binary: htpasswd with
//! challenges and failDelay, zot's policy example action by action, API
//! keys, sessions, and the secrets that must never reach the logs.

use crate::oci::*;
use crate::sandbox::{Sandbox, basic_client};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An htpasswd file (bcrypt, low cost for speed) in `dir`.
pub fn htpasswd(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let path = dir.join("htpasswd");
    let text: String = users
        .iter()
        .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 4).unwrap()))
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// A registry with htpasswd users and `http` merged into its config.
pub async fn with_users(users: &[(&str, &str)], http: Value) -> (tempfile::TempDir, Sandbox) {
    let dir = tempfile::tempdir().unwrap();
    let path = htpasswd(dir.path(), users);
    let mut cfg = json!({"http": {"auth": {"htpasswd": {"path": path}}}});
    crate::sandbox::merge(&mut cfg, json!({ "http": http }));
    let sb = Sandbox::start_with(cfg).await;
    (dir, sb)
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn htpasswd_challenges_checks_passwords_and_delays_failures() {
    let (_d, mut sb) =
        with_users(&[("alice", "s3cret-pw")], json!({"auth": {"failDelay": 1}})).await;
    // Anonymous: a Basic challenge, the spec's error body, no delay.
    let r = sb.get("/v2/").await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"capstan\"");
    assert_eq!(error_code(r).await, "UNAUTHORIZED");
    // A wrong password waits failDelay.
    let bad = basic_client("alice", "bad-guess-77");
    let started = Instant::now();
    let r = bad.get(sb.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "failDelay not applied"
    );
    let r = basic_client("mallory", "s3cret-pw")
        .get(sb.url("/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Garbage and unknown schemes are refused too.
    for h in [
        "Basic !!!",
        "Digest x",
        &format!("Basic {}", b64("nocolon")),
    ] {
        let r = sb
            .client
            .get(sb.url("/v2/"))
            .header("Authorization", h)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{h}");
    }
    // Two Authorization headers: 400.
    let r = reqwest::Client::new()
        .get(sb.url("/v2/"))
        .header("Authorization", format!("Basic {}", b64("alice:s3cret-pw")))
        .header("Authorization", format!("Basic {}", b64("alice:s3cret-pw")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "REQUEST_INVALID");
    // The right password works for everything (no accessControl).
    sb.login("alice", "s3cret-pw");
    assert_eq!(sb.get("/v2/").await.status(), 200);
    let (digest, _) = sb.push_image("team/app", "v1", 2).await;
    assert_eq!(sb.get("/v2/team/app/manifests/v1").await.status(), 200);
    assert_eq!(
        sb.delete(&format!("/v2/team/app/manifests/{digest}"))
            .await
            .status(),
        202
    );
    // Metrics are for users too.
    assert_eq!(sb.get("/metrics").await.status(), 200);
    sb.logout();
    assert_eq!(sb.get("/metrics").await.status(), 401);
    // Without credentials nothing is readable.
    let r = sb.get("/v2/team/app/tags/list").await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    // No secret in the logs.
    let log = sb.proc.log_text();
    assert!(log.contains("alice"), "the user is logged");
    for secret in ["s3cret-pw", &b64("alice:s3cret-pw"), "bad-guess-77"] {
        assert!(!log.contains(secret), "{secret} leaked into the log");
    }
}

/// zot's documented policy example, with users in htpasswd.
fn zot_policy() -> Value {
    json!({
        "groups": {"group1": {"users": ["jack", "john", "jane", "ana"]},
                   "group2": {"users": ["alice", "mike", "jim"]}},
        "repositories": {
            "**": {"policies": [{"users": ["charlie"], "actions": ["read", "create", "update"]}],
                   "defaultPolicy": ["read", "create"]},
            "tmp/**": {"defaultPolicy": ["read", "create", "update"]},
            "infra/*": {"policies": [{"users": ["alice", "bob"], "actions": ["create", "read", "update", "delete"]},
                                     {"users": ["mallory"], "actions": ["create", "read"]}],
                        "defaultPolicy": ["read"]},
            "updates/only": {"policies": [{"users": ["nobody"], "actions": ["read", "update"]}]},
            "repos2/repo": {"policies": [{"users": ["charlie"], "actions": ["read", "create"]},
                                         {"users": ["jim"], "actions": ["read"]},
                                         {"groups": ["group1"], "actions": ["read", "create"]}],
                            "defaultPolicy": ["read"], "anonymousPolicy": ["read"]}
        },
        "adminPolicy": {"users": ["admin"], "actions": ["read", "create", "update", "delete"]}
    })
}

const USERS: &[(&str, &str)] = &[
    ("admin", "pw"),
    ("alice", "pw"),
    ("bob", "pw"),
    ("charlie", "pw"),
    ("mallory", "pw"),
    ("jane", "pw"),
    ("jim", "pw"),
    ("nobody", "pw"),
];

/// What `user` (None: anonymous) gets for `action` on `repo`: the status of
/// a request needing exactly that action.
async fn attempt(sb: &Sandbox, user: Option<&str>, action: &str, repo: &str) -> u16 {
    let c = match user {
        Some(u) => basic_client(u, "pw"),
        None => basic_client("", ""),
    };
    let r = match action {
        "read" => {
            c.get(sb.url(&format!("/v2/{repo}/manifests/v1")))
                .send()
                .await
        }
        "create" => {
            c.post(sb.url(&format!("/v2/{repo}/blobs/uploads/")))
                .send()
                .await
        }
        // Moving the existing tag v1 to other content ("update"), or
        // setting a new tag ("tag", which needs create).
        "update" | "tag" => {
            let by = user.unwrap_or("anon");
            let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": EMPTY_DIGEST, "size": 2},
                "layers": [], "annotations": {"by": by}});
            let to = if action == "tag" {
                format!("new-{by}")
            } else {
                "v1".into()
            };
            c.put(sb.url(&format!("/v2/{repo}/manifests/{to}")))
                .header("Content-Type", OCI_MANIFEST)
                .body(serde_json::to_vec(&m).unwrap())
                .send()
                .await
        }
        "delete" => {
            c.delete(sb.url(&format!("/v2/{repo}/manifests/v0")))
                .send()
                .await
        }
        _ => unreachable!(),
    };
    r.unwrap().status().as_u16()
}

const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

#[tokio::test]
async fn every_action_boundary_of_zots_policy_example() {
    let mut policy = zot_policy();
    policy["metrics"] = json!({"users": ["admin"]});
    let (_d, mut sb) = with_users(USERS, json!({"accessControl": policy})).await;
    sb.login("admin", "pw");
    let repos = [
        "app",
        "tmp/x/y",
        "infra/web",
        "infra/a/b",
        "repos2/repo",
        "updates/only",
    ];
    for repo in repos {
        sb.push_blob(repo, b"{}").await;
        sb.push_image(repo, "v1", 1).await;
        sb.push_image(repo, "v0", 1).await;
    }
    // (user, repo, action, allowed): 2xx when allowed; 403 for a user,
    // 401 for anonymous when not.
    let cases: &[(Option<&str>, &str, &str, bool)] = &[
        // defaultPolicy on **: read+create for any authenticated user.
        (Some("nobody"), "app", "read", true),
        (Some("nobody"), "app", "create", true),
        (Some("nobody"), "app", "update", false),
        (Some("nobody"), "app", "delete", false),
        (None, "app", "read", false),
        // a user policy adds update.
        (Some("charlie"), "app", "update", true),
        (Some("charlie"), "app", "delete", false),
        // tmp/** is longer than **: update for everyone.
        (Some("nobody"), "tmp/x/y", "update", true),
        (Some("nobody"), "tmp/x/y", "delete", false),
        // infra/* is one level and wins over **.
        (Some("nobody"), "infra/web", "read", true),
        (Some("nobody"), "infra/web", "create", false),
        (Some("charlie"), "infra/web", "update", false),
        (Some("alice"), "infra/web", "delete", true),
        (Some("bob"), "infra/web", "update", true),
        (Some("mallory"), "infra/web", "create", true),
        (Some("mallory"), "infra/web", "update", false),
        // …but infra/a/b is two levels: back to **.
        (Some("nobody"), "infra/a/b", "create", true),
        (Some("alice"), "infra/a/b", "delete", false),
        // groups and anonymous on an exact name.
        (Some("jane"), "repos2/repo", "create", true),
        (Some("jim"), "repos2/repo", "read", true),
        (Some("jim"), "repos2/repo", "create", false),
        (None, "repos2/repo", "read", true),
        (None, "repos2/repo", "create", false),
        // A new tag needs create; moving one, update (decided by svc-meta
        // in the push's transaction).
        (Some("nobody"), "app", "tag", true),
        (Some("nobody"), "updates/only", "update", true),
        (Some("nobody"), "updates/only", "tag", false),
        (Some("mallory"), "infra/web", "tag", true),
        // admin everywhere.
        (Some("admin"), "infra/a/b", "delete", true),
        (Some("admin"), "repos2/repo", "update", true),
    ];
    let mut wrong = Vec::new();
    for (user, repo, action, allowed) in cases {
        let status = attempt(&sb, *user, action, repo).await;
        let ok = if *allowed {
            (200..300).contains(&status)
        } else {
            status == if user.is_some() { 403 } else { 401 }
        };
        if !ok {
            wrong.push(format!("{user:?} {action} {repo}: {status}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "unexpected answers:\n{}",
        wrong.join("\n")
    );

    // Only the listed user reads the metrics.
    assert_eq!(sb.get("/metrics").await.status(), 200);
    let r = basic_client("alice", "pw")
        .get(sb.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Creating a new tag needs create, not update.
    let c = basic_client("nobody", "pw");
    let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": EMPTY_DIGEST, "size": 2},
        "layers": []});
    sb.login("nobody", "pw");
    sb.put_manifest("app", "fresh", OCI_MANIFEST, &m).await;
    let r = sb.put_manifest_raw("app", "fresh", OCI_MANIFEST, br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[],"annotations":{"x":"y"}}"#).await;
    assert_eq!(r.status(), 403, "nobody may not move an existing tag");
    // Nor through the tags of a push by digest; a new tag that way is fine.
    let other = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[],"annotations":{"x":"z"}}"#;
    let d = sha256(other);
    let r = sb
        .put_manifest_raw(
            "app",
            &format!("{d}?tag=new1&tag=fresh"),
            OCI_MANIFEST,
            other,
        )
        .await;
    assert_eq!(
        r.status(),
        403,
        "a ?tag= naming an existing tag needs update"
    );
    let r = sb
        .put_manifest_raw(
            "app",
            &format!("{d}?tag=new1&tag=new2"),
            OCI_MANIFEST,
            other,
        )
        .await;
    assert_eq!(r.status(), 201);
    // A tag repeated is one tag: it still needs update when it exists.
    let repeated: String = (0..47).map(|_| "tag=fresh&").collect();
    let r = sb
        .put_manifest_raw("app", &format!("{d}?{repeated}"), OCI_MANIFEST, other)
        .await;
    assert_eq!(r.status(), 403, "a repeated existing tag needs update");
    // Too many tags is refused as such, without looking each one up.
    let many: String = (0..47).map(|i| format!("tag=fresh{i}&")).collect();
    let r = sb
        .put_manifest_raw("app", &format!("{d}?tag=fresh&{many}"), OCI_MANIFEST, other)
        .await;
    assert_eq!(r.status(), 414);

    // The catalog lists only what the caller may read.
    let list = |c: reqwest::Client| {
        let url = sb.url("/v2/_catalog");
        async move {
            let v: Value = c.get(url).send().await.unwrap().json().await.unwrap();
            v["repositories"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(basic_client("", "")).await, vec!["repos2/repo"]);
    assert_eq!(list(c).await.len(), 6);
    // Paging the filtered catalog: n=1 then the Link.
    let r = basic_client("", "")
        .get(sb.url("/v2/_catalog?n=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Mounting from a repository the caller cannot read is a plain upload.
    let secret = random_bytes(100);
    sb.login("admin", "pw");
    let d = sb.push_blob("infra/web", &secret).await;
    let mounter = basic_client("jim", "pw");
    let r = mounter
        .post(sb.url(&format!(
            "/v2/tmp/jim/blobs/uploads/?mount={d}&from=repos2/repo"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "not in repos2/repo: no mount");
    let r = basic_client("nobody", "pw")
        .post(sb.url(&format!(
            "/v2/tmp/n/blobs/uploads/?mount={d}&from=infra/web"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "readable source: mounted");
    let r = basic_client("nobody", "pw")
        .post(sb.url(&format!(
            "/v2/tmp/n2/blobs/uploads/?mount={d}&from=secret/place"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn api_keys_are_created_listed_scoped_expired_and_revoked() {
    let (users, mut sb) = with_users(
        &[("alice", "pw"), ("bob", "pw")],
        json!({"auth": {"apikey": true}}),
    )
    .await;
    sb.login("alice", "pw");
    let create = |body: Value| {
        let c = sb.client.clone();
        let url = sb.url("/zot/auth/apikey");
        async move {
            c.post(url)
                .header("User-Agent", "capstan-test/1")
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let r = create(json!({"label": "ci", "scopes": ["team/**"]})).await;
    assert_eq!(r.status(), 201);
    let k: Value = r.json().await.unwrap();
    let secret = k["apiKey"].as_str().unwrap().to_string();
    assert!(secret.starts_with("zak_"));
    assert_eq!(k["label"], "ci");
    assert_eq!(k["scopes"], json!(["team/**"]));
    assert_eq!(k["expirationDate"], "0001-01-01T00:00:00Z");
    assert_eq!(k["isExpired"], false);
    assert_eq!(k["creatorUa"], "capstan-test/1");
    assert_eq!(k["generatedBy"], "manual");
    let id = k["uuid"].as_str().unwrap().to_string();

    // Listed without the secret; bob sees none of alice's keys.
    let v: Value = sb.get("/zot/auth/apikey").await.json().await.unwrap();
    assert_eq!(v["apiKeys"].as_array().unwrap().len(), 1);
    assert!(v["apiKeys"][0].get("apiKey").is_none());
    assert!(!v.to_string().contains(&secret));
    let v: Value = basic_client("bob", "pw")
        .get(sb.url("/zot/auth/apikey"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["apiKeys"], json!([]));

    // The key is a password, for its owner only, within its scopes.
    let key = basic_client("alice", &secret);
    assert_eq!(key.get(sb.url("/v2/")).send().await.unwrap().status(), 200);
    let r = key
        .post(sb.url("/v2/team/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = key
        .post(sb.url("/v2/other/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        basic_client("bob", &secret)
            .get(sb.url("/v2/"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // A key cannot mint keys.
    let r = key
        .post(sb.url("/zot/auth/apikey"))
        .json(&json!({"label": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // lastUsed moved.
    let v: Value = sb.get("/zot/auth/apikey").await.json().await.unwrap();
    assert_ne!(v["apiKeys"][0]["lastUsed"], "0001-01-01T00:00:00Z");

    // Bad requests.
    assert_eq!(
        create(json!({"label": "x", "expirationDate": "tomorrow"}))
            .await
            .status(),
        400
    );
    assert_eq!(
        create(json!({"label": "x", "expirationDate": "2001-01-01T00:00:00Z"}))
            .await
            .status(),
        400
    );
    assert_eq!(
        create(json!({"label": "x", "scopes": ["a/["]}))
            .await
            .status(),
        400
    );
    let r = sb
        .client
        .post(sb.url("/zot/auth/apikey"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(sb.delete("/zot/auth/apikey").await.status(), 400);
    assert_eq!(sb.delete("/zot/auth/apikey?id=nope").await.status(), 404);
    assert_eq!(
        basic_client("", "")
            .get(sb.url("/zot/auth/apikey"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // Expiry: a key valid for two seconds stops working after them.
    let soon = time_in(2);
    let r = create(json!({"label": "short", "expirationDate": soon})).await;
    assert_eq!(r.status(), 201);
    let short: Value = r.json().await.unwrap();
    let short_key = basic_client("alice", short["apiKey"].as_str().unwrap());
    assert_eq!(
        short_key.get(sb.url("/v2/")).send().await.unwrap().status(),
        200
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = short_key.get(sb.url("/v2/")).send().await.unwrap().status();
        if s == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "expired key still accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Revocation takes effect at once, even though the key was cached.
    assert_eq!(
        sb.delete(&format!("/zot/auth/apikey?id={id}"))
            .await
            .status(),
        200
    );
    assert_eq!(key.get(sb.url("/v2/")).send().await.unwrap().status(), 401);
    assert_eq!(
        basic_client("bob", "pw")
            .delete(sb.url(&format!(
                "/zot/auth/apikey?id={}",
                short["uuid"].as_str().unwrap()
            )))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // A key of a user who leaves the htpasswd file stops working.
    let bobs: Value = basic_client("bob", "pw")
        .post(sb.url("/zot/auth/apikey"))
        .json(&json!({"label": "bob's"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bob_key = basic_client("bob", bobs["apiKey"].as_str().unwrap());
    assert_eq!(
        bob_key.get(sb.url("/v2/")).send().await.unwrap().status(),
        200
    );
    let tmp = users.path().join("htpasswd.new");
    std::fs::write(&tmp, format!("alice:{}\n", bcrypt::hash("pw", 4).unwrap())).unwrap();
    std::fs::rename(&tmp, users.path().join("htpasswd")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while bob_key.get(sb.url("/v2/")).send().await.unwrap().status() != 401 {
        assert!(
            Instant::now() < deadline,
            "a removed user's key still works"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(key.get(sb.url("/v2/")).send().await.unwrap().status(), 401);

    let log = sb.proc.log_text();
    assert!(!log.contains(&secret), "API key leaked into the log");
    assert!(!log.contains(secret.trim_start_matches("zak_")));
}

/// RFC 3339 time `secs` from now.
fn time_in(secs: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A UI login: Basic credentials with zot's UI header.
async fn ui_login(sb: &Sandbox, user: &str, pw: &str) -> String {
    let r = basic_client(user, pw)
        .get(sb.url("/v2/"))
        .header("X-ZOT-API-CLIENT", "zot-ui")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookies: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let session = cookies
        .iter()
        .find(|c| c.starts_with("session="))
        .expect("session cookie");
    assert!(
        session.contains("HttpOnly")
            && session.contains("SameSite=Lax")
            && session.contains("Max-Age=7200")
    );
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with(&format!("user={user};")))
    );
    session
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("session=")
        .to_string()
}

/// GET `path` with the session cookie (and the UI header unless `plain`).
async fn with_cookie(sb: &Sandbox, path: &str, session: &str, ui: bool) -> u16 {
    let mut req = reqwest::Client::new()
        .get(sb.url(path))
        .header("Cookie", format!("session={session}"));
    if ui {
        req = req.header("X-ZOT-API-CLIENT", "zot-ui");
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn local_sessions_log_in_survive_a_restart_and_log_out() {
    let (_d, mut sb) = with_users(&[("alice", "pw")], json!({})).await;
    let s = ui_login(&sb, "alice", "pw").await;
    assert_eq!(with_cookie(&sb, "/v2/", &s, true).await, 200);
    // Without the UI header the cookie is not a credential (no CSRF).
    assert_eq!(with_cookie(&sb, "/v2/", &s, false).await, 401);
    assert_eq!(
        with_cookie(&sb, "/v2/", "0".repeat(64).as_str(), true).await,
        401
    );
    // Plain API clients with Basic get no session.
    sb.login("alice", "pw");
    assert!(sb.get("/v2/").await.headers().get("set-cookie").is_none());
    // Local sessions live under the storage root: a restart keeps them.
    sb.crash_and_restart().await;
    assert_eq!(with_cookie(&sb, "/v2/", &s, true).await, 200);
    // Logout ends it and clears the cookies.
    let r = reqwest::Client::new()
        .post(sb.url("/zot/auth/logout"))
        .header("Cookie", format!("session={s}"))
        .header("X-ZOT-API-CLIENT", "zot-ui")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap().starts_with("session=;"))
    );
    assert_eq!(with_cookie(&sb, "/v2/", &s, true).await, 401);
    assert!(
        !sb.proc.log_text().contains(&s),
        "session id leaked into the log"
    );
}

#[tokio::test]
async fn detect_manifest_collision_refuses_deleting_a_digest_several_tags_name() {
    let policy = json!({"repositories": {"**": {
        "policies": [{"users": ["careful"], "actions": ["detectManifestCollision"]}],
        "defaultPolicy": ["read", "create", "delete"]}}});
    let (_d, mut sb) = with_users(
        &[("careful", "pw"), ("bold", "pw")],
        json!({"accessControl": policy}),
    )
    .await;
    sb.login("bold", "pw");
    let (digest, m) = sb.push_image("app", "v1", 1).await;
    sb.put_manifest("app", "v2", OCI_MANIFEST, &m).await;
    let careful = basic_client("careful", "pw");
    let r = careful
        .delete(sb.url(&format!("/v2/app/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    assert_eq!(
        sb.get("/v2/app/manifests/v1").await.status(),
        200,
        "nothing deleted"
    );
    // One tag left: no collision.
    assert_eq!(
        careful
            .delete(sb.url("/v2/app/manifests/v2"))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        careful
            .delete(sb.url(&format!("/v2/app/manifests/{digest}")))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    // Without the behaviour, a shared digest is deleted with its tags.
    let (digest, m) = sb.push_image("app", "v3", 1).await;
    sb.put_manifest("app", "v4", OCI_MANIFEST, &m).await;
    assert_eq!(
        sb.delete(&format!("/v2/app/manifests/{digest}"))
            .await
            .status(),
        202
    );
    assert_eq!(sb.get("/v2/app/manifests/v4").await.status(), 404);
    // With access control and no metrics list, nobody reads the metrics.
    assert_eq!(sb.get("/metrics").await.status(), 403);
}

/// A CA and the certificates it signs.
pub struct Pki {
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = p.self_signed(&ca_key).unwrap();
        Pki { ca, ca_key }
    }

    /// (certificate PEM, key PEM) for `cn`, valid for `sans`.
    pub fn issue(&self, cn: &str, sans: &[&str]) -> (String, String) {
        let mut p =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }
}

fn mtls_client(identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder().danger_accept_invalid_certs(true);
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test]
async fn client_certificates_are_required_and_their_common_name_is_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("capstan test CA");
    let (server_cert, server_key) = pki.issue("registry", &["127.0.0.1", "localhost"]);
    let paths: Vec<PathBuf> = ["server.pem", "server.key", "ca.pem"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    std::fs::write(&paths[0], server_cert).unwrap();
    std::fs::write(&paths[1], server_key).unwrap();
    std::fs::write(&paths[2], pki.ca.pem()).unwrap();
    let (alice_cert, alice_key) = pki.issue("alice", &[]);
    let (bob_cert, bob_key) = pki.issue("bob", &[]);
    let policy = json!({"repositories": {"**": {
        "policies": [{"users": ["alice"], "actions": ["read", "create"]}],
        "defaultPolicy": ["read"]}}});
    let mut sb = Sandbox::start_with_client(
        json!({"http": {"tls": {"cert": paths[0], "key": paths[1], "cacert": paths[2]},
                        "accessControl": policy}}),
        mtls_client(Some((&alice_cert, &alice_key))),
    )
    .await;
    // alice (by her certificate's CommonName) pushes and pulls.
    let (_digest, _) = sb.push_image("app", "v1", 1).await;
    assert_eq!(sb.get("/v2/app/manifests/v1").await.status(), 200);
    // bob may only read.
    sb.client = mtls_client(Some((&bob_cert, &bob_key)));
    assert_eq!(sb.get("/v2/app/manifests/v1").await.status(), 200);
    assert_eq!(sb.post("/v2/app/blobs/uploads/").await.status(), 403);
    // No certificate, or one from another CA: no TLS session at all.
    let none = mtls_client(None).get(sb.url("/v2/")).send().await;
    assert!(none.is_err() || none.unwrap().status() != 200);
    let other = Pki::new("someone else");
    let (c, k) = other.issue("alice", &[]);
    let forged = mtls_client(Some((&c, &k)))
        .get(sb.url("/v2/app/manifests/v1"))
        .send()
        .await;
    assert!(forged.is_err() || forged.unwrap().status() != 200);
}

const LDIF: &str = "dn: dc=example,dc=org
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=people,dc=example,dc=org
objectClass: organizationalUnit
ou: people

dn: uid=alice,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: Liddell
departmentNumber: devs
userPassword: alice-ldap-pw

dn: uid=bob,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: Builder
departmentNumber: ops
userPassword: bob-ldap-pw
";

#[tokio::test]
async fn ldap_logins_against_slapd_carry_directory_groups() {
    let slapd = capstan_testkit::Slapd::start("dc=example,dc=org", "admin-pw", LDIF);
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("ldap-credentials.json");
    std::fs::write(
        &creds,
        r#"{"bindDN": "cn=admin,dc=example,dc=org", "bindPassword": "admin-pw"}"#,
    )
    .unwrap();
    let policy = json!({"repositories": {"**": {
        "policies": [{"groups": ["devs"], "actions": ["read", "create"]}],
        "defaultPolicy": ["read"]}}});
    let (_d, mut sb) = with_users(
        &[("carol", "carol-local-pw")],
        json!({"auth": {"ldap": {
                  "address": "127.0.0.1", "port": slapd.port(), "insecure": true,
                  "baseDN": "ou=people,dc=example,dc=org", "userAttribute": "uid",
                  "userGroupAttribute": "departmentNumber", "credentialsFile": creds}},
               "accessControl": policy}),
    )
    .await;
    // alice is in the directory group devs: she pushes.
    sb.login("alice", "alice-ldap-pw");
    sb.push_image("team/app", "v1", 1).await;
    // bob (ops) only reads; wrong or empty passwords and filter tricks fail.
    let bob = basic_client("bob", "bob-ldap-pw");
    assert_eq!(
        bob.get(sb.url("/v2/team/app/manifests/v1"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        bob.post(sb.url("/v2/team/app/blobs/uploads/"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    for (u, p) in [
        ("alice", "bob-ldap-pw"),
        ("alice", ""),
        ("*", "alice-ldap-pw"),
        ("alice)(uid=*", "x"),
        ("nobody", "x"),
    ] {
        let s = basic_client(u, p)
            .get(sb.url("/v2/team/app/manifests/v1"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(s, 401, "{u:?}/{p:?}");
    }
    // The directory matches names without case; the user is its spelling.
    let shouting = basic_client("ALICE", "alice-ldap-pw");
    assert_eq!(
        shouting
            .get(sb.url("/v2/team/app/tags/list"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The access log line is written just after the answer: wait for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let log = sb.proc.log_text();
        if let Some(l) = log.lines().rfind(|l| l.contains("endpoint=\"tags\"")) {
            break l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no access log line for the tags request"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        line.contains("user=alice") && !line.contains("ALICE"),
        "{line}"
    );
    // A local htpasswd account still works next to the directory.
    let carol = basic_client("carol", "carol-local-pw");
    assert_eq!(
        carol
            .get(sb.url("/v2/team/app/manifests/v1"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(!sb.proc.log_text().contains("alice-ldap-pw"));
}

/// zot's `metrics.anonymousPolicy: ["read"]`: callers without credentials
/// read `/metrics`; a user who is not listed still does not.
#[tokio::test]
async fn anonymous_metrics_readers_as_zot_allows() {
    let (_dir, mut sb) = with_users(
        &[("admin", "pw"), ("alice", "pw")],
        json!({"accessControl": {
            "repositories": {"**": {"defaultPolicy": ["read"]}},
            "metrics": {"users": ["admin"], "anonymousPolicy": ["read"]}}}),
    )
    .await;
    sb.logout();
    assert_eq!(sb.get("/metrics").await.status(), 200);
    sb.login("admin", "pw");
    assert_eq!(sb.get("/metrics").await.status(), 200);
    sb.login("alice", "pw");
    assert_eq!(sb.get("/metrics").await.status(), 403);
    // Anything but read is refused by name.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&json!({"http": {"auth": {"htpasswd": {"path": "/p"}},
            "accessControl": {"metrics": {"anonymousPolicy": ["delete"]}}}}))
        .unwrap(),
    )
    .unwrap();
    let out = std::process::Command::new(crate::sandbox::BIN)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("metrics.anonymousPolicy"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// zot's probes answer anyone, with authentication on: orchestrators call
/// them without credentials. In one process every role is ready at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_without_credentials() {
    let (_dir, sb) = with_users(&[("alice", "pw")], json!({})).await;
    assert_eq!(sb.get("/v2/").await.status(), 401);
    for probe in ["/livez", "/startupz"] {
        assert_eq!(sb.get(probe).await.status(), 200, "{probe}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = sb.get("/readyz").await;
        if r.status() == 200 {
            let body: Value = r.json().await.unwrap();
            let roles: Vec<&str> = body["roles"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["role"].as_str().unwrap())
                .collect();
            assert_eq!(roles, ["meta", "blob", "auth"], "{body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Probes are GET/HEAD only; anything else is an ordinary path.
    let r = sb.client.post(sb.url("/readyz")).send().await.unwrap();
    assert_ne!(r.status(), 200);
}
