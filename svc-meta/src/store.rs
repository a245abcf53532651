//! The sqlx layer: every read and write of the namespace, on SQLite (the
//! default, one file under the storage root) or Postgres (shared by any
//! number of svc-meta replicas). Both run the same SQL through sqlx's `Any`
//! driver; the schemas (`migrations/` and `migrations-postgres/`) are kept
//! in step, and the few differences are in [`Backend`].
//!
//! Writes that must be atomic run in one transaction. On SQLite it starts
//! with `BEGIN IMMEDIATE`, so SQLite takes the write lock up front (waiting
//! up to the busy timeout) instead of failing a read-to-write upgrade, and
//! the writers of this process take turns in FIFO order. On Postgres the
//! rows a write depends on (the blob links and child manifests a manifest
//! names, the link a mount copies, a manifest pushed again) are read
//! `FOR SHARE`, so no other replica can remove them before the write
//! commits; a delete takes its manifest `FOR UPDATE` before its tags; tags
//! and batched links are written in sorted order, so that concurrent
//! writes wait for one another in one order rather than deadlock. A lock
//! waited on longer than [`BUSY_TIMEOUT`] makes the call UNAVAILABLE.
//!
//! Committed manifest and tag changes are published on [`Store::subscribe`]:
//! on SQLite by the writing process, on Postgres through `NOTIFY` inside
//! the transaction, so every replica hears every replica's changes, and a
//! replica that loses its listening connection tells its subscribers to
//! drop everything.

use crate::error::MetaError;
use crate::retention::{Decision, ManifestState, RepoState, Retentions};
use capstan_oci::manifest::MAX_MANIFEST_BYTES;
use capstan_oci::{Algorithm, Digest, ParsedManifest, Reference, validate_repository};
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// How long a statement waits for a locked database before UNAVAILABLE.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections in the pool on SQLite (in WAL mode: readers run in
/// parallel, writers take turns).
const SQLITE_CONNECTIONS: u32 = 8;
/// Connections in the pool on Postgres.
const POSTGRES_CONNECTIONS: u32 = 16;
/// The Postgres channel that carries the names of changed repositories.
const CHANGES_CHANNEL: &str = "capstan_meta_changes";
/// Changes buffered per subscriber before it counts as fallen behind.
const CHANGES_BUFFER: usize = 1024;
/// Removals one retention pass lists in its answer, at most (it carries
/// out every one; the list must fit a message).
pub const MAX_RETAINED_LISTED: usize = 20_000;
/// Postgres advisory lock key that serializes garbage collection steps.
const GC_LOCK: i64 = 0x6361_7073_7461_6e01;
/// The longest an unreferenced link goes without renewal while lookups
/// find it (see [`Store::with_gc_delay`]).
pub const RENEW_AFTER: Duration = Duration::from_secs(60);

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations-postgres");

/// Which database holds the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend of a database URL, or UNSUPPORTED with the scheme.
    pub fn of(url: &str) -> Result<Backend, MetaError> {
        match url.split(':').next().unwrap_or_default() {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            other => Err(MetaError::UnsupportedDatabase(other.to_string())),
        }
    }

    /// Reads inside a write that must hold their rows until it commits:
    /// on SQLite the write lock taken by `BEGIN IMMEDIATE` holds
    /// everything, on Postgres the rows are read `FOR SHARE`.
    fn held(self, read: HeldRead) -> &'static str {
        match (self, read) {
            (Backend::Sqlite, HeldRead::Link) => {
                "SELECT digest FROM blob_links WHERE repo = $1 AND digest = $2"
            }
            (Backend::Postgres, HeldRead::Link) => {
                "SELECT digest FROM blob_links WHERE repo = $1 AND digest = $2 FOR SHARE"
            }
            (Backend::Sqlite, HeldRead::Manifest) => {
                "SELECT digest FROM manifests WHERE repo = $1 AND digest = $2"
            }
            (Backend::Postgres, HeldRead::Manifest) => {
                "SELECT digest FROM manifests WHERE repo = $1 AND digest = $2 FOR SHARE"
            }
            (Backend::Sqlite, HeldRead::LinkSize) => {
                "SELECT size FROM blob_links WHERE repo = $1 AND digest = $2"
            }
            (Backend::Postgres, HeldRead::LinkSize) => {
                "SELECT size FROM blob_links WHERE repo = $1 AND digest = $2 FOR SHARE"
            }
        }
    }
}

/// The reads [`Backend::held`] knows.
#[derive(Debug, Clone, Copy)]
enum HeldRead {
    /// Is a blob linked to a repository.
    Link,
    /// Is a manifest stored in a repository.
    Manifest,
    /// The size of a blob linked to a repository.
    LinkSize,
}

/// Handle on the metadata database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    /// Blob links waiting to be written together (group commit).
    links: tokio::sync::mpsc::UnboundedSender<PendingLink>,
    pool: AnyPool,
    backend: Backend,
    /// SQLite: write transactions of this process take turns here, in FIFO
    /// order, instead of in SQLite's busy handler (which sleeps and retries
    /// with growing pauses, giving concurrent pushes a long latency tail).
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Repositories whose manifests or tags changed; `""` means anything
    /// may have changed.
    changes: broadcast::Sender<String>,
    /// Ends the Postgres listener when the last handle is gone.
    _alive: std::sync::Arc<tokio::sync::mpsc::Sender<()>>,
    /// A lookup of a link older than this that no manifest references
    /// makes it young again ([`Store::stat_blob`]).
    renew_after: Duration,
    /// Garbage collection's settings per store (`storage.subPaths`).
    scopes: GcScopes,
}

/// Garbage collection's settings per store, as the link queue needs them
/// (`storage.subPaths` entries with their own `gc` and `gcDelay`).
///
/// The queue orders every link by when a collection may look at it. A
/// collection selects the links queued before `now − d_min` (the smallest
/// `gcDelay` of a collecting store); so a link of a store whose delay `d`
/// is longer is queued `d − d_min` later than it happened, and becomes due
/// exactly `d` after. Links of a store that does not collect are dropped
/// from the queue and kept.
#[derive(Debug, Clone, Default)]
pub struct GcScopes {
    storage: Option<std::sync::Arc<capstan_runtime::config::StorageConfig>>,
}

impl GcScopes {
    /// The scopes `storage` configures.
    pub fn new(storage: &capstan_runtime::config::StorageConfig) -> Self {
        Self {
            storage: Some(std::sync::Arc::new(storage.clone())),
        }
    }

    fn secs(d: Duration) -> i64 {
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
    }

    /// Whether `repo`'s store collects, and its `gcDelay` minus the top
    /// level's, in seconds.
    fn of(&self, repo: &str) -> (bool, i64) {
        let Some(st) = &self.storage else {
            return (true, 0);
        };
        let scope = st.gc_scope_of(repo);
        (
            scope.enabled,
            Self::secs(scope.delay) - Self::secs(st.gc_delay()),
        )
    }

    /// The top level's `gcDelay` minus the smallest of a collecting store.
    fn widen(&self) -> i64 {
        let Some(st) = &self.storage else {
            return 0;
        };
        let stores = std::iter::once(String::new())
            .chain(st.sub_paths.keys().map(|k| k.trim_matches('/').to_string()));
        stores
            .map(|name| st.gc_scope(&name))
            .filter(|s| s.enabled)
            .map(|s| Self::secs(s.delay))
            .min()
            .map_or(0, |min| Self::secs(st.gc_delay()) - min)
    }

    /// What to add to the time a link of `repo` is queued at.
    fn shift(&self, repo: &str) -> i64 {
        self.of(repo).1 + self.widen()
    }
}

/// Which of the tags a push sets may exist already: zot's rule that moving
/// a tag needs "update" and setting a new one "create", applied in the
/// push's own transaction (no lookup before it that a concurrent push
/// could make stale).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TagRule {
    /// Any tag may be set.
    #[default]
    Any,
    /// None of them may exist yet.
    NewOnly,
    /// One of them must exist already.
    ExistingOnly,
}

