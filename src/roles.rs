//! Composes the roles: all of them in one process (embedded mode: gRPC over
//! the in-process transport, so the distributed contract is what runs, with
//! no port but the gateway's), or one of them.

use anyhow::Context;
use capstan_runtime::grpc::{Listen, LocalRole, Peer, Peers, Secrets};
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

impl Role {
    /// How traces name a process running this role.
    pub fn service_name(self) -> &'static str {
        match self {
            Role::All => "capstan",
            Role::Gateway => "capstan-gateway",
            Role::Auth => "capstan-auth",
            Role::Blob => "capstan-blob",
            Role::Meta => "capstan-meta",
            Role::Sync => "capstan-sync",
        }
    }
}

type Served = anyhow::Result<()>;

fn spawn_grpc(
    set: &mut JoinSet<Served>,
    role: Role,
    config: &Config,
    peers: Peers,
    listen: Listen,
    shutdown: &Shutdown,
) {
    let config = config.clone();
    let shutdown = shutdown.clone();
    set.spawn(async move {
        match role {
            Role::Blob => capstan_blob::serve(&config, &peers, listen, shutdown).await,
            Role::Meta => capstan_meta::serve(&config, listen, shutdown).await,
            Role::Auth => capstan_auth::serve(&config, listen, shutdown).await,
            Role::Sync => capstan_sync::serve(&config, &peers, listen, shutdown).await,
            Role::All | Role::Gateway => unreachable!("not a gRPC role"),
        }
    });
}

/// Run `role` until SIGINT/SIGTERM or until a role fails.
pub async fn serve(config: Config, role: Role, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let mut set = JoinSet::new();
    match role {
        Role::All => {
            std::fs::create_dir_all(&config.storage.root_directory).with_context(|| {
                format!(
                    "storage.rootDirectory {}",
                    config.storage.root_directory.display()
                )
            })?;
            // The roles call one another in-process (still through gRPC)
            // and bind no port: only the gateway's is open.
            let roles = [Role::Meta, Role::Blob, Role::Auth, Role::Sync].map(|r| {
                let name = match r {
                    Role::Meta => "meta",
                    Role::Blob => "blob",
                    Role::Auth => "auth",
                    _ => "sync",
                };
                (r, LocalRole::new(name))
            });
            let [(_, meta), (_, blob), (_, auth), (_, sync)] = &roles;
            let peers = Peers {
                meta: vec![Peer::local(meta)],
                blob: vec![Peer::local(blob)],
                auth: vec![Peer::local(auth)],
                sync: vec![Peer::local(sync)],
            };
            for (r, local) in roles {
                spawn_grpc(
                    &mut set,
                    r,
                    &config,
                    peers.clone(),
                    Listen::Local(local),
                    &shutdown,
                );
            }
            let gw = bind_gateway(&config, listen)?;
            announce(&config, "all", gw.local_addr()?);
            let (c, s) = (config.clone(), shutdown.clone());
            set.spawn(async move { capstan_gateway::serve(&c, peers, gw, s).await });
        }
        Role::Gateway => {
            let secrets = Secrets::from_config(&config.services)?;
            let peers = Peers::from_config(&config.services, &secrets);
            let gw = bind_gateway(&config, listen)?;
            announce(&config, "gateway", gw.local_addr()?);
            let (c, s) = (config.clone(), shutdown.clone());
            set.spawn(async move { capstan_gateway::serve(&c, peers, gw, s).await });
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
            let secrets = Secrets::from_config(&config.services)?;
            if !secrets.is_set() {
                anyhow::ensure!(
                    addr.ip().is_loopback(),
                    "a role listening on {addr} needs services.secret or services.secretFile: \
                     without one, anyone who reaches the port could call it"
                );
                tracing::warn!(%addr, "no services.secret: any local process may call this role");
            }
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind {addr}"))?;
            println!(
                "capstan: {role:?} role serving gRPC on http://{}",
                l.local_addr()?
            );
            let peers = Peers::from_config(&config.services, &secrets);
            let listen = Listen::Network {
                listener: l,
                secrets,
            };
            spawn_grpc(&mut set, role, &config, peers, listen, &shutdown);
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
