//! Credentials across clients and registries: skopeo and oras with
//! passwords, API keys and bearer tokens; several gateways on one auth
//! service dropping a revoked key within a second; and CNCF distribution
//! accepting tokens Capstan issued. Sessions shared through Redis are in
//! `sessions.rs`.

use crate::auth::{htpasswd, with_users};
use crate::clients::{run, write_layout};
use crate::oci::*;
use crate::sandbox::{Process, Sandbox, basic_client, wait_ready, wait_readyz};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn skopeo_copy(from: &str, to: &str, creds: &[&str]) -> std::process::Output {
    Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .args(creds)
        .args([from, to])
        .output()
        .expect("skopeo")
}

fn policy() -> Value {
    json!({"repositories": {
        "**": {"defaultPolicy": ["read", "create"]},
        "public/**": {"defaultPolicy": ["read", "create"], "anonymousPolicy": ["read"]}
    }})
}

#[tokio::test]
async fn skopeo_and_oras_push_and_pull_with_passwords_and_api_keys() {
    let (_d, mut sb) = with_users(
        &[("alice", "alice-pw")],
        json!({"auth": {"apikey": true}, "accessControl": policy()}),
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let digest = write_layout(&src, "v1", 2);
    let layout = format!("oci:{}:v1", src.display());
    let dest = format!("docker://{}/team/app:v1", sb.host());
    // Anonymous and wrong credentials cannot push.
    assert!(!skopeo_copy(&layout, &dest, &[]).status.success());
    assert!(
        !skopeo_copy(&layout, &dest, &["--dest-creds", "alice:nope"])
            .status
            .success()
    );
    let out = skopeo_copy(&layout, &dest, &["--dest-creds", "alice:alice-pw"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sb.login("alice", "alice-pw");
    let r = sb.get("/v2/team/app/manifests/v1").await;
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());

    // An API key as the password, for a pull.
    let k: Value = sb
        .client
        .post(sb.url("/zot/auth/apikey"))
        .json(&json!({"label": "skopeo"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = k["apiKey"].as_str().unwrap();
    let back = work.path().join("back");
    let pulled = format!("oci:{}:v1", back.display());
    let out = skopeo_copy(&dest, &pulled, &["--src-creds", &format!("alice:{key}")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !skopeo_copy(&dest, &format!("oci:{}:v2", back.display()), &[])
            .status
            .success()
    );

    // oras pushes a referrer with the key.
    let size = sb
        .get("/v2/team/app/manifests/v1")
        .await
        .bytes()
        .await
        .unwrap()
        .len();
    let file = work.path().join("sig.txt");
    std::fs::write(&file, b"signed").unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/oras_push.py");
    let out = run(Command::new("python3")
        .args([
            script,
            &sb.host(),
            "team/app",
            "sig",
            file.to_str().unwrap(),
            &digest,
            &size.to_string(),
        ])
        .env("ORAS_USER", "alice")
        .env("ORAS_PASSWORD", key));
    assert!(out.trim().starts_with("sha256:"), "{out}");
    let v: Value = sb
        .get(&format!("/v2/team/app/referrers/{digest}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(manifest_digests(&v), vec![out.trim().to_string()]);

    // Anonymous pulls work where the policy allows them, and only there.
    let out = skopeo_copy(
        &layout,
        &format!("docker://{}/public/app:v1", sb.host()),
        &["--dest-creds", "alice:alice-pw"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let anon_back = work.path().join("anon");
    let out = skopeo_copy(
        &format!("docker://{}/public/app:v1", sb.host()),
        &format!("oci:{}:v1", anon_back.display()),
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = sb.proc.log_text();
    assert!(
        !log.contains("alice-pw") && !log.contains(key),
        "secret in the log"
    );
}

#[tokio::test]
async fn bearer_mode_issues_and_checks_tokens() {
    let (_d, sb) = with_users(
        &[("alice", "alice-pw")],
        json!({"auth": {"bearer": {"service": "capstan-test"}}, "accessControl": policy()}),
    )
    .await;
    // The challenge sends clients to the token service.
    let r = sb.get("/v2/").await;
    assert_eq!(r.status(), 401);
    let realm = format!("{}/zot/auth/token", sb.proc.url);
    assert_eq!(
        r.headers()["www-authenticate"],
        format!("Bearer realm=\"{realm}\",service=\"capstan-test\",scope=\"\"").as_str()
    );
    let r = sb.get("/v2/team/app/tags/list").await;
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("scope=\"repository:team/app:pull\"")
    );

    let token = |creds: Option<(&str, &str)>, scope: &str| {
        let c = match creds {
            Some((u, p)) => basic_client(u, p),
            None => basic_client("", ""),
        };
        let url = format!("{realm}?service=capstan-test&scope={scope}");
        async move { c.get(url).send().await.unwrap() }
    };
    let r = token(Some(("alice", "alice-pw")), "repository:team/app:pull,push").await;
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["token"], t["access_token"]);
    assert_eq!(t["expires_in"], 300);
    let bearer = |tok: &str| {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("authorization", format!("Bearer {tok}").parse().unwrap());
        reqwest::Client::builder()
            .default_headers(h)
            .build()
            .unwrap()
    };
    let alice = Sandbox {
        client: bearer(t["token"].as_str().unwrap()),
        ..sb
    };
    let (digest, _) = alice.push_image("team/app", "v1", 1).await;
    assert_eq!(alice.get("/v2/team/app/manifests/v1").await.status(), 200);
    // Outside the token's scope: a new challenge for that scope.
    let r = alice.post("/v2/other/blobs/uploads/").await;
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("repository:other:pull,push")
    );
    // The token does not grant delete (the policy does not).
    assert_eq!(
        alice
            .delete(&format!("/v2/team/app/manifests/{digest}"))
            .await
            .status(),
        401
    );
    // Wrong password: no token; anonymous: only what anonymous may do.
    assert_eq!(
        token(Some(("alice", "nope")), "repository:team/app:pull")
            .await
            .status(),
        401
    );
    let anon: Value = token(None, "repository:team/app:pull")
        .await
        .json()
        .await
        .unwrap();
    let r = bearer(anon["token"].as_str().unwrap())
        .get(alice.url("/v2/team/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Two scopes for one repository add up.
    let c = basic_client("alice", "alice-pw");
    let url = format!(
        "{realm}?service=capstan-test&scope=repository:team/app:pull&scope=repository:team/app:push"
    );
    let two: Value = c.get(url).send().await.unwrap().json().await.unwrap();
    let both = bearer(two["token"].as_str().unwrap());
    assert_eq!(
        both.get(alice.url("/v2/team/app/manifests/v1"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        both.post(alice.url("/v2/team/app/blobs/uploads/"))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    // A forged token (signed by someone else) is refused.
    let forged = format!("{}x", t["token"].as_str().unwrap());
    assert_eq!(
        bearer(&forged)
            .get(alice.url("/v2/"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // skopeo runs the whole token dance itself.
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let d = write_layout(&src, "v1", 2);
    let dest = format!("docker://{}/team/skopeo:v1", alice.host());
    let out = skopeo_copy(
        &format!("oci:{}:v1", src.display()),
        &dest,
        &["--dest-creds", "alice:alice-pw"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = skopeo_copy(
        &dest,
        &format!("oci:{}:v1", work.path().join("back").display()),
        &["--src-creds", "alice:alice-pw"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = alice.head("/v2/team/skopeo/manifests/v1").await;
    assert_eq!(
        r.status(),
        401,
        "the first token had no scope on team/skopeo"
    );
    let t2: Value = token(Some(("alice", "alice-pw")), "repository:team/skopeo:pull")
        .await
        .json()
        .await
        .unwrap();
    let r = bearer(t2["token"].as_str().unwrap())
        .head(alice.url("/v2/team/skopeo/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
}

/// A gRPC role of a distributed deployment sharing `config`.
fn role(dir: &Path, config: &Path, role: &str) -> Process {
    let log = dir.join(format!("{role}.log"));
    Process::role(config, role, "127.0.0.1:0", &log, &[])
}

#[tokio::test]
async fn a_revoked_key_fails_within_a_second_on_every_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let path = htpasswd(dir.path(), &[("alice", "pw")]);
    let base = json!({
        "storage": {"rootDirectory": dir.path().join("data")},
        "http": {"port": 0, "auth": {"htpasswd": {"path": path}, "apikey": true}}
    });
    let cfg = dir.path().join("roles.json");
    std::fs::write(&cfg, serde_json::to_vec(&base).unwrap()).unwrap();
    let meta = role(dir.path(), &cfg, "meta");
    let blob = role(dir.path(), &cfg, "blob");
    let auth = role(dir.path(), &cfg, "auth");
    let mut gws = Vec::new();
    for name in ["gw-a", "gw-b"] {
        let mut c = base.clone();
        c["services"] = json!({"meta": {"endpoints": [meta.url]}, "blob": {"endpoints": [blob.url]},
                               "auth": {"endpoints": [auth.url]}});
        let p = dir.path().join(format!("{name}.json"));
        std::fs::write(&p, serde_json::to_vec(&c).unwrap()).unwrap();
        gws.push(Process::spawn(
            &["-c", p.to_str().unwrap(), "--role", "gateway"],
            &dir.path().join(format!("{name}.log")),
        ));
    }
    let client = basic_client("alice", "pw");
    for g in &gws {
        wait_readyz(&client, &g.url).await;
    }
    let k: Value = client
        .post(format!("{}/zot/auth/apikey", gws[0].url))
        .json(&json!({"label": "shared"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = basic_client("alice", k["apiKey"].as_str().unwrap());
    // Both gateways accept (and cache) the key.
    for g in &gws {
        for _ in 0..3 {
            assert_eq!(
                key.get(format!("{}/v2/", g.url))
                    .send()
                    .await
                    .unwrap()
                    .status(),
                200
            );
        }
    }
    let r = client
        .delete(format!(
            "{}/zot/auth/apikey?id={}",
            gws[0].url,
            k["uuid"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let revoked = Instant::now();
    for g in &gws {
        loop {
            if key
                .get(format!("{}/v2/", g.url))
                .send()
                .await
                .unwrap()
                .status()
                == 401
            {
                break;
            }
            assert!(
                revoked.elapsed() < Duration::from_secs(1),
                "{} still accepts the key",
                g.url
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// CNCF distribution, configured for token auth with Capstan's token service
/// as realm and Capstan's signing certificate as its root bundle, accepts
/// what Capstan issues: one login for both registries.
#[tokio::test]
async fn docker_registry_accepts_tokens_capstan_issues() {
    let (_d, sb) = with_users(&[("alice", "alice-pw")], json!({"accessControl": policy()})).await;
    let cert = sb.dir.path().join("data/_auth/token-signing-cert.pem");
    assert!(cert.exists());
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dist = tempfile::tempdir().unwrap();
    let yml = dist.path().join("config.yml");
    std::fs::write(
        &yml,
        format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {root}\nhttp:\n  addr: 127.0.0.1:{port}\n\
             auth:\n  token:\n    realm: {realm}\n    service: docker-registry\n    issuer: capstan\n    rootcertbundle: {cert}\n",
            root = dist.path().join("data").display(),
            realm = sb.url("/zot/auth/token"),
            cert = cert.display(),
        ),
    )
    .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let log = std::fs::File::create(dist.path().join("registry.log")).unwrap();
    let _registry = Kill(
        Command::new("docker-registry")
            .args(["serve", yml.to_str().unwrap()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry"),
    );
    let dist_url = format!("http://127.0.0.1:{port}");
    wait_ready(&reqwest::Client::new(), &format!("{dist_url}/v2/")).await;
    let r = reqwest::get(format!("{dist_url}/v2/")).await.unwrap();
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains(&sb.url("/zot/auth/token"))
    );

    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let digest = write_layout(&src, "v1", 2);
    let dest = format!("docker://127.0.0.1:{port}/team/app:v1");
    let out = skopeo_copy(
        &format!("oci:{}:v1", src.display()),
        &dest,
        &["--dest-creds", "alice:alice-pw"],
    );
    let registry_log =
        std::fs::read_to_string(dist.path().join("registry.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\n--- docker-registry ---\n{registry_log}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--raw",
            "--creds",
            "alice:alice-pw",
            &dest,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(sha256(&out.stdout), digest);
    // Capstan's policy still decides: a wrong password gets no token.
    let out = skopeo_copy(
        &format!("oci:{}:v1", src.display()),
        &dest,
        &["--dest-creds", "alice:wrong-pw"],
    );
    assert!(!out.status.success());
}

/// The node OpenID provider of `tests/oidc` on `port`, sending browsers back
/// to `redirect_uri`.
struct OidcProvider(std::process::Child);

impl OidcProvider {
    fn start(port: u16, redirect_uri: &str) -> OidcProvider {
        use std::io::BufRead;
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc");
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(dir)
            .env("PORT", port.to_string())
            .env("REDIRECT_URI", redirect_uri)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("node (run scripts/setup.sh)");
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("ready "), "provider said {line:?}");
        // Keep reading: node dies writing to a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        OidcProvider(child)
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A browser: follows no redirect by itself, keeps cookies by name.
struct Browser {
    http: reqwest::Client,
    cookies: std::collections::BTreeMap<String, String>,
}

impl Browser {
    fn new() -> Browser {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Browser {
            http,
            cookies: Default::default(),
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> reqwest::Response {
        let jar: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let r = req.header("Cookie", jar.join("; ")).send().await.unwrap();
        for v in r.headers().get_all("set-cookie") {
            let pair = v.to_str().unwrap().split(';').next().unwrap();
            if let Some((k, v)) = pair.split_once('=') {
                if v.is_empty() {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_string(), v.to_string());
                }
            }
        }
        r
    }

    /// Log `user` in at the provider, starting from its authorization URL;
    /// returns the URL the provider sends the browser back to.
    async fn sign_in(&mut self, start: &str, user: &str, back_to: &str) -> String {
        let form_action = regex::Regex::new(r#"<form[^>]*action="([^"]+)""#).unwrap();
        let hidden =
            regex::Regex::new(r#"<input type="hidden" name="([^"]+)" value="([^"]*)""#).unwrap();
        let mut url = start.to_string();
        let origin = start.split('/').take(3).collect::<Vec<_>>().join("/");
        for _ in 0..20 {
            if url.starts_with(back_to) {
                return url;
            }
            let r = self.send(self.http.get(&url)).await;
            if r.status().is_redirection() {
                let loc = r.headers()["location"].to_str().unwrap();
                url = if loc.starts_with('/') {
                    format!("{origin}{loc}")
                } else {
                    loc.to_string()
                };
                continue;
            }
            let html = r.text().await.unwrap();
            let action = form_action
                .captures(&html)
                .unwrap_or_else(|| panic!("no form at {url}: {html}"))[1]
                .to_string();
            let mut fields: Vec<(String, String)> = hidden
                .captures_iter(&html)
                .map(|c| (c[1].to_string(), c[2].to_string()))
                .collect();
            if html.contains("name=\"login\"") {
                fields.push(("login".into(), user.into()));
                fields.push(("password".into(), "any".into()));
            }
            let r = self.send(self.http.post(&action).form(&fields)).await;
            assert!(
                r.status().is_redirection(),
                "form post answered {}",
                r.status()
            );
            let loc = r.headers()["location"].to_str().unwrap();
            url = if loc.starts_with('/') {
                format!("{origin}{loc}")
            } else {
                loc.to_string()
            };
        }
        panic!("the provider never sent the browser back");
    }
}

#[tokio::test]
async fn openid_login_through_a_real_provider_starts_a_session() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let policy = json!({"repositories": {"**": {
        "policies": [{"groups": ["devs"], "actions": ["read", "create"]}],
        "defaultPolicy": ["read"]}}});
    let sb = Sandbox::start_with(json!({"http": {
        "auth": {"openid": {"providers": {"oidc": {
            "issuer": format!("http://127.0.0.1:{port}"),
            "clientid": "capstan", "clientsecret": "capstan-secret",
            "claimMapping": {"username": "preferred_username"}}}}},
        "accessControl": policy}}))
    .await;
    let callback = sb.url("/zot/auth/callback/oidc");
    let _provider = OidcProvider::start(port, &callback);

    let login_url = |ui: &str| sb.url(&format!("/zot/auth/login?provider=oidc&callback_ui={ui}"));
    let mut alice = Browser::new();
    let r = alice.send(alice.http.get(login_url("/home"))).await;
    assert_eq!(r.status(), 302);
    let to_provider = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        to_provider.starts_with(&format!("http://127.0.0.1:{port}/")),
        "{to_provider}"
    );
    assert!(to_provider.contains("code_challenge="), "PKCE");
    assert!(alice.cookies.contains_key("statecookie"));
    let back = alice.sign_in(&to_provider, "alice", &callback).await;
    // A state that is not the browser's is refused (and does not use it up).
    let mut stranger = Browser::new();
    let forged = stranger.send(stranger.http.get(&back)).await;
    assert_eq!(forged.status(), 401);
    let r = alice.send(alice.http.get(&back)).await;
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "/home");
    assert_eq!(alice.cookies.get("user").map(String::as_str), Some("alice"));
    let session = alice
        .cookies
        .get("session")
        .cloned()
        .expect("session cookie");
    // The same code and state cannot be replayed.
    assert_eq!(alice.send(alice.http.get(&back)).await.status(), 401);

    // The session is alice, in her provider group devs.
    let ui = |s: &str, req: reqwest::RequestBuilder| {
        req.header("Cookie", format!("session={s}"))
            .header("X-ZOT-API-CLIENT", "zot-ui")
    };
    let c = reqwest::Client::new();
    assert_eq!(
        ui(&session, c.post(sb.url("/v2/team/app/blobs/uploads/")))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    // …and mints an API key for the command line (on with OpenID).
    let k: Value = ui(&session, c.post(sb.url("/zot/auth/apikey")))
        .json(&json!({"label": "cli"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = basic_client("alice", k["apiKey"].as_str().unwrap());
    assert_eq!(
        key.post(sb.url("/v2/team/app/blobs/uploads/"))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );

    // bob is in ops: read only.
    let mut bob = Browser::new();
    let r = bob.send(bob.http.get(login_url(""))).await;
    let to_provider = r.headers()["location"].to_str().unwrap().to_string();
    let back = bob.sign_in(&to_provider, "bob", &callback).await;
    let r = bob.send(bob.http.get(&back)).await;
    assert_eq!(r.status(), 201, "no callback_ui: 201 as zot");
    let bob_session = bob.cookies.get("session").cloned().unwrap();
    assert_eq!(
        ui(&bob_session, c.post(sb.url("/v2/team/app/blobs/uploads/")))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );

    // Open redirects and unknown providers are refused up front.
    let mut eve = Browser::new();
    assert_eq!(
        eve.send(eve.http.get(login_url("//evil.example/")))
            .await
            .status(),
        400
    );
    let r = eve
        .send(eve.http.get(sb.url("/zot/auth/login?provider=github")))
        .await;
    assert_eq!(r.status(), 400);
    assert!(
        !sb.proc.log_text().contains(&session),
        "session id in the log"
    );
}

/// zot's external token issuer: tokens signed by a key whose certificate is
/// `http.auth.bearer.cert`, checked locally; `push` from such an issuer also
/// moves tags, as in distribution.
#[tokio::test]
async fn tokens_of_an_external_issuer_are_checked_against_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["issuer.example".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_path = dir.path().join("issuer.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    let sb = Sandbox::start_with(json!({"http": {"auth": {"bearer": {
        "realm": "https://issuer.example/token", "service": "ext-registry", "cert": cert_path}}}}))
    .await;
    let r = sb.get("/v2/").await;
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer realm=\"https://issuer.example/token\",service=\"ext-registry\"")
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign = |k: &rcgen::KeyPair, aud: &str, actions: &[&str]| {
        let claims = json!({"iss": "issuer.example", "sub": "ci", "aud": aud, "exp": now + 300,
            "nbf": now - 5, "iat": now, "jti": "1",
            "access": [{"type": "repository", "name": "team/app", "actions": actions}]});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_pem(k.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let with = |t: String| {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("authorization", format!("Bearer {t}").parse().unwrap());
        reqwest::Client::builder()
            .default_headers(h)
            .build()
            .unwrap()
    };
    let writer = Sandbox {
        client: with(sign(&key, "ext-registry", &["pull", "push"])),
        ..sb
    };
    let (_d, m) = writer.push_image("team/app", "v1", 1).await;
    // push moves an existing tag too.
    let mut m2 = m.clone();
    m2["annotations"] = json!({"v": "2"});
    writer
        .put_manifest("team/app", "v1", OCI_MANIFEST, &m2)
        .await;
    assert_eq!(writer.post("/v2/other/blobs/uploads/").await.status(), 401);
    // Another audience, or another key: refused.
    let c = with(sign(&key, "someone-else", &["pull"]));
    assert_eq!(
        c.get(writer.url("/v2/team/app/manifests/v1"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let c = with(sign(&stranger, "ext-registry", &["pull"]));
    assert_eq!(
        c.get(writer.url("/v2/team/app/manifests/v1"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // An HS256 token "signed" with the certificate text is not accepted.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "x", "aud": "ext-registry", "exp": now + 300,
                "access": [{"type": "repository", "name": "team/app", "actions": ["pull"]}]}),
        &jsonwebtoken::EncodingKey::from_secret(cert.pem().as_bytes()),
    )
    .unwrap();
    assert_eq!(
        with(forged)
            .get(writer.url("/v2/team/app/manifests/v1"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

/// GitHub login: the OAuth code flow, then the user's login and organisations
/// from the REST API. The test's OAuth server (node's oidc-provider, which
/// also answers GitHub's two API calls) stands in for GitHub Enterprise.
#[tokio::test]
async fn github_login_maps_the_account_and_its_organisations() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let policy = json!({"repositories": {"**": {
        "policies": [{"groups": ["devs"], "actions": ["read", "create"]}],
        "defaultPolicy": ["read"]}}});
    let sb = Sandbox::start_with(json!({"http": {
        "auth": {"openid": {"providers": {"github": {
            "clientid": "capstan", "clientsecret": "capstan-secret", "scopes": ["openid"],
            "authurl": format!("{base}/auth"), "tokenurl": format!("{base}/token"),
            "apiurl": format!("{base}/api")}}}},
        "accessControl": policy}}))
    .await;
    let callback = sb.url("/zot/auth/callback/github");
    let _provider = OidcProvider::start(port, &callback);
    let mut alice = Browser::new();
    let r = alice
        .send(
            alice
                .http
                .get(sb.url("/zot/auth/login?provider=github&callback_ui=/")),
        )
        .await;
    assert_eq!(r.status(), 302);
    let to = r.headers()["location"].to_str().unwrap().to_string();
    assert!(to.starts_with(&format!("{base}/auth?")), "{to}");
    let back = alice.sign_in(&to, "alice", &callback).await;
    let r = alice.send(alice.http.get(&back)).await;
    assert_eq!(r.status(), 302);
    assert_eq!(alice.cookies.get("user").map(String::as_str), Some("alice"));
    let session = alice.cookies.get("session").cloned().unwrap();
    // alice's organisation devs grants create.
    let r = reqwest::Client::new()
        .post(sb.url("/v2/team/app/blobs/uploads/"))
        .header("Cookie", format!("session={session}"))
        .header("X-ZOT-API-CLIENT", "zot-ui")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}
