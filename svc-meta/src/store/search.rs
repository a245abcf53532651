//! The reads search is built on (`crate::search`): tagged images chosen by
//! repository, tag or digest; per-repository figures; one manifest's
//! stored facts; users' stars and bookmarks. They return every candidate
//! in a light form (no facts), so that permission filtering, sorting and
//! paging happen over small rows and only a page's facts are read. Text
//! matches are case-sensitive and the same on SQLite and Postgres (`instr`,
//! which the Postgres migration provides).

use super::{Store, check_repo, now, to_u64};
use crate::error::MetaError;

/// Media types of signatures that sign the manifest they refer to.
const SIGNATURES: [&str; 2] = [
    "application/vnd.dev.cosign.artifact.sig.v1+json",
    "application/vnd.cncf.notary.signature",
];

/// Which tagged images a search looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select<'a> {
    /// Every tag of every repository.
    All,
    /// Every tag of one repository.
    Repo(&'a str),
    /// The tags of `repo` that start with `prefix`.
    TagPrefix { repo: &'a str, prefix: &'a str },
    /// Tags that contain the text, in every repository.
    TagContains(&'a str),
    /// Tags whose manifest, config or layers (or an index's children's)
    /// have a digest that contains the text.
    Digest(&'a str),
}

/// A tagged image as search lists it, before its facts are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    pub repo: String,
    pub tag: String,
    pub digest: String,
    pub media_type: String,
    /// `os/arch[/variant]` of each platform.
    pub platforms: Vec<String>,
    /// When the image was made (Unix seconds).
    pub made_at: i64,
    /// When the manifest was first pushed.
    pub pushed_at: i64,
    /// When the tag was last set.
    pub tagged_at: i64,
    pub downloads: u64,
    pub pulled_at: Option<i64>,
    /// A cosign or notation signature refers to it.
    pub signed: bool,
}

/// The figures of a repository with at least one tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFigures {
    pub name: String,
    /// The newest `made_at` of its tagged images.
    pub made_at: i64,
    /// Pulls of its tagged manifests.
    pub downloads: u64,
    pub stars: u64,
}

/// One stored manifest as search shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub digest: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
    /// The manifest's own bytes.
    pub size: u64,
    /// Its annotations (JSON object).
    pub annotations: String,
    /// [`crate::facts::Facts`] as JSON, for an image manifest.
    pub facts: Option<String>,
    pub platforms: Vec<String>,
    pub made_at: i64,
    pub pushed_at: i64,
    pub downloads: u64,
    pub pulled_at: Option<i64>,
    pub signed: bool,
}

/// What users mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Star,
    Bookmark,
}

impl Mark {
    fn as_str(self) -> &'static str {
        match self {
            Mark::Star => "star",
            Mark::Bookmark => "bookmark",
        }
    }
}

