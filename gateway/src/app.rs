//! The pingora application: one request in, one [`Reply`] out, one access-log
//! record per request.

use crate::auth::{Authn, Caller, Login};
use crate::authz;
use crate::backends::Backends;
use crate::cache::ManifestCache;
use crate::endpoint::{self, Endpoint, RouteError};
use crate::error::ApiError;
use crate::handlers::{self, zot_auth};
use crate::metrics::Metrics;
use async_trait::async_trait;
use bytes::Bytes;
use capstan_oci::ErrorCode;
use capstan_proto::blob::v1::ReadChunk;
use capstan_proto::direct::MessageStream;
use futures::StreamExt as _;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument as _;

/// Largest unread request body drained after an early answer.
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

/// Header every `/v2` response carries.
pub const API_VERSION_HEADER: (&str, &str) = ("Docker-Distribution-API-Version", "registry/2.0");

/// The gateway application state shared by all connections.
#[derive(Debug)]
pub struct Gateway {
    pub backends: Backends,
    pub manifests: Arc<ManifestCache>,
    pub metrics: Metrics,
    pub authn: Arc<Authn>,
    /// svc-sync, when on-demand pull-through is configured.
    pub sync: Option<Pool<SyncClient>>,
    /// svc-sync, when any sync is configured (its metrics join ours).
    pub sync_metrics: Option<Pool<SyncClient>>,
    /// Manifest pulls not yet reported to svc-meta.
    pub pulls: Arc<crate::pulls::Pulls>,
    /// `storage.redirectBlobURL`: answer whole-blob GETs with a redirect to
    /// the storage backend, for as long as the URL is good for.
    pub redirect_blobs: Option<std::time::Duration>,
    /// The storage section: which store holds a repository's blobs
    /// (`storage.subPaths`).
    pub storage: Arc<capstan_runtime::config::StorageConfig>,
    /// The backend replicas' health (`/readyz`).
    pub health: crate::health::Health,
    /// zot's extension endpoints (`extensions.search`).
    pub ext: Arc<crate::handlers::zot_ext::Extensions>,
}

type SyncClient = capstan_proto::direct::SyncClient<capstan_runtime::grpc::Transport>;
use capstan_runtime::grpc::Pool;

/// What a handler sends back.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

pub enum Body {
    Empty,
    Bytes(Bytes),
    /// Blob bytes streamed from svc-blob (or svc-sync); `len` is the
    /// Content-Length.
    Stream {
        stream: MessageStream<ReadChunk>,
        len: u64,
    },
    /// Only headers (HEAD): the Content-Length of the would-be body.
    Head {
        len: u64,
    },
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Empty => f.write_str("Empty"),
            Body::Bytes(b) => f.debug_tuple("Bytes").field(&b.len()).finish(),
            Body::Stream { len, .. } => f.debug_struct("Stream").field("len", len).finish(),
            Body::Head { len } => f.debug_struct("Head").field("len", len).finish(),
        }
    }
}

impl Reply {
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::Empty,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self::bytes(
            status,
            "application/json",
            serde_json::to_vec(value).expect("json").into(),
        )
    }

    pub fn bytes(status: u16, content_type: &str, body: Bytes) -> Self {
        Self {
            status,
            headers: vec![("Content-Type", content_type.to_string())],
            body: Body::Bytes(body),
        }
    }

    fn from_error(e: &ApiError) -> Self {
        let mut r = Self::bytes(e.http_status(), "application/json", e.body().into());
        r.headers.extend(e.headers.iter().cloned());
        // Something the request needs is not there yet: say when to try
        // again.
        if r.status == 503 && !r.headers.iter().any(|(k, _)| *k == "Retry-After") {
            r.headers
                .push(("Retry-After", RETRY_AFTER_SECS.to_string()));
        }
        r
    }
}

/// What a 503 tells the client to wait before trying again, in seconds.
const RETRY_AFTER_SECS: u64 = 5;

