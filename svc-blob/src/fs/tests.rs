use super::*;
use crate::suite::{chunks, err, pattern, read_all, sha256};
use capstan_oci::ErrorCode;
use std::sync::Arc;

/// Two stores on one fresh root; the second fsyncs (`storage.commit`), so
/// the suite covers both paths. `direct` says which of the two write with
/// direct I/O, so replicas in different modes share one upload.
async fn open_pair(
    direct: [bool; 2],
) -> (tempfile::TempDir, Arc<dyn BlobStore>, Arc<dyn BlobStore>) {
    let dir = tempfile::tempdir().unwrap();
    let a = FsStore::new(dir.path(), false)
        .await
        .unwrap()
        .with_direct_io(direct[0]);
    let b = FsStore::new(dir.path(), true)
        .await
        .unwrap()
        .with_direct_io(direct[1]);
    (dir, Arc::new(a), Arc::new(b))
}

/// The default: direct I/O on both.
mod direct {
    use super::*;
    crate::suite::blob_store_suite!(open_pair([true, true]));
}

/// Buffered on one replica, direct on the other, each way round.
mod mixed {
    use super::*;
    crate::suite::blob_store_suite!(open_pair([false, true]));
}

mod mixed_the_other_way {
    use super::*;
    crate::suite::blob_store_suite!(open_pair([true, false]));
}

