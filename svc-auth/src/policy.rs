//! Access-control decisions: zot's `accessControl` compiled into the
//! [`Grant`] of one principal (user plus groups, or anonymous).
//!
//! For every repository glob of the configuration the grant holds the
//! principal's actions there: the policies naming the user or one of its
//! groups, plus `defaultPolicy` for an authenticated caller or
//! `anonymousPolicy` for an anonymous one. `adminPolicy` actions apply to
//! every repository. Globs that grant nothing stay in the grant, because the
//! longest matching glob decides even when it grants less.

use capstan_oci::access::{AccessError, Actions, Pattern, Rules};
use capstan_runtime::config::auth::{AccessControlConfig, Policy as PolicyConfig};
use std::collections::BTreeMap;

/// A validated access-control configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `None`: no `accessControl` section, so authenticated callers may do
    /// everything and anonymous ones nothing.
    config: Option<Compiled>,
}

#[derive(Debug, Clone)]
struct Compiled {
    groups: BTreeMap<String, Vec<String>>,
    repositories: Vec<(String, CompiledGroup)>,
    admin: CompiledPolicy,
}

#[derive(Debug, Clone, Default)]
struct CompiledGroup {
    policies: Vec<CompiledPolicy>,
    default: Actions,
    anonymous: Actions,
}

#[derive(Debug, Clone, Default)]
struct CompiledPolicy {
    users: Vec<String>,
    groups: Vec<String>,
    actions: Actions,
}

impl CompiledPolicy {
    fn new(p: &PolicyConfig, key: &str) -> Result<Self, String> {
        Ok(Self {
            users: p.users.clone(),
            groups: p.groups.clone(),
            actions: actions(&p.actions, &format!("{key}.actions"))?,
        })
    }

    fn applies(&self, user: &str, groups: &[String]) -> bool {
        self.users.iter().any(|u| u == user) || self.groups.iter().any(|g| groups.contains(g))
    }
}

fn actions(names: &[String], key: &str) -> Result<Actions, String> {
    Actions::parse(names).map_err(|e| format!("{key}: {e}"))
}

impl Policy {
    /// Validate `config`; the error names the offending key.
    pub fn new(config: Option<&AccessControlConfig>) -> Result<Self, String> {
        let Some(c) = config else {
            return Ok(Self { config: None });
        };
        let mut repositories = Vec::new();
        for (pattern, group) in &c.repositories {
            let key = format!("http.accessControl.repositories.{pattern:?}");
            Pattern::new(pattern).map_err(|e: AccessError| format!("{key}: {e}"))?;
            let policies = group
                .policies
                .iter()
                .enumerate()
                .map(|(i, p)| CompiledPolicy::new(p, &format!("{key}.policies[{i}]")))
                .collect::<Result<_, _>>()?;
            repositories.push((
                pattern.clone(),
                CompiledGroup {
                    policies,
                    default: actions(&group.default_policy, &format!("{key}.defaultPolicy"))?,
                    anonymous: actions(&group.anonymous_policy, &format!("{key}.anonymousPolicy"))?,
                },
            ));
        }
        let admin = match &c.admin_policy {
            Some(p) => CompiledPolicy::new(p, "http.accessControl.adminPolicy")?,
            None => CompiledPolicy::default(),
        };
        let groups = c
            .groups
            .iter()
            .map(|(g, m)| (g.clone(), m.users.clone()))
            .collect();
        Ok(Self {
            config: Some(Compiled {
                groups,
                repositories,
                admin,
            }),
        })
    }

    /// Whether an `accessControl` section is configured.
    pub fn is_configured(&self) -> bool {
        self.config.is_some()
    }

    /// Whether every rule only concerns anonymous callers (the one shape
    /// zot accepts without an authentication method).
    pub fn only_anonymous(&self) -> bool {
        self.config.as_ref().is_none_or(|c| {
            c.admin.actions.is_empty()
                && c.repositories.iter().all(|(_, g)| {
                    g.default.is_empty() && g.policies.iter().all(|p| p.actions.is_empty())
                })
        })
    }

