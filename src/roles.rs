//! Composes the roles: all of them in one process (embedded mode: gRPC over
//! the in-process transport, so the distributed contract is what runs), or
//! one of them.

use anyhow::Context;
use capstan_gateway::Upstreams;
use capstan_runtime::{Config, Shutdown};
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    All,
    Gateway,
    Auth,
    Blob,
    Meta,
    Sync,
}

type Served = anyhow::Result<()>;

fn spawn_grpc(
    set: &mut JoinSet<Served>,
    role: Role,
    config: &Config,
    listener: TcpListener,
    shutdown: &Shutdown,
) {
    let config = config.clone();
    let shutdown = shutdown.clone();
    set.spawn(async move {
        match role {
            Role::Blob => capstan_blob::serve(&config, listener, shutdown).await,
            Role::Meta => capstan_meta::serve(&config, listener, shutdown).await,
            Role::Auth => capstan_auth::serve(&config, listener, shutdown).await,
            Role::Sync => capstan_sync::serve(&config, listener, shutdown).await,
            Role::All | Role::Gateway => unreachable!("not a gRPC role"),
        }
    });
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// Run `role` until SIGINT/SIGTERM or until a role fails.
pub async fn serve(config: Config, role: Role, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let mut set = JoinSet::new();
    match role {
        Role::All => {
            // The roles call one another in-process (still through gRPC).
            capstan_runtime::grpc::local::enable();
            std::fs::create_dir_all(&config.storage.root_directory).with_context(|| {
                format!(
                    "storage.rootDirectory {}",
                    config.storage.root_directory.display()
                )
            })?;
            let mut upstreams = Upstreams {
                meta: vec![],
                blob: vec![],
                auth: vec![],
                sync: vec![],
            };
            for r in [Role::Meta, Role::Blob, Role::Auth, Role::Sync] {
                let l = TcpListener::bind("127.0.0.1:0").await?;
                let addr = l.local_addr()?;
                let mut role_config = config.clone();
                match r {
                    Role::Meta => upstreams.meta.push(url(addr)),
                    Role::Blob => {
                        // Its garbage collection asks the embedded meta.
                        upstreams.blob.push(url(addr));
                        role_config.services.meta.endpoints = upstreams.meta.clone();
                    }
                    Role::Auth => upstreams.auth.push(url(addr)),
                    Role::Sync => {
                        // svc-sync stores through the embedded meta and blob.
                        upstreams.sync.push(url(addr));
                        role_config.services.meta.endpoints = upstreams.meta.clone();
                        role_config.services.blob.endpoints = upstreams.blob.clone();
                    }
                    _ => {}
                }
                spawn_grpc(&mut set, r, &role_config, l, &shutdown);
            }
            let gw = bind_gateway(&config, listen)?;
            announce(&config, "all", gw.local_addr()?);
            let (c, s) = (config.clone(), shutdown.clone());
            set.spawn(async move { capstan_gateway::serve(&c, upstreams, gw, s).await });
        }
        Role::Gateway => {
            let upstreams = Upstreams {
                meta: config.services.meta.endpoints.clone(),
                blob: config.services.blob.endpoints.clone(),
                auth: config.services.auth.endpoints.clone(),
                sync: config.services.sync.endpoints.clone(),
            };
            let gw = bind_gateway(&config, listen)?;
            announce(&config, "gateway", gw.local_addr()?);
            let (c, s) = (config.clone(), shutdown.clone());
            set.spawn(async move { capstan_gateway::serve(&c, upstreams, gw, s).await });
        }
        Role::Auth | Role::Blob | Role::Meta | Role::Sync => {
            let svc = match role {
                Role::Auth => &config.services.auth,
                Role::Blob => &config.services.blob,
                Role::Meta => &config.services.meta,
                _ => &config.services.sync,
            };
            let addr: SocketAddr = match (listen, &svc.listen) {
                (Some(a), _) => a,
                (None, Some(l)) => l.parse().context("services.<role>.listen")?,
                (None, None) => {
                    anyhow::bail!("no address: pass --listen or set services.<role>.listen")
                }
            };
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind {addr}"))?;
            println!(
                "capstan: {role:?} role serving gRPC on {}",
                url(l.local_addr()?)
            );
            spawn_grpc(&mut set, role, &config, l, &shutdown);
        }
    }
    // The first role to stop (error or shutdown) stops the others.
    let mut result = Ok(());
    while let Some(done) = set.join_next().await {
        shutdown.trigger();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) if result.is_ok() => result = Err(e),
            Err(e) if result.is_ok() => result = Err(anyhow::anyhow!("role panicked: {e}")),
            _ => {}
        }
    }
    result
}

fn bind_gateway(
    config: &Config,
    listen: Option<SocketAddr>,
) -> anyhow::Result<std::net::TcpListener> {
    let addr = match listen {
        Some(a) => a.to_string(),
        None => format!("{}:{}", config.http.address, config.http.port),
    };
    std::net::TcpListener::bind(&addr).with_context(|| format!("bind http {addr}"))
}

/// The one line saying where the registry is (stdout, for people and tests).
fn announce(config: &Config, roles: &str, addr: SocketAddr) {
    let scheme = if config.http.tls.is_some() {
        "https"
    } else {
        "http"
    };
    println!(
        "capstan: serving {scheme}://{addr} (roles: {roles}; data: {})",
        config.storage.root_directory.display()
    );
}
