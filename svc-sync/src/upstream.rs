//! A client of one upstream registry: the distribution API over its URLs in
//! order (failover on connection errors and 5xx), anonymous, Basic or token
//! authentication (the Docker token protocol, tokens cached per scope),
//! `tlsVerify` and `certDir`, catalog and tag pagination.

use crate::error::SyncError;
use bytes::Bytes;
use capstan_runtime::config::extensions::SyncRegistry;
use parking_lot::Mutex;
use reqwest::{Response, StatusCode, header};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a manifest request accepts: OCI and Docker manifests and indexes.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// Largest manifest accepted from an upstream.
const MAX_MANIFEST: usize = 4 * 1024 * 1024;

/// A manifest as the upstream served it.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Bytes,
    pub media_type: String,
}

#[derive(Debug)]
pub struct Upstream {
    urls: Vec<String>,
    http: reqwest::Client,
    /// Basic credentials for this registry (from `credentialsFile`).
    creds: Option<(String, String)>,
    /// Bearer tokens by scope, with their expiry.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

/// The parameters of a `WWW-Authenticate` challenge.
fn challenge(value: &str) -> (String, HashMap<String, String>) {
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (&q[..end], q.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(k.trim().to_ascii_lowercase(), v.to_string());
        rest = next.trim_start_matches([',', ' ']);
    }
    (scheme.to_ascii_lowercase(), params)
}

impl Upstream {
    /// A client for `r`, with credentials from `credentials` (the parsed
    /// `credentialsFile`, keyed by `host:port`).
    pub fn new(
        r: &SyncRegistry,
        credentials: &HashMap<String, (String, String)>,
    ) -> Result<Self, String> {
        if r.urls.is_empty() {
            return Err("urls: at least one upstream URL is needed".into());
        }
        let mut urls = Vec::new();
        for u in &r.urls {
            let parsed = reqwest::Url::parse(u).map_err(|e| format!("urls: {u:?}: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(format!("urls: {u:?} is not an http(s) URL"));
            }
            urls.push(u.trim_end_matches('/').to_string());
        }
        let host = |u: &str| {
            reqwest::Url::parse(u).ok().map(|p| match p.port() {
                Some(port) => format!("{}:{port}", p.host_str().unwrap_or("")),
                None => p.host_str().unwrap_or("").to_string(),
            })
        };
        let creds = urls
            .iter()
            .filter_map(|u| host(u))
            .find_map(|h| credentials.get(&h).cloned());
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .danger_accept_invalid_certs(!r.tls_verify());
        if let Some(dir) = &r.cert_dir {
            let entries =
                std::fs::read_dir(dir).map_err(|e| format!("certDir {}: {e}", dir.display()))?;
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "crt") {
                    let pem = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                    for cert in reqwest::Certificate::from_pem_bundle(&pem)
                        .map_err(|e| format!("{}: {e}", p.display()))?
                    {
                        b = b.add_root_certificate(cert);
                    }
                }
            }
        }
        Ok(Self {
            urls,
            http: b.build().map_err(|e| e.to_string())?,
            creds,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// GET `path` with `accept`, authenticating for `scope` as the
    /// upstream asks; the next URL is tried when one fails.
    async fn get(&self, path: &str, accept: &str, scope: &str) -> Result<Response, SyncError> {
        let mut last = SyncError::Unavailable("no upstream URL".into());
        for base in &self.urls {
            match self.get_at(base, path, accept, scope).await {
                Ok(r) if r.status().is_server_error() => {
                    last = SyncError::Unavailable(format!("{base}{path}: {}", r.status()));
                }
                Ok(r) => return Ok(r),
                Err(e) => last = e,
            }
            tracing::info!(upstream = %base, error = %last, "upstream failed; trying the next URL");
        }
        Err(last)
    }

    async fn get_at(
        &self,
        base: &str,
        path: &str,
        accept: &str,
        scope: &str,
    ) -> Result<Response, SyncError> {
        let url = format!("{base}{path}");
        let send = |auth: Option<String>| {
            let mut req = self.http.get(&url).header(header::ACCEPT, accept);
            if let Some(a) = auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            req.send()
        };
        let cached = self
            .tokens
            .lock()
            .get(scope)
            .filter(|(_, exp)| *exp > Instant::now())
            .map(|(t, _)| format!("Bearer {t}"));
        let r = send(cached)
            .await
            .map_err(|e| SyncError::Unavailable(format!("{url}: {e}")))?;
        if r.status() != StatusCode::UNAUTHORIZED {
            return Ok(r);
        }
        let Some(value) = r
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
        else {
            return Ok(r);
        };
        let (scheme, params) = challenge(value);
        let auth = match scheme.as_str() {
            "basic" => {
                let Some((u, p)) = &self.creds else {
                    return Ok(r);
                };
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                format!("Basic {b64}")
            }
            "bearer" => {
                let token = self.token(&params, scope).await?;
                format!("Bearer {token}")
            }
            _ => return Ok(r),
        };
        send(Some(auth))
            .await
            .map_err(|e| SyncError::Unavailable(format!("{url}: {e}")))
    }

    /// A token for `scope` from the challenge's realm (with our Basic
    /// credentials when we have some).
    async fn token(
        &self,
        params: &HashMap<String, String>,
        scope: &str,
    ) -> Result<String, SyncError> {
        let realm = params
            .get("realm")
            .ok_or_else(|| SyncError::Unavailable("bearer challenge without realm".into()))?;
        let mut req = self.http.get(realm).query(&[("scope", scope)]);
        if let Some(service) = params.get("service") {
            req = req.query(&[("service", service.as_str())]);
        }
        if let Some((u, p)) = &self.creds {
            req = req.basic_auth(u, Some(p));
        }
        let r = req
            .send()
            .await
            .map_err(|e| SyncError::Unavailable(format!("token service {realm}: {e}")))?;
        if !r.status().is_success() {
            return Err(SyncError::Denied(format!(
                "token service {realm} answered {}",
                r.status()
            )));
        }
        let v: serde_json::Value = r
            .json()
            .await
            .map_err(|e| SyncError::Unavailable(format!("token service {realm}: {e}")))?;
        let token = v["token"]
            .as_str()
            .or_else(|| v["access_token"].as_str())
            .ok_or_else(|| SyncError::Unavailable("token service sent no token".into()))?
            .to_string();
        let ttl = v["expires_in"].as_u64().unwrap_or(60).max(10);
        self.tokens.lock().insert(
            scope.to_string(),
            (token.clone(), Instant::now() + Duration::from_secs(ttl - 5)),
        );
        Ok(token)
    }

    fn check(r: Response, what: &str) -> Result<Response, SyncError> {
        match r.status() {
            s if s.is_success() => Ok(r),
            StatusCode::NOT_FOUND => Err(SyncError::NotFound(what.to_string())),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(SyncError::Denied(format!(
                "{what}: upstream answered {}",
                r.status()
            ))),
            StatusCode::TOO_MANY_REQUESTS => Err(SyncError::Unavailable(format!(
                "{what}: rate limited upstream"
            ))),
            s => Err(SyncError::Unavailable(format!(
                "{what}: upstream answered {s}"
            ))),
        }
    }

    /// The manifest `reference` of `repo`.
    pub async fn manifest(&self, repo: &str, reference: &str) -> Result<Manifest, SyncError> {
        let what = format!("{repo}:{reference}");
        let r = self
            .get(
                &format!("/v2/{repo}/manifests/{reference}"),
                MANIFEST_ACCEPT,
                &format!("repository:{repo}:pull"),
            )
            .await?;
        let r = Self::check(r, &what)?;
        let media_type = r
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        if r.content_length()
            .is_some_and(|n| n as usize > MAX_MANIFEST)
        {
            return Err(SyncError::Invalid(format!("{what}: manifest too large")));
        }
        let bytes = r
            .bytes()
            .await
            .map_err(|e| SyncError::Unavailable(format!("{what}: {e}")))?;
        if bytes.len() > MAX_MANIFEST {
            return Err(SyncError::Invalid(format!("{what}: manifest too large")));
        }
        Ok(Manifest { bytes, media_type })
    }

    /// The manifests that refer to `digest` (signatures, SBOMs…), as
    /// (digest, artifact type); empty when the upstream has no referrers API.
    pub async fn referrers(
        &self,
        repo: &str,
        digest: &str,
    ) -> Result<Vec<(String, String)>, SyncError> {
        let r = self
            .get(
                &format!("/v2/{repo}/referrers/{digest}"),
                "application/vnd.oci.image.index.v1+json",
                &format!("repository:{repo}:pull"),
            )
            .await?;
        if matches!(
            r.status(),
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
        ) {
            return Ok(Vec::new());
        }
        let r = Self::check(r, &format!("{repo} referrers of {digest}"))?;
        let v: serde_json::Value = r
            .json()
            .await
            .map_err(|e| SyncError::Unavailable(format!("{repo} referrers: {e}")))?;
        Ok(v["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let d = m["digest"].as_str()?.to_string();
                Some((d, m["artifactType"].as_str().unwrap_or("").to_string()))
            })
            .collect())
    }

    /// The blob `digest` of `repo`, as a response to stream.
    pub async fn blob(&self, repo: &str, digest: &str) -> Result<Response, SyncError> {
        let r = self
            .get(
                &format!("/v2/{repo}/blobs/{digest}"),
                "*/*",
                &format!("repository:{repo}:pull"),
            )
            .await?;
        Self::check(r, &format!("{repo}@{digest}"))
    }

    /// Every tag of `repo`, following `Link` pagination.
    pub async fn tags(&self, repo: &str) -> Result<Vec<String>, SyncError> {
        self.list(
            &format!("/v2/{repo}/tags/list?n=1000"),
            &format!("repository:{repo}:pull"),
            "tags",
        )
        .await
    }

    /// Every repository of the upstream's catalog.
    pub async fn catalog(&self) -> Result<Vec<String>, SyncError> {
        self.list("/v2/_catalog?n=1000", "registry:catalog:*", "repositories")
            .await
    }

    /// The strings of JSON array `field` over every page from `path`.
    async fn list(&self, path: &str, scope: &str, field: &str) -> Result<Vec<String>, SyncError> {
        let mut out = Vec::new();
        let mut path = path.to_string();
        // Bounded: a registry whose links never end stops here.
        for _ in 0..10_000 {
            let r = self.get(&path, "application/json", scope).await?;
            let r = Self::check(r, &path)?;
            let next = next_link(&r);
            let v: serde_json::Value = r
                .json()
                .await
                .map_err(|e| SyncError::Unavailable(format!("{path}: {e}")))?;
            out.extend(
                v[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(str::to_string)),
            );
            match next {
                Some(n) => path = n,
                None => break,
            }
        }
        Ok(out)
    }
}

/// The path of a `Link: <…>; rel="next"` header.
fn next_link(r: &Response) -> Option<String> {
    let v = r.headers().get(header::LINK)?.to_str().ok()?;
    let start = v.find('<')? + 1;
    let end = v[start..].find('>')? + start;
    let target = &v[start..end];
    // Absolute links keep only their path and query.
    match reqwest::Url::parse(target) {
        Ok(u) => Some(format!("{}?{}", u.path(), u.query().unwrap_or(""))),
        Err(_) => Some(target.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_quoted_and_bare_values() {
        let (s, p) = challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (s, p) = challenge("Basic realm=registry");
        assert_eq!(s, "basic");
        assert_eq!(p["realm"], "registry");
    }

    #[test]
    fn upstreams_need_http_urls() {
        let r: SyncRegistry =
            serde_json::from_value(serde_json::json!({"urls": ["ftp://x"]})).unwrap();
        assert!(Upstream::new(&r, &HashMap::new()).is_err());
        let r: SyncRegistry = serde_json::from_value(serde_json::json!({"urls": []})).unwrap();
        assert!(Upstream::new(&r, &HashMap::new()).is_err());
        let r: SyncRegistry =
            serde_json::from_value(serde_json::json!({"urls": ["http://127.0.0.1:5000/"]}))
                .unwrap();
        let creds = HashMap::from([(
            "127.0.0.1:5000".to_string(),
            ("u".to_string(), "p".to_string()),
        )]);
        let u = Upstream::new(&r, &creds).unwrap();
        assert_eq!(u.urls, vec!["http://127.0.0.1:5000"]);
        assert_eq!(u.creds, Some(("u".into(), "p".into())));
    }
}
