//! zot's `storage.retention`: which tags, untagged manifests and referrers
//! garbage collection removes. svc-meta applies it; the semantics (first
//! matching policy, first matching `keepTags` entry, criteria ORed) are
//! documented on [`RetentionConfig`] and in the README.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `storage.retention`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionConfig {
    /// Decide and log, delete nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// How old an untagged manifest, or a referrer whose subject is gone,
    /// must be before it is removed (default: `gcDelay`, as in zot).
    #[serde(default, with = "super::opt_duration")]
    pub delay: Option<Duration>,
    /// Tried in order; the first whose `repositories` matches a repository
    /// applies to it. A repository no policy matches keeps every tag and
    /// loses its untagged manifests (zot's behaviour).
    #[serde(default)]
    pub policies: Vec<RetentionPolicy>,
}

/// One entry of `storage.retention.policies`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicy {
    /// Repository globs (`*` within a path segment, `**` across `/`).
    /// zot's docs once called this `repoNames`; both are read.
    #[serde(default, alias = "repoNames", alias = "reponames")]
    pub repositories: Vec<String>,
    /// Remove manifests whose `subject` is no longer in the repository,
    /// once older than `delay`.
    #[serde(default)]
    pub delete_referrers: bool,
    /// Remove manifests that no tag names, no index of the repository
    /// lists and that have no `subject`, once older than `delay`
    /// (default true).
    #[serde(default)]
    pub delete_untagged: Option<bool>,
    /// Which tags to keep. Empty: every tag. Otherwise each tag is judged
    /// by the first entry whose `patterns` match it and removed if it
    /// matches none, or meets none of that entry's criteria.
    #[serde(default)]
    pub keep_tags: Vec<KeepTags>,
}

impl RetentionPolicy {
    /// `deleteUntagged`, true unless set false.
    pub fn deletes_untagged(&self) -> bool {
        self.delete_untagged.unwrap_or(true)
    }
}

/// One entry of a policy's `keepTags`. Without any criterion, every tag
/// its patterns match is kept; with some, a tag is kept if it meets any.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeepTags {
    /// Regular expressions, unanchored (`v2.*` also matches `xv2`), as in
    /// zot; none matches every tag.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Keep a tag whose manifest was pulled (or pushed) within this time.
    #[serde(default, with = "super::opt_duration")]
    pub pulled_within: Option<Duration>,
    /// Keep a tag whose manifest was pushed within this time.
    #[serde(default, with = "super::opt_duration")]
    pub pushed_within: Option<Duration>,
    /// Keep this many of the entry's tags, most recently pushed first.
    #[serde(default)]
    pub most_recently_pushed_count: u32,
    /// Keep this many of the entry's tags, most recently pulled first.
    #[serde(default)]
    pub most_recently_pulled_count: u32,
}