async fn store() -> (tempfile::TempDir, FsStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = FsStore::new(dir.path(), false).await.unwrap();
    (dir, s)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn state_of(s: &FsStore, id: &UploadId) -> SessionState {
    read_state(&s.session_dir(id)).unwrap()
}

#[tokio::test]
async fn layout_on_disk() {
    let (dir, s) = store().await;
    let id = s.start_upload("repo").await.unwrap();
    let session = dir.path().join("uploads").join(id.to_string());
    assert_eq!(entries(&session), vec!["data", "state.json"]);
    let st = state_of(&s, &id);
    assert_eq!(st.offset, 0);
    assert!(st.created_ms > 0 && st.updated_ms >= st.created_ms);

    s.append(&id, None, chunks(&[b"layout"])).await.unwrap();
    assert_eq!(fs::read(session.join("data")).unwrap(), b"layout");
    assert_eq!(state_of(&s, &id).offset, 6);

    let d = sha256(b"layout");
    s.commit(&id, &d).await.unwrap();
    let blob = dir
        .path()
        .join("blobs/sha256")
        .join(&d.hex()[..2])
        .join(d.hex());
    assert_eq!(fs::read(&blob).unwrap(), b"layout");
    assert!(entries(&dir.path().join("uploads")).is_empty());

    let d512 = Digest::of(Algorithm::Sha512, b"layout");
    s.put(&d512, chunks(&[b"layout"])).await.unwrap();
    let blob = dir
        .path()
        .join("blobs/sha512")
        .join(&d512.hex()[..2])
        .join(d512.hex());
    assert_eq!(fs::read(&blob).unwrap(), b"layout");
    assert!(entries(&dir.path().join("uploads")).is_empty());
}

#[tokio::test]
async fn crash_leftovers_are_dropped() {
    let (_dir, s) = store().await;
    let id = s.start_upload("repo").await.unwrap();
    s.append(&id, None, chunks(&[b"hello"])).await.unwrap();
    // A write that crashed after writing bytes but before updating the state.
    let data = s.session_dir(&id).join(DATA);
    let mut f = OpenOptions::new().append(true).open(&data).unwrap();
    f.write_all(b"GARBAGE FROM A CRASH").unwrap();
    drop(f);
    assert_eq!(s.upload_status(&id).await.unwrap(), 5);
    assert_eq!(
        s.append(&id, Some(5), chunks(&[b" world"])).await.unwrap(),
        11
    );
    assert_eq!(fs::read(&data).unwrap(), b"hello world");

    // Leftovers right before a commit are dropped too.
    let mut f = OpenOptions::new().append(true).open(&data).unwrap();
    f.write_all(b"!!").unwrap();
    drop(f);
    let d = sha256(b"hello world");
    assert_eq!(s.commit(&id, &d).await.unwrap(), 11);
    assert_eq!(read_all(&s, &d).await, b"hello world");
}

#[tokio::test]
async fn data_shorter_than_its_state_is_an_internal_error() {
    let (_dir, s) = store().await;
    let id = s.start_upload("repo").await.unwrap();
    s.append(&id, None, chunks(&[b"hello"])).await.unwrap();
    let data = s.session_dir(&id).join(DATA);
    OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(2)
        .unwrap();
    let e = err(s.append(&id, None, chunks(&[b"x"])).await);
    assert_eq!(e.code(), ErrorCode::Internal, "{e:?}");
    // Nothing was zero-filled behind our back.
    assert_eq!(fs::read(&data).unwrap(), b"he");
}

#[tokio::test]
async fn an_unreadable_hash_state_is_rebuilt_from_the_data() {
    let (_dir, s) = store().await;
    let data = pattern(CHUNK_BYTES + 100, 7);
    let id = s.start_upload("repo").await.unwrap();
    s.append(&id, None, chunks(&[&data[..CHUNK_BYTES + 1]]))
        .await
        .unwrap();
    let dir = s.session_dir(&id);
    let mut st = read_state(&dir).unwrap();
    st.sha256_state = "written by some other sha2 version".into();
    write_state(&dir, &st, false).unwrap();
    s.append(&id, None, chunks(&[&data[CHUNK_BYTES + 1..]]))
        .await
        .unwrap();
    assert!(resumable::restore(&state_of(&s, &id).sha256_state).is_some());
    assert_eq!(
        s.commit(&id, &sha256(&data)).await.unwrap(),
        data.len() as u64
    );
}

#[tokio::test]
async fn a_corrupt_state_file_is_an_internal_error() {
    let (_dir, s) = store().await;
    let id = s.start_upload("repo").await.unwrap();
    fs::write(s.session_dir(&id).join(STATE), b"{not json").unwrap();
    let e = err(s.upload_status(&id).await);
    assert_eq!(e.code(), ErrorCode::Internal, "{e:?}");
}

#[tokio::test]
async fn a_busy_upload_is_neither_written_nor_expired() {
    let (_dir, s) = store().await;
    let id = s.start_upload("repo").await.unwrap();
    s.append(&id, None, chunks(&[b"abc"])).await.unwrap();
    // Another process in the middle of a write holds the lock.
    let holder = File::open(s.session_dir(&id).join(DATA)).unwrap();
    holder.lock().unwrap();
    assert!(matches!(
        err(s.append(&id, Some(3), chunks(&[b"d"])).await),
        BlobError::UploadBusy
    ));
    assert!(matches!(
        err(s.commit(&id, &sha256(b"abc")).await),
        BlobError::UploadBusy
    ));
    assert_eq!(s.expire_uploads(Duration::ZERO).await.unwrap(), 0);
    assert_eq!(s.upload_status(&id).await.unwrap(), 3);
    drop(holder);
    assert_eq!(s.append(&id, Some(3), chunks(&[b"d"])).await.unwrap(), 4);
    assert_eq!(s.commit(&id, &sha256(b"abcd")).await.unwrap(), 4);
}

/// A client retrying at once after its write was cut finds the lock still
/// held by the dying write for a moment: the retry waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waits_for_a_lock_about_to_be_let_go() {
    let (_dir, s) = store().await;
    let id = s.start_upload("repo").await.unwrap();
    s.append(&id, None, chunks(&[b"abc"])).await.unwrap();
    let holder = File::open(s.session_dir(&id).join(DATA)).unwrap();
    holder.lock().unwrap();
    // The dying write lets go a moment after the retry arrives. (This
    // holds the lock for a while; it waits on nothing.)
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(holder);
    });
    assert_eq!(s.append(&id, Some(3), chunks(&[b"d"])).await.unwrap(), 4);
    releaser.join().unwrap();
}

