//! API keys in SQL (SQLite embedded, Postgres shared; one set of portable
//! migrations). A key is `zak_` plus 32 random hex digits, shown once; the
//! table keeps only its SHA-256, so a database copy holds no usable key.

use crate::error::AuthError;
use capstan_proto::auth::v1::ApiKey;
use sha2::{Digest as _, Sha256};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

/// Prefix of every key (zot's).
pub const KEY_PREFIX: &str = "zak_";

/// `lastUsed` is written at most this often per key.
const LAST_USED_GRANULARITY: i64 = 10;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
}

/// SHA-256 (hex) of the part after the prefix, as zot stores it.
fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A key that authenticated: its owner, the owner's groups when the key was
/// made, and the repositories it is limited to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIdentity {
    pub id: String,
    pub owner: String,
    pub groups: Vec<String>,
    pub scopes: Vec<String>,
    /// Unix seconds; 0 for never.
    pub expires_at: i64,
    /// Where the owner was known when the key was made.
    pub source: String,
}

/// What a new key is made of.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub owner: String,
    pub groups: Vec<String>,
    pub label: String,
    pub scopes: Vec<String>,
    /// Unix seconds; 0 for never.
    pub expires_at: i64,
    pub creator_ua: String,
    pub generated_by: String,
    /// Where the owner is known (`htpasswd`, `ldap`, …).
    pub source: String,
}

#[derive(Debug, Clone)]
pub struct ApiKeys {
    pool: AnyPool,
    /// Set once the migrations have run: until then every call is
    /// UNAVAILABLE (a Postgres that does not answer yet).
    migrated: Arc<OnceLock<()>>,
}

impl ApiKeys {
    /// Open (creating when needed) the database at `url` (`sqlite://…` or
    /// `postgres://…`) and apply the migrations.
    pub async fn open(url: &str) -> Result<Self, AuthError> {
        let (options, url) = Self::options(url);
        let pool = options.connect(&url).await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            pool,
            migrated: Arc::new(OnceLock::from(())),
        })
    }

    /// [`ApiKeys::open`] without waiting for the database (for Postgres,
    /// which may start after this role or restart): connections are made
    /// on demand and the migrations applied in the background with a
    /// capped backoff, every call being UNAVAILABLE until then. Must be
    /// called inside a tokio runtime.
    pub fn open_lazily(url: &str) -> Result<Self, AuthError> {
        let (options, url) = Self::options(url);
        let keys = Self {
            pool: options.connect_lazy(&url)?,
            migrated: Arc::default(),
        };
        let (pool, migrated) = (keys.pool.clone(), keys.migrated.clone());
        tokio::spawn(async move {
            let done = capstan_runtime::grpc::deferred::retry(
                "API key database not reachable",
                || MIGRATOR.run(&pool),
                std::future::pending(),
            )
            .await;
            if done.is_some() {
                let _ = migrated.set(());
                tracing::info!("API key database open");
            }
        });
        Ok(keys)
    }

    /// Capstan's pool options for `url`, and the URL to connect to.
    fn options(url: &str) -> (AnyPoolOptions, String) {
        sqlx::any::install_default_drivers();
        let url = if url.starts_with("sqlite:") && !url.contains("mode=") {
            format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
        } else {
            url.to_string()
        };
        let options = AnyPoolOptions::new()
            .max_connections(if url.starts_with("sqlite:") { 1 } else { 8 })
            .acquire_timeout(Duration::from_secs(5));
        (options, url)
    }

    /// The pool, once the database is ready.
    fn pool(&self) -> Result<&AnyPool, AuthError> {
        match self.migrated.get() {
            Some(()) => Ok(&self.pool),
            None => Err(AuthError::Unavailable {
                what: "API key database (http.auth.database)",
                message: "not reachable yet".into(),
            }),
        }
    }

    /// Store a new key; returns it and its secret (the only time the secret
    /// exists outside the client).
    pub async fn create(&self, k: NewKey) -> Result<(ApiKey, String), AuthError> {
        let id = uuid::Uuid::new_v4().to_string();
        let raw = uuid::Uuid::new_v4().simple().to_string();
        let secret = format!("{KEY_PREFIX}{raw}");
        let created = now();
        sqlx::query(
            "INSERT INTO api_keys (id, owner, groups_json, label, scopes_json, secret_hash, \
             created_at, expires_at, last_used, creator_ua, generated_by, source) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $10, $11)",
        )
        .bind(&id)
        .bind(&k.owner)
        .bind(serde_json::to_string(&k.groups).expect("json"))
        .bind(&k.label)
        .bind(serde_json::to_string(&k.scopes).expect("json"))
        .bind(secret_hash(&raw))
        .bind(created)
        .bind(k.expires_at)
        .bind(&k.creator_ua)
        .bind(&k.generated_by)
        .bind(&k.source)
        .execute(self.pool()?)
        .await?;
        let key = ApiKey {
            id,
            label: k.label,
            scopes: k.scopes,
            created_at: created,
            expires_at: k.expires_at,
            last_used: 0,
            creator_ua: k.creator_ua,
            generated_by: k.generated_by,
            created_by: k.owner,
        };
        Ok((key, secret))
    }

    /// The keys of `owner`, oldest first, without secrets.
    pub async fn list(&self, owner: &str) -> Result<Vec<ApiKey>, AuthError> {
        let rows = sqlx::query(
            "SELECT id, owner, label, scopes_json, created_at, expires_at, last_used, \
             creator_ua, generated_by FROM api_keys WHERE owner = $1 ORDER BY created_at, id",
        )
        .bind(owner)
        .fetch_all(self.pool()?)
        .await?;
        rows.iter().map(to_key).collect()
    }

    /// Delete `owner`'s key `id`; `KeyNotFound` when there is none.
    pub async fn revoke(&self, owner: &str, id: &str) -> Result<(), AuthError> {
        let done = sqlx::query("DELETE FROM api_keys WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .execute(self.pool()?)
            .await?;
        if done.rows_affected() == 0 {
            return Err(AuthError::KeyNotFound);
        }
        Ok(())
    }

    /// Check `secret` (the whole `zak_…` string) for `username`.
    pub async fn authenticate(
        &self,
        username: &str,
        secret: &str,
    ) -> Result<KeyIdentity, AuthError> {
        let raw = secret
            .strip_prefix(KEY_PREFIX)
            .ok_or(AuthError::Unauthenticated("not an API key"))?;
        let hash = secret_hash(raw);
        let row = sqlx::query(
            "SELECT id, owner, groups_json, scopes_json, expires_at, last_used, secret_hash, \
             source FROM api_keys WHERE secret_hash = $1",
        )
        .bind(&hash)
        .fetch_optional(self.pool()?)
        .await?
        .ok_or(AuthError::Unauthenticated("unknown API key"))?;
        let stored: String = row.try_get("secret_hash")?;
        if !bool::from(stored.as_bytes().ct_eq(hash.as_bytes())) {
            return Err(AuthError::Unauthenticated("unknown API key"));
        }
        let owner: String = row.try_get("owner")?;
        if !bool::from(owner.as_bytes().ct_eq(username.as_bytes())) {
            return Err(AuthError::Unauthenticated("API key of another user"));
        }
        let expires_at: i64 = row.try_get("expires_at")?;
        let t = now();
        if expires_at != 0 && expires_at <= t {
            return Err(AuthError::Unauthenticated("API key expired"));
        }
        let id: String = row.try_get("id")?;
        let last_used: i64 = row.try_get("last_used")?;
        if t - last_used >= LAST_USED_GRANULARITY {
            sqlx::query("UPDATE api_keys SET last_used = $1 WHERE id = $2")
                .bind(t)
                .bind(&id)
                .execute(self.pool()?)
                .await?;
        }
        Ok(KeyIdentity {
            id,
            owner,
            groups: json_list(&row, "groups_json")?,
            scopes: json_list(&row, "scopes_json")?,
            expires_at,
            source: row.try_get("source")?,
        })
    }
}

