//! zot's retention (`storage.retention`), applied by svc-meta at the start of
//! each garbage collection: which tags go, and which untagged manifests and
//! referrers without a subject go once older than `delay`.
//!
//! Deciding is a pure function of one repository's state ([`plan`]), so a
//! dry run logs exactly what a real run on the same state deletes. Applying
//! re-checks each decision inside the deleting transaction: a tag moved by
//! a push since, or a manifest tagged or listed by an index since, stays.
//!
//! The rules, as zot has them: the first policy whose `repositories` glob
//! matches a repository applies (none: keep every tag, still remove
//! untagged manifests). With `keepTags`, each tag is judged by the first
//! entry whose patterns match it: kept when the entry has no criterion or
//! when the tag meets any of them (`mostRecentlyPushedCount` and
//! `mostRecentlyPulledCount` rank the entry's own tags); a tag no entry
//! matches goes. Untagged manifests that no index of the repository lists
//! and that have no subject go after `delay` (children of a tagged index
//! stay: distribution#3178); with `deleteReferrers`, so do manifests whose
//! subject is gone. Push time is when the manifest first came to the
//! repository, pull time its last GET.

use capstan_oci::access::Pattern;
use capstan_runtime::config::StorageConfig;
use capstan_runtime::config::retention::{KeepTags, RetentionConfig, RetentionPolicy};
use regex::Regex;
use std::collections::{BTreeMap, BTreeSet};

/// Retention of every store: the top level's (`storage.retention`) and
/// each `storage.subPaths` entry's own (zot: an entry's policies replace
/// the top level's for its repositories). A store whose `gc` is off has
/// none: retention runs only with garbage collection, as in zot.
#[derive(Debug, Clone)]
pub struct Retentions {
    top: Option<Retention>,
    sub: BTreeMap<String, Option<Retention>>,
    storage: StorageConfig,
}

impl Retentions {
    pub fn from_config(storage: &StorageConfig) -> Result<Retentions, String> {
        let top = storage
            .gc_enabled()
            .then(|| Retention::from_config(storage))
            .transpose()?;
        let mut sub = BTreeMap::new();
        for (key, entry) in &storage.sub_paths {
            let name = key.trim_matches('/').to_string();
            let scope = storage.gc_scope(&name);
            let compiled = scope
                .enabled
                .then(|| {
                    Retention::compile(
                        entry.retention.as_ref(),
                        scope.delay,
                        &format!("storage.subPaths.{key}.retention"),
                    )
                })
                .transpose()?;
            sub.insert(name, compiled);
        }
        Ok(Retentions {
            top,
            sub,
            storage: storage.clone(),
        })
    }

    /// The retention that applies to `repo`; `None` when its store does
    /// not collect garbage.
    pub fn for_repo(&self, repo: &str) -> Option<&Retention> {
        match self.storage.store_of(repo) {
            Some(name) => self.sub.get(name).and_then(Option::as_ref),
            None => self.top.as_ref(),
        }
    }

    /// Whether any store collects (and so applies retention).
    pub fn any(&self) -> bool {
        self.top.is_some() || self.sub.values().any(Option::is_some)
    }

    /// Whether every store that applies retention only decides (`dryRun`).
    pub fn all_dry_run(&self) -> bool {
        self.top
            .iter()
            .chain(self.sub.values().flatten())
            .all(|r| r.dry_run)
    }
}

/// One store's retention as configured, compiled.
#[derive(Debug, Clone)]
pub struct Retention {
    pub dry_run: bool,
    /// Seconds an untagged manifest or orphaned referrer is kept.
    pub delay: i64,
    /// `gcDelay` in seconds: how long a cosign signature tag
    /// (`sha256-<hex>.sig`) outlives its image.
    pub gc_delay: i64,
    policies: Vec<Policy>,
}

#[derive(Debug, Clone)]
struct Policy {
    repositories: Vec<Pattern>,
    delete_referrers: bool,
    delete_untagged: bool,
    keep: Vec<Keep>,
}

#[derive(Debug, Clone)]
struct Keep {
    patterns: Vec<Regex>,
    pulled_within: Option<i64>,
    pushed_within: Option<i64>,
    pushed_count: usize,
    pulled_count: usize,
}

impl Keep {
    fn matches(&self, tag: &str) -> bool {
        self.patterns.is_empty() || self.patterns.iter().any(|p| p.is_match(tag))
    }

    fn has_criteria(&self) -> bool {
        self.pulled_within.is_some()
            || self.pushed_within.is_some()
            || self.pushed_count > 0
            || self.pulled_count > 0
    }
}

