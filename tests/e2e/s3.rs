//! The S3 backend (`storage.storageDriver`) against a real S3-compatible
//! server (s3s-fs): skopeo and oras push and pull in embedded mode, with
//! blob GETs redirected to the bucket (`storage.redirectBlobURL`), and in
//! distributed mode through two svc-blob replicas that share no disk.

use crate::clients::{run, write_layout_sized};
use crate::distributed::{appends_to, chunked_upload, wait_serving};
use crate::oci::{random_bytes, sha256};
use crate::sandbox::{Process, Sandbox, wait_readyz};
use capstan_testkit::{S3_ACCESS_KEY, S3_SECRET_KEY, S3Server};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

pub(crate) const BUCKET: &str = "registry";
const MIB: usize = 1024 * 1024;

/// A fresh S3 server with an empty bucket.
pub(crate) async fn s3_server() -> S3Server {
    tokio::task::spawn_blocking(|| S3Server::start(BUCKET))
        .await
        .unwrap()
}

/// `storage.storageDriver` for `server`, as a zot user writes it.
pub(crate) fn driver(server: &S3Server) -> Value {
    json!({
        "name": "s3",
        "rootdirectory": "/zot",
        "region": "us-east-1",
        "regionendpoint": server.endpoint(),
        "bucket": BUCKET,
        "forcepathstyle": true,
        "secure": false,
        "accesskey": S3_ACCESS_KEY,
        "secretkey": S3_SECRET_KEY,
        "chunksize": 5 * MIB,
    })
}

/// Whether the bucket holds blob `digest`.
pub(crate) fn in_bucket(server: &S3Server, digest: &str) -> bool {
    let (alg, hex) = digest.split_once(':').unwrap();
    server
        .object_path(BUCKET, &format!("zot/blobs/{alg}/{hex}"))
        .exists()
}

