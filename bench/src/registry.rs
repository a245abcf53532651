//! A thin OCI distribution client over reqwest: URL building, `Location`
//! following, status checks whose errors carry the registry's own answer,
//! and whole-blob uploads in one request body.

use crate::{cli::UploadMethod, content::digest_of};
use anyhow::{Context, Result, anyhow, bail};
use reqwest::{Body, Client, Response, StatusCode, Url, header};
use std::time::Duration;

pub const OCTET_STREAM: &str = "application/octet-stream";

#[derive(Debug, Clone)]
pub struct Registry {
    pub client: Client,
    base: Url,
}

impl Registry {
    /// A client of the registry at `url`; `basic` (`user:password`) is sent
    /// as Basic credentials on every request.
    pub fn new(url: &str, timeout: Duration, basic: Option<&str>) -> Result<Self> {
        let base = Url::parse(url).with_context(|| format!("bad registry URL {url:?}"))?;
        let mut headers = header::HeaderMap::new();
        if let Some(creds) = basic {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(creds);
            let mut v = header::HeaderValue::from_str(&format!("Basic {b64}"))?;
            v.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, v);
        }
        let client = Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(256)
            .build()?;
        Ok(Self { client, base })
    }

    /// An absolute path on the registry, e.g. `/v2/bench/blobs/uploads/`.
    pub fn url(&self, path: &str) -> Result<Url> {
        self.base
            .join(path)
            .with_context(|| format!("bad path {path:?}"))
    }

    /// The `Location` header of `resp`, resolved against the registry URL.
    pub fn location(&self, resp: &Response) -> Result<Url> {
        let loc = resp
            .headers()
            .get(header::LOCATION)
            .ok_or_else(|| anyhow!("{} {}: no Location header", resp.status(), resp.url()))?
            .to_str()
            .context("Location header is not text")?;
        self.base
            .join(loc)
            .with_context(|| format!("bad Location {loc:?}"))
    }

    /// Upload a whole blob whose bytes `body()` yields, by `method` (never `Auto`).
    pub async fn upload(
        &self,
        repo: &str,
        digest: &str,
        size: u64,
        method: UploadMethod,
        body: impl FnOnce() -> Body,
    ) -> Result<()> {
        match method {
            UploadMethod::Post | UploadMethod::Auto => {
                let mut url = self.url(&format!("/v2/{repo}/blobs/uploads/"))?;
                url.query_pairs_mut().append_pair("digest", digest);
                let resp = self.put_bytes(self.client.post(url), size, body()).await?;
                expect(resp, &[StatusCode::CREATED], "monolithic POST").await?;
            }
            UploadMethod::PostPut => {
                let url = self.url(&format!("/v2/{repo}/blobs/uploads/"))?;
                let resp = self
                    .client
                    .post(url)
                    .header(header::CONTENT_LENGTH, 0)
                    .send()
                    .await?;
                let resp = expect(resp, &[StatusCode::ACCEPTED], "POST (open upload)").await?;
                let mut url = self.location(&resp)?;
                url.query_pairs_mut().append_pair("digest", digest);
                let resp = self.put_bytes(self.client.put(url), size, body()).await?;
                expect(resp, &[StatusCode::CREATED], "PUT ?digest= (whole blob)").await?;
            }
        }
        Ok(())
    }

    async fn put_bytes(
        &self,
        req: reqwest::RequestBuilder,
        size: u64,
        body: Body,
    ) -> Result<Response> {
        Ok(req
            .header(header::CONTENT_LENGTH, size)
            .header(header::CONTENT_TYPE, OCTET_STREAM)
            .body(body)
            .send()
            .await?)
    }

    /// Resolve `Auto`: a single POST of a tiny blob tells whether the registry
    /// takes monolithic POST uploads (201) or only opens a session (202).
    pub async fn resolve_method(&self, repo: &str, method: UploadMethod) -> Result<UploadMethod> {
        if method != UploadMethod::Auto {
            return Ok(method);
        }
        let probe = format!("capstan-bench probe {}", rand::random::<u64>()).into_bytes();
        let digest = digest_of(&probe);
        let mut url = self.url(&format!("/v2/{repo}/blobs/uploads/"))?;
        url.query_pairs_mut().append_pair("digest", &digest);
        let resp = self
            .put_bytes(self.client.post(url), probe.len() as u64, probe.into())
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(UploadMethod::Post),
            StatusCode::ACCEPTED => {
                // The registry ignored the body and opened a session: close it.
                if let Ok(url) = self.location(&resp) {
                    let _ = self.client.delete(url).send().await;
                }
                Ok(UploadMethod::PostPut)
            }
            _ => Err(expect(resp, &[], "monolithic POST probe")
                .await
                .unwrap_err()),
        }
    }
}

/// `resp` if its status is one of `want`, else an error naming `what`, the
/// status and the start of the body the registry sent.
pub async fn expect(resp: Response, want: &[StatusCode], what: &str) -> Result<Response> {
    if want.contains(&resp.status()) {
        return Ok(resp);
    }
    let status = resp.status();
    let url = resp.url().clone();
    let text = resp.text().await.unwrap_or_default();
    let mut text: String = text.trim().chars().take(600).collect();
    if text.is_empty() {
        text = "<empty body>".into();
    }
    bail!(
        "{what}: {} {} -> HTTP {status}: {text}",
        url.path(),
        url.query().unwrap_or("")
    )
}

/// `application/octet-stream` bytes as an owned body.
pub fn bytes_body(bytes: &[u8]) -> Body {
    Body::from(bytes.to_vec())
}
