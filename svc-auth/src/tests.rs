//! The service as a whole: configuration checks, principals from each
//! credential, and issued tokens.

use super::*;
use crate::error::AuthError;
use capstan_oci::access::Action;
use capstan_proto::access::TokenClaims;
use capstan_proto::auth::v1::{
    AuthenticateRequest, BasicCredential, IssueTokenRequest, authenticate_request::Credential,
};
use serde_json::json;

fn config(dir: &std::path::Path, http: serde_json::Value) -> Config {
    Config::from_value(
        json!({"storage": {"rootDirectory": dir}, "http": http}),
        Vec::<(String, String)>::new(),
    )
    .unwrap()
    .config
}

fn htpasswd(dir: &std::path::Path, users: &[(&str, &str)]) -> std::path::PathBuf {
    let path = dir.join("htpasswd");
    let text: String = users
        .iter()
        .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 4).unwrap()))
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn basic(u: &str, p: &str) -> AuthenticateRequest {
    AuthenticateRequest {
        credential: Some(Credential::Basic(BasicCredential {
            username: u.into(),
            password: p.into(),
        })),
    }
}

#[test]
fn inconsistent_configs_are_refused_with_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let check = |http| check_config(&config(dir.path(), http));
    let err =
        check(json!({"accessControl": {"repositories": {"**": {"defaultPolicy": ["read"]}}}}))
            .unwrap_err();
    assert!(err.contains("http.accessControl"), "{err}");
    assert!(
        check(json!({"accessControl": {"repositories": {"**": {"anonymousPolicy": ["read"]}}}}))
            .is_ok()
    );
    let err = check(json!({"auth": {"apikey": true}})).unwrap_err();
    assert!(err.contains("http.auth.apikey"), "{err}");
    let err = check(
        json!({"auth": {"htpasswd": {"path": "/x"}, "sessionDriver": {"name": "memcached"}}}),
    )
    .unwrap_err();
    assert!(err.contains("sessionDriver.name"), "{err}");
    let err =
        check(json!({"auth": {"htpasswd": {"path": "/x"}, "sessionDriver": {"name": "redis"}}}))
            .unwrap_err();
    assert!(err.contains("sessionDriver.url"), "{err}");
    let err = check(json!({"auth": {"bearer": {"cert": "/c.pem"}}})).unwrap_err();
    assert!(err.contains("bearer.realm"), "{err}");
    let err = check(json!({"accessControl": {"repositories": {"**": {"defaultPolicy": ["fly"]}}}}))
        .unwrap_err();
    assert!(err.contains("fly"), "{err}");
    let err =
        check(json!({"auth": {"htpasswd": {"path": "/x"}, "database": "mysql://x"}})).unwrap_err();
    assert!(err.contains("http.auth.database"), "{err}");
    assert!(
        check(json!({"auth": {"htpasswd": {"path": "/x"}, "apikey": true,
        "sessionDriver": {"name": "redis", "url": "redis://127.0.0.1:1"}}}))
        .is_ok()
    );
}