fn json_list(row: &AnyRow, col: &str) -> Result<Vec<String>, AuthError> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| AuthError::Invalid(format!("stored {col}: {e}")))
}

fn to_key(row: &AnyRow) -> Result<ApiKey, AuthError> {
    Ok(ApiKey {
        id: row.try_get("id")?,
        label: row.try_get("label")?,
        scopes: json_list(row, "scopes_json")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        last_used: row.try_get("last_used")?,
        creator_ua: row.try_get("creator_ua")?,
        generated_by: row.try_get("generated_by")?,
        created_by: row.try_get("owner")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One suite, run against every SQL backend.
    async fn suite(keys: &ApiKeys) {
        let (k, secret) = keys
            .create(NewKey {
                owner: "alice".into(),
                groups: vec!["dev".into()],
                label: "ci".into(),
                scopes: vec!["team/*".into()],
                creator_ua: "curl/8".into(),
                generated_by: "manual".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(secret.starts_with("zak_") && secret.len() == 36, "{secret}");
        assert_eq!(k.created_by, "alice");
        let who = keys.authenticate("alice", &secret).await.unwrap();
        assert_eq!(who.owner, "alice");
        assert_eq!(who.groups, vec!["dev"]);
        assert_eq!(who.scopes, vec!["team/*"]);
        assert_eq!(who.id, k.id);
        // lastUsed is recorded.
        let listed = keys.list("alice").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].last_used >= k.created_at);
        assert_eq!(listed[0].label, "ci");
        assert_eq!(listed[0].creator_ua, "curl/8");
        // Another user, a wrong key, a non-key: all fail.
        assert!(keys.authenticate("bob", &secret).await.is_err());
        let wrong = format!("zak_{}", "0".repeat(32));
        assert!(keys.authenticate("alice", &wrong).await.is_err());
        assert!(keys.authenticate("alice", "password").await.is_err());
        assert!(keys.list("bob").await.unwrap().is_empty());
        // Expired keys fail.
        let (_, old) = keys
            .create(NewKey {
                owner: "alice".into(),
                expires_at: now() - 1,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(matches!(
            keys.authenticate("alice", &old).await,
            Err(AuthError::Unauthenticated("API key expired"))
        ));
        // Only the owner revokes; then the key is dead.
        assert!(matches!(
            keys.revoke("bob", &k.id).await,
            Err(AuthError::KeyNotFound)
        ));
        keys.revoke("alice", &k.id).await.unwrap();
        assert!(keys.authenticate("alice", &secret).await.is_err());
        assert!(matches!(
            keys.revoke("alice", &k.id).await,
            Err(AuthError::KeyNotFound)
        ));
        assert_eq!(keys.list("alice").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn api_keys_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("auth.db").display());
        suite(&ApiKeys::open(&url).await.unwrap()).await;
        // Reopening applies no migration twice and keeps the rows.
        let again = ApiKeys::open(&url).await.unwrap();
        assert_eq!(again.list("alice").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn api_keys_on_postgres() {
        let pg = capstan_testkit::Postgres::start();
        let url = pg.create_database("capstan_auth");
        suite(&ApiKeys::open(&url).await.unwrap()).await;
        let again = ApiKeys::open(&url).await.unwrap();
        assert_eq!(again.list("alice").await.unwrap().len(), 1);
    }
}