#[tokio::test]
async fn failed_puts_leave_no_temp_file() {
    let (dir, s) = store().await;
    let uploads = dir.path().join("uploads");
    let wrong = sha256(b"wrong");
    assert!(matches!(
        err(s.put(&wrong, chunks(&[b"data"])).await),
        BlobError::DigestMismatch { .. }
    ));
    assert!(entries(&uploads).is_empty(), "{:?}", entries(&uploads));
    let failing = futures::stream::iter(vec![
        Ok(Bytes::from_static(b"da")),
        Err(BlobError::Stream("reset".into())),
    ])
    .boxed();
    assert_eq!(
        err(s.put(&sha256(b"data"), failing).await).code(),
        ErrorCode::BlobUploadInvalid
    );
    assert!(entries(&uploads).is_empty(), "{:?}", entries(&uploads));
    // A second put of an existing blob drops its temp file as well.
    let d = sha256(b"data");
    s.put(&d, chunks(&[b"data"])).await.unwrap();
    s.put(&d, chunks(&[b"data"])).await.unwrap();
    assert!(entries(&uploads).is_empty(), "{:?}", entries(&uploads));
}

#[tokio::test]
async fn expiry_removes_stale_leftovers_only() {
    let (dir, s) = store().await;
    let uploads = dir.path().join("uploads");
    // A put temp file left by a crashed process, a session directory that
    // never got its state, and something that is not ours.
    fs::write(uploads.join("put-0.tmp"), b"partial").unwrap();
    let orphan = UploadId::random();
    fs::create_dir(uploads.join(orphan.to_string())).unwrap();
    fs::write(uploads.join("README"), b"keep me").unwrap();
    // A stale session.
    let stale = s.start_upload("repo").await.unwrap();
    let mut st = state_of(&s, &stale);
    st.updated_ms = 0;
    write_state(&s.session_dir(&stale), &st, false).unwrap();
    // A fresh one.
    let fresh = s.start_upload("repo").await.unwrap();

    assert_eq!(
        s.expire_uploads(Duration::from_secs(3600)).await.unwrap(),
        1
    );
    assert!(matches!(
        err(s.upload_status(&stale).await),
        BlobError::UploadUnknown
    ));
    assert_eq!(s.upload_status(&fresh).await.unwrap(), 0);
    assert_eq!(s.expire_uploads(Duration::ZERO).await.unwrap(), 3);
    assert_eq!(entries(&uploads), vec!["README"]);
}

#[tokio::test]
async fn a_read_can_be_abandoned_midway() {
    let (_dir, s) = store().await;
    let data = pattern(8 * READ_CHUNK_BYTES, 8);
    let d = sha256(&data);
    s.put(&d, chunks(&[&data])).await.unwrap();
    let mut st = s.read(&d, 0, 0).await.unwrap();
    let first = st.next().await.unwrap().unwrap();
    assert_eq!(first.as_ref(), &data[..READ_CHUNK_BYTES]);
    drop(st);
    // The blob stays readable and deletable afterwards.
    assert_eq!(read_all(&s, &d).await, data);
    assert!(s.delete(&d).await.unwrap());
}

