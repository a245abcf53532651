//! Pull-through from a real upstream: Debian's `docker-registry` (CNCF
//! distribution) with htpasswd auth, behind a dead first URL (failover).

use crate::auth::htpasswd;
use crate::clients::write_layout;
use crate::oci::*;
use crate::sandbox::{Sandbox, wait_ready};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// A `docker-registry` on a free loopback port with htpasswd auth.
pub struct Distribution {
    child: Option<Child>,
    pub url: String,
    pub log: PathBuf,
    yml: PathBuf,
    _dir: tempfile::TempDir,
}

impl Distribution {
    pub async fn start(htpasswd_file: &Path) -> Distribution {
        Self::start_with(htpasswd_file, None).await
    }

    /// With `tls` (certificate and key PEM), served over HTTPS.
    pub async fn start_with(htpasswd_file: &Path, tls: Option<(&str, &str)>) -> Distribution {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let yml = dir.path().join("config.yml");
        std::fs::write(
            &yml,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n{tls}auth:\n  htpasswd:\n    realm: upstream\n    path: {}\n",
                dir.path().join("data").display(),
                htpasswd_file.display(),
                tls = match tls {
                    Some((cert, key)) => {
                        let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
                        std::fs::write(&c, cert).unwrap();
                        std::fs::write(&k, key).unwrap();
                        format!("  tls:\n    certificate: {}\n    key: {}\n", c.display(), k.display())
                    }
                    None => String::new(),
                },
            ),
        )
        .unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut d = Distribution {
            child: None,
            url: format!("{scheme}://127.0.0.1:{port}"),
            log: dir.path().join("registry.log"),
            yml,
            _dir: dir,
        };
        d.restart().await;
        d
    }

    /// Start (again) on the same port and data.
    pub async fn restart(&mut self) {
        self.kill();
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new("docker-registry")
                .args(["serve", self.yml.to_str().unwrap()])
                .stdout(f.try_clone().unwrap())
                .stderr(f)
                .spawn()
                .expect("docker-registry"),
        );
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        wait_ready(&client, &format!("{}/v2/", self.url)).await;
    }

    pub fn host(&self) -> String {
        self.url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_string()
    }

    /// Lines of the access log for `GET path` answered `status`.
    pub fn count(&self, path: &str, status: u16) -> usize {
        let needle = format!("\"GET {path} HTTP/1.1\" {status} ");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.kill();
    }
}

/// svc-sync's `credentialsFile` in `dir`: `user`/`password` for `host`.
fn credentials_file(dir: &Path, host: &str, user: &str, password: &str) -> PathBuf {
    let path = dir.join("sync-credentials.json");
    std::fs::write(
        &path,
        json!({host: {"username": user, "password": password}}).to_string(),
    )
    .unwrap();
    path
}

