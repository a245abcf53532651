//! `capstan gc`: one garbage collection now, or (`--dry-run`) what it would
//! remove, on the storage a configuration names. svc-meta is the one in
//! `services.meta.endpoints` when the file names one (a running
//! deployment), otherwise the configuration's database, opened in this
//! process; blobs are read where the configuration keeps them.

use anyhow::Context as _;
use capstan_blob::gc::GcReport;
use capstan_runtime::grpc::{Listen, LocalRole, Peer, Peers, Secrets};
use capstan_runtime::{Config, Shutdown};

/// Run one collection and print its report (as JSON with `json`).
pub async fn run(mut config: Config, dry_run: bool, json: bool) -> anyhow::Result<()> {
    // Forced on: `storage.gc: false` stops scheduled runs (and retention
    // with them), not this one.
    config.storage.gc = Some(true);
    let shutdown = Shutdown::new();
    let secrets = Secrets::from_config(&config.services)?;
    let mut peers = Peers::from_config(&config.services, &secrets);
    let mut meta_task = None;
    // A real run takes a SQLite database for itself while it runs.
    let mut _writing = None;
    // svc-meta in this process when no running one is named.
    if peers.meta.is_empty() {
        if !dry_run {
            _writing = capstan_meta::lock_sqlite(&config).map_err(|e| {
                anyhow::anyhow!(
                    "{e}: stop the registry first, or let its scheduled collection \
                     (storage.gcInterval) do this; --dry-run works beside it"
                )
            })?;
        }
        let meta = LocalRole::new("meta");
        peers.meta = vec![Peer::local(&meta)];
        let (c, s) = (config.clone(), shutdown.clone());
        meta_task = Some(tokio::spawn(async move {
            capstan_meta::serve_beside(&c, Listen::Local(meta), s).await
        }));
    }
    let stores = capstan_blob::open_stores(&config, false).await?;
    for (name, store) in stores.all() {
        store.check().await.map_err(|e| {
            anyhow::anyhow!(
                "blob storage{} does not answer: {e}",
                if name.is_empty() {
                    String::new()
                } else {
                    format!(" of subpath {name}")
                }
            )
        })?;
    }
    let meta = capstan_blob::meta_client(&peers, &shutdown).await?;
    let collector = capstan_blob::collector(&config, stores, meta)?
        .context("no svc-meta to ask (services.meta.endpoints)")?;
    let report = collector.run(dry_run).await;
    shutdown.trigger();
    if let Some(task) = meta_task {
        task.await.context("svc-meta task")??;
    }
    let report = report.context("garbage collection")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &GcReport) {
    if r.retention_dry_run && !r.retention.is_empty() {
        println!("retention (dry run: nothing removed):");
    }
    for e in &r.retention {
        match &e.tag {
            Some(tag) => println!("tag\t{}:{tag}\t{}\t{}", e.repo, e.digest, e.reason),
            None => println!("manifest\t{}\t{}\t{}", e.repo, e.digest, e.reason),
        }
    }
    for l in &r.links {
        println!("link\t{}\t{}\t{}", l.repo, l.digest, l.size);
    }
    for b in &r.blobs {
        println!("blob\t{}\t{}", b.digest, b.size);
    }
    let verb = if r.dry_run { "would remove" } else { "removed" };
    println!(
        "{verb} {} tags or manifests (retention), {} repository links and {} blobs, \
         freeing {} bytes{}",
        r.retention.len(),
        r.links.len(),
        r.blobs.len(),
        r.bytes_freed,
        if r.truncated {
            " (at least: the dry run stopped at its limit)"
        } else {
            ""
        }
    );
}
