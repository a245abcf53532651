//! Manifests and stores for the tests.

use crate::store::{Backend, Store};
use capstan_oci::{Algorithm, Digest, media};
use serde_json::{Value, json};

pub fn sha256(bytes: &[u8]) -> Digest {
    Digest::of(Algorithm::Sha256, bytes)
}

/// A test image manifest and the blobs it references.
#[derive(Debug, Clone)]
pub struct Image {
    pub bytes: Vec<u8>,
    pub digest: Digest,
    /// Config then layers, with their sizes.
    pub blobs: Vec<(Digest, u64)>,
}

/// An OCI image manifest whose config and layer contents derive from `seed`.
pub fn image(seed: &str) -> Image {
    image_with(seed, |_| {})
}

/// Like [`image`], letting `edit` change the JSON before it is serialised.
pub fn image_with(seed: &str, edit: impl FnOnce(&mut Value)) -> Image {
    let config = format!("config of {seed}").into_bytes();
    let layer = format!("layer of {seed}").into_bytes();
    let blobs = vec![
        (sha256(&config), config.len() as u64),
        (sha256(&layer), layer.len() as u64),
    ];
    let mut v = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": blobs[0].0.to_string(),
            "size": blobs[0].1,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": blobs[1].0.to_string(),
            "size": blobs[1].1,
        }],
    });
    edit(&mut v);
    let bytes = serde_json::to_vec(&v).unwrap();
    Image {
        digest: sha256(&bytes),
        bytes,
        blobs,
    }
}

/// An OCI index of `children`.
pub fn index(children: &[&Image]) -> Vec<u8> {
    let manifests: Vec<Value> = children
        .iter()
        .map(|c| {
            json!({
                "mediaType": media::OCI_MANIFEST,
                "digest": c.digest.to_string(),
                "size": c.bytes.len(),
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": manifests,
    }))
    .unwrap()
}

/// A descriptor of `image` for a `subject` field.
pub fn descriptor(image: &Image) -> Value {
    json!({
        "mediaType": media::OCI_MANIFEST,
        "digest": image.digest.to_string(),
        "size": image.bytes.len(),
    })
}

/// `sqlite://` URL of a database file in `dir` (in a subdirectory that does
/// not exist yet).
pub fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("db").join("meta.db").display()
    )
}

pub async fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&sqlite_url(&dir)).await.unwrap();
    (dir, store)
}

/// What holds a test's database; dropping it removes the database.
#[allow(dead_code)] // held for its Drop
pub enum TestDb {
    Sqlite(tempfile::TempDir),
    Postgres(capstan_testkit::Postgres),
}

/// A new, empty store on `backend`: a SQLite file in a temp dir, or a
/// database in a Postgres server of its own.
pub async fn temp_store_on(backend: Backend) -> (TestDb, Store) {
    match backend {
        Backend::Sqlite => {
            let (dir, store) = temp_store().await;
            (TestDb::Sqlite(dir), store)
        }
        Backend::Postgres => {
            let (pg, url) = postgres_db().await;
            let store = Store::open(&url).await.unwrap();
            (TestDb::Postgres(pg), store)
        }
    }
}

/// A Postgres server of its own and the URL of a new database in it,
/// with a linguistic default collation (byte order must come from the
/// schema).
pub async fn postgres_db() -> (capstan_testkit::Postgres, String) {
    tokio::task::spawn_blocking(|| {
        let pg = capstan_testkit::Postgres::start();
        let url = pg.create_database_icu("meta");
        (pg, url)
    })
    .await
    .unwrap()
}

/// Link every blob of `image` to `repo`.
pub async fn link_blobs(store: &Store, repo: &str, image: &Image) {
    for (d, size) in &image.blobs {
        store.link_blob(repo, d, *size).await.unwrap();
    }
}