/// Push a fresh `layers`-layer image to the registry at `host` as
/// `repo:tag` with skopeo, logging in as `creds` (`user:password`).
fn push_image(host: &str, creds: &str, repo: &str, tag: &str, layers: usize) -> String {
    let work = tempfile::tempdir().unwrap();
    let digest = write_layout(work.path(), tag, layers);
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            creds,
        ])
        .arg(format!("oci:{}:{tag}", work.path().display()))
        .arg(format!("docker://{host}/{repo}:{tag}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    digest
}

/// Push a fresh `layers`-layer image to the upstream as `repo:tag`.
fn seed(up: &Distribution, repo: &str, tag: &str, layers: usize) -> String {
    push_image(&up.host(), "sync:sync-pw", repo, tag, layers)
}

#[tokio::test]
async fn pulls_through_from_an_htpasswd_upstream_once_and_serves_the_copy_when_it_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("sync", "sync-pw")]);
    let mut up = Distribution::start(&users).await;
    let app = seed(&up, "library/app", "v1", 2);
    let other = seed(&up, "library/other", "v1", 1);
    let creds = credentials_file(dir.path(), &up.host(), "sync", "sync-pw");
    let sb = Sandbox::start_with(json!({"extensions": {"sync": {
    "credentialsFile": creds,
    "registries": [{
        // The first URL is dead: failover to the second.
        "urls": ["http://127.0.0.1:1", up.url],
        "onDemand": true, "tlsVerify": false,
        "content": [{"prefix": "library/**", "destination": "/hub", "stripPrefix": true}]
    }]}}}))
    .await;

    // skopeo pulls through Capstan: same manifest, every blob.
    let work = tempfile::tempdir().unwrap();
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--src-tls-verify=false"])
        .arg(format!("docker://{}/hub/app:v1", sb.host()))
        .arg(format!("oci:{}:v1", work.path().join("pulled").display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = sb.get("/v2/hub/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], app.as_str());

    // 20 concurrent first pulls of another image: one upstream fetch.
    let pulls = (0..20).map(|_| {
        let c = sb.client.clone();
        let url = sb.url("/v2/hub/other/manifests/v1");
        async move {
            let r = c
                .get(url)
                .header("Accept", OCI_MANIFEST)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.headers()
                    .get("docker-content-digest")
                    .map(|v| v.to_str().unwrap().to_string()),
            )
        }
    });
    for (status, digest) in futures::future::join_all(pulls).await {
        assert_eq!(status, 200);
        assert_eq!(digest.as_deref(), Some(other.as_str()));
    }
    assert_eq!(
        up.count("/v2/library/other/manifests/v1", 200),
        1,
        "one upstream fetch"
    );
    // Its layer is fetched when first asked for, streamed while stored, once
    // however many clients ask at the same time.
    let m: serde_json::Value = sb
        .get("/v2/hub/other/manifests/v1")
        .await
        .json()
        .await
        .unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let gets = (0..10).map(|_| {
        let c = sb.client.clone();
        let url = sb.url(&format!("/v2/hub/other/blobs/{layer}"));
        async move {
            let r = c.get(url).send().await.unwrap();
            (r.status().as_u16(), sha256(&r.bytes().await.unwrap()))
        }
    });
    for (status, got) in futures::future::join_all(gets).await {
        assert_eq!(status, 200);
        assert_eq!(got, layer);
    }
    assert_eq!(
        up.count(&format!("/v2/library/other/blobs/{layer}"), 200),
        1
    );

    // Names outside the content, and images the upstream lacks: 404.
    let r = sb.get("/v2/elsewhere/app/manifests/v1").await;
    assert_eq!(r.status(), 404);
    let r = sb.get("/v2/hub/app/manifests/v9").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");

    // Progress per upstream is on the gateway's /metrics.
    let metrics = sb.get("/metrics").await.text().await.unwrap();
    let upstream_label = "capstan_sync_images_total{upstream=\"http://127.0.0.1:1\"}";
    assert!(metrics.contains(upstream_label), "{metrics}");
    assert!(metrics.contains("capstan_sync_blobs_total"), "{metrics}");
    // The upstream goes away: what was pulled is still served.
    up.kill();
    let r = sb.get("/v2/hub/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    let m: serde_json::Value = r.json().await.unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap();
    let r = sb.get(&format!("/v2/hub/app/blobs/{layer}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(sha256(&r.bytes().await.unwrap()), layer);
    // …and a new image is unavailable, not "unknown".
    let r = sb.get("/v2/hub/new/manifests/v1").await;
    assert_eq!(r.status(), 503);
}

/// Poll `path` on `sb` until it answers `status`, for at most 30 s.
async fn until(sb: &Sandbox, path: &str, status: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if sb.get(path).await.status() == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} never answered {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn mirrors_what_content_selects_and_recovers_when_the_upstream_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("sync", "sync-pw")]);
    let mut up = Distribution::start(&users).await;
    let v1 = seed(&up, "library/app", "v1", 1);
    seed(&up, "library/app", "v2-rc", 1);
    let tool = seed(&up, "library/tool", "1.0.0", 1);
    seed(&up, "library/tool", "latest", 1);
    seed(&up, "other/x", "v1", 1);
    // The upstream is down when the first round runs.
    up.kill();
    let creds = credentials_file(dir.path(), &up.host(), "sync", "sync-pw");
    let sb = Sandbox::start_with(json!({"extensions": {"sync": {
    "credentialsFile": creds,
    "registries": [{
        "urls": [up.url], "pollInterval": "2s", "maxRetries": 1000, "retryDelay": "200ms",
        "tlsVerify": false,
        "content": [
            {"prefix": "library/app", "tags": {"regex": "^v", "excludeRegex": "-rc"},
             "destination": "/mirror", "stripPrefix": true},
            {"prefix": "library/t*", "tags": {"semver": true}}
        ]
    }]}}}))
    .await;
    assert_eq!(sb.get("/v2/mirror/manifests/v1").await.status(), 404);
    up.restart().await;
    until(&sb, "/v2/mirror/manifests/v1", 200).await;
    until(&sb, "/v2/library/tool/manifests/1.0.0", 200).await;
    let r = sb.get("/v2/mirror/manifests/v1").await;
    assert_eq!(r.headers()["docker-content-digest"], v1.as_str());
    let r = sb.get("/v2/library/tool/manifests/1.0.0").await;
    assert_eq!(r.headers()["docker-content-digest"], tool.as_str());
    // Filtered out: the rc tag, a non-semver tag, an unselected repository.
    assert_eq!(sb.get("/v2/mirror/manifests/v2-rc").await.status(), 404);
    assert_eq!(
        sb.get("/v2/library/tool/manifests/latest").await.status(),
        404
    );
    let catalog: serde_json::Value = sb.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(catalog["repositories"], json!(["library/tool", "mirror"]));
    // A new upstream tag arrives with a later round; an unchanged image's
    // blobs are not fetched again.
    let v1_layer: serde_json::Value = sb
        .get("/v2/mirror/manifests/v1")
        .await
        .json()
        .await
        .unwrap();
    let v1_layer = v1_layer["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let v3 = seed(&up, "library/app", "v3", 1);
    until(&sb, "/v2/mirror/manifests/v3", 200).await;
    let r = sb.get("/v2/mirror/manifests/v3").await;
    assert_eq!(r.headers()["docker-content-digest"], v3.as_str());
    assert_eq!(
        up.count(&format!("/v2/library/app/blobs/{v1_layer}"), 200),
        1
    );
    assert!(sb.proc.log_text().contains("mirror round done"));
}

/// The upstream is another Capstan with bearer-token auth: svc-sync follows
/// the challenge to its token service with the configured credentials.
#[tokio::test]
async fn pulls_through_from_a_capstan_with_token_auth() {
    let (_d, mut upstream) = crate::auth::with_users(
        &[("mirror", "mirror-pw")],
        json!({"auth": {"bearer": {"service": "upstream"}},
               "accessControl": {"repositories": {"**": {"defaultPolicy": ["read", "create"]}}}}),
    )
    .await;
    // Seed it through its own token flow with skopeo.
    let digest = push_image(&upstream.host(), "mirror:mirror-pw", "team/app", "v1", 2);
    let work = tempfile::tempdir().unwrap();
    let creds = credentials_file(work.path(), &upstream.host(), "mirror", "mirror-pw");
    let sb = Sandbox::start_with(json!({"extensions": {"sync": {
        "credentialsFile": creds,
        "registries": [{"urls": [upstream.proc.url], "onDemand": true, "tlsVerify": false}]}}}))
    .await;
    let r = sb.get("/v2/team/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    // svc-sync fetched a token, then the manifest as the configured user.
    upstream.logout();
    let token = upstream
        .proc
        .wait_log_line(|l| l.contains("endpoint=\"auth_token\"") && l.contains("status=200"));
    assert!(token.is_some(), "{}", upstream.proc.log_text());
    let manifest = upstream.proc.wait_log_line(|l| {
        l.contains("endpoint=\"manifest\"") && l.contains("user=mirror") && l.contains("status=200")
    });
    assert!(manifest.is_some(), "{}", upstream.proc.log_text());
}

/// An OCI layout holding a two-platform index tagged `tag`; returns the
/// digests of the index, the linux/amd64 and the linux/arm64 manifests.
fn write_index_layout(dir: &Path, tag: &str) -> (String, String, String) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> String {
        let d = sha256(bytes);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).unwrap();
        d
    };
    let mut children = Vec::new();
    for arch in ["amd64", "arm64"] {
        let layer = random_bytes(50_000);
        let ld = put(&layer);
        let config = serde_json::to_vec(&json!({"architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [ld]}}))
        .unwrap();
        let cd = put(&config);
        let m = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}]}))
        .unwrap();
        children.push((arch, put(&m), m.len()));
    }
    let index = serde_json::to_vec(&json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": children.iter().map(|(arch, d, n)| json!({"mediaType": OCI_MANIFEST,
            "digest": d, "size": n, "platform": {"os": "linux", "architecture": arch}})).collect::<Vec<_>>()}))
    .unwrap();
    let id = put(&index);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": id, "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
        .unwrap(),
    )
    .unwrap();
    (id, children[0].1.clone(), children[1].1.clone())
}

