//! The client commands (`capstan client config`, `repo list`, `image list`,
//! `search`) against a real registry with search on, in every output form.

use crate::auth::htpasswd;
use crate::sandbox::{BIN, Sandbox, basic_client};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

/// Runs `capstan ARGS` with the client configuration at `config`; its exit
/// status, stdout and stderr.
fn capstan(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("CAPSTAN_CLIENT_CONFIG", config)
        .env_remove("CAPSTAN_CLIENT_USER")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(config: &Path, args: &[&str]) -> String {
    let (success, out, err) = capstan(config, args);
    assert!(success, "capstan {args:?}: {err}");
    out
}

#[tokio::test]
async fn client_commands_list_and_search_through_graphql() {
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("admin", "pw")]);
    let sb = Sandbox::start_with_client(
        json!({"http": {"auth": {"htpasswd": {"path": users}}},
               "extensions": {"search": {"enable": true}}}),
        basic_client("admin", "pw"),
    )
    .await;
    let (web, _) = sb.push_image("app/web", "v1", 1).await;
    sb.push_image("tools/cli", "stable", 2).await;
    let config = dir.path().join("client.json");

    // No registry named yet.
    let (success, _, err) = capstan(&config, &["repo", "list"]);
    assert!(!success);
    assert!(err.contains("capstan client config add"), "{err}");
    ok(&config, &["client", "config", "add", "local", &sb.url("")]);
    let listed = ok(&config, &["client", "config", "list"]);
    assert_eq!(listed, format!("local\t{}\n", sb.url("")));
    let (success, _, err) = capstan(&config, &["client", "config", "add", "local", "ftp://x"]);
    assert!(!success && err.contains("only http and https"), "{err}");

    // Credentials are asked for, as the registry says.
    let (success, _, err) = capstan(&config, &["image", "list"]);
    assert!(!success && err.contains("unauthorized"), "{err}");

    let user = ["--user", "admin:pw"];
    let json_out: Value = serde_json::from_str(&ok(
        &config,
        &["image", "list", user[0], user[1], "--output", "json"],
    ))
    .unwrap();
    let tags: Vec<String> = json_out
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}:{}",
                i["RepoName"].as_str().unwrap(),
                i["Tag"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(tags, ["app/web:v1", "tools/cli:stable"]);
    assert_eq!(json_out[0]["Digest"], web.as_str());
    assert_eq!(
        json_out[0]["Manifests"][0]["Platform"],
        json!({"Os": "linux", "Arch": "amd64"})
    );

    let one = ok(&config, &["image", "list", "app/web", user[0], user[1]]);
    let lines: Vec<&str> = one.lines().collect();
    assert_eq!(lines.len(), 2, "{one}");
    for column in ["REPOSITORY", "TAG", "OS/ARCH", "DIGEST", "SIGNED", "SIZE"] {
        assert!(lines[0].contains(column), "{one}");
    }
    assert!(lines[1].starts_with("app/web"), "{one}");
    assert!(lines[1].contains("linux/amd64"), "{one}");
    assert!(
        lines[1].contains(&web["sha256:".len().."sha256:".len() + 12]),
        "{one}"
    );

    let yaml: Value = serde_yaml::from_str(&ok(
        &config,
        &["repo", "list", user[0], user[1], "-o", "yaml"],
    ))
    .unwrap();
    let mut names: Vec<&str> = yaml
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["app/web", "tools/cli"]);

    let found = ok(&config, &["search", "web", user[0], user[1]]);
    assert!(
        found.lines().next().unwrap().contains("REPOSITORY"),
        "{found}"
    );
    assert!(found.contains("app/web"), "{found}");
    assert!(!found.contains("tools/cli"), "{found}");
    let images: Value = serde_json::from_str(&ok(
        &config,
        &["search", "tools/cli:st", user[0], user[1], "-o", "json"],
    ))
    .unwrap();
    assert_eq!(images["Images"][0]["Tag"], "stable");

    ok(&config, &["client", "config", "remove", "local"]);
    let (success, _, err) = capstan(&config, &["client", "config", "remove", "local"]);
    assert!(!success && err.contains("no registry named"), "{err}");
}