/// Per-request facts handlers need.
#[derive(Debug)]
pub struct Ctx {
    pub method: String,
    /// Query parameters; of a repeated one, the last value.
    pub query: HashMap<String, String>,
    /// Every value of the `tag` parameter, in order (a manifest push by
    /// digest with tags).
    pub tags: Vec<String>,
    /// W3C trace id (32 hex) of this request.
    pub trace_id: String,
    /// This request's span: the root of its trace (or a child of the
    /// client's, when it sent `traceparent`).
    pub span: tracing::Span,
    pub is_head: bool,
    /// The `Host` the client addressed (for absolute URLs it must follow).
    pub host: String,
    /// The request comes from the web UI (`X-ZOT-API-CLIENT: zot-ui`).
    pub from_ui: bool,
    /// Who is calling (set by the authentication phase).
    pub caller: Arc<Caller>,
    /// `Set-Cookie` values to add to the answer (a login started a session).
    pub set_cookies: Vec<String>,
    /// Name of a route outside `/v2` (for logs and metrics).
    pub route: &'static str,
}

impl Ctx {
    fn new(session: &ServerSession) -> Self {
        let req = session.req_header();
        let method = req.method.as_str().to_string();
        let pairs: Vec<(String, String)> = req
            .uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let tags = pairs
            .iter()
            .filter(|(k, _)| k == "tag")
            .map(|(_, v)| v.clone())
            .collect();
        let query = pairs.into_iter().collect();
        let span = tracing::info_span!(
            "request",
            otel.name = %format!("{method} {}", req.uri.path()),
            otel.kind = "server",
            http.request.method = %method,
            url.path = %req.uri.path(),
            http.response.status_code = tracing::field::Empty,
        );
        capstan_runtime::telemetry::adopt(&span, &req.headers);
        // The span's trace when traces are exported; else the client's, or
        // a new one.
        let trace_id = capstan_runtime::telemetry::trace_id(&span)
            .or_else(|| {
                let tp = req.headers.get("traceparent")?.to_str().ok()?;
                capstan_runtime::grpc::trace_id_of(tp).map(str::to_string)
            })
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri.authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let from_ui = req
            .headers
            .get("x-zot-api-client")
            .is_some_and(|v| v.as_bytes() == b"zot-ui");
        Self {
            is_head: method == "HEAD",
            host,
            from_ui,
            method,
            query,
            tags,
            trace_id,
            span,
            caller: Arc::new(Caller::open()),
            set_cookies: Vec::new(),
            route: "none",
        }
    }

    /// A gRPC request carrying this request's trace context: its span's
    /// when traces are exported, else its trace id.
    pub fn rpc<T>(&self, msg: T) -> tonic::Request<T> {
        traced(&self.span, &self.trace_id, msg)
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }
}

/// A request for `msg` carrying `span`'s trace context when traces are
/// exported, else the trace `trace_id` (a span id of its own).
pub fn traced<T>(span: &tracing::Span, trace_id: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    capstan_runtime::telemetry::inject(span, r.metadata_mut().as_mut());
    if r.metadata().contains_key("traceparent") {
        return r;
    }
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    if let Ok(v) = format!("00-{trace_id}-{span}-01").parse() {
        r.metadata_mut().insert("traceparent", v);
    }
    r
}

impl Gateway {
    pub fn new(backends: Backends, manifests: Arc<ManifestCache>, authn: Arc<Authn>) -> Self {
        Self {
            backends,
            manifests,
            metrics: Metrics::new(),
            authn,
            sync: None,
            sync_metrics: None,
            pulls: Arc::default(),
            redirect_blobs: None,
            storage: Arc::default(),
            health: crate::health::Health::default(),
            ext: Arc::new(crate::handlers::zot_ext::Extensions::of(&Default::default())),
        }
    }

    /// zot's probes, answered to anyone (orchestrators call them without
    /// credentials): `/livez` while the process serves, `/startupz` once it
    /// has started (it has, if it answers), `/readyz` while every role it
    /// needs has a replica whose health check answers "serving" (503 with
    /// `Retry-After` otherwise). Each names the roles' serving replicas.
    fn probe(&self, path: &str, method: &str) -> Option<Reply> {
        if method != "GET" && method != "HEAD" {
            return None;
        }
        let states = self.health.states();
        let body = |status: &str| {
            let v = serde_json::json!({"status": status, "roles": states});
            Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
        };
        match path {
            "/livez" | "/startupz" => Some(Reply::bytes(200, "application/json", body("ok"))),
            "/readyz" if self.health.ready() => {
                Some(Reply::bytes(200, "application/json", body("ready")))
            }
            "/readyz" => Some(
                Reply::bytes(503, "application/json", body("not ready")).header(
                    "Retry-After",
                    crate::health::CHECK_EVERY.as_secs().to_string(),
                ),
            ),
            _ => None,
        }
    }