#[tokio::test]
async fn the_platform_filter_fetches_only_the_wanted_children_first() {
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("sync", "sync-pw")]);
    let up = Distribution::start(&users).await;
    let work = tempfile::tempdir().unwrap();
    let (index, amd, arm) = write_index_layout(work.path(), "multi");
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .args(["--dest-creds", "sync:sync-pw"])
        .arg(format!("oci:{}:multi", work.path().display()))
        .arg(format!("docker://{}/library/multi:v1", up.host()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let creds = credentials_file(dir.path(), &up.host(), "sync", "sync-pw");
    let sb = Sandbox::start_with(json!({"extensions": {"sync": {
        "credentialsFile": creds,
        "registries": [{"urls": [up.url], "onDemand": true, "platforms": ["linux/amd64"]}]}}}))
    .await;
    let r = sb.get("/v2/library/multi/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], index.as_str());
    // Only the amd64 child came along.
    assert_eq!(
        up.count(&format!("/v2/library/multi/manifests/{amd}"), 200),
        1
    );
    assert_eq!(
        up.count(&format!("/v2/library/multi/manifests/{arm}"), 200),
        0
    );
    let r = sb.get(&format!("/v2/library/multi/manifests/{amd}")).await;
    assert_eq!(r.status(), 200);
    // The other platform is fetched when someone asks for it.
    let r = sb.get(&format!("/v2/library/multi/manifests/{arm}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.count(&format!("/v2/library/multi/manifests/{arm}"), 200),
        1
    );
}

/// With oras, as mirror/mirror-pw, push to `host`'s team/app an artifact
/// (of `artifact_type` when given) whose subject is the `size`-byte manifest
/// `subject`; its digest.
fn push_referrer(
    host: &str,
    subject: &str,
    size: usize,
    work: &Path,
    artifact_type: Option<&str>,
) -> String {
    let file = work.join("sig.txt");
    std::fs::write(&file, b"signed").unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/oras_push.py");
    let mut cmd = Command::new("python3");
    cmd.args([
        script,
        host,
        "team/app",
        "sig",
        file.to_str().unwrap(),
        subject,
    ])
    .arg(size.to_string())
    .env("ORAS_USER", "mirror")
    .env("ORAS_PASSWORD", "mirror-pw");
    if let Some(t) = artifact_type {
        cmd.env("ORAS_ARTIFACT_TYPE", t);
    }
    crate::clients::run(&mut cmd).trim().to_string()
}

/// Signatures and other referrers come along with their subject.
#[tokio::test]
async fn referrers_are_synced_with_their_subject() {
    let (_d, mut upstream) = crate::auth::with_users(&[("mirror", "mirror-pw")], json!({})).await;
    upstream.login("mirror", "mirror-pw");
    let (subject, m) = upstream.push_image("team/app", "v1", 1).await;
    let size = serde_json::to_vec(&m).unwrap().len();
    let work = tempfile::tempdir().unwrap();
    let sig = push_referrer(&upstream.host(), &subject, size, work.path(), None);
    let creds = credentials_file(work.path(), &upstream.host(), "mirror", "mirror-pw");
    let sb = Sandbox::start_with(json!({"extensions": {"sync": {
        "credentialsFile": creds,
        "registries": [{"urls": [upstream.proc.url], "onDemand": true}]}}}))
    .await;
    assert_eq!(sb.get("/v2/team/app/manifests/v1").await.status(), 200);
    let r = sb.get(&format!("/v2/team/app/referrers/{subject}")).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(manifest_digests(&v), vec![sig.clone()]);
    assert_eq!(
        sb.get(&format!("/v2/team/app/manifests/{sig}"))
            .await
            .status(),
        200
    );
}

/// An HTTPS upstream whose certificate comes from a private CA: trusted
/// through `certDir`, refused without it.
#[tokio::test]
async fn a_tls_upstream_is_trusted_through_cert_dir() {
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("sync", "sync-pw")]);
    let pki = crate::auth::Pki::new("upstream CA");
    let (cert, key) = pki.issue("upstream", &["127.0.0.1"]);
    let up = Distribution::start_with(&users, Some((&cert, &key))).await;
    let digest = seed(&up, "library/app", "v1", 1);
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), pki.ca_pem()).unwrap();
    let creds = credentials_file(dir.path(), &up.host(), "sync", "sync-pw");
    let registry = |cert_dir: Option<&Path>| {
        let mut r = json!({"urls": [up.url], "onDemand": true});
        if let Some(d) = cert_dir {
            r["certDir"] = json!(d);
        }
        json!({"extensions": {"sync": {"credentialsFile": creds, "registries": [r]}}})
    };
    let trusting = Sandbox::start_with(registry(Some(&certs))).await;
    let r = trusting.get("/v2/library/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    let wary = Sandbox::start_with(registry(None)).await;
    assert_eq!(wary.get("/v2/library/app/manifests/v1").await.status(), 503);
}