#[tokio::test]
async fn a_blob_read_again_goes_through_the_page_cache() {
    let (_dir, s) = store().await;
    let data = pattern(2 * READ_CHUNK_BYTES + 100, 9);
    let (d, other) = (sha256(&data), sha256(&data[1..]));
    s.put(&d, chunks(&[&data])).await.unwrap();
    s.put(&other, chunks(&[&data[1..]])).await.unwrap();
    assert_eq!(read_all(&s, &d).await, data);
    let direct = match s.read_paths() {
        (1, 0) => true,
        // The filesystem refuses O_DIRECT (tmpfs): every read is buffered.
        (0, 1) => false,
        other => panic!("one read counted as {other:?}"),
    };
    // Read again: hot, so through the page cache, with the same bytes.
    assert_eq!(read_all(&s, &d).await, data);
    let mut st = s.read(&d, 5, 10).await.unwrap();
    assert_eq!(st.next().await.unwrap().unwrap().as_ref(), &data[5..15]);
    // Another blob's first read is not; nor is its read after a range read
    // from the middle (a resumed download, not a new read), nor after a
    // failed read.
    let mut st = s.read(&other, 7, 3).await.unwrap();
    assert_eq!(st.next().await.unwrap().unwrap().as_ref(), &data[8..11]);
    assert!(s.read(&other, 1 << 40, 1).await.is_err());
    assert_eq!(read_all(&s, &other).await, &data[1..]);
    if direct {
        assert_eq!(s.read_paths(), (3, 2));
    } else {
        assert_eq!(s.read_paths(), (0, 5));
    }
    // Without direct I/O configured, even a first read is buffered.
    let third = sha256(&data[2..]);
    s.put(&third, chunks(&[&data[2..]])).await.unwrap();
    let buffered = s.clone().with_direct_io(false);
    assert_eq!(read_all(&buffered, &third).await, &data[2..]);
    let (direct_reads, cached_reads) = buffered.read_paths();
    assert_eq!(direct_reads, if direct { 3 } else { 0 });
    assert_eq!(cached_reads, if direct { 3 } else { 6 });
}

/// Wait until the warmer of `s` has finished with `n` blobs in all.
async fn warmed(s: &FsStore, n: u64) {
    crate::warm::wait_finished(s.warmed().expect("warming is on"), n).await;
}

#[tokio::test]
async fn a_pushed_blob_is_warmed_and_its_first_read_is_cached() {
    let (_dir, s) = store().await;
    let data = pattern(2 * READ_CHUNK_BYTES + 100, 11);
    // Whether this filesystem takes O_DIRECT (tmpfs does not): a first read
    // without warming tells.
    let probe = sha256(&data[2..]);
    s.put(&probe, chunks(&[&data[2..]])).await.unwrap();
    assert_eq!(read_all(&s, &probe).await, &data[2..]);
    let direct = match s.read_paths() {
        (1, 0) => true,
        (0, 1) => false,
        other => panic!("one read counted as {other:?}"),
    };
    let s = s.with_warm_after_push(true).unwrap();
    // A monolithic put, and a chunked upload's commit, are each warmed.
    let put = sha256(&data);
    s.put(&put, chunks(&[&data])).await.unwrap();
    let id = s.start_upload("r").await.unwrap();
    s.append(&id, Some(0), chunks(&[&data[1..]])).await.unwrap();
    let uploaded = sha256(&data[1..]);
    s.commit(&id, &uploaded).await.unwrap();
    // Hot at once, on any filesystem (where O_DIRECT is refused, every
    // read counts as cached, so the read counters below cannot tell).
    assert!(s.is_hot(&put) && s.is_hot(&uploaded));
    warmed(&s, 2).await;
    assert_eq!(read_all(&s, &put).await, data);
    assert_eq!(read_all(&s, &uploaded).await, &data[1..]);
    let (d0, c0) = (u64::from(direct), u64::from(!direct));
    assert_eq!(
        s.read_paths(),
        (d0, c0 + 2),
        "first reads through the page cache"
    );
    // A small blob was written through the page cache already: it is not
    // warmed, so its first read is like any other first read.
    let small = sha256(&data[..100]);
    s.put(&small, chunks(&[&data[..100]])).await.unwrap();
    assert!(!s.is_hot(&small));
    assert_eq!(read_all(&s, &small).await, &data[..100]);
    assert_eq!(s.read_paths(), (2 * d0, 2 * c0 + 2));
    // Nor is a blob pushed again: the store keeps the copy it has.
    let other = sha256(&data[3..]);
    s.put(&other, chunks(&[&data[3..]])).await.unwrap();
    warmed(&s, 3).await;
    s.put(&other, chunks(&[&data[3..]])).await.unwrap();
    let counts = s.warm_counts();
    assert_eq!((counts.warmed, counts.pending, counts.failed), (3, 0, 0));
}

