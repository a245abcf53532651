//! The test suite every [`BlobStore`] backend must pass. Each case gets two
//! handles `a` and `b` on the same storage, standing for two replicas of
//! svc-blob. A backend runs it with
//! `crate::suite::blob_store_suite!(open_pair())`, where `open_pair()` is a
//! future giving `(guard, a, b)` for fresh, empty storage.

use crate::{BlobError, BlobStore, ByteStream, UploadId};
use bytes::Bytes;
use capstan_oci::{Algorithm, Digest};
use capstan_runtime::grpc::{CHUNK_BYTES, READ_CHUNK_BYTES};
use futures::{StreamExt as _, stream};
use std::time::Duration;

/// Deterministic pseudo-random bytes (xorshift), different per `seed`.
pub(crate) fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub(crate) fn sha256(bytes: &[u8]) -> Digest {
    Digest::of(Algorithm::Sha256, bytes)
}

/// A stream yielding `parts` as separate chunks.
pub(crate) fn chunks<T: AsRef<[u8]>>(parts: &[T]) -> ByteStream {
    let items: Vec<Result<Bytes, BlobError>> = parts
        .iter()
        .map(|p| Ok(Bytes::copy_from_slice(p.as_ref())))
        .collect();
    stream::iter(items).boxed()
}

/// The error of a call expected to fail.
pub(crate) fn err<T>(r: Result<T, BlobError>) -> BlobError {
    match r {
        Ok(_) => panic!("expected an error, got a success"),
        Err(e) => e,
    }
}

/// Every chunk of a read, checked to be non-empty and at most READ_CHUNK_BYTES.
pub(crate) async fn read_chunks(
    s: &dyn BlobStore,
    d: &Digest,
    offset: u64,
    length: u64,
) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut st = s.read(d, offset, length).await.expect("read starts");
    while let Some(c) = st.next().await {
        let c = c.expect("read chunk");
        assert!(
            !c.is_empty() && c.len() <= READ_CHUNK_BYTES,
            "chunk of {}",
            c.len()
        );
        out.push(c);
    }
    out
}

pub(crate) async fn read_all(s: &dyn BlobStore, d: &Digest) -> Vec<u8> {
    read_chunks(s, d, 0, 0).await.concat()
}

fn is_upload_unknown<T>(r: Result<T, BlobError>) -> bool {
    matches!(r, Err(BlobError::UploadUnknown))
}

fn is_blob_unknown<T>(r: Result<T, BlobError>) -> bool {
    matches!(r, Err(BlobError::BlobUnknown(_)))
}

pub(crate) async fn chunked_upload_then_commit(a: &dyn BlobStore, _b: &dyn BlobStore) {
    let data = pattern(3 * CHUNK_BYTES / 2 + 17, 1);
    let len = data.len() as u64;
    let d = sha256(&data);
    let id = a.start_upload("repo").await.unwrap();
    assert_eq!(a.upload_status(&id).await.unwrap(), 0);
    let (x, y) = data.split_at(700_001);
    let off = a
        .append(&id, Some(0), chunks(&[&x[..100], &x[100..]]))
        .await
        .unwrap();
    assert_eq!(off, x.len() as u64);
    assert_eq!(a.append(&id, None, chunks(&[y])).await.unwrap(), len);
    assert_eq!(a.upload_status(&id).await.unwrap(), len);
    assert!(is_blob_unknown(a.stat(&d).await), "visible before commit");
    assert_eq!(a.commit(&id, &d).await.unwrap(), len);
    assert_eq!(a.stat(&d).await.unwrap(), len);
    assert_eq!(read_all(a, &d).await, data);
    // The session ended with the commit.
    assert!(is_upload_unknown(a.upload_status(&id).await));
    assert!(is_upload_unknown(
        a.append(&id, None, chunks(&[b"x"])).await
    ));
    assert!(is_upload_unknown(a.commit(&id, &d).await));
}

