//! The access parts of the auth contract: a [`Grant`] as rules the gateway
//! applies, and the distribution token format (claims and scopes) shared by
//! the token issuer (svc-auth) and the token verifier (gateway).

use crate::auth::v1::{Grant, RepoRule};
use capstan_oci::access::{AccessError, Action, Actions, Pattern, Rules, Scoped};
use serde::{Deserialize, Serialize};

impl Grant {
    /// The wire form of `rules`, limited to `scopes` when not empty.
    pub fn from_rules(rules: &Rules, scopes: &[String]) -> Grant {
        Grant {
            rules: rules
                .patterns()
                .map(|(p, a)| RepoRule {
                    pattern: p.to_string(),
                    actions: a.names(),
                })
                .collect(),
            everywhere: rules.everywhere().names(),
            scopes: scopes.to_vec(),
        }
    }

    /// The rules this grant stands for.
    pub fn to_scoped(&self) -> Result<Scoped, AccessError> {
        let patterns = self
            .rules
            .iter()
            .map(|r| Ok((r.pattern.as_str(), Actions::parse(&r.actions)?)))
            .collect::<Result<Vec<_>, AccessError>>()?;
        let rules = Rules::new(patterns, Actions::parse(&self.everywhere)?)?;
        let scopes = self
            .scopes
            .iter()
            .map(|s| Pattern::new(s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rules.within(&scopes))
    }
}

/// One `access` entry of a token: a resource and the actions granted on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenAccess {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// The claims of a distribution registry token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<TokenAccess>,
}

/// Token action names and the access actions they stand for. `push` of an
/// external issuer also moves tags (distribution's meaning); Capstan's own
/// tokens name `update` separately, so a token never grants more than the
/// policy.
pub fn token_actions(names: &[String], external: bool) -> Actions {
    let mut set = Actions::NONE;
    for n in names {
        match n.as_str() {
            "pull" => set.insert(Action::Read),
            "push" => {
                set.insert(Action::Create);
                if external {
                    set.insert(Action::Update);
                }
            }
            "update" => set.insert(Action::Update),
            "delete" => set.insert(Action::Delete),
            "*" => set = set.union(Actions::ALL),
            _ => {}
        }
    }
    set
}

/// A requested scope: `repository:NAME:pull,push` (or `registry:catalog:*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Scope {
    /// Parse one scope; `None` when malformed. A scope parameter may hold
    /// several, separated by spaces.
    pub fn parse(s: &str) -> Option<Scope> {
        let (kind, rest) = s.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if kind.is_empty() || name.is_empty() {
            return None;
        }
        let kind = kind.split('(').next().unwrap_or(kind);
        Some(Scope {
            kind: kind.to_string(),
            name: name.to_string(),
            actions: actions
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_round_trip_through_the_wire_form() {
        let rules = Rules::new(
            [
                ("**", Actions::parse(&["read"]).unwrap()),
                ("secret/**", Actions::NONE),
            ],
            Actions::parse(&["delete"]).unwrap(),
        )
        .unwrap();
        let g = Grant::from_rules(&rules, &["team/*".to_string()]);
        let back = g.to_scoped().unwrap();
        assert!(back.allows("team/a", Action::Read));
        assert!(back.allows("team/a", Action::Delete));
        assert!(!back.allows("other", Action::Read), "outside the scopes");
        let open = Grant::from_rules(&rules, &[]).to_scoped().unwrap();
        assert!(open.allows("other", Action::Read));
        assert!(!open.allows("secret/x", Action::Read));
        let bad = Grant {
            everywhere: vec!["fly".into()],
            ..Default::default()
        };
        assert!(bad.to_scoped().is_err());
    }

    #[test]
    fn scopes_parse_with_hosts_and_several_actions() {
        let s = Scope::parse("repository:team/app:pull,push").unwrap();
        assert_eq!(s.kind, "repository");
        assert_eq!(s.name, "team/app");
        assert_eq!(s.actions, vec!["pull", "push"]);
        let s = Scope::parse("repository(plugin):a:pull").unwrap();
        assert_eq!(s.kind, "repository");
        assert_eq!(
            Scope::parse("registry:catalog:*").unwrap().actions,
            vec!["*"]
        );
        assert!(Scope::parse("repository").is_none());
        assert!(Scope::parse("repository::pull").is_none());
    }

    #[test]
    fn token_actions_keep_update_apart_for_own_tokens() {
        let own = token_actions(&["pull".into(), "push".into()], false);
        assert!(own.contains(Action::Create) && !own.contains(Action::Update));
        let ext = token_actions(&["push".into()], true);
        assert!(ext.contains(Action::Update));
        assert!(token_actions(&["*".into()], false).contains(Action::Delete));
        assert!(token_actions(&["fly".into()], false).is_empty());
    }
}
