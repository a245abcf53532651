//! Garbage collection (`storage.gc`, `gcDelay`, `gcInterval`, `capstan gc`)
//! against the real binary: what it removes, what it must never remove, and
//! the dry run that says so beforehand.

use crate::oci::{OCI_MANIFEST, random_bytes, sha256};
use crate::sandbox::{BIN, Sandbox};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The stderr of a `capstan gc` that fails.
pub(crate) fn gc_output(sb: &Sandbox, dry_run: bool) -> String {
    let cfg = sb.dir.path().join("config.json");
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["gc", "--json", "-c", cfg.to_str().unwrap()]);
    if dry_run {
        cmd.arg("--dry-run");
    }
    let out = cmd.output().expect("run capstan gc");
    assert!(!out.status.success(), "capstan gc succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `capstan gc [--dry-run] --json -c <config>` on a sandbox's configuration.
pub(crate) fn gc(sb: &Sandbox, dry_run: bool) -> Value {
    gc_logged(sb, dry_run).0
}

/// [`gc`], with what it logged (stderr, at info).
pub(crate) fn gc_logged(sb: &Sandbox, dry_run: bool) -> (Value, String) {
    let cfg = sb.dir.path().join("config.json");
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["gc", "--json", "-c", cfg.to_str().unwrap()])
        .env("RUST_LOG", "info");
    if dry_run {
        cmd.arg("--dry-run");
    }
    let out = cmd.output().expect("run capstan gc");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "capstan gc failed: {log}");
    let report = serde_json::from_slice(&out.stdout).expect("gc report is JSON");
    (report, log)
}

/// (repo, digest) of every link in a report.
fn links(report: &Value) -> BTreeSet<(String, String)> {
    report["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["repo"].as_str().unwrap().to_string(),
                l["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Digests of every blob in a report.
fn blobs(report: &Value) -> BTreeSet<String> {
    report["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["digest"].as_str().unwrap().to_string())
        .collect()
}

/// Where a test's blob bytes live: on the filesystem under the sandbox's
/// root, or in a bucket of an S3 server of its own.
pub(crate) enum Blobs {
    Fs,
    S3(capstan_testkit::S3Server),
}

impl Blobs {
    async fn s3() -> Blobs {
        Blobs::S3(crate::s3::s3_server().await)
    }

    /// A configuration with `storage` and this backend.
    fn config(&self, mut storage: Value, rest: Value) -> Value {
        if let Blobs::S3(server) = self {
            storage["storageDriver"] = crate::s3::driver(server);
        }
        let mut cfg = json!({ "storage": storage });
        crate::sandbox::merge(&mut cfg, rest);
        cfg
    }

    /// The file that holds a blob's bytes (s3s-fs keeps each object as a
    /// file).
    fn file(&self, sb: &Sandbox, digest: &str) -> std::path::PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        match self {
            Blobs::Fs => sb
                .dir
                .path()
                .join("data/blobs/sha256")
                .join(&hex[..2])
                .join(hex),
            Blobs::S3(server) => {
                server.object_path(crate::s3::BUCKET, &format!("zot/blobs/sha256/{hex}"))
            }
        }
    }

    fn holds(&self, sb: &Sandbox, digest: &str) -> bool {
        self.file(sb, digest).exists()
    }
}

/// Dry runs until one lists `want` among its links (they are older than
/// `gcDelay` by then), for at most `limit`.
fn wait_for_links(sb: &Sandbox, want: &BTreeSet<(String, String)>, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let report = gc(sb, true);
        if want.is_subset(&links(&report)) {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "links {want:?} not collectable within {limit:?}: {report}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Pull `repo:reference` whole and check every byte against its digest.
pub(crate) async fn pull_intact(sb: &Sandbox, repo: &str, reference: &str) {
    let r = sb
        .client
        .get(sb.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{repo}:{reference}");
    let m: Value = r.json().await.unwrap();
    let mut descriptors = vec![m["config"].clone()];
    descriptors.extend(m["layers"].as_array().unwrap().iter().cloned());
    for d in descriptors {
        let digest = d["digest"].as_str().unwrap();
        let r = sb.get(&format!("/v2/{repo}/blobs/{digest}")).await;
        assert_eq!(r.status(), 200, "{repo} blob {digest}");
        let body = r.bytes().await.unwrap();
        assert_eq!(sha256(&body), digest, "{repo} blob {digest} corrupt");
    }
}

/// An image manifest of `config` and `layers` (bytes already pushed).
fn manifest(config: &[u8], layers: &[&[u8]]) -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(config), "size": config.len()},
        "layers": layers.iter().map(|l| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256(l), "size": l.len()})).collect::<Vec<_>>(),
    })
}

