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
    child: Child,
    pub url: String,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Distribution {
    pub async fn start(htpasswd_file: &Path) -> Distribution {
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
                 http:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: upstream\n    path: {}\n",
                dir.path().join("data").display(),
                htpasswd_file.display()
            ),
        )
        .unwrap();
        let log = dir.path().join("registry.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", yml.to_str().unwrap()])
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("docker-registry");
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&reqwest::Client::new(), &format!("{url}/v2/")).await;
        Distribution {
            child,
            url,
            log,
            _dir: dir,
        }
    }

    pub fn host(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Push a fresh `layers`-layer image to the upstream as `repo:tag`.
fn seed(up: &Distribution, repo: &str, tag: &str, layers: usize) -> String {
    let work = tempfile::tempdir().unwrap();
    let digest = write_layout(work.path(), tag, layers);
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            "sync:sync-pw",
        ])
        .arg(format!("oci:{}:{tag}", work.path().display()))
        .arg(format!("docker://{}/{repo}:{tag}", up.host()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    digest
}

#[tokio::test]
async fn pulls_through_from_an_htpasswd_upstream_once_and_serves_the_copy_when_it_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("sync", "sync-pw")]);
    let mut up = Distribution::start(&users).await;
    let app = seed(&up, "library/app", "v1", 2);
    let other = seed(&up, "library/other", "v1", 1);
    let creds = dir.path().join("sync-credentials.json");
    std::fs::write(
        &creds,
        json!({up.host(): {"username": "sync", "password": "sync-pw"}}).to_string(),
    )
    .unwrap();
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

    // Names outside the content, and images the upstream lacks: 404.
    let r = sb.get("/v2/elsewhere/app/manifests/v1").await;
    assert_eq!(r.status(), 404);
    let r = sb.get("/v2/hub/app/manifests/v9").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");

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