    /// The groups the configuration puts `user` in.
    pub fn groups_of(&self, user: &str) -> Vec<String> {
        self.config
            .as_ref()
            .map(|c| {
                c.groups
                    .iter()
                    .filter(|(_, members)| members.iter().any(|m| m == user))
                    .map(|(g, _)| g.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What `user` (with `groups`) may do; `None` is the anonymous caller.
    pub fn rules(&self, user: Option<&str>, groups: &[String]) -> Rules {
        let Some(c) = &self.config else {
            return match user {
                Some(_) => Rules::unrestricted(),
                None => Rules::default(),
            };
        };
        let patterns = c.repositories.iter().map(|(pattern, g)| {
            let mut set = match user {
                Some(_) => g.default,
                None => g.anonymous,
            };
            if let Some(u) = user {
                for p in g.policies.iter().filter(|p| p.applies(u, groups)) {
                    set = set.union(p.actions);
                }
            }
            (pattern.as_str(), set)
        });
        let everywhere = match user {
            Some(u) if c.admin.applies(u, groups) => c.admin.actions,
            _ => Actions::NONE,
        };
        Rules::new(patterns, everywhere).expect("patterns validated in Policy::new")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_oci::access::Action::{self, *};
    use serde_json::json;

    /// The policy example of zot's documentation (examples/config-policy.json).
    fn zot_example() -> Policy {
        let c: AccessControlConfig = serde_json::from_value(json!({
            "groups": {"group1": {"users": ["jack", "john", "jane", "ana"]},
                       "group2": {"users": ["alice", "mike", "jim"]}},
            "repositories": {
                "**": {"policies": [{"users": ["charlie"], "actions": ["read", "create", "update"]}],
                       "defaultPolicy": ["read", "create"]},
                "tmp/**": {"defaultPolicy": ["read", "create", "update"]},
                "infra/*": {"policies": [{"users": ["alice", "bob"], "actions": ["create", "read", "update", "delete"]},
                                         {"users": ["mallory"], "actions": ["create", "read"]}],
                            "defaultPolicy": ["read"]},
                "repos2/repo": {"policies": [{"users": ["charlie"], "actions": ["read", "create"]},
                                             {"users": ["jim"], "actions": ["read"]},
                                             {"groups": ["group1"], "actions": ["read", "create"]}],
                                "defaultPolicy": ["read"], "anonymousPolicy": ["read"]}
            },
            "adminPolicy": {"users": ["admin"], "groups": ["admins"], "actions": ["read", "create", "update", "delete"]}
        }))
        .unwrap();
        Policy::new(Some(&c)).unwrap()
    }

    fn can(p: &Policy, user: Option<&str>, repo: &str, a: Action) -> bool {
        let groups = user.map(|u| p.groups_of(u)).unwrap_or_default();
        p.rules(user, &groups).allows(repo, a)
    }

    #[test]
    fn default_policy_applies_to_authenticated_users_only() {
        let p = zot_example();
        assert!(can(&p, Some("nobody"), "any/repo", Read));
        assert!(can(&p, Some("nobody"), "any/repo", Create));
        assert!(!can(&p, Some("nobody"), "any/repo", Update));
        assert!(!can(&p, Some("nobody"), "any/repo", Delete));
        assert!(!can(&p, None, "any/repo", Read));
    }

    #[test]
    fn user_policies_add_to_the_default() {
        let p = zot_example();
        assert!(can(&p, Some("charlie"), "any/repo", Update));
        assert!(!can(&p, Some("charlie"), "any/repo", Delete));
    }

    #[test]
    fn the_longest_glob_decides() {
        let p = zot_example();
        // tmp/** is longer than **: update for everyone authenticated.
        assert!(can(&p, Some("nobody"), "tmp/a/b", Update));
        // infra/* wins over ** and grants only read by default…
        assert!(can(&p, Some("nobody"), "infra/web", Read));
        assert!(!can(&p, Some("nobody"), "infra/web", Create));
        // …and charlie's update on ** does not reach into it.
        assert!(!can(&p, Some("charlie"), "infra/web", Update));
        assert!(can(&p, Some("alice"), "infra/web", Delete));
        assert!(can(&p, Some("mallory"), "infra/web", Create));
        assert!(!can(&p, Some("mallory"), "infra/web", Delete));
        // infra/* is one level: infra/a/b falls back to **.
        assert!(can(&p, Some("nobody"), "infra/a/b", Create));
        assert!(!can(&p, Some("alice"), "infra/a/b", Delete));
    }

    #[test]
    fn groups_and_anonymous_policies_apply_on_their_glob() {
        let p = zot_example();
        assert!(can(&p, Some("jane"), "repos2/repo", Create)); // group1
        assert!(!can(&p, Some("jim"), "repos2/repo", Create)); // group2, only read
        assert!(can(&p, Some("jim"), "repos2/repo", Read));
        assert!(can(&p, None, "repos2/repo", Read));
        assert!(!can(&p, None, "repos2/repo", Create));
        assert!(!can(&p, None, "repos2/other", Read));
        assert_eq!(p.groups_of("ana"), vec!["group1"]);
    }

    #[test]
    fn admins_hold_their_actions_everywhere_by_user_or_group() {
        let p = zot_example();
        assert!(can(&p, Some("admin"), "infra/web", Delete));
        assert!(can(&p, Some("admin"), "x/y/z", Update));
        let rules = p.rules(Some("eve"), &["admins".to_string()]);
        assert!(rules.allows("repos2/repo", Delete));
        assert!(!can(&p, Some("eve"), "repos2/repo", Delete));
    }

    #[test]
    fn without_access_control_authenticated_users_may_do_everything() {
        let p = Policy::new(None).unwrap();
        assert!(!p.is_configured());
        assert!(p.rules(Some("u"), &[]).allows("a/b", Delete));
        assert!(!p.rules(None, &[]).allows("a/b", Read));
    }

    #[test]
    fn bad_actions_and_globs_name_their_key() {
        let c: AccessControlConfig = serde_json::from_value(json!({
            "repositories": {"a/**": {"defaultPolicy": ["write"]}}}))
        .unwrap();
        let err = Policy::new(Some(&c)).unwrap_err();
        assert!(
            err.contains("defaultPolicy") && err.contains("write"),
            "{err}"
        );
        let c: AccessControlConfig = serde_json::from_value(json!({
            "repositories": {"a/[": {"anonymousPolicy": ["read"]}}}))
        .unwrap();
        assert!(Policy::new(Some(&c)).unwrap_err().contains("a/["));
    }

    #[test]
    fn anonymous_only_configs_are_recognised() {
        let c: AccessControlConfig = serde_json::from_value(json!({
            "repositories": {"**": {"anonymousPolicy": ["read"]}}}))
        .unwrap();
        assert!(Policy::new(Some(&c)).unwrap().only_anonymous());
        assert!(!zot_example().only_anonymous());
    }
}
