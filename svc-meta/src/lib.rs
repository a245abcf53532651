//! svc-meta owns Capstan's namespace: repositories, manifests (their bytes,
//! stored in the database, and what parsing them revealed: media type,
//! artifact type, subject, annotations, referenced blobs and child
//! manifests), tags, referrers, and the repository-to-blob links that decide
//! which blobs a repository may serve. Blob bytes live in svc-blob; this crate
//! only records which digests a repository may use. It serves the
//! `capstan.meta.v1.MetaService` gRPC contract over a sqlx database: SQLite
//! by default, or Postgres shared by any number of replicas (schemas in
//! `migrations/` and `migrations-postgres/`, kept in step).
//!
//! A manifest push is accepted only when every blob it names is linked to the
//! repository and every child manifest of an index is already stored there;
//! the manifest, its references and its tag are then written in one
//! transaction.

mod error;
mod service;
mod store;
#[cfg(test)]
mod testutil;

pub use error::MetaError;
pub use service::{MetaGrpc, grpc_service};
pub use store::{
    BUSY_TIMEOUT, Backend, CollectedLink, Collection, Garbage, Page, PutOutcome, RENEW_AFTER,
    Referrer, Store, StoredManifest,
};

use anyhow::Context as _;
use capstan_proto::meta::v1::meta_service_server::SERVICE_NAME;
use capstan_runtime::{Config, Shutdown, grpc};
use tokio::net::TcpListener;

/// Check the metadata database URL (`storage.database`): a `sqlite:` or
/// `postgres://` URL that the driver can read. Nothing is connected.
pub fn check_config(config: &Config) -> Result<(), String> {
    use std::str::FromStr as _;
    let url = config.database_url();
    let shown = capstan_runtime::config::redact_password(&url);
    let bad = |e: &dyn std::fmt::Display| format!("storage.database {shown:?}: {e}");
    match Backend::of(&url).map_err(|e| bad(&e))? {
        Backend::Sqlite => {
            sqlx::sqlite::SqliteConnectOptions::from_str(&url).map_err(|e| bad(&e))?;
        }
        Backend::Postgres => {
            sqlx::postgres::PgConnectOptions::from_str(&url).map_err(|e| bad(&e))?;
        }
    }
    Ok(())
}

/// Run the meta role on `listener` until `shutdown`: open (creating) the
/// database named by the configuration, apply migrations, and serve
/// MetaService plus the gRPC health service.
pub async fn serve(
    config: &Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let root = &config.storage.root_directory;
    tokio::fs::create_dir_all(root)
        .await
        .with_context(|| format!("cannot create storage.rootDirectory {}", root.display()))?;
    let store = Store::open(&config.database_url())
        .await
        .context("cannot open the metadata database")?
        .with_gc_delay(config.storage.gc_delay());
    let health = grpc::health_service(&[SERVICE_NAME]).await;
    let routes = tonic::service::Routes::new(health)
        .add_service(grpc_service(store.clone(), shutdown.clone()));
    tracing::info!(addr = %listener.local_addr()?, "meta service listening");
    let served = grpc::serve(routes, listener, shutdown).await;
    store.close().await;
    served.context("meta grpc server failed")?;
    tracing::info!("meta service stopped");
    Ok(())
}

#[cfg(test)]
mod tests;