/// Every file under `dir`, at any depth.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// skopeo copies `layers` layers of about `sizes` bytes to `repo:tag` at
/// `host` and back, and every blob comes back identical.
fn skopeo_round_trip(host: &str, repo: &str, sizes: &[usize]) -> Vec<String> {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let digest = write_layout_sized(&src, "v1", sizes);
    let dest = format!("docker://{host}/{repo}:v1");
    run(Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", src.display()),
        &dest,
    ]));
    let back = work.path().join("back");
    run(Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        "--src-tls-verify=false",
        &dest,
        &format!("oci:{}:v1", back.display()),
    ]));
    let index: Value =
        serde_json::from_slice(&std::fs::read(back.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    let mut digests = Vec::new();
    for entry in std::fs::read_dir(src.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let name = format!("sha256:{}", entry.file_name().to_str().unwrap());
        if name == digest {
            // The manifest: svc-meta keeps it.
            continue;
        }
        let copied = back.join("blobs/sha256").join(entry.file_name());
        assert_eq!(
            std::fs::read(entry.path()).unwrap(),
            std::fs::read(&copied).unwrap(),
            "blob {:?} changed on the way",
            entry.file_name()
        );
        digests.push(name);
    }
    digests
}

/// oras pushes `len` random bytes as an artifact (chunked in `chunk`-byte
/// PATCHes when non-zero) and pulls them back identical; returns their
/// digest.
fn oras_round_trip(host: &str, repo: &str, len: usize, chunk: usize) -> String {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("payload.bin");
    let bytes = random_bytes(len);
    std::fs::write(&file, &bytes).unwrap();
    let out = work.path().join("out");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/oras_roundtrip.py"
    );
    let mut cmd = Command::new("python3");
    cmd.args([script, host, repo, "v1", file.to_str().unwrap()])
        .arg(&out);
    if chunk > 0 {
        cmd.arg(chunk.to_string());
    }
    let pulled = run(&mut cmd);
    let path = pulled.lines().next().expect("oras pulled a file");
    assert_eq!(std::fs::read(path.trim()).unwrap(), bytes, "oras pull");
    sha256(&bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_and_oras_push_and_pull_on_s3_in_embedded_mode() {
    let server = s3_server().await;
    let sb = Sandbox::start_with(json!({"storage": {"storageDriver": driver(&server)}})).await;
    // A layer over two parts of 5 MiB goes as a multipart upload.
    let digests = skopeo_round_trip(&sb.host(), "s3/img", &[200_000, 11 * MIB]);
    for d in &digests {
        assert!(in_bucket(&server, d), "{d} is not in the bucket");
    }
    // Nothing of the blobs is on the registry's disk.
    assert!(!sb.dir.path().join("data/blobs").exists());
    // oras: monolithic, then chunked in PATCHes of 5 MiB (joined in the
    // bucket) and of 3 MiB (streamed through once).
    for (repo, chunk) in [("s3/mono", 0), ("s3/even", 5 * MIB), ("s3/odd", 3 * MIB)] {
        let d = oras_round_trip(&sb.host(), repo, 12 * MIB + 17, chunk);
        assert!(in_bucket(&server, &d), "{repo}: {d} is not in the bucket");
    }
    // No upload is left behind in the bucket (s3s-fs keeps the emptied
    // directories of removed objects: only files count).
    let uploads = server.object_path(BUCKET, "zot/uploads");
    let left = files_under(&uploads);
    assert!(left.is_empty(), "uploads left: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_gets_redirect_to_the_bucket_except_ranges_and_heads() {
    let server = s3_server().await;
    let sb = Sandbox::start_with(json!({"storage": {
        "storageDriver": driver(&server), "redirectBlobURL": true}}))
    .await;
    let bytes = random_bytes(300_000);
    let d = sb.push_blob("redir/app", &bytes).await;
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_follow
        .get(sb.url(&format!("/v2/redir/app/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with(&server.endpoint()),
        "redirected to {location}"
    );
    // The presigned URL serves the blob with no registry credentials.
    let fetched = no_follow.get(&location).send().await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.bytes().await.unwrap(), bytes);
    // Ranges and HEADs are answered here.
    let r = no_follow
        .get(sb.url(&format!("/v2/redir/app/blobs/{d}")))
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), &bytes[10..20]);
    let r = no_follow
        .head(sb.url(&format!("/v2/redir/app/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "300000");
    // An unknown blob is still 404 here, not a redirect.
    let absent = sha256(b"absent");
    let r = no_follow
        .get(sb.url(&format!("/v2/redir/app/blobs/{absent}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Clients follow the redirect: skopeo pulls through it.
    skopeo_round_trip(&sb.host(), "redir/img", &[100_000, 200_000]);
}

/// A role of a distributed registry with a configuration file of its own
/// and a root directory of its own (no shared disk).
fn role(dir: &Path, name: &str, args: &[&str], config: Value) -> Process {
    let root = dir.join(name);
    let mut cfg = json!({"storage": {"rootDirectory": root}, "http": {"port": 0}});
    crate::sandbox::merge(&mut cfg, config);
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let mut all = vec!["-c", path.to_str().unwrap()];
    all.extend_from_slice(args);
    Process::spawn(&all, &dir.join(format!("{name}.log")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_blob_replicas_on_s3_share_no_disk_and_serve_one_registry() {
    let server = s3_server().await;
    let dir = tempfile::tempdir().unwrap();
    let grpc = ["--listen", "127.0.0.1:0"];
    let storage = json!({"storage": {"storageDriver": driver(&server)}});
    let meta = role(
        dir.path(),
        "meta",
        &[&["--role", "meta"][..], &grpc].concat(),
        json!({}),
    );
    let blob_a = role(
        dir.path(),
        "blob-a",
        &[&["--role", "blob"][..], &grpc].concat(),
        storage.clone(),
    );
    let blob_b = role(
        dir.path(),
        "blob-b",
        &[&["--role", "blob"][..], &grpc].concat(),
        storage.clone(),
    );
    let gw = role(
        dir.path(),
        "gateway",
        &["--role", "gateway"],
        json!({"services": {"meta": {"endpoints": [meta.url]},
                            "blob": {"endpoints": [blob_a.url, blob_b.url]}}}),
    );
    let client = reqwest::Client::new();
    wait_readyz(&client, &gw.url).await;
    wait_serving(&client, &gw, "blob", 2).await;
    let host = gw.url.trim_start_matches("http://").to_string();

    // A chunked upload whose PATCHes alternate between the replicas.
    let data = random_bytes(4 * MIB + 3);
    let d = sha256(&data);
    let id = chunked_upload(&client, &gw.url, "dist", &data, MIB).await;
    for replica in [&blob_a, &blob_b] {
        let appends = appends_to(replica, &id);
        assert!(
            appends >= 2,
            "replica {} appended {appends} times",
            replica.url
        );
    }
    assert!(in_bucket(&server, &d));
    for name in ["blob-a", "blob-b"] {
        assert!(
            !dir.path().join(name).join("blobs").exists(),
            "{name} kept blobs on its disk"
        );
    }
    // Real clients through both replicas.
    let digests = skopeo_round_trip(&host, "dist/img", &[300_000, 6 * MIB]);
    for d in &digests {
        assert!(in_bucket(&server, d), "{d} is not in the bucket");
    }
    oras_round_trip(&host, "dist/oras", 7 * MIB, 2 * MIB);
    drop(gw);
}

/// `storage.subPaths`: repositories under `/cloud` keep their blobs in a
/// bucket, those under `/team` in a directory of their own, the rest under
/// `rootDirectory`; a mount between stores happens only where the target's
/// store has the bytes; a collection reclaims garbage in every store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subpaths_keep_their_repositories_blobs_in_their_own_store() {
    let server = s3_server().await;
    let team = tempfile::tempdir().unwrap();
    let mut sb = Sandbox::start_with(json!({"storage": {
        "gcDelay": "1s", "gcInterval": "0s",
        "subPaths": {
            "/cloud": {"storageDriver": driver(&server), "gcDelay": "1s"},
            "/team": {"rootDirectory": team.path(), "gcDelay": "1s"}}}}))
    .await;
    let on_disk = |root: &Path, d: &str| {
        let hex = d.trim_start_matches("sha256:");
        root.join("blobs/sha256").join(&hex[..2]).join(hex).exists()
    };
    let top = sb.dir.path().join("data");
    let (c, t, o) = (random_bytes(1000), random_bytes(1001), random_bytes(1002));
    let dc = sb.push_blob("cloud/app", &c).await;
    let dt = sb.push_blob("team/app", &t).await;
    let dother = sb.push_blob("other", &o).await;
    assert!(in_bucket(&server, &dc) && !on_disk(&top, &dc) && !on_disk(team.path(), &dc));
    assert!(on_disk(team.path(), &dt) && !in_bucket(&server, &dt) && !on_disk(&top, &dt));
    assert!(on_disk(&top, &dother) && !in_bucket(&server, &dother));
    for (repo, d, bytes) in [
        ("cloud/app", &dc, &c),
        ("team/app", &dt, &t),
        ("other", &dother, &o),
    ] {
        let r = sb.get(&format!("/v2/{repo}/blobs/{d}")).await;
        assert_eq!(r.status(), 200, "{repo}");
        assert_eq!(&r.bytes().await.unwrap()[..], &bytes[..], "{repo}");
    }

    // A mount into another store: not while that store lacks the bytes…
    let mount = |to: &str, from: &str, d: &str| {
        sb.client
            .post(sb.url(&format!("/v2/{to}/blobs/uploads/?mount={d}&from={from}")))
            .send()
    };
    assert_eq!(
        mount("cloud/app", "other", &dother).await.unwrap().status(),
        202
    );
    assert_eq!(
        sb.head(&format!("/v2/cloud/app/blobs/{dother}"))
            .await
            .status(),
        404
    );
    // …within one store, yes; and across once the bytes are there too.
    assert_eq!(
        mount("team/two", "team/app", &dt).await.unwrap().status(),
        201
    );
    sb.push_blob("cloud/other", &o).await;
    assert_eq!(
        mount("cloud/app", "other", &dother).await.unwrap().status(),
        201
    );
    let r = sb.get(&format!("/v2/cloud/app/blobs/{dother}")).await;
    assert_eq!(r.status(), 200);

    // Real clients into each store.
    for d in skopeo_round_trip(&sb.host(), "cloud/img", &[100_000, 6 * MIB]) {
        assert!(in_bucket(&server, &d), "{d} is not in the bucket");
    }
    for d in skopeo_round_trip(&sb.host(), "team/img", &[100_000, 300_000]) {
        assert!(on_disk(team.path(), &d), "{d} is not in the team store");
    }

    // Nothing references the three first blobs: a collection removes them
    // from each store (dry runs until their links are older than gcDelay).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let want = [dc.clone(), dt.clone()];
    loop {
        let report = crate::gc::gc(&sb, true);
        let planned: Vec<&str> = report["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|b| b["digest"].as_str())
            .collect();
        if want.iter().all(|d| planned.contains(&d.as_str())) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not collectable: {report}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    sb.proc.kill();
    let done = crate::gc::gc(&sb, false);
    sb.start_again().await;
    assert!(!in_bucket(&server, &dc), "{done}");
    assert!(!on_disk(team.path(), &dt), "{done}");
    // Blobs that images use stay, in every store.
    crate::gc::pull_intact(&sb, "cloud/img", "v1").await;
    crate::gc::pull_intact(&sb, "team/img", "v1").await;
}

/// Without `accesskey`/`secretkey` the standard AWS chain supplies the
/// credentials: the environment, or a profile of the shared credentials
/// file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_come_from_the_aws_chain_when_not_configured() {
    let server = s3_server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut drv = driver(&server);
    let drv_map = drv.as_object_mut().unwrap();
    drv_map.remove("accesskey");
    drv_map.remove("secretkey");
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        serde_json::to_vec(&json!({
            "storage": {"rootDirectory": dir.path().join("data"), "storageDriver": drv},
            "http": {"address": "127.0.0.1", "port": 0}}))
        .unwrap(),
    )
    .unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::write(
        &credentials,
        format!(
            "[registry]\naws_access_key_id = {S3_ACCESS_KEY}\naws_secret_access_key = {S3_SECRET_KEY}\n"
        ),
    )
    .unwrap();
    let nowhere = dir.path().join("no-config");
    let ways: [(&str, Vec<(&str, &str)>); 2] = [
        (
            "environment",
            vec![
                ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
                ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
            ],
        ),
        (
            "profile",
            vec![
                ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
                ("AWS_CONFIG_FILE", nowhere.to_str().unwrap()),
                ("AWS_PROFILE", "registry"),
            ],
        ),
    ];
    let client = reqwest::Client::new();
    for (way, env) in ways {
        let p = Process::spawn_env(
            &["-c", cfg.to_str().unwrap()],
            &dir.path().join(format!("{way}.log")),
            &env,
        );
        wait_readyz(&client, &p.url).await;
        let bytes = random_bytes(1234);
        let d = sha256(&bytes);
        let r = client
            .post(format!("{}/v2/creds/app/blobs/uploads/?digest={d}", p.url))
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{way}: {}", r.text().await.unwrap());
        assert!(in_bucket(&server, &d), "{way}");
    }
}

/// Degrade, don't die (issue 13): a registry whose bucket does not answer
/// yet starts anyway and says it is not ready; a request that needs the
/// bucket gets 503 with `Retry-After`; once the store answers (again) the
/// registry is ready and serves, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_does_not_answer_makes_the_registry_wait_not_die() {
    let mut server = s3_server().await;
    let drv = driver(&server);
    server.kill();
    let sb = Sandbox::start_unready(json!({"storage": {"storageDriver": drv}})).await;
    let ready = |sb: &Sandbox| {
        let url = sb.url("/readyz");
        let client = sb.client.clone();
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    let wait_for = |want: u16| {
        let sb = &sb;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
            while ready(sb).await != want {
                assert!(std::time::Instant::now() < deadline, "/readyz never {want}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    wait_for(503).await;
    let bytes = random_bytes(5000);
    let d = sha256(&bytes);
    let push = || {
        sb.client
            .post(sb.url(&format!("/v2/wait/app/blobs/uploads/?digest={d}")))
            .body(bytes.clone())
            .send()
    };
    let r = push().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    tokio::task::block_in_place(|| server.restart());
    wait_for(200).await;
    assert_eq!(push().await.unwrap().status(), 201);
    assert!(in_bucket(&server, &d));
    // Gone again: unready and 503 again; back: serving again.
    tokio::task::block_in_place(|| server.kill());
    let r = sb.get(&format!("/v2/wait/app/blobs/{d}")).await;
    assert_eq!(r.status(), 503);
    wait_for(503).await;
    tokio::task::block_in_place(|| server.restart());
    wait_for(200).await;
    let r = sb.get(&format!("/v2/wait/app/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), bytes);
}