#[tokio::test]
async fn without_warming_a_pushed_blob_is_read_directly_first() {
    let (_dir, s) = store().await;
    let s = s.with_warm_after_push(false).unwrap();
    assert!(s.warmed().is_none());
    let data = pattern(2 * READ_CHUNK_BYTES + 100, 12);
    let d = sha256(&data);
    s.put(&d, chunks(&[&data])).await.unwrap();
    assert_eq!(read_all(&s, &d).await, data);
    // (0, 1) where the filesystem refuses O_DIRECT (tmpfs).
    assert!(
        matches!(s.read_paths(), (1, 0) | (0, 1)),
        "{:?}",
        s.read_paths()
    );
}

/// A blob left in the trash by a collection that stopped half-way is put
/// back when the store opens (a push may have relied on it).
#[tokio::test]
async fn a_blob_left_in_the_trash_is_put_back() {
    let (dir, s) = store().await;
    let data = b"half-collected".to_vec();
    let d = sha256(&data);
    s.put(&d, chunks(&[&data])).await.unwrap();
    let path = s.blob_path(&d);
    let trash = dir.path().join(TRASH).join(format!("{}-x", d.hex()));
    fs::rename(&path, &trash).unwrap();
    drop(s);
    let s = FsStore::new(dir.path(), false).await.unwrap();
    assert_eq!(read_all(&s, &d).await, data);
    assert_eq!(fs::read_dir(dir.path().join(TRASH)).unwrap().count(), 0);
}

/// Scrub finds a blob whose file was changed on disk, takes it out of
/// service (set aside under `corrupt/`) and counts it; stored again, the
/// blob is whole.
#[tokio::test]
async fn scrub_sets_a_corrupt_blob_aside() {
    let (dir, s) = store().await;
    let good = pattern(5000, 7);
    let d = sha256(&good);
    s.put(&d, chunks(&[&good])).await.unwrap();
    let other = pattern(300, 8);
    let kept = sha256(&other);
    s.put(&kept, chunks(&[&other])).await.unwrap();
    // Same length, one byte flipped: only a re-hash notices.
    let mut bad = good.clone();
    bad[4321] ^= 0x40;
    std::fs::write(s.blob_path(&d), &bad).unwrap();
    let verdict = s.verify(&d).await.unwrap();
    assert_eq!(
        verdict,
        Verdict::Corrupt {
            actual: sha256(&bad)
        }
    );
    assert_eq!(s.verify(&kept).await.unwrap(), Verdict::Intact);
    assert_eq!(s.scrub_counts(), (2, 1));
    assert!(matches!(err(s.stat(&d).await), BlobError::BlobUnknown(_)));
    let aside = entries(&dir.path().join("corrupt"));
    assert_eq!(aside.len(), 1);
    assert!(
        aside[0].starts_with(&format!("sha256-{}-", d.hex())),
        "{aside:?}"
    );
    assert_eq!(s.blobs_after(None, 10).await.unwrap(), vec![kept]);
    s.put(&d, chunks(&[&good])).await.unwrap();
    assert_eq!(read_all(&s, &d).await, good);
    assert_eq!(s.verify(&d).await.unwrap(), Verdict::Intact);
}

/// Blobs stored before garbage collection existed (no marks) are each
/// given one the first time a collection asks, and only that time.
#[tokio::test]
async fn blobs_from_before_marks_are_marked_once() {
    let (dir, s) = store().await;
    let old = pattern(100, 1);
    let d = sha256(&old);
    s.put(&d, chunks(&[&old])).await.unwrap();
    // As an earlier version left it: the blob, no marks.
    std::fs::remove_dir_all(dir.path().join("gc")).unwrap();
    let future = SystemTime::now() + Duration::from_secs(3600);
    let marks = s.stored_before(future, 100).await.unwrap();
    assert_eq!(
        marks.iter().map(|m| m.digest.clone()).collect::<Vec<_>>(),
        vec![d.clone()]
    );
    assert!(dir.path().join("gc/stored/seeded").exists());
    s.forget_stored(&marks).await.unwrap();
    assert!(s.stored_before(future, 100).await.unwrap().is_empty());
}