    /// `/zot/auth/…`: the token service answers any caller; key management
    /// and logout need the caller resolved first.
    async fn zot_auth(
        &self,
        ctx: &mut Ctx,
        session: &mut ServerSession,
        which: zot_auth::ZotAuth,
    ) -> Result<Reply, ApiError> {
        use zot_auth::ZotAuth;
        if self.authn.is_open() {
            return Err(ApiError::not_found_route());
        }
        if !which.allows(&ctx.method) {
            return Err(ApiError::code(ErrorCode::Unsupported));
        }
        match which {
            ZotAuth::Token => zot_auth::token(self, ctx, session).await,
            ZotAuth::Logout => zot_auth::logout(self, ctx, session).await,
            ZotAuth::Login => zot_auth::login(self, ctx).await,
            ZotAuth::Callback(p) => zot_auth::callback(self, ctx, session, &p).await,
            ZotAuth::ApiKey => {
                self.authenticate(ctx, session, None).await?;
                zot_auth::apikey(self, ctx, session).await
            }
        }
    }

    /// zot's extension endpoints: the OCI extension list for anyone; the
    /// rest only with `extensions.search` on, the configuration to anyone,
    /// search and stars to callers who authenticate as for `/v2/`.
    async fn zot_ext(
        &self,
        ctx: &mut Ctx,
        session: &mut ServerSession,
        ext: crate::handlers::zot_ext::ZotExt,
    ) -> Result<Reply, ApiError> {
        use crate::handlers::zot_ext::{self as z, ZotExt};
        if ext != ZotExt::Discover && !self.ext.search {
            return Err(ApiError::not_found_route());
        }
        if !ext.allows(&ctx.method) {
            return Err(ApiError::code(ErrorCode::Unsupported));
        }
        match ext {
            ZotExt::Discover => Ok(Reply::bytes(
                200,
                "application/json",
                self.ext.discover.clone(),
            )),
            ZotExt::Mgmt => Ok(Reply::bytes(200, "application/json", self.ext.mgmt.clone())),
            ZotExt::Search | ZotExt::UserPrefs => {
                self.authenticate(ctx, session, None).await?;
                // Someone who may read nothing is asked to sign in, as for
                // `/v2/` (anonymous callers with a policy get through).
                let read = capstan_oci::access::Action::Read;
                if ctx.caller.is_anonymous() && !ctx.caller.access.rules().allows_somewhere(read) {
                    return Err(authz::refuse(self, ctx, None, read).await);
                }
                if ext == ZotExt::Search {
                    z::search(self, ctx, session).await
                } else {
                    z::userprefs(self, ctx).await
                }
            }
        }
    }

    /// Set `ctx.caller` from the request's credentials; the answer for a
    /// request about `repo` when they do not hold.
    async fn authenticate(
        &self,
        ctx: &mut Ctx,
        session: &ServerSession,
        repo: Option<&str>,
    ) -> Result<(), ApiError> {
        let headers = &session.req_header().headers;
        match self
            .authn
            .resolve(headers, client_cn(session).as_deref(), ctx)
            .await
        {
            Ok(c) => {
                ctx.caller = c;
                Ok(())
            }
            Err(f) => Err(zot_auth::failure(self, ctx, f, repo).await),
        }
    }

    /// A password login from the web UI (its `GET /v2/`) starts a session.
    async fn maybe_start_session(&self, ctx: &mut Ctx) {
        if !ctx.from_ui || ctx.caller.login != Login::Password {
            return;
        }
        let Some(mut client) = self.authn.client() else {
            return;
        };
        let req = capstan_proto::auth::v1::CreateSessionRequest {
            username: ctx.caller.username.clone(),
            groups: ctx.caller.groups.clone(),
            source: ctx.caller.source.clone(),
        };
        match client.create_session(ctx.rpc(req)).await {
            Ok(r) => {
                let r = r.into_inner();
                ctx.set_cookies.extend(zot_auth::session_cookies(
                    &r.session,
                    &ctx.caller.username,
                    r.max_age_seconds,
                    self.authn.secure_cookies,
                ));
            }
            Err(status) => {
                tracing::warn!(trace_id = %ctx.trace_id, error = %status.message(), "session not started");
            }
        }
    }