#[tokio::test]
async fn passwords_keys_and_policies_make_principals() {
    let dir = tempfile::tempdir().unwrap();
    let path = htpasswd(dir.path(), &[("alice", "pw-a"), ("bob", "pw-b")]);
    let cfg = config(
        dir.path(),
        json!({"auth": {"htpasswd": {"path": path}, "apikey": true},
               "accessControl": {"groups": {"dev": {"users": ["alice"]}},
                   "repositories": {"**": {"policies": [{"groups": ["dev"], "actions": ["read", "create"]}],
                                           "anonymousPolicy": ["read"]}}}}),
    );
    let core = core(&cfg).await.unwrap();
    let p = core.authenticate(&basic("alice", "pw-a")).await.unwrap();
    assert_eq!(p.username, "alice");
    assert_eq!(p.groups, vec!["dev"]);
    assert!(p.may_manage_keys);
    let g = p.grant.unwrap().to_scoped().unwrap();
    assert!(g.allows("any/repo", Action::Create));
    assert!(!g.allows("any/repo", Action::Delete));
    let bob = core.authenticate(&basic("bob", "pw-b")).await.unwrap();
    assert!(
        !bob.grant
            .unwrap()
            .to_scoped()
            .unwrap()
            .allows("x", Action::Read)
    );
    assert!(matches!(
        core.authenticate(&basic("alice", "pw-b")).await,
        Err(AuthError::Unauthenticated(_))
    ));
    assert!(core.authenticate(&basic("", "")).await.is_err());
    let anon = core.anonymous();
    assert!(anon.username.is_empty());
    assert!(
        anon.grant
            .unwrap()
            .to_scoped()
            .unwrap()
            .allows("x", Action::Read)
    );

    // An API key acts as its owner, within its scopes.
    let (key, secret) = core
        .keys
        .as_ref()
        .unwrap()
        .create(apikeys::NewKey {
            owner: "alice".into(),
            scopes: vec!["team/**".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let p = core.authenticate(&basic("alice", &secret)).await.unwrap();
    assert_eq!(p.handle, format!("key:{}", key.id));
    assert!(!p.may_manage_keys);
    let g = p.grant.unwrap().to_scoped().unwrap();
    assert!(g.allows("team/app", Action::Create));
    assert!(!g.allows("other", Action::Read));
    assert!(core.authenticate(&basic("bob", &secret)).await.is_err());

    // Sessions carry the user.
    let id = core
        .sessions
        .create("alice", &[], "htpasswd")
        .await
        .unwrap();
    let p = core
        .authenticate(&AuthenticateRequest {
            credential: Some(Credential::Session(id.clone())),
        })
        .await
        .unwrap();
    assert_eq!(p.username, "alice");
    assert_eq!(p.groups, vec!["dev"]);
    assert!(p.handle.starts_with("session:") && !p.handle.contains(&id));
}

#[tokio::test]
async fn tokens_grant_what_the_policy_allows_of_what_was_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = htpasswd(dir.path(), &[("alice", "pw")]);
    let cfg = config(
        dir.path(),
        json!({"auth": {"htpasswd": {"path": path}},
               "accessControl": {"repositories": {
                   "**": {"defaultPolicy": ["read", "create"], "anonymousPolicy": ["read"]},
                   "mine/**": {"policies": [{"users": ["alice"], "actions": ["read", "create", "update", "delete"]}]}}}}),
    );
    let core = core(&cfg).await.unwrap();
    let issue = |cred: Option<AuthenticateRequest>, scopes: &[&str]| {
        let req = IssueTokenRequest {
            credential: cred,
            service: "reg".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        };
        let core = &core;
        async move { core.issue_token(&req).await }
    };
    let decode = |t: &str| -> TokenClaims {
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(core.signer.jwks()).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_audience(&["reg"]);
        v.set_issuer(&[TOKEN_ISSUER]);
        let key = jsonwebtoken::DecodingKey::from_jwk(&set.keys[0]).unwrap();
        jsonwebtoken::decode::<TokenClaims>(t, &key, &v)
            .unwrap()
            .claims
    };
    let t = issue(
        Some(basic("alice", "pw")),
        &["repository:a/b:pull,push,delete repository:mine/x:push,delete"],
    )
    .await
    .unwrap();
    assert_eq!(t.expires_in, 300);
    let c = decode(&t.token);
    assert_eq!(c.sub, "alice");
    assert_eq!(c.access.len(), 2);
    assert_eq!(c.access[0].name, "a/b");
    assert_eq!(c.access[0].actions, vec!["pull", "push"]);
    assert_eq!(c.access[1].actions, vec!["push", "delete", "update"]);
    // Anonymous: pull only; wrong password: refused.
    let c = decode(
        &issue(None, &["repository:a/b:pull,push"])
            .await
            .unwrap()
            .token,
    );
    assert_eq!(c.sub, "");
    assert_eq!(c.access[0].actions, vec!["pull"]);
    assert!(
        issue(Some(basic("alice", "nope")), &["repository:a/b:pull"])
            .await
            .is_err()
    );
    assert!(matches!(
        issue(None, &["repository:A//b:pull"]).await,
        Err(AuthError::Invalid(_))
    ));
    assert!(matches!(
        issue(None, &["nonsense"]).await,
        Err(AuthError::Invalid(_))
    ));
}
