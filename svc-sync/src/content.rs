//! Which upstream repositories a registry's `content` selects, and where
//! they land locally (zot's `prefix`, `destination`, `stripPrefix`, `tags`).
//!
//! Mirroring maps upstream names to local ones; pull-through needs the
//! reverse: the local repository a client asked for, back to the upstream
//! one, which must then match the prefix.

use capstan_oci::access::Pattern;
use capstan_runtime::config::extensions::{SyncContent, SyncTags};
use regex::Regex;

/// One compiled content entry.
#[derive(Debug, Clone)]
pub struct Content {
    pattern: Pattern,
    /// The literal leading segments of the prefix (before any glob).
    fixed: String,
    destination: String,
    strip: bool,
    tags: TagFilter,
}

/// Tag filters: `regex`, `excludeRegex`, `semver`.
#[derive(Debug, Clone, Default)]
pub struct TagFilter {
    include: Option<Regex>,
    exclude: Option<Regex>,
    semver: bool,
}

impl TagFilter {
    fn new(t: Option<&SyncTags>, key: &str) -> Result<Self, String> {
        let Some(t) = t else {
            return Ok(Self::default());
        };
        let re = |r: &Option<String>, k: &str| {
            r.as_deref()
                .map(|r| Regex::new(r).map_err(|e| format!("{key}.tags.{k}: {e}")))
                .transpose()
        };
        Ok(Self {
            include: re(&t.regex, "regex")?,
            exclude: re(&t.exclude_regex, "excludeRegex")?,
            semver: t.semver,
        })
    }

    pub fn allows(&self, tag: &str) -> bool {
        self.include.as_ref().is_none_or(|r| r.is_match(tag))
            && !self.exclude.as_ref().is_some_and(|r| r.is_match(tag))
            && (!self.semver || is_semver(tag))
    }
}

/// `v1.2.3`, `1.2.3-rc.1`, `1.2.3+build`: a semantic version, `v` allowed.
fn is_semver(tag: &str) -> bool {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    let core = t.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

impl Content {
    pub fn new(c: &SyncContent, key: &str) -> Result<Self, String> {
        let prefix = c.prefix.trim_matches('/');
        if prefix.is_empty() {
            return Err(format!("{key}.prefix: required"));
        }
        let pattern = Pattern::new(prefix).map_err(|e| format!("{key}.prefix: {e}"))?;
        let fixed = prefix
            .split('/')
            .take_while(|s| !s.contains(['*', '?', '[', '{']))
            .collect::<Vec<_>>()
            .join("/");
        Ok(Self {
            pattern,
            fixed,
            destination: c
                .destination
                .as_deref()
                .unwrap_or("")
                .trim_matches('/')
                .to_string(),
            strip: c.strip_prefix,
            tags: TagFilter::new(c.tags.as_ref(), key)?,
        })
    }

    /// Everything, under the same names (no `content` configured).
    pub fn everything() -> Self {
        Self {
            pattern: Pattern::new("**").expect("valid glob"),
            fixed: String::new(),
            destination: String::new(),
            strip: false,
            tags: TagFilter::default(),
        }
    }

    pub fn tags(&self) -> &TagFilter {
        &self.tags
    }

    /// Whether the upstream repository is selected.
    pub fn selects(&self, upstream: &str) -> bool {
        self.pattern.matches(upstream)
    }

    /// The local name of selected upstream repository `upstream`.
    pub fn local_name(&self, upstream: &str) -> String {
        let rest = if self.strip {
            upstream
                .strip_prefix(self.fixed.as_str())
                .unwrap_or(upstream)
                .trim_start_matches('/')
        } else {
            upstream
        };
        match (self.destination.is_empty(), rest.is_empty()) {
            (true, _) => rest.to_string(),
            (false, true) => self.destination.clone(),
            (false, false) => format!("{}/{rest}", self.destination),
        }
    }

    /// The upstream repository a local name stands for, when this entry
    /// selects it.
    pub fn upstream_name(&self, local: &str) -> Option<String> {
        let rest = if self.destination.is_empty() {
            local
        } else if local == self.destination {
            ""
        } else {
            local.strip_prefix(&format!("{}/", self.destination))?
        };
        let upstream = match (self.strip, self.fixed.is_empty(), rest.is_empty()) {
            (false, _, _) => rest.to_string(),
            (true, true, _) => rest.to_string(),
            (true, false, true) => self.fixed.clone(),
            (true, false, false) => format!("{}/{rest}", self.fixed),
        };
        (!upstream.is_empty() && self.selects(&upstream) && self.local_name(&upstream) == local)
            .then_some(upstream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(v: serde_json::Value) -> Content {
        Content::new(&serde_json::from_value(v).unwrap(), "c").unwrap()
    }

    #[test]
    fn same_names_without_destination() {
        let c = content(serde_json::json!({"prefix": "/library/**"}));
        assert!(c.selects("library/alpine"));
        assert!(!c.selects("other/alpine"));
        assert_eq!(c.local_name("library/alpine"), "library/alpine");
        assert_eq!(
            c.upstream_name("library/alpine").as_deref(),
            Some("library/alpine")
        );
        assert_eq!(c.upstream_name("other/alpine"), None);
    }

    #[test]
    fn destination_and_strip_prefix_map_both_ways() {
        let c = content(
            serde_json::json!({"prefix": "/repo2/**", "destination": "/mirror", "stripPrefix": true}),
        );
        assert_eq!(c.local_name("repo2/a/b"), "mirror/a/b");
        assert_eq!(c.upstream_name("mirror/a/b").as_deref(), Some("repo2/a/b"));
        assert_eq!(c.upstream_name("elsewhere/a"), None);
        let c = content(
            serde_json::json!({"prefix": "/repo1/repo", "destination": "/localrepo", "stripPrefix": true}),
        );
        assert_eq!(c.local_name("repo1/repo"), "localrepo");
        assert_eq!(c.upstream_name("localrepo").as_deref(), Some("repo1/repo"));
        let c = content(serde_json::json!({"prefix": "/team/*", "destination": "/from-hub"}));
        assert_eq!(c.local_name("team/app"), "from-hub/team/app");
        assert_eq!(
            c.upstream_name("from-hub/team/app").as_deref(),
            Some("team/app")
        );
        assert_eq!(
            c.upstream_name("from-hub/team/app/deeper"),
            None,
            "* is one level"
        );
    }

    #[test]
    fn tag_filters_combine() {
        let c = content(
            serde_json::json!({"prefix": "a", "tags": {"regex": "^v?1\\.", "excludeRegex": "-rc", "semver": true}}),
        );
        assert!(c.tags().allows("v1.2.3"));
        assert!(c.tags().allows("1.0.0+build"));
        assert!(!c.tags().allows("1.2.3-rc1"));
        assert!(!c.tags().allows("2.0.0"));
        assert!(!c.tags().allows("1.2"));
        assert!(!c.tags().allows("latest"));
        assert!(Content::everything().tags().allows("latest"));
        let bad = Content::new(
            &serde_json::from_value(serde_json::json!({"prefix": "a", "tags": {"regex": "("}}))
                .unwrap(),
            "extensions.sync.registries[0].content[0]",
        )
        .unwrap_err();
        assert!(bad.contains("content[0].tags.regex"), "{bad}");
    }
}