/// `onlySigned`: an image without a signature referrer is not synced.
#[tokio::test]
async fn only_signed_images_are_pulled_through_when_asked() {
    let (_d, mut upstream) = crate::auth::with_users(&[("mirror", "mirror-pw")], json!({})).await;
    upstream.login("mirror", "mirror-pw");
    let (signed, m) = upstream.push_image("team/app", "signed", 1).await;
    upstream.push_image("team/app", "unsigned", 1).await;
    let work = tempfile::tempdir().unwrap();
    let size = serde_json::to_vec(&m).unwrap().len();
    push_referrer(
        &upstream.host(),
        &signed,
        size,
        work.path(),
        Some("application/vnd.cncf.notary.signature"),
    );
    let creds = credentials_file(work.path(), &upstream.host(), "mirror", "mirror-pw");
    let sb = Sandbox::start_with(json!({"extensions": {"sync": {
        "credentialsFile": creds,
        "registries": [{"urls": [upstream.proc.url], "onDemand": true, "onlySigned": true}]}}}))
    .await;
    let r = sb.get("/v2/team/app/manifests/signed").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], signed.as_str());
    let r = sb.get("/v2/team/app/manifests/unsigned").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
}

/// A TCP relay to `target` that passes at most `rate` bytes a second each
/// way, on a port of its own; dropping it cuts every connection.
struct SlowRelay {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl SlowRelay {
    async fn start(port: u16, target: String, rate: usize) -> SlowRelay {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let target = target.clone();
                conns.spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    let _ = tokio::join!(throttled(ri, wo, rate), throttled(ro, wi, rate));
                });
            }
        });
        SlowRelay { port, task }
    }
}

