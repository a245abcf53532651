//! Login sessions: a random secret id (the `session` cookie) naming the user
//! and groups it was created for, valid for [`SESSION_TTL`].
//!
//! Two drivers, as zot's `sessionDriver`: `local` keeps one small file per
//! session under the storage root (so a restart keeps sessions), `redis`
//! keeps them in Redis with a TTL, so every auth service (and so every
//! gateway) sharing that Redis accepts them. Only a SHA-256 of the id is
//! stored: a copy of the store does not hand out live cookies.
//!
//! The store is the truth: a session is live exactly while its record is,
//! whoever removes the record (a logout here or on another registry sharing
//! the Redis, an operator's `DEL`, a shortened TTL, a flush). [`Sessions::get`]
//! says how much longer the record lives, so that no answer built on it is
//! reused past that.

use crate::error::AuthError;
use crate::redis_conn::{Options, RedisStore};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lifetime of a session, and the cookie's max age (zot's 7200 s).
pub const SESSION_TTL: Duration = Duration::from_secs(7200);

/// What a session remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub username: String,
    pub groups: Vec<String>,
    /// Unix seconds after which the session is gone.
    pub expires_at: u64,
    /// Where the user is known (`htpasswd`, `ldap`, `openid`…).
    #[serde(default)]
    pub source: String,
}

/// A live session and how much longer its record lives in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSession {
    pub session: Session,
    pub remaining: Duration,
}