/// What a push carries besides the manifest: the tags it sets besides its
/// reference and the rule they follow, and the image's config.
#[derive(Clone, Copy, Debug, Default)]
pub struct Push<'a> {
    pub tags: &'a [String],
    pub rule: TagRule,
    /// The config blob of an image manifest, when the caller read it: the
    /// image's facts for search come from it (`crate::facts`).
    pub config: Option<&'a [u8]>,
}

impl<'a> Push<'a> {
    /// `tags`, any of which may exist.
    pub fn any(tags: &'a [String]) -> Self {
        Self {
            tags,
            rule: TagRule::Any,
            config: None,
        }
    }
}

/// Result of a stored manifest push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    pub digest: Digest,
    /// Digest of the manifest's `subject`, if it has one.
    pub subject: Option<Digest>,
}

/// A manifest as read back; `content` is `None` for a HEAD lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub content: Option<Vec<u8>>,
}

/// One page of a sorted listing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    pub items: Vec<String>,
    /// True when further items follow this page.
    pub more: bool,
}

/// A repository's link to a blob that garbage collection removed (or, in
/// a dry run, would remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectedLink {
    pub repo: String,
    pub digest: String,
    pub size: u64,
}

/// A digest that nothing links or references any more: svc-blob may
/// remove its bytes, then [`Store::forget_garbage`] drops the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Garbage {
    pub digest: String,
    /// When its last link went (Unix seconds); identifies this entry.
    pub since: i64,
}

/// What one step of garbage collection's mark found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Collection {
    /// Links removed (or, in a dry run, that would be).
    pub links: Vec<CollectedLink>,
    /// Digests whose bytes may go.
    pub garbage: Vec<Garbage>,
    /// The step stopped at its limit on a queue: another step may find
    /// more (links removed and garbage listed may still be fewer than the
    /// limit, as queued entries that are in use only leave the queue).
    pub more: bool,
}

/// A tag or manifest that retention removed (or, dry, would remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    pub repo: String,
    pub digest: String,
    /// The tag removed; `None` when the manifest itself went.
    pub tag: Option<String>,
    /// The rule, worded as zot logs it.
    pub reason: &'static str,
}

/// A manifest whose `subject` is the queried digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn check_repo(repo: &str) -> Result<(), MetaError> {
    validate_repository(repo).map_err(|source| MetaError::NameInvalid {
        name: repo.to_string(),
        source,
    })
}

/// `digests` without repeats, first occurrence kept.
fn dedupe(digests: &[Digest]) -> Vec<&Digest> {
    let mut seen = BTreeSet::new();
    digests.iter().filter(|d| seen.insert(*d)).collect()
}

fn to_u64(v: i64) -> Result<u64, MetaError> {
    u64::try_from(v).map_err(|_| MetaError::Corrupt(format!("negative size {v}")))
}

/// `LIMIT` value for a page of at most `n` items: one more, to learn whether
/// further items exist.
fn page_limit(n: Option<u32>) -> i64 {
    n.map_or(i64::MAX, |n| i64::from(n) + 1)
}

fn into_page(mut items: Vec<String>, n: Option<u32>) -> Page {
    let more = match n {
        Some(n) if items.len() > n as usize => {
            items.truncate(n as usize);
            true
        }
        _ => false,
    };
    Page { items, more }
}

impl Store {
    /// Open (creating when missing) the database at `url` (`sqlite:…` or
    /// `postgres://…`) and apply the migrations.
    pub async fn open(url: &str) -> Result<Store, MetaError> {
        Self::open_with_timeout(url, BUSY_TIMEOUT).await
    }

