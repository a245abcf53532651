//! Trust between roles: embedded mode opens no port but the gateway's; in
//! distributed mode a gRPC call to any role without the deployment's shared
//! secret is refused (and logged), and the secret is rotated through
//! `services.secretFile` with no restart and no failed request. svc-blob's
//! byte paths beside its gRPC methods are behind the same secret.

use crate::oci::*;
use crate::sandbox::{Process, Sandbox, wait_readyz};
use capstan_proto::ServiceError;
use capstan_proto::auth::v1::auth_service_client::AuthServiceClient;
use capstan_proto::blob::v1::ReadRequest;
use capstan_proto::blob::v1::blob_service_client::BlobServiceClient;
use capstan_proto::direct::BlobClient;
use capstan_proto::meta::v1::meta_service_client::MetaServiceClient;
use capstan_proto::sync::v1::sync_service_client::SyncServiceClient;
use capstan_runtime::grpc::{Peer, Secrets, Transport};
use serde_json::json;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The TCP ports process `pid` listens on (from `/proc`: its socket inodes
/// matched against the kernel's tables of listening sockets).
fn listening_ports(pid: u32) -> HashSet<u16> {
    let mut inodes = HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let Ok(target) = std::fs::read_link(fd.unwrap().path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
            inodes.insert(inode.to_string());
        }
    }
    let mut ports = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, st (0A = LISTEN), inode
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                ports.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

/// Push a one-layer image to `repo:tag` through `base`, then pull its
/// manifest and layer back.
async fn push_and_pull(client: &reqwest::Client, base: &str, repo: &str, tag: &str) {
    let layer = random_bytes(40_000);
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    for blob in [&layer, &config] {
        let r = client
            .post(format!(
                "{base}/v2/{repo}/blobs/uploads/?digest={}",
                sha256(blob)
            ))
            .body(blob.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(&layer), "size": layer.len()}]
    });
    let r = client
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", OCI_MANIFEST)
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let r = client
        .get(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{base}/v2/{repo}/blobs/{}", sha256(&layer)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), layer);
}

#[tokio::test]
async fn embedded_mode_listens_only_on_the_gateway_port() {
    let sb = Sandbox::start().await;
    push_and_pull(&sb.client, &sb.proc.url, "only/gateway", "v1").await;
    let port: u16 = sb.host().rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(listening_ports(sb.proc.pid()), HashSet::from([port]));
}

/// Start a gRPC role with a config of its own (`services` merged in).
fn role(dir: &Path, role: &str, services: serde_json::Value) -> Process {
    let cfg = dir.join(format!("{role}.json"));
    std::fs::write(
        &cfg,
        serde_json::to_vec(&json!({
            "storage": {"rootDirectory": dir.join("data")},
            "services": services,
            "log": {"level": "info"}
        }))
        .unwrap(),
    )
    .unwrap();
    let log = dir.join(format!("{role}.log"));
    Process::role(&cfg, role, "127.0.0.1:0", &log, &[])
}

const OLD: &str = "old-secret-of-this-deployment";
const NEW: &str = "new-secret-of-this-deployment";

/// One call of each role's own service through `transport`: its status
/// code (`Ok` when it was let in).
async fn calls(urls: &[(&str, String)], secret: Option<&str>) -> Vec<(String, tonic::Code)> {
    let mut out = Vec::new();
    for (role, url) in urls {
        let secrets = secret.map(Secrets::fixed).unwrap_or_default();
        let t: Transport = Peer::remote(url, &secrets).transport().unwrap();
        let code = |r: Result<(), tonic::Status>| r.err().map_or(tonic::Code::Ok, |s| s.code());
        let result = match *role {
            "meta" => MetaServiceClient::new(t)
                .catalog(capstan_proto::meta::v1::CatalogRequest::default())
                .await
                .map(drop),
            "blob" => BlobServiceClient::new(t)
                .metrics(capstan_proto::blob::v1::BlobMetricsRequest::default())
                .await
                .map(drop),
            "auth" => AuthServiceClient::new(t)
                .info(capstan_proto::auth::v1::InfoRequest::default())
                .await
                .map(drop),
            _ => SyncServiceClient::new(t)
                .info(capstan_proto::sync::v1::InfoRequest::default())
                .await
                .map(drop),
        };
        out.push((role.to_string(), code(result)));
    }
    out
}

fn all(urls: &[(&str, String)], code: tonic::Code) -> Vec<(String, tonic::Code)> {
    urls.iter().map(|(r, _)| (r.to_string(), code)).collect()
}

