//! The client commands, like zot's `zli`: `capstan client config add NAME
//! URL` names a registry in the client configuration, and `capstan repo
//! list`, `capstan image list [REPO]` and `capstan search QUERY` ask it
//! through its search extension (GraphQL at `/v2/_zot/ext/search`, so a zot
//! registry answers too), printing a table, JSON or YAML.
//!
//! The client configuration is a JSON file: `$CAPSTAN_CLIENT_CONFIG`, else
//! `$XDG_CONFIG_HOME/capstan/client.json`, else
//! `~/.config/capstan/client.json`.

use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::PathBuf;

/// `capstan client …`.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// The registries this client knows by name.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Name a registry (its base URL, e.g. `https://registry.example:5000`).
    Add {
        name: String,
        url: String,
        /// Accept a certificate that does not verify (a test registry).
        #[arg(long)]
        insecure: bool,
    },
    /// The registries named so far.
    List,
    /// Forget a registry.
    Remove { name: String },
}

/// `capstan repo …`.
#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Repositories, newest first.
    List {
        #[command(flatten)]
        target: Target,
    },
}

/// `capstan image …`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Tagged images of every repository, or of one.
    List {
        /// Only this repository's.
        repo: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

/// Which registry to ask, as whom, and how to print the answer.
#[derive(Debug, Args)]
pub struct Target {
    /// The registry's name in the client configuration (default: the
    /// only one there is).
    #[arg(long = "registry")]
    registry: Option<String>,
    /// `user:password` (default: `$CAPSTAN_CLIENT_USER`; none: anonymous).
    #[arg(short, long)]
    user: Option<String>,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("client configuration {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("no registry named {0:?} (capstan client config list)")]
    UnknownRegistry(String),
    #[error("{0}")]
    Choose(String),
    #[error("{url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{0}")]
    Answer(String),
}

/// One named registry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Registry {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub insecure: bool,
}

/// The client configuration file.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ClientConfig {
    #[serde(default)]
    registries: Vec<Registry>,
}

fn config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CAPSTAN_CLIENT_CONFIG") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("capstan").join("client.json")
}

fn read_config() -> Result<(PathBuf, ClientConfig), ClientError> {
    let path = config_path();
    let bad = |message: String| ClientError::Config {
        path: path.clone(),
        message,
    };
    let config = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ClientConfig::default(),
        Err(e) => return Err(bad(e.to_string())),
    };
    Ok((path, config))
}

/// Writes `config` whole: a new file renamed over the old one.
fn write_config(path: &PathBuf, config: &ClientConfig) -> Result<(), ClientError> {
    let bad = |e: std::io::Error| ClientError::Config {
        path: path.clone(),
        message: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bad)?;
    }
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(config).unwrap_or_default();
    std::fs::write(&tmp, text).map_err(bad)?;
    std::fs::rename(&tmp, path).map_err(bad)
}

/// `capstan client config …`.
pub fn configure(command: ClientCommand) -> Result<(), ClientError> {
    let ClientCommand::Config { command } = command;
    let (path, mut config) = read_config()?;
    match command {
        ConfigCommand::Add {
            name,
            url,
            insecure,
        } => {
            let parsed = reqwest::Url::parse(&url)
                .map_err(|e| ClientError::Choose(format!("{url:?} is not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(ClientError::Choose(format!(
                    "{url:?}: only http and https registries"
                )));
            }
            if config.registries.iter().any(|r| r.name == name) {
                return Err(ClientError::Choose(format!(
                    "a registry named {name:?} exists; remove it first"
                )));
            }
            config.registries.push(Registry {
                name,
                url: url.trim_end_matches('/').to_string(),
                insecure,
            });
            write_config(&path, &config)
        }
        ConfigCommand::List => {
            for r in &config.registries {
                let note = if r.insecure { " (insecure)" } else { "" };
                println!("{}\t{}{note}", r.name, r.url);
            }
            Ok(())
        }
        ConfigCommand::Remove { name } => {
            let before = config.registries.len();
            config.registries.retain(|r| r.name != name);
            if config.registries.len() == before {
                return Err(ClientError::UnknownRegistry(name));
            }
            write_config(&path, &config)
        }
    }
}

