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
pub mod retention;
mod service;
mod store;
#[cfg(test)]
mod testutil;

pub use error::MetaError;
pub use service::{MetaGrpc, grpc_service, serve_grpc};
pub use store::{
    BUSY_TIMEOUT, Backend, CollectedLink, Collection, Garbage, Page, PutOutcome, RENEW_AFTER,
    Referrer, Store, StoredManifest,
};

use anyhow::Context as _;
use capstan_proto::meta::v1::meta_service_server::SERVICE_NAME;
use capstan_runtime::{Config, Shutdown, grpc};
use tokio::net::TcpListener;

/// Check the metadata database URL (`storage.database`: a `sqlite:` or
/// `postgres://` URL that the driver can read; nothing is connected) and
/// `storage.retention` (globs and patterns that compile).
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
    retention::Retention::from_config(&config.storage)?;
    Ok(())
}

/// The lock file beside a SQLite database, held by the process serving it
/// (`None` for Postgres, which any number of processes share).
fn sqlite_lock_path(config: &Config) -> Option<std::path::PathBuf> {
    use std::str::FromStr as _;
    let url = config.database_url();
    if Backend::of(&url).ok()? != Backend::Sqlite {
        return None;
    }
    let file = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
        .ok()?
        .get_filename()
        .to_path_buf();
    if file.as_os_str().is_empty() || file.to_string_lossy().contains(":memory:") {
        return None;
    }
    let mut name = file.file_name()?.to_os_string();
    name.push(".serving");
    Some(file.with_file_name(name))
}

/// Hold the SQLite database's lock file while this process serves it, if no
/// other process does (then only warn: a dry `capstan gc` beside a running
/// registry shares it).
fn hold_sqlite_lock(config: &Config) -> Option<std::fs::File> {
    let path = sqlite_lock_path(config)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ok()?;
    match file.try_lock() {
        Ok(()) => Some(file),
        Err(_) => {
            tracing::warn!(lock = %path.display(), "another process serves this SQLite database");
            None
        }
    }
}

/// Whether another process (a running registry) serves the configuration's
/// SQLite database now. Its gateways cache manifests and hear only of the
/// changes that process makes, so a tool must not change the database
/// beside it.
pub fn sqlite_in_use(config: &Config) -> bool {
    let Some(path) = sqlite_lock_path(config) else {
        return false;
    };
    let Ok(file) = std::fs::File::open(&path) else {
        return false;
    };
    file.try_lock_shared().is_err()
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
    let _serving = hold_sqlite_lock(config);
    let store = Store::open(&config.database_url())
        .await
        .context("cannot open the metadata database")?
        .with_gc_delay(config.storage.gc_delay());
    let mut meta = MetaGrpc::new(store.clone(), shutdown.clone());
    if config.storage.gc_enabled() {
        // Retention runs only with garbage collection, as in zot.
        meta = meta.with_retention(
            retention::Retention::from_config(&config.storage).map_err(anyhow::Error::msg)?,
        );
    }
    let health = grpc::health_service(&[SERVICE_NAME]).await;
    let routes = tonic::service::Routes::new(health).add_service(serve_grpc(meta));
    tracing::info!(addr = %listener.local_addr()?, "meta service listening");
    let served = grpc::serve(routes, listener, shutdown).await;
    store.close().await;
    served.context("meta grpc server failed")?;
    tracing::info!("meta service stopped");
    Ok(())
}

#[cfg(test)]
mod tests;
