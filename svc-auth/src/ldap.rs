//! LDAP logins (zot's `http.auth.ldap`): find the one entry under `baseDN`
//! whose `userAttribute` is the user name (binding first as `bindDN` when
//! configured), then bind as that entry with the given password. The values
//! of `userGroupAttribute` are the user's groups.
//!
//! Plain LDAP with `insecure`, StartTLS with `startTLS`, LDAPS otherwise.
//! An empty password is refused before anything is sent: an LDAP bind with
//! an empty password is an anonymous bind, which servers accept.

use crate::error::AuthError;
use capstan_runtime::config::auth::LdapConfig;
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry, ldap_escape};
use std::time::Duration;

/// A configured directory.
#[derive(Debug, Clone)]
pub struct Ldap {
    url: String,
    settings_start_tls: bool,
    skip_verify: bool,
    timeout: Duration,
    base_dn: String,
    scope: Scope,
    user_attribute: String,
    group_attribute: Option<String>,
    user_filter: Option<String>,
    bind: Option<(String, String)>,
}

#[derive(serde::Deserialize)]
struct Credentials {
    #[serde(rename = "bindDN")]
    bind_dn: String,
    #[serde(rename = "bindPassword")]
    bind_password: String,
}

fn unavailable(e: impl std::fmt::Display) -> AuthError {
    AuthError::Unavailable {
        what: "LDAP directory",
        message: e.to_string(),
    }
}

