//! Trust between roles over the network: a secret the roles of one
//! deployment share (`services.secret` or `services.secretFile`). Every
//! call a role makes to another carries it as `authorization: Bearer …`;
//! [`Guard`] answers a call without an accepted one `UNAUTHENTICATED` and
//! logs it. The standard health service stays open, so probes and load
//! balancers need no secret (it tells only whether the role serves).
//!
//! A secret file holds one secret per line: the first is sent, all are
//! accepted, and the file is re-read every [`RELOAD_EVERY`]. Rotating with
//! no downtime is three edits, each made everywhere before the next: add
//! the new secret as a second line; swap the lines; drop the old one.
//!
//! The secret travels in clear over plain HTTP/2: run the roles on a
//! private network, or put TLS between them.

use http::HeaderValue;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use subtle::ConstantTimeEq as _;
use tonic::body::Body;

/// Shortest secret accepted (in bytes).
pub const MIN_SECRET_LEN: usize = 16;
/// How often a secret file is read again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// The path prefix of the standard health service, open to every caller.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("services.secretFile {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("services.secretFile {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The secrets in force: the one sent and those accepted.
#[derive(Default, PartialEq, Eq)]
struct Set {
    send: Option<String>,
    accept: Vec<String>,
}

/// The shared secrets of a deployment (none when it has none); clones share
/// them, and a file's changes reach every clone.
#[derive(Clone, Default)]
pub struct Secrets(Arc<RwLock<Set>>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.read();
        f.debug_struct("Secrets")
            .field("set", &set.send.is_some())
            .field("accepted", &set.accept.len())
            .finish()
    }
}

impl Secrets {
    /// No secret: calls carry none, and every call is accepted.
    pub fn none() -> Self {
        Self::default()
    }

    /// One fixed secret, sent and accepted.
    pub fn fixed(secret: &str) -> Self {
        Self(Arc::new(RwLock::new(Set {
            send: Some(secret.to_string()),
            accept: vec![secret.to_string()],
        })))
    }

    /// The secrets `services` names; a secret file is re-read every
    /// [`RELOAD_EVERY`] while any clone lives (must be called inside a
    /// tokio runtime when it names a file).
    pub fn from_config(services: &crate::config::ServicesConfig) -> Result<Self, SecretError> {
        if let Some(s) = &services.secret {
            return Ok(Self::fixed(s));
        }
        let Some(path) = &services.secret_file else {
            return Ok(Self::none());
        };
        let secrets = Self(Arc::new(RwLock::new(read_file(path)?)));
        tokio::spawn(reload(
            Arc::downgrade(&secrets.0),
            path.clone(),
            RELOAD_EVERY,
        ));
        Ok(secrets)
    }

    /// Whether there is a secret at all.
    pub fn is_set(&self) -> bool {
        self.read().send.is_some()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Set> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The `authorization` value a call carries, if there is a secret.
    pub(super) fn header(&self) -> Option<HeaderValue> {
        let set = self.read();
        let mut v = HeaderValue::try_from(format!("Bearer {}", set.send.as_ref()?)).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// Whether a call with `authorization` value `presented` is let in.
    fn accepts(&self, presented: Option<&HeaderValue>) -> bool {
        let set = self.read();
        if set.accept.is_empty() {
            return true;
        }
        let Some(token) = presented.and_then(|v| v.as_bytes().strip_prefix(b"Bearer ")) else {
            return false;
        };
        // Compare with every accepted secret, in constant time each.
        set.accept
            .iter()
            .fold(false, |ok, s| ok | bool::from(s.as_bytes().ct_eq(token)))
    }
}

/// The secrets in `path`: one per line, blank lines and `#` comments aside.
fn read_file(path: &Path) -> Result<Set, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let accept: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let invalid = |message: String| SecretError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    if accept.is_empty() {
        return Err(invalid("holds no secret".into()));
    }
    if let Some(short) = accept.iter().position(|s| s.len() < MIN_SECRET_LEN) {
        return Err(invalid(format!(
            "line {} is shorter than {MIN_SECRET_LEN} characters",
            short + 1
        )));
    }
    Ok(Set {
        send: accept.first().cloned(),
        accept,
    })
}

/// Re-read `path` every `every` while the secrets are in use.
async fn reload(secrets: std::sync::Weak<RwLock<Set>>, path: PathBuf, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(secrets) = secrets.upgrade() else {
            return;
        };
        apply(&secrets, &path);
    }
}