pub(crate) async fn resume_on_another_replica(a: &dyn BlobStore, b: &dyn BlobStore) {
    let data = pattern(10_000, 2);
    let id = a.start_upload("repo").await.unwrap();
    assert_eq!(
        a.append(&id, Some(0), chunks(&[&data[..3000]]))
            .await
            .unwrap(),
        3000
    );
    assert_eq!(b.upload_status(&id).await.unwrap(), 3000);
    let off = b
        .append(
            &id,
            Some(3000),
            chunks(&[&data[3000..4000], &data[4000..6001]]),
        )
        .await
        .unwrap();
    assert_eq!(off, 6001);
    assert_eq!(
        a.append(&id, Some(6001), chunks(&[&data[6001..]]))
            .await
            .unwrap(),
        10_000
    );
    assert_eq!(b.commit(&id, &sha256(&data)).await.unwrap(), 10_000);
    assert_eq!(read_all(a, &sha256(&data)).await, data);
}

pub(crate) async fn wrong_expected_offset(a: &dyn BlobStore, b: &dyn BlobStore) {
    let id = a.start_upload("repo").await.unwrap();
    assert_eq!(
        a.append(&id, Some(0), chunks(&[b"hello"])).await.unwrap(),
        5
    );
    for wrong in [0, 3, 6, u64::MAX] {
        match err(b.append(&id, Some(wrong), chunks(&[b"XX"])).await) {
            BlobError::OffsetMismatch { expected, actual } => {
                assert_eq!((expected, actual), (wrong, 5));
            }
            other => panic!("expected an offset mismatch, got {other:?}"),
        }
    }
    assert_eq!(a.upload_status(&id).await.unwrap(), 5, "nothing written");
    assert_eq!(
        b.append(&id, Some(5), chunks(&[b" world"])).await.unwrap(),
        11
    );
    let d = sha256(b"hello world");
    assert_eq!(a.commit(&id, &d).await.unwrap(), 11);
    assert_eq!(read_all(b, &d).await, b"hello world");
}

pub(crate) async fn digest_mismatch_ends_the_upload(a: &dyn BlobStore, b: &dyn BlobStore) {
    let data = b"some bytes";
    let wrong = sha256(b"other bytes");
    let id = a.start_upload("repo").await.unwrap();
    a.append(&id, None, chunks(&[data])).await.unwrap();
    match err(a.commit(&id, &wrong).await) {
        BlobError::DigestMismatch { expected, actual } => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, sha256(data));
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(is_upload_unknown(b.upload_status(&id).await));
    assert!(is_upload_unknown(b.commit(&id, &sha256(data)).await));
    assert!(is_blob_unknown(a.stat(&wrong).await));
    assert!(is_blob_unknown(a.stat(&sha256(data)).await));
}

pub(crate) async fn sha512_commit(a: &dyn BlobStore, b: &dyn BlobStore) {
    let data = pattern(CHUNK_BYTES + 5, 3);
    let len = data.len() as u64;
    let d512 = Digest::of(Algorithm::Sha512, &data);
    let id = a.start_upload("repo").await.unwrap();
    a.append(&id, None, chunks(&[&data[..1000]])).await.unwrap();
    b.append(&id, Some(1000), chunks(&[&data[1000..]]))
        .await
        .unwrap();
    assert_eq!(b.commit(&id, &d512).await.unwrap(), len);
    assert_eq!(a.stat(&d512).await.unwrap(), len);
    assert_eq!(read_all(a, &d512).await, data);
    // The same bytes under sha256 are a different, absent blob.
    assert!(is_blob_unknown(a.stat(&sha256(&data)).await));

    let id = a.start_upload("repo").await.unwrap();
    a.append(&id, None, chunks(&[&data])).await.unwrap();
    let wrong = Digest::of(Algorithm::Sha512, b"nope");
    assert!(matches!(
        err(a.commit(&id, &wrong).await),
        BlobError::DigestMismatch { .. }
    ));
    assert!(is_blob_unknown(a.stat(&wrong).await));
}

