//! The gateway role: a pingora HTTP server that speaks the OCI distribution
//! API (`/v2/...`). It parses each request into a typed [`endpoint::Endpoint`],
//! calls svc-meta and svc-blob over gRPC, streams blob bytes in both
//! directions without buffering them, and maps every backend error through
//! the one table in [`error`] to the spec's status and JSON body. Every
//! request passes an authentication phase ([`auth`], svc-auth's answers
//! cached) and an authorization phase ([`authz`], zot's action mapping);
//! zot's `/zot/auth/*` endpoints (token service, API keys, logout) are
//! served here too. It owns TLS termination and the per-request access log.

pub mod app;
pub mod auth;
pub mod authz;
pub mod backends;
pub mod body;
pub mod cache;
pub mod endpoint;
pub mod error;
pub mod handlers;
pub mod health;
pub mod metrics;
pub mod pulls;
pub mod range;
pub(crate) mod resume;
pub mod tls;

use capstan_runtime::grpc::Peers;
use capstan_runtime::{Config, Shutdown};
use pingora::services::Service as _;
use std::os::fd::IntoRawFd;
use std::sync::Arc;

/// Serve the OCI API on `listener` (already bound) until `shutdown`,
/// calling the roles `upstreams` names (svc-auth's may be empty when no
/// authentication is configured; svc-sync is asked for pull-through when
/// on-demand sync is configured). TLS (with HTTP/2) is enabled when
/// `http.tls` is configured.
pub async fn serve(
    config: &Config,
    upstreams: Peers,
    listener: std::net::TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let backends = backends::Backends::new(&upstreams.meta, &upstreams.blob).await?;
    // Every pool is re-resolved and health-checked until shutdown (probes,
    // and replicas skipped while down).
    backends.spawn_refresh(&shutdown);
    let mut roles = vec![
        health::Role::of(backends.meta_pool()),
        health::Role::of(backends.blob_pool()),
    ];
    // One change feed per svc-meta replica, following the membership.
    let manifests = Arc::new(cache::ManifestCache::new(backends.meta_pool().len()));
    {
        let (count, follow) = (manifests.clone(), manifests.clone());
        tokio::spawn(backends.meta_pool().clone().follow_members(
            shutdown.clone(),
            move |n| count.set_feeds(n),
            move |client, stop| cache::follow(follow.clone(), client, stop),
        ));
    }
    let auth = backends::auth_pool(&upstreams.auth).await?;
    let authn = Arc::new(auth::Authn::new(config, auth.clone())?);
    if !authn.is_open() {
        auth.spawn_refresh(&shutdown);
        roles.push(health::Role::of(&auth));
        let follow = authn.clone();
        tokio::spawn(auth.follow_members(
            shutdown.clone(),
            |_| {},
            move |client, stop| auth::follow(follow.clone(), client, stop),
        ));
    }
    let sync_config = config
        .extensions
        .as_ref()
        .and_then(|e| e.sync.as_ref())
        .filter(|s| s.enabled() && !s.registries.is_empty());
    let on_demand = sync_config.is_some_and(|s| s.registries.iter().any(|r| r.on_demand));
    let sync = match sync_config {
        Some(_) if !upstreams.sync.is_empty() => {
            let pool = backends::sync_pool(&upstreams.sync).await?;
            pool.spawn_refresh(&shutdown);
            roles.push(health::Role::of(&pool));
            Some(pool)
        }
        _ => None,
    };
    let health = health::Health { roles };
    let mut app = app::Gateway::new(backends, manifests, authn);
    app.health = health;
    app.sync = sync.clone().filter(|_| on_demand);
    app.storage = Arc::new(config.storage.clone());
    app.ext = Arc::new(handlers::zot_ext::Extensions::of(config));
    app.redirect_blobs = config
        .storage
        .redirect_blob_url
        .then_some(handlers::blobs::REDIRECT_TTL);
    app.sync_metrics = sync;
    // Reports go round the meta replicas.
    let meta = app.backends.meta_pool().clone();
    tokio::spawn(pulls::report_periodically(
        app.pulls.clone(),
        move || meta.client(),
        shutdown.clone(),
    ));
    let addr = listener.local_addr()?.to_string();
    listener.set_nonblocking(true)?;

    // Hand the bound socket to pingora through its fd table, keyed by the
    // address string, so port 0 works and the caller knows the port.
    let mut fds = pingora::server::Fds::new();
    fds.add(addr.clone(), listener.into_raw_fd());
    let fds = Arc::new(parking_lot::Mutex::new(fds));

    let mut service = pingora::services::listening::Service::new("capstan-gateway".into(), app);
    match &config.http.tls {
        Some(tls) => {
            let settings = tls::settings(config, tls)?;
            service.add_tls_with_settings(&addr, None, settings);
        }
        None => service.add_tcp(&addr),
    }
    let scheme = if config.http.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(addr = %addr, scheme, "gateway listening");
    service.start_service(Some(fds), shutdown.watch(), 1).await;
    Ok(())
}
