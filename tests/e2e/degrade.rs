//! Degrade, don't die: with Postgres, Redis and svc-meta stopped in turn
//! under a light load, every request that needs what is down gets 503 (with
//! Retry-After), never a 500 or a wrong answer; full service is back within
//! seconds of the dependency's return; no role is restarted. Roles started
//! while Postgres is not up yet wait for it instead of exiting.

use crate::auth::htpasswd;
use crate::distributed::{readyz, serving};
use crate::oci::*;
use crate::sandbox::{Process, basic_client};
use capstan_testkit::{Postgres, Redis};
use serde_json::json;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "degrade-test-shared-secret";
/// Generous limit for anything that must happen eventually.
const EVENTUALLY: Duration = Duration::from_secs(120);

/// Start role `role` on `listen` with `config` (the shared secret added).
fn role(dir: &Path, role: &str, listen: &str, mut config: serde_json::Value) -> Process {
    let cfg = dir.join(format!("{role}.json"));
    config["services"]["secret"] = json!(SECRET);
    config["log"] = json!({"level": "info"});
    std::fs::write(&cfg, serde_json::to_vec(&config).unwrap()).unwrap();
    let log = dir.join(format!("{role}-{}.log", listen.replace(':', "_")));
    let args = ["-c", cfg.to_str().unwrap(), "--role", role];
    if role == "gateway" {
        return Process::spawn(&args, &log);
    }
    Process::spawn(&[&args[..], &["--listen", listen]].concat(), &log)
}

/// What the load saw: (phase, request, status).
type Seen = Arc<Mutex<Vec<(&'static str, &'static str, u16)>>>;