pub(crate) async fn range_reads(a: &dyn BlobStore, b: &dyn BlobStore) {
    let data = pattern(2 * READ_CHUNK_BYTES + 10, 4);
    let len = data.len() as u64;
    let d = sha256(&data);
    assert_eq!(a.put(&d, chunks(&[&data])).await.unwrap(), len);

    let all = read_chunks(b, &d, 0, 0).await;
    assert!(all.len() >= 3, "{} chunks", all.len());
    assert_eq!(all.concat(), data);
    assert_eq!(read_chunks(b, &d, 5, 10).await.concat(), &data[5..15]);
    let edge = READ_CHUNK_BYTES as u64 - 1;
    assert_eq!(
        read_chunks(b, &d, edge, 2).await.concat(),
        &data[READ_CHUNK_BYTES - 1..READ_CHUNK_BYTES + 1]
    );
    assert_eq!(read_chunks(b, &d, 100, 0).await.concat(), &data[100..]);
    assert_eq!(
        read_chunks(b, &d, len - 1, 1).await.concat(),
        &data[data.len() - 1..]
    );
    assert_eq!(read_chunks(b, &d, 0, len).await.concat(), data);
    assert!(read_chunks(b, &d, len, 0).await.is_empty());

    for (offset, length) in [
        (len, 1),
        (len + 1, 0),
        (1, len),
        (0, len + 1),
        (u64::MAX, 0),
        (u64::MAX, u64::MAX),
        (1, u64::MAX),
    ] {
        assert!(
            matches!(
                err(b.read(&d, offset, length).await),
                BlobError::RangeInvalid(_)
            ),
            "range {offset}+{length} accepted"
        );
    }
    assert!(is_blob_unknown(b.read(&sha256(b"absent"), 0, 0).await));
    assert!(is_blob_unknown(b.stat(&sha256(b"absent")).await));
}

pub(crate) async fn bad_upload_ids(a: &dyn BlobStore, _b: &dyn BlobStore) {
    let real = a.start_upload("repo").await.unwrap();
    let upper = real.to_string().to_uppercase();
    for bad in [
        "../../etc",
        "..",
        "",
        "not-a-uuid",
        "3f2c8a0e-9b1d-4e6f-8a7b-1c2d3e4f5a6",
        upper.as_str(),
    ] {
        assert!(is_upload_unknown(UploadId::parse(bad)), "{bad:?} accepted");
    }
    let never = UploadId::random();
    assert!(is_upload_unknown(a.upload_status(&never).await));
    assert!(is_upload_unknown(
        a.append(&never, None, chunks(&[b"x"])).await
    ));
    assert!(is_upload_unknown(a.commit(&never, &sha256(b"")).await));
    assert!(is_upload_unknown(a.cancel(&never).await));
    // The real upload is untouched by all that.
    assert_eq!(a.upload_status(&real).await.unwrap(), 0);
}

pub(crate) async fn expiry(a: &dyn BlobStore, b: &dyn BlobStore) {
    let idle = a.start_upload("repo").await.unwrap();
    let written = b.start_upload("repo").await.unwrap();
    a.append(&written, None, chunks(&[b"abc"])).await.unwrap();
    assert_eq!(
        a.expire_uploads(Duration::from_secs(3600)).await.unwrap(),
        0
    );
    assert_eq!(b.upload_status(&idle).await.unwrap(), 0);
    assert_eq!(b.upload_status(&written).await.unwrap(), 3);
    assert_eq!(b.expire_uploads(Duration::ZERO).await.unwrap(), 2);
    assert!(is_upload_unknown(a.upload_status(&idle).await));
    assert!(is_upload_unknown(a.upload_status(&written).await));
    assert!(is_upload_unknown(a.commit(&written, &sha256(b"abc")).await));
    assert_eq!(a.expire_uploads(Duration::ZERO).await.unwrap(), 0);
}