/// The registry `target` names.
fn registry(target: &Target) -> Result<Registry, ClientError> {
    let (_, config) = read_config()?;
    match &target.registry {
        Some(name) => config
            .registries
            .into_iter()
            .find(|r| &r.name == name)
            .ok_or_else(|| ClientError::UnknownRegistry(name.clone())),
        None => match config.registries.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(ClientError::Choose(
                "no registry yet: capstan client config add NAME URL".into(),
            )),
            _ => Err(ClientError::Choose(
                "several registries: choose one with --registry NAME".into(),
            )),
        },
    }
}

/// Runs `query` on the registry `target` names; the `data` it answers.
async fn ask(target: &Target, query: &str) -> Result<Value, ClientError> {
    let registry = registry(target)?;
    let url = format!("{}/v2/_zot/ext/search", registry.url);
    let http = |source| ClientError::Http {
        url: url.clone(),
        source,
    };
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(registry.insecure)
        .build()
        .map_err(http)?;
    let mut req = client.post(&url).json(&json!({ "query": query }));
    let user = target
        .user
        .clone()
        .or_else(|| std::env::var("CAPSTAN_CLIENT_USER").ok());
    if let Some(user) = user {
        let (name, password) = user.split_once(':').unwrap_or((&user, ""));
        req = req.basic_auth(name, Some(password));
    }
    let response = req.send().await.map_err(http)?;
    match response.status().as_u16() {
        200 => {}
        401 => {
            return Err(ClientError::Answer(format!(
                "{url}: unauthorized (give --user USER:PASSWORD)"
            )));
        }
        404 => {
            return Err(ClientError::Answer(format!(
                "{url}: not found (is extensions.search on?)"
            )));
        }
        code => return Err(ClientError::Answer(format!("{url}: HTTP {code}"))),
    }
    let answer: Value = response.json().await.map_err(http)?;
    if let Some(errors) = answer.get("errors").and_then(Value::as_array) {
        let messages: Vec<&str> = errors
            .iter()
            .filter_map(|e| e["message"].as_str())
            .collect();
        return Err(ClientError::Answer(messages.join("; ")));
    }
    Ok(answer["data"].clone())
}

const REPO_FIELDS: &str =
    "Name LastUpdated Size DownloadCount StarCount Platforms { Os Arch } NewestImage { Tag }";
const IMAGE_FIELDS: &str = "RepoName Tag Digest MediaType Size IsSigned LastUpdated \
                            Manifests { Digest Platform { Os Arch } Size }";

/// `capstan repo list`.
pub async fn repo_list(command: RepoCommand) -> Result<(), ClientError> {
    let RepoCommand::List { target } = command;
    let data = ask(
        &target,
        &format!("{{ RepoListWithNewestImage {{ Results {{ {REPO_FIELDS} }} }} }}"),
    )
    .await?;
    print_repos(&data["RepoListWithNewestImage"]["Results"], target.output)
}

/// `capstan image list [REPO]`.
pub async fn image_list(command: ImageCommand) -> Result<(), ClientError> {
    let ImageCommand::List { repo, target } = command;
    let repo = repo.unwrap_or_default();
    let query = format!(
        "{{ ImageList(repo: {}, requestedPage: {{sortBy: ALPHABETIC_ASC}}) {{ Results {{ {IMAGE_FIELDS} }} }} }}",
        Value::String(repo)
    );
    let data = ask(&target, &query).await?;
    print_images(&data["ImageList"]["Results"], target.output)
}

/// `capstan search QUERY`: repositories by name, or images by `repo:tag`,
/// `:tag` or digest, as the registry's `GlobalSearch` chooses.
pub async fn search(text: String, target: Target) -> Result<(), ClientError> {
    let query = format!(
        "{{ GlobalSearch(query: {}) {{ Repos {{ {REPO_FIELDS} }} Images {{ {IMAGE_FIELDS} }} }} }}",
        Value::String(text)
    );
    let data = ask(&target, &query).await?;
    let found = &data["GlobalSearch"];
    match target.output {
        Output::Table => {
            let repos = found["Repos"].as_array().map_or(0, Vec::len);
            if repos > 0 {
                print_repos(&found["Repos"], Output::Table)?;
            }
            if found["Images"].as_array().is_some_and(|i| !i.is_empty()) || repos == 0 {
                print_images(&found["Images"], Output::Table)?;
            }
            Ok(())
        }
        other => print_value(found, other),
    }
}

