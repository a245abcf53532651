//! Login sessions shared through Redis by several registries: a session
//! made on one works on all, and one that Redis no longer holds (logged out
//! elsewhere, its key deleted by a third party, its TTL cut) is refused on
//! every registry within the bound the README states, even right after it
//! was used there. A Redis that dies makes sessions unavailable (503), never
//! anonymous; a Sentinel group's failover keeps them working.
//!
//! The bound is checked without timing luck: an answer that accepted a
//! session must have been asked for before the session ended plus the
//! bound, whatever the load, because the gateway counts an answer's reuse
//! from before it asked and svc-auth read Redis after that.

use crate::auth::htpasswd;
use crate::sandbox::{Sandbox, basic_client};
use capstan_testkit::{Redis, RedisSentinelGroup, wait_until};
use serde_json::{Value, json};
use sha2::Digest as _;
use std::time::{Duration, Instant};

/// How long a gateway may reuse a session's answer (svc-auth's
/// `SESSION_RECHECK`, stated in the README).
const RECHECK: Duration = Duration::from_secs(1);
/// Generous limit for anything that must happen eventually.
const EVENTUALLY: Duration = Duration::from_secs(120);

fn config(driver: Value, users: &std::path::Path) -> Value {
    json!({"http": {"auth": {
        "htpasswd": {"path": htpasswd(users, &[("alice", "pw")])},
        "sessionDriver": driver}}})
}

/// Log in on `sb` with a password; returns the session id of the cookie.
async fn login(sb: &Sandbox) -> String {
    let r = basic_client("alice", "pw")
        .get(sb.url("/v2/"))
        .header("X-ZOT-API-CLIENT", "zot-ui")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("session="))
        .expect("a session cookie");
    cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("session=")
        .to_string()
}