/// A blob shared by two repositories survives deleting one repository's
/// image; links nothing references go and so do the bytes nothing links;
/// a dry run changes nothing and lists exactly what the real run removes.
/// A push that found an old unreferenced blob present and skipped its
/// upload still gets its manifest accepted (distribution#3045).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_what_nothing_references_and_the_dry_run_says_so_first() {
    removes_what_nothing_references(Blobs::Fs).await;
}

/// The same on the S3 backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_on_s3_removes_what_nothing_references_and_the_dry_run_says_so_first() {
    removes_what_nothing_references(Blobs::s3().await).await;
}

async fn removes_what_nothing_references(store: Blobs) {
    // No scheduled runs: `capstan gc` runs them. A lookup keeps a link
    // young for `gcDelay`, long enough for the checks below on a busy
    // machine.
    let mut sb =
        Sandbox::start_with(store.config(json!({"gcDelay": "5s", "gcInterval": "0s"}), json!({})))
            .await;
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let (shared, own) = (random_bytes(3000), random_bytes(2000));
    for repo in ["one", "two"] {
        sb.push_blob(repo, &config).await;
        sb.push_blob(repo, &shared).await;
    }
    sb.push_blob("one", &own).await;
    let m_one = manifest(&config, &[&shared, &own]);
    let m_two = manifest(&config, &[&shared]);
    let d_one = sb.put_manifest("one", "v1", OCI_MANIFEST, &m_one).await;
    sb.put_manifest("two", "v1", OCI_MANIFEST, &m_two).await;
    let orphan = random_bytes(1234);
    let d_orphan = sb.push_blob("one", &orphan).await;
    // For distribution#3045 below: pushed, referenced by nothing yet.
    let later = random_bytes(777);
    let d_later = sb.push_blob("late", &later).await;
    sb.push_blob("late", &config).await;
    assert_eq!(
        sb.delete(&format!("/v2/one/manifests/{d_one}"))
            .await
            .status(),
        202
    );

    let mut expected: BTreeSet<(String, String)> = [&config[..], &shared, &own, &orphan]
        .iter()
        .map(|b| ("one".to_string(), sha256(b)))
        .collect();
    let late_links = [
        ("late".to_string(), d_later.clone()),
        ("late".to_string(), sha256(&config)),
    ];
    expected.extend(late_links.iter().cloned());
    wait_for_links(&sb, &expected, Duration::from_secs(60));
    // `late`'s push checks for its blobs, finds them and skips their
    // upload: the lookups make the links young again, and its manifest,
    // sent now, is accepted.
    for (_, d) in &late_links {
        assert_eq!(sb.head(&format!("/v2/late/blobs/{d}")).await.status(), 200);
    }
    let renewed = links(&gc(&sb, true));
    assert!(
        late_links.iter().all(|l| !renewed.contains(l)),
        "{renewed:?}"
    );
    sb.put_manifest("late", "v1", OCI_MANIFEST, &manifest(&config, &[&later]))
        .await;

    let planned = gc(&sb, true);
    let one_links: BTreeSet<_> = expected
        .difference(&late_links.iter().cloned().collect())
        .cloned()
        .collect();
    assert_eq!(links(&planned), one_links, "{planned}");
    // Only `one`'s own bytes and the orphan's may go: `two` links the rest.
    let expected_blobs = BTreeSet::from([sha256(&own), d_orphan.clone()]);
    assert_eq!(blobs(&planned), expected_blobs, "{planned}");
    assert_eq!(
        planned["bytes_freed"].as_u64().unwrap(),
        (own.len() + orphan.len()) as u64
    );
    // The dry run changed nothing (a lookup here would renew the link: a
    // blob in use is not garbage).
    assert!(store.holds(&sb, &d_orphan));

    // A real run beside the running registry is refused: its gateway
    // would not hear of the changes. Stopped, it goes ahead.
    assert!(gc_output(&sb, false).contains("stop the registry first"));
    sb.proc.kill();
    let done = gc(&sb, false);
    sb.start_again().await;
    assert_eq!(done["dry_run"], false);
    assert_eq!(links(&done), links(&planned));
    assert_eq!(blobs(&done), blobs(&planned));
    assert_eq!(done["bytes_freed"], planned["bytes_freed"]);
    for d in &expected_blobs {
        assert!(!store.holds(&sb, d), "{d} still stored");
    }
    assert_eq!(
        sb.get(&format!("/v2/one/blobs/{d_orphan}")).await.status(),
        404
    );
    assert_eq!(
        sb.head(&format!("/v2/one/blobs/{}", sha256(&shared)))
            .await
            .status(),
        404
    );
    pull_intact(&sb, "two", "v1").await;
    pull_intact(&sb, "late", "v1").await;
    // Nothing left to collect.
    let after = gc(&sb, true);
    assert!(
        links(&after).is_empty() && blobs(&after).is_empty(),
        "{after}"
    );
}