    async fn dispatch(
        &self,
        ctx: &mut Ctx,
        session: &mut ServerSession,
    ) -> (Option<Endpoint>, Result<Reply, ApiError>) {
        let path = session.req_header().uri.path().to_string();
        if let Some(probe) = self.probe(&path, &ctx.method) {
            ctx.route = "probe";
            return (None, Ok(probe));
        }
        if path == "/metrics" && (ctx.method == "GET" || ctx.method == "HEAD") {
            ctx.route = "metrics";
            // Metrics name repositories: with authentication on, only
            // (listed) users read them.
            if let Err(e) = self.authenticate(ctx, session, None).await {
                return (None, Err(e));
            }
            if !self.authn.may_read_metrics(&ctx.caller) {
                let e = authz::refuse(self, ctx, None, capstan_oci::access::Action::Read).await;
                return (None, Err(e));
            }
            let mut body = self.metrics.render();
            // Each svc-blob replica's read and warming counters, from those
            // that answer in time.
            let asks = self.backends.blob_all().into_iter().map(|(uri, mut c)| {
                let req = ctx.rpc(capstan_proto::blob::v1::BlobMetricsRequest {});
                async move {
                    let got =
                        tokio::time::timeout(std::time::Duration::from_secs(2), c.metrics(req))
                            .await;
                    match got {
                        Ok(Ok(r)) => Some((uri, r.into_inner())),
                        _ => None,
                    }
                }
            });
            let replicas: Vec<_> = futures::future::join_all(asks)
                .await
                .into_iter()
                .flatten()
                .collect();
            body.extend_from_slice(capstan_proto::metrics::render_blob(&replicas).as_bytes());
            if let Some(mut sync) = self.sync_metrics.as_ref().map(Pool::client) {
                // The sync service's own progress counters, when it answers
                // in time.
                let req = ctx.rpc(capstan_proto::sync::v1::MetricsRequest {});
                let got =
                    tokio::time::timeout(std::time::Duration::from_secs(2), sync.metrics(req))
                        .await;
                if let Ok(Ok(r)) = got {
                    body.extend_from_slice(r.into_inner().text.as_bytes());
                }
            }
            return (
                None,
                Ok(Reply::bytes(200, "text/plain; version=0.0.4", body.into())),
            );
        }
        if let Some(which) = zot_auth::ZotAuth::parse(&path) {
            ctx.route = which.name();
            return (None, self.zot_auth(ctx, session, which).await);
        }
        if let Some(ext) = crate::handlers::zot_ext::ZotExt::parse(&path) {
            ctx.route = ext.name();
            return (None, self.zot_ext(ctx, session, ext).await);
        }
        let ep = match endpoint::parse(&path) {
            Ok(ep) => ep,
            Err(RouteError::NameInvalid) => {
                return (None, Err(ApiError::code(ErrorCode::NameInvalid)));
            }
            Err(RouteError::NotFound) => return (None, Err(ApiError::not_found_route())),
        };
        if !ep.allows(&ctx.method) {
            return (Some(ep), Err(ApiError::code(ErrorCode::Unsupported)));
        }
        if let Err(e) = self.authenticate(ctx, session, ep.repo()).await {
            return (Some(ep), Err(e));
        }
        if ep == Endpoint::Base {
            self.maybe_start_session(ctx).await;
        }
        if let Err(e) = authz::check(self, ctx, &ep).await {
            return (Some(ep), Err(e));
        }
        let result = handlers::handle(self, ctx, &ep, session).await;
        (Some(ep), result)
    }
}