/// The status of `GET /v2/` on `sb` with session `s` alone.
async fn use_on(sb: &Sandbox, s: &str) -> u16 {
    reqwest::Client::new()
        .get(sb.url("/v2/"))
        .header("Cookie", format!("session={s}"))
        .header("X-ZOT-API-CLIENT", "zot-ui")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// End session `s` through `sb`'s logout.
async fn logout(sb: &Sandbox, s: &str) {
    let r = reqwest::Client::new()
        .post(sb.url("/zot/auth/logout"))
        .header("Cookie", format!("session={s}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The Redis key of session `s`.
fn key_of(prefix: &str, s: &str) -> String {
    format!(
        "{prefix}:{}",
        hex::encode(sha2::Sha256::digest(s.as_bytes()))
    )
}

/// Poll `sb` with session `s` until it is refused. Every acceptance must
/// have been asked for before `deadline`; once refused, it stays refused.
async fn refused_by(sb: &Sandbox, s: &str, deadline: Instant) {
    let limit = Instant::now() + EVENTUALLY;
    loop {
        let asked = Instant::now();
        match use_on(sb, s).await {
            401 => break,
            200 => assert!(
                asked < deadline,
                "{}: session accepted {:?} after it should have ended",
                sb.url(""),
                asked - deadline
            ),
            other => panic!("{}: unexpected status {other}", sb.url("")),
        }
        assert!(Instant::now() < limit, "session never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        assert_eq!(use_on(sb, s).await, 401, "a refused session came back");
    }
}

/// Two registries sharing one Redis for sessions.
async fn pair(redis: &Redis, prefix: &str) -> (tempfile::TempDir, Sandbox, Sandbox) {
    let users = tempfile::tempdir().unwrap();
    let cfg = config(
        json!({"name": "redis", "url": redis.url(), "keyprefix": prefix}),
        users.path(),
    );
    let a = Sandbox::start_with(cfg.clone()).await;
    let b = Sandbox::start_with(cfg).await;
    (users, a, b)
}

/// Sessions in one Redis are honoured by every registry that shares it;
/// a logout on one ends the session on the other; a dead Redis makes
/// sessions unavailable, not anonymous.
#[tokio::test]
async fn redis_sessions_work_across_registries_and_fail_closed_when_redis_dies() {
    let mut redis = Redis::start();
    let (_users, a, b) = pair(&redis, "capstan-test").await;
    let s = login(&a).await;
    assert_eq!(use_on(&b, &s).await, 200, "a session made on A works on B");
    // Stored under the prefix, hashed, with the cookie's lifetime as TTL.
    let key = key_of("capstan-test", &s);
    let ttl: i64 = redis.cli(&["TTL", &key]).parse().unwrap();
    assert!((7000..=7200).contains(&ttl), "ttl {ttl}");
    assert_eq!(redis.cli(&["EXISTS", &format!("capstan-test:{s}")]), "0");
    // Logout on B ends it on A (used there just before).
    assert_eq!(use_on(&a, &s).await, 200);
    logout(&b, &s).await;
    refused_by(&a, &s, Instant::now() + RECHECK).await;
    // Redis dies: a session B never saw is refused with 503, not served
    // as anonymous; requests without a cookie are unaffected.
    let s3 = login(&a).await;
    redis.kill();
    assert_eq!(use_on(&b, &s3).await, 503);
    assert_eq!(
        basic_client("", "")
            .get(b.url("/v2/"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        basic_client("alice", "pw")
            .get(b.url("/v2/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// A third party deletes a session's key (an operator, another registry's
/// logout, a flush): both registries refuse it within the bound, though
/// both had just used it.
#[tokio::test]
async fn a_session_deleted_in_redis_is_refused_everywhere_within_the_bound() {
    let redis = Redis::start();
    let (_users, a, b) = pair(&redis, "del").await;
    for round in 0..3 {
        let s = login(&a).await;
        assert_eq!(use_on(&a, &s).await, 200);
        assert_eq!(use_on(&b, &s).await, 200);
        if round == 2 {
            assert_eq!(redis.cli(&["FLUSHALL"]), "OK");
        } else {
            assert_eq!(redis.cli(&["DEL", &key_of("del", &s)]), "1");
        }
        let deadline = Instant::now() + RECHECK;
        tokio::join!(refused_by(&a, &s, deadline), refused_by(&b, &s, deadline));
    }
}

/// A third party cuts a session key's TTL: once the key expires, the
/// session is refused on both registries within the bound, though both had
/// just used it. (svc-auth also never lets an answer outlive the TTL it
/// read, but Redis's own clock may run a few milliseconds behind, so the
/// moment a key dies is Redis's to tell and the bound is what is checked.)
#[tokio::test]
async fn a_session_whose_ttl_is_cut_ends_when_its_key_expires() {
    let redis = Redis::start();
    let (_users, a, b) = pair(&redis, "ttl").await;
    let s = login(&a).await;
    assert_eq!(use_on(&a, &s).await, 200);
    assert_eq!(use_on(&b, &s).await, 200);
    assert_eq!(redis.cli(&["PEXPIRE", &key_of("ttl", &s), "400"]), "1");
    let deadline = Instant::now() + Duration::from_millis(400) + RECHECK;
    tokio::join!(refused_by(&a, &s, deadline), refused_by(&b, &s, deadline));
}

/// Sessions kept in a Redis Sentinel group (a master, a replica, three
/// sentinels) keep working when the master is killed: while no master
/// answers they are unavailable (503), never refused or anonymous, and
/// after the failover they work again on both registries, new logins and
/// logouts included.
#[tokio::test]
async fn sessions_follow_a_sentinel_failover_and_never_fall_back_to_anonymous() {
    let mut group = tokio::task::spawn_blocking(|| RedisSentinelGroup::start("capstan"))
        .await
        .unwrap();
    let users = tempfile::tempdir().unwrap();
    let cfg = config(
        json!({"name": "redis", "keyprefix": "sso", "master_name": "capstan",
               "addr": group.sentinel_addrs(), "dial_timeout": "500ms",
               "read_timeout": "1s"}),
        users.path(),
    );
    let a = Sandbox::start_with(cfg.clone()).await;
    let b = Sandbox::start_with(cfg).await;
    let s = login(&a).await;
    assert_eq!(use_on(&b, &s).await, 200);
    // The replica has the session before its master dies.
    let key = key_of("sso", &s);
    wait_until("the session to reach the replica", EVENTUALLY, || {
        group.replica.cli(&["EXISTS", &key]) == "1"
    });
    let replica = group.replica.port();
    group.master.kill();
    let limit = Instant::now() + EVENTUALLY;
    let mut unavailable = 0;
    loop {
        let failed_over = group.master_port() == Some(replica);
        let (on_a, on_b) = tokio::join!(use_on(&a, &s), use_on(&b, &s));
        for status in [on_a, on_b] {
            assert!(
                status == 200 || status == 503,
                "during the failover a session got {status}"
            );
            unavailable += usize::from(status == 503);
        }
        if failed_over && on_a == 200 && on_b == 200 {
            break;
        }
        assert!(Instant::now() < limit, "sessions did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        unavailable > 0,
        "no request met the dead master; the test proved nothing"
    );
    // The new master takes new sessions and logouts.
    let s2 = login(&b).await;
    assert_eq!(use_on(&a, &s2).await, 200);
    assert_eq!(group.replica.cli(&["EXISTS", &key_of("sso", &s2)]), "1");
    logout(&a, &s2).await;
    refused_by(&b, &s2, Instant::now() + RECHECK).await;
    assert_eq!(use_on(&b, &s).await, 200, "the first session survived");
}
