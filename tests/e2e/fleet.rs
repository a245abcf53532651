//! The fleet under fault: three svc-blob replicas behind one DNS name and
//! two svc-meta replicas on Postgres, one gateway, 32 clients pushing and
//! pulling at once; one blob replica is killed with SIGKILL mid-load, then
//! started again, and a fourth appears behind the name.
//!
//! The name is real resolution, not a test hook: the gateway runs in a
//! mount namespace of its own (`unshare -m`) whose `/etc/hosts` is a file
//! of the test's, so the test changes what `blob.capstan.test` resolves to
//! the way compose's DNS does when a container comes or goes. The blob
//! replicas listen on one port at 127.0.0.11, .12, .13 and .14 (all of
//! 127/8 is loopback on Linux).

use crate::distributed::{metas_on_postgres, readyz, role_at, serving};
use crate::oci::*;
use crate::sandbox::{Process, wait_readyz};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

const NAME: &str = "blob.capstan.test";
const CLIENTS: usize = 32;
/// Bytes of each pushed layer: several chunks of a blob stream.
const LAYER: usize = 3 * 1024 * 1024 + 17;

/// A blob replica on `ip:port`, sharing `dir/data` with the others.
fn blob_at(dir: &Path, ip: &str, port: u16, log: &str) -> Process {
    role_at(dir, "blob", &format!("{ip}:{port}"), log)
}

/// A port free on every address the replicas use.
fn free_port(ips: &[&str]) -> u16 {
    'next: loop {
        let probe = std::net::TcpListener::bind("127.0.0.11:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        for ip in ips {
            if std::net::TcpListener::bind((*ip, port)).is_err() {
                continue 'next;
            }
        }
        return port;
    }
}

/// Make `hosts` (the gateway's `/etc/hosts`) say `NAME` is `ips`. Written
/// in place: the file is bind-mounted, so its inode must stay.
fn name_is(hosts: &Path, ips: &[&str]) {
    let mut text = String::from("127.0.0.1 localhost\n");
    for ip in ips {
        text.push_str(&format!("{ip} {NAME}\n"));
    }
    std::fs::write(hosts, text).unwrap();
}

/// What one pushed image is: its tag, manifest digest, layer digest.
#[derive(Clone, Debug)]
struct Pushed {
    tag: String,
    manifest: String,
    layer: String,
}

#[derive(Default)]
struct Tally {
    pushed: Mutex<Vec<Pushed>>,
    /// Pushes that failed, and whether each started before the kill.
    push_failures: Mutex<Vec<(bool, String)>>,
    /// GETs of a blob or manifest that failed (status or broken body).
    get_failures: Mutex<Vec<String>>,
    pulls: AtomicUsize,
    pulls_after_kill: AtomicUsize,
    pushes_after_kill: AtomicUsize,
}