impl Drop for SlowRelay {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every
        // relayed connection.
        self.task.abort();
    }
}

async fn throttled(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rate: usize,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let piece = (rate / 20).max(1);
    let mut buf = vec![0u8; piece];
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        tick.tick().await;
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The upstream vanishes in the middle of copying a layer: nothing half
/// written becomes visible, and the next round completes the image.
#[tokio::test]
async fn an_upstream_lost_mid_copy_leaves_nothing_half_written_and_the_sync_completes() {
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("sync", "sync-pw")]);
    let up = Distribution::start(&users).await;
    let work = tempfile::tempdir().unwrap();
    // A 3 MB layer behind a 1 MB/s relay: svc-sync stores in 1 MiB chunks,
    // so the first is being written a second in, two seconds before the end.
    let digest = crate::clients::write_layout_sized(work.path(), "v1", &[3_000_000]);
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .args(["--dest-creds", "sync:sync-pw"])
        .arg(format!("oci:{}:v1", work.path().display()))
        .arg(format!("docker://{}/library/app:v1", up.host()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let relay = SlowRelay::start(0, up.host(), 1_000_000).await;
    let port = relay.port;
    let relay_host = format!("127.0.0.1:{port}");
    let creds = credentials_file(dir.path(), &relay_host, "sync", "sync-pw");
    let sb = Sandbox::start_with(json!({"extensions": {"sync": {
        "credentialsFile": creds,
        "registries": [{"urls": [format!("http://{relay_host}")], "pollInterval": "1s",
                        "maxRetries": 1000, "retryDelay": "200ms"}]}}}))
    .await;
    // Wait for a blob write in flight, then cut the upstream.
    let uploads = sb.dir.path().join("data/uploads");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let in_flight = |d: &Path| {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.starts_with("put-") && n.ends_with(".tmp")
            })
    };
    while !in_flight(&uploads) {
        assert!(std::time::Instant::now() < deadline, "no blob copy started");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    drop(relay);
    // Nothing half-copied is visible, and the partial put is cleaned away.
    assert_eq!(sb.get("/v2/library/app/manifests/v1").await.status(), 404);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while in_flight(&uploads) {
        assert!(
            std::time::Instant::now() < deadline,
            "the partial put was left behind"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        sb.get("/v2/library/app/manifests/v1").await.status(),
        404,
        "{}",
        sb.proc.log_text()
    );
    // The upstream comes back (same port): a later round finishes the copy.
    let _relay = SlowRelay::start(port, up.host(), 10_000_000).await;
    until(&sb, "/v2/library/app/manifests/v1", 200).await;
    let r = sb.get("/v2/library/app/manifests/v1").await;
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    let m: serde_json::Value = r.json().await.unwrap();
    for layer in m["layers"].as_array().unwrap() {
        let d = layer["digest"].as_str().unwrap();
        let blob = sb.get(&format!("/v2/library/app/blobs/{d}")).await;
        assert_eq!(blob.status(), 200);
        assert_eq!(sha256(&blob.bytes().await.unwrap()), d);
    }
}

/// Docker manifests become OCI ones unless `preserveDigest` (zot's rule).
#[tokio::test]
async fn docker_manifests_are_converted_to_oci_unless_digests_are_preserved() {
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("sync", "sync-pw")]);
    let up = Distribution::start(&users).await;
    let work = tempfile::tempdir().unwrap();
    write_layout(work.path(), "v1", 1);
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--format",
            "v2s2",
            "--dest-tls-verify=false",
        ])
        .args(["--dest-creds", "sync:sync-pw"])
        .arg(format!("oci:{}:v1", work.path().display()))
        .arg(format!("docker://{}/library/app:v1", up.host()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let upstream = reqwest::Client::new()
        .get(format!("{}/v2/library/app/manifests/v1", up.url))
        .basic_auth("sync", Some("sync-pw"))
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    let docker_digest = upstream.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        upstream.headers()["content-type"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let creds = credentials_file(dir.path(), &up.host(), "sync", "sync-pw");
    let start = |preserve: bool| {
        Sandbox::start_with(json!({"extensions": {"sync": {"credentialsFile": creds,
            "registries": [{"urls": [up.url], "onDemand": true, "preserveDigest": preserve}]}}}))
    };
    let converting = start(false).await;
    let r = converting.get("/v2/library/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], OCI_MANIFEST);
    assert_ne!(r.headers()["docker-content-digest"], docker_digest.as_str());
    let m: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    // Its layers pull through unchanged.
    let layer = m["layers"][0]["digest"].as_str().unwrap();
    let b = converting
        .get(&format!("/v2/library/app/blobs/{layer}"))
        .await;
    assert_eq!(sha256(&b.bytes().await.unwrap()), layer);
    let preserving = start(true).await;
    let r = preserving.get("/v2/library/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], docker_digest.as_str());
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
}
