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
pub mod facts;
pub mod retention;
pub mod search;
mod service;
mod store;
#[cfg(test)]
mod testutil;

pub use error::MetaError;
pub use service::{MetaGrpc, grpc_service, serve_grpc};
pub use store::{
    BUSY_TIMEOUT, Backend, CollectedLink, Collection, Garbage, GcScopes, Page, PutOutcome,
    RENEW_AFTER, Referrer, Store, StoredManifest,
};

use anyhow::Context as _;
use capstan_oci::ErrorCode;
use capstan_proto::ServiceError;
use capstan_proto::meta::v1::meta_service_server::SERVICE_NAME;
use capstan_runtime::grpc::Listen;
use capstan_runtime::grpc::deferred::Deferred;
use capstan_runtime::{Config, Shutdown, grpc};
use std::time::Duration;

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
    retention::Retentions::from_config(&config.storage)?;
    Ok(())
}

/// The lock file beside a SQLite database, held by the one process that
/// writes it (`None` for Postgres, which any number of processes share,
/// and for an in-memory database).
fn sqlite_lock_path(config: &Config) -> Option<std::path::PathBuf> {
    use std::str::FromStr as _;
    let url = config.database_url();
    if Backend::of(&url).ok()? != Backend::Sqlite || store::sqlite_in_memory(&url) {
        return None;
    }
    let file = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
        .ok()?
        .get_filename()
        .to_path_buf();
    let mut name = file.file_name()?.to_os_string();
    name.push(".serving");
    Some(file.with_file_name(name))
}

/// Take the configuration's SQLite database for this process: its
/// gateways cache manifests and hear only of the changes this process
/// makes, so no other process may change it meanwhile. `Ok(None)` on
/// Postgres; an error when another process (a running registry, a
/// `capstan gc`) holds it. Held until the file is dropped.
pub fn lock_sqlite(config: &Config) -> Result<Option<std::fs::File>, String> {
    let Some(path) = sqlite_lock_path(config) else {
        return Ok(None);
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(_) => Err(format!(
            "another process (a running registry, or capstan gc) writes the SQLite database \
             beside {}",
            path.display()
        )),
    }
}

/// Run the meta role on `listener` until `shutdown`: open (creating) the
/// database named by the configuration, apply migrations, and serve
/// MetaService plus the gRPC health service.
pub async fn serve(
    config: &Config,
    listen: impl Into<Listen>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let root = &config.storage.root_directory;
    tokio::fs::create_dir_all(root)
        .await
        .with_context(|| format!("cannot create storage.rootDirectory {}", root.display()))?;
    let _serving = lock_sqlite(config).map_err(anyhow::Error::msg)?;
    serve_beside(config, listen, shutdown).await
}

/// [`serve`] without taking the SQLite database for this process: for a
/// tool that only reads (a dry `capstan gc`), or that took it already.
///
/// On Postgres the role serves at once and reports NOT_SERVING while the
/// database does not answer (its calls are answered UNAVAILABLE), opening
/// it with a capped backoff: a database that starts later, or restarts,
/// needs no restart of the role. A SQLite file that cannot be opened is a
/// local fault, reported at once.
pub async fn serve_beside(
    config: &Config,
    listen: impl Into<Listen>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listen = listen.into();
    let root = &config.storage.root_directory;
    tokio::fs::create_dir_all(root)
        .await
        .with_context(|| format!("cannot create storage.rootDirectory {}", root.display()))?;
    let url = config.database_url();
    let backend = Backend::of(&url).context("storage.database")?;
    // Retention runs only with garbage collection, as in zot (per store).
    let retentions =
        retention::Retentions::from_config(&config.storage).map_err(anyhow::Error::msg)?;
    let (gc_delay, scopes) = (config.storage.gc_delay(), GcScopes::new(&config.storage));
    let open = move || {
        let (url, scopes) = (url.clone(), scopes.clone());
        async move {
            Store::open(&url)
                .await
                .map(|s| s.with_gc_delay(gc_delay).with_gc_scopes(scopes))
        }
    };
    let service = {
        let shutdown = shutdown.clone();
        move |store: &Store| {
            let mut meta = MetaGrpc::new(store.clone(), shutdown);
            if retentions.any() {
                meta = meta.with_retention(retentions);
            }
            serve_grpc(meta)
        }
    };
    let addr = listen.describe();
    let (served, store) = if backend == Backend::Sqlite {
        let store = open().await.context("cannot open the metadata database")?;
        let health = grpc::health_service(&[SERVICE_NAME]).await;
        let routes = tonic::service::Routes::new(health).add_service(service(&store));
        tracing::info!(%addr, "meta service listening");
        (
            grpc::serve(routes, listen, grpc::RoleMetrics::new("meta"), shutdown).await,
            Some(store),
        )
    } else {
        let (reporter, health) = grpc::health_reporter(&[SERVICE_NAME], false).await;
        let (deferred, ready) = Deferred::new(|| {
            ServiceError::new(
                ErrorCode::Unavailable,
                "svc-meta cannot reach its database (storage.database) yet",
            )
            .into()
        });
        let opening = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let store = grpc::deferred::retry(
                    "metadata database (postgres) not reachable",
                    open,
                    shutdown.wait(),
                )
                .await?;
                ready.set(service(&store));
                report(&reporter, true).await;
                tracing::info!("meta service serving");
                tokio::spawn(watch_database(store.clone(), reporter, shutdown));
                Some(store)
            }
        });
        let routes = tonic::service::Routes::new(health).add_service(deferred);
        tracing::info!(%addr, "meta service listening (serving once its database answers)");
        let served = grpc::serve(
            routes,
            listen,
            grpc::RoleMetrics::new("meta"),
            shutdown.clone(),
        )
        .await;
        // Stops retrying, if it still was, once shut down.
        shutdown.trigger();
        (served, opening.await.ok().flatten())
    };
    if let Some(store) = store {
        store.close().await;
    }
    served.context("meta grpc server failed")?;
    tracing::info!("meta service stopped");
    Ok(())
}

/// Time between two checks that the database answers.
const DB_CHECK_EVERY: Duration = Duration::from_secs(2);
/// A check unanswered for this long has failed.
const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Report the role serving or not (the service and the server as a whole).
async fn report(reporter: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for s in [SERVICE_NAME, ""] {
        reporter.set_service_status(s, status).await;
    }
}

/// Check every [`DB_CHECK_EVERY`] until `shutdown` that the database (on
/// Postgres) answers, and report the role not serving while it does not:
/// the gateway's probes and pools then know, and it serves again as soon
/// as the database does, with no restart.
async fn watch_database(
    store: Store,
    reporter: tonic_health::server::HealthReporter,
    shutdown: Shutdown,
) {
    let mut serving = true;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(DB_CHECK_EVERY) => {}
        }
        let answers = matches!(
            tokio::time::timeout(DB_CHECK_TIMEOUT, store.ping()).await,
            Ok(Ok(()))
        );
        if answers != serving {
            serving = answers;
            if serving {
                tracing::info!("metadata database answers again: serving");
            } else {
                tracing::warn!("metadata database does not answer: not serving");
            }
            report(&reporter, serving).await;
        }
    }
}

#[cfg(test)]
mod tests;