/// Take the secrets in `path` into `secrets`; a file that cannot be read or
/// holds no valid secret leaves them as they were. Whether they changed.
fn apply(secrets: &RwLock<Set>, path: &Path) -> bool {
    match read_file(path) {
        Ok(new) => {
            let mut set = secrets
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *set == new {
                return false;
            }
            tracing::info!(path = %path.display(), accepted = new.accept.len(),
                "shared secrets reloaded");
            *set = new;
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "shared secrets kept as they were");
            false
        }
    }
}

/// A tower layer for a role's gRPC server: refuses calls without an
/// accepted secret.
#[derive(Clone, Debug)]
pub struct GuardLayer(pub Secrets);

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;
    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            secrets: self.0.clone(),
        }
    }
}

/// See [`GuardLayer`].
#[derive(Clone, Debug)]
pub struct Guard<S> {
    inner: S,
    secrets: Secrets,
}

impl<S, B> tower::Service<http::Request<B>> for Guard<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        if path.starts_with(HEALTH_PREFIX)
            || self
                .secrets
                .accepts(req.headers().get(http::header::AUTHORIZATION))
        {
            return Box::pin(self.inner.call(req));
        }
        let peer = req
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|i| i.remote_addr())
            .map(|a| a.to_string())
            .unwrap_or_default();
        let presented = req.headers().contains_key(http::header::AUTHORIZATION);
        tracing::warn!(method = path, %peer, presented,
            "gRPC call refused: no valid shared secret (services.secret)");
        if path == "/metrics" {
            // A scraper is told in HTTP terms.
            let mut refused = http::Response::new(tonic::body::Body::empty());
            *refused.status_mut() = http::StatusCode::UNAUTHORIZED;
            refused.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            return Box::pin(std::future::ready(Ok(refused)));
        }
        let status = tonic::Status::unauthenticated(
            "this role accepts calls only from roles of its deployment (services.secret)",
        );
        Box::pin(std::future::ready(Ok(status.into_http())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(s: &str) -> HeaderValue {
        HeaderValue::try_from(format!("Bearer {s}")).unwrap()
    }

    #[test]
    fn only_accepted_secrets_get_in() {
        let open = Secrets::none();
        assert!(!open.is_set() && open.header().is_none());
        assert!(open.accepts(None));
        let s = Secrets::fixed("0123456789abcdef");
        assert_eq!(s.header().unwrap(), bearer("0123456789abcdef"));
        assert!(s.accepts(Some(&bearer("0123456789abcdef"))));
        assert!(!s.accepts(Some(&bearer("0123456789abcdeX"))));
        assert!(!s.accepts(Some(&bearer("0123456789abcde"))));
        assert!(!s.accepts(Some(&HeaderValue::from_static("0123456789abcdef"))));
        assert!(!s.accepts(None));
        assert!(!format!("{s:?}").contains("0123"), "Debug hides the secret");
    }

    #[tokio::test]
    async fn a_secret_file_is_reloaded_and_bad_contents_keep_the_old_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let (old, new) = ("old-secret-0123456789", "new-secret-0123456789");
        std::fs::write(&path, format!("# the first is sent\n{old}\n")).unwrap();
        let set = read_file(&path).unwrap();
        let secrets = Secrets(Arc::new(RwLock::new(set)));
        tokio::spawn(reload(
            Arc::downgrade(&secrets.0),
            path.clone(),
            Duration::from_millis(20),
        ));
        let wait_for = |want: &'static str| {
            let secrets = secrets.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while secrets.header() != Some(bearer(want)) {
                    assert!(tokio::time::Instant::now() < deadline, "never sent {want}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        // Step 1: both accepted, the old one still sent.
        std::fs::write(&path, format!("{old}\n{new}\n")).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !secrets.accepts(Some(&bearer(new))) {
            assert!(tokio::time::Instant::now() < deadline, "new never accepted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(secrets.header(), Some(bearer(old)));
        // Step 2: the new one sent.
        std::fs::write(&path, format!("{new}\n{old}\n")).unwrap();
        wait_for(new).await;
        // A file made invalid, or gone, changes nothing.
        for bad in ["short\n", "", "# nothing\n"] {
            std::fs::write(&path, bad).unwrap();
            assert!(!apply(&secrets.0, &path), "{bad:?}");
            assert_eq!(secrets.header(), Some(bearer(new)));
            assert!(secrets.accepts(Some(&bearer(old))));
        }
        std::fs::remove_file(&path).unwrap();
        assert!(!apply(&secrets.0, &path));
        assert_eq!(secrets.header(), Some(bearer(new)));
        // Step 3: the old one dropped.
        std::fs::write(&path, format!("{new}\n")).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while secrets.accepts(Some(&bearer(old))) {
            assert!(tokio::time::Instant::now() < deadline, "old still accepted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(secrets.accepts(Some(&bearer(new))));
    }
}