pub(crate) async fn monolithic_put(a: &dyn BlobStore, b: &dyn BlobStore) {
    let data = pattern(300_000, 5);
    let len = data.len() as u64;
    let d = sha256(&data);
    assert_eq!(
        a.put(
            &d,
            chunks(&[&data[..1], &data[1..200_000], &data[200_000..]])
        )
        .await
        .unwrap(),
        len
    );
    assert_eq!(b.stat(&d).await.unwrap(), len);
    assert_eq!(read_all(b, &d).await, data);
    // Storing it again is harmless (dedupe).
    assert_eq!(b.put(&d, chunks(&[&data])).await.unwrap(), len);
    assert_eq!(read_all(a, &d).await, data);

    let wrong = sha256(b"not these bytes");
    assert!(matches!(
        err(a.put(&wrong, chunks(&[&data])).await),
        BlobError::DigestMismatch { .. }
    ));
    assert!(is_blob_unknown(a.stat(&wrong).await));

    let d512 = Digest::of(Algorithm::Sha512, &data);
    assert_eq!(a.put(&d512, chunks(&[&data])).await.unwrap(), len);
    assert_eq!(read_all(b, &d512).await, data);
}

pub(crate) async fn delete(a: &dyn BlobStore, b: &dyn BlobStore) {
    let d = sha256(b"to delete");
    a.put(&d, chunks(&[b"to delete"])).await.unwrap();
    assert!(a.delete(&d).await.unwrap());
    assert!(is_blob_unknown(b.stat(&d).await));
    assert!(is_blob_unknown(b.read(&d, 0, 0).await));
    assert!(!b.delete(&d).await.unwrap());
}

pub(crate) async fn cancel(a: &dyn BlobStore, b: &dyn BlobStore) {
    let id = a.start_upload("repo").await.unwrap();
    a.append(&id, None, chunks(&[b"abc"])).await.unwrap();
    b.cancel(&id).await.unwrap();
    assert!(is_upload_unknown(a.upload_status(&id).await));
    assert!(is_upload_unknown(
        a.append(&id, None, chunks(&[b"d"])).await
    ));
    assert!(is_upload_unknown(a.commit(&id, &sha256(b"abc")).await));
    assert!(is_upload_unknown(a.cancel(&id).await));
    assert!(is_blob_unknown(a.stat(&sha256(b"abc")).await));
}

pub(crate) async fn failed_stream_keeps_nothing(a: &dyn BlobStore, b: &dyn BlobStore) {
    let failing = || {
        stream::iter(vec![
            Ok(Bytes::from_static(b"def")),
            Err(BlobError::Stream("client went away".into())),
        ])
        .boxed()
    };
    let id = a.start_upload("repo").await.unwrap();
    assert_eq!(a.append(&id, None, chunks(&[b"abc"])).await.unwrap(), 3);
    assert!(matches!(
        err(a.append(&id, None, failing()).await),
        BlobError::Stream(_)
    ));
    assert_eq!(b.upload_status(&id).await.unwrap(), 3);
    assert_eq!(b.append(&id, Some(3), chunks(&[b"ghi"])).await.unwrap(), 6);
    let d = sha256(b"abcghi");
    assert_eq!(a.commit(&id, &d).await.unwrap(), 6);
    assert_eq!(read_all(b, &d).await, b"abcghi");

    let d = sha256(b"def");
    assert!(matches!(
        err(a.put(&d, failing()).await),
        BlobError::Stream(_)
    ));
    assert!(is_blob_unknown(a.stat(&d).await));
}

