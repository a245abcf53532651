//! The binary's own interface: `verify`, `serve` on embedded defaults, TLS
//! with HTTP/2.

use crate::oci::*;
use crate::sandbox::{BIN, Sandbox, wait_readyz};
use serde_json::json;
use std::process::Command;

fn verify(config: &serde_json::Value) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(&path, serde_json::to_vec(config).unwrap()).unwrap();
    let out = Command::new(BIN).arg("verify").arg(&path).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// zot reads keys whatever their case, and its YAML examples write them in
/// lower case; a new user's `verify` of such a file stopped at
/// "missing field `baseDN`".
#[test]
fn verify_reads_zot_yaml_keys_in_lower_case() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zot.yaml");
    std::fs::write(
        &path,
        "storage:\n  rootdirectory: /tmp/zot\n  gcdelay: 2h\n\
         http:\n  address: 127.0.0.1\n  port: 8080\n  realm: zot\n  auth:\n\
         \x20   ldap:\n      address: ldap.example.org\n      port: 389\n\
         \x20     basedn: ou=users,dc=example,dc=org\n      userattribute: uid\n\
         \x20     subtreesearch: true\n      insecure: true\n\
         \x20   faildelay: 5\n\
         \x20 accesscontrol:\n    repositories:\n      \"**\":\n\
         \x20       defaultpolicy: [read]\n\
         log:\n  level: debug\n",
    )
    .unwrap();
    let out = Command::new(BIN).arg("verify").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("unknown key"), "{stderr}");
}

