//! Repository access in zot's model: the actions a caller may hold on a
//! repository, and the glob rules that grant them.
//!
//! A [`Rules`] value is what one caller may do anywhere: a list of repository
//! globs, each with the caller's actions there, plus actions held on every
//! repository (zot's `adminPolicy`). For a repository, the longest glob that
//! matches it decides (zot's rule), whether or not it grants anything; the
//! everywhere-actions are added on top. `*` matches within one path segment,
//! `**` across segments.

use globset::{GlobBuilder, GlobMatcher};
use std::fmt;
use std::str::FromStr;

/// One thing a caller may do to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Pull: GET/HEAD of manifests, blobs, tags, referrers; catalog entry.
    Read,
    /// Push content and new tags.
    Create,
    /// Move an existing tag to other content.
    Update,
    /// Delete manifests, tags and blobs.
    Delete,
    /// Refuse deleting a manifest that other tags still reference.
    DetectManifestCollision,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::Read,
        Action::Create,
        Action::Update,
        Action::Delete,
        Action::DetectManifestCollision,
    ];

    /// The name used in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::DetectManifestCollision => "detectManifestCollision",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error(
        "unknown action {0:?} (expected read, create, update, delete or detectManifestCollision)"
    )]
    UnknownAction(String),
    #[error("invalid repository pattern {pattern:?}: {message}")]
    BadPattern { pattern: String, message: String },
}

impl FromStr for Action {
    type Err = AccessError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| AccessError::UnknownAction(s.to_string()))
    }
}

/// A set of actions.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    /// Every action except `detectManifestCollision`, which restricts.
    pub const ALL: Actions = Actions(0b1111);

    pub fn contains(self, a: Action) -> bool {
        self.0 & a.bit() != 0
    }

    pub fn insert(&mut self, a: Action) {
        self.0 |= a.bit();
    }

    pub fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }

    /// Parse configuration names; an unknown name is an error.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Actions, AccessError> {
        let mut set = Actions::NONE;
        for n in names {
            set.insert(n.as_ref().parse()?);
        }
        Ok(set)
    }

    pub fn names(self) -> Vec<String> {
        self.iter().map(|a| a.as_str().to_string()).collect()
    }
}

impl FromIterator<Action> for Actions {
    fn from_iter<I: IntoIterator<Item = Action>>(iter: I) -> Self {
        let mut set = Actions::NONE;
        for a in iter {
            set.insert(a);
        }
        set
    }
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// A compiled repository glob.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    matcher: GlobMatcher,
}