#[async_trait]
impl HttpServerApp for Gateway {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "failed to read request");
                return None;
            }
        }
        let started = Instant::now();
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let mut ctx = Ctx::new(&session);
        let span = ctx.span.clone();
        let (ep, result) = self.dispatch(&mut ctx, &mut session).instrument(span).await;
        let mut reply = match result {
            Ok(r) => r,
            Err(e) => {
                if e.http_status() >= 500 {
                    tracing::warn!(trace_id = %ctx.trace_id, code = %e.code, error = %e.message, "request failed");
                }
                Reply::from_error(&e)
            }
        };
        for c in ctx.set_cookies.drain(..) {
            reply.headers.push(("Set-Cookie", c));
        }
        let status = reply.status;
        ctx.span.record("http.response.status_code", status);
        let written = write_reply(&mut session, reply, ctx.is_head)
            .instrument(ctx.span.clone())
            .await;
        let (name, repo) = ep
            .as_ref()
            .map(|e| (e.name(), e.repo().unwrap_or("")))
            .unwrap_or((ctx.route, ""));
        self.metrics.request(
            &ctx.method,
            status,
            started.elapsed().as_secs_f64(),
            session.body_bytes_read() as u64,
            session.body_bytes_sent() as u64,
        );
        tracing::info!(
            method = %ctx.method,
            endpoint = name,
            repo,
            user = %ctx.caller.username,
            status,
            bytes_in = session.body_bytes_read(),
            bytes_out = session.body_bytes_sent(),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            trace_id = %ctx.trace_id,
            "request"
        );
        if let Err(e) = written {
            tracing::debug!(error = %e, trace_id = %ctx.trace_id, "response not completed");
            return None;
        }
        // A request body the handler did not consume (an early error): read
        // and drop a moderate one so the client sees the answer and the
        // connection can be reused; close on a larger one.
        if !session.is_body_done() {
            let small = session
                .req_header()
                .headers
                .get("content-length")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|n| n <= DRAIN_LIMIT);
            if !small || session.drain_request_body().await.is_err() {
                return None;
            }
        }
        let persistent = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(s)) => Some(ReusedHttpStream::from_reusable_stream(s, persistent)),
            _ => None,
        }
    }
}

/// The CommonName of the connection's verified client certificate.
fn client_cn(session: &ServerSession) -> Option<String> {
    let ssl = session.digest()?.ssl_digest.as_ref()?;
    ssl.extension
        .get::<crate::tls::ClientCn>()
        .map(|c| c.0.clone())
}

/// Write status, headers and body; streams blob bodies chunk by chunk.
async fn write_reply(
    session: &mut ServerSession,
    reply: Reply,
    is_head: bool,
) -> Result<(), Box<pingora::Error>> {
    let mut h = ResponseHeader::build(reply.status, Some(reply.headers.len() + 2))?;
    h.insert_header(API_VERSION_HEADER.0, API_VERSION_HEADER.1)?;
    for (k, v) in &reply.headers {
        h.append_header(*k, v.as_str())?;
    }
    let len = match &reply.body {
        Body::Empty => 0,
        Body::Bytes(b) => b.len() as u64,
        Body::Stream { len, .. } | Body::Head { len } => *len,
    };
    if reply.status != 204 {
        h.insert_header("Content-Length", len.to_string())?;
    }
    session.write_response_header(Box::new(h)).await?;
    match reply.body {
        _ if is_head => {}
        Body::Empty | Body::Head { .. } => {}
        Body::Bytes(b) => session.write_response_body(b, true).await?,
        Body::Stream { mut stream, len } => {
            let mut sent = 0u64;
            loop {
                match stream.next().await.transpose() {
                    Ok(Some(chunk)) => {
                        sent += chunk.data.len() as u64;
                        session.write_response_body(chunk.data, false).await?;
                    }
                    Ok(None) => break,
                    Err(status) => {
                        return Err(pingora::Error::explain(
                            pingora::ErrorType::WriteError,
                            format!(
                                "blob stream failed after {sent} bytes: {}",
                                status.message()
                            ),
                        ));
                    }
                }
            }
            if sent != len {
                return Err(pingora::Error::explain(
                    pingora::ErrorType::WriteError,
                    format!("blob stream ended at {sent} of {len} bytes"),
                ));
            }
        }
    }
    session.finish_body().await?;
    Ok(())
}