/// Wait until every process in `procs` logged `n` reloads of its secrets.
fn wait_reloads(procs: &[&Process], n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for p in procs {
        while p.log_text().matches("shared secrets reloaded").count() < n {
            assert!(Instant::now() < deadline, "{} never reloaded {n}×", p.url);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test]
async fn roles_refuse_calls_without_the_shared_secret_and_rotate_it_live() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{OLD}\n")).unwrap();
    let with = |extra: serde_json::Value| {
        let mut s = json!({"secretFile": secret_file});
        crate::sandbox::merge(&mut s, extra);
        s
    };
    let meta = role(dir.path(), "meta", with(json!({})));
    let blob = role(
        dir.path(),
        "blob",
        with(json!({"meta": {"endpoints": [meta.url]}})),
    );
    let auth = role(dir.path(), "auth", with(json!({})));
    let sync = role(
        dir.path(),
        "sync",
        with(json!({"meta": {"endpoints": [meta.url]}, "blob": {"endpoints": [blob.url]}})),
    );
    let gw_cfg = dir.path().join("gateway.json");
    std::fs::write(
        &gw_cfg,
        serde_json::to_vec(&json!({
            "storage": {"rootDirectory": dir.path().join("data")},
            "http": {"port": 0},
            "services": with(json!({
                "meta": {"endpoints": [meta.url]}, "blob": {"endpoints": [blob.url]}}))
        }))
        .unwrap(),
    )
    .unwrap();
    let gw = Process::spawn(
        &["-c", gw_cfg.to_str().unwrap(), "--role", "gateway"],
        &dir.path().join("gateway.log"),
    );
    let client = reqwest::Client::new();
    wait_readyz(&client, &gw.url).await;
    push_and_pull(&client, &gw.url, "trusted/app", "v1").await;

    let urls = [
        ("meta", meta.url.clone()),
        ("blob", blob.url.clone()),
        ("auth", auth.url.clone()),
        ("sync", sync.url.clone()),
    ];
    use tonic::Code::{Ok as Let, Unauthenticated as Refused};
    assert_eq!(calls(&urls, None).await, all(&urls, Refused));
    assert_eq!(
        calls(&urls, Some("a-wrong-secret-of-some-length")).await,
        all(&urls, Refused)
    );
    assert_eq!(calls(&urls, Some(OLD)).await, all(&urls, Let));
    // svc-blob's byte paths beside its methods are behind the same secret.
    let read_bytes = |secret: Option<&'static str>| {
        let url = blob.url.clone();
        async move {
            let secrets = secret.map(Secrets::fixed).unwrap_or_default();
            let t: Transport = Peer::remote(&url, &secrets).transport().unwrap();
            let mut c = BlobClient::new(BlobServiceClient::new(t.clone()), t, Arc::new(|| None));
            let absent = format!("sha256:{}", "0".repeat(64));
            let read = c.read(ReadRequest {
                digest: absent,
                ..ReadRequest::default()
            });
            read.await.map(drop).unwrap_err()
        }
    };
    assert_eq!(read_bytes(None).await.code(), Refused);
    let answered = read_bytes(Some(OLD)).await;
    assert_eq!(
        ServiceError::from_status(&answered).code,
        capstan_oci::ErrorCode::BlobUnknown,
        "{answered:?}"
    );
    // A role's /metrics asks a scraper for the secret, in HTTP terms.
    let metrics_of = |secret: Option<&'static str>| {
        let url = format!("{}/metrics", meta.url);
        async move {
            let mut req = reqwest::Client::new().get(url);
            if let Some(s) = secret {
                req = req.bearer_auth(s);
            }
            req.send().await.unwrap()
        }
    };
    let refused = metrics_of(None).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["www-authenticate"], "Bearer");
    let scraped = metrics_of(Some(OLD)).await;
    assert_eq!(scraped.status(), 200);
    assert!(
        scraped
            .text()
            .await
            .unwrap()
            .contains("grpc_server_handled_total")
    );
    // Health stays open to probes.
    for (role, url) in &urls {
        let mut h = HealthClient::new(capstan_runtime::grpc::connect(url).unwrap());
        let r = h.check(HealthCheckRequest::default()).await;
        assert!(r.is_ok(), "{role}: {r:?}");
    }
    // Every refusal is logged where it happened.
    for p in [&meta, &blob, &auth, &sync] {
        assert!(
            p.wait_log_line(|l| l.contains("gRPC call refused"))
                .is_some(),
            "{} logged no refusal",
            p.url
        );
    }

    let refusals =
        || [&meta, &blob, &auth, &sync].map(|p| p.log_text().matches("gRPC call refused").count());
    let before = refusals();

    // Rotation, each step taken by every process before the next; the
    // registry keeps serving throughout.
    let procs = [&meta, &blob, &auth, &sync, &gw];
    std::fs::write(&secret_file, format!("{OLD}\n{NEW}\n")).unwrap();
    wait_reloads(&procs, 1);
    assert_eq!(calls(&urls, Some(NEW)).await, all(&urls, Let));
    assert_eq!(calls(&urls, Some(OLD)).await, all(&urls, Let));
    push_and_pull(&client, &gw.url, "trusted/app", "v2").await;
    std::fs::write(&secret_file, format!("{NEW}\n{OLD}\n")).unwrap();
    wait_reloads(&procs, 2);
    push_and_pull(&client, &gw.url, "trusted/app", "v3").await;
    std::fs::write(&secret_file, format!("{NEW}\n")).unwrap();
    wait_reloads(&procs, 3);
    assert_eq!(calls(&urls, Some(OLD)).await, all(&urls, Refused));
    assert_eq!(calls(&urls, Some(NEW)).await, all(&urls, Let));
    push_and_pull(&client, &gw.url, "trusted/app", "v4").await;
    // The only calls refused during the rotation were this test's last
    // ones with the old secret: none of the deployment's own.
    let deadline = Instant::now() + Duration::from_secs(10);
    while refusals() != before.map(|n| n + 1) {
        assert!(
            Instant::now() < deadline,
            "refusals {before:?} → {:?}",
            refusals()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_role_on_a_public_address_without_a_secret_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.json");
    std::fs::write(
        &cfg,
        serde_json::to_vec(&json!({"storage": {"rootDirectory": dir.path().join("data")}}))
            .unwrap(),
    )
    .unwrap();
    let out = std::process::Command::new(crate::sandbox::BIN)
        .args(["serve", "-c", cfg.to_str().unwrap()])
        .args(["--role", "meta", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("services.secret"), "{err}");
}