    pub(crate) async fn open_with_timeout(
        url: &str,
        busy_timeout: Duration,
    ) -> Result<Store, MetaError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of(url)?;
        let pool = match backend {
            Backend::Sqlite => open_sqlite(url, busy_timeout).await?,
            Backend::Postgres => {
                let lock_ms = busy_timeout.as_millis();
                let pool = AnyPoolOptions::new()
                    .max_connections(POSTGRES_CONNECTIONS)
                    .acquire_timeout(busy_timeout)
                    // A row lock waited on longer is UNAVAILABLE (55P03).
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            use sqlx::Executor as _;
                            conn.execute(sqlx::AssertSqlSafe(format!(
                                "SET lock_timeout = {lock_ms}"
                            )))
                            .await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await?;
                POSTGRES_MIGRATIONS.run(&pool).await?;
                tracing::info!("metadata database open (postgres)");
                pool
            }
        };
        let writer: std::sync::Arc<tokio::sync::Mutex<()>> = Default::default();
        let (links, pending) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(write_links(pool.clone(), backend, writer.clone(), pending));
        let changes = broadcast::channel(CHANGES_BUFFER).0;
        let (alive, gone) = tokio::sync::mpsc::channel(1);
        if backend == Backend::Postgres {
            let listener = listen(url).await?;
            tokio::spawn(follow_notifications(
                url.to_string(),
                listener,
                changes.clone(),
                gone,
            ));
        }
        Ok(Store {
            links,
            pool,
            backend,
            writer,
            changes,
            _alive: std::sync::Arc::new(alive),
            renew_after: RENEW_AFTER,
            scopes: GcScopes::default(),
        })
    }

    /// Tell the store garbage collection's `gcDelay`: a blob lookup
    /// renews an unreferenced link once a quarter of it has passed (at
    /// most every [`RENEW_AFTER`]), so that a push which found the blob
    /// present and skipped its upload still finds it linked when its
    /// manifest arrives.
    pub fn with_gc_delay(mut self, delay: Duration) -> Store {
        self.renew_after = (delay / 4).min(RENEW_AFTER);
        self
    }

    /// Tell the store each store's garbage collection settings
    /// (`storage.subPaths`): see [`GcScopes`].
    pub fn with_gc_scopes(mut self, scopes: GcScopes) -> Store {
        self.scopes = scopes;
        self
    }

    /// The database this store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Names of repositories whose manifests or tags change from now on
    /// (on every replica sharing the database); `""` when the subscriber
    /// must assume anything changed (it fell behind, or a replica's feed
    /// broke).
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// Start a write transaction (on SQLite: wait for this process's turn,
    /// then take the write lock up front). Keep the guard until the commit.
    async fn begin_write(
        &self,
    ) -> Result<
        (
            Option<tokio::sync::OwnedMutexGuard<()>>,
            sqlx::Transaction<'static, sqlx::Any>,
        ),
        sqlx::Error,
    > {
        begin_write(&self.pool, self.backend, &self.writer).await
    }

    /// Inside `tx`: tell every replica that `repo` changed once `tx`
    /// commits (Postgres; SQLite publishes after the commit).
    async fn notify(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        repo: &str,
    ) -> Result<(), sqlx::Error> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGES_CHANNEL)
                .bind(repo)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// After a commit: publish the change of `repo` (SQLite).
    fn committed(&self, repo: &str) {
        if self.backend == Backend::Sqlite {
            // No subscriber is not an error.
            let _ = self.changes.send(repo.to_string());
        }
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), MetaError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Close every connection (waits for those in use).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Store a manifest pushed to `repo` under `reference` (a tag or its
    /// digest); see the crate docs for the checks.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        content_type: &str,
        content: &[u8],
    ) -> Result<PutOutcome, MetaError> {
        self.put_manifest_sparse(
            repo,
            reference,
            Push::default(),
            content_type,
            content,
            false,
        )
        .await
    }

    /// [`Store::put_manifest`], also setting `tags` (besides `reference`
    /// when it is a tag) in the same transaction, refused as its rule says
    /// (`DENIED`), and where `sparse` lets a manifest name children and
    /// blobs that are not stored (yet): pull-through fetches them when they
    /// are first asked for.
    pub async fn put_manifest_sparse(
        &self,
        repo: &str,
        reference: &Reference,
        push: Push<'_>,
        content_type: &str,
        content: &[u8],
        sparse: bool,
    ) -> Result<PutOutcome, MetaError> {
        check_repo(repo)?;
        let tags = push.tags;
        for tag in tags {
            MetaError::tag(tag)?;
        }
        if content.len() > MAX_MANIFEST_BYTES {
            return Err(MetaError::ManifestTooLarge(content.len()));
        }
        let parsed = ParsedManifest::parse(content_type, content)?;
        let algorithm = match reference {
            Reference::Digest(d) => d.algorithm(),
            Reference::Tag(_) => Algorithm::Sha256,
        };
        let digest = Digest::of(algorithm, content);
        if let Reference::Digest(d) = reference
            && *d != digest
        {
            return Err(MetaError::DigestMismatch {
                reference: d.clone(),
                actual: digest,
            });
        }
        let annotations = serde_json::to_string(&parsed.annotations)
            .map_err(|e| MetaError::Corrupt(e.to_string()))?;
        let size =
            i64::try_from(content.len()).map_err(|_| MetaError::ManifestTooLarge(content.len()))?;
        // In manifest order, so the first missing one is reported.
        let blobs = dedupe(&parsed.blobs);
        let children = dedupe(&parsed.manifests);
        let digest_s = digest.to_string();
        let subject = parsed.subject.as_ref().map(Digest::to_string);
        let at = now();

        let named = match reference {
            Reference::Tag(tag) => Some(tag.as_str()),
            Reference::Digest(_) => None,
        };
        // In one order for every push, so that two pushes of overlapping
        // tags never hold each other's rows (Postgres).
        let all_tags: BTreeSet<&str> = named
            .into_iter()
            .chain(tags.iter().map(String::as_str))
            .collect();

        let no_children = Vec::new();
        let (_turn, mut tx) = self.begin_write().await?;
        if push.rule != TagRule::Any && !all_tags.is_empty() {
            let mut exists = false;
            for tag in &all_tags {
                let found: Option<String> =
                    sqlx::query_scalar("SELECT digest FROM tags WHERE repo = $1 AND name = $2")
                        .bind(repo)
                        .bind(*tag)
                        .fetch_optional(&mut *tx)
                        .await?;
                if found.is_some() {
                    exists = true;
                    break;
                }
            }
            match (push.rule, exists) {
                (TagRule::NewOnly, true) => {
                    return Err(MetaError::TagRuleRefused(
                        "moves a tag that exists: it needs update permission",
                    ));
                }
                (TagRule::ExistingOnly, false) => {
                    return Err(MetaError::TagRuleRefused(
                        "sets only new tags: it needs create permission",
                    ));
                }
                _ => {}
            }
        }
        for (set, sql) in [
            (
                if sparse { &no_children } else { &blobs },
                self.backend.held(HeldRead::Link),
            ),
            (
                if sparse { &no_children } else { &children },
                self.backend.held(HeldRead::Manifest),
            ),
        ] {
            for target in set {
                let found: Option<String> = sqlx::query_scalar(sql)
                    .bind(repo)
                    .bind(target.to_string())
                    .fetch_optional(&mut *tx)
                    .await?;
                if found.is_none() {
                    return Err(MetaError::ManifestBlobUnknown {
                        digest: (*target).clone(),
                    });
                }
            }
        }
        sqlx::query(
            "INSERT INTO repositories (name, created_at) VALUES ($1, $2) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(repo)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        let described =
            crate::facts::describe(&mut tx, repo, &parsed, content, push.config, &children, at)
                .await?;
        let insert = || {
            sqlx::query(
                "INSERT INTO manifests \
             (repo, digest, media_type, artifact_type, content, size, subject, annotations, \
              created_at, touched_at, facts, platforms, made_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11, $12) \
             ON CONFLICT (repo, digest) DO NOTHING",
            )
            .bind(repo)
            .bind(&digest_s)
            .bind(&parsed.media_type)
            .bind(parsed.artifact_type.as_deref())
            .bind(content)
            .bind(size)
            .bind(subject.as_deref())
            .bind(&annotations)
            .bind(at)
            .bind(described.facts.as_deref())
            .bind(described.platforms.as_deref())
            .bind(described.made_at)
        };
        let mut inserted = insert().execute(&mut *tx).await?.rows_affected();
        if inserted == 0 {
            // Already stored: pushed again now (retention's delay counts
            // from here). On Postgres the update also holds the row, so a
            // delete by another replica waits for this push; if one just
            // removed it, it is stored again.
            // What search knows of it is filled in if it was not (stored
            // before search), and replaced if it came without the config
            // this push brings (no platform then).
            let touched = sqlx::query(
                "UPDATE manifests SET touched_at = $3, \
                 facts = CASE WHEN platforms IS NULL AND CAST($5 AS TEXT) IS NOT NULL \
                              THEN $4 ELSE COALESCE(facts, $4) END, \
                 made_at = CASE WHEN platforms IS NULL AND CAST($5 AS TEXT) IS NOT NULL \
                                THEN $6 ELSE COALESCE(made_at, $6) END, \
                 platforms = COALESCE(platforms, $5) \
                 WHERE repo = $1 AND digest = $2",
            )
            .bind(repo)
            .bind(&digest_s)
            .bind(at)
            .bind(described.facts.as_deref())
            .bind(described.platforms.as_deref())
            .bind(described.made_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if touched == 0 {
                inserted = insert().execute(&mut *tx).await?.rows_affected();
            }
        }
        for (kind, set) in [("blob", &blobs), ("manifest", &children)] {
            for target in set {
                sqlx::query(
                    "INSERT INTO manifest_refs (repo, digest, kind, target) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (repo, digest, kind, target) DO NOTHING",
                )
                .bind(repo)
                .bind(&digest_s)
                .bind(kind)
                .bind(target.to_string())
                .execute(&mut *tx)
                .await?;
            }
        }
        for tag in all_tags {
            sqlx::query(
                "INSERT INTO tags (repo, name, digest, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (repo, name) DO UPDATE \
                 SET digest = excluded.digest, updated_at = excluded.updated_at",
            )
            .bind(repo)
            .bind(tag)
            .bind(&digest_s)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        self.notify(&mut tx, repo).await?;
        tx.commit().await?;
        self.committed(repo);
        tracing::info!(
            repo,
            digest = %digest_s,
            reference = %reference,
            new = inserted > 0,
            "manifest stored"
        );
        Ok(PutOutcome {
            digest,
            subject: parsed.subject,
        })
    }

    /// The manifest `reference` names in `repo`; without content when `head`.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        head: bool,
    ) -> Result<StoredManifest, MetaError> {
        check_repo(repo)?;
        // The lookup by tag is one join, so a concurrent retag or delete
        // cannot pair one manifest's digest with another's bytes.
        let (key, by_tag) = match reference {
            Reference::Tag(t) => (t.clone(), true),
            Reference::Digest(d) => (d.to_string(), false),
        };
        let row: Option<(String, String, i64, Option<Vec<u8>>)> = if head {
            let sql = if by_tag {
                "SELECT m.digest, m.media_type, m.size FROM tags t \
                 JOIN manifests m ON m.repo = t.repo AND m.digest = t.digest \
                 WHERE t.repo = $1 AND t.name = $2"
            } else {
                "SELECT digest, media_type, size FROM manifests WHERE repo = $1 AND digest = $2"
            };
            sqlx::query_as::<_, (String, String, i64)>(sql)
                .bind(repo)
                .bind(&key)
                .fetch_optional(&self.pool)
                .await?
                .map(|(d, t, s)| (d, t, s, None))
        } else {
            let sql = if by_tag {
                "SELECT m.digest, m.media_type, m.size, m.content FROM tags t \
                 JOIN manifests m ON m.repo = t.repo AND m.digest = t.digest \
                 WHERE t.repo = $1 AND t.name = $2"
            } else {
                "SELECT digest, media_type, size, content FROM manifests \
                 WHERE repo = $1 AND digest = $2"
            };
            sqlx::query_as::<_, (String, String, i64, Vec<u8>)>(sql)
                .bind(repo)
                .bind(&key)
                .fetch_optional(&self.pool)
                .await?
                .map(|(d, t, s, c)| (d, t, s, Some(c)))
        };
        let (digest, media_type, size, content) = row.ok_or(MetaError::ManifestUnknown)?;
        Ok(StoredManifest {
            digest,
            media_type,
            size: to_u64(size)?,
            content,
        })
    }

    /// By digest: remove the manifest, every tag on it and its references.
    /// By tag: remove only the tag.
    /// Delete a tag, or a manifest (and its tags) by digest. With
    /// `detect_collision`, a digest that more than one tag names is refused.
    pub async fn delete_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        detect_collision: bool,
    ) -> Result<(), MetaError> {
        check_repo(repo)?;
        match reference {
            Reference::Tag(tag) => {
                let (_turn, mut tx) = self.begin_write().await?;
                let gone = sqlx::query("DELETE FROM tags WHERE repo = $1 AND name = $2")
                    .bind(repo)
                    .bind(tag)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if gone == 0 {
                    return Err(MetaError::ManifestUnknown);
                }
                self.notify(&mut tx, repo).await?;
                tx.commit().await?;
                self.committed(repo);
                tracing::info!(repo, tag = %tag, "tag deleted");
            }
            Reference::Digest(d) => {
                let digest = d.to_string();
                let (_turn, mut tx) = self.begin_write().await?;
                if self.backend == Backend::Postgres {
                    // The manifest first: a push of it (which holds it FOR
                    // SHARE) finishes before, and tags added to it are
                    // counted below.
                    let found: Option<String> = sqlx::query_scalar(
                        "SELECT digest FROM manifests WHERE repo = $1 AND digest = $2 FOR UPDATE",
                    )
                    .bind(repo)
                    .bind(&digest)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if found.is_none() {
                        return Err(MetaError::ManifestUnknown);
                    }
                }
                if detect_collision {
                    let named: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM tags WHERE repo = $1 AND digest = $2",
                    )
                    .bind(repo)
                    .bind(&digest)
                    .fetch_one(&mut *tx)
                    .await?;
                    if named > 1 {
                        return Err(MetaError::ManifestConflict {
                            digest: d.clone(),
                            tags: named,
                        });
                    }
                }
                let tags = sqlx::query("DELETE FROM tags WHERE repo = $1 AND digest = $2")
                    .bind(repo)
                    .bind(&digest)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let gone = drop_manifest(&mut tx, repo, &digest, self.scopes.shift(repo)).await?;
                if gone == 0 {
                    return Err(MetaError::ManifestUnknown);
                }
                self.notify(&mut tx, repo).await?;
                tx.commit().await?;
                self.committed(repo);
                tracing::info!(repo, digest = %digest, tags, "manifest deleted");
            }
        }
        Ok(())
    }

    /// What retention looks at in `repo`: its manifests (push and pull
    /// times, subject, children) and its tags.
    pub async fn repo_state(&self, repo: &str) -> Result<RepoState, MetaError> {
        let mut state = RepoState::default();
        // One snapshot: a push between the reads must not show a tag
        // without its manifest (the planner keeps such a tag anyway).
        let mut tx = match self.backend {
            Backend::Sqlite => self.pool.begin().await?,
            Backend::Postgres => {
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?
            }
        };
        // Digest, first and last push, last pull, subject.
        type Row = (String, i64, i64, Option<i64>, Option<String>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT m.digest, m.created_at, COALESCE(m.touched_at, m.created_at), p.pulled_at, \
                    m.subject FROM manifests m \
             LEFT JOIN manifest_pulls p ON p.repo = m.repo AND p.digest = m.digest \
             WHERE m.repo = $1",
        )
        .bind(repo)
        .fetch_all(&mut *tx)
        .await?;
        for (digest, pushed_at, touched_at, pulled_at, subject) in rows {
            state.manifests.insert(
                digest,
                ManifestState {
                    pushed_at,
                    touched_at,
                    pulled_at,
                    subject,
                    children: Vec::new(),
                },
            );
        }
        let children: Vec<(String, String)> = sqlx::query_as(
            "SELECT digest, target FROM manifest_refs WHERE repo = $1 AND kind = 'manifest'",
        )
        .bind(repo)
        .fetch_all(&mut *tx)
        .await?;
        for (index, child) in children {
            if let Some(m) = state.manifests.get_mut(&index) {
                m.children.push(child);
            }
        }
        let tags: Vec<(String, String)> =
            sqlx::query_as("SELECT name, digest FROM tags WHERE repo = $1")
                .bind(repo)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        state.tags = tags.into_iter().collect();
        Ok(state)
    }

    /// Remove tag `tag` of `repo` if it still names `digest`.
    pub async fn delete_tag_if(
        &self,
        repo: &str,
        tag: &str,
        digest: &str,
    ) -> Result<bool, MetaError> {
        let (_turn, mut tx) = self.begin_write().await?;
        let gone = sqlx::query("DELETE FROM tags WHERE repo = $1 AND name = $2 AND digest = $3")
            .bind(repo)
            .bind(tag)
            .bind(digest)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone > 0 {
            self.notify(&mut tx, repo).await?;
        }
        tx.commit().await?;
        if gone > 0 {
            self.committed(repo);
        }
        Ok(gone > 0)
    }

    /// Remove manifest `digest` of `repo` if, in this transaction, it is
    /// still pushed before `cutoff`, untagged, listed by no index of the
    /// repository, and either has no subject (`referrer` false) or a
    /// subject the repository no longer has (`referrer` true).
    pub async fn delete_manifest_if_unused(
        &self,
        repo: &str,
        digest: &str,
        cutoff: i64,
        referrer: bool,
    ) -> Result<bool, MetaError> {
        let (_turn, mut tx) = self.begin_write().await?;
        let row: Option<(i64, Option<String>)> = sqlx::query_as(match self.backend {
            // A push of an index listing it, or of a tag on it, holds it
            // FOR SHARE: it finishes first and is seen below.
            Backend::Postgres => {
                "SELECT COALESCE(touched_at, created_at), subject FROM manifests \
                 WHERE repo = $1 AND digest = $2 FOR UPDATE"
            }
            Backend::Sqlite => {
                "SELECT COALESCE(touched_at, created_at), subject FROM manifests \
                 WHERE repo = $1 AND digest = $2"
            }
        })
        .bind(repo)
        .bind(digest)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((created_at, subject)) = row else {
            return Ok(false);
        };
        // A referrer goes with its subject even when tagged (zot); an
        // untagged manifest only while no tag names it.
        let users: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM tags WHERE repo = $1 AND digest = $2 AND NOT $3) + \
                    (SELECT COUNT(*) FROM manifest_refs \
                     WHERE repo = $1 AND kind = 'manifest' AND target = $2)",
        )
        .bind(repo)
        .bind(digest)
        .bind(referrer)
        .fetch_one(&mut *tx)
        .await?;
        let subject_gone = match &subject {
            Some(s) => sqlx::query_scalar::<_, String>(
                "SELECT digest FROM manifests WHERE repo = $1 AND digest = $2",
            )
            .bind(repo)
            .bind(s)
            .fetch_optional(&mut *tx)
            .await?
            .is_none(),
            None => false,
        };
        let eligible = created_at < cutoff
            && users == 0
            && if referrer {
                subject_gone
            } else {
                subject.is_none()
            };
        if !eligible {
            return Ok(false);
        }
        sqlx::query("DELETE FROM tags WHERE repo = $1 AND digest = $2")
            .bind(repo)
            .bind(digest)
            .execute(&mut *tx)
            .await?;
        let gone = drop_manifest(&mut tx, repo, digest, self.scopes.shift(repo)).await?;
        self.notify(&mut tx, repo).await?;
        tx.commit().await?;
        self.committed(repo);
        Ok(gone > 0)
    }

    /// Apply `retention` to every repository (with `dry_run`, or when the
    /// configuration says so, only decide). Each decision carried out (or,
    /// dry, that would be) is logged with the rule behind it, in zot's
    /// words, and returned.
    pub async fn apply_retention(
        &self,
        retentions: &Retentions,
        dry_run: bool,
    ) -> Result<Vec<Retained>, MetaError> {
        let at = now();
        let mut out = Vec::new();
        let mut last = String::new();
        loop {
            let page = self.catalog(Some(1000), &last).await?;
            for repo in &page.items {
                // The repository's store's retention, if it collects.
                let Some(retention) = retentions.for_repo(repo) else {
                    continue;
                };
                let dry_run = dry_run || retention.dry_run;
                let state = self.repo_state(repo).await?;
                for d in retention.plan(repo, &state, at) {
                    // One decision that fails (a lock waited on too long,
                    // a deadlock another writer lost to us) is tried again
                    // at the next collection; the others go on.
                    match self.retain(repo, d, at - retention.delay, dry_run).await {
                        Ok(Some(done)) if out.len() < MAX_RETAINED_LISTED => out.push(done),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(repository = %repo, error = %e, "retention decision not applied")
                        }
                    }
                }
            }
            match page.items.last() {
                Some(l) if page.more => last = l.clone(),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Carry out (dry: only log) one retention decision on `repo`; `None`
    /// when what it would remove changed meanwhile and stays.
    async fn retain(
        &self,
        repo: &str,
        decision: Decision,
        cutoff: i64,
        dry_run: bool,
    ) -> Result<Option<Retained>, MetaError> {
        match decision {
            Decision::DeleteTag {
                tag,
                digest,
                reason,
            } => {
                if !dry_run && !self.delete_tag_if(repo, &tag, &digest).await? {
                    return Ok(None);
                }
                tracing::info!(
                    module = "retention",
                    "dry-run" = dry_run,
                    repository = repo,
                    digest,
                    tag,
                    decision = "delete",
                    reason,
                    "applied policy"
                );
                Ok(Some(Retained {
                    repo: repo.to_string(),
                    digest,
                    tag: Some(tag),
                    reason,
                }))
            }
            Decision::DeleteManifest {
                digest,
                referrer,
                reason,
            } => {
                if !dry_run
                    && !self
                        .delete_manifest_if_unused(repo, &digest, cutoff, referrer)
                        .await?
                {
                    return Ok(None);
                }
                let message = if referrer {
                    "removed manifest without reference"
                } else {
                    "removed untagged manifest"
                };
                tracing::info!(
                    module = "gc",
                    "dry-run" = dry_run,
                    repository = repo,
                    reference = digest,
                    decision = "delete",
                    reason,
                    "{message}"
                );
                Ok(Some(Retained {
                    repo: repo.to_string(),
                    digest,
                    tag: None,
                    reason,
                }))
            }
        }
    }

    /// Tags of `repo` in byte order, strictly after `last` (empty: from the
    /// start), at most `n`.
    pub async fn list_tags(
        &self,
        repo: &str,
        n: Option<u32>,
        last: &str,
    ) -> Result<Page, MetaError> {
        check_repo(repo)?;
        let exists: Option<String> =
            sqlx::query_scalar("SELECT name FROM repositories WHERE name = $1")
                .bind(repo)
                .fetch_optional(&self.pool)
                .await?;
        if exists.is_none() {
            return Err(MetaError::NameUnknown(repo.to_string()));
        }
        let items: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM tags WHERE repo = $1 AND name > $2 ORDER BY name LIMIT $3",
        )
        .bind(repo)
        .bind(last)
        .bind(page_limit(n))
        .fetch_all(&self.pool)
        .await?;
        Ok(into_page(items, n))
    }

    /// Repository names in byte order, strictly after `last`, at most `n`.
    pub async fn catalog(&self, n: Option<u32>, last: &str) -> Result<Page, MetaError> {
        let items: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2",
        )
        .bind(last)
        .bind(page_limit(n))
        .fetch_all(&self.pool)
        .await?;
        Ok(into_page(items, n))
    }

    /// Manifests of `repo` whose subject is `subject`, optionally only those
    /// with `artifact_type`. An unknown repository has none.
    pub async fn referrers(
        &self,
        repo: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, MetaError> {
        check_repo(repo)?;
        let rows: Vec<(String, String, i64, Option<String>, String)> = sqlx::query_as(
            "SELECT media_type, digest, size, artifact_type, annotations FROM manifests \
             WHERE repo = $1 AND subject = $2 AND ($3 IS NULL OR artifact_type = $3) \
             ORDER BY digest",
        )
        .bind(repo)
        .bind(subject.to_string())
        .bind(artifact_type)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(media_type, digest, size, artifact_type, annotations)| {
                Ok(Referrer {
                    annotations: serde_json::from_str(&annotations)
                        .map_err(|e| MetaError::Corrupt(format!("annotations of {digest}: {e}")))?,
                    media_type,
                    size: to_u64(size)?,
                    digest,
                    artifact_type,
                })
            })
            .collect()
    }

    /// Record that `digest` (of `size` bytes) is readable through `repo`,
    /// creating the repository when needed. Idempotent.
    pub async fn link_blob(&self, repo: &str, digest: &Digest, size: u64) -> Result<(), MetaError> {
        check_repo(repo)?;
        let size = i64::try_from(size).map_err(|_| MetaError::SizeInvalid(size))?;
        let (done, linked) = tokio::sync::oneshot::channel();
        let pending = PendingLink {
            repo: repo.to_string(),
            digest: digest.to_string(),
            size,
            shift: self.scopes.shift(repo),
            done,
        };
        let closed = || MetaError::Database(sqlx::Error::PoolClosed);
        self.links.send(pending).map_err(|_| closed())?;
        linked.await.map_err(|_| closed())??;
        tracing::debug!(repo, digest = %digest, size, "blob linked");
        Ok(())
    }

    /// Size of `digest` if it is linked to `repo`, else BLOB_UNKNOWN.
    ///
    /// A push asks this before it skips uploading a blob the repository
    /// has; if no manifest references the link and it is older than
    /// [`Store::with_gc_delay`] allows, the lookup makes it young again, so
    /// that garbage collection leaves it to the manifest that follows
    /// (distribution#3045). A link collected meanwhile is BLOB_UNKNOWN.
    pub async fn stat_blob(&self, repo: &str, digest: &Digest) -> Result<u64, MetaError> {
        check_repo(repo)?;
        let digest = digest.to_string();
        let row: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT l.size, l.created_at, (SELECT COUNT(*) FROM manifest_refs r \
                 WHERE r.repo = l.repo AND r.kind = 'blob' AND r.target = l.digest) \
             FROM blob_links l WHERE l.repo = $1 AND l.digest = $2",
        )
        .bind(repo)
        .bind(&digest)
        .fetch_optional(&self.pool)
        .await?;
        let (size, created_at, references) = row.ok_or(MetaError::BlobUnknown)?;
        let at = now();
        let renew_after = i64::try_from(self.renew_after.as_secs()).unwrap_or(i64::MAX);
        if references == 0 && created_at < at.saturating_sub(renew_after) {
            let renewed = sqlx::query(
                "UPDATE blob_links SET created_at = $3 WHERE repo = $1 AND digest = $2",
            )
            .bind(repo)
            .bind(&digest)
            .bind(at)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if renewed == 0 {
                return Err(MetaError::BlobUnknown);
            }
            tracing::debug!(repo, digest, "unreferenced blob link renewed");
        }
        to_u64(size)
    }

    /// Remove the link of `digest` to `repo`; BLOB_UNKNOWN when absent.
    /// Its bytes go at the next garbage collection unless something else
    /// links or references them.
    pub async fn unlink_blob(&self, repo: &str, digest: &Digest) -> Result<(), MetaError> {
        check_repo(repo)?;
        let digest = digest.to_string();
        let (_turn, mut tx) = self.begin_write().await?;
        // The queue's row before the link, as every writer (Postgres lock
        // order, see `link`).
        sqlx::query("DELETE FROM gc_links WHERE repo = $1 AND digest = $2")
            .bind(repo)
            .bind(&digest)
            .execute(&mut *tx)
            .await?;
        let gone = sqlx::query("DELETE FROM blob_links WHERE repo = $1 AND digest = $2")
            .bind(repo)
            .bind(&digest)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 0 {
            return Err(MetaError::BlobUnknown);
        }
        queue_garbage(&mut tx, &digest, now()).await?;
        tx.commit().await?;
        tracing::info!(repo, digest, "blob unlinked");
        Ok(())
    }

    /// Garbage collection's mark, one step of at most `limit` of each kind:
    ///
    /// - the queued links (made, or left by a deleted manifest, before
    ///   `cutoff`, Unix seconds) that were last made before `cutoff` and that
    ///   no manifest of their repository references are removed;
    /// - the digests that lost their last link, in this step or earlier,
    ///   and that nothing links or references now are returned as garbage
    ///   (they stay queued until [`Store::forget_garbage`]).
    ///
    /// Only the queues are read, so the work follows the garbage, not the
    /// size of the registry. With `dry_run` nothing is written or locked:
    /// the same decisions are simulated with plain reads
    /// ([`Store::plan_collection`]). On Postgres rows that a push holds are
    /// skipped, never waited for (the next step sees them); a push never
    /// waits on this step for longer than the step takes.
    pub async fn collect(
        &self,
        cutoff: i64,
        limit: u32,
        dry_run: bool,
    ) -> Result<Collection, MetaError> {
        if dry_run {
            return self.plan_collection(cutoff, limit).await;
        }
        let pg = self.backend == Backend::Postgres;
        let at = now();
        let (_turn, mut tx) = self.begin_write().await?;
        if pg {
            // One step at a time across replicas (several svc-blob replicas
            // collect, each through some svc-meta): steps of two
            // collectors would take the same garbage rows in other orders.
            let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(GC_LOCK)
                .fetch_one(&mut *tx)
                .await?;
            if !mine {
                return Ok(Collection::default());
            }
        }
        let queued: Vec<(String, String)> = sqlx::query_as(if pg {
            "SELECT repo, digest FROM gc_links WHERE queued_at < $1 \
             ORDER BY queued_at, repo, digest LIMIT $2 FOR UPDATE SKIP LOCKED"
        } else {
            "SELECT repo, digest FROM gc_links WHERE queued_at < $1 \
             ORDER BY queued_at, repo, digest LIMIT $2"
        })
        .bind(cutoff + self.scopes.widen())
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Collection {
            more: limit > 0 && queued.len() >= limit as usize,
            ..Collection::default()
        };
        for (repo, digest) in queued {
            let (collects, offset) = self.scopes.of(&repo);
            // This store's own cutoff (its gcDelay).
            let cutoff = cutoff - offset;
            if !collects {
                // A store that does not collect keeps its links.
                sqlx::query("DELETE FROM gc_links WHERE repo = $1 AND digest = $2")
                    .bind(&repo)
                    .bind(&digest)
                    .execute(&mut *tx)
                    .await?;
                continue;
            }
            let link: Option<(i64, i64)> = sqlx::query_as(if pg {
                "SELECT size, created_at FROM blob_links WHERE repo = $1 AND digest = $2 \
                 FOR UPDATE SKIP LOCKED"
            } else {
                "SELECT size, created_at FROM blob_links WHERE repo = $1 AND digest = $2"
            })
            .bind(&repo)
            .bind(&digest)
            .fetch_optional(&mut *tx)
            .await?;
            let unqueue = || {
                sqlx::query("DELETE FROM gc_links WHERE repo = $1 AND digest = $2")
                    .bind(&repo)
                    .bind(&digest)
            };
            let Some((size, created_at)) = link else {
                let busy: Option<i64> = if pg {
                    sqlx::query_scalar(
                        "SELECT size FROM blob_links WHERE repo = $1 AND digest = $2",
                    )
                    .bind(&repo)
                    .bind(&digest)
                    .fetch_optional(&mut *tx)
                    .await?
                } else {
                    None
                };
                if busy.is_none() {
                    // Gone another way (an unlink while a manifest still
                    // named the blob, then that manifest's delete): its
                    // digest may be garbage now.
                    unqueue().execute(&mut *tx).await?;
                    queue_garbage(&mut tx, &digest, at).await?;
                }
                continue;
            };
            let referenced: Option<String> = sqlx::query_scalar(
                "SELECT target FROM manifest_refs \
                 WHERE repo = $1 AND kind = 'blob' AND target = $2 LIMIT 1",
            )
            .bind(&repo)
            .bind(&digest)
            .fetch_optional(&mut *tx)
            .await?;
            if referenced.is_some() {
                // Queued again if that manifest is deleted.
                unqueue().execute(&mut *tx).await?;
                continue;
            }
            if created_at >= cutoff {
                // Made again since it was queued: look again when it is old.
                sqlx::query("UPDATE gc_links SET queued_at = $3 WHERE repo = $1 AND digest = $2")
                    .bind(&repo)
                    .bind(&digest)
                    .bind(created_at + self.scopes.shift(&repo))
                    .execute(&mut *tx)
                    .await?;
                continue;
            }
            sqlx::query("DELETE FROM blob_links WHERE repo = $1 AND digest = $2")
                .bind(&repo)
                .bind(&digest)
                .execute(&mut *tx)
                .await?;
            unqueue().execute(&mut *tx).await?;
            queue_garbage(&mut tx, &digest, at).await?;
            tracing::info!(repo, digest, size, "unreferenced blob link collected");
            out.links.push(CollectedLink {
                repo,
                digest,
                size: to_u64(size)?,
            });
        }
        let (queued, more) = queued_garbage(&mut tx, limit).await?;
        out.more |= more;
        for (digest, since) in queued {
            if used(&mut tx, &digest).await? {
                sqlx::query("DELETE FROM gc_blobs WHERE digest = $1 AND since = $2")
                    .bind(&digest)
                    .bind(since)
                    .execute(&mut *tx)
                    .await?;
            } else {
                out.garbage.push(Garbage { digest, since });
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// The bytes of `digest` are lost: remove every repository's link to
    /// it (and their garbage collection entries), so that a push that
    /// checks for it finds it missing and uploads it again. Returns how
    /// many links went.
    pub async fn forget_blob(&self, digest: &Digest) -> Result<u64, MetaError> {
        let digest = digest.to_string();
        let (_turn, mut tx) = self.begin_write().await?;
        // The queue's rows before the links (Postgres lock order).
        sqlx::query("DELETE FROM gc_links WHERE digest = $1")
            .bind(&digest)
            .execute(&mut *tx)
            .await?;
        let links = sqlx::query("DELETE FROM blob_links WHERE digest = $1")
            .bind(&digest)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        tracing::warn!(digest, links, "lost blob unlinked from every repository");
        Ok(links)
    }

    /// Count `pulls` (repository, manifest digest, how many, Unix seconds
    /// of the last) against their manifests; pulls of a manifest that is
    /// gone are dropped.
    pub async fn record_pulls(
        &self,
        pulls: &[(String, String, u64, i64)],
    ) -> Result<(), MetaError> {
        if pulls.is_empty() {
            return Ok(());
        }
        let mut sorted: Vec<&(String, String, u64, i64)> = pulls.iter().collect();
        // One row order for every writer (Postgres).
        sorted.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let (_turn, mut tx) = self.begin_write().await?;
        for (repo, digest, count, last) in sorted {
            // A plain read of the manifest: no lock that a push would meet.
            sqlx::query(
                "INSERT INTO manifest_pulls (repo, digest, pull_count, pulled_at) \
                 SELECT $1, $2, $3, $4 WHERE EXISTS \
                     (SELECT 1 FROM manifests WHERE repo = $1 AND digest = $2) \
                 ON CONFLICT (repo, digest) DO UPDATE SET \
                 pull_count = manifest_pulls.pull_count + excluded.pull_count, \
                 pulled_at = CASE WHEN manifest_pulls.pulled_at < excluded.pulled_at \
                     THEN excluded.pulled_at ELSE manifest_pulls.pulled_at END",
            )
            .bind(repo)
            .bind(digest)
            .bind(i64::try_from(*count).unwrap_or(i64::MAX))
            .bind(*last)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Pulls counted for a manifest and when it was last pulled (Unix
    /// seconds, `None` when never).
    pub async fn pull_stats(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<(u64, Option<i64>), MetaError> {
        let row: Option<(i64, Option<i64>)> = sqlx::query_as(
            "SELECT COALESCE(p.pull_count, 0), p.pulled_at FROM manifests m \
             LEFT JOIN manifest_pulls p ON p.repo = m.repo AND p.digest = m.digest \
             WHERE m.repo = $1 AND m.digest = $2",
        )
        .bind(repo)
        .bind(digest.to_string())
        .fetch_optional(&self.pool)
        .await?;
        let (count, at) = row.ok_or(MetaError::ManifestUnknown)?;
        Ok((to_u64(count)?, at))
    }

    /// What one step of [`Store::collect`] would do now, from plain reads
    /// (no lock, no write): the links it would remove, and the digests
    /// that would then be garbage.
    async fn plan_collection(&self, cutoff: i64, limit: u32) -> Result<Collection, MetaError> {
        let at = now();
        let mut conn = self.pool.acquire().await?;
        let queued: Vec<(String, String)> = sqlx::query_as(
            "SELECT repo, digest FROM gc_links WHERE queued_at < $1 \
             ORDER BY queued_at, repo, digest LIMIT $2",
        )
        .bind(cutoff + self.scopes.widen())
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
        let mut out = Collection {
            more: limit > 0 && queued.len() >= limit as usize,
            ..Collection::default()
        };
        // Links the step would remove, and digests it would queue.
        let mut removed: BTreeSet<(String, String)> = BTreeSet::new();
        let mut queued_digests: Vec<String> = Vec::new();
        for (repo, digest) in queued {
            let (collects, offset) = self.scopes.of(&repo);
            let cutoff = cutoff - offset;
            if !collects {
                continue;
            }
            let link: Option<(i64, i64)> = sqlx::query_as(
                "SELECT size, created_at FROM blob_links WHERE repo = $1 AND digest = $2",
            )
            .bind(&repo)
            .bind(&digest)
            .fetch_optional(&mut *conn)
            .await?;
            let Some((size, created_at)) = link else {
                queued_digests.push(digest);
                continue;
            };
            let referenced: Option<String> = sqlx::query_scalar(
                "SELECT target FROM manifest_refs \
                 WHERE repo = $1 AND kind = 'blob' AND target = $2 LIMIT 1",
            )
            .bind(&repo)
            .bind(&digest)
            .fetch_optional(&mut *conn)
            .await?;
            if referenced.is_some() || created_at >= cutoff {
                continue;
            }
            removed.insert((repo.clone(), digest.clone()));
            queued_digests.push(digest.clone());
            out.links.push(CollectedLink {
                repo,
                digest,
                size: to_u64(size)?,
            });
        }
        let (listed, more) = queued_garbage(&mut conn, limit).await?;
        out.more |= more;
        let mut candidates: BTreeMap<String, i64> = listed.into_iter().collect();
        for d in queued_digests {
            candidates.entry(d).or_insert(at);
        }
        for (digest, since) in candidates {
            let linked: Vec<String> =
                sqlx::query_scalar("SELECT repo FROM blob_links WHERE digest = $1")
                    .bind(&digest)
                    .fetch_all(&mut *conn)
                    .await?;
            let still_linked = linked
                .into_iter()
                .any(|repo| !removed.contains(&(repo, digest.clone())));
            let referenced: Option<String> = sqlx::query_scalar(
                "SELECT target FROM manifest_refs WHERE kind = 'blob' AND target = $1 LIMIT 1",
            )
            .bind(&digest)
            .fetch_optional(&mut *conn)
            .await?;
            if !still_linked && referenced.is_none() {
                out.garbage.push(Garbage { digest, since });
            }
        }
        Ok(out)
    }

    /// svc-blob has dealt with these entries of [`Store::collect`]'s
    /// garbage (removed the bytes, or found them in use again): drop them.
    /// An entry queued again since (another `since`) stays.
    pub async fn forget_garbage(&self, garbage: &[Garbage]) -> Result<(), MetaError> {
        if garbage.is_empty() {
            return Ok(());
        }
        let (_turn, mut tx) = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            // After any collection step in progress (see `collect`).
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(GC_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        for g in garbage {
            sqlx::query("DELETE FROM gc_blobs WHERE digest = $1 AND since = $2")
                .bind(&g.digest)
                .bind(g.since)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Those of `digests` that no repository links and no manifest
    /// references, whose bytes svc-blob may remove. A read only: the sweep
    /// must still make sure that no push stored a blob again meanwhile.
    pub async fn unreferenced(&self, digests: &[Digest]) -> Result<Vec<Digest>, MetaError> {
        let mut out = Vec::new();
        let mut conn = self.pool.acquire().await?;
        for d in digests {
            if !used(&mut conn, &d.to_string()).await? {
                out.push(d.clone());
            }
        }
        Ok(out)
    }

    /// Link `digest` into `repo` when `from` may serve it: `Some(size)` when
    /// mounted, `None` when `from` does not hold it (nothing changes then).
    pub async fn mount_blob(
        &self,
        repo: &str,
        from: &str,
        digest: &Digest,
    ) -> Result<Option<u64>, MetaError> {
        check_repo(repo)?;
        check_repo(from)?;
        let digest_s = digest.to_string();
        let (_turn, mut tx) = self.begin_write().await?;
        let size: Option<i64> = sqlx::query_scalar(self.backend.held(HeldRead::LinkSize))
            .bind(from)
            .bind(&digest_s)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(size) = size else {
            return Ok(None);
        };
        link(&mut tx, repo, &digest_s, size, self.scopes.shift(repo)).await?;
        tx.commit().await?;
        tracing::debug!(repo, from, digest = %digest_s, size, "blob mounted");
        Ok(Some(to_u64(size)?))
    }
}

/// Create `repo` if needed and link `digest` to it (inside `tx`).
/// A blob link waiting for its transaction.
#[derive(Debug)]
struct PendingLink {
    repo: String,
    digest: String,
    size: i64,
    /// [`GcScopes::shift`] of `repo`.
    shift: i64,
    done: tokio::sync::oneshot::Sender<Result<(), MetaError>>,
}

/// Links queued while one transaction commits share the next one.
const MAX_LINKS_PER_COMMIT: usize = 256;

/// Group commit of blob links: every link queued while the previous
/// transaction committed goes into the next one, so concurrent pushes pay one
/// fsync between them instead of one each. If a shared transaction fails,
/// each link is retried alone so every caller gets its own answer. Ends when
/// every `Store` handle is gone.
async fn write_links(
    pool: AnyPool,
    backend: Backend,
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    mut pending: tokio::sync::mpsc::UnboundedReceiver<PendingLink>,
) {
    let mut batch = Vec::new();
    while pending.recv_many(&mut batch, MAX_LINKS_PER_COMMIT).await > 0 {
        // Postgres: one order for every batch, so that two replicas'
        // batches never wait on each other's rows.
        batch.sort_by(|a, b| (&a.repo, &a.digest).cmp(&(&b.repo, &b.digest)));
        let together = async {
            let (_turn, mut tx) = begin_write(&pool, backend, &writer).await?;
            for l in &batch {
                link(&mut tx, &l.repo, &l.digest, l.size, l.shift).await?;
            }
            tx.commit().await?;
            Ok::<_, MetaError>(())
        };
        if together.await.is_ok() {
            for l in batch.drain(..) {
                let _ = l.done.send(Ok(()));
            }
        } else {
            for l in batch.drain(..) {
                let alone = async {
                    let (_turn, mut tx) = begin_write(&pool, backend, &writer).await?;
                    link(&mut tx, &l.repo, &l.digest, l.size, l.shift).await?;
                    tx.commit().await?;
                    Ok(())
                };
                let _ = l.done.send(alone.await);
            }
        }
    }
}

/// Start a write transaction on `backend`; on SQLite after this process's
/// turn, which the returned guard holds until it is dropped.
async fn begin_write(
    pool: &AnyPool,
    backend: Backend,
    writer: &std::sync::Arc<tokio::sync::Mutex<()>>,
) -> Result<
    (
        Option<tokio::sync::OwnedMutexGuard<()>>,
        sqlx::Transaction<'static, sqlx::Any>,
    ),
    sqlx::Error,
> {
    match backend {
        Backend::Sqlite => {
            let turn = writer.clone().lock_owned().await;
            let tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            Ok((Some(turn), tx))
        }
        Backend::Postgres => Ok((None, pool.begin().await?)),
    }
}

/// Whether a SQLite URL names a private in-memory database (`sqlite::memory:`).
fn sqlite_anonymous(url: &str) -> bool {
    matches!(
        url.trim_start_matches("sqlite:").trim_start_matches("//"),
        ":memory:"
    )
}

/// Whether a SQLite URL names an in-memory database, private or shared.
pub(crate) fn sqlite_in_memory(url: &str) -> bool {
    sqlite_anonymous(url) || url.contains("mode=memory")
}

/// Open the SQLite database at `url` (creating it and its directory) in WAL
/// mode with full fsync and foreign keys, and apply the migrations.
async fn open_sqlite(url: &str, busy_timeout: Duration) -> Result<AnyPool, MetaError> {
    use sqlx::sqlite::SqliteConnectOptions;
    use std::str::FromStr as _;
    let options = SqliteConnectOptions::from_str(url)?;
    let file = options.get_filename().to_path_buf();
    let anonymous = sqlite_anonymous(url);
    let in_memory = sqlite_in_memory(url);
    // Every connection of the pool opens the URL again: an in-memory
    // database needs one shared name to be one database.
    let url = if anonymous {
        format!(
            "sqlite:file:capstan-meta-{}?mode=memory&cache=shared",
            uuid::Uuid::new_v4().simple()
        )
    } else {
        if let Some(dir) = file.parent()
            && !dir.as_os_str().is_empty()
        {
            tokio::fs::create_dir_all(dir).await?;
        }
        // Created when missing, unless the URL says otherwise.
        match url.split_once('?') {
            Some((_, query)) if query.split('&').any(|kv| kv.starts_with("mode=")) => {
                url.to_string()
            }
            Some(_) => format!("{url}&mode=rwc"),
            None => format!("{url}?mode=rwc"),
        }
    };
    let busy_ms = busy_timeout.as_millis();
    let pool = AnyPoolOptions::new()
        .max_connections(SQLITE_CONNECTIONS)
        // An in-memory database lives while one connection does: keep one,
        // for good.
        .min_connections(u32::from(in_memory))
        .idle_timeout(None)
        .max_lifetime(if in_memory {
            None
        } else {
            Some(Duration::from_secs(30 * 60))
        })
        .after_connect(move |conn, _| {
            Box::pin(async move {
                use sqlx::Executor as _;
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "PRAGMA busy_timeout = {busy_ms}; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;"
                )))
                .await?;
                Ok(())
            })
        })
        .connect(&url)
        .await?;
    SQLITE_MIGRATIONS.run(&pool).await?;
    tracing::info!(file = %file.display(), "metadata database open (sqlite)");
    Ok(pool)
}

/// A connection listening on the change channel.
async fn listen(url: &str) -> Result<sqlx::postgres::PgListener, MetaError> {
    let mut l = sqlx::postgres::PgListener::connect(url).await?;
    l.listen(CHANGES_CHANNEL).await?;
    Ok(l)
}

/// Publish every change any replica commits, until `gone` closes (the last
/// `Store` handle went). Whenever the listening connection is lost,
/// changes committed meanwhile are missed, so once it listens again
/// subscribers are told to drop everything (`""`) — only then, so that
/// nothing committed between that word and the new `LISTEN` goes unheard.
async fn follow_notifications(
    url: String,
    mut listener: sqlx::postgres::PgListener,
    changes: broadcast::Sender<String>,
    mut gone: tokio::sync::mpsc::Receiver<()>,
) {
    loop {
        let got = tokio::select! {
            _ = gone.recv() => return,
            got = listener.try_recv() => got,
        };
        match got {
            Ok(Some(n)) => {
                let _ = changes.send(n.payload().to_string());
            }
            // sqlx has already reconnected and listens again.
            Ok(None) => {
                tracing::warn!("metadata change feed lost and re-established");
                let _ = changes.send(String::new());
            }
            Err(e) => {
                tracing::warn!(error = %e, "metadata change feed lost; reconnecting");
                // A fresh listener: sqlx keeps some dead connections.
                let mut pause = Duration::from_millis(100);
                listener = loop {
                    tokio::select! {
                        _ = gone.recv() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    match listen(&url).await {
                        Ok(l) => break l,
                        Err(e) => {
                            tracing::debug!(error = %e, "metadata change feed still down");
                            pause = (pause * 2).min(Duration::from_secs(5));
                        }
                    }
                };
                tracing::info!("metadata change feed re-established");
                let _ = changes.send(String::new());
            }
        }
    }
}

/// Inside `tx`: remove manifest `digest` of `repo` (its tags already gone)
/// and its references, queueing the links they kept for garbage
/// collection. Returns how many manifests went (0 or 1).
async fn drop_manifest(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    repo: &str,
    digest: &str,
    shift: i64,
) -> Result<u64, MetaError> {
    // The links this manifest kept may be garbage now.
    sqlx::query(
        "INSERT INTO gc_links (repo, digest, queued_at) \
         SELECT repo, target, $3 FROM manifest_refs \
         WHERE repo = $1 AND digest = $2 AND kind = 'blob' ORDER BY target \
         ON CONFLICT (repo, digest) DO UPDATE SET queued_at = excluded.queued_at",
    )
    .bind(repo)
    .bind(digest)
    .bind(now() + shift)
    .execute(&mut **tx)
    .await?;
    for table in [
        "DELETE FROM manifest_refs WHERE repo = $1 AND digest = $2",
        "DELETE FROM manifest_pulls WHERE repo = $1 AND digest = $2",
    ] {
        sqlx::query(table)
            .bind(repo)
            .bind(digest)
            .execute(&mut **tx)
            .await?;
    }
    Ok(
        sqlx::query("DELETE FROM manifests WHERE repo = $1 AND digest = $2")
            .bind(repo)
            .bind(digest)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
    )
}

/// Queue `digest` for svc-blob: its last link may be gone.
async fn queue_garbage(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    digest: &str,
    at: i64,
) -> Result<(), MetaError> {
    sqlx::query(
        "INSERT INTO gc_blobs (digest, since) VALUES ($1, $2) \
         ON CONFLICT (digest) DO UPDATE SET since = excluded.since",
    )
    .bind(digest)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The oldest `limit` entries of the garbage queue (digest, since), and
/// whether the queue may hold more.
async fn queued_garbage(
    conn: &mut sqlx::AnyConnection,
    limit: u32,
) -> Result<(Vec<(String, i64)>, bool), MetaError> {
    let listed: Vec<(String, i64)> =
        sqlx::query_as("SELECT digest, since FROM gc_blobs ORDER BY since, digest LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await?;
    let more = limit > 0 && listed.len() >= limit as usize;
    Ok((listed, more))
}

/// Whether any repository links `digest` or any manifest references it as
/// a blob.
async fn used(conn: &mut sqlx::AnyConnection, digest: &str) -> Result<bool, MetaError> {
    let found: Option<String> = sqlx::query_scalar(
        "SELECT digest FROM blob_links WHERE digest = $1 \
         UNION ALL \
         SELECT target FROM manifest_refs WHERE kind = 'blob' AND target = $1 \
         LIMIT 1",
    )
    .bind(digest)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(found.is_some())
}

async fn link(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    repo: &str,
    digest: &str,
    size: i64,
    shift: i64,
) -> Result<(), MetaError> {
    let at = now();
    sqlx::query(
        "INSERT INTO repositories (name, created_at) VALUES ($1, $2) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(repo)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    // Queued for garbage collection, which drops the entry once a manifest
    // references the blob. The queue's row first: a collection takes it
    // before the link, and so must every writer (Postgres lock order).
    sqlx::query(
        "INSERT INTO gc_links (repo, digest, queued_at) VALUES ($1, $2, $3) \
         ON CONFLICT (repo, digest) DO UPDATE SET queued_at = excluded.queued_at",
    )
    .bind(repo)
    .bind(digest)
    .bind(at + shift)
    .execute(&mut **tx)
    .await?;
    // `created_at` is when the link was last made: linking again (a push
    // of a blob the repository has, a mount) renews it, so garbage
    // collection, which spares links younger than `gcDelay`, leaves a blob
    // alone while a push that relies on it is under way.
    sqlx::query(
        "INSERT INTO blob_links (repo, digest, size, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (repo, digest) DO UPDATE SET created_at = excluded.created_at",
    )
    .bind(repo)
    .bind(digest)
    .bind(size)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub mod search;

#[cfg(test)]
mod tests;