/// Push one image of a fresh layer as `repo:tag` (a chunked upload: POST,
/// two PATCHes, PUT; then the config and the manifest).
async fn push(client: &reqwest::Client, base: &str, tag: &str) -> Result<Pushed, String> {
    let layer = random_bytes(LAYER);
    let layer_digest = sha256(&layer);
    let r = client
        .post(format!("{base}/v2/fleet/blobs/uploads/"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 202 {
        return Err(format!("POST upload: {}", r.status()));
    }
    let mut loc = r.headers()["location"].to_str().unwrap().to_string();
    let half = LAYER / 2;
    for (start, end) in [(0, half), (half, LAYER)] {
        let r = client
            .patch(format!("{base}{loc}"))
            .header("Content-Range", format!("{start}-{}", end - 1))
            .body(layer[start..end].to_vec())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status() != 202 {
            return Err(format!(
                "PATCH: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ));
        }
        loc = r.headers()["location"].to_str().unwrap().to_string();
    }
    let r = client
        .put(format!("{base}{loc}?digest={layer_digest}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 201 {
        return Err(format!(
            "PUT upload: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        ));
    }
    let config = format!("{{\"tag\":\"{tag}\"}}").into_bytes();
    let config_digest = sha256(&config);
    let r = client
        .post(format!(
            "{base}/v2/fleet/blobs/uploads/?digest={config_digest}"
        ))
        .body(config.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 201 {
        return Err(format!("POST config: {}", r.status()));
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": LAYER}]}))
    .unwrap();
    let r = client
        .put(format!("{base}/v2/fleet/manifests/{tag}"))
        .header("Content-Type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 201 {
        return Err(format!(
            "PUT manifest: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        ));
    }
    Ok(Pushed {
        tag: tag.to_string(),
        manifest: sha256(&manifest),
        layer: layer_digest,
    })
}

/// Pull `p` by tag and check every byte: `Err` names the GET that failed.
async fn pull(client: &reqwest::Client, base: &str, p: &Pushed) -> Result<(), String> {
    let r = client
        .get(format!("{base}/v2/fleet/manifests/{}", p.tag))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .map_err(|e| format!("manifest {}: {e}", p.tag))?;
    if r.status() != 200 {
        return Err(format!("manifest {}: {}", p.tag, r.status()));
    }
    let body = r
        .bytes()
        .await
        .map_err(|e| format!("manifest {}: {e}", p.tag))?;
    if sha256(&body) != p.manifest {
        return Err(format!("manifest {}: other bytes", p.tag));
    }
    let r = client
        .get(format!("{base}/v2/fleet/blobs/{}", p.layer))
        .send()
        .await
        .map_err(|e| format!("blob {}: {e}", p.layer))?;
    if r.status() != 200 {
        return Err(format!("blob {}: {}", p.layer, r.status()));
    }
    let body = r
        .bytes()
        .await
        .map_err(|e| format!("blob {}: {e}", p.layer))?;
    if body.len() != LAYER || sha256(&body) != p.layer {
        return Err(format!(
            "blob {}: {} bytes, other digest",
            p.layer,
            body.len()
        ));
    }
    Ok(())
}

/// One client: push, then pull a random image pushed so far, until `stop`.
async fn client_loop(
    id: usize,
    base: String,
    tally: Arc<Tally>,
    killed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let client = reqwest::Client::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let after_kill = killed.load(Ordering::Relaxed);
        let tag = format!("c{id}-{n}");
        n += 1;
        match push(&client, &base, &tag).await {
            Ok(p) => {
                tally.pushed.lock().await.push(p);
                if after_kill {
                    tally.pushes_after_kill.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => tally
                .push_failures
                .lock()
                .await
                .push((!after_kill, format!("{tag}: {e}"))),
        }
        let pick = {
            let pushed = tally.pushed.lock().await;
            (!pushed.is_empty()).then(|| pushed[rand::random_range(0..pushed.len())].clone())
        };
        if let Some(p) = pick {
            let after_kill = killed.load(Ordering::Relaxed);
            match pull(&client, &base, &p).await {
                Ok(()) => {
                    tally.pulls.fetch_add(1, Ordering::Relaxed);
                    if after_kill {
                        tally.pulls_after_kill.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => tally.get_failures.lock().await.push(e),
            }
        }
    }
}

/// Wait (at most `limit`) until `/readyz` counts `serving` of `replicas`
/// blob replicas; how long it took.
async fn blob_replicas_become(
    client: &reqwest::Client,
    gw: &Process,
    serving_n: u64,
    replicas: u64,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let (_, body) = readyz(client, gw).await;
        let known = body["roles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["role"] == "blob")
            .and_then(|r| r["replicas"].as_u64())
            .unwrap_or(0);
        if serving(&body, "blob") == serving_n && known == replicas {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "blob replicas not {serving_n} serving of {replicas} in {limit:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until the fleet has acknowledged `n` more pushes than `from`.
async fn pushes_reach(tally: &Tally, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while tally.pushed.lock().await.len() < n {
        assert!(Instant::now() < deadline, "pushes stalled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many blob RPCs a replica's log shows.
fn rpcs(replica: &Process) -> usize {
    replica
        .log_text()
        .lines()
        .filter(|l| l.contains("rpc{method=\"/capstan.blob.v1.BlobService/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_replica_killed_mid_load_costs_no_get_and_no_acknowledged_push() {
    let dir = tempfile::tempdir().unwrap();
    let ips = ["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"];
    let port = free_port(&ips);
    let hosts = dir.path().join("hosts");
    name_is(&hosts, &ips[..3]);
    let (_pg, [meta_1, meta_2]) = metas_on_postgres(dir.path()).await;
    let mut blobs: Vec<Process> = ips[..3]
        .iter()
        .enumerate()
        .map(|(i, ip)| blob_at(dir.path(), ip, port, &format!("blob-{i}.log")))
        .collect();
    let cfg = dir.path().join("gateway.json");
    std::fs::write(
        &cfg,
        serde_json::to_vec(&json!({
            "storage": {"rootDirectory": dir.path().join("data")},
            "http": {"port": 0},
            "services": {"meta": {"endpoints": [meta_1.url, meta_2.url]},
                         "blob": {"endpoints": [format!("http://{NAME}:{port}")]}}
        }))
        .unwrap(),
    )
    .unwrap();
    let gw = Process::spawn_with_hosts(
        &["-c", cfg.to_str().unwrap(), "--role", "gateway"],
        &dir.path().join("gateway.log"),
        &hosts,
    );
    let client = reqwest::Client::new();
    wait_readyz(&client, &gw.url).await;
    blob_replicas_become(&client, &gw, 3, 3, Duration::from_secs(60)).await;

    let tally = Arc::new(Tally::default());
    let (killed, stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let workers: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(client_loop(
                id,
                gw.url.clone(),
                tally.clone(),
                killed.clone(),
                stop.clone(),
            ))
        })
        .collect();

    // Mid-load: SIGKILL the second replica.
    pushes_reach(&tally, 2 * CLIENTS).await;
    blobs[1].kill();
    killed.store(true, Ordering::Relaxed);
    let out = blob_replicas_become(&client, &gw, 2, 3, Duration::from_secs(30)).await;
    eprintln!("killed blob replica out of rotation after {out:?}");
    assert!(
        out <= Duration::from_secs(5),
        "out of rotation after {out:?}"
    );
    let at_kill = tally.pushed.lock().await.len();
    pushes_reach(&tally, at_kill + 2 * CLIENTS).await;

    // Start it again at its address, and a fourth behind the name.
    blobs[1] = blob_at(dir.path(), ips[1], port, "blob-1-again.log");
    blobs.push(blob_at(dir.path(), ips[3], port, "blob-3.log"));
    name_is(&hosts, &ips);
    let back = blob_replicas_become(&client, &gw, 4, 4, Duration::from_secs(30)).await;
    eprintln!("restarted and new replica serving after {back:?}");
    let before = (rpcs(&blobs[1]), rpcs(&blobs[3]));
    let now = tally.pushed.lock().await.len();
    pushes_reach(&tally, now + CLIENTS).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    // Both took traffic without anything being restarted.
    assert!(
        rpcs(&blobs[1]) > before.0,
        "the restarted replica took no calls"
    );
    assert!(rpcs(&blobs[3]) > before.1, "the new replica took no calls");

    let get_failures = tally.get_failures.lock().await.clone();
    assert!(get_failures.is_empty(), "GETs failed: {get_failures:#?}");
    let push_failures = tally.push_failures.lock().await.clone();
    let late: Vec<_> = push_failures.iter().filter(|(before, _)| !before).collect();
    assert!(
        late.is_empty(),
        "pushes started after the kill failed: {late:#?}"
    );
    assert!(tally.pushes_after_kill.load(Ordering::Relaxed) >= 2 * CLIENTS);
    assert!(tally.pulls_after_kill.load(Ordering::Relaxed) > 0);
    // Every acknowledged push reads back whole, through every replica in
    // turn.
    let pushed = tally.pushed.lock().await.clone();
    for p in &pushed {
        pull(&client, &gw.url, p).await.unwrap();
    }
    eprintln!(
        "{} pushes acknowledged ({} after the kill), {} pulls ({} after the kill), \
         {} pushes in flight at the kill failed",
        pushed.len(),
        tally.pushes_after_kill.load(Ordering::Relaxed),
        tally.pulls.load(Ordering::Relaxed),
        tally.pulls_after_kill.load(Ordering::Relaxed),
        push_failures.len()
    );
}