/// Requests through the gateway until `stop`: a session's `/v2/` (svc-auth
/// and Redis), the catalog (svc-meta and Postgres), a blob and a tag push
/// (svc-meta, svc-blob), each recorded under the phase current then.
async fn load(
    base: String,
    session: String,
    layer: String,
    manifest: Vec<u8>,
    phase: Arc<Mutex<&'static str>>,
    seen: Seen,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let alice = basic_client("alice", "pw");
    let plain = reqwest::Client::new();
    let mut i = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        i += 1;
        let requests = [
            (
                "session",
                plain
                    .get(format!("{base}/v2/"))
                    .header("Cookie", format!("session={session}"))
                    .header("X-ZOT-API-CLIENT", "zot-ui"),
            ),
            ("catalog", alice.get(format!("{base}/v2/_catalog"))),
            ("blob", alice.get(format!("{base}/v2/app/blobs/{layer}"))),
            (
                "push",
                alice
                    .put(format!("{base}/v2/app/manifests/t{}", i % 20))
                    .header("Content-Type", OCI_MANIFEST)
                    .body(manifest.clone()),
            ),
        ];
        for (what, req) in requests {
            let now = *phase.lock().unwrap();
            let status = match req.timeout(Duration::from_secs(60)).send().await {
                Ok(r) => {
                    let s = r.status().as_u16();
                    if s == 503 {
                        assert!(
                            r.headers().contains_key("retry-after"),
                            "{what}: 503 without Retry-After"
                        );
                    }
                    let _ = r.bytes().await;
                    s
                }
                Err(e) => panic!("{what} in {now}: no HTTP answer: {e}"),
            };
            seen.lock().unwrap().push((now, what, status));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until `GET path` with alice's password answers `want`.
async fn wait_status(base: &str, path: &str, want: u16, what: &str) -> Duration {
    let start = Instant::now();
    let alice = basic_client("alice", "pw");
    loop {
        let got = alice
            .get(format!("{base}{path}"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if got.as_ref().is_ok_and(|s| *s == want) {
            return start.elapsed();
        }
        assert!(start.elapsed() < EVENTUALLY, "{what}: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status of alice's request for a new API key.
async fn create_key(base: &str) -> u16 {
    basic_client("alice", "pw")
        .post(format!("{base}/zot/auth/apikey"))
        .json(&json!({"label": "ci"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Wait until the gateway's `/readyz` answers `want` with `meta` serving
/// replicas of svc-meta.
async fn wait_ready(gw: &Process, want: u16, meta: u64) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let (status, body) = readyz(&client, gw).await;
        if status == want && serving(&body, "meta") == meta {
            return;
        }
        assert!(Instant::now() < deadline, "/readyz {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn postgres_redis_and_meta_go_down_in_turn_and_only_503s_are_seen() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let (meta_db, auth_db) = (pg.create_database("meta"), pg.create_database("auth"));
    let mut redis = Redis::start();
    // The roles start while Postgres is down, and must wait for it.
    pg.stop();
    let data = d.join("data");
    let meta_config = json!({"storage": {"rootDirectory": data, "database": meta_db}});
    let meta_listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut meta = role(d, "meta", &meta_listen, meta_config.clone());
    let blob = role(
        d,
        "blob",
        "127.0.0.1:0",
        json!({"storage": {"rootDirectory": data},
               "services": {"meta": {"endpoints": [meta.url]}}}),
    );
    let auth_config = json!({
        "storage": {"rootDirectory": data},
        "http": {"auth": {
            "htpasswd": {"path": htpasswd(d, &[("alice", "pw")])},
            "apikey": true,
            "database": auth_db,
            "sessionDriver": {"name": "redis", "url": redis.url()}
        }}
    });
    let auth = role(d, "auth", "127.0.0.1:0", auth_config.clone());
    let mut gw_config = auth_config.clone();
    gw_config["http"]["port"] = json!(0);
    gw_config["services"] = json!({
        "meta": {"endpoints": [meta.url]},
        "blob": {"endpoints": [blob.url]},
        "auth": {"endpoints": [auth.url]}
    });
    let gw = role(d, "gateway", "", gw_config);
    let base = gw.url.clone();

    // Up, but not ready, and 503 for what needs the database.
    wait_ready(&gw, 503, 0).await;
    wait_status(&base, "/v2/", 200, "password login without the database").await;
    let r = basic_client("alice", "pw")
        .get(format!("{base}/v2/_catalog"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body = r.text().await.unwrap();
    assert!(
        body.contains("UNAVAILABLE") && body.contains("database"),
        "{body}"
    );
    assert_eq!(
        create_key(&base).await,
        503,
        "API keys while their database is down"
    );
    pg.restart();
    wait_ready(&gw, 200, 1).await;
    wait_status(&base, "/v2/_catalog", 200, "catalog once Postgres is up").await;
    assert_eq!(
        create_key(&base).await,
        201,
        "API keys once their database is up"
    );

    // Something to read and write under load, and a session in Redis.
    let alice = basic_client("alice", "pw");
    let layer = random_bytes(50_000);
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    for b in [&layer, &config] {
        let r = alice
            .post(format!("{base}/v2/app/blobs/uploads/?digest={}", sha256(b)))
            .body(b.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(&layer), "size": layer.len()}]
    }))
    .unwrap();
    let r = alice
        .get(format!("{base}/v2/"))
        .header("X-ZOT-API-CLIENT", "zot-ui")
        .send()
        .await
        .unwrap();
    let session = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("session="))
        .map(|c| c.split(';').next().unwrap().to_string())
        .expect("a session cookie");

    let phase = Arc::new(Mutex::new("up"));
    let seen: Seen = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = tokio::spawn(load(
        base.clone(),
        session,
        sha256(&layer),
        manifest,
        phase.clone(),
        seen.clone(),
        stop.clone(),
    ));
    let set = |p: &'static str| *phase.lock().unwrap() = p;
    // Until the load has seen `what` answer `status` in phase `p`.
    let until_seen = |p: &'static str, what: &'static str, status: u16| {
        let seen = seen.clone();
        async move {
            let deadline = Instant::now() + EVENTUALLY;
            while !seen.lock().unwrap().contains(&(p, what, status)) {
                assert!(Instant::now() < deadline, "{what} never {status} in {p}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    until_seen("up", "push", 201).await;

    set("postgres down");
    pg.stop();
    until_seen("postgres down", "catalog", 503).await;
    until_seen("postgres down", "push", 503).await;
    // svc-meta reports itself not serving while its database is gone.
    wait_ready(&gw, 503, 0).await;
    set("postgres back");
    pg.restart();
    let back = Instant::now();
    until_seen("postgres back", "push", 201).await;
    until_seen("postgres back", "catalog", 200).await;
    wait_ready(&gw, 200, 1).await;
    let pg_recovery = back.elapsed();

    set("redis down");
    redis.cli(&["SAVE"]);
    redis.kill();
    until_seen("redis down", "session", 503).await;
    until_seen("redis down", "catalog", 200).await;
    set("redis back");
    // Restarted on its saved data: the session is still there.
    redis.restart();
    let back = Instant::now();
    until_seen("redis back", "session", 200).await;
    let redis_recovery = back.elapsed();

    set("meta down");
    meta.kill();
    wait_ready(&gw, 503, 0).await;
    until_seen("meta down", "catalog", 503).await;
    until_seen("meta down", "push", 503).await;
    set("meta back");
    meta = role(d, "meta", &meta_listen, meta_config);
    let back = Instant::now();
    wait_ready(&gw, 200, 1).await;
    until_seen("meta back", "catalog", 200).await;
    until_seen("meta back", "push", 201).await;
    let meta_recovery = back.elapsed();

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    running.await.unwrap();
    // Only 503s while something was down; nothing else ever.
    let seen = seen.lock().unwrap();
    let wrong: Vec<_> = seen
        .iter()
        .filter(|(_, _, s)| !matches!(s, 200 | 201 | 503))
        .collect();
    assert!(wrong.is_empty(), "{wrong:?}");
    assert!(
        !seen.iter().any(|(p, _, s)| *p == "up" && *s == 503),
        "503 while everything was up"
    );
    eprintln!(
        "recovered: postgres {pg_recovery:?}, redis {redis_recovery:?}, meta {meta_recovery:?}; \
         {} requests",
        seen.len()
    );
    for (name, limit) in [
        ("postgres", pg_recovery),
        ("redis", redis_recovery),
        ("meta", meta_recovery),
    ] {
        assert!(
            limit < Duration::from_secs(40),
            "{name} took {limit:?} to recover"
        );
    }
    // No role was restarted (meta was, by the test).
    for mut p in [gw, auth, blob] {
        assert!(p.is_running(), "{} exited", p.url);
    }
    drop(meta);
}