fn platforms(p: Option<String>) -> Vec<String> {
    p.map(|p| {
        p.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// `1` when a cosign or notation signature refers to the manifest at
/// `$a.repo` / `$a.digest` (a referrer of type $3 or $4, or a cosign
/// `sha256-<hex>.sig` tag), else `0`.
macro_rules! signed_sql {
    ($a:ident) => {
        concat!(
            "CAST(CASE WHEN EXISTS (SELECT 1 FROM manifests s WHERE s.repo = ",
            stringify!($a),
            ".repo AND s.subject = ",
            stringify!($a),
            ".digest AND s.artifact_type IN ($3, $4)) \
             OR EXISTS (SELECT 1 FROM tags c WHERE c.repo = ",
            stringify!($a),
            ".repo AND c.name = 'sha256-' || substr(",
            stringify!($a),
            ".digest, 8) || '.sig') THEN 1 ELSE 0 END AS BIGINT)"
        )
    };
}

/// The columns of [`Tagged`], over `tags t`, `manifests m` and
/// `manifest_pulls p`.
macro_rules! tagged_sql {
    ($where:literal) => {
        concat!(
            "SELECT t.repo, t.name, t.digest, m.media_type, m.platforms, \
                    COALESCE(m.made_at, m.created_at), m.created_at, t.updated_at, \
                    COALESCE(p.pull_count, 0), p.pulled_at, ",
            signed_sql!(t),
            " FROM tags t JOIN manifests m ON m.repo = t.repo AND m.digest = t.digest \
             LEFT JOIN manifest_pulls p ON p.repo = t.repo AND p.digest = t.digest \
             WHERE ",
            $where
        )
    };
}

type TaggedRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
    i64,
);

impl Store {
    /// The tagged images `select` chooses, in no particular order.
    pub async fn tagged(&self, select: Select<'_>) -> Result<Vec<Tagged>, MetaError> {
        // Every query binds the same four parameters ($1 and $2 are the
        // selection's, used or compared with themselves), so one call
        // site serves them all.
        let (sql, a, b): (&str, &str, &str) = match select {
            Select::All => (tagged_sql!("$1 = $1 AND $2 = $2"), "", ""),
            Select::Repo(repo) => (tagged_sql!("t.repo = $1 AND $2 = $2"), repo, ""),
            Select::TagPrefix { repo, prefix } => (
                tagged_sql!("t.repo = $1 AND substr(t.name, 1, length($2)) = $2"),
                repo,
                prefix,
            ),
            Select::TagContains(text) => {
                (tagged_sql!("instr(t.name, $1) > 0 AND $2 = $2"), text, "")
            }
            Select::Digest(text) => (
                tagged_sql!(
                    "$2 = $2 AND (instr(t.digest, $1) > 0 \
                     OR EXISTS (SELECT 1 FROM manifest_refs r WHERE r.repo = t.repo \
                                AND r.digest = t.digest AND instr(r.target, $1) > 0) \
                     OR EXISTS (SELECT 1 FROM manifest_refs c JOIN manifest_refs b \
                                ON b.repo = c.repo AND b.digest = c.target \
                                WHERE c.repo = t.repo AND c.digest = t.digest \
                                AND c.kind = 'manifest' AND instr(b.target, $1) > 0))"
                ),
                text,
                "",
            ),
        };
        let rows: Vec<TaggedRow> = sqlx::query_as(sql)
            .bind(a)
            .bind(b)
            .bind(SIGNATURES[0])
            .bind(SIGNATURES[1])
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Tagged {
                    repo: r.0,
                    tag: r.1,
                    digest: r.2,
                    media_type: r.3,
                    platforms: platforms(r.4),
                    made_at: r.5,
                    pushed_at: r.6,
                    tagged_at: r.7,
                    downloads: to_u64(r.8)?,
                    pulled_at: r.9,
                    signed: r.10 != 0,
                })
            })
            .collect()
    }

    /// The figures of every repository with at least one tag.
    pub async fn repo_figures(&self) -> Result<Vec<RepoFigures>, MetaError> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT t.repo, MAX(COALESCE(m.made_at, m.created_at)), \
                    CAST(COALESCE(SUM(p.pull_count), 0) AS BIGINT) \
             FROM tags t JOIN manifests m ON m.repo = t.repo AND m.digest = t.digest \
             LEFT JOIN manifest_pulls p ON p.repo = t.repo AND p.digest = t.digest \
             GROUP BY t.repo",
        )
        .fetch_all(&self.pool)
        .await?;
        let stars: Vec<(String, i64)> = sqlx::query_as(
            "SELECT repo, COUNT(*) FROM user_marks WHERE kind = 'star' GROUP BY repo",
        )
        .fetch_all(&self.pool)
        .await?;
        let stars: std::collections::HashMap<String, i64> = stars.into_iter().collect();
        rows.into_iter()
            .map(|(name, made_at, downloads)| {
                Ok(RepoFigures {
                    stars: to_u64(stars.get(&name).copied().unwrap_or(0))?,
                    name,
                    made_at,
                    downloads: to_u64(downloads)?,
                })
            })
            .collect()
    }

    /// The manifest `digest` of `repo` as search shows it, or `None`.
    pub async fn shown(&self, repo: &str, digest: &str) -> Result<Option<Shown>, MetaError> {
        let rows = self.shown_where(SHOWN_ONE, repo, digest).await?;
        Ok(rows.into_iter().next())
    }

    /// The children of the index `digest` of `repo` that are stored, in
    /// no particular order.
    pub async fn shown_children(&self, repo: &str, digest: &str) -> Result<Vec<Shown>, MetaError> {
        self.shown_where(SHOWN_CHILDREN, repo, digest).await
    }

    async fn shown_where(
        &self,
        sql: &'static str,
        repo: &str,
        digest: &str,
    ) -> Result<Vec<Shown>, MetaError> {
        let rows: Vec<ShownRow> = sqlx::query_as(sql)
            .bind(repo)
            .bind(digest)
            .bind(SIGNATURES[0])
            .bind(SIGNATURES[1])
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Shown {
                    digest: r.0,
                    media_type: r.1,
                    artifact_type: r.2,
                    size: to_u64(r.3)?,
                    annotations: r.4,
                    facts: r.5,
                    platforms: platforms(r.6),
                    made_at: r.7,
                    pushed_at: r.8,
                    downloads: to_u64(r.9)?,
                    pulled_at: r.10,
                    signed: r.11 != 0,
                })
            })
            .collect()
    }

    /// Flip `user`'s `mark` on `repo`; whether it is marked now. The
    /// repository must exist (NAME_UNKNOWN).
    pub async fn toggle_mark(&self, user: &str, mark: Mark, repo: &str) -> Result<bool, MetaError> {
        check_repo(repo)?;
        let (_turn, mut tx) = self.begin_write().await?;
        let exists: Option<String> =
            sqlx::query_scalar("SELECT name FROM repositories WHERE name = $1")
                .bind(repo)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Err(MetaError::NameUnknown(repo.to_string()));
        }
        let removed =
            sqlx::query("DELETE FROM user_marks WHERE username = $1 AND kind = $2 AND repo = $3")
                .bind(user)
                .bind(mark.as_str())
                .bind(repo)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if removed == 0 {
            sqlx::query(
                "INSERT INTO user_marks (username, kind, repo, marked_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(user)
            .bind(mark.as_str())
            .bind(repo)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(removed == 0)
    }

    /// Whether repository `repo` exists (has had a manifest).
    pub async fn repo_exists(&self, repo: &str) -> Result<bool, MetaError> {
        let found: Option<String> =
            sqlx::query_scalar("SELECT name FROM repositories WHERE name = $1")
                .bind(repo)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    /// The repositories `user` marked with `mark` that exist, by name.
    pub async fn marked(&self, user: &str, mark: Mark) -> Result<Vec<String>, MetaError> {
        Ok(sqlx::query_scalar(
            "SELECT u.repo FROM user_marks u JOIN repositories r ON r.name = u.repo \
             WHERE u.username = $1 AND u.kind = $2 ORDER BY u.repo",
        )
        .bind(user)
        .bind(mark.as_str())
        .fetch_all(&self.pool)
        .await?)
    }
}

/// The columns of [`Shown`] over `manifests m` and `manifest_pulls p`
/// ($1 repo, $3 and $4 the signature types).
macro_rules! shown_sql {
    ($from:literal) => {
        concat!(
            "SELECT m.digest, m.media_type, m.artifact_type, m.size, m.annotations, m.facts, \
                    m.platforms, COALESCE(m.made_at, m.created_at), m.created_at, \
                    COALESCE(p.pull_count, 0), p.pulled_at, ",
            signed_sql!(m),
            " ",
            $from
        )
    };
}

const SHOWN_ONE: &str = shown_sql!(
    "FROM manifests m \
     LEFT JOIN manifest_pulls p ON p.repo = m.repo AND p.digest = m.digest \
     WHERE m.repo = $1 AND m.digest = $2"
);

const SHOWN_CHILDREN: &str = shown_sql!(
    "FROM manifest_refs r JOIN manifests m ON m.repo = r.repo AND m.digest = r.target \
     LEFT JOIN manifest_pulls p ON p.repo = m.repo AND p.digest = m.digest \
     WHERE r.repo = $1 AND r.digest = $2 AND r.kind = 'manifest'"
);

type ShownRow = (
    String,
    String,
    Option<String>,
    i64,
    String,
    Option<String>,
    Option<String>,
    i64,
    i64,
    i64,
    Option<i64>,
    i64,
);
