use super::*;
use crate::suite::{chunks, pattern, read_all, read_chunks, sha256};
use capstan_testkit::{S3_ACCESS_KEY, S3_SECRET_KEY, S3Server};
use std::sync::Arc;

const BUCKET: &str = "blobs";
const MIB: usize = 1024 * 1024;

fn driver(server: &S3Server, bucket: &str) -> StorageDriverConfig {
    serde_json::from_value(serde_json::json!({
        "name": "s3",
        "bucket": bucket,
        "rootDirectory": "/zot",
        "region": "us-east-1",
        "regionEndpoint": server.endpoint(),
        "forcePathStyle": true,
        "accessKey": S3_ACCESS_KEY,
        "secretKey": S3_SECRET_KEY,
        // S3's smallest part, so that multipart paths run with small blobs.
        "chunkSize": MIN_PART_BYTES,
    }))
    .unwrap()
}

async fn server() -> S3Server {
    tokio::task::spawn_blocking(|| S3Server::start(BUCKET))
        .await
        .unwrap()
}

/// Two stores (two svc-blob replicas) on one fresh bucket.
async fn open_pair() -> (S3Server, Arc<dyn BlobStore>, Arc<dyn BlobStore>) {
    let (s, a, b) = open_s3_pair().await;
    (s, Arc::new(a), Arc::new(b))
}

async fn open_s3_pair() -> (S3Server, S3Store, S3Store) {
    let server = server().await;
    let cfg = driver(&server, BUCKET);
    let a = S3Store::connect(&cfg).await.unwrap();
    let b = S3Store::connect(&cfg).await.unwrap();
    a.check().await.unwrap();
    (server, a, b)
}

mod suite {
    use super::*;
    crate::suite::blob_store_suite!(open_pair());
}

#[tokio::test]
async fn a_missing_bucket_wrong_keys_or_no_server_fail_the_check() {
    let mut server = server().await;
    let absent = S3Store::connect(&driver(&server, "absent")).await.unwrap();
    let err = absent.check().await.unwrap_err();
    assert!(err.to_string().contains("absent"), "{err}");
    let mut cfg = driver(&server, BUCKET);
    cfg.secret_key = Some("wrong".into());
    let wrong = S3Store::connect(&cfg).await.unwrap();
    assert!(wrong.check().await.is_err());
    let good = S3Store::connect(&driver(&server, BUCKET)).await.unwrap();
    good.check().await.unwrap();
    // A store that does not answer is unavailable (503), not broken.
    server.kill();
    assert!(matches!(good.check().await, Err(BlobError::Unavailable(_))));
    assert!(matches!(
        good.stat(&sha256(b"x")).await,
        Err(BlobError::Unavailable(_))
    ));
}

#[tokio::test]
async fn large_puts_go_in_equal_parts_and_read_back_across_them() {
    let (server, a, b) = open_s3_pair().await;
    // 3 parts of 5 MiB and a short one, announced and not.
    let data = pattern(15 * MIB + 12_345, 7);
    let d = sha256(&data);
    let pieces: Vec<&[u8]> = data.chunks(700_000).collect();
    let len = data.len() as u64;
    assert_eq!(
        a.put_with_length(&d, Some(len), chunks(&pieces))
            .await
            .unwrap(),
        len
    );
    assert_eq!(read_all(&b, &d).await, data);
    let edge = 5 * MIB as u64 - 3;
    assert_eq!(
        read_chunks(&b, &d, edge, 10).await.concat(),
        &data[edge as usize..edge as usize + 10]
    );
    // The object is one file in the store, assembled from its parts.
    let on_disk =
        std::fs::metadata(server.object_path(BUCKET, &format!("zot/{}", blob_key(&d)))).unwrap();
    assert_eq!(on_disk.len(), len);

    let other = pattern(11 * MIB, 8);
    let d2 = sha256(&other);
    let pieces: Vec<&[u8]> = other.chunks(MIB).collect();
    assert_eq!(
        b.put(&d2, chunks(&pieces)).await.unwrap(),
        other.len() as u64
    );
    assert_eq!(read_all(&a, &d2).await, other);

    // A wrong digest leaves nothing, multipart or not.
    let wrong = sha256(b"not it");
    assert!(matches!(
        a.put_with_length(&wrong, Some(len), chunks(&[&data])).await,
        Err(BlobError::DigestMismatch { .. })
    ));
    assert!(matches!(
        a.stat(&wrong).await,
        Err(BlobError::BlobUnknown(_))
    ));
}