/// Hex SHA-256 of a session id: the storage key, and the handle gateways
/// use to drop a cached session.
pub fn session_hash(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn now_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// Time left until unix second `expires_at`.
pub(crate) fn until(expires_at: u64) -> Duration {
    Duration::from_millis((u128::from(expires_at) * 1000).saturating_sub(now_millis()) as u64)
}

fn new_id() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// Where sessions live.
#[derive(Debug)]
pub enum Sessions {
    Local {
        dir: PathBuf,
    },
    Redis {
        store: Box<RedisStore>,
        prefix: String,
    },
}

impl Sessions {
    /// Files under `dir` (created when missing, private to the process user).
    pub fn local(dir: &Path) -> Result<Self, AuthError> {
        std::fs::create_dir_all(dir)?;
        set_private(dir)?;
        Ok(Sessions::Local {
            dir: dir.to_path_buf(),
        })
    }

    /// Redis as `options` describe it (one server, a cluster, or a
    /// Sentinel group), connected on first use; a Redis that is down makes
    /// every session call fail with `Unavailable` within the configured
    /// timeouts (about a second by default).
    pub fn redis(options: &Options, prefix: &str) -> Result<Self, AuthError> {
        Ok(Sessions::Redis {
            store: Box::new(RedisStore::new(options).map_err(AuthError::redis)?),
            prefix: prefix.to_string(),
        })
    }

    /// One Redis server at `url`.
    #[cfg(test)]
    pub fn redis_url(url: &str, prefix: &str) -> Result<Self, AuthError> {
        let driver = capstan_runtime::config::auth::SessionDriverConfig {
            name: "redis".into(),
            url: Some(url.into()),
            ..Default::default()
        };
        let options = Options::from_config(&driver).map_err(|message| AuthError::Unavailable {
            what: "session store (redis)",
            message,
        })?;
        Self::redis(&options, prefix)
    }

    fn redis_key(prefix: &str, id: &str) -> String {
        format!("{prefix}:{}", session_hash(id))
    }

    /// Start a session; returns its secret id.
    pub async fn create(
        &self,
        username: &str,
        groups: &[String],
        source: &str,
    ) -> Result<String, AuthError> {
        let id = new_id();
        let s = Session {
            username: username.to_string(),
            groups: groups.to_vec(),
            expires_at: now() + SESSION_TTL.as_secs(),
            source: source.to_string(),
        };
        let value = serde_json::to_string(&s).expect("session json");
        match self {
            Sessions::Local { dir } => {
                let path = dir.join(session_hash(&id));
                let tmp = path.with_extension("tmp");
                tokio::fs::write(&tmp, value).await?;
                tokio::fs::rename(&tmp, &path).await?;
            }
            Sessions::Redis { store, prefix } => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(Self::redis_key(prefix, &id))
                    .arg(value)
                    .arg("EX")
                    .arg(SESSION_TTL.as_secs());
                let () = store.query(&cmd).await.map_err(AuthError::redis)?;
            }
        }
        Ok(id)
    }

    /// The live session named `id`, or `None` when unknown or expired.
    pub async fn get(&self, id: &str) -> Result<Option<LiveSession>, AuthError> {
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        // The record, and how long the store keeps it (None: no limit).
        let (text, kept_for): (Option<String>, Option<Duration>) = match self {
            Sessions::Local { dir } => {
                match tokio::fs::read_to_string(dir.join(session_hash(id))).await {
                    Ok(t) => (Some(t), None),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, None),
                    Err(e) => return Err(e.into()),
                }
            }
            Sessions::Redis { store, prefix } => {
                // Two reads of one key, sent together. The key can only go
                // away between them (ids are never reused), which PTTL
                // then reports as -2.
                let key = Self::redis_key(prefix, id);
                let mut pipe = redis::pipe();
                pipe.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
                let (text, pttl): (Option<String>, i64) =
                    store.query_pipe(&pipe).await.map_err(AuthError::redis)?;
                match pttl {
                    -2 => (None, None),
                    -1 => (text, None),
                    ms => (text, Some(Duration::from_millis(ms.max(0) as u64))),
                }
            }
        };
        let Some(s) = text.and_then(|t| serde_json::from_str::<Session>(&t).ok()) else {
            return Ok(None);
        };
        if s.expires_at <= now() {
            self.delete(id).await?;
            return Ok(None);
        }
        let own = until(s.expires_at);
        let remaining = kept_for.map_or(own, |k| k.min(own));
        if remaining.is_zero() {
            return Ok(None);
        }
        Ok(Some(LiveSession {
            session: s,
            remaining,
        }))
    }

    /// End the session (no error when it does not exist).
    pub async fn delete(&self, id: &str) -> Result<(), AuthError> {
        match self {
            Sessions::Local { dir } => {
                match tokio::fs::remove_file(dir.join(session_hash(id))).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            Sessions::Redis { store, prefix } => {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(Self::redis_key(prefix, id));
                let _: usize = store.query(&cmd).await.map_err(AuthError::redis)?;
                Ok(())
            }
        }
    }

    /// Keep a short-lived record (an OpenID login in progress) under `id`
    /// for `ttl`, beside the sessions (so any auth replica finds it).
    pub async fn put_pending(&self, id: &str, value: &str, ttl: Duration) -> Result<(), AuthError> {
        let key = format!("pending-{}", session_hash(id));
        match self {
            Sessions::Local { dir } => {
                let record =
                    serde_json::json!({"expires_at": now() + ttl.as_secs(), "value": value});
                let path = dir.join(&key);
                let tmp = path.with_extension("tmp");
                tokio::fs::write(&tmp, record.to_string()).await?;
                tokio::fs::rename(&tmp, &path).await?;
            }
            Sessions::Redis { store, prefix } => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(format!("{prefix}:{key}"))
                    .arg(value)
                    .arg("EX")
                    .arg(ttl.as_secs().max(1));
                let () = store.query(&cmd).await.map_err(AuthError::redis)?;
            }
        }
        Ok(())
    }

    /// Take (read and delete) the record `id`; `None` when unknown or
    /// expired. A record is used once.
    pub async fn take_pending(&self, id: &str) -> Result<Option<String>, AuthError> {
        let key = format!("pending-{}", session_hash(id));
        match self {
            Sessions::Local { dir } => {
                let path = dir.join(&key);
                let text = match tokio::fs::read_to_string(&path).await {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                // Whoever removes the file owns the record.
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                if v["expires_at"].as_u64().is_none_or(|t| t <= now()) {
                    return Ok(None);
                }
                Ok(v["value"].as_str().map(str::to_string))
            }
            Sessions::Redis { store, prefix } => {
                let mut cmd = redis::cmd("GETDEL");
                cmd.arg(format!("{prefix}:{key}"));
                store.query_once(&cmd).await.map_err(AuthError::redis)
            }
        }
    }

    /// Remove expired local sessions (Redis expires its own); returns how
    /// many went.
    pub async fn sweep(&self) -> usize {
        let Sessions::Local { dir } = self else {
            return 0;
        };
        let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
            return 0;
        };
        let mut removed = 0;
        let now = now();
        while let Ok(Some(e)) = entries.next_entry().await {
            let expired = match tokio::fs::read_to_string(e.path()).await {
                Ok(t) => serde_json::from_str::<serde_json::Value>(&t)
                    .ok()
                    .and_then(|v| v["expires_at"].as_u64())
                    .is_none_or(|t| t <= now),
                Err(_) => false,
            };
            if expired && tokio::fs::remove_file(e.path()).await.is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

fn set_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_testkit::Redis;

    async fn behaves_as_a_session_store(s: &Sessions) {
        let id = s
            .create("alice", &["dev".into()], "htpasswd")
            .await
            .unwrap();
        assert_eq!(id.len(), 64);
        let live = s.get(&id).await.unwrap().unwrap();
        assert!(live.remaining > Duration::from_secs(7000), "{live:?}");
        let got = live.session;
        assert_eq!(got.username, "alice");
        assert_eq!(got.groups, vec!["dev"]);
        assert!(got.expires_at > now() + 7000);
        let other = s.create("alice", &[], "htpasswd").await.unwrap();
        assert_ne!(id, other);
        assert!(s.get(&new_id()).await.unwrap().is_none());
        assert!(s.get("../../etc/passwd").await.unwrap().is_none());
        s.delete(&id).await.unwrap();
        assert!(s.get(&id).await.unwrap().is_none());
        s.delete(&id).await.unwrap();
        assert!(s.get(&other).await.unwrap().is_some());
        // Pending records are taken once, and not after their time.
        s.put_pending("state-1", "{\"x\":1}", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            s.take_pending("state-1").await.unwrap().as_deref(),
            Some("{\"x\":1}")
        );
        assert_eq!(s.take_pending("state-1").await.unwrap(), None);
        assert_eq!(s.take_pending("never").await.unwrap(), None);
    }

    #[tokio::test]
    async fn local_sessions_survive_a_new_store_on_the_same_dir() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sessions::local(&dir.path().join("sessions")).unwrap();
        behaves_as_a_session_store(&s).await;
        let id = s.create("bob", &[], "htpasswd").await.unwrap();
        let again = Sessions::local(&dir.path().join("sessions")).unwrap();
        assert_eq!(
            again.get(&id).await.unwrap().unwrap().session.username,
            "bob"
        );
        // Stored under the hash, never the id itself.
        let names: Vec<String> = std::fs::read_dir(dir.path().join("sessions"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| *n != id));
        assert!(names.contains(&session_hash(&id)));
    }

    #[tokio::test]
    async fn local_sweep_removes_expired_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sessions::local(dir.path()).unwrap();
        let live = s.create("a", &[], "htpasswd").await.unwrap();
        let old = Session {
            username: "b".into(),
            groups: vec![],
            expires_at: now() - 1,
            source: String::new(),
        };
        std::fs::write(
            dir.path().join(session_hash("x")),
            serde_json::to_string(&old).unwrap(),
        )
        .unwrap();
        assert_eq!(s.sweep().await, 1);
        assert!(s.get(&live).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn redis_sessions_carry_a_ttl_and_a_prefix() {
        let redis = Redis::start();
        let s = Sessions::redis_url(&redis.url(), "zotsession").unwrap();
        behaves_as_a_session_store(&s).await;
        let id = s.create("carol", &[], "htpasswd").await.unwrap();
        let key = format!("zotsession:{}", session_hash(&id));
        let ttl: i64 = redis.cli(&["TTL", &key]).parse().unwrap();
        assert!((7100..=7200).contains(&ttl), "ttl {ttl}");
        // Expiry is Redis's: a shortened TTL shortens what the session
        // reports, and once the key is gone, so is the session.
        assert_eq!(redis.cli(&["PEXPIRE", &key, "60000"]), "1");
        let left = s.get(&id).await.unwrap().unwrap().remaining;
        assert!(
            left <= Duration::from_secs(60) && left > Duration::from_secs(50),
            "{left:?}"
        );
        assert_eq!(redis.cli(&["PERSIST", &key]), "1");
        let left = s.get(&id).await.unwrap().unwrap().remaining;
        assert!(left > Duration::from_secs(7000), "{left:?}");
        assert_eq!(redis.cli(&["DEL", &key]), "1");
        assert!(s.get(&id).await.unwrap().is_none());
    }

    fn driver(v: serde_json::Value) -> Options {
        let d: capstan_runtime::config::auth::SessionDriverConfig =
            serde_json::from_value(v).unwrap();
        Options::from_config(&d).unwrap()
    }

    #[tokio::test]
    async fn sessions_live_in_a_redis_cluster() {
        let cluster = tokio::task::spawn_blocking(capstan_testkit::RedisCluster::start)
            .await
            .unwrap();
        let s = Sessions::redis(
            &driver(serde_json::json!({"name": "redis", "addr": cluster.addrs()})),
            "zotsession",
        )
        .unwrap();
        behaves_as_a_session_store(&s).await;
        // Spread over the masters by key, and each found again.
        let ids: Vec<String> = create_many(&s, 12).await;
        let holding = cluster
            .nodes
            .iter()
            .filter(|n| n.cli(&["DBSIZE"]) != "0")
            .count();
        assert!(holding >= 2, "12 sessions on {holding} of 3 masters");
        for id in &ids {
            let key = format!("zotsession:{}", session_hash(id));
            assert!(s.get(id).await.unwrap().is_some());
            assert_eq!(cluster.cli(&["DEL", &key]), "1");
            assert!(s.get(id).await.unwrap().is_none());
        }
        // zot's cluster URL names the same cluster.
        let mut url = format!("redis://{}", cluster.addrs()[0]);
        for (i, a) in cluster.addrs()[1..].iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("addr={a}"));
        }
        let by_url = Sessions::redis(
            &driver(serde_json::json!({"name": "redis", "url": url})),
            "zotsession",
        )
        .unwrap();
        let id = by_url.create("erin", &[], "htpasswd").await.unwrap();
        assert_eq!(s.get(&id).await.unwrap().unwrap().session.username, "erin");
    }

    async fn create_many(s: &Sessions, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..n {
            ids.push(s.create("frank", &[], "htpasswd").await.unwrap());
        }
        ids
    }

    #[tokio::test]
    async fn a_dead_redis_is_unavailable_not_anonymous() {
        let mut redis = Redis::start();
        let s = Sessions::redis_url(&redis.url(), "p").unwrap();
        let id = s.create("dave", &[], "htpasswd").await.unwrap();
        redis.kill();
        let started = std::time::Instant::now();
        let err = s.get(&id).await.unwrap_err();
        assert!(matches!(err, AuthError::Unavailable { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(
            s.create("dave", &[], "htpasswd").await.unwrap_err(),
            AuthError::Unavailable { .. }
        ));
    }
}