/// One image a pusher pushed.
struct Pushed {
    repo: String,
    tag: String,
}

/// GC running every second during 100 concurrent pushes deletes nothing any
/// of them references: the old garbage goes, every pushed image pulls back
/// intact, and no push fails (distribution#3045). The pushes upload blobs
/// that are, at that very moment, garbage being collected (the same bytes
/// were pushed to a repository that never referenced them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_during_100_concurrent_pushes_deletes_nothing_they_reference() {
    concurrent_pushes_keep_their_blobs(Blobs::Fs).await;
}

/// The same on the S3 backend, where removals and stores meet through
/// lease objects in the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_on_s3_during_100_concurrent_pushes_deletes_nothing_they_reference() {
    concurrent_pushes_keep_their_blobs(Blobs::s3().await).await;
}

async fn concurrent_pushes_keep_their_blobs(store: Blobs) {
    let sb = Arc::new(
        Sandbox::start_with(store.config(json!({"gcDelay": "8s", "gcInterval": "1s"}), json!({})))
            .await,
    );
    const SHARED: usize = 40;
    let shared = |k: usize| format!("layer shared by garbage and pushes {k}").into_bytes();
    let mut junk = Vec::new();
    for k in 0..SHARED {
        sb.push_blob("junk", &shared(k)).await;
    }
    for _ in 0..50 {
        junk.push(sb.push_blob("junk", &random_bytes(512)).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut pushers = Vec::new();
    for i in 0..100 {
        let (sb, stop) = (sb.clone(), stop.clone());
        pushers.push(tokio::spawn(async move {
            let repo = format!("app{i}");
            let mut pushed = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 400 {
                let base = shared((i + n) % SHARED);
                let own = random_bytes(256);
                let config = format!(r#"{{"architecture":"amd64","os":"linux","n":{n}}}"#);
                // Like docker: skip the upload of a layer the repository has.
                let have = sb
                    .head(&format!("/v2/{repo}/blobs/{}", sha256(&base)))
                    .await
                    .status();
                if have != 200 {
                    sb.push_blob(&repo, &base).await;
                }
                sb.push_blob(&repo, &own).await;
                sb.push_blob(&repo, config.as_bytes()).await;
                let tag = format!("v{n}");
                let m = manifest(config.as_bytes(), &[&base, &own]);
                sb.put_manifest(&repo, &tag, OCI_MANIFEST, &m).await;
                pushed.push(Pushed {
                    repo: repo.clone(),
                    tag,
                });
                n += 1;
            }
            pushed
        }));
    }
    // The junk goes while the pushes go on; then two more collections.
    // (Watched on disk: a lookup through the registry would renew them.)
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut left = junk.clone();
    while !left.is_empty() {
        assert!(Instant::now() < deadline, "junk not collected: {left:?}");
        left.retain(|d| store.holds(&sb, d));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for d in &junk {
        assert_eq!(sb.head(&format!("/v2/junk/blobs/{d}")).await.status(), 404);
    }
    let runs = |sb: &Sandbox| {
        sb.proc
            .log_text()
            .matches("garbage collection done")
            .count()
    };
    let seen = runs(&sb);
    while runs(&sb) < seen + 2 {
        assert!(Instant::now() < deadline, "collections stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut images = Vec::new();
    for p in pushers {
        images.extend(p.await.expect("a push failed"));
    }
    assert!(images.len() >= 100, "only {} pushes", images.len());
    for p in &images {
        pull_intact(&sb, &p.repo, &p.tag).await;
    }
    let log = sb.proc.log_text();
    assert!(
        log.contains("unreferenced blob removed"),
        "the collections removed nothing"
    );
    assert!(!log.contains("garbage collection failed"), "{log}");
    // The shared layers were garbage in `junk` only.
    for k in 0..SHARED {
        assert!(store.holds(&sb, &sha256(&shared(k))) || !used(&images, k, SHARED));
    }
}

/// Whether any pushed image used shared layer `k`.
fn used(images: &[Pushed], k: usize, shared: usize) -> bool {
    images.iter().any(|p| {
        let i: usize = p.repo.trim_start_matches("app").parse().unwrap();
        let n: usize = p.tag.trim_start_matches('v').parse().unwrap();
        (i + n) % shared == k
    })
}

/// `capstan gc` refuses a configuration it cannot use and says why.
#[test]
fn gc_names_a_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        serde_json::to_vec(&json!({"storage": {"rootDirectory": dir.path(), "gcDelay": "soon"}}))
            .unwrap(),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["gc", "--dry-run", "-c", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("soon"), "{err}");
}

/// Scrub (`extensions.scrub`) finds a blob whose file changed on disk: it
/// is never served again, the registry says it lacks it, and pushing it
/// again heals the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_takes_a_corrupt_blob_out_of_service_and_a_push_heals_it() {
    scrub_heals(Blobs::Fs).await;
}

/// The same on the S3 backend (the object's file in s3s-fs is damaged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_on_s3_takes_a_corrupt_blob_out_of_service_and_a_push_heals_it() {
    scrub_heals(Blobs::s3().await).await;
}

async fn scrub_heals(store: Blobs) {
    let sb = Sandbox::start_with(store.config(
        json!({}),
        json!({"extensions": {"scrub": {"interval": "1s"}}}),
    ))
    .await;
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = random_bytes(4096);
    sb.push_blob("img", &config).await;
    let d = sb.push_blob("img", &layer).await;
    sb.put_manifest("img", "v1", OCI_MANIFEST, &manifest(&config, &[&layer]))
        .await;
    let mut bad = layer.clone();
    bad[100] ^= 1;
    std::fs::write(store.file(&sb, &d), &bad).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    // Set aside by svc-blob, then unlinked by svc-meta.
    while !sb
        .proc
        .log_text()
        .contains("lost blob unlinked from every repository")
    {
        assert!(
            Instant::now() < deadline,
            "scrub never found the corrupt blob"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sb.proc
            .log_text()
            .contains("corrupt blob taken out of service")
    );
    assert!(sb.proc.log_text().contains(&d));
    let r = sb.get(&format!("/v2/img/blobs/{d}")).await;
    assert_ne!(r.status(), 200, "a corrupt blob was served");
    assert_eq!(sb.head(&format!("/v2/img/blobs/{d}")).await.status(), 404);
    let metrics = sb.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("capstan_scrub_corrupt_blobs_total{") && l.ends_with(" 1")),
        "{metrics}"
    );
    // A client finds it missing and uploads it again.
    sb.push_blob("img", &layer).await;
    pull_intact(&sb, "img", "v1").await;
}

/// `storage.subPaths` entries' own `gc`, `gcDelay` and `retention`: a
/// store with `gc: false` keeps its garbage and its tags; one with a long
/// `gcDelay` keeps a young orphan that the top level's short delay lets
/// go; an entry's retention replaces the top level's for its repositories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subpaths_collect_by_their_own_settings() {
    let dirs = tempfile::tempdir().unwrap();
    let mut sb = Sandbox::start_with(json!({"storage": {
        "gcDelay": "1s", "gcInterval": "0s",
        "retention": {"policies": [{"repositories": ["**"],
            "keepTags": [{"patterns": ["^keep"]}]}]},
        "subPaths": {
            "/frozen": {"rootDirectory": dirs.path().join("frozen"), "gc": false},
            "/slow": {"rootDirectory": dirs.path().join("slow"), "gcDelay": "1h",
                "retention": {"policies": []}}}}}))
    .await;
    let repos = ["app", "frozen/app", "slow/app"];
    let mut orphans = Vec::new();
    for repo in repos {
        orphans.push(sb.push_blob(repo, &random_bytes(700)).await);
        sb.push_image(repo, "other", 1).await;
    }
    // Dry runs until the top level's orphan is collectable: the others
    // never are (one store does not collect, the other waits an hour).
    let deadline = Instant::now() + Duration::from_secs(60);
    let planned = loop {
        let report = gc(&sb, true);
        if links(&report).contains(&("app".to_string(), orphans[0].clone())) {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "top-level orphan not collectable: {report}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let planned_repos: BTreeSet<String> = links(&planned).into_iter().map(|(r, _)| r).collect();
    assert_eq!(
        planned_repos,
        BTreeSet::from(["app".to_string()]),
        "{planned}"
    );
    let retained: Vec<(String, String)> = planned["retention"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["repo"].as_str().unwrap().to_string(),
                r["tag"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    // Only the top level's repository loses its tag (and then, untagged,
    // its manifest): the others' retention keeps every tag.
    assert!(retained.iter().all(|(repo, _)| repo == "app"), "{planned}");
    assert!(
        retained.contains(&("app".to_string(), "other".to_string())),
        "{planned}"
    );

    sb.proc.kill();
    gc(&sb, false);
    sb.start_again().await;
    let status = |repo: &str, d: &str| {
        let (sb, path) = (&sb, format!("/v2/{repo}/blobs/{d}"));
        async move { sb.head(&path).await.status() }
    };
    assert_eq!(status("app", &orphans[0]).await, 404);
    assert_eq!(status("frozen/app", &orphans[1]).await, 200);
    assert_eq!(status("slow/app", &orphans[2]).await, 200);
    assert_eq!(sb.get("/v2/app/manifests/other").await.status(), 404);
    for repo in ["frozen/app", "slow/app"] {
        assert_eq!(
            sb.get(&format!("/v2/{repo}/manifests/other"))
                .await
                .status(),
            200,
            "{repo}"
        );
        pull_intact(&sb, repo, "other").await;
    }
}