/// Chunked uploads alternate between replicas. Equal writes of at least
/// 5 MiB are joined server-side; unequal ones are streamed through once.
#[tokio::test]
async fn chunked_uploads_across_replicas_assemble_whatever_the_chunk_sizes() {
    let (_server, a, b) = open_s3_pair().await;
    for (seed, sizes) in [
        (1u64, vec![5 * MIB, 5 * MIB, 5 * MIB, 1234]),
        (2, vec![5 * MIB, 5 * MIB]),
        (3, vec![100, 6 * MIB, 5 * MIB + 1, 77]),
        (4, vec![1, 2, 3]),
    ] {
        let total: usize = sizes.iter().sum();
        let data = pattern(total, seed);
        let d = sha256(&data);
        let id = a.start_upload("team/app").await.unwrap();
        let mut at = 0;
        for (i, n) in sizes.iter().enumerate() {
            let store: &S3Store = if i % 2 == 0 { &a } else { &b };
            let piece = &data[at..at + n];
            let off = store
                .append_with_length(&id, Some(at as u64), Some(*n as u64), chunks(&[piece]))
                .await
                .unwrap();
            at += n;
            assert_eq!(off, at as u64);
        }
        assert_eq!(b.commit(&id, &d).await.unwrap(), total as u64);
        assert_eq!(read_all(&a, &d).await, data, "sizes {sizes:?}");
        assert!(matches!(
            a.upload_status(&id).await,
            Err(BlobError::UploadUnknown)
        ));
    }
}

/// Two replicas writing the same offset of one upload at once (a client
/// sending chunks in parallel): whatever the store's conditional writes
/// allow, the upload then holds exactly one of the two writes, never a
/// mix, and commits as that one.
#[tokio::test]
async fn racing_writes_to_one_offset_keep_exactly_one() {
    let (_server, a, b) = open_s3_pair().await;
    for round in 0..5 {
        let id = a.start_upload("r").await.unwrap();
        let (x, y) = (pattern(300_000, 2 * round), pattern(300_000, 2 * round + 1));
        let (ra, rb) = tokio::join!(
            a.append(&id, Some(0), chunks(&[&x])),
            b.append(&id, Some(0), chunks(&[&y]))
        );
        assert!(ra.is_ok() || rb.is_ok(), "neither won: {ra:?} {rb:?}");
        for lost in [ra, rb].into_iter().filter_map(Result::err) {
            assert!(
                matches!(
                    lost,
                    BlobError::OffsetMismatch {
                        actual: 300_000,
                        ..
                    } | BlobError::UploadBusy
                ),
                "{lost:?}"
            );
        }
        assert_eq!(a.upload_status(&id).await.unwrap(), 300_000);
        let (state, _) = a.session(&id).await.unwrap();
        let held = a.upload_digest(&state, Algorithm::Sha256).await.unwrap();
        let won = if held == sha256(&x) { &x } else { &y };
        assert_eq!(held, sha256(won), "the upload holds a mix");
        assert_eq!(b.commit(&id, &held).await.unwrap(), 300_000);
        assert_eq!(read_all(&a, &held).await, *won);
    }
}