impl Ldap {
    /// Check and prepare `c`; reads `credentialsFile` when given.
    pub fn new(c: &LdapConfig) -> Result<Self, String> {
        if c.address.is_empty() {
            return Err("http.auth.ldap.address: required".into());
        }
        if c.base_dn.is_empty() {
            return Err("http.auth.ldap.baseDN: required".into());
        }
        let bind = match (&c.credentials_file, &c.bind_dn) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("http.auth.ldap.credentialsFile {}: {e}", path.display())
                })?;
                let cr: Credentials = serde_json::from_str(&text).map_err(|e| {
                    format!(
                        "http.auth.ldap.credentialsFile {}: expected {{\"bindDN\", \"bindPassword\"}}: {e}",
                        path.display()
                    )
                })?;
                Some((cr.bind_dn, cr.bind_password))
            }
            (None, Some(dn)) => Some((dn.clone(), c.bind_password.clone().unwrap_or_default())),
            (None, None) => None,
        };
        let (scheme, default_port) = if c.insecure || c.start_tls {
            ("ldap", 389)
        } else {
            ("ldaps", 636)
        };
        let port = c.port.unwrap_or(default_port);
        Ok(Self {
            url: format!("{scheme}://{}:{port}", c.address),
            settings_start_tls: c.start_tls && !c.insecure,
            skip_verify: c.skip_verify,
            timeout: Duration::from_secs(c.query_timeout.unwrap_or(5).max(1)),
            base_dn: c.base_dn.clone(),
            scope: if c.subtree_search {
                Scope::Subtree
            } else {
                Scope::OneLevel
            },
            user_attribute: c.user_attribute.clone().unwrap_or_else(|| "uid".into()),
            group_attribute: c.user_group_attribute.clone(),
            user_filter: c.user_filter.clone().filter(|f| !f.is_empty()),
            bind,
        })
    }

    /// Log `user` in with `password`; on success the directory's spelling
    /// of the name (matching is case-insensitive there, policies are not)
    /// and the groups.
    pub async fn login(
        &self,
        user: &str,
        password: &str,
    ) -> Result<(String, Vec<String>), AuthError> {
        if user.is_empty() || password.is_empty() {
            return Err(AuthError::Unauthenticated("empty LDAP user or password"));
        }
        let settings = LdapConnSettings::new()
            .set_conn_timeout(self.timeout)
            .set_starttls(self.settings_start_tls)
            .set_no_tls_verify(self.skip_verify);
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.url)
            .await
            .map_err(unavailable)?;
        ldap3::drive!(conn);
        ldap.with_timeout(self.timeout);
        if let Some((dn, pw)) = &self.bind {
            ldap.simple_bind(dn, pw)
                .await
                .map_err(unavailable)?
                .success()
                .map_err(|e| unavailable(format!("bind as bindDN: {e}")))?;
        }
        let mut filter = format!("({}={})", self.user_attribute, ldap_escape(user));
        if let Some(extra) = &self.user_filter {
            filter = format!("(&{filter}{extra})");
        }
        let mut attrs: Vec<&str> = vec![self.user_attribute.as_str()];
        attrs.extend(self.group_attribute.iter().map(String::as_str));
        ldap.with_timeout(self.timeout);
        let (entries, _) = ldap
            .search(&self.base_dn, self.scope, &filter, attrs)
            .await
            .map_err(unavailable)?
            .success()
            .map_err(unavailable)?;
        let [entry] = entries.as_slice() else {
            let _ = ldap.unbind().await;
            return Err(AuthError::Unauthenticated(
                "no single LDAP entry for the user",
            ));
        };
        let entry = SearchEntry::construct(entry.clone());
        ldap.with_timeout(self.timeout);
        let bound = ldap
            .simple_bind(&entry.dn, password)
            .await
            .map_err(unavailable)?
            .success();
        let _ = ldap.unbind().await;
        if bound.is_err() {
            return Err(AuthError::Unauthenticated("wrong LDAP password"));
        }
        let groups = self
            .group_attribute
            .as_ref()
            .and_then(|a| {
                entry
                    .attrs
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(a))
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_default();
        let name = entry
            .attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&self.user_attribute))
            .and_then(|(_, v)| v.first().cloned())
            .unwrap_or_else(|| user.to_string());
        Ok((name, groups))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(v: serde_json::Value) -> LdapConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn urls_follow_the_tls_mode() {
        let base = serde_json::json!({"address": "dir", "baseDN": "ou=p,dc=x"});
        let l = Ldap::new(&config(base.clone())).unwrap();
        assert_eq!(l.url, "ldaps://dir:636");
        let mut v = base.clone();
        v["startTLS"] = true.into();
        let l = Ldap::new(&config(v)).unwrap();
        assert_eq!(l.url, "ldap://dir:389");
        assert!(l.settings_start_tls);
        let mut v = base;
        v["insecure"] = true.into();
        v["port"] = 1389.into();
        v["subtreeSearch"] = true.into();
        let l = Ldap::new(&config(v)).unwrap();
        assert_eq!(l.url, "ldap://dir:1389");
        assert_eq!(l.scope, Scope::Subtree);
        assert_eq!(l.user_attribute, "uid");
    }

    #[test]
    fn missing_keys_and_bad_credentials_files_are_named() {
        let err =
            Ldap::new(&config(serde_json::json!({"address": "dir", "baseDN": ""}))).unwrap_err();
        assert!(err.contains("baseDN"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.json");
        std::fs::write(&f, "{\"bindDN\": 1}").unwrap();
        let err = Ldap::new(&config(
            serde_json::json!({"address": "dir", "baseDN": "o=x", "credentialsFile": f}),
        ))
        .unwrap_err();
        assert!(err.contains("credentialsFile"), "{err}");
        std::fs::write(&f, r#"{"bindDN": "cn=a", "bindPassword": "p"}"#).unwrap();
        let l = Ldap::new(&config(
            serde_json::json!({"address": "dir", "baseDN": "o=x", "credentialsFile": f}),
        ))
        .unwrap();
        assert_eq!(l.bind, Some(("cn=a".to_string(), "p".to_string())));
    }

    #[tokio::test]
    async fn empty_passwords_never_reach_the_directory() {
        // An unreachable address: a refusal without a connection proves no
        // anonymous bind was attempted.
        let l = Ldap::new(&config(serde_json::json!({"address": "127.0.0.1", "port": 1, "insecure": true, "baseDN": "o=x"}))).unwrap();
        assert!(matches!(
            l.login("alice", "").await,
            Err(AuthError::Unauthenticated(_))
        ));
        assert!(matches!(
            l.login("alice", "pw").await,
            Err(AuthError::Unavailable { .. })
        ));
    }
}