#[test]
fn verify_accepts_a_zot_config_and_names_bad_keys() {
    let (ok, stdout, stderr) = verify(&json!({
        "distSpecVersion": "1.1.0",
        "storage": {"rootDirectory": "/tmp/zot", "gc": true, "dedupe": true},
        "http": {"address": "127.0.0.1", "port": "8080"},
        "log": {"level": "debug"},
        "extensions": {"search": {"enable": true}}
    }));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("is valid"), "{stdout}");

    let (ok, _, stderr) = verify(&json!({"http": {"port": "eighty"}}));
    assert!(!ok);
    assert!(stderr.contains("http.port"), "{stderr}");

    let (ok, _, stderr) = verify(&json!({"storage": {"gcDelay": "soon"}}));
    assert!(!ok);
    assert!(stderr.contains("storage.gcDelay"), "{stderr}");

    // zot auth sections are read; inconsistent ones are refused by name.
    let (ok, _, stderr) = verify(&json!({"http": {
        "auth": {"htpasswd": {"path": "/etc/htpasswd"}, "apikey": true, "failDelay": 1},
        "accessControl": {"repositories": {"**": {"defaultPolicy": ["read"]}}}}}));
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = verify(&json!({"http": {"auth": {"apikey": true}}}));
    assert!(!ok);
    assert!(stderr.contains("http.auth.apikey"), "{stderr}");
    let (ok, _, stderr) = verify(&json!({"http": {
        "auth": {"htpasswd": {"path": "/etc/htpasswd"}},
        "accessControl": {"repositories": {"**": {"defaultPolicy": ["write"]}}}}}));
    assert!(!ok);
    assert!(
        stderr.contains("defaultPolicy") && stderr.contains("write"),
        "{stderr}"
    );
    let (ok, _, stderr) =
        verify(&json!({"http": {"auth": {"openid": {"providers": {"corp": {"clientid": "x"}}}}}}));
    assert!(!ok);
    assert!(
        stderr.contains("http.auth.openid.providers.corp.issuer"),
        "{stderr}"
    );
    let (ok, _, stderr) =
        verify(&json!({"http": {"auth": {"ldap": {"address": "ldap", "baseDN": ""}}}}));
    assert!(!ok);
    assert!(stderr.contains("http.auth.ldap.baseDN"), "{stderr}");

    // The metadata database: SQLite or Postgres URLs the driver reads;
    // passwords never printed.
    let (ok, stdout, stderr) =
        verify(&json!({"storage": {"database": "postgres://meta:hunter2@db:5432/meta"}}));
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("postgres://meta:***@db:5432/meta") && !stdout.contains("hunter2"),
        "{stdout}"
    );
    for bad in [
        "mysql://db/meta",
        "postgres://db:port/meta",
        "sqlite://x?mode=bogus",
    ] {
        let (ok, _, stderr) = verify(&json!({"storage": {"database": bad}}));
        assert!(!ok, "{bad}");
        assert!(stderr.contains("storage.database"), "{bad}: {stderr}");
    }

    // zot features Capstan lacks are named: refused where running without
    // them would change who may do what, reported as ignored otherwise.
    let (ok, _, stderr) = verify(&json!({"http": {"auth": {"bearer": {"realm": "zot",
        "service": "zot", "oidc": {"issuer": "https://k8s", "audiences": ["zot"]}}}}}));
    assert!(!ok);
    assert!(stderr.contains("http.auth.bearer.oidc"), "{stderr}");
    let (ok, _, stderr) = verify(&json!({"http": {"ReadOnly": true}}));
    assert!(!ok);
    assert!(stderr.contains("http.ReadOnly"), "{stderr}");
    let (ok, _, stderr) = verify(&json!({"http": {"ReadOnly": false,
        "Ratelimit": {"Rate": 10}}, "cluster": {"members": ["a:1"]},
        "extensions": {"sync": {"enable": false, "registries": [{"urls": ["https://r"],
            "credentialHelper": "ecr"}]}}}));
    assert!(ok, "{stderr}");
    for k in [
        "http.Ratelimit",
        "cluster",
        "extensions.sync.registries.0.credentialHelper",
    ] {
        assert!(
            stderr.contains(&format!("`{k}` is ignored")),
            "{k}: {stderr}"
        );
    }
    assert!(!stderr.contains("unknown key"), "{stderr}");

    let (ok, _, stderr) = verify(&json!({"http": {"prot": 1}}));
    assert!(ok);
    assert!(stderr.contains("unknown key `http.prot`"), "{stderr}");

    // zot's Redis options (its examples/config-redis-all-options.json, as a
    // session driver): those that apply are read, go-redis's pool settings
    // are named as ignored, and nothing is unknown.
    let (ok, _, stderr) = verify(&json!({"http": {"auth": {
        "htpasswd": {"path": "/etc/htpasswd"},
        "sessionDriver": {"name": "redis", "keyprefix": "zot",
            "addr": ["host1:6379", "host2:6379", "host3:6379"], "client_name": "client",
            "db": 1, "protocol": 3, "username": "user1", "password": "pass1",
            "sentinel_username": "user2", "sentinel_password": "pass2", "max_retries": 3,
            "min_retry_backoff": "5s", "max_retry_backoff": "5s", "dial_timeout": "5s",
            "read_timeout": "5s", "write_timeout": "5s", "context_timeout_enabled": false,
            "pool_fifo": false, "pool_size": 3, "pool_timeout": "5s", "min_idle_conns": 1,
            "max_idle_conns": 3, "max_active_conns": 3, "conn_max_idle_time": "5s",
            "conn_max_lifetime": "5s", "max_redirects": 3, "read_only": false,
            "route_by_latency": false, "route_randomly": false, "master_name": "zotmeta",
            "disable_identity": false, "identity_suffix": "zotmeta", "unstable_resp3": false}}}}));
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("unknown key"), "{stderr}");
    for k in ["pool_size", "client_name", "read_only", "unstable_resp3"] {
        assert!(
            stderr.contains(&format!("`http.auth.sessionDriver.{k}` is ignored")),
            "{k}: {stderr}"
        );
    }
    for k in ["addr", "master_name", "db", "password", "dial_timeout"] {
        assert!(
            !stderr.contains(&format!("sessionDriver.{k}`")),
            "{k}: {stderr}"
        );
    }
    let (ok, _, stderr) = verify(&json!({"http": {"auth": {
        "htpasswd": {"path": "/etc/htpasswd"},
        "sessionDriver": {"name": "redis", "addr": ["h1:1", "h2:2"], "db": 2}}}}));
    assert!(!ok);
    assert!(stderr.contains("http.auth.sessionDriver.db"), "{stderr}");
    let (ok, _, stderr) = verify(&json!({"http": {"auth": {
        "htpasswd": {"path": "/etc/htpasswd"},
        "sessionDriver": {"name": "redis", "url": "redis://h:1?addr=h2:2&dial_timeout=3",
            "db": 2}}}}));
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("`http.auth.sessionDriver.db` is ignored")
            && stderr.contains("`http.auth.sessionDriver.url?dial_timeout` is ignored"),
        "{stderr}"
    );

    let out = Command::new(BIN)
        .args(["verify", "/nonexistent/c.json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test]
async fn serve_without_arguments_uses_embedded_defaults() {
    let home = tempfile::tempdir().unwrap();
    let log = home.path().join("log");
    let mut child = Command::new(BIN)
        .arg("serve")
        .env("XDG_DATA_HOME", home.path())
        // The default port may be taken on a test machine; everything else is default.
        .env("CAPSTAN_HTTP_PORT", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let data = home.path().join("capstan");
    assert!(line.contains("http://127.0.0.1:"), "{line}");
    assert!(line.contains(&data.display().to_string()), "{line}");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    let client = reqwest::Client::new();
    wait_readyz(&client, &url).await;
    let blob = random_bytes(1234);
    let d = sha256(&blob);
    let r = client
        .post(format!("{url}/v2/laptop/blobs/uploads/?digest={d}"))
        .body(blob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let hex = d.trim_start_matches("sha256:");
    assert!(
        data.join("blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .is_file()
    );
    assert!(data.join("meta.db").is_file());
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn tls_serves_http2() {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let sb = Sandbox::start_with(json!({"http": {"tls": {"cert": cert, "key": key}}})).await;
    assert!(sb.proc.url.starts_with("https://"), "{}", sb.proc.url);
    let data = random_bytes(2 * 1024 * 1024);
    let d = sb.push_blob("secure", &data).await;
    let r = sb.get(&format!("/v2/secure/blobs/{d}")).await;
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(sha256(&r.bytes().await.unwrap()), d);
    // Plain HTTP to the TLS port is not served.
    let plain = sb.proc.url.replace("https://", "http://");
    assert!(
        reqwest::get(format!("{plain}/v2/"))
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
    );
}

#[tokio::test]
async fn sigterm_stops_every_role_cleanly() {
    let mut sb = Sandbox::start().await;
    // Traffic first, so the manifest change feed and pooled connections are open.
    sb.push_image("bye", "v1", 1).await;
    let r = sb.get("/v2/bye/manifests/v1").await;
    assert_eq!(r.status(), 200);
    let status = sb.proc.terminate(std::time::Duration::from_secs(15));
    let status = status.expect("capstan still running 15 s after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
}

/// The compose deployment's files are consistent: `docker-compose` accepts
/// the compose file (no engine needed) and `capstan verify` the config.
#[test]
fn the_compose_deployment_validates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/compose");
    let out = Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(dir)
        .output()
        .expect("docker-compose (run scripts/setup.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .arg("verify")
        .arg(format!("{dir}/config.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let htpasswd = std::fs::read_to_string(format!("{dir}/htpasswd")).unwrap();
    assert!(htpasswd.starts_with("demo:$2"), "bcrypt demo entry");
}