pub(crate) async fn empty_blob(a: &dyn BlobStore, b: &dyn BlobStore) {
    let d = sha256(b"");
    let id = a.start_upload("repo").await.unwrap();
    assert_eq!(
        a.append(&id, Some(0), chunks::<&[u8]>(&[])).await.unwrap(),
        0
    );
    assert_eq!(a.append(&id, Some(0), chunks(&[b""])).await.unwrap(), 0);
    assert_eq!(b.commit(&id, &d).await.unwrap(), 0);
    assert_eq!(a.stat(&d).await.unwrap(), 0);
    assert!(read_chunks(a, &d, 0, 0).await.is_empty());
    assert!(matches!(
        err(a.read(&d, 0, 1).await),
        BlobError::RangeInvalid(_)
    ));
    assert_eq!(b.put(&d, chunks::<&[u8]>(&[])).await.unwrap(), 0);
}

pub(crate) async fn same_blob_committed_twice(a: &dyn BlobStore, b: &dyn BlobStore) {
    let data = pattern(5000, 6);
    let d = sha256(&data);
    let one = a.start_upload("repo").await.unwrap();
    let two = b.start_upload("repo").await.unwrap();
    assert_ne!(one, two);
    a.append(&one, None, chunks(&[&data])).await.unwrap();
    b.append(&two, None, chunks(&[&data])).await.unwrap();
    assert_eq!(a.commit(&one, &d).await.unwrap(), 5000);
    assert_eq!(b.commit(&two, &d).await.unwrap(), 5000);
    assert!(is_upload_unknown(a.upload_status(&two).await));
    assert_eq!(read_all(b, &d).await, data);
}

pub(crate) async fn uploads_remember_their_owner(a: &dyn BlobStore, b: &dyn BlobStore) {
    let id = a.start_upload("team/app").await.unwrap();
    assert_eq!(b.upload_owner(&id).await.unwrap(), "team/app");
    b.append(&id, None, chunks(&[b"abc"])).await.unwrap();
    // Appending keeps the owner.
    assert_eq!(a.upload_owner(&id).await.unwrap(), "team/app");
}