/// The policy that applies when none matches.
static DEFAULT_POLICY: Policy = Policy {
    repositories: Vec::new(),
    delete_referrers: false,
    delete_untagged: true,
    keep: Vec::new(),
};

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl Retention {
    /// Compile `storage.retention` (absent: no policies). An error names
    /// the key of the bad value.
    pub fn from_config(storage: &StorageConfig) -> Result<Retention, String> {
        Self::compile(
            storage.retention.as_ref(),
            storage.gc_delay(),
            "storage.retention",
        )
    }

    /// One store's retention: `config` (none: no policy), with `gc_delay`
    /// that store's `gcDelay`; `key` names the section in errors.
    fn compile(
        config: Option<&RetentionConfig>,
        gc_delay: std::time::Duration,
        key: &str,
    ) -> Result<Retention, String> {
        let config = config.cloned().unwrap_or_default();
        let mut policies = Vec::new();
        for (i, p) in config.policies.iter().enumerate() {
            policies.push(compile_policy(p, &format!("{key}.policies[{i}]"))?);
        }
        Ok(Retention {
            dry_run: config.dry_run,
            delay: secs(config.delay.unwrap_or(gc_delay)),
            gc_delay: secs(gc_delay),
            policies,
        })
    }

    fn policy_for(&self, repo: &str) -> &Policy {
        self.policies
            .iter()
            .find(|p| p.repositories.iter().any(|g| g.matches(repo)))
            .unwrap_or(&DEFAULT_POLICY)
    }

    /// What retention removes from `state` (repository `repo`) at `now`.
    pub fn plan(&self, repo: &str, state: &RepoState, now: i64) -> Vec<Decision> {
        plan(self.policy_for(repo), state, now, self.delay, self.gc_delay)
    }
}

fn compile_policy(p: &RetentionPolicy, key: &str) -> Result<Policy, String> {
    let mut repositories = Vec::new();
    for (j, g) in p.repositories.iter().enumerate() {
        repositories
            .push(Pattern::new(g).map_err(|e| format!("{key}.repositories[{j}] {g:?}: {e}"))?);
    }
    let mut keep = Vec::new();
    for (k, t) in p.keep_tags.iter().enumerate() {
        keep.push(compile_keep(t, &format!("{key}.keepTags[{k}]"))?);
    }
    Ok(Policy {
        repositories,
        delete_referrers: p.delete_referrers,
        delete_untagged: p.deletes_untagged(),
        keep,
    })
}

fn compile_keep(t: &KeepTags, key: &str) -> Result<Keep, String> {
    let mut patterns = Vec::new();
    for (n, r) in t.patterns.iter().enumerate() {
        patterns.push(Regex::new(r).map_err(|e| format!("{key}.patterns[{n}] {r:?}: {e}"))?);
    }
    Ok(Keep {
        patterns,
        pulled_within: t.pulled_within.map(secs),
        pushed_within: t.pushed_within.map(secs),
        pushed_count: t.most_recently_pushed_count as usize,
        pulled_count: t.most_recently_pulled_count as usize,
    })
}

/// One manifest of a repository, as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestState {
    /// When it first came to the repository (Unix seconds).
    pub pushed_at: i64,
    /// When it was last pushed (the delay of untagged manifests and
    /// orphaned referrers counts from here).
    pub touched_at: i64,
    /// Its last GET, if any.
    pub pulled_at: Option<i64>,
    pub subject: Option<String>,
    /// Digests of the manifests it lists (an index).
    pub children: Vec<String>,
}

/// One repository: manifests by digest, tags by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoState {
    pub manifests: BTreeMap<String, ManifestState>,
    pub tags: BTreeMap<String, String>,
}

/// What retention removes, and the rule why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Remove tag `tag` (naming `digest`).
    DeleteTag {
        tag: String,
        digest: String,
        reason: &'static str,
    },
    /// Remove manifest `digest`: untagged, or a referrer without subject.
    DeleteManifest {
        digest: String,
        referrer: bool,
        reason: &'static str,
    },
}

/// Reasons, worded as zot logs them.
pub const NO_PATTERN: &str = "didn't meet any tag 'patterns' rules";
pub const NO_RULE: &str = "didn't meet any tag retention rule";
pub const UNTAGGED: &str = "deleteUntagged";
pub const REFERRER: &str = "deleteReferrers";

/// The subject digest a cosign tag (`sha256-<hex>.sig`, `.att`, `.sbom`)
/// names, if `tag` is one.
fn cosign_subject(tag: &str) -> Option<String> {
    let (stem, kind) = tag.rsplit_once('.')?;
    let hex = stem.strip_prefix("sha256-")?;
    let valid = matches!(kind, "sig" | "att" | "sbom")
        && hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    valid.then(|| format!("sha256:{hex}"))
}