fn print_value(v: &Value, output: Output) -> Result<(), ClientError> {
    let text = match output {
        Output::Yaml => serde_yaml::to_string(v).map_err(|e| ClientError::Answer(e.to_string()))?,
        _ => serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
    };
    print!("{text}");
    Ok(())
}

/// Bytes as people read them (1000-based, like zli).
fn human(bytes: &str) -> String {
    let Ok(mut n) = bytes.parse::<f64>() else {
        return bytes.to_string();
    };
    for unit in ["B", "kB", "MB", "GB", "TB"] {
        if n < 1000.0 || unit == "TB" {
            return if unit == "B" {
                format!("{n}{unit}")
            } else {
                format!("{n:.1}{unit}")
            };
        }
        n /= 1000.0;
    }
    bytes.to_string()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn platforms(list: &Value) -> String {
    let mut out: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let p = if p.get("Platform").is_some() {
                &p["Platform"]
            } else {
                p
            };
            format!("{}/{}", text(&p["Os"]), text(&p["Arch"]))
        })
        .filter(|p| p != "/")
        .collect();
    out.dedup();
    out.join(",")
}

/// Columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn print_repos(repos: &Value, output: Output) -> Result<(), ClientError> {
    if output != Output::Table {
        return print_value(repos, output);
    }
    let rows: Vec<Vec<String>> = repos
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                text(&r["Name"]),
                text(&r["NewestImage"]["Tag"]),
                platforms(&r["Platforms"]),
                human(&text(&r["Size"])),
                text(&r["DownloadCount"]),
                text(&r["StarCount"]),
                text(&r["LastUpdated"]),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "REPOSITORY",
                "NEWEST",
                "PLATFORMS",
                "SIZE",
                "DOWNLOADS",
                "STARS",
                "LAST UPDATED"
            ],
            &rows
        )
    );
    Ok(())
}

fn print_images(images: &Value, output: Output) -> Result<(), ClientError> {
    if output != Output::Table {
        return print_value(images, output);
    }
    let rows: Vec<Vec<String>> = images
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let digest = text(&i["Digest"]);
            let short = digest
                .split_once(':')
                .map_or(digest.as_str(), |(_, hex)| &hex[..hex.len().min(12)])
                .to_string();
            vec![
                text(&i["RepoName"]),
                text(&i["Tag"]),
                platforms(&i["Manifests"]),
                short,
                if i["IsSigned"] == Value::Bool(true) {
                    "true".into()
                } else {
                    "false".into()
                },
                human(&text(&i["Size"])),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["REPOSITORY", "TAG", "OS/ARCH", "DIGEST", "SIGNED", "SIZE"],
            &rows
        )
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_zlis() {
        assert_eq!(human("999"), "999B");
        assert_eq!(human("1500"), "1.5kB");
        assert_eq!(human("2500000"), "2.5MB");
        assert_eq!(human("n/a"), "n/a");
    }

    #[test]
    fn tables_pad_each_column_to_its_widest_cell() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["long cell".into(), "x".into()],
                vec!["s".into(), "".into()],
            ],
        );
        assert_eq!(t, "A          BB\nlong cell  x\ns\n");
    }

    #[test]
    fn platforms_come_from_a_list_or_from_manifests() {
        let list = json!([{"Os": "linux", "Arch": "amd64"}, {"Os": "", "Arch": ""}]);
        assert_eq!(platforms(&list), "linux/amd64");
        let manifests = json!([{"Platform": {"Os": "linux", "Arch": "arm64/v8"}},
                               {"Platform": {"Os": "linux", "Arch": "amd64"}}]);
        assert_eq!(platforms(&manifests), "linux/arm64/v8,linux/amd64");
    }
}