/// The first whole second after now (a cutoff that every mark and every
/// store made so far lies before).
async fn next_second() -> std::time::SystemTime {
    use std::time::{SystemTime, UNIX_EPOCH};
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let start = secs(SystemTime::now());
    loop {
        let t = SystemTime::now();
        if secs(t) > start {
            return UNIX_EPOCH + Duration::from_secs(secs(t));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn digests_of(marks: &[crate::StoredMark]) -> Vec<Digest> {
    let mut d: Vec<Digest> = marks.iter().map(|m| m.digest.clone()).collect();
    d.sort_by_key(ToString::to_string);
    d.dedup();
    d
}

/// Garbage collection's sweep: every store leaves a mark that a later
/// collection lists; a blob unused since the cutoff is removed, one stored
/// again since (a push of a layer the store has) or kept (a link made
/// without storing it) is not.
pub(crate) async fn garbage_swept_reused_kept(a: &dyn BlobStore, b: &dyn BlobStore) {
    let (x, y) = (b"stale one".to_vec(), b"reused one".to_vec());
    let (dx, dy) = (sha256(&x), sha256(&y));
    a.put(&dx, chunks(&[&x])).await.unwrap();
    let id = a.start_upload("r").await.unwrap();
    a.append(&id, None, chunks(&[&y])).await.unwrap();
    a.commit(&id, &dy).await.unwrap();
    let cutoff = next_second().await;
    // Stored again on the other replica after the cutoff.
    b.put(&dy, chunks(&[&y])).await.unwrap();
    let marks = b.stored_before(cutoff, 100).await.unwrap();
    let mut both = vec![dx.clone(), dy.clone()];
    both.sort_by_key(ToString::to_string);
    assert_eq!(digests_of(&marks), both);
    assert!(b.stored_before(cutoff, 0).await.unwrap().is_empty());
    assert_eq!(b.stored_before(cutoff, 1).await.unwrap().len(), 1);
    assert_eq!(
        b.stale_size(&dx, cutoff).await.unwrap(),
        Some(x.len() as u64)
    );
    assert_eq!(b.stale_size(&dy, cutoff).await.unwrap(), None);
    assert_eq!(a.remove_stale(&dy, cutoff).await.unwrap(), None);
    assert_eq!(read_all(a, &dy).await, y);
    assert_eq!(
        b.remove_stale(&dx, cutoff).await.unwrap(),
        Some(x.len() as u64)
    );
    assert!(matches!(err(a.stat(&dx).await), BlobError::BlobUnknown(_)));
    assert_eq!(a.remove_stale(&dx, cutoff).await.unwrap(), None);
    assert_eq!(b.stale_size(&dx, cutoff).await.unwrap(), None);
    b.forget_stored(&marks).await.unwrap();
    assert!(b.stored_before(cutoff, 100).await.unwrap().is_empty());
    // A blob that is gone cannot be kept; stored again, it is back.
    assert!(matches!(err(a.keep(&dx).await), BlobError::BlobUnknown(_)));
    a.put(&dx, chunks(&[&x])).await.unwrap();
    assert_eq!(read_all(b, &dx).await, x);
    // Keeping renews a blob and leaves a mark like a store.
    let second = next_second().await;
    assert_eq!(
        b.stale_size(&dy, second).await.unwrap(),
        Some(y.len() as u64)
    );
    assert_eq!(a.keep(&dy).await.unwrap(), y.len() as u64);
    assert_eq!(b.stale_size(&dy, second).await.unwrap(), None);
    assert_eq!(b.remove_stale(&dy, second).await.unwrap(), None);
    let third = next_second().await;
    let later = b.stored_before(third, 100).await.unwrap();
    assert!(digests_of(&later).contains(&dy), "{later:?}");
}

/// Scrub's walk: every blob once, in the order of its digest's text,
/// resumable after any digest; intact blobs verify, absent ones are gone.
pub(crate) async fn blobs_listed_in_order_and_verified(a: &dyn BlobStore, b: &dyn BlobStore) {
    let mut stored = Vec::new();
    for i in 0..12u64 {
        let bytes = pattern(100 + i as usize, i);
        let d = if i % 4 == 0 {
            Digest::of(Algorithm::Sha512, &bytes)
        } else {
            sha256(&bytes)
        };
        a.put(&d, chunks(&[&bytes])).await.unwrap();
        stored.push(d);
    }
    stored.sort_by_key(ToString::to_string);
    assert_eq!(b.blobs_after(None, 100).await.unwrap(), stored);
    let mut walked = Vec::new();
    let mut after: Option<Digest> = None;
    loop {
        let page = b.blobs_after(after.as_ref(), 5).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 5);
        after = page.last().cloned();
        walked.extend(page);
    }
    assert_eq!(walked, stored);
    for d in &stored {
        assert_eq!(b.verify(d).await.unwrap(), crate::Verdict::Intact);
    }
    assert_eq!(
        a.verify(&sha256(b"never stored")).await.unwrap(),
        crate::Verdict::Gone
    );
}

/// One `#[tokio::test]` per suite case, each on fresh storage from `$open`.
macro_rules! blob_store_suite {
    ($open:expr) => {
        $crate::suite::blob_store_suite!(@cases $open;
            chunked_upload_then_commit,
            resume_on_another_replica,
            wrong_expected_offset,
            digest_mismatch_ends_the_upload,
            sha512_commit,
            range_reads,
            bad_upload_ids,
            expiry,
            monolithic_put,
            delete,
            cancel,
            failed_stream_keeps_nothing,
            empty_blob,
            same_blob_committed_twice,
            uploads_remember_their_owner,
            garbage_swept_reused_kept,
            blobs_listed_in_order_and_verified,
        );
    };
    (@cases $open:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let (_guard, a, b) = $open.await;
                $crate::suite::$case(&*a, &*b).await;
            }
        )*
    };
}
pub(crate) use blob_store_suite;