fn plan(policy: &Policy, state: &RepoState, now: i64, delay: i64, gc_delay: i64) -> Vec<Decision> {
    let mut out = Vec::new();
    let mut tags = state.tags.clone();
    if policy.delete_referrers {
        // Cosign's tag scheme: the signature of an image that is gone goes
        // once `gcDelay` old, as in zot.
        for (tag, digest) in &state.tags {
            let orphaned = cosign_subject(tag).is_some_and(|s| !state.manifests.contains_key(&s))
                && state
                    .manifests
                    .get(digest)
                    .is_some_and(|m| m.pushed_at < now - gc_delay);
            if orphaned {
                out.push((tag.as_str(), REFERRER));
            }
        }
    }
    if !policy.keep.is_empty() {
        // Each tag to the first entry that matches it. A tag whose
        // manifest the snapshot lacks (pushed while it was read) is kept.
        let mut groups: Vec<Vec<&str>> = vec![Vec::new(); policy.keep.len()];
        for (tag, digest) in &state.tags {
            if !state.manifests.contains_key(digest) || out.iter().any(|(t, _)| t == tag) {
                continue;
            }
            let tag = tag.as_str();
            match policy.keep.iter().position(|k| k.matches(tag)) {
                Some(i) => groups[i].push(tag),
                None => out.push((tag, NO_PATTERN)),
            }
        }
        for (keep, group) in policy.keep.iter().zip(&groups) {
            if !keep.has_criteria() {
                continue;
            }
            let of = |tag: &str| state.tags.get(tag).and_then(|d| state.manifests.get(d));
            let pushed = |tag: &str| of(tag).map_or(i64::MIN, |m| m.pushed_at);
            let pulled = |tag: &str| of(tag).and_then(|m| m.pulled_at).unwrap_or(i64::MIN);
            let mut kept: BTreeSet<&str> = BTreeSet::new();
            let top = |key: &dyn Fn(&str) -> i64, n: usize| -> Vec<&str> {
                let mut ranked = group.clone();
                // Newest first; ties by name, so a run is reproducible.
                ranked.sort_by(|a, b| key(b).cmp(&key(a)).then(a.cmp(b)));
                ranked.truncate(n);
                ranked
            };
            kept.extend(top(&pushed, keep.pushed_count));
            kept.extend(top(&pulled, keep.pulled_count));
            for &tag in group {
                if keep.pushed_within.is_some_and(|d| pushed(tag) > now - d)
                    || keep
                        .pulled_within
                        .is_some_and(|d| pulled(tag) > now - d || pushed(tag) > now - d)
                {
                    kept.insert(tag);
                }
            }
            out.extend(
                group
                    .iter()
                    .filter(|t| !kept.contains(*t))
                    .map(|t| (*t, NO_RULE)),
            );
        }
    }
    let mut decisions: Vec<Decision> = Vec::new();
    let mut dropped: Vec<(&str, &'static str)> = out;
    dropped.sort();
    for (tag, reason) in dropped {
        if let Some(digest) = tags.remove(tag) {
            decisions.push(Decision::DeleteTag {
                tag: tag.to_string(),
                digest,
                reason,
            });
        }
    }
    // Untagged manifests and orphaned referrers, until nothing changes
    // (children of a removed index, referrers of a removed subject).
    let tagged: BTreeSet<&String> = tags.values().collect();
    let mut alive: BTreeSet<&String> = state.manifests.keys().collect();
    let old = |m: &ManifestState| m.touched_at.max(m.pushed_at) < now - delay;
    loop {
        let listed: BTreeSet<&String> = alive
            .iter()
            .filter_map(|d| state.manifests.get(*d))
            .flat_map(|m| m.children.iter())
            .collect();
        let mut gone = Vec::new();
        for &d in &alive {
            let m = &state.manifests[d];
            if listed.contains(d) || !old(m) {
                continue;
            }
            match &m.subject {
                // A referrer goes with its subject, tagged or not (zot).
                Some(s) if policy.delete_referrers && !alive.contains(s) => {
                    gone.push((d, true, REFERRER))
                }
                None if policy.delete_untagged && !tagged.contains(d) => {
                    gone.push((d, false, UNTAGGED))
                }
                _ => {}
            }
        }
        if gone.is_empty() {
            break;
        }
        for (d, referrer, reason) in gone {
            alive.remove(d);
            decisions.push(Decision::DeleteManifest {
                digest: d.clone(),
                referrer,
                reason,
            });
        }
    }
    decisions
}

#[cfg(test)]
mod tests;
