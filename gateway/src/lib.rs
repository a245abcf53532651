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
    let backends = backends::Backends::new(&upstreams.meta, &upstreams.blob)?;
    let feeds = backends.meta_all();
    let manifests = Arc::new(cache::ManifestCache::new(feeds.len()));
    for client in feeds {
        tokio::spawn(cache::follow(manifests.clone(), client, shutdown.clone()));
    }
    let auth_clients = upstreams
        .auth
        .iter()
        .map(backends::auth_client)
        .collect::<Result<Vec<_>, _>>()?;
    let authn = Arc::new(auth::Authn::new(config, auth_clients.clone())?);
    if !authn.is_open() {
        for client in auth_clients {
            tokio::spawn(auth::follow(authn.clone(), client, shutdown.clone()));
        }
    }
    let sync_config = config
        .extensions
        .as_ref()
        .and_then(|e| e.sync.as_ref())
        .filter(|s| s.enabled() && !s.registries.is_empty());
    let on_demand = sync_config.is_some_and(|s| s.registries.iter().any(|r| r.on_demand));
    let sync = match upstreams.sync.first() {
        Some(u) if sync_config.is_some() => Some(backends::sync_client(u)?),
        _ => None,
    };
    // Every role this gateway calls, checked until shutdown (probes, and
    // replicas skipped while down).
    let mut roles = backends.health_roles();
    for (name, service, peers) in [
        (
            "auth",
            capstan_proto::auth::v1::auth_service_server::SERVICE_NAME,
            &upstreams.auth[..],
        ),
        (
            "sync",
            capstan_proto::sync::v1::sync_service_server::SERVICE_NAME,
            // Only the first is called (see `sync` above).
            &upstreams.sync[..upstreams.sync.len().min(1)],
        ),
    ] {
        let needed = match name {
            "auth" => !authn.is_open(),
            _ => sync.is_some(),
        };
        if needed && !peers.is_empty() {
            roles.push(health::Role {
                name,
                service,
                replicas: peers.iter().map(health::Replica::new).collect(),
            });
        }
    }
    let health = health::Health { roles };
    health.spawn_checks(&shutdown);
    let mut app = app::Gateway::new(backends, manifests, authn);
    app.health = health;
    app.sync = sync.clone().filter(|_| on_demand);
    app.storage = Arc::new(config.storage.clone());
    app.redirect_blobs = config
        .storage
        .redirect_blob_url
        .then_some(handlers::blobs::REDIRECT_TTL);
    app.sync_metrics = sync;
    let clients = app.backends.meta_all();
    if !clients.is_empty() {
        // Reports go round the meta replicas.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let pick = move || {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            clients[i % clients.len()].clone()
        };
        tokio::spawn(pulls::report_periodically(
            app.pulls.clone(),
            pick,
            shutdown.clone(),
        ));
    }
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