impl Pattern {
    pub fn new(text: &str) -> Result<Self, AccessError> {
        let glob = GlobBuilder::new(text)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| AccessError::BadPattern {
                pattern: text.to_string(),
                message: e.kind().to_string(),
            })?;
        Ok(Self {
            text: text.to_string(),
            matcher: glob.compile_matcher(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `repo` matches; `a/**` also matches `a` itself.
    pub fn matches(&self, repo: &str) -> bool {
        self.matcher.is_match(repo)
            || self
                .text
                .strip_suffix("/**")
                .is_some_and(|prefix| prefix == repo)
    }
}

/// What one caller may do, repository by repository.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    patterns: Vec<(Pattern, Actions)>,
    everywhere: Actions,
}

impl Rules {
    /// Rules from `(glob, actions)` pairs plus actions held everywhere.
    pub fn new<S: AsRef<str>>(
        patterns: impl IntoIterator<Item = (S, Actions)>,
        everywhere: Actions,
    ) -> Result<Self, AccessError> {
        let patterns = patterns
            .into_iter()
            .map(|(p, a)| Ok((Pattern::new(p.as_ref())?, a)))
            .collect::<Result<Vec<_>, AccessError>>()?;
        Ok(Self {
            patterns,
            everywhere,
        })
    }

    /// Every action on every repository.
    pub fn unrestricted() -> Self {
        Self {
            patterns: Vec::new(),
            everywhere: Actions::ALL,
        }
    }

    /// The actions on `repo`: those of the longest matching pattern plus the
    /// everywhere-actions.
    pub fn actions(&self, repo: &str) -> Actions {
        let mut best: Option<(&Pattern, Actions)> = None;
        for (p, a) in &self.patterns {
            if p.matches(repo) && best.is_none_or(|(b, _)| p.text.len() > b.text.len()) {
                best = Some((p, *a));
            }
        }
        best.map(|(_, a)| a)
            .unwrap_or_default()
            .union(self.everywhere)
    }

    pub fn allows(&self, repo: &str, action: Action) -> bool {
        self.actions(repo).contains(action)
    }

    /// Whether the caller may do `action` on at least one repository.
    pub fn allows_somewhere(&self, action: Action) -> bool {
        self.everywhere.contains(action) || self.patterns.iter().any(|(_, a)| a.contains(action))
    }

    pub fn patterns(&self) -> impl Iterator<Item = (&str, Actions)> {
        self.patterns.iter().map(|(p, a)| (p.as_str(), *a))
    }

    pub fn everywhere(&self) -> Actions {
        self.everywhere
    }

    /// These rules further limited to repositories matching one of `scopes`
    /// (an API key's scopes); no scopes means no further limit.
    pub fn within(self, scopes: &[Pattern]) -> Scoped {
        Scoped {
            rules: self,
            scopes: scopes.to_vec(),
        }
    }
}

/// [`Rules`] limited to some repositories.
#[derive(Debug, Clone, Default)]
pub struct Scoped {
    rules: Rules,
    scopes: Vec<Pattern>,
}

impl Scoped {
    pub fn actions(&self, repo: &str) -> Actions {
        if self.scopes.is_empty() || self.scopes.iter().any(|s| s.matches(repo)) {
            self.rules.actions(repo)
        } else {
            Actions::NONE
        }
    }

    pub fn allows(&self, repo: &str, action: Action) -> bool {
        self.actions(repo).contains(action)
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The scopes' globs (none: no further limit).
    pub fn scope_texts(&self) -> Vec<String> {
        self.scopes.iter().map(|s| s.as_str().to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acts(names: &[&str]) -> Actions {
        Actions::parse(names).unwrap()
    }

    #[test]
    fn action_names_round_trip_and_unknown_names_fail() {
        for a in Action::ALL {
            assert_eq!(a.as_str().parse::<Action>().unwrap(), a);
        }
        assert!("write".parse::<Action>().is_err());
        assert_eq!(acts(&["read", "delete"]).names(), vec!["read", "delete"]);
        assert!(!Actions::ALL.contains(Action::DetectManifestCollision));
    }

    #[test]
    fn star_is_one_segment_and_double_star_is_recursive() {
        let one = Pattern::new("infra/*").unwrap();
        assert!(one.matches("infra/a"));
        assert!(!one.matches("infra/a/b"));
        assert!(!one.matches("infra"));
        let all = Pattern::new("infra/**").unwrap();
        assert!(all.matches("infra/a"));
        assert!(all.matches("infra/a/b"));
        assert!(all.matches("infra"));
        assert!(!all.matches("infrastructure"));
        let any = Pattern::new("**").unwrap();
        assert!(any.matches("a") && any.matches("a/b/c"));
        let exact = Pattern::new("alpine").unwrap();
        assert!(exact.matches("alpine") && !exact.matches("alpine2"));
    }

    #[test]
    fn the_longest_matching_pattern_decides_even_when_it_grants_less() {
        let rules = Rules::new(
            [
                ("**", acts(&["read", "create"])),
                ("secret/**", acts(&[])),
                ("secret/open", acts(&["read"])),
            ],
            Actions::NONE,
        )
        .unwrap();
        assert_eq!(rules.actions("a/b"), acts(&["read", "create"]));
        assert_eq!(rules.actions("secret/x"), Actions::NONE);
        assert_eq!(rules.actions("secret/open"), acts(&["read"]));
        assert!(rules.allows_somewhere(Action::Create));
        assert!(!rules.allows_somewhere(Action::Delete));
    }

    #[test]
    fn everywhere_actions_add_to_any_repository() {
        let rules = Rules::new([("a/**", acts(&["read"]))], acts(&["delete"])).unwrap();
        assert_eq!(rules.actions("a/x"), acts(&["read", "delete"]));
        assert_eq!(rules.actions("b"), acts(&["delete"]));
        assert!(Rules::unrestricted().allows("any/thing", Action::Update));
        assert!(Rules::default().actions("x").is_empty());
    }

    #[test]
    fn scopes_limit_rules_to_their_repositories() {
        let scoped = Rules::unrestricted().within(&[Pattern::new("team/*").unwrap()]);
        assert!(scoped.allows("team/app", Action::Create));
        assert!(!scoped.allows("other", Action::Read));
        let unscoped = Rules::unrestricted().within(&[]);
        assert!(unscoped.allows("other", Action::Read));
    }

    #[test]
    fn bad_patterns_are_reported() {
        assert!(matches!(
            Pattern::new("a/[b"),
            Err(AccessError::BadPattern { .. })
        ));
    }
}