/// A store announced while a collection looks at the blob makes the
/// collection give up; a collection under way makes a store wait for it
/// and then write the blob anew.
#[tokio::test]
async fn collections_and_stores_of_one_blob_never_cross() {
    let (_server, a, b) = open_s3_pair().await;
    let data = b"contended".to_vec();
    let d = sha256(&data);
    a.put(&d, chunks(&[&data])).await.unwrap();
    let future = SystemTime::now() + Duration::from_secs(3600);
    assert_eq!(b.stale_size(&d, future).await.unwrap(), Some(9));

    // A store announced (in flight on another replica): no removal.
    let lease = format!("{}manual", writing_prefix(&d));
    a.bucket
        .put(&lease, Bytes::new(), None, false)
        .await
        .unwrap()
        .ok();
    // Undecided, so an error: the blob stays queued for the next run.
    assert!(matches!(
        b.remove_stale(&d, future).await,
        Err(BlobError::Unavailable(_))
    ));
    assert_eq!(read_all(&a, &d).await, data);
    a.bucket.delete(&lease).await.unwrap();

    // A removal under way: the store waits for it, then stores anew.
    let removing = removing_key(&d);
    b.bucket
        .put(&removing, Bytes::new(), None, true)
        .await
        .unwrap()
        .unwrap();
    let a = Arc::new(a);
    let store = {
        let (a, d, data) = (a.clone(), d.clone(), data.clone());
        tokio::spawn(async move { a.put(&d, chunks(&[&data])).await })
    };
    // Once the store has announced itself it cannot finish while the
    // removal lease is there.
    let deadline = Instant::now() + Duration::from_secs(30);
    while b
        .bucket
        .list(&writing_prefix(&d), None, 1)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the store never announced itself"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!store.is_finished());
    // Another collection finds the lease taken: undecided, not removed.
    assert!(matches!(
        b.remove_stale(&d, future).await,
        Err(BlobError::Unavailable(_))
    ));
    // The collection removes the blob, then lets go.
    b.bucket.delete(&blob_key(&d)).await.unwrap();
    b.bucket.delete(&removing).await.unwrap();
    store.await.unwrap().unwrap();
    assert_eq!(read_all(&*a, &d).await, data);
    // The store renewed it: not stale before now.
    assert_eq!(
        b.stale_size(&d, SystemTime::now() - Duration::from_secs(5))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn scrub_takes_a_corrupted_object_out_of_service() {
    let (server, a, _b) = open_s3_pair().await;
    let data = pattern(100_000, 9);
    let d = sha256(&data);
    a.put(&d, chunks(&[&data])).await.unwrap();
    assert_eq!(a.verify(&d).await.unwrap(), Verdict::Intact);
    let file = server.object_path(BUCKET, &format!("zot/{}", blob_key(&d)));
    let mut rotten = data.clone();
    rotten[50_000] ^= 0x40;
    std::fs::write(&file, &rotten).unwrap();
    assert_eq!(
        a.verify(&d).await.unwrap(),
        Verdict::Corrupt {
            actual: sha256(&rotten)
        }
    );
    assert!(matches!(a.stat(&d).await, Err(BlobError::BlobUnknown(_))));
    let aside = a
        .bucket
        .list(&format!("corrupt/sha256/{}/", d.hex()), None, 10)
        .await
        .unwrap();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(a.scrub_counts(), (2, 1));
}

#[tokio::test]
async fn presigned_urls_serve_the_blob_to_anyone_holding_them() {
    let (_server, a, _b) = open_s3_pair().await;
    let data = pattern(70_000, 10);
    let d = sha256(&data);
    a.put(&d, chunks(&[&data])).await.unwrap();
    let url = a
        .presign(&d, Duration::from_secs(300))
        .await
        .unwrap()
        .unwrap();
    let got = reqwest::get(&url).await.unwrap();
    assert_eq!(got.status(), 200, "{url}");
    assert_eq!(got.bytes().await.unwrap(), data);
    assert!(matches!(
        a.presign(&sha256(b"absent"), Duration::from_secs(60)).await,
        Err(BlobError::BlobUnknown(_))
    ));
}

/// A write announced with a length streams into one object; a body that
/// brings fewer or more bytes than announced, or fails, keeps nothing.
#[tokio::test]
async fn announced_writes_that_fall_short_or_overflow_keep_nothing() {
    let (_server, a, b) = open_s3_pair().await;
    let id = a.start_upload("r").await.unwrap();
    let failing = futures::stream::iter(vec![
        Ok(Bytes::from_static(b"abc")),
        Err(BlobError::Stream("client went away".into())),
    ])
    .boxed();
    for (announced, data) in [
        (10, chunks(&[b"abc"])),
        (2, chunks(&[b"abc"])),
        (3, chunks(&[b"ab", b"cd"])),
        (6, failing),
    ] {
        assert!(
            matches!(
                a.append_with_length(&id, Some(0), Some(announced), data)
                    .await,
                Err(BlobError::Stream(_))
            ),
            "announced {announced}"
        );
        assert_eq!(b.upload_status(&id).await.unwrap(), 0);
    }
    let data = pattern(2 * MIB + 5, 11);
    let n = data.len() as u64;
    let pieces: Vec<&[u8]> = data.chunks(100_000).collect();
    assert_eq!(
        a.append_with_length(&id, Some(0), Some(n), chunks(&pieces))
            .await
            .unwrap(),
        n
    );
    // Written as one object, not assembled from parts.
    let (state, _) = b.session(&id).await.unwrap();
    assert_eq!(state.parts.len(), 1);
    assert_eq!(b.commit(&id, &sha256(&data)).await.unwrap(), n);
    assert_eq!(read_all(&a, &sha256(&data)).await, data);
}
